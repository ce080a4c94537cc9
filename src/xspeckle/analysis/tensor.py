"""Directional dark field: orientation, anisotropy and colour display of a diffusion tensor.

Input is the ``diffusion_tensor`` output ``(3, H, W) = (D_xx, D_yy, D_xy)`` of
directional MIST (and LCS-DDF), with the design.md convention that D_xy is the
off-diagonal of the symmetric matrix ``[[D_xx, D_xy], [D_xy, D_yy]]`` (the
Fokker–Planck term is ``Δ Σ_ij ∂_i∂_j(D_ij I)``, a Gaussian blur of covariance 2ΔD).

Metrics (methods.md §1.7, after LCS-Retrieval ``tensor_metrics`` and popcorn MISTII):

* eigenvalues λ_max ≥ λ_min of the 2×2 matrix (closed form), clipped at 0;
* orientation θ of the major eigenvector, in degrees in [0, 180) (x axis = columns,
  counter-clockwise towards +y = increasing row index);
* anisotropy ``sqrt(1 − λ_min/λ_max)`` in [0, 1] (0 = isotropic);
* magnitude ``(λ_max + λ_min)/2`` (= isotropic D for an isotropic tensor, m);
* HSV display: hue θ/180, saturation = orientation coherence (Gaussian average of
  ``(cos 2θ, sin 2θ)`` weighted by anisotropy), value = magnitude normalised to a
  percentile.

Works on NumPy and CuPy arrays (the smoothing uses FFTs from ``backend``).
"""

from __future__ import annotations

import math

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError

__all__ = ["eigen", "orientation", "anisotropy", "magnitude", "tensor_metrics", "smooth_orientation", "hsv_display", "hsv_to_rgb"]


def _split(tensor):
    xp = B.get_xp(tensor)
    t = xp.asarray(tensor, dtype=np.float32)
    if t.ndim < 3 or t.shape[0] != 3:
        raise InputError(f"diffusion_tensor must have shape (3, H, W) = (D_xx, D_yy, D_xy), got {tuple(t.shape)}")
    return xp, t[0], t[1], t[2]


def eigen(tensor):
    """Eigen-decomposition of the symmetric 2×2 field.

    Parameters
    ----------
    tensor : array (3, H, W)
        ``(D_xx, D_yy, D_xy)``, any unit (m for MIST).

    Returns
    -------
    lam_max, lam_min : float32 (H, W)
        Eigenvalues, λ_max ≥ λ_min (not clipped).
    theta_rad : float32 (H, W)
        Angle of the major eigenvector from +x towards +y, in [0, π).
    """
    xp, dxx, dyy, dxy = _split(tensor)
    # closed form: λ = (a+c)/2 ± sqrt(((a−c)/2)² + b²); θ = ½ atan2(2b, a − c)
    half_tr = 0.5 * (dxx + dyy)
    half_diff = 0.5 * (dxx - dyy)
    rad = xp.sqrt(half_diff * half_diff + dxy * dxy)
    theta = 0.5 * xp.arctan2(2 * dxy, dxx - dyy)
    theta = xp.mod(theta, np.float32(math.pi)).astype(np.float32)
    return (half_tr + rad).astype(np.float32), (half_tr - rad).astype(np.float32), theta


def orientation(tensor):
    """Major-axis orientation in degrees, in [0, 180) (float32 (H, W))."""
    _, _, th = eigen(tensor)
    return (th * np.float32(180 / math.pi)).astype(np.float32)


def anisotropy(tensor):
    """``sqrt(1 − λ_min/λ_max)`` with eigenvalues clipped at 0; 0 where λ_max ≤ 0 (float32)."""
    xp = B.get_xp(tensor)
    lmax, lmin, _ = eigen(tensor)
    lmax = xp.maximum(lmax, 0)
    lmin = xp.maximum(lmin, 0)
    ok = lmax > 0
    ratio = xp.where(ok, lmin / xp.where(ok, lmax, 1), 1)
    return xp.sqrt(xp.clip(1 - ratio, 0, 1)).astype(np.float32)


def magnitude(tensor):
    """Mean of the clipped eigenvalues ``(λ_max⁺ + λ_min⁺)/2`` (isotropic-equivalent D; float32)."""
    xp = B.get_xp(tensor)
    lmax, lmin, _ = eigen(tensor)
    return (0.5 * (xp.maximum(lmax, 0) + xp.maximum(lmin, 0))).astype(np.float32)


def _gauss_smooth(img, sigma_px: float):
    """Gaussian smoothing by FFT on a mirror pad (σ in px)."""
    from xspeckle.retrieve.integrate import mirror_pad

    xp = B.get_xp(img)
    h, w = img.shape[-2:]
    p = mirror_pad(img.astype(np.float32))
    shape = p.shape[-2:]
    fy = B.fftfreq(shape[0], xp=xp)[:, None]
    fx = B.rfftfreq(shape[1], xp=xp)[None, :]
    g = xp.exp(np.float32(-2 * math.pi**2 * sigma_px**2) * (fx * fx + fy * fy)).astype(np.float32)
    out = B.irfft2(B.rfft2(p) * g, s=shape)
    return xp.ascontiguousarray(out[..., :h, :w]).astype(np.float32)


