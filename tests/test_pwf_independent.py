"""PWF on data its own model did not make (issue 13): the independent simulator
(``xspeckle.simulate.independent``: exact angular-spectrum propagation, a 4-layer alumina grain
diffuser by multi-slice, 2 % bandwidth, 2x grid binned, detector blur, Poisson + read noise,
glass beads on a wooden stick).

Tolerances come from measurements at 128 px, seed 0 (benchmarks/bench_pwf_independent.py has
256 px and three seeds):

* fine-grained diffuser (0.2–1 µm grains, coverage 4/layer), true coherence lengths: the default
  L-BFGS solver 0.259 in 463 gradient evaluations; the paper's Algorithm S1 0.286 after 1500
  iterations; the former ``fast`` default 0.647.
* 4 positions 0.093 against 0.277 for one (calibrated coherence).
* multi-reference single shot (8 extra references within ±20 px): 0.148 / 0.090 against 0.156 /
  0.155 with the paper's zero-phase field (default) and 0.150 / 0.077 with phase-only (seeds 0 / 1);
  diffuser shifts recovered within 0.004 px.
"""

from __future__ import annotations

import subprocess
import sys

import h5py
import json
import numpy as np
import pytest

from xspeckle.analysis.accuracy import phase_relative_error
from xspeckle.retrieve.coherence import calibrate, optics_of
from xspeckle.retrieve.pwf import PWFModel
from xspeckle.simulate import write_simulated
from xspeckle.simulate.independent import simulate_independent

FINE = dict(grain_diameter_m=(0.2e-6, 1.0e-6), grain_coverage=4.0)


def _relerr(phase, sim) -> float:
    return phase_relative_error(phase, sim.truth["phase"][0], sim.truth["sample_mask"][0])


@pytest.fixture(scope="module")
def fine128():
    sim = simulate_independent("downstream", size=128, seed=0, positions=4, **FINE)
    ref, dat = sim.normalised()
    true_geo = sim.geometry.replace(coherence_length_x_m=sim.truth["coherence_length_x_m"],
                                    coherence_length_y_m=sim.truth["coherence_length_y_m"])
    return sim, ref, dat[:, 0], true_geo


def test_default_solver_beats_the_papers_scheme_in_fewer_iterations(fine128):
    sim, ref, dat, geo = fine128
    model = PWFModel(ref[:1], geo)
    default = model.solve(dat[None, :1])
    paper = model.solve(dat[None, :1], scheme="paper", max_iter=1500, min_iter=1500)
    fast = model.solve(dat[None, :1], scheme="fast")
    e_d, e_p, e_f = (_relerr(r.phase[0], sim) for r in (default, paper, fast))
    assert default.stop_reason[0] == "converged"
    assert e_d <= 0.30, e_d                                # measured 0.259
    assert e_d <= e_p + 0.005, (e_d, e_p)                  # never worse than the paper run to 1500
    assert default.iterations[0] <= 0.4 * 1500             # issue 16: <= 40 % of the paper's iterations
    assert e_f > e_d + 0.1                                 # the former default stopped far from the optimum


def test_more_positions_are_better_than_one(fine128):
    sim, ref, dat, _ = fine128
    one = PWFModel(ref[:1], sim.geometry).solve(dat[None, :1])
    four = PWFModel(ref, sim.geometry).solve(dat[None])
    e1, e4 = _relerr(one.phase[0], sim), _relerr(four.phase[0], sim)
    assert e4 <= 0.6 * e1, (e4, e1)                        # measured 0.093 vs 0.277
    assert set(one.stop_reason + four.stop_reason) == {"converged"}


@pytest.fixture(scope="module")
def stage_scan():
    # diffuser positions as a translation stage gives them: within ±20 px of position 0
    return simulate_independent("downstream", size=128, seed=1, positions=9, diffuser_step_px=20.0)


def test_multi_reference_registers_and_helps(stage_scan):
    sim = stage_scan
    ref, dat = sim.normalised()
    single = PWFModel(ref[:1], sim.geometry, diffuser_estimate="phase-only")
    multi = PWFModel(ref[:1], sim.geometry, diffuser_estimate="multi-reference", all_references=ref)
    # shifts of every reference relative to position 0, against the simulator's (same sign convention or not)
    true = sim.truth["diffuser_shifts_px"] - sim.truth["diffuser_shifts_px"][0]
    est = multi.reference_shifts_px
    assert min(np.abs(est - true).max(), np.abs(est + true).max()) < 0.05
    assert multi.parameters()["reference_frames_per_pixel"] > 4
    zero = PWFModel(ref[:1], sim.geometry)                                   # the paper's field (default)
    e_s = _relerr(single.solve(dat[None, :1, 0]).phase[0], sim)
    e_m = _relerr(multi.solve(dat[None, :1, 0]).phase[0], sim)
    e_z = _relerr(zero.solve(dat[None, :1, 0]).phase[0], sim)
    # the target, and the paper's zero-phase field beaten; against the single-reference phase-only
    # estimate no gain was measured (0.090 vs 0.077 here, 0.076 vs 0.077 at 256 px over 3 seeds): the
    # diffuser estimate is limited by model error (thick diffuser, bandwidth), not by photon noise
    assert e_m <= 0.15 and e_m < e_z, (e_m, e_z)            # measured 0.090 vs 0.155
    assert e_m <= e_s + 0.03, (e_m, e_s)


def test_multi_reference_errors(stage_scan):
    from xspeckle.errors import InputError, ParameterError

    ref, _ = stage_scan.normalised()
    with pytest.raises(InputError, match="single-shot"):
        PWFModel(ref[:2], stage_scan.geometry, diffuser_estimate="multi-reference", all_references=ref)
    with pytest.raises(InputError, match="at least 2"):
        PWFModel(ref[:1], stage_scan.geometry, diffuser_estimate="multi-reference")
    with pytest.raises(ParameterError):
        PWFModel(ref[:1], stage_scan.geometry, diffuser_estimate="multi-reference", all_references=ref,
                 multi_reference_field="bogus")


def test_multi_reference_through_the_command_line(stage_scan, tmp_path):
    scan = tmp_path / "scan.h5"
    write_simulated(stage_scan, scan)
    out = tmp_path / "out.h5"
    r = subprocess.run([sys.executable, "-m", "xspeckle", "retrieve", str(scan), str(out), "--method", "pwf",
                        "--positions", "0", "--param", "diffuser_estimate=multi-reference"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        p = json.loads(f.attrs["parameters"])
        assert p["diffuser_estimate"] == "multi-reference" and len(p["reference_shifts_px"]) == 9
        # the coherence calibration used every reference position of the scan, not only position 0
        ref, _ = stage_scan.normalised()
        g = stage_scan.geometry
        cal = calibrate(ref, g.pixel_size_m, **optics_of(g))
        assert p["coherence_length_x_m"] == pytest.approx(cal.coherence_length_x_m, rel=1e-3)
        assert p["coherence_length_x_m"] != pytest.approx(
            calibrate(ref[:1], g.pixel_size_m, **optics_of(g)).coherence_length_x_m, rel=1e-4)
        assert f["retrieval/stop_reason"][0].decode() == "converged"
        assert _relerr(f["retrieval/phase"][0], stage_scan) < 0.2
