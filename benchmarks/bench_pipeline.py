"""Throughput of ``xspeckle.pipeline.retrieve_scan`` on this CPU: serial, 2 local processes, Dask.

Scans of A angles x P diffuser positions (uint16):

* ``mist-berry`` preset, P = 4, 512 x 512 px, retrieved with MIST and LCS (fast: ~10-30 ms
  per projection), and UMPA at 256 x 256 px (allocation-heavy, ~0.5 s per projection).  One
  simulated angle; the sample frames of the other angles are that angle rolled by a few
  pixels, which changes nothing for the cost of a retrieval.
* ``tomo-beads`` preset (every angle simulated), P = 1, 256 x 256 px, retrieved with PWF
  (compute-heavy: a few seconds per projection): the case where workers matter.

Every engine is run ``--repeats`` times, interleaved (the machine is shared, timings drift),
each run in a fresh Python process as ``xspeckle retrieve`` would be; the table gives
medians.  Reported: projections (angles) per second of the compute phase and in the
steady state (after the first written angle), the time to the first written angle, wall
time, the peak resident memory the run adds to its process tree (sampled every 20 ms with
psutil), and whether the phase is bitwise equal to the serial run.

Run standalone: ``python benchmarks/bench_pipeline.py [--quick] [--repeats N]`` writes
``benchmarks/results/pipeline.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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


def make_bench_scan(path: Path, *, size: int, angles: int, positions: int = 4, preset: str = "mist-berry") -> Path:
    """Write the benchmark scan (uint16 counts) and return its path.

    ``mist-berry``: one simulated angle, the others rolled copies of it.  ``tomo-beads``:
    a real tomographic scan (every angle simulated, downstream diffuser for PWF).
    """
    from xspeckle.io.scan import write_scan
    from xspeckle.simulate import make_preset

    u16 = lambda x: None if x is None else np.clip(np.rint(x), 0, 65535).astype(np.uint16)  # noqa: E731
    if preset == "tomo-beads":
        sim = make_preset(preset, size=size, positions=positions, angles=angles, seed=1)
        data = u16(sim.data)
        theta = sim.theta_deg
    else:
        sim = make_preset(preset, size=size, positions=positions, angles=1, seed=1)
        one = sim.data[:, 0]
        data = np.empty((positions, angles) + one.shape[-2:], np.uint16)
        for a in range(angles):
            data[:, a] = u16(np.roll(one, a % 7, axis=-1))
        theta = np.linspace(0, 180, angles, endpoint=False)
    return write_scan(path, data=data, reference=u16(sim.reference), geometry=sim.geometry, flat=u16(sim.flat),
                      dark=u16(sim.dark), theta_deg=theta, overwrite=True)


def _one(scan: Path, out: Path, method: str, **kw) -> dict:
    """One retrieve_scan run: rates, times, peak RSS, engine facts from the run's JSON log."""
    from xspeckle.pipeline import log_path, retrieve_scan

    load = os.getloadavg()[0]
    with _PeakRSS() as mem:
        t0 = time.perf_counter()
        retrieve_scan(scan, out, method=method, overwrite=True, **kw)
        wall = time.perf_counter() - t0
    info = json.loads(log_path(out).read_text())
    t = info["timings"]
    return {"wall_s": wall, "pps": t["projections_per_s"], "steady": t["steady_projections_per_s"],
            "first_s": t.get("first_result_s"), "peak_rss": mem.peak - getattr(mem, "base", 0) if mem.peak >= 0 else -1,
            "engine": info["engine"],
            "workers": info["memory"]["workers"], "tasks": info.get("tasks"), "load": load}


def _run_engine(scan: Path, out: Path, method: str, kw: dict) -> dict:
    """Run one engine configuration (a fresh Dask LocalCluster for the Dask ones)."""
    kw = dict(kw)
    fft = kw.pop("fft_workers", None)
    saved_env = dict(os.environ)
    try:
        if fft is not None:
            os.environ["XSPECKLE_FFT_WORKERS"] = str(fft)
        if "dask" in kw:
            from distributed import LocalCluster

            # LocalCluster leaves its workers' environment (MALLOC_TRIM_THRESHOLD_=65536, OMP_NUM_THREADS=1,
            # ...) in this process's os.environ; it is restored below so later runs do not inherit it
            with LocalCluster(n_workers=kw["dask"], threads_per_worker=1, processes=True, dashboard_address=None,
                              silence_logs=40) as cl:
                return _one(scan, out, method, scheduler=cl.scheduler_address)
        return _one(scan, out, method, **kw)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)


