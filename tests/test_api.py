"""Tests of xspeckle.api: thin notebook wrappers give the same results as the modules they wrap."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from xspeckle import api
from xspeckle.errors import InputError
from xspeckle.geometry import Geometry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import GEOM, TinyRetriever, make_scan  # noqa: E402


@pytest.fixture
def tiny_registered(monkeypatch):
    import xspeckle.retrieve as R

    monkeypatch.setitem(R.METHODS, "tiny", ("test_pipeline", "TinyRetriever"))
    return "tiny"


def _frames(p=2, a=3, h=24, w=28, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.uniform(0.8, 1.2, (p, h, w)).astype(np.float32)
    smp = (ref[:, None] * rng.uniform(0.7, 0.9, (p, a, h, w))).astype(np.float32)
    return ref, smp


def test_retrieve_arrays_one_and_many_angles(tiny_registered):
    ref, smp = _frames()
    r = TinyRetriever(ref, GEOM, gain=1.5)
    one = api.retrieve(ref, smp[:, 1], GEOM, method="tiny", gain=1.5)
    exp = r(smp[:, 1])
    assert set(one) == set(exp)
    for k in exp:
        np.testing.assert_array_equal(one[k], exp[k])
    calls = []
    many = api.retrieve(ref, smp, GEOM, method="tiny", gain=1.5, progress=lambda d, t: calls.append((d, t)))
    assert many["phase"].shape == (3, 24, 28) and many["displacement"].shape == (2, 3, 24, 28)
    np.testing.assert_array_equal(many["phase"][1], exp["phase"])
    np.testing.assert_array_equal(many["displacement"][:, 1], exp["displacement"])
    assert calls[-1] == (3, 3)
    with pytest.raises(InputError, match="disagree"):
        api.retrieve(ref[:1], smp, GEOM, method="tiny")


def test_retrieve_normalises_raw_frames_with_flat_and_dark(tiny_registered):
    ref, smp = _frames()
    flat = np.full((2, 24, 28), 1100.0, np.float32)
    dark = np.full((24, 28), 100.0, np.float32)
    raw_ref = ref * 1000 + 100
    raw_smp = smp[:, 0] * 1000 + 100
    a = api.retrieve(raw_ref, raw_smp, GEOM, method="tiny", flat=flat, dark=dark)
    b = api.retrieve(ref, smp[:, 0], GEOM, method="tiny")
    np.testing.assert_allclose(a["phase"], b["phase"], atol=1e-5)
    np.testing.assert_allclose(a["transmission"], b["transmission"], rtol=1e-5)


def test_retrieve_file_is_the_pipeline(tmp_path):
    scan = make_scan(tmp_path / "s.h5", a=4)
    out = api.retrieve_file(scan, tmp_path / "o.h5", method=TinyRetriever, params={"gain": 2.0})
    with h5py.File(out, "r") as f:
        assert f["retrieval/phase"].shape == (4, 32, 40)
        assert f.attrs["method"] == "tiny"


def test_tomo_recovers_delta_of_a_cylinder():
    # a vertical cylinder of radius R (px) and delta0: phase(x) = -k * delta0 * 2 sqrt(R^2 - x^2) * p
    geom = Geometry(energy_ev=20000.0, pixel_size_m=1e-6, sample_detector_distance_m=0.5)
    n, a, rows, R, delta0 = 64, 90, 3, 20.0, 1e-6
    x = np.arange(n) - (n - 1) / 2
    chord = 2 * np.sqrt(np.clip(R * R - x * x, 0, None)) * geom.pixel_size_m
    proj = (-geom.wavenumber_per_m * delta0 * chord).astype(np.float32)
    phase = np.broadcast_to(proj, (a, rows, n)).copy()
    theta = np.linspace(0, 180, a, endpoint=False)
    out = api.tomo(phase, theta, geom, center_px=(n - 1) / 2, background=None)
    d = out["delta"]
    assert d.shape == (rows, n, n)
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
    inside = xx * xx + yy * yy < (0.7 * R) ** 2
    outside = (xx * xx + yy * yy > (1.3 * R) ** 2) & (xx * xx + yy * yy < (0.45 * n) ** 2)
    assert abs(float(d[1][inside].mean()) / delta0 - 1) < 0.05
    assert abs(float(d[1][outside].mean())) < 0.05 * delta0
    assert out["voxel_size_m"] == geom.pixel_size_m
    # transmission gives beta the same way: T = exp(-2 k beta chord)
    beta0 = 1e-8
    t = np.exp(-2 * geom.wavenumber_per_m * beta0 * chord).astype(np.float32)
    out = api.tomo(None, theta, geom, transmission=np.broadcast_to(t, (a, rows, n)), center_px=(n - 1) / 2,
                   background=None)
    assert abs(float(out["beta"][1][inside].mean()) / beta0 - 1) < 0.05
    with pytest.raises(InputError):
        api.tomo(phase[:10], theta, geom)


def test_fsc_identical_and_independent_volumes():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((24, 24, 24)).astype(np.float32)
    same = api.fsc(base, base.copy(), 1e-6)
    assert np.all(same["fsc"][1:] > 0.999) and same["resolution_m"] is None
    other = api.fsc(base, rng.standard_normal((24, 24, 24)).astype(np.float32), 1e-6)
    assert other["resolution_m"] is not None and other["resolution_m"] > 2e-6  # crosses below Nyquist (2 voxels)
    assert other["resolution_m_1_7"] is not None


def test_simulate_and_calibrate():
    try:
        sim = api.simulate("pwf-beads", size=128, positions=2, seed=1)
    except Exception as exc:  # pragma: no cover - simulator not there yet
        pytest.skip(f"simulator unavailable: {exc}")
    assert sim.data.shape == (2, 1, 128, 128)
    ref, _ = sim.normalised()
    cal = api.calibrate(ref, sim.geometry.pixel_size_m)
    for ax in ("x", "y"):
        true = sim.truth[f"coherence_length_{ax}_m"]
        assert abs(cal[f"coherence_length_{ax}_m"] / true - 1) < 0.15, (ax, cal, true)


def test_methods_lists_only_importable_ones():
    from xspeckle.retrieve import get_method

    ms = api.methods()
    for m in ms:
        get_method(m)  # must not raise
