"""Tests of the simulator (xspeckle.simulate): physics of the building blocks and the presets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from xspeckle.errors import InputError, ParameterError
from xspeckle.geometry import Geometry
from xspeckle.optics import propagate
from xspeckle.simulate import (
    PRESETS,
    Cylinder,
    Grid,
    Phantom,
    Sphere,
    coherence_blur,
    diffusion_tensor_from_orientation,
    fokker_planck_diffusion,
    iotf,
    ipsf,
    make_preset,
    random_diffuser,
    simulate_upstream,
    sphere_thickness,
    write_simulated,
)


def _speckle(shape=(96, 96), grain_px=4.0, seed=0):
    """Smooth positive random image (speckle-like), mean 1."""
    rng = np.random.default_rng(seed)
    g = gaussian_filter(rng.standard_normal(shape), grain_px / 2, mode="wrap")
    g /= g.std()
    return (1.0 + 0.3 * g).astype(np.float32)


def _xcorr_shift(a, b):
    """Shift u (x, y) in px such that b(r) ≈ a(r − u): FFT cross-correlation + parabolic sub-pixel peak."""
    A = np.fft.fft2(a - a.mean(axis=(-2, -1), keepdims=True))
    Bf = np.fft.fft2(b - b.mean(axis=(-2, -1), keepdims=True))
    c = np.fft.ifft2(np.conj(A) * Bf).real
    if c.ndim == 3:
        c = c.sum(0)
    c = np.fft.fftshift(c)
    i, j = np.unravel_index(np.argmax(c), c.shape)

    def sub(cm, c0, cp):
        return 0.5 * (cm - cp) / (cm - 2 * c0 + cp)

    return (j + sub(c[i, j - 1], c[i, j], c[i, j + 1]) - c.shape[1] // 2,
            i + sub(c[i - 1, j], c[i, j], c[i + 1, j]) - c.shape[0] // 2)


# ---------------------------------------------------------------------------------------- propagation
def test_propagation_conserves_energy():
    rng = np.random.default_rng(3)
    f = (rng.standard_normal((128, 160)) + 1j * rng.standard_normal((128, 160))).astype(np.complex64)
    g = propagate(f, 0.7, 1e-6, 1e-10)
    e0 = np.sum(np.abs(f.astype(np.complex128)) ** 2)
    e1 = np.sum(np.abs(g.astype(np.complex128)) ** 2)
    assert abs(e1 / e0 - 1) < 1e-5
    assert not np.allclose(np.abs(g), np.abs(f), atol=0.1)  # it did propagate


def test_transport_of_intensity_limit():
    """Weak phase, short distance: I(z) ≈ 1 − (z/k)∇²φ (TIE, Teague 1983)."""
    n, p, lam, z = 256, 1e-6, 1e-10, 0.05
    k = 2 * np.pi / lam
    y = ((np.arange(n) - n / 2) * p)[:, None]
    x = ((np.arange(n) - n / 2) * p)[None, :]
    s2, a = (8 * p) ** 2, -0.5
    r2 = x * x + y * y
    phi = a * np.exp(-r2 / (2 * s2))
    lap = phi * (r2 / s2 - 2) / s2  # analytic ∇² of a 2-D Gaussian
    I = np.abs(propagate(np.exp(1j * phi), z, p, lam)) ** 2
    pred = 1 - (z / k) * lap
    contrast = np.abs(pred - 1).max()
    assert contrast > 1e-3  # the effect is visible
    assert np.abs(I - pred).max() < 0.03 * contrast


def test_refraction_direction_and_magnitude():
    """A linear phase ramp shifts the upstream speckle by Δ/k·∇φ/p px towards +∇φ (design.md)."""
    p, lam, delta = 1.5e-6, 6.2e-11, 0.5
    k = 2 * np.pi / lam
    grid = Grid((96, 96), p, oversample=1, pad_px=16)
    rng = np.random.default_rng(0)
    diff = random_diffuser(grid.shape, grid.h, grain_size_m=5e-6, phase_rms_rad=0.5, rng=rng)
    hf, wf = grid.shape
    # periodic ramp (integer number of cycles on the grid) giving ≈ (+1.4, −0.9) px
    mx = round(1.4 * k * p * wf * grid.h / (delta * 2 * np.pi))
    my = round(-0.9 * k * p * hf * grid.h / (delta * 2 * np.pi))
    gx, gy = 2 * np.pi * mx / (wf * grid.h), 2 * np.pi * my / (hf * grid.h)
    yf, xf = grid.fine_coordinates()
    trans = np.exp(1j * (gx * xf + gy * yf)).astype(np.complex64)
    ref, dat = simulate_upstream(grid, lam, diff, np.array([[0, 0], [40, 17]]), diffuser_sample_distance_m=0.5,
                                 sample_detector_distance_m=delta, samples=[(trans, None)])
    ux, uy = _xcorr_shift(ref, dat[:, 0])
    ex, ey = delta * gx / (k * p), delta * gy / (k * p)  # u_px = Δ ∇φ / (k p)
    assert ex > 1 and ey < -0.5
    assert abs(ux - ex) < 0.05 and abs(uy - ey) < 0.05


def test_alias_free_intensity():
    """|ψ|² of two plane waves at ±0.4 cycles/px beats at 0.8 cycles/px, above the grid's Nyquist: the
    plain square folds it to 0.2 cycles/px, the simulator's intensity drops it (mean and low band exact)."""
    from xspeckle.simulate.forward import _intensity

    n = 80
    x = np.arange(n)[None, :] * np.ones((8, 1))
    low = 0.3 * np.cos(2 * np.pi * (4 / n) * x)  # a slow amplitude modulation stays
    f = (np.exp(2j * np.pi * 0.4 * x) + np.exp(-2j * np.pi * 0.4 * x) + low).astype(np.complex64)
    plain = np.abs(f) ** 2
    good = _intensity(f)
    exact_band = 2 + low**2 + 2 * low * 2 * np.cos(2 * np.pi * 0.4 * x)  # |f|² = 2 + 2cos(0.8·2πx) + ...
    assert abs(good.mean() - plain.mean()) < 1e-4
    spec_plain = np.abs(np.fft.rfft(plain[0])) / n
    spec_good = np.abs(np.fft.rfft(good[0])) / n
    alias = round(0.2 * n)  # where 0.8 cycles/px folds to
    assert spec_plain[alias] > 0.9 and spec_good[alias] < 1e-4
    assert np.abs(spec_good[:8] - np.abs(np.fft.rfft(exact_band[0]))[:8] / n).max() < 1e-4


