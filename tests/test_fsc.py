"""FSC/FRC against an analytic prediction: signal with a known spectrum plus independent white noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.fft as sf

from xspeckle.analysis.fsc import (
    THRESHOLD_QUARTER,
    central_crop,
    frc,
    fsc,
    fsc_files,
    fsc_files_random_pairs,
    fsc_random_pairs,
    resolution_crossing,
)
from xspeckle.errors import InputError

K0 = 0.1  # signal power S(k) = exp(-(k / K0)^2) per DFT coefficient / N (k in cycles/voxel)
SIG2 = 3 * np.exp(-4.0)  # noise variance: S/N = 1/3 (FSC = 1/4) exactly at k = 0.2 cycles/voxel


def _signal(shape, rng):
    fr = np.meshgrid(*[np.fft.fftfreq(n) for n in shape[:-1]], np.fft.rfftfreq(shape[-1]), indexing="ij")
    k = np.sqrt(sum(f * f for f in fr))
    # white unit noise filtered by sqrt(S(k)): E|FFT(s)|^2 = N S(k), E|FFT(noise)|^2 = N SIG2
    return sf.irfftn(sf.rfftn(rng.standard_normal(shape)) * np.exp(-0.5 * (k / K0) ** 2), s=shape)


def _predicted(threshold, noise_var=SIG2):
    # FSC = S / (S + N) (seed 000 Eq. 18) = t  <=>  S/N = t / (1 - t)  <=>  k = K0 sqrt(ln((1 - t) / (t N)))
    return K0 * np.sqrt(np.log((1 - threshold) / (threshold * noise_var)))


def test_fsc_3d_crossings_match_prediction():
    rng = np.random.default_rng(0)
    shape = (64, 64, 64)
    s = _signal(shape, rng)
    a = s + rng.normal(0, np.sqrt(SIG2), shape)
    b = s + rng.normal(0, np.sqrt(SIG2), shape)
    r = fsc(a, b, voxel_size_m=2e-6)
    assert r["fsc"].shape == (33,) and np.isclose(r["frequency_per_px"][-1], 0.5)
    for t in (THRESHOLD_QUARTER, 1 / 7):
        k = resolution_crossing(r["frequency_per_px"], r["fsc"], t)
        assert abs(k / _predicted(t) - 1) < 0.03, (t, k, _predicted(t))  # 0.200 and 0.217 cycles/voxel
    km = resolution_crossing(r["frequency_per_m"], r["fsc"], 0.25)
    assert np.isclose(km, resolution_crossing(r["frequency_per_px"], r["fsc"], 0.25) / 2e-6)
    # the measured curve follows S/(S+N) shell by shell between 0.1 and 0.3 cycles/voxel
    f = r["frequency_per_px"]
    S = np.exp(-((f / K0) ** 2))
    sel = (f > 0.1) & (f < 0.3)
    assert np.abs(r["fsc"][sel] - S[sel] / (S[sel] + SIG2)).max() < 0.06


def test_frc_2d_crossing_matches_prediction():
    rng = np.random.default_rng(1)
    shape = (384, 384)
    s = _signal(shape, rng)
    r = frc(s + rng.normal(0, np.sqrt(SIG2), shape), s + rng.normal(0, np.sqrt(SIG2), shape), pixel_size_m=1e-6)
    k = resolution_crossing(r["frequency_per_px"], r["fsc"], 0.25)
    assert abs(k / _predicted(0.25) - 1) < 0.03, k


def test_identical_and_independent():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((32, 32, 32))
    r = fsc(a, a)
    assert np.allclose(r["fsc"][1:], 1.0)
    r2 = fsc(a, rng.standard_normal((32, 32, 32)))
    assert abs(r2["fsc"][3:].mean()) < 0.03 and np.abs(r2["fsc"][3:]).max() < 0.2
    assert resolution_crossing(r["frequency_per_px"], r["fsc"], 0.25) is None
    with pytest.raises(InputError, match="shapes"):
        fsc(a, a[:-1])


def test_random_pairs_and_splits():
    rng = np.random.default_rng(4)
    shape = (48, 48, 48)
    s = _signal(shape, rng)
    vols = [s + rng.normal(0, np.sqrt(SIG2), shape) for _ in range(6)]
    pairs = fsc_random_pairs(vols, n_pairs=5, seed=1)
    assert pairs["n_pairs"] == 5
    assert abs(pairs["crossing_per_m"] / _predicted(0.25) - 1) < 0.04  # voxel 1 m: per_m == per_voxel
    split = fsc_random_pairs(vols, n_pairs=5, split=True, seed=1)
    # 3/3 split: each half averages 3 copies, noise variance SIG2 / 3
    assert abs(split["crossing_per_m"] / _predicted(0.25, SIG2 / 3) - 1) < 0.04
    assert split["crossing_per_m"] > pairs["crossing_per_m"]


def test_crop_and_crossing_interpolation():
    assert central_crop((10, 20, 30), 8) == (slice(1, 9), slice(6, 14), slice(11, 19))
    f = np.array([0.0, 0.1, 0.2, 0.3])
    c = np.array([1.0, 0.5, 0.15, 0.05])
    assert np.isclose(resolution_crossing(f, c, 0.25), 0.1 + 0.1 * (0.5 - 0.25) / (0.5 - 0.15))


def test_fsc_files_json(tmp_path):
    from xspeckle.io.results import write_volume

    rng = np.random.default_rng(5)
    shape = (40, 40, 40)
    s = _signal(shape, rng).astype(np.float32)
    vs = 1.3e-6
    pa = write_volume(tmp_path / "a.h5", delta=s + rng.normal(0, np.sqrt(SIG2), shape), beta=s, voxel_size_m=vs)
    pb = write_volume(tmp_path / "b.h5", delta=s + rng.normal(0, np.sqrt(SIG2), shape), beta=s, voxel_size_m=vs)
    out = fsc_files(pa, pb, dataset="delta")
    txt = json.dumps(out)  # must be JSON-serialisable
    back = json.loads(txt)
    assert abs(back["resolution_m"] / (vs / _predicted(0.25)) - 1) < 0.05  # full period 1/kappa, metres
    assert back["resolution_m_1_7"] < back["resolution_m"]
    assert len(back["curve"]["fsc"]) == len(back["curve"]["frequency_per_m"]) == 21
    cropped = fsc_files(pa, pb, dataset="delta", crop=24)
    assert cropped["shape"] == [24, 24, 24]
    # identical beta: never crosses -> None (JSON null), never a fake number
    same = fsc_files(pa, pb, dataset="beta")
    assert same["resolution_m"] is None and json.loads(json.dumps(same))["resolution_m"] is None


def test_fsc_files_random_pairs(tmp_path):
    from xspeckle.io.results import write_volume

    rng = np.random.default_rng(6)
    shape = (32, 32, 32)
    s = _signal(shape, rng).astype(np.float32)
    paths = [write_volume(tmp_path / f"v{i}.h5", delta=s + rng.normal(0, np.sqrt(SIG2), shape), beta=s,
                          voxel_size_m=1e-6) for i in range(4)]
    out = json.loads(json.dumps(fsc_files_random_pairs(paths, n_pairs=3)))
    assert out["n_pairs"] == 3 and len(out["curve"]["fsc_std"]) == 17
    assert abs(out["resolution_m"] / (1e-6 / _predicted(0.25)) - 1) < 0.08
