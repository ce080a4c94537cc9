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

__all__ = ["normalise", "crop", "bin_frames", "fix_bad_pixels"]


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
