"""An independent forward simulator for validating retrievals on data their own model did not make.

The project's main simulator (``forward.py``) *is* the retrieval's forward model: one thin phase screen,
one energy, the paraxial Fresnel propagator, simulated on the detector grid.  A method validated only
there is validated against itself.  This module shares **no forward-model code** with the retrieval
(it imports neither ``xspeckle.optics`` nor ``xspeckle.retrieve`` nor ``simulate.forward`` /
``simulate.detector``; ``tests/test_independent_sim.py`` checks its imports) and adds the physics that
the retrieval leaves out (issue 13):

* **exact angular-spectrum propagation** (not paraxial), evanescent waves dropped;
* a **thick diffuser**: ``n_layers`` screens of random alumina grains (projected thickness of spheres
  0.5–3 µm downstream), multi-slice propagation between them, Al₂O₃ δ *and* β;
* a **polychromatic** beam (2 % FWHM by default) sampled by 5 Gauss–Hermite energies, δ ∝ E⁻², β ∝ E⁻⁴,
  intensities summed incoherently;
* an **oversampled grid** (2× finer than the detector) padded so wrap-around stays out of the field of
  view, binned to detector pixels (area average of intensity);
* a non-uniform beam carried by the wave, source-size blur × detector PSF (a Gaussian whose total width
  is the "true" coherence length in the PWF sense), Poisson photon noise, Gaussian read noise, flat and
  dark frames;
* sub-pixel lateral diffuser shifts (exact for the periodic band-limited grid).

Two scenes: ``geometry="downstream"`` (``indep-beads``: glass beads on a wooden stick in the PWF
geometry) and ``geometry="upstream"`` (``indep-upstream``: a water berry with glass beads in the MIST
geometry, its core a foam of unresolved 2–4 µm air bubbles whose dark field emerges from the wave;
no D_eff number is claimed for it, only ``truth["scatter_mask"]``).  The result is a :class:`~xspeckle.simulate.presets.SimulatedScan`, written by
:func:`~xspeckle.simulate.presets.write_simulated` in the layout of the other presets.

Sign conventions (interfaces.md, design.md): exit wave ``A·exp(iφ)``, ``φ = −k∫δ dz`` negative in
matter, numpy-sign FFT, so free space multiplies the spectrum by ``exp(+i2πz·sqrt(1/λ² − u² − v²))``
(whose paraxial limit is the project's ``exp(−iπλz(u²+v²))``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from xspeckle.errors import ParameterError
from xspeckle.geometry import Geometry

__all__ = [
    "simulate_independent",
    "angular_spectrum_transfer",
    "propagate_angular_spectrum",
    "refractive_index",
    "energy_samples",
    "grain_layer",
    "gaussian_blur",
    "bin_area",
    "sphere_chord",
    "cylinder_chord",
    "INDEP_MATERIALS",
    "DOWNSTREAM",
    "UPSTREAM",
]

# Physical constants (CODATA 2018), kept here so that no number comes from the retrieval side.
R_E_M = 2.8179403262e-15  # classical electron radius (m)
HC_EV_M = 1.239841984e-6  # h·c (eV·m)
N_A = 6.02214076e23  # Avogadro (1/mol)

#: Materials: (density g/cm³, Z/A electrons per g·mol⁻¹ nucleon mass, photoelectric μ/ρ at 10 keV cm²/g).
#: μ/ρ from NIST XCOM/FFAST elemental values at 10 keV mixed by mass fraction: Al 26.2, O 5.95, C 2.37,
#: H 0.385 cm²/g; soda-lime glass 22.6 (pwf.md §8); water 5.33.  Wood = cellulose C6H10O5 at the bulk
#: density of a light wood (0.5 g/cm³, cell structure unresolved and treated as homogeneous).
INDEP_MATERIALS = {
    "alumina": (3.95, 50.0 / 101.96, 16.7),  # Al2O3 (corundum grains)
    "glass": (2.5, 0.4972, 22.6),  # soda-lime glass (72 SiO2, 14 Na2O, 9 CaO, 4 MgO wt %)
    "wood": (0.5, 86.0 / 162.14, 4.02),  # cellulose at wood bulk density
    "water": (1.0, 10.0 / 18.015, 5.33),
}

#: PWF set-up (pwf.md §8): 10 keV, 650 nm px, L1 = 3 mm, L2 = 20 mm, coherence lengths as measured in
#: the paper's data; source 500 × 30 µm FWHM at 36 m.  Four grain layers 10 µm apart.
DOWNSTREAM = dict(energy_ev=10000.0, pixel_size_m=650e-9, L1_m=3e-3, L2_m=20e-3, coherence_length_x_m=3.5e-6,
                  coherence_length_y_m=4.3e-6, source_fwhm_m=(500e-6, 30e-6), source_distance_m=36.0,
                  grain_diameter_m=(0.5e-6, 3.0e-6), grain_coverage=2.0, layer_gap_m=10e-6, positions=12,
                  photons=1e4, beam_min_period_m=60e-6, oversample=2)
#: MIST set-up of the ``mist-berry`` preset (17 keV, 5.8 µm px, sample–detector Δ = 1 m, diffuser 0.5 m
#: upstream of the sample, x/y_coh 6/4 µm), fine sandpaper-like grains 3–8 µm in four sheets 100 µm apart, on
#: a 4× finer grid (1.45 µm): alumina at 17 keV gives ~0.24 rad/µm, and the grain rims must stay resolved
#: (1 % of neighbouring grid steps exceed π/2 in phase, against 37 % for 8–30 µm grains on a 2× grid).
UPSTREAM = dict(energy_ev=17000.0, pixel_size_m=5.8e-6, delta_m=1.0, diffuser_sample_m=0.5,
                coherence_length_x_m=6e-6, coherence_length_y_m=4e-6, source_fwhm_m=(0.0, 0.0),
                source_distance_m=100.0, grain_diameter_m=(3e-6, 8e-6), grain_coverage=1.5, layer_gap_m=100e-6,
                positions=10, photons=1e4, beam_min_period_m=500e-6, oversample=4)


def _workers(workers):
    if workers is not None:
        return int(workers)
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover (non-Linux)
        return max(1, min(4, os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------ materials
def refractive_index(material: str, energy_ev: float) -> tuple[float, float]:
    """``(δ, β)`` of *material* at *energy_ev*.

    δ from the electron density, ``δ = r_e λ² n_e / 2π`` (Als-Nielsen & McMorrow, *Elements of Modern
    X-ray Physics*, 2nd ed., Eq. 3.13, f′ neglected), hence δ ∝ E⁻².  β = μλ/4π (ibid. Eq. 3.14) with the
    photoelectric law μ ∝ E⁻³ away from edges, hence **β ∝ E⁻⁴**.
    """
    if material not in INDEP_MATERIALS:
        raise ParameterError(f"independent simulator: unknown material {material!r}; choose one of {sorted(INDEP_MATERIALS)}")
    rho, z_over_a, mu_rho_10kev = INDEP_MATERIALS[material]
    lam = HC_EV_M / energy_ev
    n_e = rho * 1e6 * z_over_a * N_A  # electrons / m³ (ρ in g/m³)
    delta = R_E_M * lam * lam * n_e / (2 * math.pi)
    mu = mu_rho_10kev * rho * 100.0 * (10000.0 / energy_ev) ** 3  # 1/m, photoelectric E⁻³
    beta = mu * lam / (4 * math.pi)
    return float(delta), float(beta)


def energy_samples(energy_ev: float, bandwidth_fwhm: float, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Energies (eV) and weights (sum 1) sampling a Gaussian spectrum of relative FWHM *bandwidth_fwhm*.

    Gauss–Hermite quadrature for the weight ``exp(−x²/2)`` (Abramowitz & Stegun 25.4.46): exact for
    polynomial moments up to degree ``2n − 1``.  ``bandwidth_fwhm = 0`` or ``n = 1`` gives one energy.
    """
    if bandwidth_fwhm < 0 or bandwidth_fwhm > 0.2:
        raise ParameterError(f"independent simulator: bandwidth={bandwidth_fwhm} must be within 0..0.2 (relative FWHM)")
    if bandwidth_fwhm == 0 or n == 1:
        return np.array([float(energy_ev)]), np.array([1.0])
    x, w = np.polynomial.hermite_e.hermegauss(int(n))
    sigma_rel = bandwidth_fwhm / (2 * math.sqrt(2 * math.log(2)))
    return energy_ev * (1 + sigma_rel * x), w / w.sum()


