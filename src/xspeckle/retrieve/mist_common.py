"""Helpers shared by the MIST retrievers (:mod:`xspeckle.retrieve.mist`, :mod:`xspeckle.retrieve.mist_directional`).

* input and parameter checks (``_check_pair``, ``_check_epsilon``, ``_check_border_px``) and the
  finiteness rule of every output map (``finite``),
* φ from ∇²φ (``_phase_from_laplacian``: the inverse Laplacian of ``retrieve.integrate`` with the
  ε rule, background by the border median),
* the blur calibration (our extension, opt-in with ``blur_calibration=True``; see the
  :mod:`xspeckle.retrieve.mist` docstring),
* the model check of phase-object methods (:func:`attenuation_warning`, issue 14), also used by
  optical flow.

Works on NumPy and CuPy arrays (``backend.get_xp``).
"""

from __future__ import annotations

import math

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve.base import as_stack
from xspeckle.retrieve.integrate import (
    angular_frequency_grid,
    apply_inverse_laplacian,
    auto_epsilon_per_m2,
    default_epsilon_per_m2,
    inverse_laplacian,
    inverse_laplacian_filter,
    zero_border_median,
)

__all__ = ["ATTENUATION_WARN", "attenuation_warning", "transmission_from_data", "finite"]


# --------------------------------------------------------------------------- checks
def finite(a, fill: float = 0.0):
    """Replace non-finite values (float32 result)."""
    xp = B.get_xp(a)
    a = xp.asarray(a, dtype=np.float32)
    bad = ~xp.isfinite(a)
    if bool(bad.any()):
        a = xp.where(bad, np.float32(fill), a)
    return a


def _check_pair(reference, sample, min_positions: int, name: str):
    ref = as_stack(reference, "reference")
    smp = as_stack(sample, "sample")
    if ref.shape != smp.shape:
        raise InputError(f"{name}: sample stack {tuple(smp.shape)} does not match reference stack {tuple(ref.shape)}")
    if ref.shape[0] < min_positions:
        raise InputError(f"{name} needs at least {min_positions} diffuser positions, got {ref.shape[0]}")
    if min(ref.shape[-2:]) < 4:
        raise InputError(f"{name}: images must be at least 4x4 pixels, got {tuple(ref.shape[-2:])}")
    return ref, smp


def _safe_positive(a, rel: float = 1e-3):
    """Clip *a* below at ``rel × mean(|a|)`` (avoids division by ~0 intensities)."""
    xp = B.get_xp(a)
    floor = np.float32(rel * float(xp.mean(xp.abs(a))) + 1e-30)
    return xp.maximum(a, floor)


_EPS_RULE = "auto: minimum estimated phase risk per projection (auto_epsilon_per_m2)"


def _check_epsilon(epsilon_per_m2):
    """None (default: auto), "auto", or a finite ε ≥ 0 in m⁻² (returned as float)."""
    if epsilon_per_m2 is None or (isinstance(epsilon_per_m2, str) and epsilon_per_m2 == "auto"):
        return None
    try:
        e = float(epsilon_per_m2)
    except (TypeError, ValueError):
        e = float("nan")
    if not (e >= 0 and math.isfinite(e)):
        raise ParameterError(f"epsilon_per_m2 must be 'auto' or finite and >= 0 (m^-2), got {epsilon_per_m2!r}")
    return e


