"""Detector-side effects: partial-coherence blur, beam profile, Poisson noise, dark offset, binning.

The partial coherence of the beam (source size, bandwidth, scintillator) is modelled as a convolution
of the coherent intensity with the intensity point-spread function of PWF Eq. 4,
``IPSF = 2/(x_coh y_coh) exp[-2π(x²/x_coh² + y²/y_coh²)]`` (unit integral), i.e. a multiplication of
the spectrum by the intensity optical transfer function of PWF Eq. 5,
``IOTF(u, v) = exp[-π/2 (u² x_coh² + v² y_coh²)]`` (u, v in cycles/m; pwf.md §1, §5).
"""

from __future__ import annotations

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import ParameterError

__all__ = ["iotf", "ipsf", "coherence_blur", "beam_profile", "expose", "bin_pixels"]


def iotf(shape, pixel_size_m: float, coherence_length_x_m: float, coherence_length_y_m: float, *, xp=np, real: bool = True):
    """IOTF of PWF Eq. 5 on the FFT grid of an image of *shape* ``(H, W)``.

    Returns float32 ``(H, W//2+1)`` (``real=True``, the :func:`backend.rfft2` layout) or ``(H, W)``.
    """
    h, w = shape[-2:]
    v = B.fftfreq(h, pixel_size_m, xp=xp, dtype=np.float64)[:, None]
    u = (B.rfftfreq(w, pixel_size_m, xp=xp, dtype=np.float64) if real else B.fftfreq(w, pixel_size_m, xp=xp, dtype=np.float64))[None, :]
    # PWF Eq. 5: IOTF = exp[-π/2 (u² x_coh² + v² y_coh²)]
    out = xp.exp(-np.pi / 2 * (u * u * coherence_length_x_m**2 + v * v * coherence_length_y_m**2))
    return out.astype(np.float32)


def ipsf(x_m, y_m, coherence_length_x_m: float, coherence_length_y_m: float):
    """IPSF of PWF Eq. 4 (m⁻², unit integral) at positions *x_m*, *y_m* (metres)."""
    cx, cy = coherence_length_x_m, coherence_length_y_m
    # PWF Eq. 4 (pwf.md §5): 2/(x_coh y_coh) exp[-2π(x²/x_coh² + y²/y_coh²)]
    return 2.0 / (cx * cy) * np.exp(-2 * np.pi * (np.asarray(x_m) ** 2 / cx**2 + np.asarray(y_m) ** 2 / cy**2))


def coherence_blur(I, coherence_length_x_m: float, coherence_length_y_m: float, pixel_size_m: float):
    """Convolve intensities ``(..., H, W)`` with the IPSF (PWF Eq. 4) via the IOTF (PWF Eq. 5).

    Periodic boundaries (FFT).  Works on NumPy and CuPy arrays; float32 out.  A coherence length of 0
    along an axis means no blur along it.

    Parameters
    ----------
    I : array (..., H, W)
        Intensity (any real dtype).
    coherence_length_x_m, coherence_length_y_m : float
        x_coh, y_coh in metres (along columns and rows).
    pixel_size_m : float
        Pixel size of *I* in metres.
    """
    if coherence_length_x_m < 0 or coherence_length_y_m < 0:
        raise ParameterError("coherence_blur: coherence lengths must be >= 0 (metres)")
    xp = B.get_xp(I)
    a = xp.asarray(I, dtype=np.float32)
    if coherence_length_x_m == 0 and coherence_length_y_m == 0:
        return a.copy()
    spec = B.rfft2(a)
    spec *= iotf(a.shape, pixel_size_m, coherence_length_x_m, coherence_length_y_m, xp=xp)
    return B.irfft2(spec, s=a.shape[-2:]).astype(np.float32, copy=False)


def beam_profile(shape, rng, *, variation: float = 0.15) -> np.ndarray:
    """Smooth non-uniform beam (flat-field shape) ``(H, W)`` float32 with mean ≈ 1.

    A broad off-centre Gaussian bump plus a gentle horizontal gradient and a faint low-frequency
    random modulation (a synchrotron beam after a monochromator looks like this).
    """
    h, w = shape
    y = (np.arange(h) - (h - 1) / 2) / h
    x = (np.arange(w) - (w - 1) / 2) / w
    cy, cx = rng.uniform(-0.15, 0.15, 2)
    bump = np.exp(-((y[:, None] - cy) ** 2) / (2 * 0.6**2) - ((x[None, :] - cx) ** 2) / (2 * 0.8**2))
    grad = 1 + 0.3 * variation * x[None, :]
    ky, kx = rng.uniform(1.0, 2.5, 2)
    ripple = 1 + 0.1 * variation * np.sin(2 * np.pi * ky * y[:, None] + rng.uniform(0, 6.3)) * np.cos(2 * np.pi * kx * x[None, :])
    prof = (1 - variation) + variation * bump
    prof = prof * grad * ripple
    return (prof / prof.mean()).astype(np.float32)


def expose(I, photons_per_pixel: float, profile, dark_level: float, rng, *, noise: bool = True, read_noise: float = 2.0):
    """Turn normalised intensities ``(..., H, W)`` into detector counts (float32).

    ``counts = Poisson(photons · profile · I) + dark_level + N(0, read_noise²)``; without noise
    ``counts = photons · profile · I + dark_level`` exactly.
    """
    mean = np.asarray(I, dtype=np.float64) * (photons_per_pixel * np.asarray(profile, dtype=np.float64))
    np.maximum(mean, 0, out=mean)
    if noise:
        counts = rng.poisson(mean).astype(np.float64)
        counts += dark_level + read_noise * rng.standard_normal(counts.shape)
    else:
        counts = mean + dark_level
    return counts.astype(np.float32)


def bin_pixels(I, factor: int):
    """Average non-overlapping ``factor × factor`` blocks of ``(..., H·f, W·f)`` → ``(..., H, W)``."""
    if factor == 1:
        return I
    *lead, h, w = I.shape
    return I.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))
