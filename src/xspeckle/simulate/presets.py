"""Ready-made simulated scans with ground truth (``make_preset``) and their HDF5 output.

Every preset is a full wave-optical simulation (forward.py) followed by a detector model
(detector.py): ``counts = Poisson(photons · beam_profile · I) + dark_level + read noise``.
Frames are **float32 counts** (integers plus a fractional dark/read-noise part, never clipped);
``noise=False`` gives the exact expectation ``photons · profile · I + dark_level`` so that
:meth:`SimulatedScan.normalised` returns the noise-free intensities.  Flat fields (beam, no diffuser,
no sample) and dark frames are always included.

Ground truth (``SimulatedScan.truth``) is evaluated analytically at the detector pixels
(pixel-averaged projections): see :data:`PRESETS` and each builder's docstring.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from xspeckle.errors import ParameterError
from xspeckle.geometry import Geometry, wavelength_from_energy
from xspeckle.io.scan import write_scan
from xspeckle.simulate.darkfield import diffusion_tensor_from_orientation
from xspeckle.simulate.detector import beam_profile, expose
from xspeckle.simulate.diffuser import random_diffuser
from xspeckle.simulate.forward import Grid, simulate_downstream, simulate_upstream
from xspeckle.simulate.phantoms import Cylinder, Phantom, Sphere
from xspeckle.simulate.simulated import SimulatedScan

__all__ = ["SimulatedScan", "PRESETS", "make_preset", "write_simulated", "simulate_preset", "MATERIALS", "pwf_beads_phantom"]

#: Refractive-index decrements used by the presets (electron-density δ, tabulated μ/ρ for β = μλ/4π).
#: Soda-lime glass 2.5 g/cm³ at 10 keV: pwf.md §8; PMMA 1.18 g/cm³ (n_e = 3.83e29 m⁻³, μ/ρ 3.26 cm²/g)
#: at 10 keV; water at 17 keV (n_e = 3.34e29 m⁻³, μ/ρ ≈ 1.1 cm²/g).  δ = r_e λ² n_e / 2π.
MATERIALS = {
    "glass@10keV": (5.16e-6, 5.6e-8),
    "pmma@10keV": (2.64e-6, 3.8e-9),
    "water@17keV": (7.97e-7, 6.4e-10),
}

PRESETS: dict[str, str] = {
    "pwf-beads": "downstream diffuser (PWF paper geometry: 10 keV, 650 nm px, L1 = 3 mm, L2 = 20 mm, "
    "x/y_coh = 3.48/4.31 um), glass beads with peak phase ~19 rad at 256 px, 12 positions, 1 angle",
    "mist-berry": "upstream sandpaper (MIST geometry: 17 keV, 5.8 um px, Delta = 1 m, diffuser 0.5 m upstream), "
    "water berry with a scattering interior (isotropic D_eff), 10 positions, 1 angle",
    "mist-fibres": "upstream, three anisotropic scattering patches (major axis at 0, 45, 90 deg) with known "
    "diffusion tensor, 10 positions, 1 angle",
    "tomo-beads": "downstream (PWF) geometry, 3-D glass beads around a PMMA rod, 90 angles over [0, 180), "
    "2 positions, delta/beta volumes (Z, Y, X; y up as tomo.fbp) as truth",
    "tracking-shift": "upstream, smooth weak-absorbing phase object whose refraction shifts the speckle by up "
    "to 2 px (truth displacement), 16 positions, 1 angle",
    "indep-beads": "independent simulator (simulate/independent.py: exact propagation, 4-layer alumina diffuser, "
    "2 % bandwidth, 2x grid binned), PWF geometry, glass beads on a wooden stick, 12 positions, 1 angle",
    "indep-upstream": "independent simulator, MIST geometry (17 keV, 5.8 um px), thick diffuser upstream of a "
    "water berry with glass beads, 10 positions, 1 angle",
}


def _rngs(seed: int, n: int):
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(n)]


def _diffuser_shifts(n: int, grid_shape, min_sep_px: int, rng) -> np.ndarray:
    """Random lateral diffuser offsets (fine px), pairwise apart by > *min_sep_px* along some axis."""
    out: list[tuple[int, int]] = []
    for _ in range(100 * n):
        cand = (int(rng.integers(0, grid_shape[0])), int(rng.integers(0, grid_shape[1])))
        ok = True
        for q in out:
            dy = min(abs(cand[0] - q[0]), grid_shape[0] - abs(cand[0] - q[0]))
            dx = min(abs(cand[1] - q[1]), grid_shape[1] - abs(cand[1] - q[1]))
            if max(dy, dx) <= min_sep_px:
                ok = False
                break
        if ok:
            out.append(cand)
            if len(out) == n:
                break
    if len(out) < n:
        raise ParameterError(f"simulate: cannot place {n} distinct diffuser positions on a grid of {grid_shape}")
    return np.array(out, dtype=np.int64)


def _pad_px(wavelength_m: float, distance_m: float, h: float, p: float, extra_px: float = 0.0) -> int:
    """Padding (detector px) that keeps FFT wrap-around out of the field of view.

    The Fresnel kernel spreads a fine-grid feature over ``λz/(2h)`` (the diffraction angle at the grid
    Nyquist frequency times z); we pad 1.5× that plus a margin for refraction and blurs.
    """
    spread = wavelength_m * distance_m / (2 * h) / p
    return int(math.ceil(1.5 * spread + extra_px + 8))


def _check_size(size, default: int) -> tuple[int, int]:
    n = default if size is None else int(size)
    if n < 32 or n > 4096:
        raise ParameterError(f"simulate: size={size} px is outside 32..4096; give the detector width in pixels")
    return n, n


def _check_count(name: str, value, default: int, lo: int = 1, hi: int = 4096) -> int:
    n = default if value is None else int(value)
    if not lo <= n <= hi:
        raise ParameterError(f"simulate: {name}={value} is outside {lo}..{hi}")
    return n


def _theta(n_angles: int) -> np.ndarray:
    return np.arange(n_angles, dtype=np.float64) * (180.0 / n_angles)


def _expose_all(ref_I, data_I, rng, *, photons, noise, n_flat=8, n_dark=4, dark_level=100.0, read_noise=2.0):
    """Detector counts for references, samples, flats and darks with one beam profile."""
    shape = ref_I.shape[-2:]
    prof = beam_profile(shape, rng)
    ones = np.ones((n_flat,) + tuple(shape), dtype=np.float32)
    kw = dict(noise=noise, read_noise=read_noise)
    ref = expose(ref_I, photons, prof, dark_level, rng, **kw)
    data = expose(data_I, photons, prof, dark_level, rng, **kw)
    flat = expose(ones, photons, prof, dark_level, rng, **kw)
    dark = expose(np.zeros((n_dark,) + tuple(shape), np.float32), photons, prof, dark_level, rng, **kw)
    return ref, data, flat, dark, prof


def _projection_truth(phantom: Phantom, thetas, det_shape, p, k, supersample=3):
    """phase, transmission, D_eff and mask at the detector pixels for each angle."""
    ph, tr, dif, mask = [], [], [], []
    for th in thetas:
        pr = phantom.project(th, det_shape, p, supersample=supersample)
        ph.append(-k * pr["delta"])  # φ = −k∫δ dz (interfaces.md)
        tr.append(np.exp(-2 * k * pr["beta"]))  # T = exp(−2k∫β dz)
        dif.append(pr["diffusion"])
        mask.append(pr["thickness"] > 0)
    f = lambda a, dt=np.float32: np.stack(a).astype(dt)  # noqa: E731
    return f(ph), f(tr), f(dif), f(mask, bool)


def _phantom_fields(phantom: Phantom, thetas, grid: Grid, k, supersample=2):
    """Per-angle complex transmission ``exp(−k∫β + iφ)`` and D_eff map on the fine grid."""
    off = grid.centre_offset_px()
    for th in thetas:
        pr = phantom.project(th, grid.shape, grid.h, supersample=supersample, offset_px=off)
        # exit wave exp(−k∫β dz − i k∫δ dz): amplitude exp(−k∫β), phase φ = −k∫δ
        trans = np.exp(-k * pr["beta"] - 1j * k * pr["delta"]).astype(np.complex64)
        D = pr["diffusion"].astype(np.float32) if np.any(pr["diffusion"]) else None
        yield trans, D


def _displacement_from_phase(phase, pixel_size_m: float, distance_m: float, k: float) -> np.ndarray:
    """Speckle displacement ``(2, A, H, W)`` px = (x, y): ``u = d ∇φ / (k p)`` (design.md), with ∇φ by
    central differences of the pixel-averaged truth phase (approximate at sharp edges)."""
    gy, gx = np.gradient(phase.astype(np.float64), pixel_size_m, axis=(-2, -1))
    return (np.stack([gx, gy]) * (distance_m / (k * pixel_size_m))).astype(np.float32)


def _wing_check(mask: np.ndarray, name: str):
    w = mask.shape[-1]
    nw = max(1, int(round(0.05 * w)))
    if mask[..., :nw].any() or mask[..., -nw:].any():
        raise ParameterError(f"simulate {name}: the sample reaches the 5 % side wings; use a larger size")


# ---------------------------------------------------------------------------------------- PWF geometry
_PWF = dict(energy_ev=10000.0, pixel_size_m=650e-9, L1=3e-3, L2=20e-3, xcoh=3.48e-6, ycoh=4.31e-6,
            grain=2.5e-6, phase_rms=1.75, absorption=0.02, photons=1e4)


def _reference_shifts(shifts, drift_px, oversample: int):
    """Diffuser shifts (fine px) for the reference stack such that the sample stack's speckle is moved by
    *drift_px* (detector px, (2,) or (P, 2)) relative to it: the reference is taken at ``shifts - drift``, the
    sample frames at the nominal *shifts* (so a drift-free scan of the same seed has the same sample frames)."""
    if drift_px is None:
        return None, None
    d = np.broadcast_to(np.asarray(drift_px, dtype=np.float64), (len(shifts), 2)).copy()
    if not np.isfinite(d).all() or np.abs(d).max() > 16:
        raise ParameterError("simulate: drift_px must be finite (dy, dx) pairs within 16 px")
    return shifts - d * oversample, d


def _pwf_run(name, phantom: Phantom, det_shape, thetas, n_pos, seed, noise, extra_truth: dict, photons=None,
             drift_px=None):
    c = _PWF
    geom = Geometry(energy_ev=c["energy_ev"], pixel_size_m=c["pixel_size_m"], sample_detector_distance_m=c["L1"] + c["L2"],
                    diffuser_position="downstream", diffuser_detector_distance_m=c["L2"])
    lam, k, p = geom.wavelength_m, geom.wavenumber_per_m, geom.pixel_size_m
    grid = Grid(det_shape, p, oversample=1, pad_px=_pad_px(lam, c["L1"] + c["L2"], p, p, extra_px=8))
    r_dif, r_shift, r_det = _rngs(seed, 3)
    diff = random_diffuser(grid.shape, grid.h, grain_size_m=c["grain"], phase_rms_rad=c["phase_rms"],
                           absorption=c["absorption"], rng=r_dif)
    shifts = _diffuser_shifts(n_pos, grid.shape, int(4 * c["grain"] / grid.h), r_shift)
    r_shifts, drift = _reference_shifts(shifts, drift_px, 1)
    ref_I, dat_I = simulate_downstream(grid, lam, diff, shifts, sample_diffuser_distance_m=c["L1"],
                                       diffuser_detector_distance_m=c["L2"],
                                       samples=(t for t, _ in _phantom_fields(phantom, thetas, grid, k)),
                                       coherence=(c["xcoh"], c["ycoh"]), reference_shifts=r_shifts)
    photons = c["photons"] if photons is None else photons
    ref, data, flat, dark, prof = _expose_all(ref_I, dat_I, r_det, photons=photons, noise=noise)
    phase, trans, _, mask = _projection_truth(phantom, thetas, det_shape, p, k)
    _wing_check(mask, name)
    (oy, ox), (H, W) = grid.offset, det_shape
    dt = np.stack([np.roll(diff, tuple(s), axis=(0, 1))[oy : oy + H, ox : ox + W] for s in shifts])
    truth = dict(phase=phase, transmission=trans, sample_mask=mask, beam_profile=prof,
                 displacement=_displacement_from_phase(phase, p, c["L2"], k),
                 coherence_length_x_m=c["xcoh"], coherence_length_y_m=c["ycoh"],
                 diffuser_transmission=dt.astype(np.complex64), diffuser_shifts_px=shifts,
                 intensity_reference=ref_I, intensity_sample=dat_I)
    if drift is not None:
        truth["drift_px"] = drift.astype(np.float32)  # (P, 2) (dy, dx): sample-stack speckle shift
    truth.update(extra_truth)
    truth["parameters"] = dict(preset=name, seed=int(seed), noise=bool(noise), photons_per_pixel=float(photons),
                               dark_level=100.0, diffuser_grain_size_m=c["grain"], diffuser_phase_rms_rad=c["phase_rms"],
                               diffuser_absorption_beta_over_delta=c["absorption"], pad_px=grid.pad_px, oversample=1,
                               L1_m=c["L1"], L2_m=c["L2"])
    return SimulatedScan(data=data, reference=ref, flat=flat, dark=dark, theta_deg=np.asarray(thetas, np.float64),
                         geometry=geom, truth=truth, name=name)


def pwf_beads_phantom(width_px: int) -> Phantom:
    """The glass-bead phantom of ``pwf-beads`` for a detector *width_px* wide (PWF pixel 650 nm).

    Coordinates scale with ``f = 650 nm·min(W, 256)/2`` (half the default field of view), so the largest
    bead has radius 0.433 f (36 µm, peak phase ≈ −18.8 rad at W ≥ 256; −9.4 rad at 128 px).  All material
    lies within 0.80 f of the rotation axis, so the 5 % side wings stay free at every angle.
    """
    f = _PWF["pixel_size_m"] * min(width_px, 256) / 2
    d, b = MATERIALS["glass@10keV"]
    beads = [  # (z, y, x, R) in units of f
        (-0.12, 0.0, -0.36, 0.433),
        (0.42, 0.24, 0.42, 0.217),
        (-0.54, -0.12, 0.54, 0.12),
        (0.60, -0.36, -0.48, 0.084),
    ]
    return Phantom(spheres=[Sphere((z * f, y * f, x * f), r * f, d, b) for z, y, x, r in beads])


def _pwf_beads(*, seed, size, angles, positions, noise=True, photons=None, drift_px=None):
    """Glass beads (δ 5.16e-6, β 5.6e-8) in the PWF geometry (:func:`pwf_beads_phantom`)."""
    H, W = _check_size(size, 256)
    A = _check_count("angles", angles, 1)
    P = _check_count("positions", positions, 12)
    return _pwf_run("pwf-beads", pwf_beads_phantom(W), (H, W), _theta(A), P, seed, noise, {}, photons, drift_px)


def _tomo_beads(*, seed, size, angles, positions, noise=True, photons=None):
    """Glass beads around a vertical PMMA rod; truth δ/β volumes ``(Z, Y, X) = (H, W, W)`` at voxel = pixel."""
    H, W = _check_size(size, 128)
    A = _check_count("angles", angles, 90)
    P = _check_count("positions", positions, 2)
    p = _PWF["pixel_size_m"]
    a = p * W / 2
    dg, bg = MATERIALS["glass@10keV"]
    dp, bp = MATERIALS["pmma@10keV"]
    beads = [  # (z, y, x, R) in units of the half field of view a; all within 0.77 a of the axis
        (-0.45, 0.50, 0.10, 0.25),
        (0.30, -0.30, -0.45, 0.18),
        (0.55, 0.40, 0.45, 0.12),
        (-0.20, -0.50, 0.35, 0.10),
        (0.05, 0.10, -0.55, 0.08),
    ]
    ph = Phantom(spheres=[Sphere((z * a, y * a, x * a), r * a, dg, bg) for z, y, x, r in beads],
                 cylinders=[Cylinder((0.0, 0.0), 0.2 * a, dp, bp)])
    vol = ph.voxelise((H, W, W), p, supersample=2)
    extra = dict(delta=vol["delta"], beta=vol["beta"], voxel_size_m=p, rotation_center_px=(W - 1) / 2)
    return _pwf_run("tomo-beads", ph, (H, W), _theta(A), P, seed, noise, extra, photons)


# ---------------------------------------------------------------------------------------- upstream geometry
_MIST = dict(energy_ev=17000.0, pixel_size_m=5.8e-6, delta=1.0, d_ds=0.5, oversample=2,
             grain=20e-6, phase_rms=1.0, absorption=0.01, xcoh=6e-6, ycoh=4e-6, photons=1e4)


def _upstream_run(name, det_shape, thetas, n_pos, seed, noise, conf, sample_fn, truth_fn, photons=None, drift_px=None):
    """Run the upstream model. *sample_fn(grid, k)* yields (transmission, D) per angle (fine grid);
    *truth_fn(grid, k)* returns the truth dict at the detector."""
    c = conf
    geom = Geometry(energy_ev=c["energy_ev"], pixel_size_m=c["pixel_size_m"], sample_detector_distance_m=c["delta"],
                    diffuser_position="upstream", diffuser_detector_distance_m=c["delta"] + c["d_ds"])
    lam, k, p = geom.wavelength_m, geom.wavenumber_per_m, geom.pixel_size_m
    s = int(c["oversample"])
    grid = Grid(det_shape, p, oversample=s, pad_px=_pad_px(lam, c["delta"] + c["d_ds"], p / s, p, extra_px=c.get("extra_pad", 4)))
    r_dif, r_shift, r_det = _rngs(seed, 3)
    diff = random_diffuser(grid.shape, grid.h, grain_size_m=c["grain"], phase_rms_rad=c["phase_rms"],
                           absorption=c["absorption"], rng=r_dif)
    shifts = _diffuser_shifts(n_pos, grid.shape, int(4 * c["grain"] / grid.h), r_shift)
    r_shifts, drift = _reference_shifts(shifts, drift_px, s)
    ref_I, dat_I = simulate_upstream(grid, lam, diff, shifts, diffuser_sample_distance_m=c["d_ds"],
                                     sample_detector_distance_m=c["delta"], samples=sample_fn(grid, k),
                                     coherence=(c["xcoh"], c["ycoh"]), reference_shifts=r_shifts)
    photons = c["photons"] if photons is None else photons
    ref, data, flat, dark, prof = _expose_all(ref_I, dat_I, r_det, photons=photons, noise=noise)
    truth = truth_fn(grid, k)
    if "displacement" not in truth:
        truth["displacement"] = _displacement_from_phase(truth["phase"], p, c["delta"], k)
    truth.update(beam_profile=prof, coherence_length_x_m=c["xcoh"], coherence_length_y_m=c["ycoh"],
                 diffuser_shifts_px=shifts, intensity_reference=ref_I, intensity_sample=dat_I)
    if drift is not None:
        truth["drift_px"] = drift.astype(np.float32)  # (P, 2) (dy, dx): sample-stack speckle shift
    truth["parameters"] = dict(preset=name, seed=int(seed), noise=bool(noise), photons_per_pixel=float(photons),
                               dark_level=100.0, diffuser_grain_size_m=c["grain"], diffuser_phase_rms_rad=c["phase_rms"],
                               diffuser_absorption_beta_over_delta=c["absorption"], pad_px=grid.pad_px, oversample=s,
                               diffuser_sample_distance_m=c["d_ds"])
    return SimulatedScan(data=data, reference=ref, flat=flat, dark=dark, theta_deg=np.asarray(thetas, np.float64),
                         geometry=geom, truth=truth, name=name)


#: Peak D_eff (m) of the berry's scattering core and of the fibre patches' major axis.
BERRY_D_PEAK_M = 5.0e-12
FIBRE_D_MAJOR_M = 8.0e-12
FIBRE_ANISOTROPY = 4.0  # d_major / d_minor


def _mist_berry(*, seed, size, angles, positions, noise=True, photons=None, drift_px=None):
    """Water berry (radius 0.3·FOV, slightly off-axis) with a concentric scattering core of radius 0.75 R.

    The core's diffusion density is set so that the peak D_eff (through the centre) is
    ``BERRY_D_PEAK_M`` = 5e-12 m: Δ·D_eff/p² ≈ 0.15 (blur σ = sqrt(2ΔD) ≈ 0.55 px) and
    Δ·D_eff·∇²I_R/I_R has an RMS of ≈ 3.5 % in the core (noise: 1 %).
    """
    H, W = _check_size(size, 256)
    A = _check_count("angles", angles, 1)
    P = _check_count("positions", positions, 10)
    c = dict(_MIST)
    p = c["pixel_size_m"]
    fov = W * p
    R = 0.3 * fov
    dw, bw = MATERIALS["water@17keV"]
    core = 0.75 * R
    dens = BERRY_D_PEAK_M / (2 * core)  # D_eff = density × chord; peak chord 2·core
    ph = Phantom(spheres=[Sphere((0.0, 0.0, 0.04 * fov), R, dw, bw), Sphere((0.0, 0.0, 0.04 * fov), core, diffusion=dens)])
    th = _theta(A)

    def truth_fn(grid, k):
        phase, trans, dif, mask = _projection_truth(ph, th, (H, W), p, k)
        return dict(phase=phase, transmission=trans, diffusion=dif, sample_mask=mask,
                    berry_radius_m=R, core_radius_m=core, diffusion_density=dens)

    return _upstream_run("mist-berry", (H, W), th, P, seed, noise, c, lambda g, k: _phantom_fields(ph, th, g, k), truth_fn,
                         photons, drift_px)


def _smooth_box(y, x, cy, cx, half, edge):
    """Smooth rectangle indicator: product of logistic edges (width *edge*, metres)."""
    sx = 1 / (1 + np.exp((np.abs(x - cx) - half[1]) / edge))
    sy = 1 / (1 + np.exp((np.abs(y - cy) - half[0]) / edge))
    return sy * sx


def _mist_fibres(*, seed, size, angles, positions, noise=True, photons=None):
    """Three square patches of aligned fibres: major scattering axis at 0°, 45°, 90° (from +x towards +y).

    Each patch: D = m(r)·R diag(d_major, d_minor) Rᵀ with d_major = 8e-12 m, d_minor = d_major/4, m a
    smooth box (logistic edges of width 1.5 px); a weak slab phase −1.5·m rad and transmission
    ``exp(−0.05 m)``.
    """
    H, W = _check_size(size, 256)
    A = _check_count("angles", angles, 1, hi=1)
    P = _check_count("positions", positions, 10)
    c = dict(_MIST)
    p = c["pixel_size_m"]
    fov = np.array([H * p, W * p])
    patches = [  # (cy, cx) in units of the FOV, orientation (deg)
        ((-0.2, -0.25), 0.0),
        ((0.22, 0.0), 45.0),
        ((-0.2, 0.25), 90.0),
    ]
    half = 0.13 * fov
    edge = 1.5 * p
    phi0, mu0 = 1.5, 0.05

    def fields_on(y, x):
        dxx = np.zeros(np.broadcast_shapes(y.shape, x.shape))
        dyy, dxy, m_all = np.zeros_like(dxx), np.zeros_like(dxx), np.zeros_like(dxx)
        for (cy, cx), ang in patches:
            m = _smooth_box(y, x, cy * fov[0], cx * fov[1], half, edge)
            txx, tyy, txy = diffusion_tensor_from_orientation(FIBRE_D_MAJOR_M, FIBRE_D_MAJOR_M / FIBRE_ANISOTROPY, np.deg2rad(ang))
            dxx += m * txx
            dyy += m * tyy
            dxy += m * txy
            m_all += m
        return np.stack([dxx, dyy, dxy]), m_all

    def sample_fn(grid, k):
        y, x = grid.fine_coordinates()
        D, m = fields_on(y, x)
        trans = np.exp(-mu0 * m / 2 - 1j * phi0 * m).astype(np.complex64)  # amplitude = sqrt(T), phase −φ0·m
        yield trans, D.astype(np.float32)

    def truth_fn(grid, k):
        # pixel averages of the fine-grid maps (what the simulation used)
        y, x = grid.fine_coordinates()
        D, m = fields_on(y, x)
        D = grid.crop_bin(D)
        m = grid.crop_bin(m)
        return dict(phase=(-phi0 * m)[None].astype(np.float32), transmission=np.exp(-mu0 * m)[None].astype(np.float32),
                    diffusion_tensor=D[:, None].astype(np.float32),
                    diffusion=(0.5 * (D[0] + D[1]))[None].astype(np.float32),
                    sample_mask=(m > 0.5)[None], patch_orientation_deg=[a for _, a in patches],
                    patch_centres_px=[[cy * H + (H - 1) / 2, cx * W + (W - 1) / 2] for (cy, cx), _ in patches],
                    d_major_m=FIBRE_D_MAJOR_M, d_minor_m=FIBRE_D_MAJOR_M / FIBRE_ANISOTROPY)

    return _upstream_run("mist-fibres", (H, W), np.zeros(A), P, seed, noise, c, sample_fn, truth_fn, photons)


_TRACK = dict(energy_ev=20000.0, pixel_size_m=1.5e-6, delta=0.5, d_ds=0.5, oversample=1,
              grain=5e-6, phase_rms=0.4, absorption=0.01, xcoh=3e-6, ycoh=3e-6, photons=1e4, extra_pad=6)
TRACK_MAX_SHIFT_PX = 2.0


def _tracking_shift(*, seed, size, angles, positions, noise=True, photons=None, drift_px=None):
    """Smooth phase φ = Σ a_i exp(−|r−r_i|²/2σ_i²) scaled so that max |u| = 2 px, with
    ``u_px = Δ ∇φ / (k p)`` (design.md) and weak absorption ``T = exp(0.01 φ)`` (β/δ = 0.005)."""
    H, W = _check_size(size, 256)
    A = _check_count("angles", angles, 1, hi=1)
    P = _check_count("positions", positions, 16)
    c = dict(_TRACK)
    p = c["pixel_size_m"]
    L = 256 * p  # bump layout fixed in metres (384 µm), so the physics does not depend on size
    bumps = [  # (cy, cx, sigma, amplitude) in units of L; relative amplitudes, all < 0 (matter: φ ≤ 0, T ≤ 1)
        (-0.15, -0.15, 0.12, -1.0),
        (0.16, 0.12, 0.11, -0.7),
        (0.12, -0.2, 0.10, -0.4),
        (-0.18, 0.2, 0.10, -0.6),
    ]

    def phase_and_grad(y, x):
        ph = np.zeros(np.broadcast_shapes(y.shape, x.shape))
        gy, gx = np.zeros_like(ph), np.zeros_like(ph)
        for cy, cx, sg, amp in bumps:
            dy, dx, s2 = y - cy * L, x - cx * L, (sg * L) ** 2
            g = amp * np.exp(-(dy * dy + dx * dx) / (2 * s2))
            ph += g
            gy += -dy / s2 * g  # ∂/∂y of the Gaussian bump
            gx += -dx / s2 * g
        return ph, gy, gx

    geom_k = 2 * np.pi / wavelength_from_energy(c["energy_ev"])
    # scale: u_px = Δ |∇φ| / (k p) ≤ TRACK_MAX_SHIFT_PX over the detector (design.md displacement relation)
    yd = ((np.arange(H) - (H - 1) / 2) * p)[:, None]
    xd = ((np.arange(W) - (W - 1) / 2) * p)[None, :]
    _, gy0, gx0 = phase_and_grad(yd, xd)
    scale = TRACK_MAX_SHIFT_PX * geom_k * p / (c["delta"] * np.max(np.hypot(gx0, gy0)))

    def sample_fn(grid, k):
        y, x = grid.fine_coordinates()
        ph, _, _ = phase_and_grad(y, x)
        ph *= scale
        yield np.exp(0.005 * ph + 1j * ph).astype(np.complex64), None  # amplitude exp((β/δ)φ)

    def truth_fn(grid, k):
        ph, gy, gx = phase_and_grad(yd, xd)
        ph, gy, gx = ph * scale, gy * scale, gx * scale
        u = np.stack([gx, gy]) * (c["delta"] / (k * p))  # u_px = Δ ∇φ / (k p)
        return dict(phase=ph[None].astype(np.float32), transmission=np.exp(0.01 * ph)[None].astype(np.float32),
                    displacement=u[:, None].astype(np.float32), sample_mask=(np.abs(ph) > 0.01 * np.abs(ph).max())[None],
                    phase_gradient_per_m=np.stack([gx, gy])[:, None].astype(np.float32))

    return _upstream_run("tracking-shift", (H, W), np.zeros(A), P, seed, noise, c, sample_fn, truth_fn, photons, drift_px)


def _independent(geometry: str) -> Callable[..., SimulatedScan]:
    """Builder for the independent simulator's presets (imported lazily: it shares no code with this module)."""

    def build(*, seed, size, angles, positions, noise=True, photons=None):
        from xspeckle.simulate.independent import simulate_independent

        _check_count("angles", angles, 1, hi=1)
        return simulate_independent(geometry, 256 if size is None else size, positions, seed, noise=noise, photons=photons)

    return build