# ------------------------------------------------------------------------------------------ optics
def _freqs(shape, h):
    fy = sfft.fftfreq(shape[0], h)
    fx = sfft.fftfreq(shape[1], h)
    return fy, fx


def angular_spectrum_transfer(shape, spacing_m: float, wavelength_m: float, distance_m: float) -> np.ndarray:
    """Exact free-space transfer function on the FFT grid of *shape* ``(H, W)``, complex64.

    ``H(u, v) = exp(i2πz·[sqrt(1/λ² − u² − v²) − 1/λ])`` for propagating waves and 0 for evanescent ones
    (Goodman, *Introduction to Fourier Optics*, 3rd ed., Eq. 3-74, with the constant carrier ``e^{ikz}``
    removed).  The bracket is evaluated as ``−f²/(1/λ + sqrt(1/λ² − f²))`` in float64, free of
    cancellation.  With numpy's FFT sign this is the exact counterpart of the paraxial
    ``exp(−iπλz f²)``, so phase is negative in matter (interfaces.md).
    """
    fy, fx = _freqs(shape, spacing_m)
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    inv_l2 = 1.0 / wavelength_m**2
    prop = f2 < inv_l2
    root = np.sqrt(np.where(prop, inv_l2 - f2, 0.0))
    kz_minus = -f2 / (1.0 / wavelength_m + root)  # sqrt(1/λ² − f²) − 1/λ
    out = np.exp(1j * (2 * math.pi * distance_m) * kz_minus)
    out[~prop] = 0.0
    return out.astype(np.complex64)


def propagate_angular_spectrum(field, spacing_m: float, wavelength_m: float, distance_m: float, *, workers=None):
    """Propagate a complex field ``(..., H, W)`` by *distance_m* with :func:`angular_spectrum_transfer`.

    Periodic boundaries; complex64 out.
    """
    f = np.asarray(field, dtype=np.complex64)
    w = _workers(workers)
    spec = sfft.fft2(f, workers=w)
    spec *= angular_spectrum_transfer(f.shape[-2:], spacing_m, wavelength_m, distance_m)
    return sfft.ifft2(spec, workers=w, overwrite_x=True).astype(np.complex64, copy=False)


def gaussian_blur(intensity, sigma_y_m: float, sigma_x_m: float, spacing_m: float, *, workers=None) -> np.ndarray:
    """Periodic Gaussian blur of ``(..., H, W)`` with standard deviations *sigma_y_m*, *sigma_x_m*.

    Transfer function ``exp(−2π²(σ_x² u² + σ_y² v²))``, the Fourier transform of a unit-area Gaussian.
    """
    a = np.asarray(intensity, dtype=np.float32)
    w = _workers(workers)
    fy = sfft.fftfreq(a.shape[-2], spacing_m)[:, None]
    fx = sfft.rfftfreq(a.shape[-1], spacing_m)[None, :]
    otf = np.exp(-2 * math.pi**2 * (sigma_x_m**2 * fx * fx + sigma_y_m**2 * fy * fy)).astype(np.float32)
    spec = sfft.rfft2(a, workers=w)
    spec *= otf
    return sfft.irfft2(spec, s=a.shape[-2:], workers=w).astype(np.float32, copy=False)


