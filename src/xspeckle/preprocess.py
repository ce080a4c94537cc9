"""Frame preprocessing: dark subtraction, flat normalisation, crop and bin (float32).

``normalise(frames, flat, dark)`` computes ``(I − dark) / (flat − dark)`` per frame
(methods.md §0).  Without a flat the frames are divided by the mean of the dark-
subtracted reference instead (PWF notes §1), so all methods see intensities ≈ 1.
Robust to zeros and hot pixels: a non-positive or non-finite denominator is replaced
by the local median, and the result is finite everywhere.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from xspeckle import backend as B
from xspeckle.errors import InputError

__all__ = ["normalise", "crop", "bin_frames", "fix_bad_pixels"]


def fix_bad_pixels(img, *, mask=None, size: int = 3):
    """Replace non-finite pixels (and those in *mask*) by the local median (float32)."""
    a = np.asarray(img, dtype=np.float32)
    bad = ~np.isfinite(a)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    if not bad.any():
        return a
    clean = np.where(bad, np.nanmedian(np.where(bad, np.nan, a)) if (~bad).any() else 0.0, a).astype(np.float32)
    med = ndimage.median_filter(clean, size=(1,) * (a.ndim - 2) + (size, size))
    return np.where(bad, med, a).astype(np.float32)


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
    f = xp.asarray(frames, dtype=np.float32)
    if dark is not None:
        d = xp.asarray(dark, dtype=np.float32)
        if d.shape != f.shape[-2:]:
            raise InputError(f"dark frame shape {d.shape} does not match frames {f.shape[-2:]}")
        f = f - d
    if flat is not None:
        fl = xp.asarray(flat, dtype=np.float32)
        if fl.shape != f.shape[-2:]:
            raise InputError(f"flat field shape {fl.shape} does not match frames {f.shape[-2:]}")
        if dark is not None:
            fl = fl - xp.asarray(dark, dtype=np.float32)
        good = xp.isfinite(fl) & (fl > eps * float(xp.nanmax(xp.abs(fl)) if fl.size else 1.0))
        if not bool(good.any()):
            raise InputError("flat field is zero or negative everywhere (after dark subtraction); check the flat and dark frames")
        if not bool(good.all()):
            fill = float(xp.median(fl[good]))
            fl = xp.where(good, fl, np.float32(fill))
        f = f / fl
    f = xp.where(xp.isfinite(f), f, np.float32(0.0))
    return f.astype(np.float32, copy=False)


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
