"""Sample-induced speckle diffusion (dark field) by the Fokker–Planck diffusion term.

The sample's unresolved small-angle scattering blurs the speckle.  Following MIST (Pavlov et al. 2020,
Eq. 4; Paganin & Morgan 2019 Fokker–Planck), the intensity at the detector evolves over the
propagation distance Δ as

    ∂I/∂s = Σ_ij ∂_i ∂_j (D_ij I),   s ∈ [0, Δ]

with D_ij the symmetric effective diffusion tensor in metres (design.md): the first-order term is
``Δ·(∂xx(Dxx I) + ∂yy(Dyy I) + 2 ∂xy(Dxy I))``.  For constant D the solution is exactly a Gaussian blur
with covariance ``2ΔD`` (spectral factor ``exp(-4π²Δ fᵀ D f)``).  Integration is exact (spectral) for
constant D, otherwise explicit Euler sub-steps of a conservative finite-difference stencil on the
periodic grid, with the step bounded so that ``ds·max(Dxx+Dyy)/h² ≤ cfl`` (stable for a
positive-semidefinite tensor; see :func:`fokker_planck_diffusion`).
"""

from __future__ import annotations

import math

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import ParameterError

__all__ = ["fokker_planck_diffusion", "diffusion_tensor_from_orientation"]


def diffusion_tensor_from_orientation(d_major, d_minor, angle_rad):
    """Tensor components ``(Dxx, Dyy, Dxy)`` of ``R diag(d_major, d_minor) Rᵀ``.

    *angle_rad* is the direction of the major axis measured from +x (columns) towards +y (rows).
    Arrays broadcast; returns three arrays (same units as the inputs, metres).
    """
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    # rotation of the principal-axis tensor: D = R diag(λ1, λ2) Rᵀ
    dxx = d_major * c * c + d_minor * s * s
    dyy = d_major * s * s + d_minor * c * c
    dxy = (d_major - d_minor) * s * c
    return dxx, dyy, dxy


def _as_tensor(D, xp):
    """Return (Dxx, Dyy, Dxy, constant: bool)."""
    if np.isscalar(D) or (hasattr(D, "ndim") and D.ndim == 0):
        d = float(D)
        return d, d, 0.0, True
    if isinstance(D, (tuple, list)) and len(D) == 3 and all(np.isscalar(c) for c in D):
        return float(D[0]), float(D[1]), float(D[2]), True
    a = xp.asarray(D, dtype=np.float32)
    if a.ndim == 2:
        return a, a, None, False
    if a.ndim == 3 and a.shape[0] == 3:
        return a[0], a[1], a[2], False
    raise ParameterError(
        f"fokker_planck_diffusion: D must be a scalar, an (H, W) map or a (3, H, W) tensor (Dxx, Dyy, Dxy); got shape {a.shape}"
    )


def _shift(a, dy: int, dx: int, xp):
    return xp.roll(a, (dy, dx), axis=(-2, -1))


def fokker_planck_diffusion(I, D, distance_m: float, pixel_size_m: float, *, cfl: float = 0.2, max_steps: int = 10000):
    """Apply the Fokker–Planck diffusion of the speckle over a distance Δ.

    Parameters
    ----------
    I : array (..., H, W)
        Intensity at the detector before diffusion (periodic grid).
    D : float, (Dxx, Dyy, Dxy) tuple of floats, array (H, W) or array (3, H, W)
        Effective diffusion coefficient(s) in metres: isotropic ``D_eff`` or the tensor components
        ``(Dxx, Dyy, Dxy)`` (design.md convention: Dxy is the off-diagonal of the symmetric tensor).
    distance_m : float
        Δ, propagation distance over which the diffusion acts (metres).
    pixel_size_m : float
        Pixel size of *I* (metres).
    cfl : float
        Explicit step bound ``ds·max(Dxx + Dyy)/h²`` (≤ 0.25 is stable for a PSD tensor).

    Returns
    -------
    array (..., H, W) float32
        ``I`` integrated over ``∂I/∂s = Σ_ij ∂i∂j(D_ij I)`` for ``s ∈ [0, Δ]``.  Total intensity is
        conserved exactly (conservative stencil / zero-frequency factor 1).
    """
    xp = B.get_xp(I)
    a = xp.asarray(I, dtype=np.float32)
    dxx, dyy, dxy, const = _as_tensor(D, xp)
    h = float(pixel_size_m)
    if const:
        if dxx * dyy - dxy * dxy < -1e-12 * max(dxx * dxx + dyy * dyy, 1e-300) or dxx < 0 or dyy < 0:
            raise ParameterError("fokker_planck_diffusion: the diffusion tensor must be positive semi-definite")
        v = B.fftfreq(a.shape[-2], h, xp=xp, dtype=np.float64)[:, None]
        u = B.rfftfreq(a.shape[-1], h, xp=xp, dtype=np.float64)[None, :]
        # ∂_i → 2πi f_i: dÎ/ds = −4π² (Dxx u² + Dyy v² + 2 Dxy u v) Î  ⇒ Gaussian of covariance 2ΔD
        factor = xp.exp(-4 * np.pi**2 * distance_m * (dxx * u * u + dyy * v * v + 2 * dxy * u * v)).astype(np.float32)
        spec = B.rfft2(a)
        spec *= factor
        return B.irfft2(spec, s=a.shape[-2:]).astype(np.float32, copy=False)

    trace = dxx + dyy if dxy is not None else 2 * dxx
    dmax = float(B.asnumpy(xp.max(trace)))
    if dmax <= 0 or distance_m == 0:
        return a.copy()
    n = max(1, math.ceil(distance_m * dmax / (h * h) / cfl))
    if n > max_steps:
        raise ParameterError(
            f"fokker_planck_diffusion: {n} sub-steps needed (Δ·max D/h² = {distance_m * dmax / h**2:.3g}); "
            "use a coarser grid or a smaller D"
        )
    ds = distance_m / n
    c = np.float32(ds / (h * h))
    out = a.copy()
    for _ in range(n):
        if dxy is None:
            # isotropic: ∂xx(DI) + ∂yy(DI) = ∇²(DI), 5-point stencil
            g = dxx * out
            lap = _shift(g, 1, 0, xp) + _shift(g, -1, 0, xp) + _shift(g, 0, 1, xp) + _shift(g, 0, -1, xp) - 4 * g
            out += c * lap
        else:
            gxx = dxx * out
            gyy = dyy * out
            gxy = dxy * out
            step = _shift(gxx, 0, 1, xp) + _shift(gxx, 0, -1, xp) - 2 * gxx
            step += _shift(gyy, 1, 0, xp) + _shift(gyy, -1, 0, xp) - 2 * gyy
            # 2 ∂xy(Dxy I), central 4-point mixed stencil: (g[+,+] − g[+,−] − g[−,+] + g[−,−]) / 4h²
            step += 0.5 * (_shift(gxy, 1, 1, xp) - _shift(gxy, 1, -1, xp) - _shift(gxy, -1, 1, xp) + _shift(gxy, -1, -1, xp))
            out += c * step
    return out