def bin_area(intensity, factor: int) -> np.ndarray:
    """Area average of non-overlapping ``factor × factor`` blocks: ``(..., H·f, W·f) → (..., H, W)``."""
    a = np.asarray(intensity)
    if factor == 1:
        return a.astype(np.float32, copy=False)
    *lead, h, w = a.shape
    if h % factor or w % factor:
        raise ParameterError(f"bin_area: shape {a.shape[-2:]} is not divisible by {factor}")
    return a.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1), dtype=np.float64).astype(np.float32)


# ------------------------------------------------------------------------------------------ geometry of objects
def sphere_chord(y, x, cy: float, cx: float, radius: float):
    """Projected thickness (m) of a sphere along z: ``2·sqrt(R² − ρ²)`` (ρ = lateral distance)."""
    r2 = (y - cy) ** 2 + (x - cx) ** 2
    return 2.0 * np.sqrt(np.maximum(radius * radius - r2, 0.0))


def cylinder_chord(x, cx: float, radius: float):
    """Projected thickness (m) of a cylinder with its axis along y: ``2·sqrt(R² − (x − cx)²)``."""
    return 2.0 * np.sqrt(np.maximum(radius * radius - (x - cx) ** 2, 0.0))


def _sub_offsets(n: int) -> np.ndarray:
    """Centres of *n* equal sub-intervals of a unit pixel, relative to its centre."""
    return (np.arange(n) + 0.5) / n - 0.5


@dataclass(frozen=True)
class _Grid:
    """Fine periodic grid: detector ``(H, W)`` of pixel ``p``, ``oversample`` fine px per detector px,
    ``pad_px`` detector px of margin on every side (then rounded up to an FFT-friendly size)."""

    det_shape: tuple[int, int]
    pixel_size_m: float
    oversample: int
    pad_px: int

    @property
    def h(self) -> float:
        return self.pixel_size_m / self.oversample

    @property
    def shape(self) -> tuple[int, int]:
        # FFT-friendly size in detector pixels, times the oversampling: the grid's extent in metres
        # does not depend on the oversampling (so a refinement study sees the same diffuser)
        return tuple(int(sfft.next_fast_len(n + 2 * self.pad_px) * self.oversample) for n in self.det_shape)

    @property
    def offset(self) -> tuple[int, int]:
        return (self.pad_px * self.oversample,) * 2

    def axes(self):
        """Fine pixel-centre coordinates (m) relative to the detector centre: ``y (Hf,)``, ``x (Wf,)``."""
        s, (oy, ox), (H, W) = self.oversample, self.offset, self.det_shape
        y = (np.arange(self.shape[0]) - oy - (H * s - 1) / 2) * self.h
        x = (np.arange(self.shape[1]) - ox - (W * s - 1) / 2) * self.h
        return y, x

    def crop_bin(self, a):
        s, (oy, ox), (H, W) = self.oversample, self.offset, self.det_shape
        return bin_area(a[..., oy : oy + H * s, ox : ox + W * s], s)


