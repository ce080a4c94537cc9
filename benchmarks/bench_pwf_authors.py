"""PWF: the authors' MATLAB code (``PWF.m``, run headless in GNU Octave) against xspeckle's ``pwf``.

Issue 13 point 7: where xspeckle departs from the authors' algorithm, the departure must be measured to
be at least as good on the independent simulation.  This driver runs both on the *same* frames:

1. simulates a scan (``--preset``, default ``indep-beads``; ``--size``, ``--seed``) with ``--positions``
   diffuser positions (default 4, so that single- and multi-position runs share one scan);
2. writes the dark-subtracted, flat-normalised reference and sample frames of position 0 (or of
   positions 0..K-1) to a ``.mat`` file in a temporary folder, writes a small Octave driver script
   next to it and runs ``octave-cli`` on it: ``PWF(Simg, Rimg, L1, L2, imgPix, photonE, ...)`` with the
   scan geometry in the authors' units (``Etowl`` returns the wavelength in **nm**, so L1, L2 and the
   pixel are passed in nm; photon energy in keV), ``figVisPeriod = Inf`` (no figures);
3. reads back ``phi`` (log-amplitude + i·phase on the authors' crop: all rows, columns
   ``Xrange_wBG`` of PWF.m) and measures the phase relative RMS error
   ``‖φ − φ_true − c‖ / ‖φ_true‖`` over the truth ``sample_mask``, c = mean of (φ − φ_true) over the
   background (``~sample_mask``) inside the same crop (the mean background level matched);
4. runs ``xspeckle retrieve SCAN.h5 OUT.h5 --method pwf --positions 0`` (defaults) on the same scan file
   and scores it on the same crop with the same metric.

Runs of the authors' code: (a) its own stop rule (``corrCrit = 1e-5`` every 10 iterations, ``iterMax``
5000), (b) stop rule disabled (``corrCrit = -Inf``, ``iterMax`` = ``--iter-max``, default 1500; with
``corrCrit = 0`` the rule still fires once −log10 of the single-precision correlation rounds below 0).  The
calibrated coherence lengths of the authors' speckle-grain fit (``cohLength = √π·c·imgPix`` of PWF.m)
are compared with the simulator's truth; xspeckle's own calibration (``xspeckle calibrate --json``) is
reported beside them.

**The authors' code is not part of this repository** (MIT, github.com/kyeoreh/preconditioned_Wirtinger_flow);
point ``PWF_MATLAB_DIR`` (default ``/tmp/pwf_matlab``) at a copy holding ``PWF.m`` and ``subfunctions/``.
Octave 7 needs the packages ``signal`` (tukeywin) and ``image`` (padarray) (Debian: ``octave``,
``octave-signal``, ``octave-image``) and a few edits to PWF.m, all of them outside this repository:
define ``gpuInd = 0`` when ``gpuDeviceCount`` does not exist; set ``samISpk = Simg`` when there is no
GPU (the original leaves it undefined); replace ``ifft2(..., 'symmetric')`` by ``real(ifft2(...))``,
``mean(x, [1 2])`` / ``mean(x, 'all')`` / ``max(x, [], 'all')`` / ``rms(x, 'all')`` by their
column-vector forms; drop ``figure(221141)``; in ``speckleGrainSizeFitXY`` replace the Curve Fitting
Toolbox ``fit``/``fitoptions`` by a least-squares fit of the same model ``a·exp(−½(π·k·c)²)`` from the
same start point ``[max, 1/4]`` (e.g. ``fminsearch``) and drop the plotting; for K > 1 positions
``Sf = reshape(Sf, [], 1)`` must become ``reshape(Sf, [], size(Sf, 3))``.  Two optional ``fprintf``
lines give this driver the iteration count and the calibrated lengths:
``fprintf('PWF_COHLENGTH_YX %.9g %.9g\\n', cohLength(1), cohLength(2))`` after ``intensityBWsigma`` is
set, and ``fprintf('PWF_ITERATIONS %d %d\\n', ii, breakFlag)`` after the iteration loop; without them
those columns read "?".  The driver itself supplies trivial ``gather``/``isgpuarray``/``gpuArray``/
``mustBeVector`` shims (appended at the end of Octave's path, so real ones win).

Skips with one line on stderr when ``octave-cli`` or ``$PWF_MATLAB_DIR/PWF.m`` is missing (and then
leaves ``benchmarks/results/pwf_authors.md`` as it is).  One Octave process at a time; finished rows are
cached in ``--cache`` (JSON) so that an interrupted run resumes.

Standalone::

    python benchmarks/bench_pwf_authors.py [--sizes 256 --seeds 0,1,2 --iter-max 1500 --multi 4 --big 512]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine_line, md_table  # noqa: E402

TITLE = "PWF: the authors' MATLAB code (Octave) against xspeckle's pwf, same frames"
NAME = "pwf_authors"
DEFAULT_DIR = "/tmp/pwf_matlab"
CACHE = Path(tempfile.gettempdir()) / "xspeckle_bench_pwf_authors.json"

_SHIMS = {
    "gather.m": "function x = gather(x)\n% no GPU arrays in Octave: identity\nend\n",
    "isgpuarray.m": "function tf = isgpuarray(x)\ntf = false;\nend\n",
    "gpuArray.m": "function x = gpuArray(x)\n% no GPU arrays in Octave: identity\nend\n",
    "mustBeVector.m": "function mustBeVector(x)\nif ~isvector(x)\n  error('mustBeVector: value must be a vector');\nend\nend\n",
}

_DRIVER = r"""
pkg load signal; pkg load image;
addpath('{shims}', '-end');
addpath(fullfile('{pwfdir}', 'subfunctions'));
addpath('{pwfdir}');
load('{inp}');
args = {{'figVisPeriod', Inf}};
if iterMax > 0, args = [args, {{'iterMax', iterMax}}]; end
if ~isnan(corrCrit), args = [args, {{'corrCrit', corrCrit}}]; end
t0 = tic;
phi = PWF(Simg, Rimg, L1, L2, imgPix, photonE, args{{:}});
elapsed = toc(t0);
fprintf('PWF_ELAPSED %.6f\n', elapsed);
phase = single(imag(phi));
lograt = single(real(phi));
save('-v7', '{out}', 'phase', 'lograt', 'elapsed');
"""


def skip_reason(pwf_dir: str | None = None) -> str | None:
    """Why this benchmark cannot run here, or None."""
    d = Path(pwf_dir or os.environ.get("PWF_MATLAB_DIR", DEFAULT_DIR))
    if shutil.which("octave-cli") is None:
        return "octave-cli not found (apt-get install octave octave-signal octave-image)"
    if not (d / "PWF.m").is_file():
        return f"{d}/PWF.m not found (set PWF_MATLAB_DIR to an Octave-ready copy of the authors' code)"
    return None


# ------------------------------------------------------------------------------------------ helpers
def source_state() -> str:
    """Which xspeckle code this process (and its ``xspeckle`` children) runs: path, commit, local edits."""
    import xspeckle

    src = Path(xspeckle.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, check=True).stdout.splitlines()
        return f"git checkout {src} at {sha}" + (f", {len(dirty)} uncommitted change(s) under src/xspeckle" if dirty else ", clean")
    except (OSError, subprocess.CalledProcessError):
        return f"{src} (not a git checkout; e.g. `git archive` of the commit named in its path)"


def authors_crop(width: int, wing: float = 0.05) -> slice:
    """Columns PWF.m keeps (``Xrange_wBG``, 0-based slice) for a frame *width* px wide, bgWingRatio *wing*."""
    b0 = math.ceil(wing * width)
    x1, x2 = 1 + b0, width - b0  # 1-based, inclusive
    b1 = math.ceil(wing * (x2 - x1 + 1))
    left = x1 - max(1, x1 - b1)
    right = min(width, x2 + b1) - x2
    return slice(x1 - left - 1, x2 + right)


def relerr(phase, truth, mask, cols: slice) -> float:
    """‖φ − φ_true − c‖/‖φ_true‖ over *mask*, c = mean(φ − φ_true) over ~mask; all on columns *cols*."""
    import numpy as np

    ph, tr, m = (np.asarray(a, np.float64)[:, cols] for a in (phase, truth, mask))
    m = m.astype(bool)
    d = ph - tr
    d -= d[~m].mean()
    return float(np.linalg.norm(d[m]) / np.linalg.norm(tr[m]))


def simulate(preset: str, size: int, seed: int, positions: int, folder: Path):
    """Simulate, write the scan file; return (scan, path)."""
    from xspeckle.simulate import make_preset, write_simulated

    sim = make_preset(preset, size=size, seed=seed, positions=positions)
    path = folder / f"{preset}_{size}_s{seed}.h5"
    write_simulated(sim, path, overwrite=True, include_intensities=False)
    return sim, path


def write_inputs(sim, k: int, path: Path) -> None:
    """Normalised frames of positions 0..k-1 as (H, W, k) float32 + the geometry in the authors' units."""
    import numpy as np
    import scipy.io as sio

    ref, dat = sim.normalised()
    g = sim.geometry
    if g.diffuser_position != "downstream":
        raise ValueError("the authors' PWF is for a downstream diffuser")
    L2 = g.diffuser_detector_distance_m
    L1 = g.sample_detector_distance_m - L2
    sio.savemat(path, dict(
        Rimg=np.ascontiguousarray(np.moveaxis(ref[:k], 0, -1)).astype(np.float32),
        Simg=np.ascontiguousarray(np.moveaxis(dat[:k, 0], 0, -1)).astype(np.float32),
        L1=L1 * 1e9, L2=L2 * 1e9, imgPix=g.pixel_size_m * 1e9, photonE=g.energy_ev / 1e3,  # nm, nm, nm, keV
        iterMax=0.0, corrCrit=float('nan')))