# ---------------------------------------------------------------------------------------- diffuser
def test_random_diffuser_statistics():
    shape, p, grain = (256, 256), 1e-6, 4e-6
    t = random_diffuser(shape, p, grain_size_m=grain, phase_rms_rad=1.5, absorption=0.02, rng=1)
    assert t.dtype == np.complex64 and t.shape == shape
    phi = np.angle(t.astype(np.complex128) * np.exp(-1j * np.angle(t).mean()))  # small wrapping only at tails
    amp = np.abs(t)
    assert amp.max() <= 1 + 1e-6
    lp = np.log(amp) / 0.02  # amplitude exp((β/δ)φ) gives the unwrapped phase back
    assert lp.max() <= 1e-4
    assert abs(lp.std() - 1.5) < 0.1
    # autocorrelation exp(−r²/ℓ²): at lag ℓ (4 px) it is 1/e
    g = lp - lp.mean()
    ac = np.fft.ifft2(np.abs(np.fft.fft2(g)) ** 2).real
    ac /= ac[0, 0]
    assert abs(0.5 * (ac[0, 4] + ac[4, 0]) - np.exp(-1)) < 0.06
    assert abs(0.5 * (ac[0, 2] + ac[2, 0]) - np.exp(-0.25)) < 0.04
    del phi
    # multi-layer with propagation between layers: still unit-bounded energy, different field
    t2 = random_diffuser(shape, p, grain_size_m=grain, phase_rms_rad=1.0, layers=3, layer_spacing_m=1e-3,
                         wavelength_m=1e-10, rng=1)
    assert np.mean(np.abs(t2) ** 2) <= 1.0 + 1e-5
    with pytest.raises(ParameterError):
        random_diffuser(shape, p, grain_size_m=grain, phase_rms_rad=1.0, layers=2, layer_spacing_m=1e-3, rng=1)


