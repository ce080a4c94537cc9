"""Preconditioned Wirtinger flow (PWF): phase and transmission from ONE speckle pair.

Lee, Hugonnet, Lim & Park, Light Sci. Appl. (2026), doi:10.1038/s41377-025-02118-z, as
specified in ``shared/specs/pwf.md`` (forward model §1, loss and gradient §2, Algorithm S2
§3, Algorithm S1 §4; reconstructed from the authors' MIT-licensed MATLAB code).

Forward model (pwf.md §1), diffuser *downstream* of the sample::

    x  = exp(ψ)                        ψ = log-amplitude + i·phase (phase < 0 in matter)
    u1 = P_L1{x}                       sample → diffuser (Fresnel, optics.py convention)
    Y  = P_L2{t · u1}                  t: diffuser exit field estimated from the reference
    f(ψ) = IPSF ⊛ |Y|²                 partial coherence (IOTF, Eq. 5)

Objective actually minimised (pwf.md §2–3; the preconditioner of Alg. S2 acts only on the
data gradient, which makes the iteration a preconditioned gradient descent on)::

    L(ψ) = 1/(2c) ⟨Σ_r m_r² (IPSF⊛|Y|² − y_B)_r²⟩_K
         + a_re Σ_k Γ_k²       |F{Re ψ}_k|²/N
         + a_im Σ_k κ_k² Γ_k²  |F{Im ψ}_k|²/N          κ in cycles/pixel (P⁻¹ = 1/κ²)

whose Wirtinger gradient ∂L/∂ψ*, preconditioned by M = diag(1, P⁻¹) on (Re, Im), is exactly
the authors' update direction.  ⟨·⟩_K averages over K diffuser positions (multi-position PWF,
pwf.md §1 end).  ``c = (max|t|²)²`` [pwf.md §2], Γ² = 1 − STF (Eqs. 14–15), y_B the sample
softly band-limited by a Wiener filter with ε = 1e-5.

Optimisation (:meth:`PWFModel.solve`): ``scheme="paper"`` is Algorithm S1 (Nesterov/FISTA,
η = 1, no restart, the paper's correlation stop) plus guards (≥ 300 iterations, loss plateau,
divergence → momentum reset and η/2); ``scheme="fast"`` (default) adds O'Donoghue–Candès
adaptive restart and stops on the relative change of ψ + loss plateau — same fixed point,
typically 2–3× fewer iterations (benchmarks/bench_pwf.py).

Everything (one code path) runs on NumPy or CuPy arrays, complex64/float32, FFTs through
:mod:`xspeckle.backend`.  Projections are processed in batches ``(B, K, H, W)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve.base import Retriever, as_stack
from xspeckle.retrieve.coherence import (
    DIFFUSER_ESTIMATES,
    calibrate,
    diffuser_transmission,
    fresnel_transfer_yx,
    iotf,
    optics_of,
    stf,
)

__all__ = ["PWFRetriever", "PWFResult", "PWFModel", "pwf", "fourier_resample", "SCHEMES", "MODEL_OPTIONS",
           "zero_background_plane"]

#: optimisation schemes: "paper" = Alg. S1 (FISTA, fixed step, no restart, correlation stop + guards);
#: "fast" = ours (adaptive momentum restart, ψ-change + loss-plateau stop), see :meth:`PWFModel.solve`.
SCHEMES = ("lbfgs", "fast", "paper")

#: options of :class:`PWFModel` (the rest of ``**params`` go to :meth:`PWFModel.solve`)
MODEL_OPTIONS = ("coherence_length_x_m", "coherence_length_y_m", "gamma", "a_re", "a_im", "pad_ratio", "resample",
                 "wing_ratio", "background_mask", "wiener_eps", "stripe_fix", "delta_over_beta", "diffuser_estimate",
                 "all_references", "multi_reference_field")

#: PWF's diffuser-field estimates: those of :func:`xspeckle.retrieve.coherence.diffuser_transmission` on the
#: reference of the position used, and "multi-reference" (ours): every reference position of the scan,
#: registered onto the one used and averaged into a mosaic that also covers the padding (PWFModel)
PWF_DIFFUSER_ESTIMATES = DIFFUSER_ESTIMATES + ("multi-reference",)

_SCHEME_DEFAULTS = {
    # eta: step (re, im); restart: O'Donoghue–Candès function-value restart; stop: rule
    "paper": dict(eta=(1.0, 1.0), restart=False, stop="correlation", min_iter=300, max_iter=5000),
    "fast": dict(eta=(1.0, 1.0), restart=True, stop="change", min_iter=50, max_iter=5000),
    # ours: preconditioned L-BFGS (pwf_lbfgs.py); iterations = gradient evaluations
    "lbfgs": dict(eta=(1.0, 1.0), restart=False, stop="lbfgs", min_iter=30, max_iter=3000),
}


# --------------------------------------------------------------------------- helpers
def fourier_resample(a, shape_out: tuple[int, int]):
    """Fourier-resample ``(..., H, W)`` to ``(..., H', W')`` (crop / zero-pad the centred spectrum).

    Values are rescaled by ``H'W'/(HW)`` so that a constant image keeps its value (pwf.md §4 step 4).
    Real input gives real float32 output; complex input complex64.
    """
    xp = B.get_xp(a)
    h, w = a.shape[-2:]
    ho, wo = int(shape_out[0]), int(shape_out[1])
    if (h, w) == (ho, wo):
        return a
    real = not xp.iscomplexobj(a)
    spec = xp.fft.fftshift(B.fft2(xp.asarray(a, dtype=np.complex64)), axes=(-2, -1))
    out = xp.zeros(a.shape[:-2] + (ho, wo), dtype=np.complex64)
    mh, mw = min(h, ho), min(w, wo)
    si, sj = h // 2 - mh // 2, w // 2 - mw // 2
    di, dj = ho // 2 - mh // 2, wo // 2 - mw // 2
    out[..., di:di + mh, dj:dj + mw] = spec[..., si:si + mh, sj:sj + mw]
    res = B.ifft2(xp.fft.ifftshift(out, axes=(-2, -1)), overwrite_x=True)
    res *= np.float32(ho * wo / (h * w))
    return res.real.astype(np.float32) if real else res.astype(np.complex64)


def _tukey(n: int, taper: float) -> np.ndarray:
    """Tukey window of length *n* whose cosine tapers cover ``taper·n`` samples at EACH end."""
    if taper <= 0:
        return np.ones(n)
    x = np.arange(n, dtype=np.float64)
    wdt = max(taper * (n - 1), 1e-9)
    win = np.ones(n)
    lo = x < wdt
    hi = x > (n - 1) - wdt
    win[lo] = 0.5 * (1 - np.cos(np.pi * x[lo] / wdt))
    win[hi] = 0.5 * (1 - np.cos(np.pi * ((n - 1) - x[hi]) / wdt))
    return win


def zero_background_plane(phase, background_mask):
    """Subtract the least-squares plane ``a·y + b·x + c`` fitted over *background_mask* (pwf.md §4 step 12).

    Parameters
    ----------
    phase : array ``(..., H, W)`` float32
    background_mask : array ``(H, W)`` bool, sample-free pixels

    Returns
    -------
    float32 array, same shape, with the fitted plane subtracted (per leading index).
    """
    xp = B.get_xp(phase)
    h, w = phase.shape[-2:]
    m = xp.asarray(background_mask, dtype=np.float64)
    yy = xp.arange(h, dtype=np.float64)[:, None] - (h - 1) / 2
    xx = xp.arange(w, dtype=np.float64)[None, :] - (w - 1) / 2
    basis = [yy * m + 0 * xx, xx * m + 0 * yy, m]
    n = len(basis)
    ata = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            ata[i, j] = float((basis[i] * basis[j]).sum())
    flat = phase.reshape((-1, h, w)).astype(np.float64)
    atb = np.stack([B.asnumpy((flat * bi).sum(axis=(-2, -1))) for bi in basis], axis=-1)  # (N, 3)
    coef = np.linalg.solve(ata, atb.T).T                                                 # (N, 3)
    c = xp.asarray(coef)
    plane = c[:, 0, None, None] * yy + c[:, 1, None, None] * xx + c[:, 2, None, None]
    return (flat - plane).astype(np.float32).reshape(phase.shape)


def _fast_len(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3, 5, 7 (fast in pocketfft and cuFFT alike)."""
    m = max(int(n), 1)
    while True:
        k = m
        for f in (2, 3, 5, 7):
            while k % f == 0:
                k //= f
        if k == 1:
            return m
        m += 1


