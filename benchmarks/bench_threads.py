"""Thread defaults by measurement: FFT workers and fused-kernel threads against array size (issue 16).

For each size, in rounds (each round times every worker count back to back; the ratio to 1 worker is taken
within the round and the median over rounds reported, because the machine is shared):

1. one complex64 ``scipy.fft.fft2`` (the transform PWF, FBP, MIST's inverse Laplacian are made of);
2. one fused PWF gradient (``retrieve/pwf_kernels.py``: FFTs + numba kernels, all on the same thread
   count) on a frame whose PWF grid has about that many pixels.

The default of :func:`xspeckle.backend.fft_workers` follows from these rows: one thread below
``backend.THREADING_MIN_ELEMENTS`` elements, all cores above.  Process workers (``--workers``) are the
pipeline's business (benchmarks/bench_pipeline.py): each worker gets its share of the cores
(``XSPECKLE_FFT_WORKERS``), which always overrides the size rule.

Standalone: ``python benchmarks/bench_threads.py [--quick]`` writes ``benchmarks/results/threads.md``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import main_standalone, md_table, section  # noqa: E402

TITLE = "Thread defaults: FFT workers and fused-kernel threads by array size"


def _median_ratio(times: dict[int, list[float]]) -> dict[int, tuple[float, float]]:
    import numpy as np

    base = np.asarray(times[1])
    return {w: (float(np.median(v)), float(np.median(np.asarray(v) / base))) for w, v in times.items()}


def fft_rows(sizes, workers, rounds: int = 5):
    """``[size, workers, ms, time / time(1 worker)]`` for a complex64 fft2 of each size (n×n or (h, w))."""
    import numpy as np
    import scipy.fft as sfft

    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        shape = (n, n) if isinstance(n, int) else tuple(n)
        x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        reps = max(1, int(4e6 // x.size))
        times: dict[int, list[float]] = {w: [] for w in workers}
        for w in workers:
            sfft.fft2(x, workers=w)
        for _ in range(rounds):
            for w in workers:
                t0 = time.perf_counter()
                for _ in range(reps):
                    sfft.fft2(x, workers=w)
                times[w].append((time.perf_counter() - t0) / reps)
        for w, (t, r) in _median_ratio(times).items():
            rows.append(["×".join(map(str, shape)), w, f"{t * 1e3:.3g}", f"{r:.2f}"])
    return rows


def pwf_rows(frames, workers, rounds: int = 3):
    """``[frame, grid, threads, ms, ratio]`` for one fused PWF gradient with FFT and kernel threads = w."""
    import numpy as np
    from scipy import ndimage

    from xspeckle.geometry import Geometry
    from xspeckle.retrieve import pwf_kernels as pk
    from xspeckle.retrieve.pwf import PWFModel

    rows = []
    for n in frames:
        rng = np.random.default_rng(0)
        ref = np.exp(0.25 * ndimage.gaussian_filter(rng.standard_normal((1, n, n)), (0, 1.2, 1.2)) / 0.1).astype(np.float32)
        ref /= ref.mean()
        sam = (ref * (1 + 0.01 * rng.standard_normal(ref.shape))).astype(np.float32)
        g = Geometry(energy_ev=10000.0, pixel_size_m=650e-9, sample_detector_distance_m=0.023,
                     diffuser_position="downstream", diffuser_detector_distance_m=0.020,
                     coherence_length_x_m=3.48e-6, coherence_length_y_m=4.31e-6)
        model = PWFModel(ref, g)
        _, yspec = model.prepare(sam[None])
        psi = (0.01 * rng.standard_normal((1, 1) + model.shape)).astype(np.complex64)
        reps = max(1, int(2e6 // (model.shape[0] * model.shape[1])))
        times: dict[int, list[float]] = {w: [] for w in workers}
        old = os.environ.get("XSPECKLE_FFT_WORKERS")
        try:
            for w in workers:
                os.environ["XSPECKLE_FFT_WORKERS"] = str(w)
                pk.fused_gradient(model, psi, yspec)
            for _ in range(rounds):
                for w in workers:
                    os.environ["XSPECKLE_FFT_WORKERS"] = str(w)
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        pk.fused_gradient(model, psi, yspec)
                    times[w].append((time.perf_counter() - t0) / reps)
        finally:
            if old is None:
                os.environ.pop("XSPECKLE_FFT_WORKERS", None)
            else:
                os.environ["XSPECKLE_FFT_WORKERS"] = old
        for w, (t, r) in _median_ratio(times).items():
            rows.append([f"{n}²", "×".join(map(str, model.shape)), w, f"{t * 1e3:.3g}", f"{r:.2f}"])
    return rows


def run(quick: bool = False) -> str:
    from xspeckle.backend import THREADING_MIN_ELEMENTS, available_cores

    nc = available_cores()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    workers = sorted({1, 2, nc} if nc > 1 else {1, 2})
    sizes = [64, 128, 256, 512] if quick else [64, 128, 256, 512, 1024, 2048, (2520, 3000)]
    frames = [64, 256] if quick else [64, 256, 1024]
    t1 = md_table(["complex64 fft2", "workers", "ms", "time / time(1 worker)"], fft_rows(sizes, workers))
    t2 = md_table(["PWF frame", "PWF grid", "threads (FFT + kernels)", "ms / gradient", "time / time(1 thread)"],
                  pwf_rows(frames, workers))
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = (
        f"{nc} cores available; 1-minute load average {load0:.1f} at the start and {load1:.1f} at the end "
        "(other users' work: figures on a loaded machine favour fewer threads). Ratios below 1: the threads pay; above 1: they cost more than they save "
        "(thread hand-off and, on a shared machine, waiting for a busy core). From these rows "
        f"`backend.fft_workers(size)` defaults to 1 thread below {THREADING_MIN_ELEMENTS} elements "
        "(512²) and to all cores above; `XSPECKLE_FFT_WORKERS` overrides it (the pipeline sets it to each "
        "worker process's share of the cores). The fused PWF kernels use the same count. On a quiet 2-core machine "
        "the threads pay from about 512² (shared/specs/performance.md §1: 1024² complex64 FFT pair 13.1 ms with "
        "1 worker, 7.1 ms with 2); on a machine loaded by other users (load average above the core count) "
        "they pay only at full PWF size, and `XSPECKLE_FFT_WORKERS=1` is the better setting there.\n\n"
        + t1 + "\n\n" + t2 + "\n"
    )
    cmd = "python benchmarks/bench_threads.py" + (" --quick" if quick else "")
    return section(TITLE, body, cmd, quick=quick)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
