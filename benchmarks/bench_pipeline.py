"""Throughput of ``xspeckle.pipeline.retrieve_scan`` on this CPU: serial, 2 local processes, Dask.

Scans of A angles x P = 4 diffuser positions (uint16) are written from the ``mist-berry``
preset (one simulated angle; the sample frames of the other angles are that angle rolled
by a few pixels, which changes nothing for the cost of a retrieval), then retrieved with
MIST and LCS (512 x 512 px, fast per projection) and UMPA (256 x 256 px, compute-heavy) by
each engine.  Reported: projections (angles) per second of the compute phase and in the
steady state, wall time, the peak resident memory of the whole process tree (sampled every
20 ms with psutil), and whether the phase is bitwise equal to the serial run.

Run standalone: ``python benchmarks/bench_pipeline.py [--quick]`` writes
``benchmarks/results/pipeline.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TITLE = "Pipeline throughput (retrieve_scan: serial, 2 processes, Dask)"


class _PeakRSS:
    """Peak RSS (bytes) of this process and its children, sampled in a thread."""

    def __init__(self, period_s: float = 0.02):
        self.period_s = period_s
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = me.memory_info().rss
        for c in me.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self):
        try:
            import psutil  # noqa: F401
        except ImportError:
            self._t = None
            self.peak = -1
            return self
        self.base = self._sample()

        def loop():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._sample())
                time.sleep(self.period_s)

        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._t is not None:
            self._t.join()


def make_bench_scan(path: Path, *, size: int, angles: int, positions: int = 4) -> Path:
    """Write the benchmark scan (uint16 counts) and return its path."""
    from xspeckle.io.scan import write_scan
    from xspeckle.simulate import make_preset

    sim = make_preset("mist-berry", size=size, positions=positions, angles=1, seed=1)
    one = sim.data[:, 0]
    data = np.empty((positions, angles) + one.shape[-2:], np.uint16)
    for a in range(angles):
        data[:, a] = np.clip(np.rint(np.roll(one, a % 7, axis=-1)), 0, 65535).astype(np.uint16)
    u16 = lambda x: None if x is None else np.clip(np.rint(x), 0, 65535).astype(np.uint16)  # noqa: E731
    return write_scan(path, data=data, reference=u16(sim.reference), geometry=sim.geometry, flat=u16(sim.flat),
                      dark=u16(sim.dark), theta_deg=np.linspace(0, 180, angles, endpoint=False), overwrite=True)


def _one(scan: Path, out: Path, method: str, **kw) -> dict:
    from xspeckle.pipeline import log_path, retrieve_scan

    with _PeakRSS() as mem:
        t0 = time.perf_counter()
        retrieve_scan(scan, out, method=method, overwrite=True, **kw)
        wall = time.perf_counter() - t0
    info = json.loads(log_path(out).read_text())
    return {"wall_s": wall, "pps": info["timings"]["projections_per_s"],
            "steady": info["timings"]["steady_projections_per_s"], "peak_rss": mem.peak,
            "base_rss": getattr(mem, "base", 0), "engine": info["engine"], "workers": info["memory"]["workers"]}


def run(quick: bool = False) -> str:
    """Run the benchmark; return a markdown section (table + how to reproduce)."""
    from xspeckle.retrieve import available_methods

    # (method, size px, angles): MIST and LCS are fast per projection (tens of ms at 512 px), UMPA is
    # compute-heavy (about 1 s per projection at 256 px on one core)
    cases = [("mist", 256, 8), ("umpa", 128, 8)] if quick else [("mist", 512, 48), ("lcs", 512, 48), ("umpa", 256, 16)]
    avail = set(available_methods())
    cases = [c for c in cases if c[0] in avail]
    rows = []
    engines = [("serial (1 process)", {"workers": 1}), ("2 local processes", {"workers": 2})]
    try:
        import distributed  # noqa: F401

        engines.append(("Dask LocalCluster, 2 processes", {"dask": 2}))
        engines.append(("Dask LocalCluster, 2 processes, MALLOC_MMAP_THRESHOLD_=256 MiB", {"dask": 2, "mmap": True}))
    except ImportError:
        pass
    import h5py

    with tempfile.TemporaryDirectory(prefix="xspeckle-bench-") as td:
        td = Path(td)
        scans = {}
        for m, size, angles in cases:
            key = (size, angles)
            if key not in scans:
                scans[key] = make_bench_scan(td / f"scan_{size}_{angles}.h5", size=size, angles=angles)
            scan = scans[key]
            serial_phase = None
            for label, kw in engines:
                if "dask" in kw:
                    from distributed import LocalCluster

                    # LocalCluster leaves its workers' environment (MALLOC_TRIM_THRESHOLD_=65536,
                    # OMP_NUM_THREADS=1, ...) in this process's os.environ; restore it so that later
                    # local-process runs do not inherit it (it slows allocation-heavy methods ~5x)
                    import dask

                    saved_env = dict(os.environ)
                    extra = {"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": "268435456"} if kw.get("mmap") else {}
                    try:
                        with dask.config.set(extra), LocalCluster(n_workers=kw["dask"], threads_per_worker=1, processes=True,
                                          dashboard_address=None, silence_logs=40) as cl:
                            r = _one(scan, td / "out.h5", m, scheduler=cl.scheduler_address)
                    finally:
                        os.environ.clear()
                        os.environ.update(saved_env)
                else:
                    r = _one(scan, td / "out.h5", m, **kw)
                with h5py.File(td / "out.h5", "r") as f:
                    ph = f["retrieval/phase"][()]
                if serial_phase is None:
                    serial_phase = ph
                    same = "reference"
                else:
                    same = "yes" if ph.tobytes() == serial_phase.tobytes() else "NO"
                rows.append((m, f"{angles} x 4 x {size}²", label, r, same))
    cpu = os.cpu_count()
    lines = [
        f"## {TITLE}",
        "",
        "Scans: A angles x P = 4 diffuser positions x N² px (uint16), mist-berry preset; "
        f"CPU: {platform.processor() or platform.machine()}, {cpu} cores; Python {sys.version.split()[0]}. "
        "No GPU in this session: the `--device cuda` path (CuPy, batched projections) is not measured here.",
        "",
        "| method | scan (A x P x N²) | engine | projections/s (compute phase) | projections/s (steady, after 1st result) | wall s (incl. set-up) | peak RSS of process tree (MiB) | bitwise equal to serial |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for m, shape, label, r, same in rows:
        rss = "n/a" if r["peak_rss"] < 0 else f"{r['peak_rss'] / 2**20:.0f}"
        pps = "n/a" if r["pps"] is None else f"{r['pps']:.2f}"
        st = "n/a" if r["steady"] is None else f"{r['steady']:.2f}"
        lines.append(f"| {m} | {shape} | {label} | {pps} | {st} | {r['wall_s']:.1f} | {rss} | {same} |")
    lines += [
        "",
        "projections/s (compute phase) counts reading, normalising, retrieving and writing every angle, including",
        "the start-up of worker processes and their own reference/retriever set-up; the steady rate starts at the",
        "first written angle.",
        "The wall time adds the reference normalisation and retriever set-up in the calling process.",
        f"Load average at the end (other jobs share these 2 cores): {os.getloadavg()[0]:.1f}; timings are noisy.",
        "Dask workers run with MALLOC_TRIM_THRESHOLD_=65536 (Dask's default pre-spawn environment), which makes",
        "allocation-heavy methods (UMPA's cost volume) fault pages on every call (glibc then mmaps every array",
        "above 128 KiB afresh); adding MALLOC_MMAP_THRESHOLD_=268435456 to the workers' environment",
        "(`distributed.nanny.pre-spawn-environ`) removes that cost (last row of each method).",
        "",
        f"Reproduce: `.venv/bin/python benchmarks/bench_pipeline.py{' --quick' if quick else ''}`",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small scans (MIST 256 px, UMPA 128 px, 8 angles)")
    args = ap.parse_args(argv)
    md = run(quick=args.quick)
    out = Path(__file__).resolve().parent / "results" / "pipeline.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