# ---------------------------------------------------------------------------------------- detector
def test_coherence_blur_reproduces_iotf_and_ipsf():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((64, 80)).astype(np.float32)
    p, cx, cy = 0.65e-6, 3.48e-6, 4.31e-6
    b = coherence_blur(a, cx, cy, p)
    ratio = np.fft.rfft2(b) / np.fft.rfft2(a)
    m = iotf(a.shape, p, cx, cy)
    keep = m > 1e-3
    assert np.allclose(ratio.real[keep], m[keep], rtol=2e-3, atol=1e-5)
    assert np.abs(ratio.imag[keep]).max() < 1e-4
    # a point source becomes the IPSF of PWF Eq. 4 (times the pixel area)
    d = np.zeros((64, 64), np.float32)
    d[32, 32] = 1.0
    img = coherence_blur(d, cx, cy, p)
    y = ((np.arange(64) - 32) * p)[:, None]
    x = ((np.arange(64) - 32) * p)[None, :]
    ref = ipsf(x, y, cx, cy) * p * p
    assert abs(img.sum() - 1) < 1e-5
    assert np.abs(img - ref).max() < 1e-3 * ref.max()
    # the 1/e² half-widths follow x_coh > y_coh ⇒ wider along y
    assert img[34, 32] > img[32, 34]


# ---------------------------------------------------------------------------------------- dark field
def test_fokker_planck_constant_D_equals_gaussian_blur():
    I = _speckle((96, 96), grain_px=5)
    p, delta = 1e-6, 1.0
    sigma_px = 1.6
    D = (sigma_px * p) ** 2 / (2 * delta)  # covariance 2ΔD = σ²
    ref = gaussian_filter(I.astype(np.float64), sigma_px, mode="wrap", truncate=8)
    spec = fokker_planck_diffusion(I, D, delta, p)
    assert np.abs(spec - ref).max() < 1e-4 * I.max()
    # the finite-difference path (D given as a constant map) converges to the same blur
    fd = fokker_planck_diffusion(I, np.full(I.shape, D, np.float32), delta, p, cfl=0.05)
    assert np.abs(fd - ref).max() < 0.02 * np.ptp(I)
    assert abs(fd.sum() / I.sum() - 1) < 1e-5


def test_fokker_planck_tensor_equals_anisotropic_gaussian():
    I = _speckle((96, 96), grain_px=5, seed=4)
    p, delta = 1e-6, 1.0
    dxx, dyy, dxy = diffusion_tensor_from_orientation(2.0e-12, 0.5e-12, np.deg2rad(30))
    # covariance Σ = 2ΔD; exact Gaussian kernel built in real space on the periodic grid
    S = 2 * delta * np.array([[dxx, dxy], [dxy, dyy]]) / p**2
    Si = np.linalg.inv(S)
    n = 96
    c = np.fft.fftfreq(n, 1 / n)
    X, Y = np.meshgrid(c, c)
    ker = np.exp(-0.5 * (Si[0, 0] * X * X + 2 * Si[0, 1] * X * Y + Si[1, 1] * Y * Y))
    ker /= ker.sum()
    ref = np.fft.ifft2(np.fft.fft2(I) * np.fft.fft2(ker)).real
    spec = fokker_planck_diffusion(I, (dxx, dyy, dxy), delta, p)
    assert np.abs(spec - ref).max() < 2e-3 * np.ptp(I)
    tens = np.stack([np.full(I.shape, v, np.float32) for v in (dxx, dyy, dxy)])
    fd = fokker_planck_diffusion(I, tens, delta, p, cfl=0.05)
    assert np.abs(fd - ref).max() < 0.03 * np.ptp(I)
    # the blur is anisotropic along 30°: the mixed term matters
    iso = fokker_planck_diffusion(I, (dxx, dyy, 0.0), delta, p)
    assert np.abs(iso - ref).max() > 5 * np.abs(fd - ref).max() / 3
    with pytest.raises(ParameterError):
        fokker_planck_diffusion(I, (1e-12, 1e-12, 2e-12), delta, p)  # not positive semi-definite