def smooth_orientation(theta_deg, weight=None, sigma_px: float = 2.0):
    """Smooth an axial orientation field by averaging ``(cos 2θ, sin 2θ)``.

    Parameters
    ----------
    theta_deg : array (H, W)
        Orientation in degrees (mod 180).
    weight : array (H, W), optional
        Non-negative weights (e.g. anisotropy); default 1.
    sigma_px : float
        Gaussian σ in pixels (0 = no smoothing).

    Returns
    -------
    theta_smooth_deg : float32 (H, W) in [0, 180)
    coherence : float32 (H, W) in [0, 1] (1 = all orientations agree)
    """
    if sigma_px < 0:
        raise ParameterError(f"sigma_px must be >= 0, got {sigma_px}")
    xp = B.get_xp(theta_deg)
    t2 = xp.asarray(theta_deg, dtype=np.float32) * np.float32(math.pi / 90)
    wgt = xp.ones_like(t2) if weight is None else xp.asarray(weight, dtype=np.float32)
    c = wgt * xp.cos(t2)
    s = wgt * xp.sin(t2)
    if sigma_px > 0:
        c, s, wgt = _gauss_smooth(c, sigma_px), _gauss_smooth(s, sigma_px), _gauss_smooth(wgt, sigma_px)
    th = xp.mod(xp.arctan2(s, c) * np.float32(90 / math.pi), np.float32(180)).astype(np.float32)
    coh = xp.sqrt(c * c + s * s) / xp.maximum(wgt, np.float32(1e-30))
    return th, xp.clip(coh, 0, 1).astype(np.float32)


def tensor_metrics(tensor, *, sigma_px: float = 2.0) -> dict:
    """All display quantities of a tensor field.

    Returns
    -------
    dict of float32 (H, W): ``lambda_max``, ``lambda_min`` (clipped ≥ 0, same unit as the
    tensor), ``orientation_deg`` (major axis, mod 180), ``orientation_smooth_deg``,
    ``coherence``, ``anisotropy``, ``magnitude``.
    """
    xp = B.get_xp(tensor)
    lmax, lmin, th = eigen(tensor)
    lmax = xp.maximum(lmax, 0)
    lmin = xp.maximum(lmin, 0)
    ok = lmax > 0
    aniso = xp.sqrt(xp.clip(1 - xp.where(ok, lmin / xp.where(ok, lmax, 1), 1), 0, 1)).astype(np.float32)
    deg = (th * np.float32(180 / math.pi)).astype(np.float32)
    ths, coh = smooth_orientation(deg, aniso, sigma_px)
    return {
        "lambda_max": lmax,
        "lambda_min": lmin,
        "orientation_deg": deg,
        "orientation_smooth_deg": ths,
        "coherence": coh,
        "anisotropy": aniso,
        "magnitude": (0.5 * (lmax + lmin)).astype(np.float32),
    }


def hsv_to_rgb(h, s, v):
    """Vectorised HSV → RGB (all in [0, 1]); returns float32 (..., 3)."""
    xp = B.get_xp(h)
    h6 = xp.mod(h, 1.0) * 6
    i = xp.floor(h6)
    f = h6 - i
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    i = (i.astype(np.int32) % 6)[None]

    def pick(*opts):
        return xp.take_along_axis(xp.stack(opts), i, axis=0)[0]

    r = pick(v, q, p, p, t, v)
    g = pick(t, v, v, q, p, p)
    b = pick(p, p, t, v, v, q)
    return xp.stack([r, g, b], axis=-1).astype(np.float32)


def hsv_display(tensor, *, sigma_px: float = 2.0, percentile: float = 99.0, saturation: str = "coherence"):
    """Colour image of a directional dark field (methods.md §1.7).

    Hue = orientation/180°, saturation = coherence (or ``"anisotropy"``), value =
    magnitude divided by its *percentile* (clipped to [0, 1]).

    Parameters
    ----------
    tensor : array (3, H, W)
    sigma_px : float
        Orientation smoothing σ (px).
    percentile : float
        Magnitude percentile mapped to full brightness.
    saturation : {"coherence", "anisotropy"}

    Returns
    -------
    rgb : float32 (H, W, 3) in [0, 1].
    """
    if saturation not in ("coherence", "anisotropy"):
        raise ParameterError(f"saturation must be 'coherence' or 'anisotropy', got {saturation!r}")
    xp = B.get_xp(tensor)
    m = tensor_metrics(tensor, sigma_px=sigma_px)
    mag = m["magnitude"]
    top = float(xp.percentile(mag, percentile))
    val = xp.clip(mag / top, 0, 1) if top > 0 else xp.zeros_like(mag)
    hue = m["orientation_smooth_deg"] / np.float32(180)
    sat = m["coherence"] if saturation == "coherence" else m["anisotropy"]
    return hsv_to_rgb(hue, sat, val)
