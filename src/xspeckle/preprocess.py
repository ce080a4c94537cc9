"""Frame preprocessing: dark subtraction, flat normalisation, crop and bin (float32).

``normalise(frames, flat, dark)`` computes ``(I − dark) / (flat − dark)`` per frame
(methods.md §0).  Without a flat the frames are only dark-subtracted; a common scale
(e.g. the mean of the dark-subtracted reference, as :meth:`xspeckle.io.Scan.normalised_sample`
does) then brings intensities to ≈ 1 (PWF notes §1).
Robust to zeros and hot pixels: a non-positive or non-finite denominator is replaced
by the median of the good flat pixels, non-finite results by the median of their good
neighbours, so the result is finite everywhere.
"""

from __future__ import annotations

import warnings

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError

__all__ = ["normalise", "crop", "bin_frames", "fix_bad_pixels", "DRIFT_REGIONS", "drift_mask", "shift_frames",
           "estimate_shift", "estimate_drift", "shift_reference", "correct_drift", "FLAT_MODES", "flat_groups",
           "flat_for_angle"]


def fix_bad_pixels(img, *, mask=None, size: int = 3):
    """Replace non-finite pixels (and those in *mask*) by the median of their good neighbours.

    Parameters
    ----------
    img : array (..., H, W)
        Frames (any real dtype); returned as float32.
    mask : bool array broadcastable to *img*, optional
        Extra pixels to replace (hot or dead pixels).
    size : int
        Neighbourhood width in pixels (odd), default 3 × 3.

    Returns
    -------
    float32 array, finite everywhere.  Only the bad pixels are touched (cost grows with
    their number, not with the frame size); a bad pixel without any good neighbour gets
    the median of all good pixels (0 if there are none).
    """
    a = np.asarray(img, dtype=np.float32)
    bad = ~np.isfinite(a)
    if mask is not None:
        bad = bad | np.broadcast_to(np.asarray(mask, dtype=bool), a.shape)
    if not bad.any():
        return a
    out = a.copy()
    r = max(int(size), 1) // 2
    vals = np.where(bad, np.float32(np.nan), a)
    padded = np.pad(vals, [(0, 0)] * (a.ndim - 2) + [(r, r), (r, r)], mode="constant", constant_values=np.nan)
    idx = np.nonzero(bad)
    lead, ys, xs = idx[:-2], idx[-2], idx[-1]
    neigh = np.stack([padded[lead + (ys + dy, xs + dx)] for dy in range(2 * r + 1) for dx in range(2 * r + 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods handled below
        med = np.nanmedian(neigh, axis=0)
    lonely = ~np.isfinite(med)
    if lonely.any():
        good = ~bad
        med[lonely] = float(np.median(a[good])) if good.any() else 0.0
    out[idx] = med
    return out


def normalise(frames, flat=None, dark=None, *, eps: float = 1e-6):
    """Dark-subtract and flat-normalise frames ``(..., H, W)`` → float32.

    Parameters
    ----------
    frames : array (..., H, W)
        Raw frames (uint16 or float).
    flat : array (H, W), optional
        Mean flat field (no diffuser, no sample).
    dark : array (H, W), optional
        Mean dark frame.

    Returns
    -------
    float32 array of the same shape, finite everywhere.
    """
    xp = B.get_xp(frames)
    shape = tuple(frames.shape[-2:]) if hasattr(frames, "shape") else None
    d = None
    if dark is not None:
        d = xp.asarray(dark, dtype=np.float32)
        if shape is not None and tuple(d.shape) != shape:
            raise InputError(f"dark frame shape {tuple(d.shape)} does not match frames {shape}")
    inv = None
    if flat is not None:
        fl = xp.asarray(flat, dtype=np.float32)
        if shape is not None and tuple(fl.shape) != shape:
            raise InputError(f"flat field shape {tuple(fl.shape)} does not match frames {shape}")
        if d is not None:
            fl = fl - d
        finite = xp.isfinite(fl)
        scale = float(xp.max(xp.abs(xp.where(finite, fl, np.float32(0.0))))) if fl.size else 1.0
        good = finite & (fl > eps * scale)
        if not bool(good.any()):
            raise InputError("flat field is zero or negative everywhere (after dark subtraction); check the flat and dark frames")
        if not bool(good.all()):
            fill = float(xp.median(fl[good]))
            fl = xp.where(good, fl, np.float32(fill))
        inv = (1.0 / fl).astype(np.float32)  # (H, W): one division, then a multiply per frame
    # one float32 copy of the frames, then in-place work (memory-bound: fewest passes)
    f = xp.array(frames, dtype=np.float32, copy=True)
    # values pushed past the float32 range (e.g. 1.7e38 / a flat of 0.5) become inf and are repaired
    # below like any non-finite pixel, so the overflow itself is not worth a warning
    with np.errstate(over="ignore", invalid="ignore"):
        if d is not None:
            f -= d
        if inv is not None:
            f *= inv
    # cheap finiteness test: a float64 sum is finite iff every pixel is (float32 values cannot overflow it)
    if not np.isfinite(float(xp.sum(f, dtype=np.float64))):
        finite = xp.isfinite(f)
        # non-finite input pixels (NaN/inf in frames or dark): median of the good neighbours on the CPU,
        # the frame median on the GPU; a frame with no finite pixel becomes 0.
        if xp is np:
            f = fix_bad_pixels(f)
            f = np.where(np.isfinite(f), f, np.float32(0.0))
        else:
            fill = xp.nanmedian(xp.where(finite, f, np.float32(np.nan)), axis=(-2, -1), keepdims=True)
            f = xp.where(finite, f, xp.nan_to_num(fill, nan=0.0).astype(np.float32))
    return f


def crop(frames, roi: tuple[int, int, int, int] | None):
    """Crop ``(..., H, W)`` to ``roi = (y0, y1, x0, x1)`` (Python slice bounds)."""
    if roi is None:
        return frames
    y0, y1, x0, x1 = roi
    h, w = frames.shape[-2:]
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise InputError(f"crop {roi} is outside the frame of {h} x {w} pixels")
    return frames[..., y0:y1, x0:x1]


def bin_frames(frames, factor: int):
    """Average ``factor × factor`` pixel blocks (trailing partial blocks dropped)."""
    if factor == 1:
        return frames
    if factor < 1:
        raise InputError(f"bin factor must be >= 1, got {factor}")
    xp = B.get_xp(frames)
    h, w = frames.shape[-2:]
    h2, w2 = h // factor, w // factor
    f = frames[..., : h2 * factor, : w2 * factor]
    f = f.reshape(*f.shape[:-2], h2, factor, w2, factor)
    return f.mean(axis=(-3, -1), dtype=xp.float32)


# --------------------------------------------------------------------------- drift (issue 18)
#: regions accepted by :func:`estimate_drift` (and ``xspeckle retrieve --drift``)
DRIFT_REGIONS = ("wings", "frame")


def _pad_width(shift_px) -> int:
    return int(np.ceil(float(np.max(np.abs(np.asarray(shift_px, dtype=np.float64)))))) + 8


def _fourier_shift(img, shift_px, *, gradient: bool = False):
    """``img(r - s)`` by the Fourier shift theorem on a reflect-padded copy (no wrap-around into the frame).

    ``F{f(r - s)} = F{f} exp(-2 pi i (f_y s_y + f_x s_x))``; with ``gradient`` also the spectral derivatives
    ``d/dy`` and ``d/dx`` of the shifted image (multiplication by ``2 pi i f``). Returns float32 arrays of
    ``img``'s shape (same array module).
    """
    xp = B.get_xp(img)
    sy, sx = (float(v) for v in shift_px)
    pad = _pad_width((sy, sx))
    a = xp.pad(xp.asarray(img, dtype=xp.float32), pad, mode="reflect")
    ny, nx = a.shape
    fy = xp.fft.fftfreq(ny).astype(xp.float32)[:, None]
    fx = xp.fft.rfftfreq(nx).astype(xp.float32)[None, :]
    spec = B.rfft2(a)
    spec *= xp.exp((-2j * np.pi) * (fy * sy + fx * sx)).astype(xp.complex64)
    crop = (slice(pad, pad + img.shape[-2]), slice(pad, pad + img.shape[-1]))
    out = B.irfft2(spec, s=(ny, nx))[crop].astype(xp.float32)
    if not gradient:
        return out
    gy = B.irfft2(spec * ((2j * np.pi) * fy).astype(xp.complex64), s=(ny, nx))[crop].astype(xp.float32)
    gx = B.irfft2(spec * ((2j * np.pi) * fx).astype(xp.complex64), s=(ny, nx))[crop].astype(xp.float32)
    return out, gy, gx


def shift_frames(frames, shifts_px):
    """Shift frames by sub-pixel amounts: ``out[p](r) = frames[p](r - shifts_px[p])`` (Fourier, reflect-padded).

    Parameters
    ----------
    frames : array (H, W) or (P, H, W)
    shifts_px : array (2,) or (P, 2)
        ``(dy, dx)`` in pixels per frame.

    Returns
    -------
    float32 array of the same shape and array module.
    """
    xp = B.get_xp(frames)
    f = xp.asarray(frames, dtype=xp.float32)
    s = np.asarray(B.asnumpy(shifts_px), dtype=np.float64)
    if f.ndim == 2:
        return _fourier_shift(f, s.reshape(2))
    s = s.reshape(f.shape[0], 2)
    return xp.stack([_fourier_shift(f[i], s[i]) for i in range(f.shape[0])])


def drift_mask(shape, region: str = "wings", *, wing_frac: float = 0.1):
    """Pixels used to measure drift: the free-space side wings (``wing_frac`` of the width each side) or the frame.

    Returns
    -------
    ndarray (H, W) bool.
    """
    if region not in DRIFT_REGIONS:
        raise InputError(f"drift: region must be one of {', '.join(DRIFT_REGIONS)}, got {region!r}")
    h, w = shape
    m = np.zeros((h, w), dtype=bool)
    if region == "frame":
        m[:] = True
        return m
    k = int(round(float(wing_frac) * w))
    if not 4 <= k <= w // 3:
        raise InputError(f"drift: wing_frac={wing_frac} gives {k} columns per wing of {w}; use 4..{w // 3} columns")
    m[:, :k] = True
    m[:, w - k :] = True
    return m


def estimate_shift(reference, image, *, mask=None, iterations: int = 30, tol_px: float = 1e-4) -> np.ndarray:
    """Sub-pixel shift ``s = (dy, dx)`` (px) with ``image(r) ~ a * reference(r - s)`` over *mask*.

    Coarse: the integer peak of the FFT cross-correlation of the masked, mean-subtracted frames. Fine:
    Gauss-Newton on ``sum_mask (image - a R(r - s))^2`` over (a, s), the shifted reference and its gradient
    computed exactly in Fourier space (the Lucas-Kanade step, Lucas & Kanade, IJCAI 1981, Eq. 10, with a gain
    ``a`` for intensity changes). A border of ``|s| + 1`` px (where the shifted reference would need data from outside the frame) is left
    out of the fit.

    Parameters
    ----------
    reference, image : array (H, W)
        Normalised frames (NumPy or CuPy), e.g. the reference speckle and a sample frame of one diffuser position.
    mask : array (H, W) bool, optional
        Pixels to match (e.g. :func:`drift_mask`); default all.

    Returns
    -------
    ndarray (2,) float64: ``(dy, dx)`` in pixels (image content moved by +s relative to the reference).
    """
    xp = B.get_xp(reference)
    r = xp.asarray(reference, dtype=xp.float32)
    g = xp.asarray(image, dtype=xp.float32)
    if r.shape != g.shape or r.ndim != 2:
        raise InputError(f"drift: reference {tuple(r.shape)} and image {tuple(g.shape)} must be two (H, W) frames")
    h, w = r.shape
    m = xp.ones((h, w), dtype=bool) if mask is None else xp.asarray(mask, dtype=bool)
    if int(m.sum()) < 64:
        raise InputError("drift: fewer than 64 pixels to match; widen the wings or use region='frame'")
    # coarse: integer peak of the cross-correlation (cross-power spectrum, numpy-sign FFT)
    mf = m.astype(xp.float32)
    r0 = (r - r[m].mean()) * mf
    g0 = (g - g[m].mean()) * mf
    cc = B.irfft2(B.rfft2(g0) * xp.conj(B.rfft2(r0)), s=(h, w))
    iy, ix = (int(v) for v in np.unravel_index(int(xp.argmax(cc)), (h, w)))
    s = np.array([iy - h if iy > h // 2 else iy, ix - w if ix > w // 2 else ix], dtype=np.float64)
    a = 1.0
    for _ in range(int(iterations)):
        R, gy, gx = _fourier_shift(r, s, gradient=True)
        b = int(np.ceil(np.max(np.abs(s)))) + 1
        use = m.copy()
        use[:b, :] = False
        use[-b:, :] = False
        use[:, :b] = False
        use[:, -b:] = False
        e = (g - a * R)[use].astype(xp.float64)
        # d/ds of a R(r - s) = -a grad R(r - s); d/da = R(r - s)
        J = xp.stack([R[use], -a * gy[use], -a * gx[use]]).astype(xp.float64)  # (3, n)
        JtJ = B.asnumpy(J @ J.T)
        Jte = B.asnumpy(J @ e)
        try:
            d = np.linalg.solve(JtJ, Jte)
        except np.linalg.LinAlgError:
            raise InputError("drift: the frames have no texture to match in the chosen region") from None
        a += float(d[0])
        s += d[1:]
        if np.max(np.abs(d[1:])) < tol_px:
            break
    return s


def estimate_drift(reference, sample, *, region: str = "wings", wing_frac: float = 0.1) -> np.ndarray:
    """Shift of the speckle pattern between each reference and sample frame of one projection.

    A diffuser that does not return to exactly the same place (repositioning error, slow drift) moves the
    speckle of the sample frame relative to its reference; every method then reads that shift as refraction.
    In the free-space wings (no sample) the two frames differ only by it.

    Parameters
    ----------
    reference, sample : array (P, H, W)
        Normalised reference and sample frames, one per diffuser position.
    region : {"wings", "frame"}
        Where to match: the side wings (``wing_frac`` of the width each side, free of the sample at every
        angle) or the whole frame (when the sample's refraction averages out, or for reference/reference pairs).

    Returns
    -------
    ndarray (P, 2) float64: ``(dy, dx)`` px per position, ``sample[p](r) ~ reference[p](r - s_p)`` in air.
    """
    r = reference if reference.ndim == 3 else reference[None]
    g = sample if sample.ndim == 3 else sample[None]
    if r.shape != g.shape:
        raise InputError(f"drift: reference {tuple(r.shape)} and sample {tuple(g.shape)} differ in shape")
    m = drift_mask(r.shape[-2:], region, wing_frac=wing_frac)
    return np.stack([estimate_shift(r[i], g[i], mask=m) for i in range(r.shape[0])])


def shift_reference(reference, sample, shifts_px):
    """Move each reference onto its sample frame's speckle: ``reference[p](r - s_p)``.

    The shifted reference is unknown within ``ceil(|s|) + 1`` px of the frame edge (it would need data from
    outside the frame); that band is filled with the sample frame itself, which equals the shifted reference
    wherever the band is air (the side wings; a sample reaching the top or bottom rows gets a few rows of
    "no sample" there instead of reflected garbage). Global methods (PWF's propagation, Fourier integration)
    need this: with a reflected border PWF's phase error on pwf-beads triples under a 2 px drift
    (benchmarks/bench_drift.py).

    Parameters
    ----------
    reference, sample : array (P, H, W)
    shifts_px : array (P, 2)
        ``(dy, dx)`` per position (:func:`estimate_drift`).

    Returns
    -------
    float32 array (P, H, W), same array module.
    """
    xp = B.get_xp(reference)
    out = shift_frames(reference, shifts_px)
    g = xp.asarray(sample, dtype=xp.float32)
    s = np.asarray(B.asnumpy(shifts_px), dtype=np.float64).reshape(-1, 2)
    for i in range(out.shape[0]):
        b = int(np.ceil(np.abs(s[i]).max())) + 1
        for sl in ((slice(0, b), slice(None)), (slice(-b, None), slice(None)),
                   (slice(None), slice(0, b)), (slice(None), slice(-b, None))):
            out[(i,) + sl] = g[(i,) + sl]
    return out


def correct_drift(reference, sample, *, region: str = "wings", wing_frac: float = 0.1):
    """Estimate the drift of each position and move the reference onto the sample's speckle.

    The reference is moved (not the sample), so the sample itself stays where it is in the projection
    (:func:`shift_reference`, border band filled from the sample frame).

    Returns
    -------
    (reference_shifted (P, H, W) float32, shifts (P, 2) float64 px).
    """
    shifts = estimate_drift(reference, sample, region=region, wing_frac=wing_frac)
    ref = reference if reference.ndim == 3 else reference[None]
    smp = sample if sample.ndim == 3 else sample[None]
    return shift_reference(ref, smp, shifts), shifts


# --------------------------------------------------------------------------- flat-field drift (issue 18)
#: ``mode`` values of :func:`flat_for_angle` (and ``retrieve_scan(flat_mode=...)``)
FLAT_MODES = ("mean", "nearest", "linear")


def flat_groups(flats, positions):
    """Average flat frames taken at the same position of the scan.

    Parameters
    ----------
    flats : array (F, H, W)
        Flat fields (no diffuser, no sample), raw counts or dark-subtracted.
    positions : array (F,)
        Where each flat was taken on the angle-index axis of the scan (e.g. -1 before the first angle,
        ``A`` after the last; fractional allowed), or its acquisition time on the same clock as the angles.

    Returns
    -------
    (groups (G, H, W) float32, group_positions (G,) float64), sorted by position.
    """
    f = np.asarray(B.asnumpy(flats), dtype=np.float32)
    pos = np.asarray(B.asnumpy(positions), dtype=np.float64).reshape(-1)
    if f.ndim != 3 or pos.shape != (f.shape[0],):
        raise InputError(f"flat drift: {pos.size} flat positions for flats of shape {tuple(f.shape)}; need one per flat")
    if not np.isfinite(pos).all():
        raise InputError("flat drift: flat positions must be finite numbers")
    u = np.unique(pos)
    return np.stack([f[pos == p].mean(axis=0, dtype=np.float64).astype(np.float32) for p in u]), u


def flat_for_angle(groups, group_positions, position: float, mode: str = "linear"):
    """The flat field to normalise a frame taken at *position* (angle index or time).

    ``"nearest"``: the group closest in position; ``"linear"``: linear interpolation between the two groups
    that bracket it (the nearest one outside their range), ``w = (x - x0) / (x1 - x0)``,
    ``flat = (1 - w) F0 + w F1``; ``"mean"``: the mean of all groups.

    Parameters
    ----------
    groups : array (G, H, W)
    group_positions : array (G,), increasing
    position : float
    mode : {"mean", "nearest", "linear"}

    Returns
    -------
    float32 array (H, W), same array module as *groups*.
    """
    if mode not in FLAT_MODES:
        raise InputError(f"flat drift: mode must be one of {', '.join(FLAT_MODES)}, got {mode!r}")
    xp = B.get_xp(groups)
    x = np.asarray(group_positions, dtype=np.float64)
    if mode == "mean" or len(x) == 1:
        return groups.mean(axis=0).astype(xp.float32) if len(x) > 1 else groups[0]
    p = float(position)
    if mode == "nearest":
        return groups[int(np.argmin(np.abs(x - p)))]
    if p <= x[0]:
        return groups[0]
    if p >= x[-1]:
        return groups[-1]
    i = int(np.searchsorted(x, p)) - 1
    w = (p - x[i]) / (x[i + 1] - x[i])
    return ((1.0 - w) * groups[i] + w * groups[i + 1]).astype(xp.float32)