def test_fokker_planck_variable_D_first_order_and_conservation():
    I = _speckle((64, 64), grain_px=5, seed=5)
    p = 1e-6
    yy, xx = np.mgrid[0:64, 0:64]
    Dmap = (1e-12 * np.exp(-((yy - 32) ** 2 + (xx - 28) ** 2) / (2 * 10**2))).astype(np.float32)
    delta = 0.02  # short distance: first order
    out = fokker_planck_diffusion(I, Dmap, delta, p)
    g = Dmap * I
    lap = (np.roll(g, 1, 0) + np.roll(g, -1, 0) + np.roll(g, 1, 1) + np.roll(g, -1, 1) - 4 * g) / p**2
    first = delta * lap  # Δ ∇²(D I)
    assert np.abs(out - I - first).max() < 0.05 * np.abs(first).max()
    assert abs(out.sum() / I.sum() - 1) < 1e-5


# ---------------------------------------------------------------------------------------- phantoms
def test_analytic_projection_matches_voxel_volume():
    v = 1e-6
    n = 48
    ph = Phantom(spheres=[Sphere((3e-6, 6e-6, -8e-6), 9e-6, 2e-6, 1e-8), Sphere((-10e-6, -7e-6, 9e-6), 5e-6, 1e-6, 0)],
                 cylinders=[Cylinder((-5e-6, -10e-6), 4e-6, 5e-7, 0)])
    vol = ph.voxelise((n, n, n), v, supersample=4)
    # θ=0: beam along y (sum over Y), s = x; θ=90°: s = y (y up = reversed Y index), sum over X
    for th, num in ((0.0, vol["delta"].sum(axis=1) * v), (90.0, vol["delta"].sum(axis=2)[:, ::-1] * v)):
        pr = ph.project(th, (n, n), v, supersample=4)
        assert abs(num.sum() / pr["delta"].sum() - 1) < 0.01
        assert np.abs(num - pr["delta"]).mean() < 0.02 * pr["delta"].max()
        assert np.abs(num - pr["delta"]).max() < 0.15 * pr["delta"].max()
    # a generic angle: the single bead's projected centre is at s = x cosθ + y sinθ
    one = Phantom(spheres=[Sphere((0.0, 6e-6, -8e-6), 5e-6, 1e-6)])
    th = 30.0
    pr = one.project(th, (n, n), v)["thickness"]
    col = (pr.sum(0) * np.arange(n)).sum() / pr.sum()
    s0 = -8e-6 * np.cos(np.deg2rad(th)) + 6e-6 * np.sin(np.deg2rad(th))
    assert abs(col - ((n - 1) / 2 + s0 / v)) < 0.02
    # the 2-D helper agrees with the 3-D phantom at θ=0
    t2 = sphere_thickness((n, n), v, (0.0, -8e-6), 5e-6)
    assert np.allclose(t2, one.project(0.0, (n, n), v)["thickness"], atol=1e-9)
    assert abs(t2.max() - 2 * 5e-6) < 0.05 * 1e-5


# ---------------------------------------------------------------------------------------- presets
SMALL = {"pwf-beads": dict(size=64), "mist-berry": dict(size=64), "mist-fibres": dict(size=64),
         "tomo-beads": dict(size=48, angles=6), "tracking-shift": dict(size=64),
         "indep-beads": dict(size=64), "indep-upstream": dict(size=64)}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_shapes_dtypes_geometry(name):
    kw = SMALL[name]
    sim = make_preset(name, seed=1, positions=3, **kw)
    P, A, H, W = sim.data.shape
    assert (P, H, W) == (3, kw["size"], kw["size"]) and A == kw.get("angles", 1)
    assert sim.data.dtype == np.float32 and sim.reference.shape == (P, H, W)
    assert sim.flat.ndim == 3 and sim.dark.ndim == 3 and sim.flat.shape[1:] == (H, W)
    assert sim.theta_deg.shape == (A,)
    assert isinstance(sim.geometry, Geometry)
    t = sim.truth
    assert t["phase"].shape == (A, H, W) and t["transmission"].shape == (A, H, W)
    assert t["sample_mask"].dtype == bool and t["sample_mask"].any()
    assert t["displacement"].shape == (2, A, H, W) and np.all(np.isfinite(t["displacement"]))
    if name == "mist-berry":
        assert t["diffusion"].shape == (A, H, W) and t["diffusion"].max() == pytest.approx(5e-12, rel=0.02)
    if name == "mist-fibres":
        assert t["diffusion_tensor"].shape == (3, A, H, W)
    assert np.all(t["transmission"] > 0) and np.all(t["transmission"] <= 1.0 + 1e-6)
    assert np.all(np.isfinite(sim.data)) and sim.data.min() > 0
    down = name in ("pwf-beads", "tomo-beads", "indep-beads")
    assert sim.geometry.diffuser_position == ("downstream" if down else "upstream")
    if down:
        wing = max(1, round(0.05 * W))
        assert not t["sample_mask"][..., :wing].any() and not t["sample_mask"][..., -wing:].any()
        assert abs(sim.geometry.sample_diffuser_distance_m - 3e-3) < 1e-12
    ref, dat = sim.normalised()
    assert ref.dtype == np.float32 and dat.shape == sim.data.shape
    assert 0.5 < float(ref.mean()) < 1.2
    assert abs(t["coherence_length_x_m"]) > 0


