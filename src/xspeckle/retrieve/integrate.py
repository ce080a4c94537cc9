"""Phase from its gradient or its Laplacian — one module used by every method.

* :func:`frankot_chellappa` — least-squares integration of a gradient field
  (Frankot & Chellappa, IEEE PAMI 10, 439 (1988)), with antisymmetric padding
  (Bon et al., Appl. Opt. 51, 5698 (2012)) against boundary artefacts.
* :func:`kottler` — complex-gradient integration (Kottler et al., Opt. Express 15,
  1175 (2007)); identical to FC for curl-free data.
* :func:`inverse_laplacian` — Tikhonov-regularised FFT inverse Laplacian
  (Gureyev & Nugent; MIST, Pavlov et al. 2020, after Eq. 7) on a mirror pad.
* :func:`zero_border_median` — the contract's background rule for methods that only
  see gradients: the median of the image border is set to 0.

Gradients are in rad/m, Laplacians in rad/m², pixel sizes in m; outputs in rad,
float32, same shape as the input.  Works on NumPy and CuPy arrays.
"""

from __future__ import annotations

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import ParameterError

__all__ = [
    "frankot_chellappa",
    "kottler",
    "inverse_laplacian",
    "zero_border_median",
    "mirror_pad",
    "antisymmetric_pad",
    "angular_frequency_grid",
]


def angular_frequency_grid(shape, pixel_size_m: float, xp=np, rfft: bool = False):
    """Angular frequencies ``(ky, kx)`` in rad/m, broadcastable to *shape* (float32)."""
    h, w = shape[-2:]
    ky = 2 * np.pi * B.fftfreq(h, pixel_size_m, xp=xp)[:, None]
    kx = 2 * np.pi * (B.rfftfreq(w, pixel_size_m, xp=xp) if rfft else B.fftfreq(w, pixel_size_m, xp=xp))[None, :]
    return ky.astype(np.float32), kx.astype(np.float32)


def mirror_pad(f):
    """Even extension to ``(..., 2H, 2W)``: ``[[f, f→], [f↓, f↓→]]`` (arrows: flips)."""
    xp = B.get_xp(f)
    top = xp.concatenate([f, f[..., ::-1]], axis=-1)
    return xp.concatenate([top, top[..., ::-1, :]], axis=-2)


def antisymmetric_pad(gx, gy):
    """Antisymmetric extension of a gradient field (Bon et al. 2012) to ``(..., 2H, 2W)``.

    ``gx`` is odd under a flip in x and even under a flip in y; ``gy`` the reverse, so
    the padded field stays the gradient of the even extension of the phase.
    """
    xp = B.get_xp(gx, gy)
    gx_top = xp.concatenate([gx, -gx[..., ::-1]], axis=-1)
    gx_p = xp.concatenate([gx_top, gx_top[..., ::-1, :]], axis=-2)
    gy_top = xp.concatenate([gy, gy[..., ::-1]], axis=-1)
    gy_p = xp.concatenate([gy_top, -gy_top[..., ::-1, :]], axis=-2)
    return gx_p, gy_p


def _check_2d(a, name):
    if a.ndim < 2:
        raise ParameterError(f"{name} must have at least 2 dimensions (..., y, x), got shape {a.shape}")


def frankot_chellappa(grad_x, grad_y, pixel_size_m: float, *, pad: str = "antisymmetric"):
    """Integrate a gradient field (rad/m) to a phase (rad) by Frankot–Chellappa.

    Φ̂ = −i (k_x Ĝ_x + k_y Ĝ_y) / |k|², Φ̂(0) = 0  (FC 1988, with k in rad/m).

    Parameters
    ----------
    grad_x, grad_y : array, shape (..., H, W)
        ∂φ/∂x and ∂φ/∂y in rad/m.
    pixel_size_m : float
        Pixel size in metres.
    pad : {"antisymmetric", "none"}
        Boundary handling; ``"none"`` assumes periodic data.

    Returns
    -------
    phase : float32 array, shape (..., H, W), mean zero on the padded domain.
    """
    xp = B.get_xp(grad_x, grad_y)
    gx = xp.asarray(grad_x, dtype=np.float32)
    gy = xp.asarray(grad_y, dtype=np.float32)
    _check_2d(gx, "grad_x")
    h, w = gx.shape[-2:]
    if pad == "antisymmetric":
        gx, gy = antisymmetric_pad(gx, gy)
    elif pad != "none":
        raise ParameterError(f"pad must be 'antisymmetric' or 'none', got {pad!r}")
    shape = gx.shape[-2:]
    ky, kx = angular_frequency_grid(shape, pixel_size_m, xp=xp, rfft=True)
    k2 = kx * kx + ky * ky
    k2[0, 0] = 1.0
    gxh = B.rfft2(gx)
    gyh = B.rfft2(gy)
    num = kx * gxh
    num += ky * gyh
    num *= (-1j / k2).astype(np.complex64)
    num[..., 0, 0] = 0
    phase = B.irfft2(num, s=shape)
    return xp.ascontiguousarray(phase[..., :h, :w]).astype(np.float32, copy=False)


