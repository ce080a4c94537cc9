"""From retrieved projections to physical volumes: delta, beta, the dark-field density; background fit.

Units (``interfaces.md``; PWF seed 000 Methods, "FBP"): with p the voxel size in metres
(``pixel_size_m / magnification``) and k = 2 pi / lambda,

* phase ``phi = -k * int delta dz`` (rad, negative in matter), so ``delta = -FBP(phi) / (k p)``;
* transmission ``T = exp(-2k int beta dz)``, so ``beta = -FBP(ln(T) / 2) / (k p)``;
* MIST's ``D_eff`` (m) is a *projected* quantity: it adds up along the beam like a line integral,
  ``D_eff(x, y) = int d(x, y, z) dz``. Its tomogram ``d = FBP(D_eff) / p`` is therefore m of D_eff per m of
  path: **dimensionless** (units ``"1"``). Physically, a blur of per-axis variance sigma^2 obeys
  ``Delta * D_eff = sigma^2 / 2`` (design.md), and a scatterer adding angular variance ``eps`` (rad^2) per
  metre of path gives ``sigma^2 = Delta^2 * int eps dz`` near the detector, so ``d = Delta * eps / 2``:
  the volume depends on Delta like D_eff itself does, and is positive where matter scatters.

FBP returns per-pixel densities (line integral in px units), hence the single division by p.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from xspeckle import backend
from xspeckle.errors import ParameterError
from xspeckle.tomo.fbp import fbp

__all__ = [
    "delta_from_phase",
    "beta_from_transmission",
    "diffusion_from_deff",
    "log_transmission",
    "remove_background_quadratic",
    "background_mask",
]

#: transmissions below this are clipped before the logarithm (noise can push T <= 0)
T_MIN = 1e-6


def _scale(wavenumber_per_m: float, voxel_size_m: float) -> float:
    k, p = float(wavenumber_per_m), float(voxel_size_m)
    if not (k > 0 and p > 0 and np.isfinite(k) and np.isfinite(p)):
        raise ParameterError(f"conversion needs positive wavenumber and voxel size, got k={k!r}, p={p!r}")
    return 1.0 / (k * p)


def delta_from_phase(phase_sino, theta_deg, *, wavenumber_per_m: float, voxel_size_m: float, **fbp_kw):
    """``delta = -FBP(phase) / (k p)`` (seed 000 Methods; sign: phase < 0 in matter, delta > 0).

    Parameters
    ----------
    phase_sino : array (..., A, W), rad
    theta_deg : array (A,)
    wavenumber_per_m : float, rad/m
    voxel_size_m : float, m
    **fbp_kw : passed to :func:`xspeckle.tomo.fbp.fbp` (center, filter, method, ...)

    Returns
    -------
    array (..., N, N) float32, dimensionless.
    """
    s = _scale(wavenumber_per_m, voxel_size_m)
    out = fbp(phase_sino, theta_deg, **fbp_kw)
    out *= -s
    return out


def log_transmission(transmission):
    """``ln(T) / 2`` with T clipped to ``[T_MIN, inf)`` (float32; same array module as the input)."""
    xp = backend.get_xp(transmission)
    t = xp.asarray(transmission, dtype=xp.float32)
    return 0.5 * xp.log(xp.maximum(t, xp.float32(T_MIN)))


def beta_from_transmission(transmission_sino, theta_deg, *, wavenumber_per_m: float, voxel_size_m: float, **fbp_kw):
    """``beta = -FBP(ln(T) / 2) / (k p)`` (T = exp(-2k int beta dz), interfaces.md).

    Parameters as :func:`delta_from_phase`, with intensity transmission ``T`` (1 in air) instead of phase.
    """
    s = _scale(wavenumber_per_m, voxel_size_m)
    out = fbp(log_transmission(transmission_sino), theta_deg, **fbp_kw)
    out *= -s
    return out


def diffusion_from_deff(deff_sino, theta_deg, *, voxel_size_m: float, **fbp_kw):
    """Dark-field density ``d = FBP(D_eff) / p`` (dimensionless; see the module notes).

    Parameters
    ----------
    deff_sino : array (..., A, W), m
        MIST's effective diffusion coefficient per projection.
    voxel_size_m : float, m

    Returns
    -------
    array (..., N, N) float32, units "1" (m of D_eff per m of path).
    """
    p = float(voxel_size_m)
    if not (p > 0 and np.isfinite(p)):
        raise ParameterError(f"voxel size must be positive, got {voxel_size_m!r}")
    out = fbp(deff_sino, theta_deg, **fbp_kw)
    out *= 1.0 / p
    return out


# --------------------------------------------------------------------------- background
def _disc(shape, frac: float):
    ny, nx = shape
    y = np.arange(ny) - (ny - 1) / 2.0
    x = np.arange(nx) - (nx - 1) / 2.0
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    return r2 <= (frac * min(ny, nx) / 2.0) ** 2


def background_mask(slice_, *, threshold: float | None = None, dilate_px: int | None = None, disc: float = 0.95):
    """Background pixels of one slice: inside the reconstruction disc and outside a dilated |value| threshold.

    Parameters
    ----------
    slice_ : array (Y, X)
    threshold : float, optional
        |value| above which a pixel is "sample"; default ``max(4 sigma, 0.02 * P99.9(|value|))`` in the disc,
        with sigma the noise level from the median absolute difference of neighbouring pixels
        (``1.4826 * MAD / sqrt(2)``), so weak materials (a polymer next to glass) stay out of the fit.
    dilate_px : int, optional
        Dilation of the sample region (default max(3, N/64)) so edges and ringing stay out of the fit.
    disc : float
        Radius of the usable disc as a fraction of N/2 (FBP values outside it are unreliable).

    Returns
    -------
    ndarray (Y, X) bool, True = background.
    """
    v = np.abs(backend.asnumpy(slice_))
    inside = _disc(v.shape, disc)
    if threshold is None:
        raw = np.asarray(backend.asnumpy(slice_), dtype=np.float64)
        dif = np.diff(raw, axis=-1)[inside[:, 1:] & inside[:, :-1]]
        sigma = 1.4826 * np.median(np.abs(dif - np.median(dif))) / np.sqrt(2.0)  # robust noise std
        thr = max(4.0 * sigma, 0.02 * np.percentile(v[inside], 99.9))
    else:
        thr = float(threshold)
    it = max(3, min(v.shape) // 64) if dilate_px is None else int(dilate_px)
    sample = ndi.binary_dilation(v > thr, iterations=it) if it > 0 else v > thr
    return inside & ~sample


def remove_background_quadratic(vol, *, mask=None, threshold: float | None = None, dilate_px: int | None = None, min_pixels: int = 50):
    """Fit ``a + bx + cy + dx^2 + exy + fy^2`` to each slice's background and subtract it (in place).

    Seed 000 Methods ("FBP"): phase-gradient methods are blind to slow phase variations, which leave a
    low-frequency background curvature in the tomogram; a 2-D quadratic fitted to the background is removed.

    Parameters
    ----------
    vol : array (Z, Y, X) or (Y, X) float32
        Slices; modified in place and returned.
    mask : array (Y, X) or (Z, Y, X) bool, optional
        True = background; default :func:`background_mask` per slice.
    threshold, dilate_px : see :func:`background_mask`.
    min_pixels : int
        Slices with fewer background pixels are left unchanged.

    Returns
    -------
    The same array.
    """
    xp = backend.get_xp(vol)
    v3 = vol[None] if vol.ndim == 2 else vol
    ny, nx = v3.shape[-2:]
    y = (np.arange(ny) - (ny - 1) / 2.0) / max(ny, 1)
    x = (np.arange(nx) - (nx - 1) / 2.0) / max(nx, 1)
    Y, X = np.meshgrid(y, x, indexing="ij")
    basis = np.stack([np.ones_like(X), X, Y, X * X, X * Y, Y * Y])  # 6 terms (normalised coordinates)
    m_all = None if mask is None else np.asarray(backend.asnumpy(mask), dtype=bool)
    step = max(1, int(np.sqrt(ny * nx / 200_000)))  # subsample the fit to ~2e5 pixels
    sub = (slice(None, None, step), slice(None, None, step))
    for z in range(v3.shape[0]):
        sl = backend.asnumpy(v3[z])
        if m_all is None:
            m = background_mask(sl, threshold=threshold, dilate_px=dilate_px)
        else:
            m = m_all if m_all.ndim == 2 else m_all[z]
        ms = m[sub]
        if ms.sum() < min_pixels:
            continue
        A = basis[(slice(None),) + sub][:, ms].T  # (n, 6)
        b = sl[sub][ms].astype(np.float64)
        coef, *_ = np.linalg.lstsq(A, b, rcond=None)
        fit = np.tensordot(coef, basis, axes=1).astype(np.float32)
        v3[z] -= xp.asarray(fit)
    return vol