def test_preset_noise_free_normalisation_and_determinism():
    a = make_preset("pwf-beads", size=64, positions=2, noise=False)
    ref, dat = a.normalised()
    assert np.allclose(ref, a.truth["intensity_reference"], rtol=1e-4, atol=1e-5)
    assert np.allclose(dat, a.truth["intensity_sample"], rtol=1e-4, atol=1e-5)
    b = make_preset("pwf-beads", size=64, positions=2, seed=0)
    c = make_preset("pwf-beads", size=64, positions=2, seed=0)
    d = make_preset("pwf-beads", size=64, positions=2, seed=1)
    assert np.array_equal(b.data, c.data)
    assert not np.allclose(b.reference, d.reference)
    # Poisson noise ≈ sqrt(N) on the flat fields (1e4 photons: 1 % RMS)
    f = b.flat.astype(np.float64) - 100.0
    rel = (f[0] - f[1]).std() / np.sqrt(2) / f.mean()
    assert 0.008 < rel < 0.012
    with pytest.raises(InputError):
        make_preset("no-such-preset")
    with pytest.raises(InputError):
        make_preset("mist-fibres", angles=3)


def test_phase_sign_negative_in_matter_and_field_agrees():
    """Truth phase is negative inside the beads, and it is the phase of the simulated exit wave."""
    from xspeckle.simulate.presets import _phantom_fields, pwf_beads_phantom

    sim = make_preset("pwf-beads", size=128, positions=1, noise=False)
    t = sim.truth
    assert t["phase"][t["sample_mask"]].max() < 0
    assert np.all(t["phase"][~t["sample_mask"]] == 0)
    assert t["phase"].min() < -5  # several radians (≈ −9.4 rad at 128 px)
    k = sim.geometry.wavenumber_per_m
    grid = Grid((128, 128), sim.geometry.pixel_size_m, oversample=1, pad_px=t["parameters"]["pad_px"])
    ph = pwf_beads_phantom(128)
    trans, _ = next(_phantom_fields(ph, [0.0], grid, k))
    field = grid.crop_bin(trans)
    inner = t["phase"][0] < 0.3 * t["phase"][0].min()
    dphi = np.angle(field * np.exp(-1j * t["phase"][0]))  # wrapped difference wave vs truth
    assert np.abs(dphi[inner]).max() < 0.02
    assert np.abs(np.abs(field[inner]) ** 2 - t["transmission"][0][inner]).max() < 1e-3
    # the wave's phase decreases into the bead: just inside the rim it is small and negative
    rim = (t["phase"][0] < -0.2) & (t["phase"][0] > -1.0)
    assert np.all(np.angle(field[rim]) < 0)


def test_fine_grid_projection_bins_to_detector_truth():
    """Oversampled, padded grid (upstream presets): the fine-grid phantom binned to the detector equals the
    truth evaluated directly on the detector pixels (coordinates and centring agree)."""
    ph = Phantom(spheres=[Sphere((5e-6, 0.0, -12e-6), 60e-6, 1e-6, 1e-9)])
    p = 5.8e-6
    grid = Grid((40, 48), p, oversample=2, pad_px=9)
    fine = ph.project(0.0, grid.shape, grid.h, supersample=3, offset_px=grid.centre_offset_px())["delta"]
    det = ph.project(0.0, (40, 48), p, supersample=6)["delta"]
    assert np.abs(grid.crop_bin(fine) - det).max() < 1e-3 * det.max()
    y, x = grid.fine_coordinates()
    yd, xd = grid.detector_coordinates()
    assert np.allclose(grid.crop_bin(np.broadcast_to(x, grid.shape)), np.broadcast_to(xd, (40, 48)))
    assert np.allclose(grid.crop_bin(np.broadcast_to(y, grid.shape)), np.broadcast_to(yd, (40, 48)))


