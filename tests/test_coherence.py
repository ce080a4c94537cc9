"""Coherence calibration (PWF Eqs. 3–5), IOTF/IPSF and the diffuser estimate (pwf.md §5).

Ground truth from ``xspeckle.simulate`` preset ``pwf-beads`` (x_coh = 3.48 µm, y_coh = 4.31 µm,
10⁴ photons/px, Poisson noise).  Tolerances: 5 % (the issue's DONE criterion) with 12 positions
at 256 px; 8 % for a single 128 px frame (less spectral averaging).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError
from xspeckle.optics import propagate
from xspeckle.retrieve.coherence import (
    calibrate,
    calibrate_scan,
    diffuser_transmission,
    iotf,
    ipsf,
    stf,
    wiener_deconvolve,
)
from xspeckle.simulate import make_preset

P = 650e-9
XC, YC = 3.48e-6, 4.31e-6


@pytest.fixture(scope="module")
def beads256():
    return make_preset("pwf-beads", size=256, seed=3, positions=12)


def test_iotf_formula_and_ipsf_pair():
    h = iotf((64, 80), P, XC, YC)
    assert h.dtype == np.float32 and h.shape == (64, 80)
    assert h[0, 0] == pytest.approx(1.0)
    u = 5 / (80 * P)                                           # 5th frequency bin along x (cycles/m)
    assert h[0, 5] == pytest.approx(math.exp(-math.pi / 2 * (u * XC) ** 2), rel=1e-5)   # Eq. 5
    v = 3 / (64 * P)
    assert h[3, 0] == pytest.approx(math.exp(-math.pi / 2 * (v * YC) ** 2), rel=1e-5)
    hr = iotf((64, 80), P, XC, YC, rfft=True)
    np.testing.assert_allclose(hr, h[:, :41], rtol=1e-6)
    # Eq. 4 is the Fourier pair of Eq. 5: unit sum, and its DFT is the IOTF (to sampling accuracy)
    k = ipsf((64, 80), P, XC, YC, centered=False)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(np.real(B.fft2(k.astype(np.complex64))), h, atol=2e-3)
    # STF (Eq. 14) is IOTF² for γ = 1
    np.testing.assert_allclose(stf((64, 80), P, XC, YC, 1.0), h * h, rtol=1e-5)


def test_calibrate_pwf_beads_within_5_percent(beads256):
    ref, _ = beads256.normalised()
    cal = calibrate(ref, P)
    ex = cal.coherence_length_x_m / beads256.truth["coherence_length_x_m"] - 1
    ey = cal.coherence_length_y_m / beads256.truth["coherence_length_y_m"] - 1
    assert abs(ex) < 0.05 and abs(ey) < 0.05, (ex, ey)
    assert cal.n_points > 100 and cal.noise_floor > 0
    d = cal.to_dict()
    json.dumps(d)
    assert d["coherence_length_x_m"] == pytest.approx(cal.coherence_length_x_m)


def test_calibrate_single_small_frame():
    s = make_preset("pwf-beads", size=128, seed=4, positions=1)
    ref, _ = s.normalised()
    cal = calibrate(ref[0], P)
    assert abs(cal.coherence_length_x_m / XC - 1) < 0.08
    assert abs(cal.coherence_length_y_m / YC - 1) < 0.08
    assert cal.coherence_length_y_m > cal.coherence_length_x_m        # the anisotropy is resolved


def test_paper_estimator_runs_and_is_plausible(beads256):
    ref, _ = beads256.normalised()
    cal = calibrate(ref[:2], P, model="paper")
    assert cal.model == "paper"
    for v, t in ((cal.coherence_length_x_m, XC), (cal.coherence_length_y_m, YC)):
        assert 0.6 * t < v < 1.5 * t


def test_calibrate_errors():
    with pytest.raises(InputError):
        calibrate(np.ones((16, 16), np.float32), P)
    bad = np.ones((64, 64), np.float32)
    bad[3, 3] = np.nan
    with pytest.raises(InputError):
        calibrate(bad, P)
    with pytest.raises(ParameterError):
        calibrate(np.ones((64, 64), np.float32), P, model="nope")
    with pytest.raises(InputError):                       # flat image: no speckle to fit
        calibrate(np.ones((64, 64), np.float32) + 1e-3 * np.random.default_rng(0).standard_normal((64, 64)), P)


def test_calibrate_scan_json(tmp_path, beads256):
    from xspeckle.io.scan import Scan, write_scan

    s = beads256
    path = write_scan(tmp_path / "scan.h5", data=s.data, reference=s.reference, geometry=s.geometry,
                      flat=s.flat, dark=s.dark)
    with Scan(path) as scan:
        d = calibrate_scan(scan)
        d4 = calibrate_scan(scan, positions=[0, 1, 2, 3])
    txt = json.dumps(d)
    assert "coherence_length_x_m" in txt and "coherence_length_y_m" in txt
    assert abs(d["coherence_length_x_m"] / XC - 1) < 0.05
    assert abs(d["coherence_length_y_m"] / YC - 1) < 0.05
    assert d["positions"] == list(range(12)) and d4["positions"] == [0, 1, 2, 3]


def test_wiener_deconvolution_sharpens():
    rng = np.random.default_rng(5)
    img = (1 + 0.3 * rng.standard_normal((96, 96))).astype(np.float32)
    h = iotf(img.shape, P, XC, YC)
    blurred = np.real(B.ifft2(B.fft2(img.astype(np.complex64)) * h)).astype(np.float32)
    noisy = blurred + 1e-3 * rng.standard_normal(img.shape).astype(np.float32)
    dec = wiener_deconvolve(noisy, h, nsr=1e-4)
    # compare inside the band where the IOTF is above 0.1 (what Wiener can restore)
    band = h > 0.1

    def err(a):
        return np.linalg.norm((B.fft2((a - img).astype(np.complex64)))[band]) / np.linalg.norm(B.fft2((img - 1).astype(np.complex64))[band])

    assert err(dec) < 0.2 * err(blurred)
    # corner-noise NSR estimate runs and gives a finite image
    assert np.all(np.isfinite(wiener_deconvolve(noisy, h)))


def test_diffuser_estimate_reproduces_reference():
    """t from the (noise-free) reference re-creates it through P_L2, |.|², IOTF (pwf.md §5)."""
    s = make_preset("pwf-beads", size=128, seed=6, positions=1, noise=False)
    ref, _ = s.normalised()
    r = ref[0] / ref[0].mean()
    g = s.geometry
    t = diffuser_transmission(r, pixel_size_m=P, wavelength_m=g.wavelength_m, l2_m=g.require_l2(),
                              coherence_length_x_m=XC, coherence_length_y_m=YC)
    assert t.dtype == np.complex64 and t.shape == r.shape
    inten = np.abs(propagate(t, g.require_l2(), P, g.wavelength_m)) ** 2
    model = np.real(B.ifft2(B.fft2(inten.astype(np.complex64)) * iotf(r.shape, P, XC, YC)))
    rel = np.linalg.norm(model - r) / np.linalg.norm(r - r.mean())
    assert rel < 0.1, rel


@pytest.mark.parametrize("layers, spacing_m, seed", [(1, 0.0, 0), (4, 0.5e-3, 1)])
def test_phase_only_diffuser_estimate_halves_the_model_error(layers, spacing_m, seed):
    """The zero-phase field reproduces the reference but not how the diffuser answers a distorted wave.

    Periodic 128² grid, PWF geometry (L1 3 mm, L2 20 mm, 10 keV); a one-layer and a four-layer diffuser
    (0.5 mm apart, so not a thin phase screen); sample: a −4 rad Gaussian phase bump. Error of the model
    intensity IPSF⊛|P_L2{t̂·P_L1 x}|² against the true one, relative to the sample signal: the phase-only
    estimate (Richardson–Lucy + Gerchberg–Saxton) must be below 0.6× the zero-phase one (measured
    0.35–0.41 against 0.69–0.97), and fit the reference at least as well."""
    from xspeckle.simulate.diffuser import random_diffuser

    n, lam, l1, l2 = 128, 1.2398e-10, 3e-3, 20e-3
    h = iotf((n, n), P, XC, YC)

    def detect(field):
        return np.real(np.fft.ifft2(np.fft.fft2(np.abs(propagate(field, l2, P, lam)) ** 2) * h))

    t = random_diffuser((n, n), P, grain_size_m=2.5e-6, phase_rms_rad=1.75 / math.sqrt(layers), absorption=0.02,
                        layers=layers, layer_spacing_m=spacing_m, wavelength_m=lam, rng=seed)
    ref = detect(t)
    t = t / math.sqrt(ref.mean())
    ref = (ref / ref.mean()).astype(np.float32)
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    u1 = propagate(np.exp(-4j * np.exp(-(xx**2 + yy**2) / (2 * 14.0**2))).astype(np.complex64), l1, P, lam)
    data = detect(t * u1)
    err, fit = {}, {}
    for est in ("zero-phase", "phase-only"):
        te = diffuser_transmission(ref, pixel_size_m=P, wavelength_m=lam, l2_m=l2, coherence_length_x_m=XC,
                                   coherence_length_y_m=YC, estimate=est)
        assert te.dtype == np.complex64 and te.shape == ref.shape
        err[est] = np.linalg.norm(detect(te * u1) - data) / np.linalg.norm(data - ref)
        fit[est] = np.linalg.norm(detect(te) - ref) / np.linalg.norm(ref - 1)
    assert err["phase-only"] < 0.6 * err["zero-phase"], err
    assert fit["phase-only"] <= fit["zero-phase"], fit


def test_richardson_lucy_recovers_a_positive_image():
    """A positive, sharp-peaked image (sparse Gaussian spots on a weak floor, as coherent speckle peaks) blurred by
    the IOTF: Richardson–Lucy stays positive, keeps the mean, and recovers it better than the blurred image
    and than the clipped Wiener estimate (measured: 0.14 and 0.50 of their errors)."""
    from xspeckle.retrieve.coherence import richardson_lucy

    rng = np.random.default_rng(0)
    n = 64
    truth = np.full((n, n), 0.05)
    yy, xx = np.mgrid[:n, :n]
    for cy, cx in rng.uniform(0, n, (40, 2)):
        dy, dx = (yy - cy + n / 2) % n - n / 2, (xx - cx + n / 2) % n - n / 2
        truth += np.exp(-(dx * dx + dy * dy) / (2 * 1.2**2))
    truth = truth.astype(np.float32)
    h = iotf((n, n), P, XC, YC)
    blurred = np.real(np.fft.ifft2(np.fft.fft2(truth) * h)).astype(np.float32)
    est = richardson_lucy(blurred, h, iterations=200)
    assert est.dtype == np.float32 and est.min() >= 0
    assert est.mean() == pytest.approx(blurred.mean(), rel=1e-3)
    e_rl = np.linalg.norm(est - truth)
    e_wiener = np.linalg.norm(np.maximum(wiener_deconvolve(blurred, h, nsr=1e-3), 0) - truth)
    assert e_rl < 0.3 * np.linalg.norm(blurred - truth)
    assert e_rl < 0.7 * e_wiener


def test_diffuser_estimate_errors():
    r = np.ones((16, 16), np.float32)
    kw = dict(pixel_size_m=P, wavelength_m=1e-10, l2_m=0.02, coherence_length_x_m=XC, coherence_length_y_m=YC)
    with pytest.raises(ParameterError, match="unknown"):
        diffuser_transmission(r, estimate="magic", **kw)
    with pytest.raises(ParameterError, match="gs_iterations"):
        diffuser_transmission(r, estimate="phase-only", gs_iterations=-1, **kw)


def test_screen_spectrum_matches_a_wave_simulation():
    """The closed-form speckle spectrum behind a Gaussian random phase screen (used by model='screen') against a
    direct numerical experiment: random screens (NumPy only), Fresnel propagation, periodogram."""
    from scipy import ndimage

    from xspeckle.retrieve.coherence import screen_spectrum

    n, dx = 512, 0.25e-6
    sigma, a, lam, z = 1.0, 1.0e-6, 1.24e-10, 0.02
    rng = np.random.default_rng(0)
    q = np.fft.fftfreq(n, dx)
    qx, qy = np.meshgrid(q, q)
    prop = np.exp(-1j * np.pi * lam * z * (qx**2 + qy**2))
    acc = np.zeros((n, n))
    for _ in range(6):
        phi = ndimage.gaussian_filter(rng.standard_normal((n, n)), a / (2 * dx), mode="wrap")   # corr e^{-r²/a²}
        phi *= sigma / phi.std()
        inten = np.abs(np.fft.ifft2(np.fft.fft2(np.exp(1j * phi)) * prop)) ** 2
        acc += np.abs(np.fft.fft2(inten - inten.mean())) ** 2 * dx**2 / n**2 / 6
    rho = np.hypot(qx, qy)
    for qv in (1e5, 2e5, 3e5, 5e5):
        ring = np.abs(rho - qv) < 1.5e4
        assert acc[ring].mean() / screen_spectrum(qv, sigma, a, lam, z)[0] == pytest.approx(1.0, abs=0.1), qv


@pytest.mark.parametrize("scene,kw", [("indep-beads", {}),
                                      ("fine", dict(grain_diameter_m=(0.2e-6, 1.0e-6), grain_coverage=4.0))])
def test_screen_calibration_on_the_independent_simulator(scene, kw):
    """Issue 13: within 5 % of the true lengths on data from the independent simulator (4-layer grain diffuser,
    2 % bandwidth, binned 2x grid) where the former default read 20-30 % short on the fine diffuser."""
    from xspeckle.retrieve.coherence import calibrate, optics_of
    from xspeckle.simulate.independent import simulate_independent

    sim = simulate_independent("downstream", size=256, seed=0, positions=1, **kw)
    ref, _ = sim.normalised()
    g = sim.geometry
    c = calibrate(ref, g.pixel_size_m, **optics_of(g))
    assert c.model == "screen"
    assert c.coherence_length_x_m / sim.truth["coherence_length_x_m"] == pytest.approx(1.0, abs=0.05)
    assert c.coherence_length_y_m / sim.truth["coherence_length_y_m"] == pytest.approx(1.0, abs=0.05)
    # without the optics the default is the spectrum-shape fit
    assert calibrate(ref, g.pixel_size_m).model == "power-gaussian"


def test_screen_needs_the_optics():
    from xspeckle.errors import ParameterError
    from xspeckle.retrieve.coherence import calibrate

    with pytest.raises(ParameterError, match="wavelength_m and distance_m"):
        calibrate(np.ones((64, 64)), 1e-6, model="screen")
