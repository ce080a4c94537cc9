"""Diffuser drift: shift recovery and the phase error with and without correction, MIST / UMPA / PWF.

Each scan is simulated twice from one seed: drift-free, and with 0.3-2 px repositioning errors of the diffuser
between the reference and the sample stacks (``make_preset(..., drift_px=...)``; the sample frames are the same,
the references were taken with the diffuser off by the drift). The drift is measured in the free-space wings
(``preprocess.estimate_drift``), the reference moved onto the sample's speckle (``correct_drift``), and each
method's phase compared with the truth (RMS over the frame less an 8 px border, after removing the median).

Standalone: ``python benchmarks/bench_drift.py [--quick]`` writes ``benchmarks/results/drift.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import main_standalone, md_table, section  # noqa: E402

TITLE = "Diffuser drift: shifts recovered and phase error restored (MIST, UMPA, PWF)"

DRIFT = np.array([[0.3, -0.7], [1.6, 1.9], [-2.0, 0.45], [0.8, -1.2]])


def _case(preset, size, positions, seed, methods):
    from xspeckle.preprocess import correct_drift
    from xspeckle.retrieve import make_retriever
    from xspeckle.simulate import make_preset

    d = DRIFT[:positions]
    s0 = make_preset(preset, size=size, positions=positions, seed=seed)
    s1 = make_preset(preset, size=size, positions=positions, seed=seed, drift_px=d)
    r0, d0 = s0.normalised()
    r1, d1 = s1.normalised()
    truth = s0.truth["phase"][0]

    def err(phase):
        e = (np.asarray(phase) - truth)[8:-8, 8:-8]
        e = e - np.median(e)
        return float(np.sqrt(np.mean(e**2)))

    t0 = time.perf_counter()
    rc, shifts = correct_drift(r1, d1[:, 0])
    t_corr = time.perf_counter() - t0
    rows = []
    for m in methods:
        e0 = err(make_retriever(m, r0, s0.geometry)(d0[:, 0])["phase"])
        e1 = err(make_retriever(m, r1, s1.geometry)(d1[:, 0])["phase"])
        e2 = err(make_retriever(m, rc, s1.geometry)(d1[:, 0])["phase"])
        rows.append([f"{preset} {size} px, P={positions}, seed {seed}", m, f"{np.abs(shifts - d).max():.4f}",
                     f"{e0:.3f}", f"{e1:.3f}", f"{e2:.3f}", f"{e2 / e0:.2f}", f"{1e3 * t_corr:.0f} ms"])
    return rows


def run(quick: bool = False) -> str:
    rows = []
    for seed in ((1,) if quick else (1, 2, 3)):
        rows += _case("mist-berry", 128, 4, seed, ("mist", "umpa"))
    for seed in ((1,) if quick else (1, 2)):
        rows += _case("pwf-beads", 128, 2, seed, ("pwf",))
    table = md_table(["scan", "method", "max shift error (px)", "phase error drift-free (rad)",
                      "with drift", "drift corrected", "corrected / drift-free", "estimate + shift time"], rows)
    body = (f"{table}\n\n"
            "- Drifts (dy, dx) px per position: " + ", ".join(f"({a:+.2f}, {b:+.2f})" for a, b in DRIFT) + ".\n"
            "- The issue asks for the drift-free error within 10 % and shifts within 0.05 px "
            "(tests/test_drift.py checks MIST and UMPA on seed 1 and the pipeline's `--drift wings`).\n"
            "- The reference is unknown within |s| + 1 px of the frame edge; that band is filled from the sample "
            "frame (air there). With a reflected border instead, PWF's corrected error was 3-4x the drift-free one.\n"
            "- MIST sees the Laplacian of the phase, so a uniform speckle shift barely moves its result; its large "
            "error here is the preset's own (mist-berry attenuates; see the method's warning).\n")
    return section(TITLE, body, "python benchmarks/bench_drift.py" + (" --quick" if quick else ""), quick=quick)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
