"""Acceptance on the independent simulator (issue 13 point 1): calibration and the tracking family on
data the retrievals' models did not make.  (PWF: tests/test_pwf_independent.py; LCS: tests/test_lcs.py.)

Measured at 128 px, seed 0 (the tolerances leave room for the noise of other seeds):

* ``indep-upstream`` (water berry with glass beads, thick diffuser, 17 keV): phase relative error
  MIST with the attenuating model (γ = δ/β of water, 1245) 0.206, LCS 0.225, UMPA 0.245; the default
  phase-object MIST reads the attenuation as phase (1.27) and says so in its warning.
* ``indep-beads`` coherence calibration: x and y at 0.948 / 0.949 of the truth (9 positions of a
  translation stage: 0.96 / 0.96).  The default estimator is biased short; on a fine-grained diffuser
  it reads 20–30 % short (docs/benchmarks.md), which this test does not hide: it checks the bias stays
  within 10 % on the preset's diffuser.
"""

from __future__ import annotations

import numpy as np
import pytest

from xspeckle.analysis.accuracy import phase_relative_error
from xspeckle.retrieve import make_retriever
from xspeckle.retrieve.coherence import calibrate
from xspeckle.simulate.independent import simulate_independent


def _relerr(phase, sim) -> float:
    return phase_relative_error(phase, sim.truth["phase"][0], sim.truth["sample_mask"][0])


@pytest.fixture(scope="module")
def upstream():
    sim = simulate_independent("upstream", size=128, seed=0)
    ref, dat = sim.normalised()
    return sim, ref, dat[:, 0]


def test_mist_attenuating_model_on_independent_data(upstream):
    sim, ref, dat = upstream
    mist = make_retriever("mist", ref, sim.geometry, model="attenuating", gamma=1245.0)(dat)
    lcs = make_retriever("lcs", ref, sim.geometry)(dat)
    e_mist, e_lcs = _relerr(mist["phase"], sim), _relerr(lcs["phase"], sim)
    assert e_mist <= 0.25, e_mist                          # measured 0.206
    assert e_mist <= 1.1 * e_lcs, (e_mist, e_lcs)          # LCS 0.225 on the same input
    assert not mist.get("warnings")


def test_phase_object_mist_warns_on_independent_attenuating_data(upstream):
    sim, ref, dat = upstream
    out = make_retriever("mist", ref, sim.geometry)(dat)
    assert _relerr(out["phase"], sim) > 0.5                # the phase-object model cannot fit this sample
    assert out.get("warnings") and "model=attenuating" in out["warnings"][0]


def test_calibration_bias_on_independent_diffuser():
    sim = simulate_independent("downstream", size=128, seed=0, positions=9, diffuser_step_px=20.0)
    ref, _ = sim.normalised()
    tx, ty = sim.truth["coherence_length_x_m"], sim.truth["coherence_length_y_m"]
    for frames in (ref[:1], ref):
        c = calibrate(frames, sim.geometry.pixel_size_m)
        rx, ry = c.coherence_length_x_m / tx, c.coherence_length_y_m / ty
        assert 0.90 <= rx <= 1.05 and 0.90 <= ry <= 1.05, (rx, ry)