# ------------------------------------------------------------------------------------------ diffuser
def grain_layer(shape, spacing_m: float, rng, *, diameter_m=(0.5e-6, 3.0e-6), coverage: float = 1.0,
                n_layers: int = 1, n_sizes: int = 8, subpixel: int = 2, supersample: int = 4, keep=None,
                workers=None) -> np.ndarray:
    """Projected thickness (m) ``(n_layers, H, W)`` float32 of layers of random spherical grains (periodic).

    Grain radii take *n_sizes* log-spaced values over *diameter_m*/2; each size covers an equal share
    of the area, *coverage* = Σ N_b π r_b² / area (the mean number of grains over a point).  Centres are
    uniform in metres over the periodic grid (Poisson process), placed to 1/*subpixel* of a grid pixel:
    each sub-pixel class has its own kernel, the chord ``2·sqrt(r² − ρ²)`` of a grain centred at that
    sub-pixel offset, area-averaged over ``supersample²`` points per grid pixel (no aliasing of the
    grain edge).  Overlapping grains add their thicknesses (stacked grains).  Grains are drawn in
    metres, so the same *rng* state gives the same grains on any grid of the same extent.
    *keep*, optional, maps centre positions ``(row, col)`` in grid pixels to a probability of keeping
    the grain (thinning of the Poisson process: the local coverage becomes ``coverage · keep``).
    """
    H, W = shape
    h = spacing_m
    w = _workers(workers)
    q = int(subpixel)
    radii = np.geomspace(diameter_m[0] / 2, diameter_m[1] / 2, int(n_sizes))
    area = H * W * h * h
    specs = np.zeros((n_layers, H, W // 2 + 1), np.complex128)
    sub = _sub_offsets(supersample) * h
    cls_off = _sub_offsets(q) * h  # sub-pixel class centres (m) relative to the pixel centre
    for r in radii:
        m = int(math.ceil(r / h)) + 1  # kernel half-width (px)
        c = np.arange(-m, m + 1) * h
        pts = (c[:, None] + sub[None, :]).reshape(-1)  # supersampled coordinates of the kernel pixels
        iy = np.arange(-m, m + 1) % H
        ix = np.arange(-m, m + 1) % W
        kspec = {}
        for a in range(q):
            for b in range(q):
                ker = sphere_chord(pts[:, None], pts[None, :], cls_off[a], cls_off[b], r)
                ker = ker.reshape(2 * m + 1, supersample, 2 * m + 1, supersample).mean(axis=(1, 3))
                k_full = np.zeros((H, W), np.float64)
                k_full[np.ix_(iy, ix)] = ker  # centred at pixel (0, 0), wrapped
                kspec[a, b] = sfft.rfft2(k_full, workers=w)
        for layer in range(n_layers):
            n = rng.poisson(coverage * area / (len(radii) * math.pi * r * r))
            fy = rng.uniform(0, H, n)  # centres in grid pixels (continuous); pixel j spans [j − ½, j + ½)
            fx = rng.uniform(0, W, n)
            if keep is not None:
                sel = rng.uniform(0, 1, n) < keep(fy, fx)
                fy, fx = fy[sel], fx[sel]
            jy, jx = np.floor(fy + 0.5), np.floor(fx + 0.5)
            cy = np.minimum(((fy - jy + 0.5) * q).astype(np.int64), q - 1)
            cx = np.minimum(((fx - jx + 0.5) * q).astype(np.int64), q - 1)
            flat_idx = (jy.astype(np.int64) % H) * W + (jx.astype(np.int64) % W)
            for a in range(q):
                for b in range(q):
                    sel = (cy == a) & (cx == b)
                    counts = np.bincount(flat_idx[sel], minlength=H * W).reshape(H, W).astype(np.float32)
                    specs[layer] += sfft.rfft2(counts, workers=w) * kspec[a, b]
    t = sfft.irfft2(specs, s=(H, W), workers=w)
    return np.maximum(t, 0.0).astype(np.float32)


def _shifts(n: int, grid_shape_m, min_sep_m: float, rng) -> np.ndarray:
    """*n* random lateral diffuser offsets (m, (y, x)) over the periodic grid, pairwise > *min_sep_m*
    apart along some axis (periodic distance), continuous (sub-pixel) values."""
    Ly, Lx = grid_shape_m
    out: list[tuple[float, float]] = []
    for _ in range(200 * n):
        cand = (float(rng.uniform(0, Ly)), float(rng.uniform(0, Lx)))
        ok = True
        for q in out:
            dy = abs(cand[0] - q[0]) % Ly
            dx = abs(cand[1] - q[1]) % Lx
            if max(min(dy, Ly - dy), min(dx, Lx - dx)) <= min_sep_m:
                ok = False
                break
        if ok:
            out.append(cand)
            if len(out) == n:
                return np.array(out, dtype=np.float64)
    raise ParameterError(f"independent simulator: cannot place {n} distinct diffuser positions; use fewer positions or a larger size")


def _ramps(shape, h, shifts_m, sign: float) -> np.ndarray:
    """Spectral phase ramps ``exp(sign·i2π(v·s_y + u·s_x))`` ``(P, H, W)`` complex64.

    Multiplying a spectrum by the ramp with ``sign = −1`` shifts the field by ``+s`` (Fourier shift
    theorem, numpy sign convention)."""
    fy, fx = _freqs(shape, h)
    out = np.empty((len(shifts_m),) + tuple(shape), np.complex64)
    for i, (sy, sx) in enumerate(shifts_m):
        ry = np.exp(sign * 2j * math.pi * fy * sy).astype(np.complex64)
        rx = np.exp(sign * 2j * math.pi * fx * sx).astype(np.complex64)
        np.multiply(ry[:, None], rx[None, :], out=out[i])
    return out


def _beam_amplitude(shape, h, rng, *, min_period_m: float = 60e-6, variation: float = 0.12) -> np.ndarray:
    """Smooth, periodic, non-uniform beam intensity ``B`` (fine grid, mean 1), returned as amplitude √B.

    A few random low-order 2-D Fourier modes (periods ≥ *min_period_m*) plus horizontal stripes of a
    monochromator (y-only modes, periods ≥ *min_period_m*/2); whole periods on the grid, so the beam
    is periodic and free space barely changes it.
    """
    H, W = shape
    y = np.arange(H) / H
    x = np.arange(W) / W
    ky_max = max(1, int(H * h / min_period_m))
    kx_max = max(1, int(W * h / min_period_m))
    B = np.ones((H, W))
    for _ in range(6):  # a few random low-order 2-D modes
        ky, kx = rng.integers(0, ky_max + 1), rng.integers(0, kx_max + 1)
        B += variation / 3 * rng.standard_normal() * np.cos(2 * math.pi * (ky * y[:, None] + kx * x[None, :]) + rng.uniform(0, 2 * math.pi))
    for _ in range(3):  # horizontal stripes
        ky = rng.integers(1, 2 * ky_max + 1)
        B += variation / 6 * rng.standard_normal() * np.cos(2 * math.pi * ky * y[:, None] + rng.uniform(0, 2 * math.pi))
    B = np.maximum(B, 0.2)
    B /= B.mean()
    return np.sqrt(B).astype(np.complex64)


# ------------------------------------------------------------------------------------------ phantoms
def _stick_and_beads(det_shape, p, rng):
    """Wooden stick (vertical cylinder through the whole field) with glass beads on its surface.

    Returns ``(stick, beads)``: ``stick = (x_centre_m, radius_m)`` and ``beads`` a list of
    ``(z, y, x, r)`` in metres (z along the beam).  Everything lies within ``|x| + r ≤ U`` with
    ``U = 0.45·W·p − 2p``, so the outer 5 % columns on each side stay sample-free.
    """
    H, W = det_shape
    U = 0.45 * W * p - 2 * p
    Rs = 0.75 * U
    xs = 0.0
    n_beads = max(3, int(round(12 * H * W / 256**2)))
    dmax = min(40e-6, 0.5 * U)
    dmin = min(5e-6, dmax / 2)
    beads: list[tuple[float, float, float, float]] = []
    ylim = 0.5 * H * p
    for i in range(400 * n_beads):
        d = dmax if i == 0 else float(np.exp(rng.uniform(math.log(dmin), math.log(dmax))))
        r = d / 2
        az = float(rng.uniform(-math.pi, math.pi))
        x = xs + (Rs + r) * math.sin(az)
        z = (Rs + r) * math.cos(az)
        y = float(rng.uniform(-ylim + r, ylim - r))
        if abs(x) + r > U:
            continue
        if any((z - b[0]) ** 2 + (y - b[1]) ** 2 + (x - b[2]) ** 2 < (r + b[3] + 0.5e-6) ** 2 for b in beads):
            continue
        beads.append((z, y, x, r))
        if len(beads) == n_beads:
            break
    return (xs, Rs), beads


def _downstream_thickness(y, x, stick, beads):
    """``{material: thickness (m)}`` of the downstream scene at coordinates *y* ``(N,1)``, *x* ``(1,M)``."""
    tw = np.broadcast_to(cylinder_chord(x, stick[0], stick[1]), np.broadcast_shapes(y.shape, x.shape)).copy()
    tg = np.zeros_like(tw)
    for _, by, bx, r in beads:
        tg += sphere_chord(y, x, by, bx, r)
    return {"wood": tw, "glass": tg}


def _berry(det_shape, p, rng):
    """Water berry (radius 0.3 FOV, slightly off-centre) with a few glass beads beside it.

    The berry's core (radius 0.75 R) holds unresolved air bubbles (see :func:`simulate_independent`)."""
    H, W = det_shape
    fov = W * p
    berry = (0.0, 0.0, 0.04 * fov, 0.3 * fov)
    beads = []
    for cy, cx, rr in ((-0.3, -0.3, 0.05), (0.32, -0.28, 0.035), (-0.3, 0.33, 0.03)):
        beads.append((0.0, cy * H * p, cx * fov, rr * fov))
    return berry, beads


def _upstream_thickness(y, x, berry, beads):
    tw = np.broadcast_to(sphere_chord(y, x, berry[1], berry[2], berry[3]), np.broadcast_shapes(y.shape, x.shape)).copy()
    tg = np.zeros_like(tw)
    for _, by, bx, r in beads:
        tg += sphere_chord(y, x, by, bx, r)
    return {"water": tw, "glass": tg}


def _pixel_average(fn, y, x, spacing_m, n):
    """Average of ``fn(y, x) -> dict of maps`` over ``n × n`` sub-points of each pixel (area average)."""
    out = None
    for dy in _sub_offsets(n) * spacing_m:
        for dx in _sub_offsets(n) * spacing_m:
            m = fn(y[:, None] + dy, x[None, :] + dx)
            if out is None:
                out = {k: v.astype(np.float64) for k, v in m.items()}
            else:
                for k, v in m.items():
                    out[k] += v
    return {k: v / (n * n) for k, v in out.items()}


# ------------------------------------------------------------------------------------------ the simulator
def _check_int(name, value, lo, hi):
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ParameterError(f"independent simulator: {name}={value!r} must be an integer") from None
    if not lo <= v <= hi or v != value:
        raise ParameterError(f"independent simulator: {name}={value} must be an integer within {lo}..{hi}")
    return v


def simulate_independent(geometry: str = "downstream", size: int = 256, positions: int | None = None, seed: int = 0, *,
                         noise: bool = True, bandwidth: float = 0.02, n_energies: int = 5, n_layers: int = 4,
                         oversample: int | None = None, photons: float | None = None, coherence_in_geometry: bool = False,
                         phantom_seed: int = 0, grain_diameter_m: tuple[float, float] | None = None,
                         grain_coverage: float | None = None, bubble_porosity: float = 0.15,
                         diffuser_step_px: float | None = None, workers: int | None = None):
    """Simulate a speckle scan with physics independent of the retrieval's forward model.

    Parameters
    ----------
    geometry : {"downstream", "upstream"}
        ``"downstream"``: glass beads (5–40 µm) on a wooden stick crossing the field, PWF set-up
        (10 keV, 650 nm px; sample → L1 = 3 mm → thick diffuser → L2 = 20 mm → detector; the diffuser's
        layers are centred on the nominal diffuser plane).  ``"upstream"``: thick diffuser 0.5 m
        upstream of a water berry with glass beads, Δ = 1 m, 17 keV, 5.8 µm px (MIST set-up).
    size : int
        Detector width = height (px), 64..512.
    positions : int, optional
        Diffuser positions P (default 12 downstream, 10 upstream).
    seed : int
        Seeds diffuser grains, positions, beam profile and noise (deterministic).
    noise : bool
        Poisson photon noise + Gaussian read noise (2 counts); ``False`` gives exact expectations.
    bandwidth : float
        Relative FWHM of the Gaussian spectrum (0 = monochromatic).
    n_energies : int
        Quadrature energies sampling the spectrum (Gauss–Hermite, :func:`energy_samples`).
    n_layers : int
        Grain screens of the diffuser (multi-slice, ``layer_gap_m`` apart: 10 µm downstream, 100 µm up).
    oversample : int, optional
        Fine-grid pixels per detector pixel and axis, 1..6 (default 2 downstream, 4 upstream).
    photons : float, optional
        Mean open-beam photons per detector pixel (default 1e4).
    coherence_in_geometry : bool
        Write the true coherence lengths into the geometry (default ``False``: the retrieval has to
        calibrate them; they are always in ``truth``).
    phantom_seed : int
        Seeds the bead layout (kept apart from *seed* so that seeds change the diffuser and the noise,
        not the object).
    grain_diameter_m : (float, float), optional
        Smallest and largest grain diameter (m); default 0.5–3 µm downstream, 3–8 µm upstream.
    grain_coverage : float, optional
        Grains per layer as the mean number over a point (:func:`grain_layer`); default 2 downstream
        (speckle visibility ≈ 0.17), 1.5 upstream (≈ 0.30).  Larger = a stronger diffuser.
    bubble_porosity : float
        Upstream only: volume fraction of air in unresolved bubbles (2–4 µm diameter) filling the
        berry's core (radius 0.75 R); 0 = no dark-field region.  Default 0.15.
    diffuser_step_px : float, optional
        Diffuser positions as a translation stage gives them: position 0 at a random place, the others
        within ±*diffuser_step_px* detector pixels of it (uniform, sub-pixel), so the frames overlap.
        Default None: positions anywhere on the periodic diffuser (no overlap needed).
    workers : int, optional
        FFT worker threads (default: available cores, at most 4).

    Returns
    -------
    SimulatedScan
        ``data (P, 1, H, W)``, ``reference (P, H, W)``, 8 flats, 4 darks (float32 counts, dark level
        100) and ``truth``: ``phase (1, H, W)`` rad at the mean energy (pixel-averaged projection,
        negative in matter), ``transmission (1, H, W)`` (pixel-averaged ``exp(−2k∫β)``),
        ``sample_mask``, ``displacement (2, 1, H, W)`` px, ``coherence_length_x_m``/``_y_m`` (the
        total Gaussian blur, IPSF σ = x_coh/(2√π), pwf.md §5; the pixel's own area average comes on top),
        ``beam_profile (H, W)``, ``diffuser_shifts_px (P, 2)`` (y, x) detector px (sub-pixel),
        ``intensity_reference``/``intensity_sample`` (noise-free, flat-normalised), the phantom
        (``stick_m``/``berry_m``, ``beads_m``) and ``parameters``.

    Notes
    -----
    No D_eff truth is recorded.  Upstream, the berry's core holds unresolved air bubbles simulated
    wave-optically, so its dark field is emergent; ``truth["scatter_mask"]`` marks the core, but a
    number for D_eff would need a scattering model (geometric optics does not hold for 0.1-rad
    bubbles), which is exactly what the retrievals assume — so none is given.
    """
    from xspeckle.simulate.simulated import SimulatedScan  # the container only (no forward-model code)

    if geometry not in ("downstream", "upstream"):
        raise ParameterError(f"independent simulator: geometry={geometry!r} must be 'downstream' or 'upstream'")
    conf = dict(DOWNSTREAM if geometry == "downstream" else UPSTREAM)
    if grain_diameter_m is not None:
        gd = tuple(float(v) for v in grain_diameter_m)
        if len(gd) != 2 or not 0 < gd[0] <= gd[1] <= 200e-6:
            raise ParameterError(f"independent simulator: grain_diameter_m={grain_diameter_m} must be (min, max) in metres, 0 < min <= max <= 2e-4")
        conf["grain_diameter_m"] = gd
    if grain_coverage is not None:
        if not 0 < float(grain_coverage) <= 50:
            raise ParameterError(f"independent simulator: grain_coverage={grain_coverage} must be within (0, 50]")
        conf["grain_coverage"] = float(grain_coverage)
    n = _check_int("size", size, 64, 512)
    P = _check_int("positions", conf["positions"] if positions is None else positions, 1, 64)
    s = _check_int("oversample", conf["oversample"] if oversample is None else oversample, 1, 6)
    L = _check_int("n_layers", n_layers, 1, 16)
    ne = _check_int("n_energies", n_energies, 1, 15)
    photons = float(conf["photons"] if photons is None else photons)
    if not photons > 0:
        raise ParameterError(f"independent simulator: photons must be > 0, got {photons}")
    w = _workers(workers)
    H = W = n
    p = conf["pixel_size_m"]
    E0 = conf["energy_ev"]
    energies, weights = energy_samples(E0, float(bandwidth), ne)
    gap = conf["layer_gap_m"]
    thick = (L - 1) * gap
    if geometry == "downstream":
        L1, L2 = conf["L1_m"], conf["L2_m"]
        z_first = L1 - thick / 2  # sample → first layer; layers centred on the nominal diffuser plane
        z_last = L2 - thick / 2  # last layer → detector
        z_total = L1 + L2
        d_blur = L2
    else:
        delta, dds = conf["delta_m"], conf["diffuser_sample_m"]
        z_first = 0.0
        z_last = dds - thick / 2  # last layer → sample
        z_total = delta + dds + thick
        d_blur = delta

    # Total blur: IPSF of pwf.md §5 (PWF Eq. 4), a Gaussian of σ = x_coh/(2√π) per axis.  Source part:
    # the source FWHM projected by (object–detector)/(source–object) at the diffuser (van Cittert–Zernike
    # geometry); the detector PSF (scintillator + optics) is the rest, in quadrature.
    sig_tot = np.array([conf["coherence_length_y_m"], conf["coherence_length_x_m"]]) / (2 * math.sqrt(math.pi))
    fw = conf["source_fwhm_m"]
    sig_src = np.array([fw[1], fw[0]]) / (2 * math.sqrt(2 * math.log(2))) * d_blur / conf["source_distance_m"]
    sig_det = np.sqrt(np.maximum(sig_tot**2 - sig_src**2, 0.0))

    lam_max = HC_EV_M / energies.min()
    h = p / s
    spread_m = lam_max * z_total / p  # diffraction reach of the frequency 1/(2h) at h = p/2 (grain detail)
    pad_px = int(math.ceil((1.5 * spread_m + 5 * sig_tot.max()) / p)) + 8
    grid = _Grid((H, W), p, s, pad_px)
    Hf, Wf = grid.shape

    r_dif, r_pos, r_beam, r_noise = [np.random.default_rng(q) for q in np.random.SeedSequence(int(seed)).spawn(4)]
    r_obj = np.random.default_rng(np.random.SeedSequence([int(phantom_seed), 13]))

    # diffuser: L layers of grain thickness (energy independent), shifts of the whole diffuser
    layers = grain_layer((Hf, Wf), h, r_dif, diameter_m=conf["grain_diameter_m"], coverage=conf["grain_coverage"],
                         n_layers=L, workers=w)
    # anti-aliasing: soften the grain edges over σ = h/2 so that the phase step between neighbouring
    # grid points stays resolvable (a sphere's chord has an infinite slope at its rim)
    layers = gaussian_blur(layers, 0.5 * h, 0.5 * h, h, workers=w)
    np.maximum(layers, 0.0, out=layers)
    if diffuser_step_px is None:
        shifts_m = _shifts(P, (Hf * h, Wf * h), 2.0 * conf["grain_diameter_m"][1], r_pos)
    else:
        step = float(diffuser_step_px)
        if not (step > 0 and math.isfinite(step)):
            raise ParameterError(f"independent simulator: diffuser_step_px={diffuser_step_px!r} must be > 0")
        start = np.array([r_pos.uniform(0, Hf * h), r_pos.uniform(0, Wf * h)])
        shifts_m = start[None, :] + np.vstack([np.zeros((1, 2)), r_pos.uniform(-step, step, (P - 1, 2))]) * p
    ramp_minus = _ramps((Hf, Wf), h, shifts_m, +1.0)  # shifts a field by −s
    ramp_plus = np.conj(ramp_minus)  # shifts by +s
    a0 = _beam_amplitude((Hf, Wf), h, r_beam, min_period_m=conf["beam_min_period_m"])
    spec_a0 = sfft.fft2(a0, workers=w)

    # sample thickness per material on the fine grid (area average of 2×2 points per fine pixel)
    yf, xf = grid.axes()
    if geometry == "downstream":
        stick, beads = _stick_and_beads((H, W), p, r_obj)
        thick_fn = lambda yy, xx: _downstream_thickness(yy, xx, stick, beads)  # noqa: E731
    else:
        berry, beads = _berry((H, W), p, r_obj)
        thick_fn = lambda yy, xx: _upstream_thickness(yy, xx, berry, beads)  # noqa: E731
    t_fine = _pixel_average(thick_fn, yf, xf, h, 2)
    t_bub = None
    if not 0 <= float(bubble_porosity) <= 0.4:
        raise ParameterError(f"independent simulator: bubble_porosity={bubble_porosity} must be within 0..0.4")
    if geometry == "upstream" and bubble_porosity > 0:
        # Unresolved scatterers: air bubbles (2–4 µm, sub-pixel at 5.8 µm) in the berry's core (radius
        # 0.75 R).  Their column number is proportional to the chord through the core (Poisson thinning),
        # with the mean air column = porosity × chord; the air replaces water (phase +kδ_w·t_bubble).
        # The wave carries them on the fine grid, so the dark field at the detector is emergent.
        core = 0.75 * berry[3]

        def keep(fy, fx):
            yy = (fy - grid.offset[0] - (H * s - 1) / 2) * h
            xx = (fx - grid.offset[1] - (W * s - 1) / 2) * h
            return sphere_chord(yy, xx, berry[1], berry[2], core) / (2 * core)

        radii = np.geomspace(1e-6, 2e-6, 8)  # grain_layer's sizes for diameters 2–4 µm
        per_bubble = float(np.mean(4 / 3 * radii))  # mean air column per unit coverage (sphere volume / area)
        bubble_coverage = bubble_porosity * 2 * core / per_bubble  # on the central ray
        t_bub = grain_layer((Hf, Wf), h, r_obj, diameter_m=(2e-6, 4e-6), coverage=bubble_coverage, keep=keep,
                            workers=w)[0]
        t_bub = np.minimum(t_bub, 0.5 * t_fine["water"])  # never more air than half the water column
        t_fine["water"] = t_fine["water"] - t_bub

    I_ref = np.zeros((P, Hf, Wf), np.float32)
    I_smp = np.zeros((P, Hf, Wf), np.float32)
    I_flat = np.zeros((Hf, Wf), np.float32)

    def fft(a):
        return sfft.fft2(a, workers=w, overwrite_x=True)

    def ifft(a):
        return sfft.ifft2(a, workers=w, overwrite_x=True)

    def add_intensity(acc, field, weight):
        sq = np.square(field.real)
        sq += np.square(field.imag)
        sq *= np.float32(weight)
        acc += sq

    for E, wt in zip(energies, weights):
        lam = HC_EV_M / E
        k = 2 * math.pi / lam
        d_al, b_al = refractive_index("alumina", E)
        # layer transmission exp(−k(β + iδ)t): amplitude exp(−kβt), phase −kδt (projection approximation)
        screens = [np.exp((-k * t) * np.complex64(b_al + 1j * d_al)).astype(np.complex64) for t in layers]
        log_obj = np.zeros((Hf, Wf), np.complex128)
        for mat, t in t_fine.items():
            d_m, b_m = refractive_index(mat, E)
            log_obj += (-k * t) * (b_m + 1j * d_m)
        obj = np.exp(log_obj).astype(np.complex64)
        H_gap = angular_spectrum_transfer((Hf, Wf), h, lam, gap)
        H_last = angular_spectrum_transfer((Hf, Wf), h, lam, z_last)

        def through_diffuser(spec_in):
            """Spectra (P, ...) of the field just before the first layer → field after the last layer's
            propagation by z_last, for every diffuser position (shift trick: diffuser shifted by s ≡
            input shifted by −s, unshifted diffuser, output shifted by +s; exact on the periodic grid)."""
            f = ifft(np.multiply(spec_in[None], ramp_minus))
            for j in range(L):
                f *= screens[j]
                if j < L - 1:  # multi-slice: free space between layers
                    f = fft(f)
                    f *= H_gap
                    f = ifft(f)
            g = fft(f)
            g *= H_last
            g *= ramp_plus
            return g  # spectrum after z_last

        if geometry == "downstream":
            H_first = angular_spectrum_transfer((Hf, Wf), h, lam, z_first)
            H_flat = angular_spectrum_transfer((Hf, Wf), h, lam, z_total)
            add_intensity(I_flat, ifft(spec_a0 * H_flat), wt)
            add_intensity(I_ref, ifft(through_diffuser(spec_a0 * H_first)), wt)
            spec_obj = sfft.fft2(a0 * obj, workers=w) * H_first
            add_intensity(I_smp, ifft(through_diffuser(spec_obj)), wt)
        else:
            H_delta = angular_spectrum_transfer((Hf, Wf), h, lam, delta)
            H_flat = angular_spectrum_transfer((Hf, Wf), h, lam, z_total)
            add_intensity(I_flat, ifft(spec_a0 * H_flat), wt)
            g = through_diffuser(spec_a0)  # at the sample plane (spectrum)
            add_intensity(I_ref, ifft(g * H_delta), wt)
            u = ifft(g)
            u *= obj
            add_intensity(I_smp, ifft(fft(u) * H_delta), wt)

    # detector: source blur ⊗ detector PSF (Gaussian product), then the pixel area average
    def detect(a):
        return grid.crop_bin(gaussian_blur(a, float(sig_tot[0]), float(sig_tot[1]), h, workers=w))

    ref_I, smp_I, flat_I = detect(I_ref), detect(I_smp), detect(I_flat)

    # counts = Poisson(photons · I) + dark + N(0, read²)  (I already carries the beam profile)
    dark_level, read_noise, n_flat, n_dark = 100.0, 2.0, 8, 4

    def expose(mean_I):
        mean = np.maximum(np.asarray(mean_I, np.float64) * photons, 0.0)
        if noise:
            c = r_noise.poisson(mean).astype(np.float64)
            c += dark_level + read_noise * r_noise.standard_normal(c.shape)
        else:
            c = mean + dark_level
        return c.astype(np.float32)

    reference = expose(ref_I)
    data = expose(smp_I)[:, None]
    flat = expose(np.broadcast_to(flat_I, (n_flat, H, W)))
    dark = expose(np.zeros((n_dark, H, W)))

    # truth at the mean energy, pixel-averaged (4 × 4 points per detector pixel)
    k0 = 2 * math.pi * E0 / HC_EV_M
    yd = (np.arange(H) - (H - 1) / 2) * p
    xd = (np.arange(W) - (W - 1) / 2) * p
    phase = np.zeros((H, W))
    att = np.zeros((H, W))
    sub = _sub_offsets(4) * p
    any_t = np.zeros((H, W), bool)
    for dy in sub:
        for dx in sub:
            tt = thick_fn(yd[:, None] + dy, xd[None, :] + dx)
            ph = np.zeros((H, W))
            mu = np.zeros((H, W))
            for mat, t in tt.items():
                d_m, b_m = refractive_index(mat, E0)
                ph += -k0 * d_m * t  # φ = −k∫δ dz (interfaces.md)
                mu += 2 * k0 * b_m * t  # T = exp(−2k∫β dz)
                any_t |= t > 0
            phase += ph
            att += np.exp(-mu)
    phase /= 16
    trans = att / 16
    if t_bub is not None:  # the bubbles' pixel-averaged (resolved) part: less water in the column
        d_w, b_w = refractive_index("water", E0)
        tb = grid.crop_bin(t_bub).astype(np.float64)
        phase += k0 * d_w * tb
        trans *= np.exp(2 * k0 * b_w * tb)
    nw = max(1, int(round(0.05 * W)))
    if any_t[:, :nw].any() or any_t[:, -nw:].any():  # pragma: no cover (layout guarantees it)
        raise ParameterError("independent simulator: the sample reaches the 5 % side wings")
    gy, gx = np.gradient(phase, p)
    disp = np.stack([gx, gy]) * (d_blur / (k0 * p))  # u_px = d ∇φ / (k p), d = L2 or Δ (design.md)

    flat_mean = flat_I.astype(np.float64)
    geom = Geometry(energy_ev=E0, pixel_size_m=p,
                    sample_detector_distance_m=(L1 + L2) if geometry == "downstream" else delta,
                    diffuser_position=geometry,
                    diffuser_detector_distance_m=L2 if geometry == "downstream" else delta + dds,
                    coherence_length_x_m=conf["coherence_length_x_m"] if coherence_in_geometry else None,
                    coherence_length_y_m=conf["coherence_length_y_m"] if coherence_in_geometry else None)
    name = "indep-beads" if geometry == "downstream" else "indep-upstream"
    truth = dict(
        phase=phase[None].astype(np.float32), transmission=trans[None].astype(np.float32),
        sample_mask=any_t[None], displacement=disp[:, None].astype(np.float32),
        coherence_length_x_m=float(conf["coherence_length_x_m"]), coherence_length_y_m=float(conf["coherence_length_y_m"]),
        beam_profile=flat_I.astype(np.float32), diffuser_shifts_px=(shifts_m / p).astype(np.float32),
        intensity_reference=(ref_I / flat_mean).astype(np.float32),
        intensity_sample=(smp_I / flat_mean)[:, None].astype(np.float32),
        beads_m=[list(map(float, b)) for b in beads],
    )
    if geometry == "downstream":
        truth["stick_m"] = [float(stick[0]), float(stick[1])]
    else:
        truth["berry_m"] = [float(v) for v in berry]
        if t_bub is not None:
            yy, xx = yd[:, None], xd[None, :]
            truth["scatter_mask"] = (sphere_chord(yy, xx, berry[1], berry[2], 0.75 * berry[3]) > 0)[None]
            truth["bubble_diameter_m"] = [2e-6, 4e-6]
            truth["bubble_porosity"] = float(bubble_porosity)
    mats = {m: refractive_index(m, E0) for m in ({"alumina"} | set(t_fine))}
    truth["parameters"] = dict(
        preset=name, simulator="xspeckle.simulate.independent", seed=int(seed), phantom_seed=int(phantom_seed),
        noise=bool(noise), photons_per_pixel=photons, dark_level=dark_level, read_noise=read_noise,
        energies_ev=[float(e) for e in energies], energy_weights=[float(v) for v in weights],
        bandwidth_fwhm=float(bandwidth), beta_energy_exponent=-4, delta_energy_exponent=-2,
        n_layers=L, layer_gap_m=gap, grain_diameter_m=list(conf["grain_diameter_m"]),
        grain_coverage=conf["grain_coverage"], diffuser_material="alumina",
        delta_beta_at_mean_energy={m: list(v) for m, v in mats.items()},
        oversample=s, pad_px=pad_px, fine_grid_shape=[Hf, Wf],
        blur_sigma_total_m=[float(v) for v in sig_tot[::-1]], blur_sigma_source_m=[float(v) for v in sig_src[::-1]],
        blur_sigma_detector_m=[float(v) for v in sig_det[::-1]],
        coherence_in_geometry=bool(coherence_in_geometry),
        phase_min_rad=float(phase.min()),
    )
    if geometry == "downstream":
        truth["parameters"].update(L1_m=L1, L2_m=L2, diffuser_first_layer_from_sample_m=z_first,
                                   diffuser_last_layer_to_detector_m=z_last)
    else:
        truth["parameters"].update(diffuser_sample_distance_m=dds, sample_detector_distance_m=delta,
                                   diffuser_last_layer_to_sample_m=z_last)
    return SimulatedScan(data=data, reference=reference, flat=flat, dark=dark, theta_deg=np.zeros(1),
                         geometry=geom, truth=truth, name=name)
