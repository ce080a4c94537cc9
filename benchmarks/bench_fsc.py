"""FSC benchmark: time of a full Fourier shell correlation of two volumes (rfftn + shell sums).

Volumes with a known spectrum plus white noise (as tests/test_fsc.py), so the measured 1/4 crossing is also
checked against the analytic one. Standalone: ``python benchmarks/bench_fsc.py [--quick]`` writes
``benchmarks/results/fsc.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench, main_standalone, md_table, section  # noqa: E402

TITLE = "FSC: two volumes, 3-D shells (rfftn, float64 shell sums)"

K0 = 0.1
SIG2 = 3 * np.exp(-4.0)  # FSC = 1/4 at 0.2 cycles/voxel (S(k) = exp(-(k/K0)^2))


def _pair(n: int, seed: int = 0):
    import scipy.fft as sf

    rng = np.random.default_rng(seed)
    shape = (n, n, n)
    fz, fy = np.fft.fftfreq(n), np.fft.fftfreq(n)
    fx = np.fft.rfftfreq(n)
    spec = sf.rfftn(rng.standard_normal(shape, dtype=np.float32), workers=-1)
    for i in range(n):  # plane by plane: S(k)^(1/2) filter without a full-size k array
        k = np.sqrt(fz[i] ** 2 + fy[:, None] ** 2 + fx[None, :] ** 2)
        spec[i] *= np.exp(-0.5 * (k / K0) ** 2).astype(np.float32)
    s = sf.irfftn(spec, s=shape, workers=-1).astype(np.float32)
    del spec
    a = s + rng.normal(0, np.sqrt(SIG2), shape).astype(np.float32)
    s += rng.normal(0, np.sqrt(SIG2), shape).astype(np.float32)
    return a, s


def run(quick: bool = False) -> str:
    from xspeckle.analysis.fsc import fsc, resolution_crossing

    sizes = (128, 256) if quick else (256, 512)
    rows, timings = [], []
    for n in sizes:
        a, b = _pair(n)
        out = {}
        t = bench(lambda a=a, b=b: out.update(fsc(a, b)), label=f"{n}^3", warmup=1 if n <= 256 else 0, repeats=3 if n <= 256 else 1)
        timings.append(t)
        k = resolution_crossing(out["frequency_per_px"], out["fsc"], 0.25)
        rows.append([f"{n}^3", f"{a.nbytes / 1e6:.0f} MB each", t.cell(scale=1, digits=2), f"{k:.4f} (0.2000)"])
        del a, b
    table = md_table(["volume", "size", "FSC time (s)", "1/4 crossing, cycles/voxel (analytic)"], rows)
    body = (f"{table}\n\n- Includes both rfftn (scipy.fft, all cores) and the plane-by-plane float64 shell sums.\n"
            "- A full 2160 x 2560^2 tomogram (56.6 GB) does not fit: use `crop=` (a central 1024^3 box) "
            "as performance.md §2 recommends.\n")
    return section(TITLE, body, "python benchmarks/bench_fsc.py" + (" --quick" if quick else ""), quick=quick,
                   timings=timings)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
