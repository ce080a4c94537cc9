"""Finite-difference derivatives of image stacks ``(..., H, W)`` in SI units.

Shared by MIST, LCS(-DF/-DDF), OF and UMPA so every method differentiates the same way.
Central differences inside (as ``np.gradient``, methods.md §0), one-sided second-order
at the borders; Laplacian = 5-point stencil (``scipy.ndimage.laplace`` convention) with
mirrored (reflect) borders.  Pixel size in metres → derivatives per metre.
Works on NumPy and CuPy arrays; float32 in, float32 out.
"""

from __future__ import annotations

import numpy as np

from xspeckle import backend as B

__all__ = ["gradient", "laplacian", "hessian"]


def _d1(a, axis: int, h: float):
    """First derivative along *axis* (np.gradient, edge_order=2)."""
    xp = B.get_xp(a)
    return xp.gradient(a, h, axis=axis, edge_order=2)


def gradient(img, pixel_size_m: float = 1.0):
    """Return ``(d/dy, d/dx)`` of ``img (..., H, W)`` per metre (float32)."""
    xp = B.get_xp(img)
    a = xp.asarray(img, dtype=np.float32)
    return _d1(a, -2, pixel_size_m).astype(np.float32, copy=False), _d1(a, -1, pixel_size_m).astype(np.float32, copy=False)


def laplacian(img, pixel_size_m: float = 1.0):
    """5-point Laplacian ∇²img of ``(..., H, W)`` per m² with reflected borders (float32)."""
    xp = B.get_xp(img)
    a = xp.asarray(img, dtype=np.float32)
    pad = [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)]
    p = xp.pad(a, pad, mode="symmetric")
    out = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    out -= 4 * a
    out *= np.float32(1.0 / pixel_size_m**2)
    return out


def hessian(img, pixel_size_m: float = 1.0):
    """Second derivatives ``(d_xx, d_yy, d_xy)`` per m² (3-point stencils; mixed = central of central)."""
    xp = B.get_xp(img)
    a = xp.asarray(img, dtype=np.float32)
    pad = [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)]
    p = xp.pad(a, pad, mode="symmetric")
    s = np.float32(1.0 / pixel_size_m**2)
    dxx = (p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 2 * a) * s
    dyy = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] - 2 * a) * s
    dxy = (p[..., 2:, 2:] - p[..., 2:, :-2] - p[..., :-2, 2:] + p[..., :-2, :-2]) * (s / 4)
    return dxx, dyy, dxy
