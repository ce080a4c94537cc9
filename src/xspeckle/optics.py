"""Wave-optics primitives shared by the simulator and the retrieval methods.

Conventions (``interfaces.md``, PWF notes §1): FFT kernel exp(−2πi(ux+vy)) as in
``numpy.fft``; frequencies u, v in cycles/m; paraxial Fresnel transfer function
``Q_z = exp(−iπλz(u²+v²))`` with the constant e^{ikz} dropped, so that an exit wave
``A·exp(iφ)`` with ``φ = −k∫δ dz`` (negative in matter) propagates correctly.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from xspeckle import backend as B

__all__ = ["frequency_grid", "fresnel_transfer", "propagate", "fresnel_number"]


def frequency_grid(shape: tuple[int, int], pixel_size_m: float, xp: ModuleType = np, dtype=np.float32):
    """Return ``(v, u)``: spatial frequencies in cycles/m, shapes ``(H, 1)`` and ``(1, W)``."""
    h, w = shape[-2:]
    v = B.fftfreq(h, pixel_size_m, xp=xp, dtype=dtype)[:, None]
    u = B.fftfreq(w, pixel_size_m, xp=xp, dtype=dtype)[None, :]
    return v, u


def fresnel_transfer(shape, pixel_size_m: float, wavelength_m: float, distance_m: float, xp: ModuleType = np):
    """Paraxial free-space transfer function ``exp(−iπλz(u²+v²))`` as complex64 ``(H, W)``.

    The phase is evaluated in float64 and cast, so large Fresnel phases stay accurate.
    """
    v, u = frequency_grid(shape, pixel_size_m, xp=xp, dtype=np.float64)
    chi = -np.pi * wavelength_m * distance_m * (u * u + v * v)
    return xp.exp(1j * chi).astype(np.complex64)


def propagate(field, distance_m: float, pixel_size_m: float, wavelength_m: float, *, transfer=None):
    """Propagate a complex field ``(..., H, W)`` over *distance_m* (periodic boundaries).

    Parameters
    ----------
    field : array_like, complex
        Field in the start plane, shape ``(..., H, W)``.
    distance_m : float
        Propagation distance in metres (negative = back-propagation, the adjoint).
    transfer : array, optional
        Precomputed :func:`fresnel_transfer` for this shape and distance.
    """
    xp = B.get_xp(field)
    f = xp.asarray(field, dtype=np.complex64)
    if transfer is None:
        transfer = fresnel_transfer(f.shape[-2:], pixel_size_m, wavelength_m, distance_m, xp=xp)
    spec = B.fft2(f)
    spec *= transfer
    return B.ifft2(spec, overwrite_x=True)


def fresnel_number(feature_size_m: float, wavelength_m: float, distance_m: float) -> float:
    """Fresnel number a²/(λz) of a feature of size *a*."""
    return feature_size_m**2 / (wavelength_m * distance_m)
