"""benchmarks/bench_gpu.py: skips cleanly without CuPy, and every section runs end to end (NumPy dry run)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_gpu.py"

# run the script as __main__ with CuPy made unimportable (as on a machine without it)
_NO_CUPY = ("import sys, runpy; sys.modules['cupy'] = None; sys.argv = [{p!r}] + sys.argv[1:]; "
            "runpy.run_path({p!r}, run_name='__main__')")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _NO_CUPY.format(p=str(SCRIPT)), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=240)


def test_skips_with_one_line_without_cupy():
    r = _run()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench_gpu: skipped: CuPy not importable"), r.stdout
    assert r.stderr == ""


def test_cpu_dry_run_exercises_every_section(tmp_path):
    out = tmp_path / "gpu.md"
    r = _run("--cpu-dry-run", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "FAILED" not in r.stdout, r.stdout
    text = out.read_text()
    assert "Sections that failed" not in text, text
    assert "CPU dry run" in text
    for needle in ("device copy bandwidth", "complex64 FFT of the PWF grid", "PWF gradient GPU vs CPU",
                   "(δ/β prior) GPU vs CPU", "gradient (model + adjoint", "solver iteration ('fast'), 1 projection",
                   "batch B = 2", "3-angle batch, 4 iterations each, scheme", "MIST phase GPU vs CPU", "per projection, 48²",
                   "one slice 64×64", "FBP slice GPU vs CPU", "complex64 fft2 64×64, 2 workers",
                   "fused PWF gradient 48²"):
        assert needle in text, needle
    # NumPy against NumPy: the comparison code must report exact agreement
    check_rows = [ln for ln in text.splitlines() if ln.startswith("| check |")]
    assert len(check_rows) == 6
    assert all(ln.split("|")[5].strip() == "0" for ln in check_rows), check_rows


def test_budget_skips_remaining_sections(tmp_path):
    out = tmp_path / "gpu.md"
    r = _run("--cpu-dry-run", "--budget-s", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "roofline: skipped (time budget)" in text and "fbp: skipped (time budget)" in text


def test_run_without_gpu_keeps_measured_figures(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_gpu_t", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "probe_gpu", lambda: "no CUDA device (test)")
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    assert "Not measured" in mod.run()
    (tmp_path / "gpu.md").write_text("## GPU\n\n| pwf | x | 1.0 | ms |\n")
    assert mod.run() == "## GPU\n\n| pwf | x | 1.0 | ms |\n"