def _check_border_px(border_px, H: int, W: int) -> int:
    """``border_px`` (the band whose median phase is set to 0) must lie in 1 .. max(8, min(H, W) // 2)."""
    hi = max(8, min(H, W) // 2)
    if not (isinstance(border_px, (int, float)) and float(border_px).is_integer() and 1 <= border_px <= hi):
        raise ParameterError(f"mist: border_px={border_px!r} must be a whole number of pixels in 1..{hi} "
                             f"(half the {H}x{W} frame at most)")
    return int(border_px)


# --------------------------------------------------------------------------- phase from ∇²φ
_AUTO_FILTERS: dict = {}  # (shape, p, ε, backend) -> inverse-Laplacian filter, at most 4 kept


def _phase_from_laplacian(lap_phi, geometry: Geometry, epsilon_per_m2: float | str | None, border_px: int, filt=None):
    """φ from ∇²φ by the inverse Laplacian, background by the border median; *filt* (optional) is the
    precomputed :func:`~xspeckle.retrieve.integrate.inverse_laplacian_filter` for this shape and ε.
    ``epsilon_per_m2="auto"``: ε from the data (:func:`auto_epsilon_per_m2`); ``None``: :func:`default_epsilon_per_m2`."""
    if isinstance(epsilon_per_m2, str):  # "auto"
        xp = B.get_xp(lap_phi)
        spec = B.dctn(xp.asarray(lap_phi, dtype=np.float32))
        eps = auto_epsilon_per_m2(spec, geometry.pixel_size_m)
        key = (tuple(lap_phi.shape), float(geometry.pixel_size_m), eps, xp.__name__)
        filt = _AUTO_FILTERS.get(key)
        if filt is None:  # ε takes one of a few grid values: keep the last filters (reference-shape work)
            filt = inverse_laplacian_filter(lap_phi.shape, geometry.pixel_size_m, eps, xp)
            if len(_AUTO_FILTERS) >= 4:
                _AUTO_FILTERS.clear()  # atomic (threads of the pipeline may share this module)
            _AUTO_FILTERS[key] = filt
        spec *= filt
        phase = B.idctn(spec).astype(np.float32, copy=False)
        return zero_border_median(phase, border_px), eps
    eps = default_epsilon_per_m2(lap_phi.shape, geometry.pixel_size_m) if epsilon_per_m2 is None else float(epsilon_per_m2)
    # Gureyev & Nugent inverse Laplacian (Pavlov 2020 after Eq. 7), background by border median
    if filt is None:
        phase = inverse_laplacian(lap_phi, geometry.pixel_size_m, epsilon_per_m2=eps)
    else:
        phase = apply_inverse_laplacian(B.get_xp(lap_phi).asarray(lap_phi, dtype=np.float32), filt)
    return zero_border_median(phase, border_px), eps


# --------------------------------------------------------------------------- blur calibration
#: blur widths σ (px) of the calibration ladder; D_k = (σ p)²/(2Δ)
_CAL_SIGMA_PX = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.45, 1.7, 2.0, 2.4)