def kottler(grad_x, grad_y, pixel_size_m: float, *, pad: str = "antisymmetric"):
    """Integrate a gradient field by Kottler's complex method (Opt. Express 15, 1175 (2007)).

    Φ̂ = F(g_x + i g_y) / (i (k_x + i k_y)), Φ̂(0) = 0.  Returns float32 phase in rad.
    """
    xp = B.get_xp(grad_x, grad_y)
    gx = xp.asarray(grad_x, dtype=np.float32)
    gy = xp.asarray(grad_y, dtype=np.float32)
    _check_2d(gx, "grad_x")
    h, w = gx.shape[-2:]
    if pad == "antisymmetric":
        gx, gy = antisymmetric_pad(gx, gy)
    elif pad != "none":
        raise ParameterError(f"pad must be 'antisymmetric' or 'none', got {pad!r}")
    shape = gx.shape[-2:]
    ky, kx = angular_frequency_grid(shape, pixel_size_m, xp=xp)
    den = (1j * (kx + 1j * ky)).astype(np.complex64)
    den[0, 0] = 1.0
    g = (gx + 1j * gy).astype(np.complex64)
    spec = B.fft2(g)
    spec /= den
    spec[..., 0, 0] = 0
    phase = B.ifft2(spec, overwrite_x=True).real
    return xp.ascontiguousarray(phase[..., :h, :w]).astype(np.float32, copy=False)


def inverse_laplacian(laplacian, pixel_size_m: float, *, epsilon_per_m2: float = 0.0, pad: str = "mirror"):
    """Tikhonov-regularised inverse Laplacian: ∇⁻²f ≈ −F⁻¹[F(f) / (|k|² + ε)].

    (Gureyev & Nugent; Pavlov et al. 2020, text after Eq. 7; methods.md §1.14.)

    Parameters
    ----------
    laplacian : array, shape (..., H, W)
        ∇²φ in rad/m².
    pixel_size_m : float
        Pixel size in metres.
    epsilon_per_m2 : float
        Tikhonov ε in m⁻² (|k| in rad/m).  0 means unregularised, with k = 0 set to 0.
        A useful scale is ε ≈ (2π / L)² for the largest length L to keep.
    pad : {"mirror", "none"}
        ``"mirror"`` evaluates on the 2H×2W even extension (no wrap-around).

    Returns
    -------
    phase : float32, shape (..., H, W), in rad.
    """
    xp = B.get_xp(laplacian)
    f = xp.asarray(laplacian, dtype=np.float32)
    _check_2d(f, "laplacian")
    if epsilon_per_m2 < 0 or not np.isfinite(epsilon_per_m2):
        raise ParameterError(f"epsilon_per_m2 must be finite and >= 0, got {epsilon_per_m2!r}")
    h, w = f.shape[-2:]
    if pad == "mirror":
        f = mirror_pad(f)
    elif pad != "none":
        raise ParameterError(f"pad must be 'mirror' or 'none', got {pad!r}")
    shape = f.shape[-2:]
    ky, kx = angular_frequency_grid(shape, pixel_size_m, xp=xp, rfft=True)
    den = kx * kx + ky * ky + np.float32(epsilon_per_m2)
    if epsilon_per_m2 == 0:
        den[0, 0] = np.inf
    spec = B.rfft2(f)
    spec *= (-1.0 / den).astype(np.float32)
    out = B.irfft2(spec, s=shape)
    return xp.ascontiguousarray(out[..., :h, :w]).astype(np.float32, copy=False)


def zero_border_median(phase, border_px: int = 8):
    """Subtract the median of the outer *border_px* pixels of each image (contract rule)."""
    xp = B.get_xp(phase)
    p = xp.asarray(phase, dtype=np.float32)
    h, w = p.shape[-2:]
    b = int(max(1, min(border_px, h // 4, w // 4)))
    edges = xp.concatenate(
        [
            p[..., :b, :].reshape(*p.shape[:-2], -1),
            p[..., -b:, :].reshape(*p.shape[:-2], -1),
            p[..., b:-b, :b].reshape(*p.shape[:-2], -1),
            p[..., b:-b, -b:].reshape(*p.shape[:-2], -1),
        ],
        axis=-1,
    )
    med = xp.median(edges, axis=-1)
    return p - med[..., None, None].astype(np.float32)
