"""Shared benchmark helpers: timing harness, machine info, markdown tables.

Every ``benchmarks/bench_<name>.py`` defines ``TITLE`` (str) and ``run(quick=False) -> str``
(a markdown section: table + the command that reproduces it + machine info) and ends with::

    if __name__ == "__main__":
        main_standalone(__file__, TITLE, run)

which writes ``benchmarks/results/<name>.md``.  ``benchmarks/run.py`` runs them all and
assembles ``docs/benchmarks.md``.

The timing harness follows ``performance.md``: warm-up runs, then repeats, report the
median; it also measures how many CPU cores *other* processes kept busy during the
measurement (from ``/proc/stat`` minus this process's own CPU time), so numbers taken on
a shared machine can be flagged (†) as upper bounds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent

#: other-process load (cores) above which a timing is flagged † (upper bound)
LOAD_FLAG_CORES = 0.25

__all__ = [
    "Timing",
    "bench",
    "machine_info",
    "machine_line",
    "md_table",
    "section",
    "main_standalone",
    "fmt_ms",
    "RESULTS",
    "REPO",
]


def _proc_stat_busy() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    if not parts or parts[0] != "cpu":
        return None
    ticks = [float(x) for x in parts[1:]]
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)  # idle + iowait
    total = sum(ticks[:8])
    return (total - idle) / hz, total / hz


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


@dataclass
class Timing:
    """Result of :func:`bench` (seconds)."""

    label: str
    times_s: list[float] = field(default_factory=list)
    other_load_cores: float | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def flagged(self) -> bool:
        """True when other processes used more than LOAD_FLAG_CORES cores meanwhile."""
        return self.other_load_cores is not None and self.other_load_cores > LOAD_FLAG_CORES

    def cell(self, scale: float = 1e3, digits: int = 1) -> str:
        """Median formatted for a table (ms by default), with † when the machine was loaded."""
        return f"{self.median_s * scale:.{digits}f}" + (" †" if self.flagged else "")


def bench(fn: Callable[[], Any], *, label: str = "", warmup: int = 1, repeats: int = 5,
          min_time_s: float = 0.0) -> Timing:
    """Time ``fn()``: *warmup* untimed calls, then *repeats* timed calls (more until *min_time_s*).

    Parameters
    ----------
    fn : callable without arguments
    label : str
    warmup : int
        Untimed calls first (JIT, FFT plans, page cache).
    repeats : int
        Timed calls; the median is reported.
    min_time_s : float
        Keep repeating until this much time has been measured in total.

    Returns
    -------
    Timing, including the cores other processes used during the timed calls.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    s0, c0, w0 = _proc_stat_busy(), _self_cpu(), time.perf_counter()
    while len(times) < repeats or sum(times) < min_time_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) > 1000:
            break
    s1, c1, w1 = _proc_stat_busy(), _self_cpu(), time.perf_counter()
    load = None
    if s0 is not None and s1 is not None and w1 > w0:
        other = (s1[0] - s0[0]) - (c1 - c0)
        load = max(0.0, other / (w1 - w0))
    return Timing(label, times, load)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, str]:
    """CPU model, cores, memory, Python / numpy / scipy / h5py versions, date (UTC)."""
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        info["memory"] = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    for mod in ("numpy", "scipy", "h5py"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = "absent"
    try:
        from xspeckle import __version__

        info["xspeckle"] = __version__
    except ImportError:
        pass
    return info


def machine_line(info: dict[str, str] | None = None) -> str:
    """One-line summary of :func:`machine_info` for a section footer."""
    i = info or machine_info()
    return (f"{i['cpu']}, {i['cores']} cores, {i.get('memory', '?')} RAM; Python {i['python']}, "
            f"numpy {i['numpy']}, scipy {i['scipy']}, h5py {i['h5py']}; {i['date']}")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    out = ["| " + " | ".join(cell(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def section(title: str, body: str, command: str, *, quick: bool = False, timings: Sequence[Timing] = ()) -> str:
    """Assemble a benchmark section: title, body (tables, notes), command, machine line."""
    flagged = any(t.flagged for t in timings)
    loads = [t.other_load_cores for t in timings if t.other_load_cores is not None]
    lines = [f"## {title}", "", body.strip(), ""]
    if loads:
        lines.append(f"Other processes used up to {max(loads):.2f} cores during these timings"
                     + ("; figures marked † ran under that load (upper bounds)." if flagged else "."))
        lines.append("")
    lines.append(f"Reproduce: `{command}`" + (" (quick mode: smaller sizes)" if quick else ""))
    lines.append("")
    lines.append(f"Machine: {machine_line()}")
    return "\n".join(lines) + "\n"


def main_standalone(file: str, title: str, run: Callable[..., str], argv: Sequence[str] | None = None) -> Path:
    """Command line of one benchmark module: run it and write ``results/<name>.md``."""
    name = Path(file).stem.removeprefix("bench_")
    ap = argparse.ArgumentParser(description=title)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (seconds, for CI)")
    a = ap.parse_args(argv)
    text = run(quick=a.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.md"
    out.write_text(text)
    sys.stdout.write(text)
    return out
