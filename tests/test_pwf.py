"""PWF retrieval on simulated pwf-beads (10 keV, 650 nm px, L1 3 mm, L2 20 mm, Poisson noise).

Accuracy metric: relative RMS phase error ``‖φ − φ_true‖ / ‖φ_true‖`` over the truth
``sample_mask``.  Measured at 128 px (beads peak −9.4 rad), coherence lengths given:
12 positions 0.040 (tolerance 0.05, the issue's DONE figure), 4 positions 0.052 (tolerance
0.07), one position 0.107 (tolerance 0.13; its fixed point — both schemes converge to it — is
limited by the method, not the iteration: noise-free data give the same error).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from xspeckle.errors import InputError, ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve import make_retriever
from xspeckle.retrieve.pwf import PWFModel, PWFRetriever, fourier_resample, pwf, zero_background_plane
from xspeckle.simulate import make_preset

XC, YC = 3.48e-6, 4.31e-6


@pytest.fixture(scope="module")
def beads12():
    s = make_preset("pwf-beads", size=128, seed=5, positions=12)
    ref, dat = s.normalised()
    return s, ref, dat[:, 0]


def _relerr(phase, s):
    tr, m = s.truth["phase"][0], s.truth["sample_mask"][0]
    return float(np.linalg.norm((phase - tr)[m]) / np.linalg.norm(tr[m]))


def _geom_given(s):
    return s.geometry.replace(coherence_length_x_m=XC, coherence_length_y_m=YC)


def test_multi_position_accuracy_and_sign(beads12):
    s, ref, dat = beads12
    r = pwf(reference=ref, sample=dat, geometry=_geom_given(s))
    assert r.phase.shape == (128, 128) and r.phase.dtype == np.float32
    err = _relerr(r.phase, s)
    assert err <= 0.05, err
    m = s.truth["sample_mask"][0]
    assert float(r.phase[m].mean()) < 0                                # negative in matter
    assert r.phase.min() == pytest.approx(s.truth["phase"][0].min(), rel=0.1)
    # background zeroed on the 5 % wings, transmission ≈ truth, residual ≈ noise level
    nw = int(np.ceil(0.05 * 128))
    assert abs(float(np.median(r.phase[:, :nw]))) < 0.1
    assert np.sqrt(np.mean((r.transmission - s.truth["transmission"][0]) ** 2)) < 0.03
    assert np.all(np.isfinite(r.residual)) and 0 < float(r.residual.mean()) < 0.05
    assert r.iterations[0] < 1000 and r.stop_reason[0] == "converged"
    assert 0 < len(r.loss_history[0]) <= r.iterations[0] + 1        # lbfgs: iterations count every evaluation


def test_single_position(beads12):
    s, ref, dat = beads12
    r = pwf(reference=ref[:1], sample=dat[:1], geometry=_geom_given(s))
    assert _relerr(r.phase, s) <= 0.13
    m = s.truth["sample_mask"][0]
    assert float(r.phase[m].mean()) < 0.5 * float(s.truth["phase"][0][m].mean())   # same sign, right size


@pytest.fixture(scope="module")
def beads256_one():
    s = make_preset("pwf-beads", size=256, seed=1, positions=1)
    ref, dat = s.normalised()
    return s, ref, dat[:, 0]


def test_single_material_prior_single_shot(beads256_one):
    """One position at 256 px (peak -18.8 rad): the paper's free (Re ψ, Im ψ) objective has its
    minimum 0.07 from the truth (exact, noise-free model data give 0.09: the bias is in the
    objective, not the optimiser); the single-material prior ψ = (β/δ + i)φ with the true glass
    δ/β halves it (measured 0.036, tolerance 0.05 = the issue's figure) in about half the iterations."""
    from xspeckle.simulate.presets import MATERIALS

    s, ref, dat = beads256_one
    d, b = MATERIALS["glass@10keV"]
    free = pwf(reference=ref, sample=dat, geometry=_geom_given(s))
    sm = pwf(reference=ref, sample=dat, geometry=_geom_given(s), delta_over_beta=d / b)
    e_free, e_sm = _relerr(free.phase, s), _relerr(sm.phase, s)
    assert e_sm <= 0.05, e_sm
    assert e_sm < 0.7 * e_free, (e_sm, e_free)
    assert sm.iterations[0] < free.iterations[0]
    assert sm.parameters["delta_over_beta"] == pytest.approx(d / b)
    # transmission follows the constraint T = exp(2 φ/(δ/β)) and matches the truth
    np.testing.assert_allclose(sm.transmission, np.exp(2 * sm.phase / (d / b)), rtol=1e-5)
    assert np.sqrt(np.mean((sm.transmission - s.truth["transmission"][0]) ** 2)) < 0.01
    with pytest.raises(ParameterError):
        pwf(reference=ref, sample=dat, geometry=_geom_given(s), delta_over_beta=-1.0)


def test_paper_scheme_vs_fast(beads12):
    """Same input: our default reaches the paper scheme's accuracy in fewer iterations."""
    s, ref, dat = beads12
    g = _geom_given(s)
    model = PWFModel(ref[:4], g)
    fast = model.solve(dat[None, :4], scheme="fast")
    paper = model.solve(dat[None, :4], scheme="paper")
    e_fast, e_paper = _relerr(fast.phase[0], s), _relerr(paper.phase[0], s)
    assert paper.stop_reason[0] == "correlation" and paper.iterations[0] >= 300     # guard: min 300
    assert fast.iterations[0] < 0.6 * paper.iterations[0]
    assert e_fast <= e_paper + 0.01
    assert e_fast <= 0.07 and e_paper <= 0.07
    assert paper.parameters["n_restart"] == [0] and paper.parameters["eta"] == [1.0, 1.0]


def test_retriever_calibrates_and_records(beads12):
    s, ref, dat = beads12
    r = make_retriever("pwf", ref[:2], s.geometry)                      # geometry without coherence
    assert isinstance(r, PWFRetriever)
    p = r.parameters
    assert p["coherence_source"] == "calibrated"
    assert abs(p["coherence_length_x_m"] / XC - 1) < 0.08
    assert abs(p["coherence_length_y_m"] / YC - 1) < 0.08
    out = r(dat[:2])
    assert set(out) == {"phase", "transmission", "residual", "iterations", "stop_reason"}
    for k in ("phase", "transmission", "residual"):
        v = out[k]
        assert v.shape == (128, 128) and v.dtype == np.float32 and np.all(np.isfinite(v))
    assert out["iterations"] == r.parameters["iterations"] and out["stop_reason"] == r.parameters["stop_reason"]
    assert r.parameters["iterations"] > 0 and r.parameters["stop_reason"] in ("converged", "max_iter")
    json.dumps({k: v for k, v in r.parameters.items()})
    assert _relerr(out["phase"], s) < 0.13


def test_batch_matches_single(beads12):
    s, ref, dat = beads12
    model = PWFModel(ref[:1], _geom_given(s))
    rng = np.random.default_rng(0)
    b = np.stack([dat[:1], dat[:1] * (1 + 0.01 * rng.standard_normal(dat[:1].shape)).astype(np.float32)])
    both = model.solve(b, max_iter=120)
    for i in range(2):
        one = model.solve(b[i:i + 1], max_iter=120)
        assert one.iterations == [both.iterations[i]]
        np.testing.assert_allclose(one.phase[0], both.phase[i], atol=2e-3)


def test_divergence_guard(beads12):
    s, ref, dat = beads12
    model = PWFModel(ref[:1], _geom_given(s))
    r = model.solve(dat[None, :1], scheme="fast", eta=(200.0, 200.0), max_iter=80, min_iter=80)
    assert r.parameters["n_divergence_resets"][0] > 0
    assert np.all(np.isfinite(r.phase)) and np.all(np.isfinite(r.loss_history[0]))


def test_input_errors(beads12):
    s, ref, dat = beads12
    up = Geometry(energy_ev=10000.0, pixel_size_m=650e-9, sample_detector_distance_m=0.5)
    with pytest.raises(InputError):
        PWFRetriever(ref[:1], up)
    model = PWFModel(ref[:1], _geom_given(s))
    with pytest.raises(InputError):
        model.solve(dat[:2][None])
    with pytest.raises(ParameterError):
        model.solve(dat[None, :1], scheme="adam")


def test_fourier_resample_and_plane():
    rng = np.random.default_rng(1)
    spec = np.zeros((64, 80), complex)
    spec[:6, :6] = rng.standard_normal((6, 6)) + 1j * rng.standard_normal((6, 6))
    img = (2.0 + np.real(np.fft.ifft2(spec)) * 50).astype(np.float32)       # band-limited
    down = fourier_resample(img, (52, 64))
    back = fourier_resample(down, (64, 80))
    np.testing.assert_allclose(back, img, atol=1e-4)
    assert float(down.mean()) == pytest.approx(float(img.mean()), rel=1e-5)
    yy, xx = np.mgrid[:40, :50].astype(np.float32)
    plane = 0.3 * yy - 0.1 * xx + 2.0
    bg = np.zeros((40, 50), bool)
    bg[:, :3] = bg[:, -3:] = True
    bump = np.zeros((40, 50), np.float32)
    bump[10:30, 15:35] = -5
    out = zero_background_plane((plane + bump)[None], bg)[0]
    np.testing.assert_allclose(out, bump, atol=1e-4)


def test_retriever_picklable_and_rejects_unknown_options(beads12):
    import pickle

    s, ref, dat = beads12
    r = PWFRetriever(ref[:1], _geom_given(s), scheme="paper", max_iter=20, min_iter=20)
    r2 = pickle.loads(pickle.dumps(r))
    out = r2(dat[:1])
    assert r2.parameters["iterations"] == 20 and out["phase"].shape == (128, 128)
    with pytest.raises(ParameterError):
        PWFRetriever(ref[:1], _geom_given(s), shceme="paper")


def test_phase_only_diffuser_estimate_retrieves_closer_to_the_truth():
    """tomo-beads, 96 px, 6 angles, both positions, photon noise, two seeds: the phase-only diffuser field
    (Richardson–Lucy + Gerchberg–Saxton) gives a lower phase error than the paper's zero-phase field (measured
    rms ratio 0.90 and 0.76), with the same step normaliser c (so a_re, a_im keep the paper's meaning).
    The tomograms: bench_tomo_e2e.py."""
    from xspeckle.preprocess import normalise

    ratios = []
    for seed in (0, 1):
        sim = make_preset("tomo-beads", size=96, angles=6, seed=seed)
        flat, dark = sim.flat.mean(0), sim.dark.mean(0)
        ref = normalise(sim.reference, flat, dark)
        data = np.moveaxis(normalise(sim.data, flat, dark), 1, 0)
        truth = np.asarray(sim.truth["phase"], np.float64)
        err, c = {}, {}
        for est in ("zero-phase", "phase-only"):
            model = PWFModel(ref, sim.geometry, diffuser_estimate=est)
            res = model.solve(data)
            err[est] = float(np.sqrt(((res.phase - truth) ** 2).mean()) / np.abs(truth).max())
            c[est] = model.c
            assert model.parameters()["diffuser_estimate"] == est
        assert c["phase-only"] == pytest.approx(c["zero-phase"])
        ratios.append(err["phase-only"] / err["zero-phase"])
    assert np.mean(ratios) < 0.92, ratios
    assert max(ratios) < 1.0, ratios


def test_diffuser_estimate_option_is_checked():
    sim = make_preset("pwf-beads", size=64, positions=1, noise=False)
    with pytest.raises(ParameterError, match="diffuser_estimate"):
        PWFModel(np.ones((1, 64, 64), np.float32), sim.geometry, diffuser_estimate="magic")