_BUILDERS: dict[str, Callable[..., SimulatedScan]] = {
    "pwf-beads": _pwf_beads,
    "mist-berry": _mist_berry,
    "mist-fibres": _mist_fibres,
    "tomo-beads": _tomo_beads,
    "tracking-shift": _tracking_shift,
    "indep-beads": _independent("downstream"),
    "indep-upstream": _independent("upstream"),
}


def make_preset(name: str, *, seed: int = 0, size: int | None = None, angles: int | None = None,
                positions: int | None = None, noise: bool = True, photons: float | None = None,
                drift_px=None) -> SimulatedScan:
    """Simulate one of the :data:`PRESETS` with ground truth.

    Parameters
    ----------
    name : str
        Key of :data:`PRESETS`.
    seed : int
        Seeds diffuser, diffuser positions, beam profile and noise (deterministic).
    size : int, optional
        Detector width = height in pixels (default per preset: 256, tomo-beads 128).
    angles : int, optional
        Number of rotation angles A, evenly spaced over [0, 180) (2-D presets mist-fibres and
        tracking-shift accept only 1).
    positions : int, optional
        Number of diffuser positions P.
    noise : bool
        Poisson + read noise on (default) or exact expected counts.
    photons : float, optional
        Mean photons per pixel of the open beam (default 1e4).
    drift_px : array (2,) or (P, 2), optional
        Diffuser repositioning error (dy, dx) in detector px between the reference and the sample stack, per
        position (presets pwf-beads, mist-berry, tracking-shift): the sample frames' speckle sits at
        ``reference(r - drift)`` in air. Simulated by taking the references with the diffuser at its nominal
        position minus the drift (sub-pixel: Fourier shift of the periodic diffuser), so the sample frames are
        those of the drift-free scan of the same seed. Recorded as ``truth["drift_px"]`` (P, 2).

    Returns
    -------
    SimulatedScan
    """
    if name not in _BUILDERS:
        raise ParameterError(f"simulate: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if photons is not None and not photons > 0:
        raise ParameterError(f"simulate: photons must be > 0, got {photons}")
    t0 = time.perf_counter()
    extra = {}
    if drift_px is not None:
        if name not in ("pwf-beads", "mist-berry", "tracking-shift"):
            raise ParameterError(f"simulate: preset {name!r} has no drift option; use pwf-beads, mist-berry or tracking-shift")
        extra["drift_px"] = drift_px
    sim = _BUILDERS[name](seed=seed, size=size, angles=angles, positions=positions, noise=noise, photons=photons, **extra)
    sim.truth["parameters"]["simulation_seconds"] = round(time.perf_counter() - t0, 3)
    return sim


_UNITS = {"phase": "rad", "transmission": "1", "diffusion": "m", "diffusion_tensor": "m", "displacement": "px",
          "delta": "1", "beta": "1", "sample_mask": "1", "beam_profile": "1", "intensity_reference": "1",
          "intensity_sample": "1", "diffuser_transmission": "1", "diffuser_shifts_px": "px",
          "phase_gradient_per_m": "rad/m", "drift_px": "px"}


def write_simulated(sim: SimulatedScan, path, *, overwrite: bool = False, compression: str | None = None,
                    include_intensities: bool = True) -> Path:
    """Write a :class:`SimulatedScan` as a scan file (interfaces.md) with the truth under ``/truth``.

    Arrays become datasets of ``/truth``; scalars, strings and dicts/lists (JSON) its attributes;
    ``/truth`` attribute ``units`` (JSON) gives each dataset's unit.  ``include_intensities=False``
    leaves out the noise-free ``intensity_reference``/``intensity_sample`` (they double the file size).
    The file is written atomically; an existing *path* raises :class:`~xspeckle.errors.OutputError`
    unless ``overwrite=True``.
    """
    truth = dict(sim.truth)
    if not include_intensities:
        truth.pop("intensity_reference", None)
        truth.pop("intensity_sample", None)
    truth["units"] = {k: v for k, v in _UNITS.items() if k in truth}
    truth["preset"] = sim.name
    return write_scan(path, data=sim.data, reference=sim.reference, geometry=sim.geometry, flat=sim.flat,
                      dark=sim.dark, theta_deg=sim.theta_deg, truth=truth,
                      attrs={"simulated_preset": sim.name, "simulated_seed": int(truth["parameters"]["seed"])},
                      overwrite=overwrite, compression=compression)


def simulate_preset(name: str, out_path, *, seed: int = 0, size: int | None = None, angles: int | None = None,
                    positions: int | None = None, overwrite: bool = False, drift_px=None) -> Path:
    """Simulate *name* and write it to *out_path* (what ``xspeckle simulate`` calls); *drift_px* as in
    :func:`make_preset`."""
    from xspeckle.io.atomic import check_output_path

    check_output_path(out_path, overwrite=overwrite)  # fail before the work, not after
    sim = make_preset(name, seed=seed, size=size, angles=angles, positions=positions, drift_px=drift_px)
    return write_simulated(sim, out_path, overwrite=overwrite)
