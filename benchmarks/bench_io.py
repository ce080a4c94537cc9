"""I/O benchmark: scan read throughput per angle and flat/dark normalisation time.

Standalone: ``python benchmarks/bench_io.py [--quick]`` writes ``benchmarks/results/io.md``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, bench, main_standalone, md_table, section  # noqa: E402

TITLE = "I/O: scan reading and flat/dark normalisation"


def _synthetic(p: int, a: int, h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = rng.integers(800, 1200, (p, h, w), dtype=np.uint16)
    data = np.empty((p, a, h, w), np.uint16)
    for i in range(a):
        data[:, i] = (ref * rng.uniform(0.7, 0.9)).astype(np.uint16)
    flat = rng.integers(1000, 1100, (4, h, w), dtype=np.uint16)
    dark = rng.integers(90, 110, (4, h, w), dtype=np.uint16)
    return data, ref, flat, dark


def run(quick: bool = False) -> str:
    from xspeckle.geometry import Geometry
    from xspeckle.io.scan import Scan, write_scan
    from xspeckle.preprocess import normalise

    h, w = (540, 640) if quick else (2160, 2560)
    p, a = (2, 3) if quick else (4, 4)
    repeats = 3 if quick else 5
    geom = Geometry(energy_ev=25000.0, pixel_size_m=6.5e-6, sample_detector_distance_m=0.7)
    data, ref, flat, dark = _synthetic(p, a, h, w)
    rows, timings = [], []
    with tempfile.TemporaryDirectory(dir=REPO / "benchmarks") as td:
        for comp in (None, "gzip"):
            path = write_scan(Path(td) / f"scan_{comp}.h5", data=data, reference=ref, flat=flat, dark=dark,
                              geometry=geom, theta_deg=np.arange(a, dtype=float), compression=comp)
            size_mb = path.stat().st_size / 1e6
            with Scan(path) as s:
                counter = iter(range(10**9))
                t = bench(lambda: s.sample(next(counter) % a), label=f"read {comp}", warmup=1, repeats=repeats)
                mb = p * h * w * 2 / 1e6  # uint16 on disk (uncompressed equivalent)
                rows.append([f"synthetic uint16, {comp or 'no'} compression ({size_mb:.0f} MB file)",
                             f"{p} x {h} x {w}", t.cell(), f"{mb / t.median_s:.0f}"])
                timings.append(t)
        fr = REPO.parent / "shared" / "data" / "real" / "fourrod_mct" / "fourrod_13pos_rows000-256.h5"
        if fr.is_file():
            with Scan(fr) as s:
                t = bench(lambda: s.sample(0), label="fourrod", warmup=1, repeats=repeats)
                t_ref = bench(lambda: s.reference(), label="fourrod ref", warmup=0, repeats=repeats)
                mb = s.n_positions * 256 * 2220 * 4 / 1e6
                rows.append(["FourRod real data, float32, gzip+shuffle", "13 x 256 x 2220", t.cell(), f"{mb / t.median_s:.0f}"])
                rows.append(["FourRod references (same file)", "13 x 256 x 2220", t_ref.cell(), f"{mb / t_ref.median_s:.0f}"])
                timings += [t, t_ref]
    table1 = md_table(["scan file", "frames per angle (P x H x W)", "read one angle [ms]", "MB/s (raw pixels)"], rows)

    # normalisation of one angle: (I - dark) / (flat - dark), float32
    f_mean = flat.mean(0, dtype=np.float64).astype(np.float32)
    d_mean = dark.mean(0, dtype=np.float64).astype(np.float32)
    stack = data[:, 0].astype(np.float32)
    nrows = []
    for label, fl, dk in (("flat + dark", f_mean, d_mean), ("flat only", f_mean, None), ("dark only", None, d_mean)):
        t = bench(lambda: normalise(stack, fl, dk), label=label, warmup=1, repeats=repeats)
        timings.append(t)
        nrows.append([label, f"{p} x {h} x {w}", t.cell(), f"{t.median_s / p * 1e3:.1f}"])
    bad = stack.copy()
    bad.reshape(-1)[:: 997] = np.nan  # ~0.1 % NaN pixels: repair path
    t = bench(lambda: normalise(bad, f_mean, d_mean), label="nan", warmup=1, repeats=repeats)
    timings.append(t)
    nrows.append(["flat + dark, 0.1 % NaN pixels repaired", f"{p} x {h} x {w}", t.cell(), f"{t.median_s / p * 1e3:.1f}"])
    table2 = md_table(["normalise", "stack", "time [ms]", "per frame [ms]"], nrows)

    body = (
        "Reading one projection angle (all diffuser positions) with `xspeckle.io.Scan.sample`, which converts to\n"
        "float32 and checks every frame for NaN/inf.  The synthetic files were just written, so they are read\n"
        "from the page cache (disk speed is not measured); gzip costs CPU time per frame.\n\n"
        + table1
        + "\n\nFlat/dark normalisation with `xspeckle.preprocess.normalise` on one angle's stack:\n\n"
        + table2
    )
    return section(TITLE, body, "python benchmarks/bench_io.py" + (" --quick" if quick else ""), quick=quick, timings=timings)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
