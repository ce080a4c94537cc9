"""Random diffusers (sandpaper-like phase screens) as complex transmission functions.

A diffuser is a Gaussian random thickness field: white noise low-pass filtered so that its
autocorrelation is ``C(r) = exp(-r²/ℓ²)`` with ℓ = ``grain_size_m`` (the 1/e radius of the
phase autocorrelation), scaled to an RMS phase ``phase_rms_rad``.  The phase is made
non-positive (φ = −kδt ≤ 0, interfaces.md sign) and the amplitude follows the same thickness
through the material's β/δ ratio: ``|t| = exp((β/δ)·φ) ≤ 1`` (since ``-k β t = (β/δ)·(-k δ t)``).

Several layers (e.g. stacked sandpaper sheets, PWF notes §8) are separate screens with free-space
propagation between them (``optics.propagate``).
"""

from __future__ import annotations

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import ParameterError
from xspeckle.optics import frequency_grid, propagate

__all__ = ["gaussian_random_field", "random_diffuser"]


def gaussian_random_field(shape, pixel_size_m: float, correlation_length_m: float, rng) -> np.ndarray:
    """Zero-mean, unit-variance periodic Gaussian random field ``(H, W)`` float64.

    Autocorrelation ``exp(-r²/ℓ²)``: white noise filtered by a Gaussian of std ℓ/2, whose transfer
    function is ``exp(-π² ℓ² f²/2)`` (f in cycles/m); the autocorrelation of a Gaussian of std s is
    a Gaussian of variance 2s² = ℓ²/2, i.e. ``exp(-r²/ℓ²)``.
    """
    h, w = shape
    noise = rng.standard_normal((h, w))
    v, u = frequency_grid((h, w), pixel_size_m, dtype=np.float64)
    filt = np.exp(-(np.pi**2) * correlation_length_m**2 * (u * u + v * v) / 2.0)
    g = B.ifft2(B.fft2(noise) * filt).real
    g -= g.mean()
    sd = g.std()
    if sd == 0:
        raise ParameterError("random_diffuser: grain_size_m is so large that the field is constant; use a smaller grain")
    return g / sd


def random_diffuser(
    shape: tuple[int, int],
    pixel_size_m: float,
    *,
    grain_size_m: float,
    phase_rms_rad: float,
    absorption: float = 0.0,
    layers: int = 1,
    rng: np.random.Generator | int | None = None,
    layer_spacing_m: float = 0.0,
    wavelength_m: float | None = None,
) -> np.ndarray:
    """Complex exit field of a random diffuser illuminated by a unit plane wave.

    Parameters
    ----------
    shape : (H, W)
        Grid shape in pixels (the field is periodic on this grid).
    pixel_size_m : float
        Grid pixel size in metres.
    grain_size_m : float
        Correlation length ℓ of each screen's phase (autocorrelation ``exp(-r²/ℓ²)``), metres.
    phase_rms_rad : float
        RMS phase of each layer, radians.
    absorption : float
        β/δ ratio of the diffuser material (dimensionless, ≥ 0): amplitude ``exp(absorption·φ)``.
    layers : int
        Number of independent screens.
    rng : numpy Generator or int seed
    layer_spacing_m : float
        Free-space distance between consecutive layers (metres); 0 = thin stacked screens.
    wavelength_m : float, optional
        Needed when ``layers > 1`` and ``layer_spacing_m > 0``.

    Returns
    -------
    ndarray (H, W) complex64
        Field just after the last layer; for one layer this is the transmission function t with
        ``|t| ≤ 1`` and ``arg t ≤ 0``.
    """
    if grain_size_m <= 0 or phase_rms_rad < 0 or absorption < 0:
        raise ParameterError("random_diffuser: need grain_size_m > 0, phase_rms_rad >= 0 and absorption >= 0")
    if int(layers) < 1:
        raise ParameterError(f"random_diffuser: layers must be >= 1, got {layers}")
    if layers > 1 and layer_spacing_m > 0 and wavelength_m is None:
        raise ParameterError("random_diffuser: give wavelength_m to propagate between layers (layer_spacing_m > 0)")
    rng = np.random.default_rng(rng)
    field = None
    for i in range(int(layers)):
        phi = phase_rms_rad * gaussian_random_field(shape, pixel_size_m, grain_size_m, rng)
        phi -= phi.max()  # φ = −kδt ≤ 0 (interfaces.md sign); a constant phase is irrelevant
        t = np.exp(absorption * phi + 1j * phi)  # amplitude exp(−kβt) = exp((β/δ)·φ)
        if field is None:
            field = t.astype(np.complex64)
        else:
            if layer_spacing_m > 0:
                field = propagate(field, layer_spacing_m, pixel_size_m, wavelength_m)
            field = (field * t).astype(np.complex64)
    return np.asarray(field, dtype=np.complex64)
