"""MIST: Multimodal Intrinsic Speckle Tracking (phase, transmission and dark field).

Models (``model=`` of :class:`MISTRetriever`, and plain functions):

* ``"phase-object"`` (default) — Pavlov et al., J. Opt. 22, 125604 (2020)
  (arXiv:1911.06814), Eq. (4)/(6)/(7): for every diffuser position n

      I_R,n − I_S,n = (Δ/k) I_R,n ∇²φ − Δ D_eff ∇²I_R,n ,

  solved per pixel in the least-squares sense over the N ≥ 2 positions for ∇²φ and
  D_eff (closed 2×2 normal equations precomputed from the reference; float64, or float32
  where the Tikhonov α bounds the conditioning); φ from ∇²φ by the Tikhonov-regularised
  inverse Laplacian with mirror boundaries, computed as a DCT (text after Eq. 7;
  methods.md §1.8, §1.14).
* ``"attenuating"`` — Alloo et al., J. Med. Imaging 9, 031502 (2022) (methods.md
  §1.11): single-material attenuating object with slowly varying dark field,
  ``I_S,n/I_R,n = G1 + Δ D ∇²I_R,n/I_R,n``; the paper's pair-wise weighted
  determinant is the least-squares fit of this line (identity
  Σ_{i<j}(q_j − q_i)² = N Σ(q − q̄)²), so it costs O(N) not O(N²).  Gives the
  transmission I_ob by the single-material TIE filter (Paganin/Pavlov, methods.md §1.9)
  and ``D_eff = D/I_ob``.  Needs γ = δ/β.
* ``"rapid"`` — Alloo et al., Sci. Rep. 13, 5424 (2023) (methods.md §1.10): rapidly
  varying dark field, unknowns ``[∇²(φ/k − D), D, ∂_xD, ∂_yD]`` per pixel, Tikhonov
  α = std(A)/10⁴, low-/high-pass fusion of D with its gradient, then φ.
* ``"transport"`` — Pavlov 2020 Eq. (1)–(2) *without* approximation (5): the speckle
  transport term (Δ/k)∇I_R·∇φ is kept, unknowns ``[∇²φ, D_eff, u_x, u_y]`` with
  u = Δ∇φ/(k p) the speckle displacement in px (design.md); φ by Frankot–Chellappa from
  ∇φ.  For samples whose refraction moves the speckle by a sizeable fraction of a grain,
  where the phase-object model's Laplacian is swamped by the neglected term.  N ≥ 4.
* directional (:class:`DirectionalMISTRetriever`) — tensor extension of Pavlov 2020
  Eq. (9)–(10) (methods.md §1.12) with the design.md convention: the Fokker–Planck
  term is Δ(∂_xx(D_xx I) + ∂_yy(D_yy I) + 2∂_xy(D_xy I)); phase-object (default) or
  single-material attenuating (``model="attenuating"``, γ = δ/β; Pavlov et al. 2021,
  arXiv:2105.10693).

**Blur calibration** (our extension, opt-in with ``blur_calibration=True``): the models are
first order in ΔD (exp(ΔD∇²) ≈ 1 + ΔD∇²), so a blur σ = sqrt(2ΔD) approaching the speckle
size is underestimated (tests/test_mist.py::test_blur_calibration_beyond_first_order, σ ≈ 1.1 px).
At construction the estimator is run on a central crop of the reference diffused by the exact Fokker–Planck
solution for a ladder of uniform D (Gaussian of covariance 2ΔD); the monotone curve
D_true ↦ median D_estimate is inverted per pixel (for the tensor: applied to its eigenvalues).
The default (``False``) gives the paper's first-order estimate, comparable with published maps.

Units are SI throughout (design.md): ∇² in m⁻², D_eff in m, so that
``Δ·D_eff·∇²I`` is dimensionless; ε of the inverse Laplacian in m⁻².  Internally the
least-squares columns are evaluated with pixel-unit derivatives and rescaled
analytically, which keeps every normal matrix well scaled (no 1e18 entries).

All solvers work on NumPy or CuPy arrays (``backend.get_xp``), process the image in
row blocks (memory bounded by ``block_rows``) and return float32 maps that are finite
everywhere.  Where the code lives: the per-pixel least squares in :mod:`xspeckle.retrieve.pixel_lsq`
(shared with LCS); on NumPy arrays the phase-object model (the paper's, the default) runs three fused
numba kernels (:mod:`xspeckle.retrieve.mist_kernels`, :class:`~xspeckle.retrieve.mist_kernels.FastPhaseObject`):
the same least-squares solve in one pass over the data with float64 sums, threaded over row
chunks (``backend.fft_workers()`` threads); ``XSPECKLE_NUMBA=0`` selects the NumPy path.  φ from ∇²φ
by the inverse Laplacian of :mod:`xspeckle.retrieve.integrate` (filter computed once per retriever);
checks, blur calibration and the model check in :mod:`xspeckle.retrieve.mist_common`; the
directional model in :mod:`xspeckle.retrieve.mist_directional`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve.base import Retriever
from xspeckle.retrieve.derivatives import gradient, laplacian
from xspeckle.retrieve.integrate import (
    angular_frequency_grid,
    antisymmetric_pad,
    auto_epsilon_per_m2,
    default_epsilon_per_m2,
    frankot_chellappa,
    inverse_laplacian_filter,
    mirror_pad,
    zero_border_median,
)
from xspeckle.retrieve.lcs import LCSModel, warp_cubic
from xspeckle.retrieve.mist_common import (
    _EPS_RULE,
    _apply_curve,
    _blur_calibration_curve,
    _check_border_px,
    _check_epsilon,
    _check_pair,
    _phase_from_laplacian,
    _safe_positive,
    attenuation_warning,
    finite,
)
from xspeckle.retrieve.mist_directional import DirectionalMISTRetriever, mist_directional
from xspeckle.retrieve.mist_kernels import FastPhaseObject, fast_available, laplacian_px
from xspeckle.retrieve.pixel_lsq import PixelLSQ, rows_per_block
from xspeckle.retrieve.tie import single_material_tie

__all__ = [
    "MISTRetriever",
    "DirectionalMISTRetriever",
    "mist",
    "mist_attenuating",
    "mist_rapid",
    "mist_directional",
    "fuse_diffusion",
    "single_material_tie",
    "default_epsilon_per_m2",
    "auto_epsilon_per_m2",
    "MODELS",
]

#: the models of :class:`MISTRetriever`
MODELS = ("phase-object", "attenuating", "rapid", "transport")


def fuse_diffusion(d, d_dx, d_dy, pixel_size_m: float, r_m2: float):
    """Low-/high-pass fusion of D with its retrieved gradient (Alloo et al. 2023, Eq. 14; methods.md §1.10).

    ``D_f = F⁻¹[LP·F(D) + HP·F(∂_xD + i∂_yD)/(i k_x − k_y)]``, ``LP = exp(−r|k|²)``,
    ``HP = 1 − LP`` (|k| in rad/m, r in m²).  D is mirror padded and the gradient
    antisymmetric padded on both axes (the upstream script pads one axis only).

    Parameters
    ----------
    d, d_dx, d_dy : array (H, W)
        D (m), ∂_xD and ∂_yD (m/m).
    pixel_size_m : float
    r_m2 : float
        Cut-off r in m² (Alloo: 20–27 µm² = 2.0e-11–2.7e-11 m²).

    Returns
    -------
    D_f : float32 (H, W), in m.
    """
    if not (r_m2 > 0 and math.isfinite(r_m2)):
        raise ParameterError(f"fusion cut-off r must be a positive length² in m², got {r_m2!r}")
    xp = B.get_xp(d)
    h, w = d.shape[-2:]
    dp = mirror_pad(xp.asarray(d, dtype=np.float32))
    gx, gy = antisymmetric_pad(xp.asarray(d_dx, dtype=np.float32), xp.asarray(d_dy, dtype=np.float32))
    shape = dp.shape[-2:]
    ky, kx = angular_frequency_grid(shape, pixel_size_m, xp=xp)
    k2 = kx * kx + ky * ky
    lp = xp.exp(-np.float32(r_m2) * k2).astype(np.float32)
    den = (1j * kx - ky).astype(np.complex64)
    den[0, 0] = 1.0
    spec_d = B.fft2(dp.astype(np.complex64))
    spec_g = B.fft2((gx + 1j * gy).astype(np.complex64))
    spec_g /= den
    spec_g[..., 0, 0] = 0
    out = lp * spec_d + (1 - lp) * spec_g
    res = B.ifft2(out, overwrite_x=True).real
    return xp.ascontiguousarray(res[..., :h, :w]).astype(np.float32, copy=False)



# --------------------------------------------------------------------------- retrievers
class MISTRetriever(Retriever):
    """MIST retriever (Pavlov 2020; Alloo 2022; Alloo 2023), see the module docstring.

    Parameters
    ----------
    reference : array (P, H, W) float32
        Normalised reference speckle images, P ≥ 2 (P ≥ 4 for ``model="rapid"``).
    geometry : Geometry
        Δ = ``sample_detector_distance_m`` (diffuser upstream), energy, pixel size.
    model : {"phase-object", "attenuating", "rapid", "transport"}
        Forward model (module docstring).
    alpha : float, optional
        Tikhonov weight, dimensionless, relative to the column-equilibrated normal
        matrix (mean diagonal = P; each unknown's column scaled to unit RMS).
        Defaults: ``1e-3`` (phase-object: bounds the N = 2 pixels where the two
        equations are nearly parallel, bias ≲ 0.1 % elsewhere); ``0.01`` (attenuating:
        Alloo 2022's α = mean(P²)/100, applied exactly as there).  For ``"rapid"``
        alpha is Alloo 2023's row weight (α·I₄ rows appended to A, i.e. α² added to
        AᵀA of the equilibrated system); default std(A)/10⁴ of the equilibrated A, which
        keeps the method unit-independent (in Alloo's µm units it is equally small).
    epsilon_per_m2 : float or "auto", optional
        Tikhonov ε (m⁻²) of the inverse Laplacian.  Default ``"auto"``: chosen per projection from
        the data by :func:`auto_epsilon_per_m2` (minimum estimated phase risk, capped at
        0.03·k_min²; its phase error against ε = 0 and mbipy: docs/benchmarks.md, "MIST
        regularisation"), the value used is in
        ``last_epsilon_per_m2``; a number fixes it (:func:`default_epsilon_per_m2` gives the former
        default 0.1·k_min²).  ``model="rapid"`` defaults to Alloo 2023's 1e-5 µm⁻² = 1e7 m⁻².
    gamma : float, optional
        δ/β, required for ``model="attenuating"`` (and used by ``"rapid"`` for an
        optional transmission when given).
    fusion_r_m2 : float, optional
        ``"rapid"``: LP/HP cut-off r in m² (default 0.6·p², i.e. 25 µm² at 6.5 µm
        pixels, inside Alloo's 20–27 µm²).
    border_px : int
        Border width for the background rule (:func:`zero_border_median`).
    block_rows : int, optional
        Rows per work block (default: ~64 MiB of float64 temporaries).
    blur_calibration : bool
        Map the first-order D estimate through the reference-based calibration (module
        docstring); ``False`` = Pavlov 2020 / Alloo 2022/2023 as published.
    noise_weighting : bool
        Phase-object model: weight each position's equation by 1/(I_R,n + I_S,n) (Poisson variance of
        I_R − I_S), the paper's "least squares accounting for noise" (Pavlov 2020, Table I); default
        ``False`` (unweighted, as the paper's Eq. 7 and the peers).  NumPy/CuPy path only.
    dewarp : bool
        Our extension (issue 14; phase-object and attenuating models, P ≥ 3): track the speckle
        displacement u by LCS-DF and take ``diffusion`` from the model fitted to the sample resampled at
        r + u, so that strong refraction (u ~ 1 px) is not read as dark field (second-order terms of
        Pavlov 2020 Eq. 1); phase and transmission stay from the plain fit.
        Default ``False`` (the published method); benchmarks/results/mist.md measures both.

    Notes
    -----
    Outputs: ``phase`` (rad, border median 0 for phase-object/rapid/transport), ``diffusion``
    (D_eff, m), ``residual`` (RMS misfit of the linear model / RMS of the data),
    ``transmission`` for ``"attenuating"`` (and ``"rapid"`` with γ, where ``diffusion`` is
    then D_f/T as Alloo 2023), ``displacement`` (2, H, W) px for ``"transport"``.
    The parameters record α, ε, γ, the calibration table, etc.
    """

    name: ClassVar[str] = "mist"
    summary: ClassVar[str] = ("Multimodal Intrinsic Speckle Tracking (Pavlov 2020); model=attenuating (Alloo 2022), "
                              "rapid (Alloo 2023), transport")
    outputs: ClassVar[tuple[str, ...]] = ("phase", "transmission", "diffusion", "displacement", "residual")
    min_positions: ClassVar[int] = 2

    def __init__(
        self,
        reference,
        geometry: Geometry,
        *,
        model: str = "phase-object",
        alpha: float | None = None,
        epsilon_per_m2: float | str | None = None,
        gamma: float | None = None,
        fusion_r_m2: float | None = None,
        border_px: int = 8,
        block_rows: int | None = None,
        blur_calibration: bool = False,
        dewarp: bool = False,
        noise_weighting: bool = False,
    ):
        super().__init__(reference, geometry)
        if model not in MODELS:
            raise ParameterError(f"MIST model must be one of {', '.join(MODELS)}; got {model!r}")
        ref = self.reference
        xp = B.get_xp(ref)
        P, H, W = ref.shape
        if min(H, W) < 4:
            raise InputError(f"mist: images must be at least 4x4 pixels, got {(H, W)}")
        if model in ("rapid", "transport") and P < 4:
            raise InputError(f"mist model {model!r} solves 4 unknowns per pixel and needs >= 4 diffuser positions, got {P}")
        if model == "attenuating" and gamma is None:
            raise ParameterError("mist model 'attenuating' needs gamma = delta/beta of the sample material (e.g. gamma=2335 for PMMA at 25 keV)")
        if gamma is not None and not (float(gamma) > 0 and math.isfinite(float(gamma))):
            raise ParameterError(f"gamma (delta/beta) must be a positive number, got {gamma!r}")
        epsilon_per_m2 = _check_epsilon(epsilon_per_m2)
        if alpha is not None and not (float(alpha) >= 0 and math.isfinite(float(alpha))):
            raise ParameterError(f"alpha must be finite and >= 0, got {alpha!r}")
        self.model = model
        self.gamma = None if gamma is None else float(gamma)
        self.border_px = _check_border_px(border_px, H, W)
        self.block_rows = block_rows
        p = geometry.pixel_size_m
        delta = geometry.sample_detector_distance_m
        k = geometry.wavenumber_per_m
        self._p, self._delta, self._k = p, delta, k
        if model == "rapid" and epsilon_per_m2 is None:
            epsilon_per_m2 = 1e7  # Alloo 2023 (update script): 1e-5 µm⁻² = 1e7 m⁻²
        # default: ε from each projection's data (auto_epsilon_per_m2); a number fixes it
        self.epsilon_per_m2 = "auto" if epsilon_per_m2 is None else epsilon_per_m2
        self._fast = None
        if model != "phase-object":
            lap_px = laplacian_px(ref)  # ∇²I_R in px⁻² (5-point stencil of derivatives.laplacian)

        if model == "phase-object":
            # Pavlov 2020 Eq. (4)/(6): b_n = I_R − I_S = I_R·g − L_px·c,
            # g = (Δ/k)∇²φ (1), c = Δ D_eff / p² (1)
            self.alpha = 1e-3 if alpha is None else float(alpha)
            if fast_available(xp):
                # fused numba kernels (same solve, one pass; see mist_kernels.FastPhaseObject)
                self._fast = FastPhaseObject(ref, self.alpha, block_rows)
                self._lsq = None
            else:
                lap_px = laplacian_px(ref)  # ∇²I_R in px⁻² (5-point stencil of derivatives.laplacian)
                lap_px *= -1
                self._lsq = PixelLSQ([ref, lap_px], self.alpha, block_rows)
            self.outputs = ("phase", "diffusion", "residual")
        elif model == "attenuating":
            # Alloo 2022: b_n = I_S/I_R = G1 + c·q_n, q_n = ∇²I_R/I_R (px⁻²), c = ΔD/p²
            self.alpha = 0.01 if alpha is None else float(alpha)
            ir = _safe_positive(ref)
            q = lap_px / ir
            self._inv_ref = (1.0 / ir).astype(np.float32)
            qm = xp.mean(q, axis=0, dtype=np.float64)
            qc = (q - qm.astype(np.float32)).astype(np.float32)  # centred q_n − q̄
            sqq = xp.sum(xp.square(qc, dtype=np.float64), axis=0)  # Σ(q − q̄)²
            # pair-wise P = Δ Σ_{i<j} det_ij² = Δ N Σ(q − q̄)²; α = alpha·mean(P²) (Alloo 2022: mean/100)
            pp = P * sqq  # Δ and p factors cancel in P²/(P² + α), so work in px units
            a_abs = self.alpha * float(xp.mean(pp * pp))
            self._qc, self._qm = qc, qm
            # c = (Σ_{i<j} det·num)·P/(P² + α) / … expressed with the O(N) identity:
            # Σ_{i<j} det_ij num_ij = N Σ (q − q̄) b  (b̄ drops out since Σ(q − q̄) = 0)
            self._gain = (P * pp / (pp * pp + max(a_abs, 1e-300))).astype(np.float64)
            self.outputs = ("phase", "transmission", "diffusion", "residual")
        elif model == "transport":
            # Pavlov 2020 Eq. (1)–(2) without approximation (5): the transport term is kept,
            # I_R − I_S = I_R·g + Gx_px·ux + Gy_px·uy − L_px·c, with g = (Δ/k)∇²φ,
            # u = Δ∇φ/(k p) (px, the speckle displacement of design.md), c = ΔD/p²
            self.alpha = 1e-3 if alpha is None else float(alpha)
            gy, gx = gradient(ref, 1.0)
            lap_px *= -1
            self._lsq = PixelLSQ([ref, lap_px, gx, gy], self.alpha, block_rows)
            self.outputs = ("phase", "diffusion", "displacement", "residual")
        else:  # rapid
            # Alloo 2023: (I_R − I_S) = I_R·u − L_px·c − 2 Gx_px·cx − 2 Gy_px·cy,
            # u = Δ∇²(φ/k − D), c = ΔD/p², cx = Δ∂_xD/p, cy = Δ∂_yD/p (all 1)
            gy, gx = gradient(ref, 1.0)
            gx *= -2
            gy *= -2
            lap_px *= -1
            cols = [ref, lap_px, gx, gy]
            if alpha is None:
                # α = std(A)/1e4 (Alloo 2023), on the equilibrated matrix; α² enters A^T A
                s = [math.sqrt(float(xp.vdot(c.ravel(), c.ravel())) / c.size) or 1.0 for c in cols]
                m1 = sum(float(xp.mean(cols[j], dtype=np.float64)) / s[j] for j in range(4)) / 4
                m2 = 1.0  # mean of squares of the equilibrated entries
                self.alpha = math.sqrt(max(m2 - m1 * m1, 0.0)) / 1e4
            else:
                self.alpha = float(alpha)
            # appending α·I₄ rows to A adds α² to A^T A (Alloo 2023)
            self._lsq = PixelLSQ(cols, 0.0, block_rows, alpha_abs_eq=self.alpha**2)
            self.fusion_r_m2 = 0.6 * p * p if fusion_r_m2 is None else float(fusion_r_m2)
            self.outputs = ("phase", "diffusion", "residual") + (("transmission",) if gamma is not None else ())
        lap_px = None  # release the temporary
        self.parameters = {
            "model": model,
            "alpha": self.alpha,
            "epsilon_per_m2": self.epsilon_per_m2,
            "epsilon_rule": _EPS_RULE if self.epsilon_per_m2 == "auto" else "fixed",
            "gamma": self.gamma,
            "border_px": self.border_px,
            "n_positions": P,
            "sample_detector_distance_m": delta,
        }
        if model == "rapid":
            self.parameters["fusion_r_m2"] = self.fusion_r_m2
        # inverse-Laplacian factor for this shape and ε: reference-only work, done once
        self._ilap = (inverse_laplacian_filter((H, W), p, self.epsilon_per_m2, xp)
                      if model in ("phase-object", "rapid") and self.epsilon_per_m2 != "auto" else None)
        self.last_epsilon_per_m2 = None  # the ε of the latest projection (auto rule)
        self._ref_mean = None  # mean reference over positions (float64), for the attenuation check
        self._calib = None
        self._diffusion_only = False  # internal: calibration runs need D only
        self.noise_weighting = bool(noise_weighting)
        if self.noise_weighting and model != "phase-object":
            raise ParameterError(f"mist: noise_weighting applies to the phase-object model, not {model!r}")
        self.parameters["noise_weighting"] = self.noise_weighting
        self._lap_w = None
        self.dewarp = bool(dewarp)
        self._lcs = None
        if self.dewarp:
            if model not in ("phase-object", "attenuating"):
                raise ParameterError(f"mist: dewarp applies to the phase-object and attenuating models, not {model!r}")
            if P < 3:
                raise InputError(f"mist: dewarp tracks the speckle with LCS and needs >= 3 diffuser positions, got {P}")
            self._lcs = LCSModel(ref, "df", alpha=1e-4)  # displacement u for the dewarp (reference work)
        self.parameters["dewarp"] = self.dewarp
        self.blur_calibration = bool(blur_calibration)
        if self.blur_calibration:
            self._calib = self._calibrate_blur(alpha=alpha, fusion_r_m2=fusion_r_m2)
            self.parameters["blur_calibration"] = {
                "true_diffusion_m": [float(v) for v in self._calib[0]],
                "first_order_estimate_m": [float(v) for v in self._calib[1]],
            }
        else:
            self.parameters["blur_calibration"] = None

    # ------------------------------------------------------------------ calibration
    def _calibrate_blur(self, *, alpha, fusion_r_m2):
        kw = dict(model=self.model, alpha=alpha, epsilon_per_m2=self.epsilon_per_m2, gamma=self.gamma,
                  fusion_r_m2=fusion_r_m2, border_px=self.border_px, blur_calibration=False)
        return _blur_calibration_curve(lambda sub: MISTRetriever(sub, self.geometry, **kw), self.reference, self.geometry)

    def _apply_calibration(self, d):
        return _apply_curve(d, self._calib)

    # ------------------------------------------------------------------ per projection
    def _dewarped(self, sample):
        """Issue 14: the sample resampled at r + u, with u the speckle displacement tracked by LCS-DF (two
        refine passes), so that the first-order fit does not take refraction's second-order terms
        (½ u_i u_j ∂_i∂_j I_R, Pavlov 2020 Eq. 1 before approximation 5) for Fokker–Planck blur."""
        u = self._lcs(sample, refine=2)["displacement"]
        return warp_cubic(sample, -u[0], -u[1])

    def _retrieve(self, sample) -> dict[str, Any]:
        out = self._retrieve_model(sample)
        if self._lcs is not None and not self._diffusion_only:
            # D from the fit to the dewarped sample; phase/transmission stay from the plain fit (resampling
            # moves ∇²φ to r + u and costs phase accuracy: measured in benchmarks/results/mist.md)
            out["diffusion"] = self._retrieve_model(self._dewarped(sample)).pop("diffusion")
        return out

    def _retrieve_model(self, sample) -> dict[str, Any]:
        if self.model == "phase-object":
            return self._model_check(self._phase_object(sample), sample)
        if self.model == "transport":
            return self._model_check(self._transport(sample), sample)
        if self.model == "attenuating":
            out = self._attenuating(sample)
        elif self.model == "transport":
            out = self._transport(sample)
        else:
            out = self._rapid(sample)
        return out

    def _model_check(self, out, sample):
        """Issue 14: a phase-object model reads attenuation as phase (FourRod: 5·10⁴ rad instead of ~140 rad);
        say so in ``out["warnings"]`` (one line naming the fix) when the data show it."""
        if self._diffusion_only:
            return out
        if self._ref_mean is None:
            self._ref_mean = B.get_xp(self.reference).mean(self.reference, axis=0, dtype=np.float64)
        w = attenuation_warning(self._ref_mean, sample, model=self.model,
                                fix="use --param model=attenuating gamma=<delta/beta> (e.g. 2335 for PMMA at 25 keV), "
                                    "or --method tie --param gamma=<delta/beta>")
        if w:
            out["warnings"] = [w]
        return out

    def _calibrated(self, d):
        return self._apply_calibration(d) if self._calib is not None else d

    def _transport(self, sample):
        xp = B.get_xp(sample)
        ref = self.reference
        P, H, W = ref.shape
        lsq = self._lsq
        x_all = xp.empty((4, H, W), dtype=np.float32)
        res = xp.empty((H, W), dtype=np.float32)
        for y0 in range(0, H, lsq.rows):
            y1 = min(H, y0 + lsq.rows)
            b = ref[:, y0:y1] - sample[:, y0:y1]  # Pavlov 2020 Eq. (1)–(2) left side
            x, res[y0:y1] = lsq.solve_block(b, y0, y1, sample[:, y0:y1])
            x_all[:, y0:y1] = x
        p, delta, k = self._p, self._delta, self._k
        if self._diffusion_only:
            return {"diffusion": finite(x_all[1] * np.float32(p * p / delta))}
        u = finite(x_all[2:])  # displacement (px), design.md: ∇φ = k p u / Δ
        gscale = np.float32(k * p / delta)
        phase = frankot_chellappa(u[0] * gscale, u[1] * gscale, p)  # FC 1988, antisymmetric pad
        phase = zero_border_median(phase, self.border_px)
        d_eff = self._calibrated(finite(x_all[1] * np.float32(p * p / delta)))
        return {"phase": finite(phase), "diffusion": d_eff, "displacement": xp.ascontiguousarray(u), "residual": finite(res)}

    def _weighted_phase_object(self, sample):
        """Pavlov 2020 Eq. (6) solved "in the least-squares sense accounting for noise" (paper, Table I): each
        equation n weighted by 1/var(b_n) with var(I_R,n − I_S,n) ∝ I_R,n + I_S,n (Poisson, normalised
        units; the photon scale cancels).  Per projection 2×2 weighted normal equations in float64, Tikhonov
        λ_j = α·mean_pixels(M_jj) (the unweighted solver's rule in unit-free form)."""
        xp = B.get_xp(sample)
        ref = self.reference
        P, H, W = ref.shape
        if self._lap_w is None:
            self._lap_w = laplacian_px(ref)  # ∇²I_R (px⁻²), reference-only: once
        lap = self._lap_w  # column −∇²I_R
        m00 = xp.zeros((H, W), np.float64)
        m01 = xp.zeros_like(m00)
        m11 = xp.zeros_like(m00)
        r0 = xp.zeros_like(m00)
        r1 = xp.zeros_like(m00)
        for n in range(P):
            w = 1.0 / xp.maximum(ref[n].astype(np.float64) + sample[n], 1e-6)
            a = ref[n].astype(np.float64)
            c = -lap[n].astype(np.float64)
            b = a - sample[n]
            m00 += w * a * a
            m01 += w * a * c
            m11 += w * c * c
            r0 += w * a * b
            r1 += w * c * b
        m00 += self.alpha * float(xp.mean(m00))
        m11 += self.alpha * float(xp.mean(m11))
        det = m00 * m11 - m01 * m01
        ok = xp.abs(det) > 1e-300
        det = xp.where(ok, det, 1.0)
        g = xp.where(ok, (m11 * r0 - m01 * r1) / det, 0.0)
        c = xp.where(ok, (m00 * r1 - m01 * r0) / det, 0.0)
        lap_phi = finite((g * (self._k / self._delta)).astype(np.float32))  # ∇²φ = (k/Δ)·g
        d_eff = finite((c * (self._p**2 / self._delta)).astype(np.float32))  # D_eff = c·p²/Δ
        if self._diffusion_only:
            return {"diffusion": d_eff}
        res = xp.zeros((H, W), np.float64)
        ss = xp.zeros((H, W), np.float64)
        for n in range(P):
            e = ref[n] - sample[n] - g * ref[n] + c * lap[n]
            res += e * e
            ss += sample[n].astype(np.float64) ** 2
        res = finite(xp.sqrt(res / xp.maximum(ss, 1e-30)).astype(np.float32))
        phase, self.last_epsilon_per_m2 = _phase_from_laplacian(lap_phi, self.geometry, self.epsilon_per_m2,
                                                                self.border_px, self._ilap)
        return {"phase": finite(phase), "diffusion": self._calibrated(d_eff), "residual": res}

    def _phase_object(self, sample):
        if self.noise_weighting:
            return self._weighted_phase_object(sample)
        if self._fast is not None:
            # ∇²φ = (k/Δ)·g [m⁻²], D_eff = c·p²/Δ [m] (Pavlov 2020 Eq. 6–7 with our column scaling)
            lap_phi, d_eff, res = self._fast.solve(sample, self._k / self._delta, self._p**2 / self._delta,
                                                   want_residual=not self._diffusion_only)
            if self._diffusion_only:
                return {"diffusion": d_eff}
            phase, self.last_epsilon_per_m2 = _phase_from_laplacian(lap_phi, self.geometry, self.epsilon_per_m2,
                                                                    self.border_px, self._ilap)
            return {"phase": finite(phase), "diffusion": self._calibrated(d_eff), "residual": res}
        xp = B.get_xp(sample)
        ref = self.reference
        P, H, W = ref.shape
        lsq = self._lsq
        g = xp.empty((H, W), dtype=np.float32)
        c = xp.empty((H, W), dtype=np.float32)
        res = xp.empty((H, W), dtype=np.float32)
        for y0 in range(0, H, lsq.rows):
            y1 = min(H, y0 + lsq.rows)
            b = ref[:, y0:y1] - sample[:, y0:y1]  # Pavlov 2020 Eq. (6) left side
            if self._diffusion_only:
                x = lsq.solve_block(b, y0, y1)
            else:
                x, res[y0:y1] = lsq.solve_block(b, y0, y1, sample[:, y0:y1])
            g[y0:y1] = x[0]
            c[y0:y1] = x[1]
        lap_phi = g * np.float32(self._k / self._delta)  # ∇²φ = (k/Δ)·g   [m⁻²]
        d_eff = c * np.float32(self._p**2 / self._delta)  # D_eff = c·p²/Δ   [m]
        if self._diffusion_only:
            return {"diffusion": finite(d_eff)}
        phase, self.last_epsilon_per_m2 = _phase_from_laplacian(finite(lap_phi), self.geometry, self.epsilon_per_m2,
                                                                self.border_px, self._ilap)
        return {"phase": finite(phase), "diffusion": self._calibrated(finite(d_eff)), "residual": finite(res)}

    def _attenuating(self, sample):
        xp = B.get_xp(sample)
        P, H, W = self.reference.shape
        rows = rows_per_block(3 * P, W, self.block_rows)
        c = xp.empty((H, W), dtype=np.float32)
        g1 = xp.empty((H, W), dtype=np.float32)
        res = xp.empty((H, W), dtype=np.float32)
        for y0 in range(0, H, rows):
            y1 = min(H, y0 + rows)
            b = sample[:, y0:y1] * self._inv_ref[:, y0:y1]  # I_S,n/I_R,n
            qc = self._qc[:, y0:y1]
            s = xp.zeros((y1 - y0, W), dtype=np.float64)
            for n in range(P):
                s += qc[n] * b[n]
            # Alloo 2022: D·Δ/p² = (Σ det·num)·P/(P² + α) with the O(N) sums
            cc = s * self._gain[y0:y1]
            bm = xp.mean(b, axis=0, dtype=np.float64)
            gg = bm - cc * self._qm[y0:y1]  # G1 = mean(I_S/I_R) − ΔD·mean(q)
            c[y0:y1] = cc
            g1[y0:y1] = gg
            ms = xp.zeros_like(s)
            for n in range(P):
                r = b[n] - gg - cc * (qc[n] + self._qm[y0:y1])
                ms += r * r
            res[y0:y1] = xp.sqrt(ms / xp.maximum(xp.sum(xp.square(b, dtype=np.float64), axis=0), 1e-30))
        if self._diffusion_only:
            return {"diffusion": finite(c * np.float32(self._p**2 / self._delta))}
        g2 = c  # ΔD/p² ; G = G1 − ∇²(ΔD) = G1 − ∇²_px(c)   (Alloo 2022, methods.md §1.11)
        gmap = g1 - laplacian(g2, 1.0)
        iob = single_material_tie(gmap, self.geometry, self.gamma)
        iob = xp.maximum(finite(iob, 1.0), np.float32(1e-6))
        d = self._calibrated(finite(c * np.float32(self._p**2 / self._delta)))  # D (m), includes I_ob
        d_eff = d / iob  # D_att = D / I_ob (Alloo 2022)
        phase = np.float32(self.gamma / 2) * xp.log(iob)  # φ = (γ/2) ln T (single material)
        return {
            "phase": finite(phase),
            "transmission": finite(iob, 1.0),
            "diffusion": finite(d_eff),
            "residual": finite(res),
        }

    def _rapid(self, sample):
        xp = B.get_xp(sample)
        ref = self.reference
        P, H, W = ref.shape
        lsq = self._lsq
        x_all = xp.empty((4, H, W), dtype=np.float32)
        res = xp.empty((H, W), dtype=np.float32)
        for y0 in range(0, H, lsq.rows):
            y1 = min(H, y0 + lsq.rows)
            b = ref[:, y0:y1] - sample[:, y0:y1]  # Δ × left side of Alloo 2023's system
            x, res[y0:y1] = lsq.solve_block(b, y0, y1, sample[:, y0:y1])
            x_all[:, y0:y1] = x
        p, delta, k = self._p, self._delta, self._k
        d = x_all[1] * np.float32(p * p / delta)  # D (m)
        d_dx = x_all[2] * np.float32(p / delta)  # ∂_xD (1)
        d_dy = x_all[3] * np.float32(p / delta)
        d_f = fuse_diffusion(finite(d), finite(d_dx), finite(d_dy), p, self.fusion_r_m2)
        if self._diffusion_only:
            return {"diffusion": finite(d_f)}
        # Alloo 2023 phase: (Δ/k)∇²φ I_R,n = I_R,n − I_S,n + Δ∇²(D_f I_R,n), LS over n (weights I_R,n)
        num = xp.zeros((H, W), dtype=np.float64)
        den = xp.zeros((H, W), dtype=np.float64)
        scale = np.float32(delta / (p * p))
        for n in range(P):
            cn = ref[n] - sample[n] + scale * laplacian(d_f * ref[n], 1.0)
            num += ref[n] * cn
            den += ref[n] * ref[n]
        lap_phi = (num / xp.maximum(den, 1e-30) * (k / delta)).astype(np.float32)
        phase, self.last_epsilon_per_m2 = _phase_from_laplacian(finite(lap_phi), self.geometry, self.epsilon_per_m2,
                                                                self.border_px, self._ilap)
        out = {"phase": finite(phase), "diffusion": self._calibrated(finite(d_f)), "residual": finite(res)}
        if self.gamma is not None:
            # single-material transmission φ = (γ/2) ln T → T = exp(2φ/γ); D_att = D_f/T (Alloo 2023)
            out["transmission"] = finite(xp.exp(xp.minimum(2 * phase / np.float32(self.gamma), 50)), 1.0)
            out["diffusion"] = finite(out["diffusion"] / xp.maximum(out["transmission"], 1e-6))
        return out


# --------------------------------------------------------------------------- functions
def mist(*, reference, sample, geometry: Geometry, model: str = "phase-object", **params) -> dict[str, Any]:
    """MIST retrieval of one projection (plain-function form of :class:`MISTRetriever`).

    Parameters
    ----------
    reference, sample : array (P, H, W)
        Normalised reference and sample stacks (same diffuser positions, same order).
    geometry : Geometry
    model : {"phase-object", "attenuating", "rapid", "transport"}
    **params
        ``alpha``, ``epsilon_per_m2``, ``gamma``, ``fusion_r_m2``, ``border_px``,
        ``block_rows``, ``blur_calibration`` (see :class:`MISTRetriever`).

    Returns
    -------
    dict of float32 (H, W) maps: ``phase`` (rad), ``diffusion`` (m), ``residual`` (1),
    ``transmission`` (1) where the model gives it, ``displacement`` (2, H, W) px for
    ``"transport"``.
    """
    ref, smp = _check_pair(reference, sample, 2, "mist")
    return MISTRetriever(ref, geometry, model=model, **params)(smp)


def mist_attenuating(*, reference, sample, geometry: Geometry, gamma: float, **params) -> dict[str, Any]:
    """MIST for attenuating single-material objects (Alloo et al. 2022), see :class:`MISTRetriever`."""
    return mist(reference=reference, sample=sample, geometry=geometry, model="attenuating", gamma=gamma, **params)


def mist_rapid(*, reference, sample, geometry: Geometry, **params) -> dict[str, Any]:
    """MIST for rapidly varying dark field (Alloo et al. 2023), see :class:`MISTRetriever`."""
    return mist(reference=reference, sample=sample, geometry=geometry, model="rapid", **params)
