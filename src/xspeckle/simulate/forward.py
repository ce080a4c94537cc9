"""Wave-optical forward model of the two speckle geometries on a padded, optionally oversampled grid.

* upstream (MIST, UMPA, XSVT, LCS): plane wave → diffuser → propagate ``d`` to the sample → sample
  transmission ``exp(−k∫β + iφ)`` → propagate Δ → ``|·|²`` → Fokker–Planck diffusion with the sample's
  D over Δ (darkfield.py) → coherence blur (PWF Eq. 4–5) → pixel binning.  Reference: no sample.
* downstream (PWF notes §1): plane wave → sample → propagate L1 → diffuser → propagate L2 → ``|·|²``
  → coherence blur → binning.  Reference: no sample.

The wave lives on a periodic grid of pixel ``h = p/oversample`` that is larger than the detector by
``pad`` detector pixels on each side (then rounded up to an FFT-friendly size), so wrap-around never
reaches the field of view; the detector frame is the centred crop, binned ``oversample × oversample``.
Diffuser positions are lateral shifts of one periodic diffuser (``np.roll`` on the grid: exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from xspeckle import backend as B
from xspeckle.optics import fresnel_transfer
from xspeckle.simulate.darkfield import fokker_planck_diffusion
from xspeckle.simulate.detector import bin_pixels, coherence_blur

__all__ = ["Grid", "simulate_upstream", "simulate_downstream"]


@dataclass(frozen=True)
class Grid:
    """Simulation grid: detector ``(H, W)`` of pixel ``p``, oversampled and padded.

    Attributes
    ----------
    shape : (Hf, Wf)   fine padded grid
    offset : (oy, ox)  fine index of the first detector sub-pixel
    """

    det_shape: tuple[int, int]
    pixel_size_m: float
    oversample: int = 1
    pad_px: int = 16

    @property
    def h(self) -> float:
        """Fine grid pixel size (m)."""
        return self.pixel_size_m / self.oversample

    @property
    def shape(self) -> tuple[int, int]:
        s = self.oversample
        return tuple(int(sfft.next_fast_len((n + 2 * self.pad_px) * s)) for n in self.det_shape)

    @property
    def offset(self) -> tuple[int, int]:
        return (self.pad_px * self.oversample, self.pad_px * self.oversample)

    def centre_offset_px(self) -> tuple[float, float]:
        """``offset_px`` for :meth:`Phantom.project` on the fine grid (fine pixels)."""
        s = self.oversample
        return tuple(o + (n * s - 1) / 2 - (N - 1) / 2 for o, n, N in zip(self.offset, self.det_shape, self.shape))

    def fine_coordinates(self):
        """``(y, x)`` coordinates (m) of fine pixel centres relative to the detector centre: ``(Hf,1)``, ``(1,Wf)``."""
        s = self.oversample
        (oy, ox), (H, W) = self.offset, self.det_shape
        y = (np.arange(self.shape[0]) - oy - (H * s - 1) / 2) * self.h
        x = (np.arange(self.shape[1]) - ox - (W * s - 1) / 2) * self.h
        return y[:, None], x[None, :]

    def detector_coordinates(self):
        """``(y, x)`` coordinates (m) of detector pixel centres: ``(H,1)``, ``(1,W)``."""
        H, W = self.det_shape
        p = self.pixel_size_m
        return ((np.arange(H) - (H - 1) / 2) * p)[:, None], ((np.arange(W) - (W - 1) / 2) * p)[None, :]

    def crop_bin(self, a):
        """Crop the detector region of a fine ``(..., Hf, Wf)`` array and bin it → ``(..., H, W)``."""
        s = self.oversample
        (oy, ox), (H, W) = self.offset, self.det_shape
        return bin_pixels(a[..., oy : oy + H * s, ox : ox + W * s], s)


def _spectral_index(n: int) -> np.ndarray:
    """Positions of the *n* FFT bins of a length-n axis inside a length-2n FFT axis (same frequencies)."""
    k = np.arange(n)
    return np.where(k < n // 2 + n % 2, k, k + n)


def _intensity_from_spectrum(spec):
    """Alias-free intensity ``|ψ|²`` on ψ's own grid from ψ's spectrum ``(..., H, W)``; float32.

    ``|ψ|²`` has twice the bandwidth of ψ, so squaring on the same grid would fold the upper half of
    the intensity spectrum back into the band.  Instead ψ is Fourier-interpolated onto a 2× grid
    (zero padding the spectrum: exact for the band-limited grid field), squared there (no aliasing),
    and the intensity spectrum is cut back to the original band (ideal low-pass; the coherence blur and
    the pixel integration remove that band anyway).
    """
    h, w = spec.shape[-2:]
    iy, ix = _spectral_index(h), _spectral_index(w)
    big = np.zeros(spec.shape[:-2] + (2 * h, 2 * w), dtype=np.complex64)
    big[..., iy[:, None], ix[None, :]] = spec
    f2 = B.ifft2(big, overwrite_x=True)
    i2 = (f2.real * f2.real + f2.imag * f2.imag).astype(np.float32)
    s2 = B.rfft2(i2)[..., iy, : w // 2 + 1]  # same frequencies as an rfft2 on the (h, w) grid
    # ifft2 on the 2× grid scales ψ by 1/4 (|ψ|² by 1/16); an (h, w) inverse of a 4× larger sum: ×1/4
    out = B.irfft2(s2, s=(h, w))
    out *= np.float32(4.0)
    return out.astype(np.float32, copy=False)


def _intensity(field):
    """Alias-free ``|field|²`` (see :func:`_intensity_from_spectrum`)."""
    return _intensity_from_spectrum(B.fft2(np.asarray(field, dtype=np.complex64)))


def _prop_intensity(field, transfer, grid: Grid):
    """Propagate by *transfer* and return the intensity on the simulation grid.

    Alias-free (:func:`_intensity_from_spectrum`) when the wave is sampled at the detector pixel
    (oversample 1); with oversampling the field's band already sits well inside the fine grid's, so
    the plain squared modulus is used.
    """
    spec = B.fft2(field)
    spec *= transfer
    if grid.oversample == 1:
        return _intensity_from_spectrum(spec)
    f = B.ifft2(spec, overwrite_x=True)
    return (f.real * f.real + f.imag * f.imag).astype(np.float32)


def _detect(I, grid: Grid, coherence):
    cx, cy = coherence
    if cx or cy:
        I = coherence_blur(I, cx, cy, grid.h)
    return grid.crop_bin(I).astype(np.float32)


def _prop(field, transfer):
    spec = B.fft2(field)
    spec *= transfer
    return B.ifft2(spec, overwrite_x=True)


def _shifted(diffuser, shifts):
    """The periodic diffuser moved by each ``(dy, dx)`` fine px: ``np.roll`` for whole pixels (exact); a
    fractional remainder by the Fourier shift theorem (exact for the band-limited periodic grid field)."""
    out = []
    for dy, dx in np.asarray(shifts, dtype=np.float64).reshape(-1, 2):
        iy, ix = int(np.floor(dy)), int(np.floor(dx))
        t = np.roll(diffuser, (iy, ix), axis=(0, 1))
        fy, fx = dy - iy, dx - ix
        if fy or fx:  # f(r - s) <-> F exp(-2 pi i (u s_y + v s_x))
            u = sfft.fftfreq(t.shape[0])[:, None]
            v = sfft.fftfreq(t.shape[1])[None, :]
            t = B.ifft2(B.fft2(t) * np.exp(-2j * np.pi * (u * fy + v * fx)).astype(np.complex64)).astype(np.complex64)
        out.append(t)
    return np.stack(out)


def simulate_upstream(grid: Grid, wavelength_m: float, diffuser, shifts, *, diffuser_sample_distance_m: float,
                      sample_detector_distance_m: float, samples, coherence=(0.0, 0.0), reference_shifts=None):
    """Upstream-diffuser scan, noise-free normalised intensities.

    Parameters
    ----------
    grid : Grid
    diffuser : (Hf, Wf) complex64
        Diffuser exit field on the fine grid.
    shifts : (P, 2) int
        Lateral diffuser shifts (fine pixels) per position.
    samples : iterable of (transmission, D)
        Per angle: complex sample transmission ``(Hf, Wf)`` and its diffusion (None, scalar, ``(Hf, Wf)``
        or ``(3, Hf, Wf)``) in metres.
    coherence : (x_coh, y_coh) metres
    reference_shifts : (P, 2) float, optional
        Diffuser shifts (fine pixels, may be fractional) while the reference frames are taken; default *shifts*
        (used for the sample frames). Their difference is the diffuser's repositioning error (drift) between
        the reference and the sample stacks.

    Returns
    -------
    reference (P, H, W) float32, data (P, A, H, W) float32
    """
    d1, d2 = diffuser_sample_distance_m, sample_detector_distance_m
    q1 = fresnel_transfer(grid.shape, grid.h, wavelength_m, d1)
    q2 = fresnel_transfer(grid.shape, grid.h, wavelength_m, d2)
    ref_shifts = shifts if reference_shifts is None else reference_shifts
    inc = _prop(_shifted(diffuser, ref_shifts), q1)  # field at the sample plane (P, Hf, Wf)
    ref = _detect(_prop_intensity(inc, q2, grid), grid, coherence)
    if reference_shifts is not None:
        inc = _prop(_shifted(diffuser, shifts), q1)
    frames = []
    for trans, D in samples:
        I = _prop_intensity(inc * trans[None], q2, grid)
        if D is not None:
            I = fokker_planck_diffusion(I, D, d2, grid.h)
        frames.append(_detect(I, grid, coherence))
    return ref, np.stack(frames, axis=1)


def simulate_downstream(grid: Grid, wavelength_m: float, diffuser, shifts, *, sample_diffuser_distance_m: float,
                        diffuser_detector_distance_m: float, samples, coherence=(0.0, 0.0), reference_shifts=None):
    """Downstream-diffuser (PWF) scan, noise-free normalised intensities.

    *samples* yields complex sample transmissions ``(Hf, Wf)`` per angle; *reference_shifts* as in
    :func:`simulate_upstream`.  Returns reference
    ``(P, H, W)`` and data ``(P, A, H, W)`` float32 (PWF notes §1 forward model).
    """
    q1 = fresnel_transfer(grid.shape, grid.h, wavelength_m, sample_diffuser_distance_m)
    q2 = fresnel_transfer(grid.shape, grid.h, wavelength_m, diffuser_detector_distance_m)
    t = _shifted(diffuser, shifts if reference_shifts is None else reference_shifts)
    ref = _detect(_prop_intensity(t, q2, grid), grid, coherence)
    if reference_shifts is not None:  # diffuser repositioning error between the stacks (see simulate_upstream)
        t = _shifted(diffuser, shifts)
    frames = []
    for trans in samples:
        u1 = _prop(np.asarray(trans, dtype=np.complex64), q1)  # sample → diffuser
        frames.append(_detect(_prop_intensity(t * u1[None], q2, grid), grid, coherence))
    return ref, np.stack(frames, axis=1)
