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
    random_pairs,
    resolution_crossing,
)
from xspeckle.errors import InputError, ParameterError

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


def _field(shape, rng, power):
    """Gaussian random field with E|FFT|^2 = N_vox * power(k) (k in cycles/voxel): white noise filtered by sqrt."""
    fr = np.meshgrid(*[np.fft.fftfreq(n) for n in shape[:-1]], np.fft.rfftfreq(shape[-1]), indexing="ij")
    k = np.sqrt(sum(f * f for f in fr))
    return sf.irfftn(sf.rfftn(rng.standard_normal(shape)) * np.sqrt(power(k)), s=shape)


def _crossing_predicted(S, N, t):
    """Root of S(k) / (S(k) + N(k)) = t (seed 000 Eq. 18), the first one above k = 0 (cycles/voxel)."""
    from scipy.optimize import brentq

    return brentq(lambda k: S(k) / (S(k) + N(k)) - t, 1e-4, 0.5, xtol=1e-10)


# (signal power S(k), noise power N(k)) per DFT coefficient / N_vox, k in cycles/voxel
CASES = {
    # Gaussian spectrum, white noise: closed form K0 sqrt(ln((1 - t) / (t SIG2))) = 0.200 (1/4), 0.217 (1/7)
    "gaussian signal, white noise": (
        lambda k: np.exp(-((k / K0) ** 2)),
        lambda k: np.full_like(np.asarray(k, float), SIG2),
    ),
    # band-limited (super-Gaussian, order 6) signal with ramp-coloured noise N = k, the |k| spectrum FBP gives
    # to white projection noise: crossings 0.288 (1/4) and 0.300 (1/7)
    "band-limited signal, ramp noise": (lambda k: np.exp(-((k / 0.25) ** 6)), lambda k: 1.0 * np.asarray(k, float)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_crossings_within_one_shell_of_analytic_prediction(case):
    """Two volumes = one known-spectrum volume + independent noise of known power spectrum.

    Prediction: FSC(k) = S(k) / (S(k) + N(k)) (seed 000 Eq. 18, equal noise in both); the criterion t is met
    where S/N = t / (1 - t): t = 1/4 (seed 000 Eqs. 17-18) and t = 1/7 (Rosenthal & Henderson 2003).
    Tolerance: within one shell (1/n cycles/voxel) of the predicted crossing (measured over seeds 0-9: largest
    deviation 0.52 shell, standard deviation at most 0.23 shell, so the bound is > 4 sigma).
    """
    S, Nk = CASES[case]
    assert np.isclose(_crossing_predicted(*CASES["gaussian signal, white noise"], 0.25), _predicted(0.25))
    n = 80
    shape = (n, n, n)
    rng = np.random.default_rng(7)
    s = _field(shape, rng, S)
    a = (s + _field(shape, rng, Nk)).astype(np.float32)
    b = (s + _field(shape, rng, Nk)).astype(np.float32)
    vs = 0.65e-6
    r = fsc(a, b, voxel_size_m=vs)
    shell = 1.0 / n
    assert np.isclose(r["frequency_per_px"][1], shell)
    for t in (THRESHOLD_QUARTER, 1 / 7):
        k, kp = resolution_crossing(r["frequency_per_px"], r["fsc"], t), _crossing_predicted(S, Nk, t)
        assert k is not None and abs(k - kp) < shell, (case, t, k, kp)
    # the same crossing in SI units (1/m); resolution = full period 1 / kappa_c in metres
    km = resolution_crossing(r["frequency_per_m"], r["fsc"], THRESHOLD_QUARTER)
    assert np.isclose(km, resolution_crossing(r["frequency_per_px"], r["fsc"], THRESHOLD_QUARTER) / vs)
    # twice the noise power: the crossing moves down to the root of S / (S + 2N) = 1/4
    a2 = (s + np.sqrt(2) * _field(shape, rng, Nk)).astype(np.float32)
    b2 = (s + np.sqrt(2) * _field(shape, rng, Nk)).astype(np.float32)
    r2 = fsc(a2, b2)
    k2 = resolution_crossing(r2["frequency_per_px"], r2["fsc"], THRESHOLD_QUARTER)
    k2p = _crossing_predicted(S, lambda k: 2 * Nk(k), THRESHOLD_QUARTER)
    assert abs(k2 - k2p) < shell, (k2, k2p)
    assert k2p < _crossing_predicted(S, Nk, THRESHOLD_QUARTER) - shell / 2  # the shift is resolvable


def test_random_pairs_are_distinct_and_averaged():
    # seed 000 Methods: five FSC "from different pairs of tomograms" (PWF) / "different random splits" (LCS)
    for seed in range(5):
        pairs = random_pairs(12, 5, seed=seed)
        keys = {frozenset(p) for p in pairs}
        assert len(keys) == 5 and all(len(k) == 2 and max(k) < 12 for k in keys)
    assert {frozenset(p) for p in random_pairs(3, 3, seed=0)} == {frozenset(p) for p in [(0, 1), (0, 2), (1, 2)]}
    splits = random_pairs(4, 3, split=True, seed=0)  # 4 volumes: exactly 3 distinct 2/2 splits
    assert {frozenset((a, b)) for a, b in splits} == {
        frozenset(((0, 1), (2, 3))), frozenset(((0, 2), (1, 3))), frozenset(((0, 3), (1, 2)))}
    odd = random_pairs(7, 5, split=True, seed=3)  # 3/3 with one left out
    assert all(len(a) == len(b) == 3 and not set(a) & set(b) for a, b in odd)
    with pytest.raises(ParameterError, match="only 3 distinct pairs"):
        random_pairs(3, 4)
    with pytest.raises(ParameterError, match="distinct half/half splits"):
        random_pairs(4, 4, split=True)
    # the averaged curve is the mean of the individual FSCs of exactly the pairs it reports
    rng = np.random.default_rng(8)
    shape = (32, 32, 32)
    s = _signal(shape, rng)
    vols = [(s + rng.normal(0, np.sqrt(SIG2), shape)).astype(np.float32) for _ in range(5)]
    out = fsc_random_pairs(vols, n_pairs=4, seed=2)
    assert len({frozenset(p) for p in out["pairs"]}) == 4
    mean = np.mean([fsc(vols[i], vols[j])["fsc"] for i, j in out["pairs"]], axis=0)
    assert np.allclose(out["fsc"], mean, atol=1e-12)
    assert json.loads(json.dumps(out["pairs"])) == out["pairs"]  # plain ints


def test_cli_fsc_json_one_object_with_predicted_resolutions(tmp_path, capsys):
    """``xspeckle fsc A B --json`` (interfaces.md): one JSON object, resolution_m (1/4) and resolution_m_1_7."""
    from xspeckle.cli import run
    from xspeckle.io.results import write_volume

    rng = np.random.default_rng(9)
    n = 48
    shape = (n, n, n)
    s = _signal(shape, rng).astype(np.float32)
    vs = 1.1e-6
    pa = write_volume(tmp_path / "a.h5", delta=s + rng.normal(0, np.sqrt(SIG2), shape), beta=s, voxel_size_m=vs)
    pb = write_volume(tmp_path / "b.h5", delta=s + rng.normal(0, np.sqrt(SIG2), shape), beta=s, voxel_size_m=vs)
    code = run(["fsc", str(pa), str(pb), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and not err.strip(), err
    assert len(out.strip().splitlines()) == 1  # exactly one JSON object on stdout
    res = json.loads(out)
    assert isinstance(res, dict) and res["dataset"] == "delta"
    for key, t in (("resolution_m", THRESHOLD_QUARTER), ("resolution_m_1_7", 1 / 7)):
        k_meas = vs / res[key]  # cycles/voxel of the crossing
        assert abs(k_meas - _predicted(t)) < 1.0 / n, (key, k_meas, _predicted(t))  # within one shell
    assert res["resolution_m_1_7"] < res["resolution_m"]


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