def test_sphere_pushes_speckle_outward_downstream():
    """PWF geometry: a bead's refraction moves the speckle away from its centre (φ<0 inside), by
    ≈ L2·∇φ/(k p) px (the speckle is locked to the diffuser; pwf.md §7)."""
    sim = make_preset("pwf-beads", size=256, positions=6, noise=False)
    R, S = sim.truth["intensity_reference"], sim.truth["intensity_sample"][:, 0]
    phase = sim.truth["phase"][0]
    cy, cx = np.unravel_index(np.argmin(phase), phase.shape)
    L2, k, p = sim.geometry.require_l2(), sim.geometry.wavenumber_per_m, sim.geometry.pixel_size_m
    for sgn in (1, -1):  # patches right and left of the deepest bead's centre, inside the bead
        c0 = cx + sgn * 40
        sl = (slice(None), slice(cy - 8, cy + 8), slice(c0 - 8, c0 + 8))
        # least-squares speckle tracking (LCS model, pwf.md §7): S ≈ T R − T u_x ∂x R − T u_y ∂y R
        dry, drx = np.gradient(R, axis=(1, 2))
        A = np.stack([R[sl].ravel(), -drx[sl].ravel(), -dry[sl].ravel()], 1)
        t, tux, tuy = np.linalg.lstsq(A, S[sl].ravel(), rcond=None)[0]
        ux, uy = tux / t, tuy / t
        gx = np.gradient(phase, axis=1)[cy - 8 : cy + 8, c0 - 8 : c0 + 8].mean() / p
        expect = L2 * gx / (k * p)
        assert np.sign(gx) == sgn and np.sign(ux) == sgn  # +∇φ and the shift both point outward
        assert abs(expect) > 0.3
        assert abs(ux - expect) < 0.15 * abs(expect), (ux, expect)
        assert abs(uy) < 0.1


def test_tracking_shift_truth_matches_ideal_warp():
    """The wave-optical speckle shift equals the truth displacement: a tracker gives the same answer on the
    simulated sample frames as on the reference warped by the truth field (I_R(r − u))."""
    from scipy.ndimage import map_coordinates

    sim = make_preset("tracking-shift", size=128, positions=6, noise=False)
    u = sim.truth["displacement"][:, 0]
    assert abs(np.hypot(*u).max() - 2.0) < 1e-3
    R, S = sim.truth["intensity_reference"], sim.truth["intensity_sample"][:, 0]
    yy, xx = np.mgrid[0:128, 0:128].astype(float)
    warp = np.stack([map_coordinates(r, [yy - u[1], xx - u[0]], order=3, mode="wrap") for r in R])
    win = np.hanning(20)[:, None] * np.hanning(20)[None]
    d = []
    for cy in range(20, 108, 12):
        for cx in range(20, 108, 12):
            sl = (slice(None), slice(cy - 10, cy + 10), slice(cx - 10, cx + 10))
            a = _xcorr_shift(R[sl] * win, S[sl] * win)
            b = _xcorr_shift(R[sl] * win, warp[sl] * win)
            d.append((a[0] - b[0], a[1] - b[1]))
    d = np.array(d)
    assert np.sqrt((d**2).mean()) < 0.08, np.sqrt((d**2).mean())
    assert np.abs(u).max() > 1.0