def _blur_calibration_curve(make_retriever, reference, geometry: Geometry, crop: int = 160):
    """Response of an estimator to a known uniform dark field, from the reference alone.

    MIST's model is first order in ΔD (Pavlov 2020 Eq. 4: exp(ΔD∇²) ≈ 1 + ΔD∇²); for a blur
    comparable to the speckle size the first-order estimate saturates.  The reference (central
    crop ≤ ``crop``²) is diffused by the exact Fokker–Planck solution for uniform D_k (Gaussian
    of covariance 2ΔD_k: spectral factor exp(−ΔD_k|k|²), design.md) and run through the same
    estimator (``make_retriever(crop)``, D only); returns the monotone part of
    (D_k, median estimate) as two float64 arrays (m).
    """
    xp = B.get_xp(reference)
    P, H, W = reference.shape
    p, delta = geometry.pixel_size_m, geometry.sample_detector_distance_m
    ch, cw = min(H, crop), min(W, crop)
    y0, x0 = (H - ch) // 2, (W - cw) // 2
    sub = xp.ascontiguousarray(reference[:, y0 : y0 + ch, x0 : x0 + cw])
    r = make_retriever(sub)
    r._diffusion_only = True
    ky, kx = angular_frequency_grid((ch, cw), p, xp=xp, rfft=True)
    k2 = kx * kx + ky * ky
    spec = B.rfft2(sub)
    m = max(4, min(ch, cw) // 8)  # ignore the wrap-around border of the periodic blur
    d_true, d_est = [0.0], [0.0]
    for sig in _CAL_SIGMA_PX[1:]:
        dk = (sig * p) ** 2 / (2 * delta)
        blurred = B.irfft2(spec * xp.exp(-np.float32(delta * dk) * k2), s=(ch, cw)).astype(np.float32)
        est = r(blurred)["diffusion"][m:-m, m:-m]
        d_true.append(dk)
        d_est.append(float(xp.median(est)))
    d_true_a, d_est_a = np.array(d_true), np.array(d_est)
    keep = 1  # keep the strictly increasing part (beyond it the estimate has saturated)
    while keep < len(d_est_a) and d_est_a[keep] > d_est_a[keep - 1]:
        keep += 1
    return d_true_a[:keep], d_est_a[:keep]


def _apply_curve(d, curve):
    """Map first-order D estimates (m) through *curve*; linear below 0, clamped above the ladder."""
    if curve is None or len(curve[0]) < 2:
        return d
    xp = B.get_xp(d)
    t, e = curve
    slope0 = t[1] / e[1]
    out = xp.interp(d, xp.asarray(e, dtype=np.float32), xp.asarray(t, dtype=np.float32)).astype(np.float32)
    return xp.where(d < 0, d * np.float32(slope0), out).astype(np.float32)


def _calibrate_tensor(tensor, curve):
    """Apply the isotropic calibration curve to the eigenvalues of (D_xx, D_yy, D_xy) and recompose."""
    if curve is None:
        return tensor
    xp = B.get_xp(tensor)
    dxx, dyy, dxy = tensor[0], tensor[1], tensor[2]
    half_tr = 0.5 * (dxx + dyy)
    rad = xp.sqrt(0.25 * (dxx - dyy) ** 2 + dxy * dxy)
    l1 = _apply_curve(half_tr + rad, curve)
    l2 = _apply_curve(half_tr - rad, curve)
    th = 0.5 * xp.arctan2(2 * dxy, dxx - dyy)  # major axis
    c, s = xp.cos(th), xp.sin(th)
    # D = R diag(λ1, λ2) Rᵀ
    return xp.stack([l1 * c * c + l2 * s * s, l1 * s * s + l2 * c * c, (l1 - l2) * c * s]).astype(np.float32)


# --------------------------------------------------------------------------- model check
#: attenuation (1 − transmission) above which a phase-object method warns (global or over 10 % of blocks)
ATTENUATION_WARN = 0.03


def transmission_from_data(reference_mean, sample, block_px: int = 16):
    """Block-averaged transmission ``Σ_block mean_n I_S / Σ_block mean_n I_R`` (float64 (h, w) blocks of
    *block_px* px, sampled on every second pixel) and the whole-field flux ratio.  A phase object only redistributes intensity (TIE: ∫(I_S − I_R) = 0 over
    the field, Teague 1983), so blocks clearly below 1 everywhere mean attenuation."""
    xp = B.get_xp(sample)
    # every second pixel in y and x: a check, not a measurement (a quarter of the passes over the stack)
    s_mean = xp.mean(sample[:, ::2, ::2], axis=0)
    r_mean = reference_mean[::2, ::2]
    H, W = s_mean.shape
    b = max(1, min(int(block_px) // 2, H, W))
    h, w = H // b, W // b
    rs = r_mean[: h * b, : w * b].reshape(h, b, w, b).sum(axis=(1, 3), dtype=np.float64)
    ss = s_mean[: h * b, : w * b].reshape(h, b, w, b).sum(axis=(1, 3), dtype=np.float64)
    t = ss / xp.maximum(rs, 1e-30)
    flux = float(xp.sum(ss)) / max(float(xp.sum(rs)), 1e-30)
    return t, flux


def attenuation_warning(reference_mean, sample, *, model: str, fix: str) -> str | None:
    """One warning line when the data show attenuation that a phase-object model (T = 1) would read as
    phase, else None.  Triggers: whole-field flux ratio below 1 − ATTENUATION_WARN, or the blocks below
    1 − ATTENUATION_WARN outnumbering those above 1 + ATTENUATION_WARN by 10 % of all blocks (lensing moves
    intensity both ways; attenuation only removes it)."""
    t, flux = transmission_from_data(reference_mean, sample)
    xp = B.get_xp(t)
    lo = float(xp.mean(t < 1 - ATTENUATION_WARN))
    hi = float(xp.mean(t > 1 + ATTENUATION_WARN))
    if flux < 1 - ATTENUATION_WARN or lo - hi > 0.1:
        # the same text for every angle (the pipeline counts the angles of each distinct line)
        return (f"the sample attenuates (transmission from the data below {1 - ATTENUATION_WARN:.2f}) but the "
                f"{model} model assumes T = 1, so the phase is unreliable; {fix}")
    return None

