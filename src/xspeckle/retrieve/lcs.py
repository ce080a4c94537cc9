"""LCS — Low-Coherence System speckle tracking (Quénot et al., Optica 2021) and its dark-field forms.

Per pixel, over the K diffuser positions n, the first-order Taylor expansion of
``I_S(r) = T·I_R(r − u)`` (methods.md §1.5; pwf.md §7, weak-absorption form) is

    I_S,n = T·I_R,n − (T u_x)·∂_x I_R,n − (T u_y)·∂_y I_R,n                      (LCS)
          + (T c)·∇² I_R,n                                                       (LCS-DF, §1.6)
          + (T c_xx)·∂_xx I_R,n + (T c_yy)·∂_yy I_R,n + (T c_xy)·∂_xy I_R,n      (LCS-DDF, §1.7)

a K×q least-squares problem ``A x = b`` with ``b_n = I_S,n``.  It is solved through the
Tikhonov-regularised normal equations ``(AᵀA + Λ) x = Aᵀb`` (mbipy ``Lcs``, LCS-Retrieval),
``Λ = α·diag(mean over the image of diag(AᵀA))`` (α dimensionless, one scale per unknown, so it
does not depend on the intensity normalisation — a pitfall listed in methods.md §1.5).  ``A`` and
``(AᵀA + Λ)⁻¹`` depend on the reference only and are computed once in ``__init__``; each projection
is then ``x = M⁻¹ (Aᵀ b)``: 2·q·K + q² multiply-adds per pixel (the tomography fast path).

Phase: ``∇φ = k·p·u/d`` with ``d = Δ`` (upstream diffuser) or ``d = L2`` (downstream), integrated by
Frankot–Chellappa or Kottler, background = border median (tracking.phase_from_displacement).
Dark field: ``c`` is in px² and ``D_eff = c·p²/d`` (methods.md §0, §1.6); the tensor's off-diagonal
is ``D_xy = c_xy·p²/(2d)`` because the Fokker–Planck term carries ``2∂_xy(D_xy I)`` (design.md).

Derivatives: first derivatives by the 9-point central stencil (``tracking.fine_gradient``) by default
— ``np.gradient`` (``derivative="central"``, the peers' choice) underestimates the derivative of
fine speckle by 10–20 % and scales ``u`` up by the same fraction; second derivatives as in
``retrieve.derivatives`` (5-point Laplacian, 3-point Hessian, methods.md §0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve import derivatives as D
from xspeckle.retrieve.base import Retriever, as_stack
from xspeckle.retrieve.tracking import fine_gradient, phase_from_displacement, propagation_distance_m, warp

__all__ = ["LCSModel", "lcs", "lcs_df", "lcs_ddf", "LCSRetriever", "LCSDFRetriever", "LCSDDFRetriever"]

_VARIANTS = {"lcs": 3, "df": 4, "ddf": 6}


def _columns(ref, variant: str, derivative: str):
    """Design-matrix columns ``(q, K, H, W)`` float32 for a reference stack ``(K, H, W)`` (px units)."""
    xp = B.get_xp(ref)
    if derivative == "fd8":
        gy, gx = fine_gradient(ref)
    elif derivative == "central":
        gy, gx = D.gradient(ref)
    else:
        raise ParameterError(f"lcs: derivative must be 'fd8' or 'central', got {derivative!r}")
    cols = [ref, -gx, -gy]  # x = [T, T u_x, T u_y] (methods.md §1.5)
    if variant == "df":
        cols.append(D.laplacian(ref))  # + T c ∇²I_R (methods.md §1.6)
    elif variant == "ddf":
        dxx, dyy, dxy = D.hessian(ref)
        cols += [dxx, dyy, dxy]  # + T (c_xx ∂xx + c_yy ∂yy + c_xy ∂xy) I_R (methods.md §1.7)
    return xp.stack(cols)


def _normal_inverse(A, alpha: float, chunk_rows: int = 256):
    """``(AᵀA + Λ)⁻¹`` per pixel, ``(q, q, H, W)`` float32, accumulated and inverted in float64."""
    xp = B.get_xp(A)
    q, K, H, W = A.shape
    Af = A.reshape(q, K, H * W)
    if q == 3:
        # closed-form symmetric 3×3 inverse (adjugate), float64: much faster than batched LAPACK
        e = {(j, k): xp.einsum("np,np->p", Af[j], Af[k], dtype=np.float64)
             for j in range(3) for k in range(j, 3)}
        lam = alpha * np.maximum([float(xp.mean(e[(j, j)])) for j in range(3)], 1e-30)
        a00, a01, a02 = e[(0, 0)] + lam[0], e[(0, 1)], e[(0, 2)]
        a11, a12, a22 = e[(1, 1)] + lam[1], e[(1, 2)], e[(2, 2)] + lam[2]
        c00 = a11 * a22 - a12 * a12
        c01 = a02 * a12 - a01 * a22
        c02 = a01 * a12 - a02 * a11
        c11 = a00 * a22 - a02 * a02
        c12 = a01 * a02 - a00 * a12
        c22 = a00 * a11 - a01 * a01
        det = a00 * c00 + a01 * c01 + a02 * c02
        inv = xp.where(xp.abs(det) > 1e-300, 1.0 / xp.where(xp.abs(det) > 1e-300, det, 1.0), 0.0)
        out = xp.stack([xp.stack([c00, c01, c02]), xp.stack([c01, c11, c12]), xp.stack([c02, c12, c22])])
        out = (out * inv).astype(np.float32).reshape(3, 3, H, W)
        return out, lam
    diag_mean = np.zeros(q)
    for j in range(q):
        diag_mean[j] = float(xp.mean(xp.einsum("np,np->p", Af[j], Af[j], dtype=np.float64)))
    lam = alpha * np.maximum(diag_mean, 1e-30)  # Λ = α·diag(mean diag(AᵀA)), one scale per unknown
    out = xp.empty((q, q, H, W), dtype=np.float32)
    for y0 in range(0, H, chunk_rows):
        y1 = min(H, y0 + chunk_rows)
        a = A[:, :, y0:y1].astype(np.float64)
        M = xp.einsum("jnhw,knhw->hwjk", a, a)
        M[..., xp.arange(q), xp.arange(q)] += xp.asarray(lam)
        Minv = xp.linalg.inv(M)
        out[:, :, y0:y1] = xp.moveaxis(Minv, (2, 3), (0, 1)).astype(np.float32)
    return out, lam


class LCSModel:
    """Per-pixel LCS least squares with everything that depends on the reference precomputed.

    Parameters
    ----------
    reference : array (K, H, W) float32
    variant : {"lcs", "df", "ddf"}
    alpha : float
        Dimensionless Tikhonov weight (relative to each unknown's mean column energy).
    derivative : {"fd8", "central"}
        First-derivative stencil.

    Notes
    -----
    Memory: ``A`` (q·K·H·W) and ``M⁻¹`` (q²·H·W) float32.
    """

    def __init__(self, reference, variant: str = "lcs", *, alpha: float = 1e-6, derivative: str = "fd8"):
        if variant not in _VARIANTS:
            raise ParameterError(f"lcs: variant must be one of {tuple(_VARIANTS)}, got {variant!r}")
        if not np.isfinite(alpha) or alpha < 0:
            raise ParameterError(f"lcs: alpha must be finite and >= 0, got {alpha!r}")
        self.reference = as_stack(reference, "reference")
        self.variant = variant
        self.alpha = float(alpha)
        self.derivative = derivative
        self.A = _columns(self.reference, variant, derivative)
        self.Minv, self.lam = _normal_inverse(self.A, self.alpha)

    @property
    def q(self) -> int:
        """Number of unknowns per pixel (3, 4 or 6)."""
        return self.A.shape[0]

    def __call__(self, sample, *, iterations: int = 0, max_shift: float | None = None,
                 weak_absorption: bool = False) -> dict[str, Any]:
        """Per-projection LCS solve (no phase integration): ``transmission``, ``displacement`` (+u, px),
        ``residual`` and, for the DF variants, ``dark_field_px2`` / ``dark_field_tensor_px2``."""
        return _run(self, sample, iterations=iterations, max_shift=max_shift, weak_absorption=weak_absorption)

    def solve(self, sample, A=None, Minv=None, lam=None):
        """Return ``x (q, H, W)`` and the per-pixel RMS residual ``(H, W)`` for ``sample (K, H, W)``.

        ``x = M⁻¹(Aᵀb)``; the misfit follows from the normal equations without forming ``Ax``:
        ``‖b − Ax‖² = bᵀb − xᵀAᵀb − xᵀΛx`` (exact, since ``(AᵀA + Λ)x = Aᵀb``).
        """
        xp = B.get_xp(sample)
        A = self.A if A is None else A
        Minv = self.Minv if Minv is None else Minv
        lam = self.lam if lam is None else lam
        q, K, H, W = A.shape
        bf = sample.reshape(K, H * W)
        atb = xp.einsum("jnp,np->jp", A.reshape(q, K, H * W), bf).reshape(q, H, W)  # Aᵀb
        bb = xp.einsum("np,np->p", bf, bf).reshape(H, W)
        x = []
        for j in range(q):
            acc = Minv[j, 0] * atb[0]
            for k in range(1, q):
                acc += Minv[j, k] * atb[k]
            x.append(acc)
        x = xp.stack(x)
        r2 = bb - xp.sum(x * atb, axis=0)
        for j in range(q):
            r2 -= np.float32(lam[j]) * x[j] * x[j]
        return x, xp.sqrt(xp.maximum(r2, 0) / np.float32(K))


def _run(model: LCSModel, sample, *, iterations: int, max_shift, weak_absorption: bool):
    """Solve, optionally iterate (re-warp the reference by u and solve for the increment)."""
    xp = B.get_xp(sample)
    s = as_stack(sample, "sample")
    if s.shape != model.reference.shape:
        raise InputError(f"lcs: sample {tuple(s.shape)} does not match reference {tuple(model.reference.shape)}")
    x, res = model.solve(s)
    T = x[0]
    tiny = np.float32(1e-6)
    Tsafe = xp.where(xp.abs(T) > tiny, T, 1.0)
    if weak_absorption:
        ux, uy = x[1].copy(), x[2].copy()  # mbipy weak_absorption: T u taken as u
    else:
        ux = xp.where(xp.abs(T) > tiny, x[1] / Tsafe, 0).astype(np.float32)
        uy = xp.where(xp.abs(T) > tiny, x[2] / Tsafe, 0).astype(np.float32)
    extra = [x[j] / Tsafe for j in range(3, model.q)]
    for _ in range(int(iterations)):
        # re-linearise about the current field: I_R(r − u − δ) ≈ R_u − δ·∇R_u (methods.md §1.5 "large shifts")
        if max_shift is not None:
            ux = xp.clip(ux, -max_shift, max_shift)
            uy = xp.clip(uy, -max_shift, max_shift)
        ru = warp(model.reference, ux, uy)
        A = _columns(ru, model.variant, model.derivative)
        Minv, lam = _normal_inverse(A, model.alpha)
        x, res = model.solve(s, A, Minv, lam)
        T = x[0]
        Tsafe = xp.where(xp.abs(T) > tiny, T, 1.0)
        # the increment is clipped to 1 px per pass: the linearisation is not trusted beyond that
        ux = ux + xp.clip(xp.where(xp.abs(T) > tiny, x[1] / Tsafe, 0), -1, 1).astype(np.float32)
        uy = uy + xp.clip(xp.where(xp.abs(T) > tiny, x[2] / Tsafe, 0), -1, 1).astype(np.float32)
        extra = [x[j] / Tsafe for j in range(3, model.q)]
    if max_shift is not None:
        ux = xp.clip(ux, -max_shift, max_shift)
        uy = xp.clip(uy, -max_shift, max_shift)
    mean_r = xp.mean(model.reference, axis=0)
    residual = res / xp.where(xp.abs(mean_r) > tiny, mean_r, 1.0)  # RMS misfit / mean reference
    out = {
        "transmission": T.astype(np.float32),
        "displacement": xp.stack([ux, uy]).astype(np.float32),
        "residual": residual.astype(np.float32),
    }
    if model.variant == "df":
        out["dark_field_px2"] = extra[0].astype(np.float32)
    elif model.variant == "ddf":
        out["dark_field_tensor_px2"] = xp.stack(extra).astype(np.float32)  # c_xx, c_yy, c_xy
    return out


def _visibility(model: LCSModel, coeffs):
    """Visibility-like ratio: RMS over n of the modelled (T = 1, u = 0) speckle fluctuation with the
    dark-field term, over that of the reference; 1 = no blur, < 1 = scattering."""
    xp = B.get_xp(coeffs[0])
    A = model.A
    R = A[0]
    dR = R - xp.mean(R, axis=0)
    mod = dR.copy()
    for j, c in enumerate(coeffs):
        col = A[3 + j]
        mod += c * (col - xp.mean(col, axis=0))
    num = xp.sum(mod * mod, axis=0)
    den = xp.sum(dR * dR, axis=0)
    return xp.sqrt(num / xp.maximum(den, np.float32(1e-20))).astype(np.float32)


def _with_geometry(out: dict, model: LCSModel, geometry: Geometry | None, integrator: str):
    xp = B.get_xp(out["transmission"])
    if model.variant == "df":
        out["visibility"] = _visibility(model, [out["dark_field_px2"]])
    elif model.variant == "ddf":
        t = out["dark_field_tensor_px2"]
        out["visibility"] = _visibility(model, [t[0], t[1], t[2]])
    if geometry is None:
        return out
    u = out["displacement"]
    out["phase"] = phase_from_displacement(u[0], u[1], geometry, integrator=integrator)
    d = propagation_distance_m(geometry)
    p2 = geometry.pixel_size_m**2
    if model.variant == "df":
        out["diffusion"] = (out["dark_field_px2"] * np.float32(p2 / d)).astype(np.float32)  # D_eff = c p²/d
    elif model.variant == "ddf":
        c = out["dark_field_tensor_px2"]
        s = np.float32(p2 / d)
        # ∂xy coefficient c_xy = 2·d·D_xy/p² (design.md: Σ_ij ∂i∂j(D_ij I) has 2∂xy(D_xy I))
        out["diffusion_tensor"] = xp.stack([c[0] * s, c[1] * s, c[2] * (s / 2)]).astype(np.float32)
        out["diffusion"] = (0.5 * (out["diffusion_tensor"][0] + out["diffusion_tensor"][1])).astype(np.float32)
    return out


def _function(variant, reference, sample, geometry, alpha, derivative, iterations, max_shift, weak_absorption,
              integrator):
    model = LCSModel(reference, variant, alpha=alpha, derivative=derivative)
    out = _run(model, sample, iterations=iterations, max_shift=max_shift, weak_absorption=weak_absorption)
    return _with_geometry(out, model, geometry, integrator)


def lcs(*, reference, sample, geometry: Geometry | None = None, alpha: float = 1e-6, derivative: str = "fd8",
        iterations: int = 0, max_shift: float | None = None, weak_absorption: bool = False,
        integrator: str = "fc") -> dict[str, Any]:
    """LCS (Quénot et al. 2021): transmission and displacement by per-pixel least squares.

    Parameters
    ----------
    reference, sample : array (K, H, W)
        Flat-normalised stacks, K ≥ 3 diffuser positions.
    geometry : Geometry, optional
        When given, ``phase`` (rad) is added.
    alpha : float
        Dimensionless Tikhonov weight (relative to each unknown's mean normal-equation diagonal).
    derivative : {"fd8", "central"}
        First-derivative stencil (``"central"`` = ``np.gradient``, as the peers).
    iterations : int
        Extra re-linearisations about the current field (warp the reference by u, solve for the
        increment): for shifts approaching the speckle size.
    max_shift : float, optional
        Clip |u_x|, |u_y| to this many px.
    weak_absorption : bool
        Take ``T·u`` as ``u`` (mbipy option; no division by T).
    integrator : {"fc", "kottler"}

    Returns
    -------
    dict: ``transmission`` (H, W), ``displacement`` (2, H, W) px (x, y) = +u, ``residual`` (H, W)
    = RMS over positions of the misfit / mean reference intensity; ``phase`` with a geometry.
    """
    return _function("lcs", reference, sample, geometry, alpha, derivative, iterations, max_shift,
                     weak_absorption, integrator)


def lcs_df(*, reference, sample, geometry: Geometry | None = None, alpha: float = 1e-4, derivative: str = "fd8",
           iterations: int = 0, max_shift: float | None = None, integrator: str = "fc") -> dict[str, Any]:
    """LCS-DF: LCS plus an isotropic dark-field term ``T c ∇²I_R`` (methods.md §1.6).

    Returns the :func:`lcs` keys plus ``dark_field_px2`` (c, px²), ``visibility`` (RMS modelled speckle
    fluctuation with the dark-field term over that of the reference) and, with a geometry,
    ``phase`` and ``diffusion`` = D_eff = c·p²/d in m.
    """
    return _function("df", reference, sample, geometry, alpha, derivative, iterations, max_shift, False, integrator)


def lcs_ddf(*, reference, sample, geometry: Geometry | None = None, alpha: float = 1e-4, derivative: str = "fd8",
            iterations: int = 0, max_shift: float | None = None, integrator: str = "fc") -> dict[str, Any]:
    """LCS-DDF: directional dark field ``T(c_xx ∂xx + c_yy ∂yy + c_xy ∂xy) I_R`` (methods.md §1.7).

    Returns the :func:`lcs` keys plus ``dark_field_tensor_px2`` (3, H, W) = (c_xx, c_yy, c_xy),
    ``visibility`` and, with a geometry, ``phase``, ``diffusion_tensor`` (3, H, W) = (D_xx, D_yy, D_xy)
    in m (D_xy = c_xy p²/(2d)) and ``diffusion`` = (D_xx + D_yy)/2.
    """
    return _function("ddf", reference, sample, geometry, alpha, derivative, iterations, max_shift, False, integrator)


class LCSRetriever(Retriever):
    """LCS (Quénot et al., Optica 2021) as a :class:`~xspeckle.retrieve.base.Retriever`.

    Parameters
    ----------
    reference : array (K, H, W), K ≥ 3
    geometry : Geometry (upstream: d = Δ; downstream: d = L2)
    alpha : float
        Dimensionless Tikhonov weight (default 1e-6 for LCS, 1e-4 for -DF/-DDF).
    derivative : {"fd8", "central"}
    iterations : int
        Re-linearisations about the current field (default 0).
    max_shift : float, optional
        Clip of |u| in px.
    integrator : {"fc", "kottler"}

    The design matrix and per-pixel ``(AᵀA + Λ)⁻¹`` are built once here; each call is one batched
    product.  Outputs: ``phase``, ``transmission``, ``displacement`` (2, H, W) px = +u, ``residual``
    (plus ``diffusion``, ``visibility`` for LCS-DF; ``diffusion_tensor`` too for LCS-DDF).
    """

    name = "lcs"
    outputs = ("phase", "transmission", "displacement", "residual")
    min_positions = 3
    _variant = "lcs"
    _default_alpha = 1e-6

    def __init__(self, reference, geometry: Geometry, *, alpha: float | None = None, derivative: str = "fd8",
                 iterations: int = 0, max_shift: float | None = None, integrator: str = "fc"):
        super().__init__(reference, geometry)
        if integrator not in ("fc", "kottler"):
            raise ParameterError(f"{self.name}: integrator must be 'fc' or 'kottler', got {integrator!r}")
        if int(iterations) != iterations or iterations < 0:
            raise ParameterError(f"{self.name}: iterations must be a non-negative integer, got {iterations!r}")
        alpha = self._default_alpha if alpha is None else float(alpha)
        self.model = LCSModel(self.reference, self._variant, alpha=alpha, derivative=derivative)
        self.iterations = int(iterations)
        self.max_shift = max_shift
        self.integrator = integrator
        self.parameters = {
            "variant": self._variant,
            "alpha": alpha,
            "alpha_meaning": "Tikhonov weight relative to each unknown's mean normal-equation diagonal",
            "derivative": derivative,
            "iterations": self.iterations,
            "max_shift": max_shift,
            "integrator": integrator,
            "propagation_distance_m": propagation_distance_m(geometry),
            "margin_px": 0,
            "sign": "+u (I_S(r) = T I_R(r - u))",
        }

    def _retrieve(self, sample) -> dict[str, Any]:
        out = _run(self.model, sample, iterations=self.iterations, max_shift=self.max_shift, weak_absorption=False)
        out = _with_geometry(out, self.model, self.geometry, self.integrator)
        return {k: out[k] for k in self.outputs}


class LCSDFRetriever(LCSRetriever):
    """LCS-DF (methods.md §1.6): adds ``diffusion`` (D_eff = c·p²/d, m) and ``visibility``."""

    name = "lcs-df"
    outputs = ("phase", "transmission", "diffusion", "visibility", "displacement", "residual")
    min_positions = 4
    _variant = "df"
    _default_alpha = 1e-4


class LCSDDFRetriever(LCSRetriever):
    """LCS-DDF (methods.md §1.7): adds ``diffusion_tensor`` (3, H, W) = (D_xx, D_yy, D_xy) in m,
    ``diffusion`` = (D_xx + D_yy)/2 and ``visibility``."""

    name = "lcs-ddf"
    outputs = ("phase", "transmission", "diffusion", "diffusion_tensor", "visibility", "displacement", "residual")
    min_positions = 6
    _variant = "ddf"
    _default_alpha = 1e-4
