"""360-degree half-acquisition stitching and per-projection offset/tilt removal, against analytic sinograms.

* Half acquisition: a rod with three beads (tests/test_sinogram.py) scanned over [0, 360) in 1-degree steps with
  the axis near one edge of a detector about half the object wide; the axis is estimated from the overlap of the
  two half turns, the stitched sinogram is reconstructed and each bead's mean delta compared with the
  180-degree scan of a detector covering the whole object.
* Offset and tilt: the same phantom inside air wings, with a systematic offset of 0.3 rad plus 0.1 rad random
  per angle and a tilt of 0.003 +- 0.001 rad/px added to every projection; RMS delta error in the rod and worst
  bead-mean change, without correction, with ``--dc wings`` and with algotom's double-wedge filter.

Standalone: ``python benchmarks/bench_sinogram.py [--quick]`` writes ``benchmarks/results/sinogram.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import main_standalone, md_table, section  # noqa: E402

TITLE = "360-degree half acquisition and integrated-phase offset/tilt"

OBJ = [(1.0, 0.6, 0.6, 0, 0, 0), (0.5, 0.12, 0.12, 0.3, 0.2, 0), (0.5, 0.1, 0.1, -0.3, -0.25, 0),
       (0.5, 0.08, 0.08, 0.1, -0.35, 0)]
PHASE = -0.01  # rad per px of path at delta 1


def _beads(n, center, R):
    yy, xx = np.mgrid[:n, :n]
    return [np.hypot(xx - (center + x0 * R), yy - ((n - 1) / 2 - y0 * R)) < 0.7 * a * R for _, a, _, x0, y0, _ in OBJ]


def _half(W, cor):
    from xspeckle.tomo.fbp import fbp, radon_ellipses
    from xspeckle.tomo.sinogram import convert_360_to_180, estimate_center_360

    n = int(round(2 * cor + 1)) if cor > W / 2 else int(round(2 * (W - cor) - 1))
    th = np.arange(0.0, 360.0, 1.0)
    s360 = (PHASE * radon_ellipses(OBJ, th, W, radius_px=n / 2, center=cor)).astype(np.float32)
    t0 = time.perf_counter()
    c, ov, side = estimate_center_360(s360, th)
    t_est = time.perf_counter() - t0
    t0 = time.perf_counter()
    s180, t180, c180, _ = convert_360_to_180(s360, th, center=c)
    t_conv = time.perf_counter() - t0
    rec = fbp(s180, t180, center=c180)
    th180 = np.arange(0.0, 180.0, 1.0)
    ref = fbp((PHASE * radon_ellipses(OBJ, th180, s180.shape[-1], radius_px=n / 2, center=c180)).astype(np.float32),
              th180, center=c180)
    worst = max(abs(rec[m].mean() / ref[m].mean() - 1) for m in _beads(s180.shape[-1], c180, n / 2))
    return [f"{W} px, axis {cor}", f"{c:.3f} ({c - cor:+.3f})", f"{ov:.2f}", f"{s180.shape[-1]} px",
            f"{100 * worst:.2f} %", f"{1e3 * t_est:.0f} / {1e3 * t_conv:.0f} ms"]


def _dc(W):
    import algotom.prep.filtering as filt

    from xspeckle.tomo.fbp import fbp, radon_ellipses
    from xspeckle.tomo.sinogram import remove_offset_tilt

    th = np.arange(0.0, 180.0, 180.0 / W)
    small = [(v, a * 0.8, b * 0.8, x * 0.8, y * 0.8, p) for v, a, b, x, y, p in OBJ]
    s = (PHASE * radon_ellipses(small, th, W)).astype(np.float32)
    rng = np.random.default_rng(0)
    x = np.arange(W) - (W - 1) / 2
    bad = (s + 0.3 + rng.normal(0, 0.1, th.size)[:, None]
           + (0.003 + rng.normal(0, 0.001, th.size))[:, None] * x[None, :]).astype(np.float32)
    clean = fbp(s, th)
    yy, xx = np.mgrid[:W, :W]
    rod = np.hypot(yy - (W - 1) / 2, xx - (W - 1) / 2) < 0.45 * W / 2
    masks = _beads(W, (W - 1) / 2, 0.8 * W / 2)[1:]  # the three beads
    rows = []
    for label, sino in (("none", bad), ("`--dc wings`", remove_offset_tilt(bad)),
                        ("algotom double-wedge", filt.double_wedge_filter(bad, center=(W - 1) / 2, sino_type="180"))):
        rec = fbp(np.asarray(sino, np.float32), th)
        e = float(np.sqrt(np.mean((rec - clean)[rod] ** 2)) / np.abs(clean[rod]).mean())
        worst = max(abs(rec[m].mean() / clean[m].mean() - 1) for m in masks)
        rows.append([f"{W} px", label, f"{100 * e:.2f} %", f"{100 * worst:.2f} %"])
    return rows


def run(quick: bool = False) -> str:
    cases = [(80, 70.3), (80, 8.6)] if quick else [(80, 70.3), (80, 8.6), (256, 230.0), (256, 20.4)]
    half = md_table(["detector, true axis", "estimated axis (error) px", "overlap px", "stitched width",
                     "worst bead delta vs 180-degree scan", "estimate / stitch time"],
                    [_half(W, c) for W, c in cases])
    dc = md_table(["detector", "correction", "RMS delta error in the rod", "worst bead-mean change"],
                  sum((_dc(W) for W in ((96,) if quick else (96, 256))), []))
    body = (f"### Half acquisition (360 degrees, offset axis)\n\n{half}\n\n"
            "- The issue's criterion (same delta as the 180-degree equivalent within 2 %) is met; "
            "tests/test_sinogram.py checks it through `xspeckle tomo --half-acquisition`.\n\n"
            f"### Offset and tilt of integrated phase\n\n{dc}\n\n"
            "- The double-wedge filter cannot see an offset or tilt shared by all angles (angular frequency 0 lies "
            "inside the wedge), so xspeckle offers the wing fit only.\n"
            "- The first stitch time includes importing algotom (about 2 s).\n")
    return section(TITLE, body, "python benchmarks/bench_sinogram.py" + (" --quick" if quick else ""), quick=quick)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