def _run_isolated(scan: Path, out: Path, method: str, kw: dict) -> dict:
    """:func:`_run_engine` in a fresh Python process, as ``xspeckle retrieve`` runs: no state (imports, heap,
    threads, environment) carried over from earlier runs of this benchmark."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(scan), str(out), method, json.dumps(kw)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark run {method} {kw} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(lines[-1])


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def run(quick: bool = False, repeats: int | None = None) -> str:
    """Run the benchmark; return a markdown section (table, findings, how to reproduce)."""
    import h5py

    from xspeckle.retrieve import available_methods

    # (method, preset, size px, angles, positions, repeats)
    if quick:
        cases = [("mist", "mist-berry", 256, 16, 4, 2), ("pwf", "tomo-beads", 64, 4, 1, 1)]
    else:
        cases = [("mist", "mist-berry", 512, 48, 4, 5), ("lcs", "mist-berry", 512, 48, 4, 3),
                 ("umpa", "mist-berry", 256, 16, 4, 1), ("pwf", "tomo-beads", 256, 8, 1, 2)]
    avail = set(available_methods())
    cases = [c for c in cases if c[0] in avail]
    engines = [("serial (1 process)", {"workers": 1}), ("2 local processes", {"workers": 2})]
    try:
        import distributed  # noqa: F401

        engines.append(("Dask LocalCluster, 2 processes", {"dask": 2}))
    except ImportError:
        pass
    rows = []
    with tempfile.TemporaryDirectory(prefix="xspeckle-bench-") as td:
        td = Path(td)
        scans = {}
        for m, preset, size, angles, positions, reps in cases:
            key = (preset, size, angles, positions)
            if key not in scans:
                scans[key] = make_bench_scan(td / f"scan_{preset}_{size}_{angles}_{positions}.h5", size=size,
                                             angles=angles, positions=positions, preset=preset)
            scan = scans[key]
            eng = list(engines)
            if m == "pwf":  # why workers pay here: serial's FFT threads barely help at this size
                eng.insert(1, ("serial, 1 FFT thread (XSPECKLE_FFT_WORKERS=1)", {"workers": 1, "fft_workers": 1}))
            runs: dict[str, list[dict]] = {label: [] for label, _ in eng}
            phases: dict[str, list[bytes]] = {label: [] for label, _ in eng}
            for _ in range(repeats or reps):
                for label, kw in eng:  # interleaved: drifts in the machine's load hit every engine alike
                    runs[label].append(_run_isolated(scan, td / "out.h5", m, kw))
                    with h5py.File(td / "out.h5", "r") as f:
                        phases[label].append(f["retrieval/phase"][()].tobytes())
            ref = phases[eng[0][0]][0]
            for label, _ in eng:
                rs = runs[label]
                same = all(p == ref for p in phases[label])
                rows.append({
                    "method": m, "scan": f"{angles} x {positions} x {size}²", "engine": label, "n": len(rs),
                    "pps": _median([r["pps"] for r in rs]), "steady": _median([r["steady"] for r in rs]),
                    "steady_range": (min(r["steady"] or 0 for r in rs), max(r["steady"] or 0 for r in rs)),
                    "first_s": _median([r["first_s"] for r in rs]), "wall_s": _median([r["wall_s"] for r in rs]),
                    "peak_rss": _median([r["peak_rss"] for r in rs]), "tasks": _median([r["tasks"] for r in rs]),
                    "load": max(r["load"] for r in rs),
                    "same": "reference" if label == eng[0][0] else ("yes" if same else "NO"),
                })
    return _markdown(rows, quick, repeats)


def _fmt(x, spec=".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _markdown(rows: list[dict], quick: bool, repeats: int | None) -> str:
    cpu = os.cpu_count()
    lines = [
        f"## {TITLE}",
        "",
        "Scans: A angles x P diffuser positions x N² px (uint16); mist/lcs/umpa on the mist-berry preset, "
        "pwf on the tomo-beads preset (1 position). "
        f"CPU: {platform.processor() or platform.machine()}, {cpu} cores; Python {sys.version.split()[0]}. "
        "No GPU in this session: the `--device cuda` path (CuPy, batched projections) is not measured here. "
        "Medians of n interleaved runs, each in a fresh Python process (as `xspeckle retrieve`: the method "
        "modules' imports count in the wall time); the steady range is min–max over the runs.",
        "",
        "| method | scan (A x P x N²) | engine | n | projections/s (compute phase) | projections/s (steady, after 1st result) "
        "| steady range | 1st result after (s) | wall s (incl. set-up) | tasks | peak RSS added, process tree (MiB) "
        "| bitwise equal to serial |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        rss = "n/a" if r["peak_rss"] < 0 else f"{r['peak_rss'] / 2**20:.0f}"
        lo, hi = r["steady_range"]
        tasks = "n/a" if r["tasks"] is None else f"{r['tasks']:.0f}"
        lines.append(f"| {r['method']} | {r['scan']} | {r['engine']} | {r['n']} | {_fmt(r['pps'])} | {_fmt(r['steady'])} "
                     f"| {lo:.2f}–{hi:.2f} | {_fmt(r['first_s'])} | {r['wall_s']:.1f} | {tasks} | {rss} | {r['same']} |")
    # findings, computed from the rows above
    find = []
    by = {(r["method"], r["engine"]): r for r in rows}
    for m in dict.fromkeys(r["method"] for r in rows):
        s, p = by.get((m, "serial (1 process)")), by.get((m, "2 local processes"))
        d = by.get((m, "Dask LocalCluster, 2 processes"))
        if not (s and p and s["steady"] and p["steady"]):
            continue
        txt = (f"- **{m}**: 2 local processes / serial = {p['steady'] / s['steady']:.2f}x steady, "
               f"{p['pps'] / s['pps']:.2f}x over the compute phase, wall {p['wall_s']:.1f} s vs {s['wall_s']:.1f} s")
        if d and d["steady"]:
            txt += f"; Dask / serial = {d['steady'] / s['steady']:.2f}x steady"
        one = by.get((m, "serial, 1 FFT thread (XSPECKLE_FFT_WORKERS=1)"))
        if one and one["steady"]:
            txt += (f"; serial with 1 FFT thread runs at {one['steady'] / s['steady']:.2f}x serial with "
                    f"{cpu} FFT threads")
        find.append(txt + ".")
    lines += [
        "",
        "Findings (ratios of the medians above):",
        "",
        *find,
        "",
        "How to read it:",
        "",
        "- *compute phase* counts reading, normalising, retrieving and writing every angle, including the start-up",
        "  of the worker processes (spawned interpreters importing numpy/scipy/h5py/xspeckle, then each reading the",
        "  reference and building its retriever: about 1 s here); *steady* starts at the first written angle;",
        "  *1st result after* is from the call to the first written angle; *wall* is the whole call.",
        "- Serial already uses both cores for part of the work: `scipy.fft` and MIST's row threads run",
        "  `os.cpu_count()` threads (`backend.fft_workers()`), the element-wise NumPy work runs on one.  Local",
        "  workers get `cores // workers` threads each (so 1 here: two single-threaded processes, no",
        "  oversubscription), and so do Dask workers, whose tasks cap `XSPECKLE_FFT_WORKERS` to their host's cores",
        "  divided by the threads of all workers on that host (OMP/MKL/OpenBLAS are already 1 in Dask workers).",
        "- For PWF (seconds per projection, FFT-bound on ~300² grids) `scipy.fft` with 2 threads in one process is",
        "  slower than with 1 on these cores (row *serial, 1 FFT thread*), so 2 single-threaded worker processes",
        "  beat serial by more than 2x: this is where `--workers` pays.  UMPA (allocation- and NumPy-bound, one",
        "  core in serial) gains ~2x as well.",
        "- For MIST/LCS at 512² (10-40 ms per projection) the 48-angle scan takes less time than starting the",
        "  workers: wall time favours serial; the steady rate favours 2 processes, by less than 2x because the",
        "  single writer (this process: receiving 3 MB of maps per angle and writing them to HDF5, ~5 ms) shares",
        "  the same 2 cores, while serial keeps ~1.1 cores busy (its threads cover part of the work).  A scan of",
        "  hundreds of angles runs at the steady rate.",
        "- Dask on 2 cores pays its scheduler (here in this process) and TCP transfer of every map on the same",
        "  cores; tasks grow to several angles when one angle is short (adaptive batching, `tasks` column) so the",
        "  per-task cost shrinks, but the transfer remains.  Dask is for machines or clusters with more cores than",
        "  that overhead, with projections of seconds or more (performance.md §6).",
        "- Dask's default worker environment sets MALLOC_TRIM_THRESHOLD_=65536, which pins glibc's mmap",
        "  threshold at 128 KiB: every larger array is a fresh mmap that page-faults on first touch, and methods",
        "  that allocate temporaries every iteration (PWF, UMPA's cost volume) ran 1.7-4x slower on Dask workers.",
        "  xspeckle's Dask tasks raise the threshold to 256 MiB while they run and trim the heap after the last",
        "  one (`pipeline.engines._worker_settings`), which is what setting MALLOC_MMAP_THRESHOLD_ in the workers did.",
        "- *peak RSS added*: peak resident memory of this process and its children during the call, minus this",
        "  process's resident memory before it (Dask's worker processes exist before the call: only their growth",
        "  counts).",
        f"- 1-minute load average before the runs, this benchmark's own previous run included (other jobs share",
        f"  these {cpu} cores, and the VM its host): up to {max(r['load'] for r in rows):.1f}; timings are noisy,",
        "  hence the interleaved runs, medians and ranges.",
        "",
        f"Reproduce: `flock /tmp/xspeckle-bench.lock .venv/bin/python benchmarks/bench_pipeline.py"
        f"{' --quick' if quick else ''}{f' --repeats {repeats}' if repeats else ''}`",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small scans (MIST 256 px, PWF 64 px, few angles)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per engine (default: 3-5 fast, 1-2 slow methods)")
    ap.add_argument("--one", nargs=4, metavar=("SCAN", "OUT", "METHOD", "ENGINE_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:  # one isolated run (used by run()): print its figures as one JSON line
        scan, out, method, kw = args.one
        print(json.dumps(_run_engine(Path(scan), Path(out), method, json.loads(kw))))
        return
    md = run(quick=args.quick, repeats=args.repeats)
    out = Path(__file__).resolve().parent / "results" / "pipeline.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