# --------------------------------------------------------------------------- result
@dataclass
class PWFResult:
    """Result of :func:`pwf` for a batch of projections.

    Attributes
    ----------
    phase : array ``(H, W)`` (or ``(B, H, W)``), rad, negative in matter, background plane zeroed
    transmission : array, intensity transmission ``exp(2 Re ψ)`` (1 in air)
    residual : array, RMSE image ``|y − f(ψ)|`` / mean reference (RMS over positions when K > 1)
    psi : array complex64, the retrieved ψ on the detector grid (before background zeroing)
    iterations : list of int, iterations used per projection
    stop_reason : list of str
    loss_history : list of 1-D float arrays (loss L per iteration, per projection)
    parameters : dict, effective parameters (JSON-able)
    """

    phase: Any
    transmission: Any
    residual: Any
    psi: Any
    iterations: list
    stop_reason: list
    loss_history: list
    parameters: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- model
class PWFModel:
    """Precomputed PWF operators for one reference stack (reference-only work).

    Parameters
    ----------
    reference : array ``(K, H, W)`` float32
        Flat-normalised reference speckle, one frame per diffuser position used.
    geometry : Geometry
        Downstream-diffuser geometry (L1 = Δ − L2, L2).
    coherence_length_x_m, coherence_length_y_m : float, optional
        Detector-plane coherence lengths (m); default: from *geometry*, else calibrated
        from the reference (:func:`xspeckle.retrieve.coherence.calibrate`).
    gamma : float
        STF oversampling ratio γ of Eq. 14 (paper: 1).
    a_re, a_im : float
        Regularisation weights on Re ψ and Im ψ (paper: 0.1, 0.01).
    pad_ratio : float
        Edge-replicate padding per side as a fraction of the frame size (paper: 0.15).
    resample : {"auto", None} or float
        Fourier resampling of the padded grid: ``"auto"`` = the paper's pixel 1/(6σ_I,max)
        when that is coarser than the detector pixel (down-sampling only); a float is the
        pixel ratio new/old; ``None`` disables.
    wing_ratio : float
        Width of the sample-free left/right wings as a fraction of W (paper: 0.05).
    background_mask : array ``(H, W)`` bool, optional
        Sample-free pixels for the background-phase plane fit (default: the wings).
    wiener_eps : float
        ε of the sample's Wiener band-limit (paper: 1e-5).
    stripe_fix : bool
        The authors' row-stripe (vertical-jitter) correction from the wings (pwf.md §4 step 2).
    delta_over_beta : float, optional
        Single-material prior (our extension, not in the paper): constrain ``Re ψ = Im ψ / (δ/β)``,
        i.e. ``ψ = (β/δ + i)·φ`` with one real unknown φ per pixel (the projected-thickness coupling of
        Paganin et al., J. Microsc. 206, 33 (2002), Eq. 3, used by MIST's attenuating model). One
        speckle image constrains low-frequency phase and absorption only weakly and separately; the
        coupling removes that ambiguity. Default None: phase and log-amplitude free (the paper).
    diffuser_estimate : {"zero-phase", "phase-only", "multi-reference"}
        ``"multi-reference"`` (ours, single shot): every reference position of the scan (*all_references*)
        is registered onto the position used and averaged over its field of view
        (:meth:`_reference_mosaic`); the field is then estimated from that average as
        *multi_reference_field* says.  Otherwise: how the diffuser field ``t`` is estimated from the reference
        (:func:`xspeckle.retrieve.coherence.diffuser_transmission`): ``"zero-phase"`` the paper's
        (pwf.md §5); ``"phase-only"`` ours, Richardson–Lucy deconvolution + Gerchberg–Saxton with a
        constant-modulus (phase-only) diffuser; the step normaliser c stays the zero-phase field's, so
        a_re, a_im keep the paper's meaning. On tomo-beads (2 positions) ``"phase-only"`` brings the
        tomogram's δ in the beads from +3.2 % to −0.4 % and β from −20 % to −11 %
        (benchmarks/bench_tomo_e2e.py).
    all_references : array ``(P, H, W)``, optional
        The flat-normalised reference frames of every diffuser position of the scan (the pipeline passes
        them): the coherence calibration uses them all when the lengths are not given, and
        ``"multi-reference"`` builds the diffuser from them.
    multi_reference_field : {"phase-only", "zero-phase"}
        ``"multi-reference"`` only: the field estimate applied to the mosaic.
    """

    def __init__(self, reference, geometry: Geometry, *, coherence_length_x_m: float | None = None,
                 coherence_length_y_m: float | None = None, gamma: float = 1.0, a_re: float = 0.1,
                 a_im: float = 0.01, pad_ratio: float = 0.15, resample="auto", wing_ratio: float = 0.05,
                 background_mask=None, wiener_eps: float = 1e-5, stripe_fix: bool = False,
                 delta_over_beta: float | None = None, diffuser_estimate: str = "zero-phase",
                 all_references=None, multi_reference_field: str = "phase-only"):
        xp = B.get_xp(reference)
        ref = as_stack(reference, "reference")
        self.K, self.H, self.W = (int(s) for s in ref.shape)
        if geometry.diffuser_position != "downstream":
            raise InputError("PWF models a diffuser downstream of the sample; this geometry has it upstream "
                             "(use mist/umpa/lcs, or fix /geometry diffuser_position)")
        self.geometry = geometry
        self.l2 = geometry.require_l2()
        self.l1 = geometry.sample_diffuser_distance_m
        self.lam = geometry.wavelength_m
        p = geometry.pixel_size_m
        for name, v in (("gamma", gamma), ("pad_ratio", pad_ratio + 1e-12), ("wing_ratio", wing_ratio + 1e-12)):
            if not (v > 0 and math.isfinite(v)):
                raise ParameterError(f"pwf: {name} must be positive, got {v!r}")
        if a_re < 0 or a_im < 0:
            raise ParameterError(f"pwf: a_re, a_im must be >= 0, got {a_re}, {a_im}")
        if delta_over_beta is not None and not (float(delta_over_beta) > 0 and math.isfinite(float(delta_over_beta))):
            raise ParameterError(f"pwf: delta_over_beta must be a positive number (δ/β of the sample), "
                                 f"got {delta_over_beta!r}")
        self.delta_over_beta = None if delta_over_beta is None else float(delta_over_beta)
        if diffuser_estimate not in PWF_DIFFUSER_ESTIMATES:
            raise ParameterError(f"pwf: diffuser_estimate must be one of {', '.join(PWF_DIFFUSER_ESTIMATES)}, "
                                 f"got {diffuser_estimate!r}")
        if multi_reference_field not in DIFFUSER_ESTIMATES:
            raise ParameterError(f"pwf: multi_reference_field must be one of {', '.join(DIFFUSER_ESTIMATES)}, "
                                 f"got {multi_reference_field!r}")
        self.diffuser_estimate = diffuser_estimate
        self.multi_reference_field = multi_reference_field
        self.reference_shifts_px = None
        if diffuser_estimate == "multi-reference":
            if self.K != 1:
                raise InputError("pwf: diffuser_estimate=multi-reference is single-shot: retrieve from one position "
                                 "(--positions N); every reference position of the scan is used for the diffuser")
            if all_references is None or as_stack(all_references, "all_references").shape[0] < 2:
                raise InputError("pwf: diffuser_estimate=multi-reference needs the scan's reference frames of at least "
                                 "2 diffuser positions (the pipeline passes them; from Python give all_references)")

        # ---- coherence lengths: given > geometry > calibrated (pwf.md §5)
        xc = coherence_length_x_m if coherence_length_x_m is not None else geometry.coherence_length_x_m
        yc = coherence_length_y_m if coherence_length_y_m is not None else geometry.coherence_length_y_m
        self.calibration = None
        if xc is None or yc is None:
            # every reference position of the scan when given (the same diffuser: less noise in the spectrum)
            cal_ref = ref if all_references is None else as_stack(all_references, "all_references")
            self.calibration = calibrate(B.asnumpy(cal_ref), p, **optics_of(geometry))
            xc = xc if xc is not None else self.calibration.coherence_length_x_m
            yc = yc if yc is not None else self.calibration.coherence_length_y_m
        self.xcoh, self.ycoh = float(xc), float(yc)

        # ---- background wings (pwf.md §4 step 1)
        nw = max(1, int(math.ceil(wing_ratio * self.W)))
        if background_mask is None:
            bg = np.zeros((self.H, self.W), bool)
            bg[:, :nw] = True
            bg[:, self.W - nw:] = True
        else:
            bg = np.asarray(B.asnumpy(background_mask), bool)
            if bg.shape != (self.H, self.W):
                raise InputError(f"pwf: background_mask shape {bg.shape} does not match frames {(self.H, self.W)}")
            if bg.sum() < 3:
                raise InputError("pwf: background_mask selects fewer than 3 pixels; mark a sample-free region")
        self.n_wing = nw
        self.background_mask = xp.asarray(bg)
        self.stripe_fix = bool(stripe_fix)

        # ---- normalise by the mean reference over the field of view [C]
        self.mean_ref = ref.mean(axis=(-2, -1), keepdims=True)              # (K,1,1)
        if not bool(xp.all(self.mean_ref > 0)):
            raise InputError("pwf: the reference has a non-positive mean; give dark-subtracted, flat-normalised frames")
        self.ref_norm = ref / self.mean_ref                                    # (K,H,W)

        # ---- padding (pwf.md §4 step 3) and resampling (step 4)
        self.pad_ratio = float(pad_ratio)
        sig_i = math.sqrt(2 / math.pi) / min(self.xcoh, self.ycoh)            # σ_I (cycles/m), pwf.md §4
        if resample is None or resample is False:
            ratio = 1.0
        elif resample == "auto":
            ratio = max(1.0, (1.0 / (6.0 * sig_i)) / p)                       # p2 = 1/(6σ_I,max), never finer
        else:
            ratio = float(resample)
            if not (0.25 <= ratio <= 4):
                raise ParameterError(f"pwf: resample ratio must be in [0.25, 4], got {ratio}")
        hp0 = self.H + 2 * int(round(pad_ratio * self.H))
        wp0 = self.W + 2 * int(round(pad_ratio * self.W))
        if ratio == 1.0:
            self.Hr, self.Wr = _fast_len(hp0), _fast_len(wp0)
            self.Hp, self.Wp = self.Hr, self.Wr
        else:
            self.Hr, self.Wr = _fast_len(math.ceil(hp0 / ratio)), _fast_len(math.ceil(wp0 / ratio))
            self.Hp, self.Wp = int(round(self.Hr * ratio)), int(round(self.Wr * ratio))
        self.pad_y0 = (self.Hp - self.H) // 2
        self.pad_x0 = (self.Wp - self.W) // 2
        self.py, self.px = p * self.Hp / self.Hr, p * self.Wp / self.Wr       # grid pixel (m)
        self.resample_ratio = ratio
        shape = (self.Hr, self.Wr)
        self.shape = shape

        # ---- mask m: Tukey over the padded array, cosine tapers of pad_ratio × padded length at each
        # end, so the taper begins just inside the field of view (pwf.md §4 step 5) -> resampled
        wy = _tukey(self.Hp, pad_ratio)
        wx = _tukey(self.Wp, pad_ratio)
        m = xp.asarray((wy[:, None] * wx[None, :]).astype(np.float32))
        m = xp.clip(fourier_resample(m, shape), 0.0, 1.0).astype(np.float32)
        self.m = m
        self.stop_mask = m > 0.99

        # ---- transfer functions (precomputed, pwf.md §4 step 6)
        pyx = (self.py, self.px)
        self.q1 = fresnel_transfer_yx(shape, pyx, self.lam, self.l1, xp=xp)
        self.q1c = xp.conj(self.q1)
        self.q2 = fresnel_transfer_yx(shape, pyx, self.lam, self.l2, xp=xp)
        self.q2c = xp.conj(self.q2)
        self.iotf_r = iotf(shape, pyx, self.xcoh, self.ycoh, xp=xp, rfft=True)          # Eq. 5
        self.gamma2_r = (1.0 - stf(shape, pyx, self.xcoh, self.ycoh, gamma, xp=xp, rfft=True)).astype(np.float32)  # Eq. 15
        ky = B.fftfreq(self.Hr, 1.0, xp=xp, dtype=np.float64)[:, None]                  # cycles/pixel
        kx = B.rfftfreq(self.Wr, 1.0, xp=xp, dtype=np.float64)[None, :]
        k2 = ky * ky + kx * kx
        k2s = xp.where(k2 > 0, k2, 1.0)
        self.pinv_r = xp.where(k2 > 0, 1.0 / k2s, 0.0).astype(np.float32)               # Alg. S2, DC = 0
        if self.delta_over_beta is not None:
            # single material: the curvature of the loss in φ is ≈ κ² (phase, the reason for Alg. S2) plus
            # b² (log-amplitude bφ, unit curvature as its η = 1 unpreconditioned step assumes), so the
            # preconditioner becomes 1/(κ² + b²) — Paganin's low-pass form; finite at DC, where the
            # absorption now fixes the level
            b2 = (1.0 / self.delta_over_beta) ** 2
            self.pinv_sm_r = (1.0 / (k2 + b2)).astype(np.float32)
        n = self.Hr * self.Wr
        wh = np.full(self.Wr // 2 + 1, 2.0)
        wh[0] = 1.0
        if self.Wr % 2 == 0:
            wh[-1] = 1.0
        wh = xp.asarray(wh)[None, :]
        self.regw_re = (a_re * self.gamma2_r * wh / n).astype(np.float32)               # for the loss value
        self.regw_im = (a_im * k2 * self.gamma2_r * wh / n).astype(np.float32)        # κ²Γ² (preconditioned)
        self.regw_im0 = (a_im * self.gamma2_r * wh / n).astype(np.float32)            # Γ² (plain objective)
        self.a_re, self.a_im, self.gamma = float(a_re), float(a_im), float(gamma)
        self.wiener_eps = float(wiener_eps)

        # ---- diffuser field t (pwf.md §5) on the PWF grid
        if self.diffuser_estimate == "multi-reference":
            refg = self._to_grid(self._reference_mosaic(all_references))                 # (1,Hr,Wr)
        else:
            refg = self._to_grid(self.ref_norm)                                           # (K,Hr,Wr)
        dkw = dict(pixel_size_m=pyx, wavelength_m=self.lam, l2_m=self.l2, coherence_length_x_m=self.xcoh,
                   coherence_length_y_m=self.ycoh)
        t0 = diffuser_transmission(refg, estimate="zero-phase", **dkw)
        # c = (max|t|²)² [C] of the paper's zero-phase field whatever the estimate, so the step normaliser and with
        # it the meaning of a_re, a_im stay the paper's (the phase-only field's own max|t|² is about half: 4x the
        # data weight, many more iterations and restarts, a different bias)
        self.c = float(xp.max(t0.real**2 + t0.imag**2)) ** 2
        field = self.multi_reference_field if self.diffuser_estimate == "multi-reference" else self.diffuser_estimate
        self.t = t0 if field == "zero-phase" else diffuser_transmission(refg, estimate=field, **dkw)
        self.tc = xp.conj(self.t)
        # Wiener band-limit filter for y_B, in rfft layout: IOTF·IOTF/(IOTF²+ε) (pwf.md §2 data prep)
        self._ywiener = (self.iotf_r * self.iotf_r / (self.iotf_r * self.iotf_r + wiener_eps)).astype(np.float32)

    @property
    def xp(self):
        """Array module of this model (numpy or cupy); not stored, so the model stays picklable."""
        return B.get_xp(self.q1)

    # ------------------------------------------------------------------ grid transforms
    def _to_grid(self, frames):
        """Detector frames ``(..., H, W)`` → padded, resampled PWF grid ``(..., Hr, Wr)``."""
        xp = self.xp
        pads = [(0, 0)] * (frames.ndim - 2) + [(self.pad_y0, self.Hp - self.H - self.pad_y0),
                                               (self.pad_x0, self.Wp - self.W - self.pad_x0)]
        a = xp.pad(frames, pads, mode="edge")
        return fourier_resample(a, self.shape)

    def _reference_mosaic(self, all_references):
        """Every reference position registered onto the one used and averaged over its field of view ``(H, W)``.

        The diffuser moves laterally between positions, so reference k is reference 0 shifted:
        ``R_k(r) = R_0(r − s_k)`` (a plane wave lights a laterally moved diffuser).  ``s_k`` is measured by
        cross-correlation refined by Gauss–Newton (:func:`xspeckle.preprocess.estimate_shift`); each frame's
        sub-pixel part is undone by a Fourier shift, its integer part by indexing, and the result is the mean
        over the frames covering each pixel (2 px frame borders left out), which lowers the photon noise of
        the diffuser estimate by up to √P.  The padding is then edge-replicated like the sample's
        (:meth:`_to_grid`): speckle measured there (the shifted frames reach it) does not match the padded
        sample frame and was measured to make the retrieval worse (benchmarks/bench_pwf_independent.py).

        Returns
        -------
        float32 array ``(1, H, W)`` on the model's back-end; ``self.reference_shifts_px`` gets the shifts ``(P, 2)``.
        """
        from xspeckle.preprocess import estimate_shift, shift_frames

        xp = self.xp
        refs = as_stack(all_references, "all_references")
        if tuple(refs.shape[-2:]) != (self.H, self.W):
            raise InputError(f"pwf: all_references frames {tuple(refs.shape[-2:])} do not match {(self.H, self.W)}")
        refs = xp.asarray(refs, dtype=np.float32)
        refs = refs / refs.mean(axis=(-2, -1), keepdims=True)
        anchor = self.ref_norm[0]
        H, W = self.H, self.W
        acc = anchor.astype(np.float64).copy()
        wsum = xp.ones((H, W), np.float64)
        shifts = []
        b = 2                                                     # frame border left out (Fourier-shift edge)
        for k in range(refs.shape[0]):
            s = estimate_shift(anchor, refs[k])                  # refs[k](r) ≈ a·anchor(r − s)
            shifts.append(s)
            if np.all(np.abs(s) < 1e-3):                          # the anchor itself
                continue
            iy, ix = (int(round(v)) for v in s)
            frac = np.array([s[0] - iy, s[1] - ix])
            fr = shift_frames(refs[k], -frac) if np.any(np.abs(frac) > 1e-3) else refs[k]   # fr(r) = anchor(r − (iy, ix))
            # anchor pixel a ↔ fr pixel a + (iy, ix), kept b px inside fr
            ylo, yhi = max(b - iy, 0), min(H - b - iy, H)
            xlo, xhi = max(b - ix, 0), min(W - b - ix, W)
            if yhi <= ylo or xhi <= xlo:
                continue                                          # no overlap with the position used
            acc[ylo:yhi, xlo:xhi] += fr[ylo + iy:yhi + iy, xlo + ix:xhi + ix]
            wsum[ylo:yhi, xlo:xhi] += 1.0
        self.reference_shifts_px = np.asarray(shifts, dtype=np.float64)
        self.reference_coverage = float(B.asnumpy(wsum.mean()))
        return (acc / wsum).astype(np.float32)[None]

    def _from_grid(self, a):
        """PWF grid ``(..., Hr, Wr)`` → detector frame ``(..., H, W)`` (inverse resample, crop)."""
        a = fourier_resample(a, (self.Hp, self.Wp))
        return a[..., self.pad_y0:self.pad_y0 + self.H, self.pad_x0:self.pad_x0 + self.W]

    def prepare(self, sample):
        """Normalised sample ``(B, K, H, W)`` → spectrum of the band-limited data F{y_B} (rfft layout)."""
        xp = self.xp
        s = xp.asarray(sample, dtype=np.float32) / self.mean_ref
        if self.stripe_fix:
            s = self._stripe_fix(s)
        y = self._to_grid(s)
        spec = B.rfft2(y)
        spec *= self._ywiener
        return y, spec

    def _stripe_fix(self, s):
        """Row-stripe correction from the wings (authors' ``flaten_background``, pwf.md §4 step 2)."""
        xp = self.xp
        nw = self.n_wing
        r = self.ref_norm
        pl = (r[..., :nw] / s[..., :nw]).mean(axis=-1, keepdims=True)
        pr = (r[..., -nw:] / s[..., -nw:]).mean(axis=-1, keepdims=True)
        x = xp.arange(self.W, dtype=np.float32)
        x = (x - (nw - 1) / 2) / ((self.W - nw / 2 - 0.5) - (nw - 1) / 2)
        return s * ((pr - pl) * x + pl)

    # ------------------------------------------------------------------ model and gradient
    def forward(self, psi):
        """Model intensity ``IPSF ⊛ |P_L2{t·P_L1{exp ψ}}|²`` on the PWF grid: ``(B,1,Hr,Wr)`` → ``(B,K,Hr,Wr)``."""
        Y = self._field(self.xp.exp(psi))
        inten = (Y.real * Y.real + Y.imag * Y.imag).astype(np.float32)
        spec = B.rfft2(inten)
        spec *= self.iotf_r
        return B.irfft2(spec, s=self.shape)

    def _field(self, x):
        spec = B.fft2(x)
        spec *= self.q1
        u1 = B.ifft2(spec, overwrite_x=True)           # P_L1{x}
        u1 = u1 * self.t                               # (B,K,..) t·u1
        spec = B.fft2(u1, overwrite_x=True)
        spec *= self.q2
        return B.ifft2(spec, overwrite_x=True)         # Y = P_L2{t·u1}

    def gradient(self, psi, yspec, *, precondition: bool = True):
        """Loss and (preconditioned) Wirtinger gradient at ψ (pwf.md §2–3).

        Parameters
        ----------
        psi : complex64 ``(B, 1, Hr, Wr)``
        yspec : complex64 ``(B, K, Hr, Wr//2+1)``, from :meth:`prepare`
        precondition : bool
            Apply P⁻¹ = 1/κ² to the imaginary part of the data gradient (Alg. S2); False gives
            the plain Wirtinger gradient ∂L₀/∂ψ* of the un-preconditioned objective
            ``L₀ = data + a_re Σ Γ²|F Re ψ|²/N + a_im Σ Γ²|F Im ψ|²/N`` (used by the gradient check).

        Returns
        -------
        g_re, g_im : float32 ``(B, 1, Hr, Wr)`` real and imaginary parts of the update direction
        loss : float64 ndarray ``(B,)`` (host), the objective L of the module docstring
               (L₀ when ``precondition=False``)
        x : complex64 ``exp(ψ)`` (reused by the stopping test)

        Notes
        -----
        By default this runs the fused driver :func:`xspeckle.retrieve.pwf_kernels.fused_gradient`
        (numba kernels on NumPy, in-place ufuncs on CuPy, in-place FFTs); the code below is the reference
        path, kept as the specification (``pwf_kernels.USE_FUSED = False``); both agree within float32
        rounding (tests/test_pwf_kernels.py).
        """
        from xspeckle.retrieve import pwf_kernels

        xp = self.xp
        if pwf_kernels.fused_available(xp):
            return pwf_kernels.fused_gradient(self, psi, yspec, precondition=precondition)
        shape = self.shape
        x = xp.exp(psi)
        Y = self._field(x)                                        # (B,K,Hr,Wr)
        inten = (Y.real * Y.real + Y.imag * Y.imag).astype(np.float32)
        spec = B.rfft2(inten)
        spec *= self.iotf_r
        spec -= yspec                                             # F{IPSF⊛|Y|² − y_B}
        r = B.irfft2(spec, s=shape)
        r *= self.m                                               # m·r
        loss_d = 0.5 * (r * r).sum(axis=(-2, -1), dtype=np.float64).mean(axis=1)   # (B,)
        r *= self.m                                               # m²·r
        spec = B.rfft2(r)
        spec *= self.iotf_r
        h = B.irfft2(spec, s=shape)                               # IPSF^T ⊛ (m² r)
        Y *= h                                                    # ∂D/∂Y* = Y·(...)
        spec = B.fft2(Y, overwrite_x=True)
        spec *= self.q2c
        v = B.ifft2(spec, overwrite_x=True)                       # P_{-L2}
        v *= self.tc                                              # conj(t)
        g = v.mean(axis=1, keepdims=True) if self.K > 1 else v    # mean over positions (pwf.md §1)
        spec = B.fft2(g, overwrite_x=self.K == 1)
        spec *= self.q1c
        g = B.ifft2(spec, overwrite_x=True)                       # P_{-L1}
        g *= xp.conj(x)                                           # chain rule through x = e^ψ
        g *= np.float32(1.0 / self.c)
        # ---- preconditioner (Alg. S2) + regularisation gradient (pwf.md §2)
        fre = B.rfft2(psi.real)
        fim = B.rfft2(psi.imag)
        pw_re = fre.real * fre.real + fre.imag * fre.imag
        pw_im = fim.real * fim.real + fim.imag * fim.imag
        regw_im = self.regw_im if precondition else self.regw_im0
        loss_r = (pw_re * self.regw_re).sum(axis=(-3, -2, -1), dtype=np.float64) + \
            (pw_im * regw_im).sum(axis=(-3, -2, -1), dtype=np.float64)
        fre *= self.gamma2_r
        fre *= np.float32(self.a_re)
        fim *= self.gamma2_r
        fim *= np.float32(self.a_im)
        if self.delta_over_beta is not None:
            # single material: ψ = (b + i)φ, b = β/δ, so dL/dφ = 2(b·Re g + Im g) (g = ∂L/∂ψ*); the
            # step on φ (preconditioned like the phase, Alg. S2) moves ψ along (b + i), staying on the constraint
            b = np.float32(1.0 / self.delta_over_beta)
            gi = B.rfft2(g.imag + b * g.real)
            if precondition:
                gi *= self.pinv_sm_r
            gi += fim
            gi += b * fre                                          # regularisation of Re ψ = bφ
            g_im = B.irfft2(gi, s=shape)
            g_re = b * g_im
        else:
            gi = B.rfft2(g.imag)
            if precondition:
                gi *= self.pinv_r
            gi += fim
            g_im = B.irfft2(gi, s=shape)
            g_re = B.irfft2(fre, s=shape)
            g_re += g.real
        loss = B.asnumpy(loss_d) / self.c + B.asnumpy(loss_r)
        return g_re, g_im, np.asarray(loss, dtype=np.float64), x

    def residual_image(self, psi, y):
        """RMSE image ``sqrt(⟨(y − f(ψ))²⟩_K)`` on the detector frame ``(B, H, W)`` (pwf.md §7)."""
        r = self.forward(psi) - y                                  # (B,K,Hr,Wr)
        r = self._from_grid(r)
        return self.xp.sqrt((r * r).mean(axis=1)).astype(np.float32)

    # ------------------------------------------------------------------ solver
    def solve(self, sample, *, scheme: str = "lbfgs", eta=None, max_iter: int | None = None,
              min_iter: int | None = None, corr_tol: float = 1e-5, check_every: int = 10,
              plateau_window: int = 50, plateau_tol: float | None = None, restart: bool | None = None,
              divergence_factor: float = 2.0, psi0=None, progress: Callable[[int, int], None] | None = None,
              change_tol: float | None = None, restart_min_gap: int = 0, max_halvings: int = 30,
              grow_after: int = 100, lbfgs_memory: int = 6,
              callback: Callable[[int, Any, Any], None] | None = None) -> PWFResult:
        """Run PWF on a batch of projections.

        Parameters
        ----------
        sample : array ``(B, K, H, W)`` (or ``(K, H, W)`` for B = 1), flat-normalised
        scheme : {"lbfgs", "fast", "paper"}
            ``"lbfgs"`` (default): preconditioned L-BFGS with the paper's preconditioner as initial
            inverse Hessian and an Armijo line search (:mod:`xspeckle.retrieve.pwf_lbfgs`); same
            objective and fixed point as the paper, 5–7x fewer gradient evaluations on the
            independent simulation; *iterations* count gradient evaluations; stops when the loss
            has plateaued (*plateau_tol*, default 1e-4 over 20 iterations) and ψ changes by less
            than *change_tol* (default 1e-3) over *check_every* iterations.
            ``"paper"``: Algorithm S1 — Nesterov/FISTA momentum, fixed step η = (1, 1), no restart,
            stop when ``−log10(corr(e^ψ_j, e^ψ_{j+1})) < corr_tol`` tested every *check_every*
            iterations (pwf.md §4 step 10) — plus our guards: not before *min_iter* (300) and only
            once the loss has plateaued.  ``"fast"`` (default): the same iteration with
            O'Donoghue–Candès function-value adaptive restart of the momentum and a loss-plateau
            stop (relative loss decrease over *plateau_window* iterations < *plateau_tol*).
        eta : (float, float), optional
            Step on (Re, Im); default (1, 1).
        max_iter, min_iter : int, optional
            Scheme defaults: 5000 and 300 (paper) / 50 (fast).
        plateau_tol : float, optional
            Relative loss decrease over *plateau_window* iterations below which the loss counts as
            flat; default 1e-3 (paper guard) / 2e-4 (fast).
        divergence_factor : float
            Divergence guard: a non-finite loss or one above ``divergence_factor × best`` is
            rejected: the projection returns to its last accepted point, the momentum is reset, η
            is halved and the step retaken from there.
        max_halvings : int
            The projection ends ``"stalled"`` (``"diverged"`` if the loss is not finite) once η has
            been halved this many times below its start value without recovering.
        grow_after : int
            After this many accepted iterations since the last retreat, η doubles (up to its start).
        psi0 : array ``(B, 1, Hr, Wr)`` complex, optional
            Start value on the PWF grid (default ψ = 0).
        restart_min_gap : int
            Adaptive restart only when at least this many iterations passed since the last one.
        change_tol : float, optional
            ``"fast"`` scheme: stop when the relative change of ψ over the stopping mask between
            two checks (*check_every* iterations apart) falls below this (default 3e-3) AND the
            loss has plateaued.
        progress : callable(iteration, max_iter), optional
        callback : callable(iteration, active_indices, psi), optional
            Called every *check_every* iterations with the current ψ ``(B', 1, Hr, Wr)`` of the
            still-active projections (diagnostics).
        lbfgs_memory : int
            ``"lbfgs"``: curvature pairs kept.
        """
        if scheme not in SCHEMES:
            raise ParameterError(f"pwf: scheme {scheme!r} unknown; choose one of {', '.join(SCHEMES)}")
        d = _SCHEME_DEFAULTS[scheme]
        xp = self.xp
        eta = tuple(float(e) for e in (eta if eta is not None else d["eta"]))
        max_iter = int(max_iter if max_iter is not None else d["max_iter"])
        min_iter = int(min_iter if min_iter is not None else d["min_iter"])
        restart = bool(d["restart"] if restart is None else restart)
        stop_rule = d["stop"]
        if plateau_tol is None and scheme != "lbfgs":
            plateau_tol = 1e-3 if scheme == "paper" else 2e-4
        if scheme != "lbfgs":
            change_tol = 3e-3 if change_tol is None else float(change_tol)
        s = xp.asarray(sample, dtype=np.float32)
        if s.ndim == 3:
            s = s[None]
        if s.ndim != 4 or tuple(s.shape[1:]) != (self.K, self.H, self.W):
            raise InputError(f"pwf: sample must be (B, {self.K}, {self.H}, {self.W}), got {tuple(s.shape)}")
        nb = s.shape[0]
        y, yspec = self.prepare(s)

        psi = xp.zeros((nb, 1) + self.shape, np.complex64) if psi0 is None else xp.asarray(psi0, np.complex64).copy()
        if scheme == "lbfgs":
            from xspeckle.retrieve.pwf_lbfgs import solve_lbfgs

            kw = dict(memory=int(lbfgs_memory), check_every=check_every,
                      change_tol=1e-3 if change_tol is None else float(change_tol))
            if plateau_tol is not None:
                kw["plateau_tol"] = float(plateau_tol)
            out, evals, reasons, hist, extra = solve_lbfgs(self, yspec, psi, max_iter=max_iter, min_iter=min_iter,
                                                           progress=progress, callback=callback, **kw)
            return self._finish(out, y, evals, reasons, hist, scheme, eta, dict(
                extra, min_iter=min_iter, max_iter=max_iter, memory=int(lbfgs_memory), stop_rule="lbfgs",
                n_restart=[0] * nb, n_divergence_resets=[0] * nb))
        from xspeckle.retrieve.pwf_fista import solve_fista

        out_psi, iters, reasons, hist, extra = solve_fista(
            self, yspec, psi, eta=eta, max_iter=max_iter, min_iter=min_iter, restart=restart, stop_rule=stop_rule,
            corr_tol=corr_tol, check_every=check_every, plateau_window=plateau_window, plateau_tol=plateau_tol,
            divergence_factor=divergence_factor, change_tol=change_tol, restart_min_gap=restart_min_gap,
            max_halvings=max_halvings, grow_after=grow_after, progress=progress, callback=callback)
        return self._finish(out_psi, y, iters, reasons, hist, scheme, eta, dict(
            extra, min_iter=min_iter, max_iter=max_iter, plateau_tol=plateau_tol, corr_tol=corr_tol,
            change_tol=change_tol, restart=restart, stop_rule=stop_rule))

    def _finish(self, psi, y, iters, reasons, hist, scheme, eta, extra) -> PWFResult:
        xp = self.xp
        resid = self.residual_image(psi, y)                              # (B,H,W)
        psi_d = self._from_grid(psi[:, 0])                               # (B,H,W)
        phase = zero_background_plane(psi_d.imag.astype(np.float32), self.background_mask)
        if self.delta_over_beta is None:
            trans = xp.exp(2 * psi_d.real).astype(np.float32)           # T = |e^ψ|² (pwf.md §1)
        else:                                                            # Re ψ = φ/(δ/β), with φ's background zeroed
            trans = xp.exp(np.float32(2.0 / self.delta_over_beta) * phase).astype(np.float32)
        params = self.parameters()
        params.update(scheme=scheme, eta=list(eta), iterations=[int(i) for i in iters],
                      stop_reason=list(reasons), **extra)
        return PWFResult(phase=phase, transmission=trans, residual=resid, psi=psi_d,
                         iterations=[int(i) for i in iters], stop_reason=list(reasons),
                         loss_history=[np.asarray(h) for h in hist], parameters=params)

    def parameters(self) -> dict[str, Any]:
        """Effective model parameters (JSON-able)."""
        d = dict(coherence_length_x_m=self.xcoh, coherence_length_y_m=self.ycoh,
                 coherence_source="calibrated" if self.calibration is not None else "given",
                 gamma=self.gamma, a_re=self.a_re, a_im=self.a_im, pad_ratio=self.pad_ratio,
                 resample_ratio=self.resample_ratio, grid_shape=list(self.shape),
                 grid_pixel_m=[self.py, self.px], wing_px=self.n_wing, wiener_eps=self.wiener_eps,
                 step_normaliser_c=self.c, stripe_fix=self.stripe_fix, positions=self.K,
                 delta_over_beta=self.delta_over_beta, diffuser_estimate=self.diffuser_estimate)
        if self.diffuser_estimate == "multi-reference":
            d["multi_reference_field"] = self.multi_reference_field
            d["reference_shifts_px"] = np.round(self.reference_shifts_px, 4).tolist()
            d["reference_frames_per_pixel"] = round(self.reference_coverage, 3)
        if self.calibration is not None:
            d["calibration"] = self.calibration.to_dict()
        return d


# --------------------------------------------------------------------------- public API
def _check_solve_keys(params) -> None:
    import inspect

    known = set(inspect.signature(PWFModel.solve).parameters) - {"self", "sample"}
    bad = sorted(set(params) - known)
    if bad:
        raise ParameterError(f"pwf: unknown parameter(s) {', '.join(bad)}; model options: {', '.join(MODEL_OPTIONS)}; "
                             f"solver options: {', '.join(sorted(known))}")


def pwf(*, reference, sample, geometry: Geometry, scheme: str = "lbfgs", coherence_length_x_m=None,
        coherence_length_y_m=None, progress=None, **kwargs) -> PWFResult:
    """Retrieve phase and transmission with PWF (plain-function API).

    Parameters
    ----------
    reference : array ``(K, H, W)`` or ``(H, W)`` float32, flat-normalised reference speckle
    sample : array ``(K, H, W)`` / ``(H, W)`` for one projection, or ``(B, K, H, W)`` for a batch
    geometry : Geometry, downstream diffuser
    scheme : {"fast", "paper"}
    coherence_length_x_m, coherence_length_y_m : float, optional (default: geometry or calibrated)
    **kwargs
        Model options of :class:`PWFModel` (gamma, a_re, a_im, pad_ratio, resample, wing_ratio,
        background_mask, wiener_eps, stripe_fix) and solver options of :meth:`PWFModel.solve`.

    Returns
    -------
    PWFResult ; for a single projection the maps are ``(H, W)``, for a batch ``(B, H, W)``.
    """
    mk = {k: v for k, v in kwargs.items() if k in MODEL_OPTIONS}
    sk = {k: v for k, v in kwargs.items() if k not in MODEL_OPTIONS}
    _check_solve_keys(sk)
    ref = as_stack(reference, "reference")
    model = PWFModel(ref, geometry, coherence_length_x_m=coherence_length_x_m,
                     coherence_length_y_m=coherence_length_y_m, **mk)
    xp = B.get_xp(sample)
    s = xp.asarray(sample, dtype=np.float32)
    single = s.ndim <= 3
    if s.ndim == 2:
        s = s[None]
    if single:
        s = s[None]
    res = model.solve(s, scheme=scheme, progress=progress, **sk)
    if single:
        res.phase, res.transmission, res.residual, res.psi = (a[0] for a in
                                                              (res.phase, res.transmission, res.residual, res.psi))
    return res


class PWFRetriever(Retriever):
    """PWF as a :class:`~xspeckle.retrieve.base.Retriever` (name ``"pwf"``).

    ``__init__`` does the reference-only work (coherence calibration when the geometry lacks
    the lengths, diffuser estimate, IOTF, transfer functions); ``__call__(sample (P, H, W))``
    returns ``phase``, ``transmission`` and ``residual`` (H, W).  With P > 1 positions the
    multi-position variant is used (gradient averaged over positions, pwf.md §1).

    Parameters
    ----------
    reference : array ``(P, H, W)``; geometry : Geometry (downstream diffuser)
    **params : options of :class:`PWFModel` and :meth:`PWFModel.solve` (``scheme`` etc.)
    """

    name = "pwf"
    summary = "single-shot preconditioned Wirtinger flow, downstream diffuser (Lee et al. 2026)"
    outputs = ("phase", "transmission", "residual")
    min_positions = 1
    needs_downstream = True
    supports_batch = True  # retrieve_batch solves a batch together (the GPU engine hands it batches)

    def __init__(self, reference, geometry: Geometry, **params: Any):
        super().__init__(reference, geometry, **params)
        mk = {k: params.pop(k) for k in list(params) if k in MODEL_OPTIONS}
        _check_solve_keys(params)
        self.solve_params = params
        self.model = PWFModel(self.reference, geometry, **mk)
        self.parameters = self.model.parameters()
        self.parameters["scheme"] = params.get("scheme", "lbfgs")

    @property
    def working_factor(self) -> float:
        """Temporaries of one call in ``(P, H, W)`` float32 stacks (the pipeline's memory plan).

        Measured with ``tracemalloc`` at 512 × 640 (K = 1): 34 float32 arrays of the PWF grid for the FISTA
        schemes, 36 + 5 (m + 1) for L-BFGS with m pairs (ring buffers of s, y and M y, one spare slot);
        ~8 more per extra position (the (B, K) fields and intensities); times the grid's area over the frame's.
        """
        p, h, w = self.reference.shape
        if self.solve_params.get("scheme", "lbfgs") == "lbfgs":
            n = 36 + 5 * (int(self.solve_params.get("lbfgs_memory", 6)) + 1)
        else:
            n = 34
        n += 8 * (self.model.K - 1)
        hr, wr = self.model.shape
        return float(n * hr * wr / (p * h * w))

    def _retrieve(self, sample) -> dict[str, Any]:
        t0 = time.perf_counter()
        res = self.model.solve(sample[None], **self.solve_params)
        self.parameters.update({k: v for k, v in res.parameters.items()
                                if k in ("iterations", "stop_reason", "scheme", "n_restart", "n_divergence_resets")})
        self.parameters["iterations"] = res.iterations[0]
        self.parameters["stop_reason"] = res.stop_reason[0]
        self.parameters["seconds"] = round(time.perf_counter() - t0, 3)
        return {"phase": res.phase[0], "transmission": res.transmission[0], "residual": res.residual[0],
                "iterations": res.iterations[0], "stop_reason": res.stop_reason[0]}

    def retrieve_batch(self, samples) -> list[dict[str, Any]]:
        """Retrieve several projections at once: ``samples (B, P, H, W)`` → list of B output dicts."""
        s = B.get_xp(samples).asarray(samples, dtype=np.float32)
        if s.ndim != 4 or tuple(s.shape[1:]) != tuple(self.reference.shape):
            raise InputError(f"pwf: batch must be (B, {', '.join(map(str, self.reference.shape))}), got {tuple(s.shape)}")
        res = self.model.solve(s, **self.solve_params)
        return [{"phase": res.phase[i], "transmission": res.transmission[i], "residual": res.residual[i],
                 "iterations": res.iterations[i], "stop_reason": res.stop_reason[i]}
                for i in range(s.shape[0])]