def test_berry_diffusion_matches_mist_first_order_model():
    """Noise-free mist-berry: a per-window LS fit of MIST Eq. 4 with the true phase recovers D_eff
    in the scattering core to within 25 % (the simulation integrates the exact Fokker–Planck blur)."""
    from scipy.ndimage import uniform_filter

    sim = make_preset("mist-berry", size=128, noise=False)
    g = sim.geometry
    p, dl, k = g.pixel_size_m, g.sample_detector_distance_m, g.wavenumber_per_m
    D = sim.truth["diffusion"][0]
    R, S = sim.truth["intensity_reference"], sim.truth["intensity_sample"][:, 0]

    def lap(a):
        return (np.roll(a, 1, -1) + np.roll(a, -1, -1) + np.roll(a, 1, -2) + np.roll(a, -1, -2) - 4 * a) / p**2

    a1 = (dl / k) * R * lap(sim.truth["phase"][0])[None]
    a2 = -dl * lap(R)
    b = R - S  # MIST Eq. 4: I_R − I_S = (Δ/k) I_R ∇²φ − Δ D ∇²I_R

    def pool(x):
        return uniform_filter(x, (0, 7, 7)).sum(0)

    A11, A12, A22, B1, B2 = pool(a1 * a1), pool(a1 * a2), pool(a2 * a2), pool(a1 * b), pool(a2 * b)
    core = D > 0.8 * D.max()
    Dest = (A11 * B2 - A12 * B1)[core] / (A11 * A22 - A12**2)[core]
    ratio = np.median(Dest / D[core])
    assert 0.75 < ratio < 1.1
    outside = ~sim.truth["sample_mask"][0]  # no phase there: fit D alone
    assert np.abs(np.median(B2[outside] / A22[outside])) < 0.05 * D.max()


def test_fibres_tensor_orientations():
    sim = make_preset("mist-fibres", size=64, positions=2)
    T = sim.truth["diffusion_tensor"][:, 0]
    assert T.shape == (3, 64, 64)
    for (cy, cx), ang in zip(sim.truth["patch_centres_px"], sim.truth["patch_orientation_deg"]):
        dxx, dyy, dxy = T[:, int(round(cy)), int(round(cx))]
        w, vecs = np.linalg.eigh(np.array([[dxx, dxy], [dxy, dyy]]))
        major = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1])) % 180
        assert min(abs(major - ang), 180 - abs(major - ang)) < 1.0
        assert abs(w[1] / w[0] - 4.0) < 0.05


def test_tomo_beads_volume_consistent_with_projection():
    sim = make_preset("tomo-beads", size=48, angles=4, positions=2, noise=False)
    t = sim.truth
    vol = t["delta"]
    assert vol.shape == (48, 48, 48) and t["voxel_size_m"] == sim.geometry.pixel_size_m
    assert np.allclose(sim.theta_deg, [0, 45, 90, 135])
    k, v = sim.geometry.wavenumber_per_m, t["voxel_size_m"]
    # θ = 0: beam along y ⇒ −k Σ_y δ v is the truth phase (up to voxelisation)
    num = -k * vol.sum(axis=1) * v
    assert np.abs(num - t["phase"][0]).mean() < 0.02 * np.abs(t["phase"][0]).max()
    num90 = -k * vol.sum(axis=2)[:, ::-1] * v  # θ = 90°: s = y, y up (reversed Y index)
    assert np.abs(num90 - t["phase"][2]).mean() < 0.02 * np.abs(t["phase"][2]).max()
    assert t["beta"].max() > 0 and t["delta"].min() >= 0


def test_write_simulated_round_trip(tmp_path):
    from xspeckle.io.scan import Scan
    from xspeckle.simulate import simulate_preset

    sim = make_preset("tomo-beads", size=48, angles=3, positions=2)
    path = write_simulated(sim, tmp_path / "sim.h5")
    with Scan(path) as s:
        assert s.n_positions == 2 and s.n_angles == 3 and s.frame_shape == (48, 48)
        assert s.geometry == sim.geometry
        assert np.allclose(s.theta_deg, sim.theta_deg)
        assert np.array_equal(s.reference(), sim.reference)
        assert np.array_equal(s.sample(1), sim.data[:, 1])
        tr = s.truth()
        assert np.array_equal(tr["phase"], sim.truth["phase"])
        assert tr["delta"].shape == (48, 48, 48)
        assert "attr:parameters" in tr and "attr:units" in tr
        assert tr["attr:coherence_length_x_m"] == pytest.approx(3.48e-6)
    with pytest.raises(InputError):
        write_simulated(sim, path)
    out = simulate_preset("pwf-beads", tmp_path / "p.h5", size=64)
    with Scan(out) as s:
        assert s.n_positions == 12 and s.geometry.diffuser_position == "downstream"