def run_authors(folder: Path, inp: Path, *, iter_max: int = 0, corr_crit: float = math.nan,
                pwf_dir: str, timeout: float = 3600.0) -> dict:
    """Run PWF.m once on *inp* (iter_max 0 / corr_crit NaN: the authors' defaults 5000 / 1e-5).

    ``corr_crit = -inf`` switches the stop rule off: with ``corrCrit = 0`` it can still fire, because the
    single-precision correlation of two nearly equal iterates rounds to slightly above 1.
    """
    import numpy as np
    import scipy.io as sio

    shims = folder / "shims"
    shims.mkdir(exist_ok=True)
    for name, text in _SHIMS.items():
        (shims / name).write_text(text)
    run_inp = folder / "run_in.mat"
    d = sio.loadmat(inp)
    d = {k: v for k, v in d.items() if not k.startswith("__")}
    d.update(iterMax=float(iter_max), corrCrit=float(corr_crit))
    sio.savemat(run_inp, d)
    out = folder / "run_out.mat"
    if out.exists():
        out.unlink()
    script = folder / "drive_pwf.m"
    script.write_text(_DRIVER.format(shims=shims, pwfdir=Path(pwf_dir).resolve(), inp=run_inp, out=out))
    t0 = time.perf_counter()
    p = subprocess.run(["octave-cli", "--no-gui", "--norc", "--quiet", str(script)], cwd=folder,
                       capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if not out.exists():
        raise RuntimeError(f"octave-cli failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    r = sio.loadmat(out)
    res = dict(phase=np.asarray(r["phase"], np.float32), seconds=float(np.ravel(r["elapsed"])[0]), wall=wall,
               iterations=None, stopped=None, coh_y_m=None, coh_x_m=None,
               warnings=sorted({ln.strip() for ln in p.stderr.splitlines() if ln.startswith("warning:")}))
    for ln in p.stdout.splitlines():
        f = ln.split()
        if f and f[0] == "PWF_ITERATIONS":
            res["iterations"], res["stopped"] = int(f[1]), bool(int(f[2]))
        elif f and f[0] == "PWF_COHLENGTH_YX":
            res["coh_y_m"], res["coh_x_m"] = float(f[1]) * 1e-9, float(f[2]) * 1e-9
    return res


def run_xspeckle(scan: Path, folder: Path, positions: str) -> dict:
    """``xspeckle retrieve --method pwf`` (defaults) and ``xspeckle calibrate --json`` on *scan*, same positions."""
    import h5py
    import numpy as np

    exe = str(Path(sys.executable).with_name("xspeckle"))
    cmd = [exe] if Path(exe).exists() else [sys.executable, "-m", "xspeckle"]
    out = folder / f"xs_{positions.replace(',', '_')}.h5"
    if out.exists():
        out.unlink()
    t0 = time.perf_counter()
    p = subprocess.run(cmd + ["retrieve", str(scan), str(out), "--method", "pwf", "--positions", positions],
                       capture_output=True, text=True)
    sec = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"xspeckle retrieve failed: {p.stderr[-2000:]}")
    with h5py.File(out, "r") as f:
        g = f["retrieval"]
        res = dict(phase=np.asarray(g["phase"][0], np.float32), seconds=sec,
                   iterations=int(g["iterations"][0]) if "iterations" in g else None,
                   stop_reason=(g["stop_reason"][0].decode() if isinstance(g["stop_reason"][0], bytes)
                                else str(g["stop_reason"][0])) if "stop_reason" in g else None,
                   stderr=p.stderr.strip().splitlines()[-1:] if p.stderr.strip() else [])
    c = subprocess.run(cmd + ["calibrate", str(scan), "--json", "--positions", positions], capture_output=True, text=True)
    try:
        j = json.loads(c.stdout)
        res.update(coh_x_m=float(j["coherence_length_x_m"]), coh_y_m=float(j["coherence_length_y_m"]))
    except (ValueError, KeyError):
        res.update(coh_x_m=None, coh_y_m=None)
    return res


# ------------------------------------------------------------------------------------------ the runs
def _load_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def measure(preset: str, size: int, seed: int, *, positions: int, k: int, iter_max: int, pwf_dir: str,
            cache: Path, log=print) -> list[dict]:
    """Rows (authors default stop, authors no stop, xspeckle) for one scan; cached by configuration."""
    key = f"{preset}|{size}|{seed}|P{positions}|K{k}|it{iter_max}|{source_state()}"
    store = _load_cache(cache)
    if key in store:
        log(f"[cached] {key}")
        return store[key]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pwf_authors_") as td:
        folder = Path(td)
        sim, scan = simulate(preset, size, seed, positions, folder)
        truth, mask = sim.truth["phase"][0], sim.truth["sample_mask"][0]
        cols = authors_crop(truth.shape[1])
        tx, ty = float(sim.truth["coherence_length_x_m"]), float(sim.truth["coherence_length_y_m"])
        inp = folder / "frames.mat"
        write_inputs(sim, k, inp)
        base = dict(preset=preset, size=size, seed=seed, K=k, true_x_m=tx, true_y_m=ty)
        for label, it, cc in (("authors PWF.m, own stop rule", 0, math.nan),
                              (f"authors PWF.m, stop rule off (corrCrit −Inf, iterMax {iter_max})", iter_max,
                               -math.inf)):
            r = run_authors(folder, inp, iter_max=it, corr_crit=cc, pwf_dir=pwf_dir)
            ph = r["phase"]
            if ph.shape != (truth.shape[0], cols.stop - cols.start):
                raise RuntimeError(f"unexpected PWF.m output shape {ph.shape} (crop {cols})")
            full = truth.copy()
            full[:, cols] = ph
            rows.append(dict(base, run=label, error=relerr(full, truth, mask, cols), iterations=r["iterations"],
                             stop="stop rule" if r["stopped"] else ("iterMax" if r["stopped"] is not None else "?"),
                             seconds=r["seconds"], coh_x_m=r["coh_x_m"], coh_y_m=r["coh_y_m"], warnings=r["warnings"]))
            log(f"{key} {label}: err {rows[-1]['error']:.3f} it {r['iterations']} {r['seconds']:.1f}s "
                f"coh x {r['coh_x_m']} y {r['coh_y_m']}")
        pos = ",".join(str(i) for i in range(k))
        x = run_xspeckle(scan, folder, pos)
        rows.append(dict(base, run=f"xspeckle pwf (defaults), --positions {pos}",
                         error=relerr(x["phase"], truth, mask, cols), iterations=x["iterations"],
                         stop=x["stop_reason"] or "?", seconds=x["seconds"], coh_x_m=x["coh_x_m"],
                         coh_y_m=x["coh_y_m"], warnings=x["stderr"]))
        log(f"{key} xspeckle: err {rows[-1]['error']:.3f} it {x['iterations']} {x['stop_reason']} {x['seconds']:.1f}s")
    store = _load_cache(cache)
    store[key] = rows
    cache.write_text(json.dumps(store, indent=1))
    return rows


def _pct(v, t):
    return "?" if v is None else f"{v * 1e6:.2f} ({100 * (v / t - 1):+.0f} %)"


def per_iteration(rows: list[dict]) -> dict[tuple, float]:
    """Seconds per Octave iteration per (size, K): slope between the two authors' runs of one scan."""
    out: dict[tuple, list[float]] = {}
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["run"].startswith("authors") and r["iterations"]:
            by.setdefault((r["size"], r["seed"], r["K"]), []).append(r)
    for (size, _seed, k), rs in by.items():
        if len(rs) == 2 and rs[0]["iterations"] != rs[1]["iterations"]:
            a, b = sorted(rs, key=lambda r: r["iterations"])
            s = (b["seconds"] - a["seconds"]) / (b["iterations"] - a["iterations"])
        else:
            s = max(rs, key=lambda r: r["iterations"])
            s = s["seconds"] / s["iterations"]
        out.setdefault((size, k), []).append(s)
    return {key: sorted(v)[len(v) // 2] for key, v in out.items()}


def summary(rows: list[dict]) -> list[str]:
    """One line per (size, K, run kind): mean error over seeds, iterations, calibration deviation ranges."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        kind = r["run"].split(",")[0] + ("" if r["run"].startswith("xspeckle") else ", " + r["run"].split(", ")[1].split(" (")[0])
        groups.setdefault((r["size"], r["K"], kind), []).append(r)
    out = []
    for (size, k, kind), rs in groups.items():
        errs = [r["error"] for r in rs]
        its = [r["iterations"] for r in rs if r["iterations"] is not None]
        dx = [100 * (r["coh_x_m"] / r["true_x_m"] - 1) for r in rs if r["coh_x_m"]]
        dy = [100 * (r["coh_y_m"] / r["true_y_m"] - 1) for r in rs if r["coh_y_m"]]
        s = (f"{size}² K={k}, {kind}: phase error mean {sum(errs) / len(errs):.3f} "
             f"(range {min(errs):.3f}–{max(errs):.3f}, {len(rs)} seed(s))")
        if its:
            s += f"; iterations {min(its)}–{max(its)}"
        if dx and dy:
            s += f"; coherence x {min(dx):+.0f}..{max(dx):+.0f} %, y {min(dy):+.0f}..{max(dy):+.0f} %"
        out.append(s)
    return out


def render(rows: list[dict], command: str, notes: list[str]) -> str:
    table = md_table(
        ["size", "seed", "K", "run", "iterations", "stop", "phase rel. error", "s", "coh x µm (vs true)",
         "coh y µm (vs true)"],
        [[f"{r['size']}²", r["seed"], r["K"], r["run"], r["iterations"] if r["iterations"] is not None else "?",
          r["stop"], f"{r['error']:.3f}", f"{r['seconds']:.0f}", _pct(r["coh_x_m"], r["true_x_m"]),
          _pct(r["coh_y_m"], r["true_y_m"])] for r in rows])
    pit = per_iteration(rows)
    lines = [f"## {TITLE}", "", table, ""]
    if pit:
        lines += ["Octave seconds per iteration (slope between the two authors' runs of a scan, set-up excluded): "
                  + ", ".join(f"{s}² K={k}: {v * 1e3:.0f} ms" for (s, k), v in sorted(pit.items())), ""]
    lines += [f"- {n}" for n in notes + summary(rows)]
    lines += ["", "Phase error: ‖φ − φ_true − c‖/‖φ_true‖ over the truth `sample_mask`, c = mean(φ − φ_true) over "
              "the background, both on the columns PWF.m keeps (`Xrange_wBG`: the outer ~0.5 % of each side "
              "dropped). Coherence lengths: the authors' `speckleGrainSizeFitXY` (cohLength = √π·c·pixel, "
              "Curve Fitting `fit` replaced by an equivalent least-squares fit) and `xspeckle calibrate --positions` "
              "(what `retrieve` uses), on the reference frame(s) of the run. Seconds: wall time of the PWF.m call "
              "(set-up included) and of the whole `xspeckle retrieve` process, on a 2-core machine shared with other "
              "sessions (upper bounds). The authors' code is not in this repository; see the module "
              "docstring for the Octave edits it needs.", "",
              f"Reproduce: `{command}`", "", f"Machine: {machine_line()}", ""]
    return "\n".join(lines)


def run(quick: bool = False, *, preset: str = "indep-beads", sizes=(256,), seeds=(0, 1, 2), iter_max: int = 1500,
        positions: int = 4, multi: int = 0, big: int = 0, pwf_dir: str | None = None, cache: Path = CACHE,
        command: str | None = None) -> str:
    """Markdown section (see the module docstring); ``quick``: 128 px, seed 0, 200 iterations."""
    pwf_dir = pwf_dir or os.environ.get("PWF_MATLAB_DIR", DEFAULT_DIR)
    why = skip_reason(pwf_dir)
    out = RESULTS / f"{NAME}.md"
    if why:
        print(f"bench_pwf_authors: skipped: {why}", file=sys.stderr)
        return out.read_text() if out.exists() else f"## {TITLE}\n\nSkipped: {why}\n"
    if quick:
        sizes, seeds, iter_max, multi, big = (128,), (0,), 200, 0, 0
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    rows: list[dict] = []
    for size in sizes:
        for seed in seeds:
            rows += measure(preset, size, seed, positions=positions, k=1, iter_max=iter_max, pwf_dir=pwf_dir,
                            cache=cache, log=log)
    if multi:
        rows += measure(preset, sizes[0], seeds[0], positions=max(positions, multi), k=multi, iter_max=iter_max,
                        pwf_dir=pwf_dir, cache=cache, log=log)
    if big:
        rows += measure(preset, big, seeds[0], positions=positions, k=1, iter_max=iter_max, pwf_dir=pwf_dir,
                        cache=cache, log=log)
    ver = subprocess.run(["octave-cli", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    import xspeckle

    src = Path(xspeckle.__file__).resolve().parent.parent
    pre, shown = "", source_state()
    if src != (Path(__file__).resolve().parent.parent / "src"):
        pre = f"PYTHONPATH={src} "
        m = re.search(r"xspeckle_([0-9a-f]{7,40})$", src.parent.name)
        if m:  # a `git archive` snapshot of one commit, so that others' uncommitted edits do not leak in
            pre = f"mkdir -p {src.parent} && git archive {m.group(1)} src | tar -x -C {src.parent} && " + pre
            shown = f"commit {m.group(1)} (a `git archive` snapshot in {src.parent})"
    notes = [f"Preset `{preset}` simulated with {positions} diffuser positions (K = 1 uses position 0); "
             f"{ver[0] if ver else 'Octave'}, single thread per FFT as Octave ships it.",
             f"xspeckle (simulator and `pwf`): {shown}."]
    cmd = command or (f"{pre}PWF_MATLAB_DIR={pwf_dir} .venv/bin/python benchmarks/bench_pwf_authors.py "
                      f"--preset {preset} --sizes {','.join(map(str, sizes))} --seeds {','.join(map(str, seeds))} "
                      f"--iter-max {iter_max} --positions {positions}" + (f" --multi {multi}" if multi else "")
                      + (f" --big {big}" if big else "") + (" --quick" if quick else ""))
    return render(rows, cmd, notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=TITLE)
    ap.add_argument("--quick", action="store_true", help="128 px, seed 0, 200 iterations (smoke run)")
    ap.add_argument("--preset", default="indep-beads")
    ap.add_argument("--sizes", default="256", help="comma-separated detector sizes (px)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iter-max", type=int, default=1500, help="iterMax of the run with the stop rule off")
    ap.add_argument("--positions", type=int, default=4, help="diffuser positions simulated")
    ap.add_argument("--multi", type=int, default=0, help="also a K-position run (first size, first seed)")
    ap.add_argument("--big", type=int, default=0, help="also one single-position run at this size (first seed)")
    ap.add_argument("--cache", type=Path, default=CACHE, help="JSON cache of finished rows")
    ap.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.md")
    a = ap.parse_args(argv)
    why = skip_reason()
    if why:
        print(f"bench_pwf_authors: skipped: {why}", file=sys.stderr)
        return 0
    text = run(a.quick, preset=a.preset, sizes=tuple(int(s) for s in a.sizes.split(",")),
               seeds=tuple(int(s) for s in a.seeds.split(",")), iter_max=a.iter_max, positions=a.positions,
               multi=a.multi, big=a.big, cache=a.cache)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
