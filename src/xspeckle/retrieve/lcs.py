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

Derivatives: first derivatives by central differences (``np.gradient``, ``derivative="central"``, the
peers' choice) by default, chosen by measurement on the smooth-refraction set (``tracking-shift``): the
2-point difference is the secant over ±1 px, which is what a 1 px speckle shift samples, and it amplifies
reference noise less than the 9-point stencil (``derivative="fd8"``, exact for infinitesimal shifts; noise
in the design matrix biases the least-squares slope towards 0); on its own it over-reads small shifts of
fine speckle (gain k/sin k, tested in tests/test_lcs.py).  Second derivatives as in
``retrieve.derivatives`` (5-point Laplacian, 3-point Hessian, methods.md §0).

Refinement (``refine``, default 2): the sample is resampled at ``r + u`` (cubic B-spline,
:func:`warp_cubic`) and the increment solved with the SAME precomputed matrices (inverse-compositional
Gauss–Newton, Baker & Matthews IJCV 2004): it removes the first-order model's under-reading of ~1 px
shifts, at the cost of two warps and two solves more per projection; two passes were better than none on
every set tried.  Slopes, phase errors and timings of both choices: docs/benchmarks.md, "LCS defaults"
(``benchmarks/bench_tracking.py``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve import derivatives as D
from xspeckle.retrieve.base import Retriever, as_stack
from xspeckle.retrieve.pixel_lsq import map_rows, normal_inverse, solve_normal, thread_chunks
from xspeckle.retrieve.tracking import _ndimage, fine_gradient, phase_from_displacement, propagation_distance_m, warp

__all__ = ["LCSModel", "lcs", "lcs_df", "lcs_ddf", "LCSRetriever", "LCSDFRetriever", "LCSDDFRetriever"]

_VARIANTS = {"lcs": 3, "df": 4, "ddf": 6}
_REFINE_MAX_PX = 3.0  # refine passes start only from first estimates |u_x|, |u_y| <= this (px)


def _columns(ref, variant: str, derivative: str):
    """Design-matrix columns ``(q, K, H, W)`` float32 for a reference stack ``(K, H, W)`` (px units)."""
    xp = B.get_xp(ref)
    if derivative not in ("fd8", "central"):
        raise ParameterError(f"lcs: derivative must be 'fd8' or 'central', got {derivative!r}")
    K, H, W = ref.shape
    if variant in ("lcs", "df") and _fast_available(xp) and H >= 9 and W >= 9:
        # numba twin of the NumPy code below (same stencils, same borders), written in place
        A = np.empty((_VARIANTS[variant], K, H, W), np.float32)
        fd8 = derivative == "fd8"
        kern = _kernels()["columns"]
        map_rows(lambda y0, y1: kern(ref, A, y0, y1, fd8, variant == "df"),
                 thread_chunks(H, B.fft_workers(), None), B.fft_workers())
        return A
    if derivative == "fd8":
        gy, gx = fine_gradient(ref)
    else:
        gy, gx = D.gradient(ref)
    cols = [ref, -gx, -gy]  # x = [T, T u_x, T u_y] (methods.md §1.5)
    if variant == "df":
        cols.append(D.laplacian(ref))  # + T c ∇²I_R (methods.md §1.6)
    elif variant == "ddf":
        dxx, dyy, dxy = D.hessian(ref)
        cols += [dxx, dyy, dxy]  # + T (c_xx ∂xx + c_yy ∂yy + c_xy ∂xy) I_R (methods.md §1.7)
    return xp.stack(cols)


# --------------------------------------------------------------------------- CPU fast path (numba)
# On NumPy arrays the design-matrix columns and the cubic warp run as numba kernels over row chunks on
# a thread pool (``pixel_lsq.map_rows``); the per-pixel normal equations and the solve are those of
# ``retrieve/pixel_lsq.py`` (shared with MIST), with their own kernels.  The kernels compute what the
# NumPy code computes (same stencils and borders; sums in float64), so the NumPy path is their twin
# (``XSPECKLE_NUMBA=0`` or ``lcs._USE_NUMBA = False``, which switches the pixel_lsq kernels off too).
_USE_NUMBA = os.environ.get("XSPECKLE_NUMBA", "1").strip().lower() not in ("0", "false", "no", "off")
_KERNELS: dict[str, Any] | None = None
_FD8 = (4.0 / 5.0, -1.0 / 5.0, 4.0 / 105.0, -1.0 / 280.0)  # tracking.fine_gradient weights (Fornberg 1988)


def _nb_columns(ref, A, y0, y1, fd8, with_lap):
    """A[0] = I_R, A[1] = −∂x I_R, A[2] = −∂y I_R (np.gradient edge_order=2, or the 9-point stencil on an
    edge-extended image) and, with_lap, A[3] = 5-point ∇²I_R with reflected borders (derivatives.py)."""
    K, H, W = ref.shape
    c1 = np.float32(_FD8[0])
    c2 = np.float32(_FD8[1])
    c3 = np.float32(_FD8[2])
    c4 = np.float32(_FD8[3])
    half = np.float32(0.5)
    for n in range(K):
        a = ref[n]
        for y in range(y0, y1):
            row = a[y]
            A[0, n, y] = row
            if fd8:
                for x in range(W):
                    s = np.float32(0.0)
                    t = np.float32(0.0)
                    for i in range(1, 5):
                        c = c1 if i == 1 else (c2 if i == 2 else (c3 if i == 3 else c4))
                        xp_ = min(x + i, W - 1)
                        xm = max(x - i, 0)
                        yp = min(y + i, H - 1)
                        ym = max(y - i, 0)
                        s += c * (row[xp_] - row[xm])
                        t += c * (a[yp, x] - a[ym, x])
                    A[1, n, y, x] = -s
                    A[2, n, y, x] = -t
            else:
                A[1, n, y, 0] = -(np.float32(-1.5) * row[0] + np.float32(2.0) * row[1] - half * row[2])
                for x in range(1, W - 1):
                    A[1, n, y, x] = -((row[x + 1] - row[x - 1]) * half)
                A[1, n, y, W - 1] = -(np.float32(1.5) * row[W - 1] - np.float32(2.0) * row[W - 2] + half * row[W - 3])
                if y == 0:
                    for x in range(W):
                        A[2, n, y, x] = -(np.float32(-1.5) * a[0, x] + np.float32(2.0) * a[1, x] - half * a[2, x])
                elif y == H - 1:
                    for x in range(W):
                        A[2, n, y, x] = -(np.float32(1.5) * a[H - 1, x] - np.float32(2.0) * a[H - 2, x]
                                          + half * a[H - 3, x])
                else:
                    for x in range(W):
                        A[2, n, y, x] = -((a[y + 1, x] - a[y - 1, x]) * half)
            if with_lap:
                yu = y - 1 if y > 0 else 0
                yd = y + 1 if y < H - 1 else H - 1
                for x in range(W):
                    xl = x - 1 if x > 0 else 0
                    xr = x + 1 if x < W - 1 else W - 1
                    A[3, n, y, x] = (a[yu, x] + a[yd, x] + row[xl] + row[xr]) - np.float32(4.0) * row[x]
    return 0


def _bspline_weights(t):
    """Cubic B-spline weights of the taps at −1, 0, 1, 2 for a fraction t ∈ [0, 1) (Unser, IEEE SPM 1999)."""
    t2 = t * t
    t3 = t2 * t
    s = 1.0 - t
    return (s * s * s / 6.0, (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0, (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0, t3 / 6.0)


def _nb_warp(coef, ux, uy, out, y0, y1):
    """out[n, y, x] = cubic B-spline of coefficients coef[n] at (y − uy, x − ux): coordinates clamped to the
    image, taps mirrored (scipy's "mirror").  Row by row: the 16 weights and indices of each pixel of the row
    are computed once, then each frame's row is gathered from 4 neighbouring rows of that frame (cache-friendly)."""
    K, H, W = coef.shape
    wy = np.empty((4, W))
    wx = np.empty((4, W))
    iy = np.empty((4, W), np.int64)
    ix = np.empty((4, W), np.int64)
    for y in range(y0, y1):
        for x in range(W):
            sy = min(max(y - np.float64(uy[y, x]), 0.0), H - 1.0)
            sx = min(max(x - np.float64(ux[y, x]), 0.0), W - 1.0)
            fy = int(np.floor(sy))
            fx = int(np.floor(sx))
            t = sy - fy  # _bspline_weights, inlined for numba
            s = 1.0 - t
            wy[0, x] = s * s * s / 6.0
            wy[1, x] = (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0
            wy[2, x] = (-3.0 * t * t * t + 3.0 * t * t + 3.0 * t + 1.0) / 6.0
            wy[3, x] = t * t * t / 6.0
            t = sx - fx
            s = 1.0 - t
            wx[0, x] = s * s * s / 6.0
            wx[1, x] = (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0
            wx[2, x] = (-3.0 * t * t * t + 3.0 * t * t + 3.0 * t + 1.0) / 6.0
            wx[3, x] = t * t * t / 6.0
            iy[0, x] = abs(fy - 1)
            iy[1, x] = fy
            iy[2, x] = fy + 1 if fy + 1 <= H - 1 else 2 * (H - 1) - fy - 1
            iy[3, x] = fy + 2 if fy + 2 <= H - 1 else 2 * (H - 1) - fy - 2
            ix[0, x] = abs(fx - 1)
            ix[1, x] = fx
            ix[2, x] = fx + 1 if fx + 1 <= W - 1 else 2 * (W - 1) - fx - 1
            ix[3, x] = fx + 2 if fx + 2 <= W - 1 else 2 * (W - 1) - fx - 2
        for n in range(K):
            a = coef[n]
            o = out[n, y]
            for x in range(W):
                acc = 0.0
                for i in range(4):
                    r = a[iy[i, x]]
                    acc += wy[i, x] * (wx[0, x] * r[ix[0, x]] + wx[1, x] * r[ix[1, x]] + wx[2, x] * r[ix[2, x]]
                                       + wx[3, x] * r[ix[3, x]])
                o[x] = np.float32(acc)
    return 0


def _mirror(i, n: int, xp):
    i = xp.abs(i)
    return xp.where(i > n - 1, 2 * (n - 1) - i, i)


def warp_cubic(stack, ux, uy):
    """``I(r − u(r))`` for every frame of ``stack (K, H, W)`` by cubic B-spline interpolation (Unser, IEEE SPM
    1999): scipy/cupyx ``spline_filter`` prefilter (mirror), then 16 taps per pixel shared by the K frames.
    Coordinates are clamped to the image.  ``ux, uy`` (H, W) in px.  numba kernel on NumPy arrays (frames
    prefiltered on a thread pool), a gather-based twin on NumPy/CuPy (same numbers to float rounding)."""
    xp = B.get_xp(stack)
    K, H, W = stack.shape
    if H < 3 or W < 3:
        raise InputError(f"lcs: refine needs frames of at least 3 x 3 px, got {H} x {W}")
    ndi = _ndimage(stack)
    coef = xp.empty((K, H, W), dtype=np.float32)
    threads = B.fft_workers() if xp is np else 1

    def prefilter(k0, k1):
        for k in range(k0, k1):
            ndi.spline_filter(stack[k], order=3, output=coef[k], mode="mirror")

    map_rows(prefilter, [(k, k + 1) for k in range(K)], threads)
    if _fast_available(xp):
        out = np.empty_like(coef)
        k = _kernels()["warp"]
        ux = np.ascontiguousarray(ux, dtype=np.float32)
        uy = np.ascontiguousarray(uy, dtype=np.float32)
        map_rows(lambda y0, y1: k(coef, ux, uy, out, y0, y1), thread_chunks(H, threads, None), threads)
        return out
    sy = xp.clip(xp.arange(H, dtype=np.float64)[:, None] - uy.astype(np.float64), 0, H - 1)
    sx = xp.clip(xp.arange(W, dtype=np.float64)[None, :] - ux.astype(np.float64), 0, W - 1)
    iy = xp.floor(sy)
    ix = xp.floor(sx)
    wy = _bspline_weights(sy - iy)
    wx = _bspline_weights(sx - ix)
    iy = iy.astype(np.int64)
    ix = ix.astype(np.int64)
    flat = coef.reshape(K, H * W)
    out = xp.zeros((K, H, W), dtype=np.float64)
    for a in range(4):
        yy = _mirror(iy - 1 + a, H, xp)
        row = xp.zeros((K, H, W), dtype=np.float64)
        for b in range(4):
            xx = _mirror(ix - 1 + b, W, xp)
            row += wx[b] * xp.take(flat, (yy * W + xx).ravel(), axis=1).reshape(K, H, W)
        out += wy[a] * row
    return out.astype(np.float32)


def _kernels() -> dict[str, Any]:
    """The compiled kernels (numba, ``nogil``, disk-cached where possible), or {} without numba."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = B.compile_kernels({"columns": _nb_columns, "warp": _nb_warp})
    return _KERNELS


def _fast_available(xp) -> bool:
    return _USE_NUMBA and xp is np and bool(_kernels())


class LCSModel:
    """Per-pixel LCS least squares with everything that depends on the reference precomputed.

    Parameters
    ----------
    reference : array (K, H, W) float32
    variant : {"lcs", "df", "ddf"}
    alpha : float
        Dimensionless Tikhonov weight (relative to each unknown's mean column energy).
    derivative : {"central", "fd8"}
        First-derivative stencil (default ``"central"``).

    Notes
    -----
    Memory: ``A`` (q·K·H·W) and ``M⁻¹`` (q²·H·W) float32.
    """

    def __init__(self, reference, variant: str = "lcs", *, alpha: float = 1e-6, derivative: str = "central"):
        if variant not in _VARIANTS:
            raise ParameterError(f"lcs: variant must be one of {tuple(_VARIANTS)}, got {variant!r}")
        if not np.isfinite(alpha) or alpha < 0:
            raise ParameterError(f"lcs: alpha must be finite and >= 0, got {alpha!r}")
        self.reference = as_stack(reference, "reference")
        self.variant = variant
        self.alpha = float(alpha)
        self.derivative = derivative
        self.A = _columns(self.reference, variant, derivative)
        self.Minv, self.lam = normal_inverse(self.A, self.alpha, numba=_USE_NUMBA)

    @property
    def q(self) -> int:
        """Number of unknowns per pixel (3, 4 or 6)."""
        return self.A.shape[0]

    def __call__(self, sample, *, iterations: int = 0, max_shift: float | None = None,
                 weak_absorption: bool = False, refine: int = 2) -> dict[str, Any]:
        """Per-projection LCS solve (no phase integration): ``transmission``, ``displacement`` (+u, px),
        ``residual`` and, for the DF variants, ``dark_field_px2`` / ``dark_field_tensor_px2``."""
        return _run(self, sample, iterations=iterations, max_shift=max_shift, weak_absorption=weak_absorption,
                    refine=refine)

    def solve(self, sample, A=None, Minv=None, lam=None):
        """Return ``x (q, H, W)`` and the per-pixel RMS residual ``(H, W)`` for ``sample (K, H, W)``.

        ``x = M⁻¹(Aᵀb)`` with ``b = I_S`` (:func:`xspeckle.retrieve.pixel_lsq.solve_normal`); *A*, *Minv*,
        *lam* default to the precomputed ones.
        """
        A = self.A if A is None else A
        Minv = self.Minv if Minv is None else Minv
        lam = self.lam if lam is None else lam
        return solve_normal(A, Minv, lam, sample, numba=_USE_NUMBA)


def _run(model: LCSModel, sample, *, iterations: int, max_shift, weak_absorption: bool, refine: int = 0):
    """Solve, optionally iterate (re-warp the reference by u and solve for the increment: *iterations*;
    resample the sample by u and solve with the precomputed matrices: *refine*)."""
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
        Minv, lam = normal_inverse(A, model.alpha, numba=_USE_NUMBA)
        x, res = model.solve(s, A, Minv, lam)
        T = x[0]
        Tsafe = xp.where(xp.abs(T) > tiny, T, 1.0)
        # the increment is clipped to 1 px per pass: the linearisation is not trusted beyond that
        ux = ux + xp.clip(xp.where(xp.abs(T) > tiny, x[1] / Tsafe, 0), -1, 1).astype(np.float32)
        uy = uy + xp.clip(xp.where(xp.abs(T) > tiny, x[2] / Tsafe, 0), -1, 1).astype(np.float32)
        extra = [x[j] / Tsafe for j in range(3, model.q)]
    # pixels whose first estimate is far beyond the linearisation's reach (|u| > _REFINE_MAX_PX, e.g. T ≈ 0
    # or no speckle) keep it: resampling from there is meaningless and only amplifies rounding
    trust = (xp.abs(ux) <= _REFINE_MAX_PX) & (xp.abs(uy) <= _REFINE_MAX_PX) if refine else None
    for _ in range(int(refine)):
        # Resample the sample onto the reference grid, S(r + u) ≈ T·I_R(r − δ) with δ = u_true − u, and solve
        # for δ with the SAME precomputed A and (AᵀA + Λ)⁻¹ (inverse-compositional form of the re-linearisation
        # above, methods.md §1.5 "large shifts"; Baker & Matthews, IJCV 2004): the first-order model's
        # under-reading of |u| ~ 1 px shifts is removed at the cost of one cubic warp (warp_cubic) and one solve.
        if max_shift is not None:
            ux = xp.clip(ux, -max_shift, max_shift)
            uy = xp.clip(uy, -max_shift, max_shift)
        sw = warp_cubic(s, -ux, -uy)
        x, res_new = model.solve(sw)
        ok = trust & (xp.abs(x[0]) > tiny)
        Tsafe = xp.where(ok, x[0], 1.0)
        ux = xp.where(ok, ux + xp.clip(x[1] / Tsafe, -1, 1), ux).astype(np.float32)
        uy = xp.where(ok, uy + xp.clip(x[2] / Tsafe, -1, 1), uy).astype(np.float32)
        extra = [xp.where(ok, x[j] / Tsafe, e) for j, e in zip(range(3, model.q), extra)]
        T = xp.where(ok, x[0], T)
        res = xp.where(ok, res_new, res)
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
              integrator, refine=0):
    model = LCSModel(reference, variant, alpha=alpha, derivative=derivative)
    out = _run(model, sample, iterations=iterations, max_shift=max_shift, weak_absorption=weak_absorption,
               refine=refine)
    return _with_geometry(out, model, geometry, integrator)


def lcs(*, reference, sample, geometry: Geometry | None = None, alpha: float = 1e-6, derivative: str = "central",
        iterations: int = 0, max_shift: float | None = None, weak_absorption: bool = False,
        integrator: str = "fc", refine: int = 2) -> dict[str, Any]:
    """LCS (Quénot et al. 2021): transmission and displacement by per-pixel least squares.

    Parameters
    ----------
    reference, sample : array (K, H, W)
        Flat-normalised stacks, K ≥ 3 diffuser positions.
    geometry : Geometry, optional
        When given, ``phase`` (rad) is added.
    alpha : float
        Dimensionless Tikhonov weight (relative to each unknown's mean normal-equation diagonal).
    derivative : {"central", "fd8"}
        First-derivative stencil: ``"central"`` (default) = ``np.gradient``, as the peers; ``"fd8"`` =
        9-point stencil (exact for infinitesimal shifts, biased low for |u| ≳ 0.5 px and by noise).
    iterations : int
        Extra re-linearisations about the current field (warp the reference by u, rebuild the normal
        equations, solve for the increment): for shifts approaching the speckle size.
    refine : int
        Cheaper re-linearisations (default 2): resample the sample at ``r + u`` (cubic B-spline) and
        solve for the increment with the precomputed matrices (one cubic warp + one solve each).
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
                     weak_absorption, integrator, refine)


def lcs_df(*, reference, sample, geometry: Geometry | None = None, alpha: float = 1e-4, derivative: str = "central",
           iterations: int = 0, max_shift: float | None = None, integrator: str = "fc",
           refine: int = 2) -> dict[str, Any]:
    """LCS-DF: LCS plus an isotropic dark-field term ``T c ∇²I_R`` (methods.md §1.6).

    Returns the :func:`lcs` keys plus ``dark_field_px2`` (c, px²), ``visibility`` (RMS modelled speckle
    fluctuation with the dark-field term over that of the reference) and, with a geometry,
    ``phase`` and ``diffusion`` = D_eff = c·p²/d in m.
    """
    return _function("df", reference, sample, geometry, alpha, derivative, iterations, max_shift, False, integrator,
                     refine)


def lcs_ddf(*, reference, sample, geometry: Geometry | None = None, alpha: float = 1e-4, derivative: str = "central",
            iterations: int = 0, max_shift: float | None = None, integrator: str = "fc",
           refine: int = 2) -> dict[str, Any]:
    """LCS-DDF: directional dark field ``T(c_xx ∂xx + c_yy ∂yy + c_xy ∂xy) I_R`` (methods.md §1.7).

    Returns the :func:`lcs` keys plus ``dark_field_tensor_px2`` (3, H, W) = (c_xx, c_yy, c_xy),
    ``visibility`` and, with a geometry, ``phase``, ``diffusion_tensor`` (3, H, W) = (D_xx, D_yy, D_xy)
    in m (D_xy = c_xy p²/(2d)) and ``diffusion`` = (D_xx + D_yy)/2.
    """
    return _function("ddf", reference, sample, geometry, alpha, derivative, iterations, max_shift, False, integrator,
                     refine)


class LCSRetriever(Retriever):
    """LCS (Quénot et al., Optica 2021) as a :class:`~xspeckle.retrieve.base.Retriever`.

    Parameters
    ----------
    reference : array (K, H, W), K ≥ 3
    geometry : Geometry (upstream: d = Δ; downstream: d = L2)
    alpha : float
        Dimensionless Tikhonov weight (default 1e-6 for LCS, 1e-4 for -DF/-DDF).
    derivative : {"central", "fd8"}
        First-derivative stencil (default ``"central"``, chosen by measurement: see the module notes).
    iterations : int
        Re-linearisations about the current field, reference re-warped (default 0).
    refine : int
        Re-linearisations with the sample resampled at ``r + u`` and the precomputed matrices (default 2,
        chosen by measurement: see the module notes).
    max_shift : float, optional
        Clip of |u| in px.
    integrator : {"fc", "kottler"}

    The design matrix and per-pixel ``(AᵀA + Λ)⁻¹`` are built once here; each call is one batched
    product.  Outputs: ``phase``, ``transmission``, ``displacement`` (2, H, W) px = +u, ``residual``
    (plus ``diffusion``, ``visibility`` for LCS-DF; ``diffusion_tensor`` too for LCS-DDF).
    """

    name = "lcs"
    summary = "LCS implicit speckle tracking (Quénot et al., Optica 2021)"
    outputs = ("phase", "transmission", "displacement", "residual")
    min_positions = 3
    _variant = "lcs"
    _default_alpha = 1e-6

    def __init__(self, reference, geometry: Geometry, *, alpha: float | None = None, derivative: str = "central",
                 iterations: int = 0, max_shift: float | None = None, integrator: str = "fc", refine: int = 2):
        super().__init__(reference, geometry)
        if integrator not in ("fc", "kottler"):
            raise ParameterError(f"{self.name}: integrator must be 'fc' or 'kottler', got {integrator!r}")
        if int(iterations) != iterations or iterations < 0:
            raise ParameterError(f"{self.name}: iterations must be a non-negative integer, got {iterations!r}")
        if int(refine) != refine or refine < 0:
            raise ParameterError(f"{self.name}: refine must be a non-negative integer, got {refine!r}")
        self.refine = int(refine)
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
            "refine": self.refine,
            "max_shift": max_shift,
            "integrator": integrator,
            "propagation_distance_m": propagation_distance_m(geometry),
            "margin_px": 0,
            "sign": "+u (I_S(r) = T I_R(r - u))",
        }

    def _retrieve(self, sample) -> dict[str, Any]:
        out = _run(self.model, sample, iterations=self.iterations, max_shift=self.max_shift, weak_absorption=False,
                   refine=self.refine)
        out = _with_geometry(out, self.model, self.geometry, self.integrator)
        return {k: out[k] for k in self.outputs}


class LCSDFRetriever(LCSRetriever):
    """LCS-DF (methods.md §1.6): adds ``diffusion`` (D_eff = c·p²/d, m) and ``visibility``."""

    name = "lcs-df"
    summary = "LCS with an isotropic dark-field term (methods.md §1.6)"
    outputs = ("phase", "transmission", "diffusion", "visibility", "displacement", "residual")
    min_positions = 4
    _variant = "df"
    _default_alpha = 1e-4


class LCSDDFRetriever(LCSRetriever):
    """LCS-DDF (methods.md §1.7): adds ``diffusion_tensor`` (3, H, W) = (D_xx, D_yy, D_xy) in m,
    ``diffusion`` = (D_xx + D_yy)/2 and ``visibility``."""

    name = "lcs-ddf"
    summary = "LCS with a directional dark-field term (methods.md §1.7)"
    outputs = ("phase", "transmission", "diffusion", "diffusion_tensor", "visibility", "displacement", "residual")
    min_positions = 6
    _variant = "ddf"
    _default_alpha = 1e-4
