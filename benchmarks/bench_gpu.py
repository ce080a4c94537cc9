"""GPU benchmark (CuPy): PWF, MIST, FBP and the device's roofline anchors, in under 5 minutes.

Run as is on a machine with a CUDA GPU and CuPy (xspeckle need not be installed)::

    PYTHONPATH=src python3 benchmarks/bench_gpu.py            # writes benchmarks/results/gpu.md (+ $OUT/gpu.md)

Where CuPy or a device is missing it prints ONE line (``bench_gpu: skipped: ...``) and exits 0.
``--cpu-dry-run`` runs every section end to end on NumPy at tiny sizes (timings meaningless; it
checks the code paths; the test suite runs it).

Sections (each in its own try/except: an error prints a short traceback and the next section runs;
past ``--budget-s`` (default 240 s) the remaining sections are skipped):

- roofline anchors: device-to-device copy bandwidth (a 1 GiB float32 copy, bytes read + written)
  and one complex64 FFT of the PWF grid of a 2560 × 2160 frame (``PWFModel.shape``);
- PWF at 2560 × 2160 on synthetic speckle (coherence lengths given, so no calibration): seconds per
  iteration single (one ``gradient`` call, and a full solver iteration from the difference of two
  fixed-length ``solve`` runs) and batched (B = 4, 8), and projections per second for a 32-angle
  batch at a fixed 50 iterations (``solve(min_iter=max_iter=50)``, prepare and finish included);
- MIST (phase-object model) 2048², N = 4: set-up and seconds per projection of a prepared retriever;
- FBP (gridrec, ``tomo/fbp.py`` on CuPy): one slice 2560 × 801 angles, and per slice in a 16-slice batch;
- correctness: each GPU code path against the CPU (NumPy) result on the same input at a small size
  (relative L2 error ``‖gpu − cpu‖ / ‖cpu‖``).

Timing: warm-up calls first (cuFFT plans, kernel compilation), then the median of repeats timed with
CUDA events (``perf_counter`` + synchronize in the dry run).

Also importable by ``benchmarks/run.py`` (``run(quick)``): on a machine without a GPU it returns the
last measured ``results/gpu.md`` unchanged (or a "not measured" section), so CPU-only benchmark runs
never erase GPU figures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

TITLE = "GPU (CuPy): PWF, MIST, FBP and roofline anchors"
COMMAND = "PYTHONPATH=src python3 benchmarks/bench_gpu.py"

XC, YC = 3.48e-6, 4.31e-6  # detector-plane coherence lengths (m), as benchmarks/bench_pwf.py
#: scheme of the per-iteration timings: the paper's FISTA iteration (one gradient per iteration); the
#: 32-angle batch runs the default scheme (what a user gets) and reports the gradient evaluations it made
SCHEME_ITER = "fast"

#: full sizes (GPU) and tiny sizes (--cpu-dry-run)
SIZES = {
    "full": dict(pwf=(2160, 2560), batches=(4, 8), angles_batch=32, iters_batch=50, it_short=3, it_long=13,
                 mist=2048, mist_n=4, fbp_det=2560, fbp_angles=801, fbp_batch=16, copy_mib=1024,
                 check_pwf=(192, 224), check_mist=256, check_fbp=(181, 256), check_iters=20, repeats=5),
    "dry": dict(pwf=(48, 56), batches=(2,), angles_batch=3, iters_batch=4, it_short=2, it_long=4,
                mist=48, mist_n=4, fbp_det=64, fbp_angles=31, fbp_batch=2, copy_mib=4,
                check_pwf=(40, 48), check_mist=40, check_fbp=(31, 48), check_iters=3, repeats=2),
}


# --------------------------------------------------------------------------- set-up
def probe_gpu() -> str | None:
    """None when CuPy imports and sees a CUDA device, else the reason (one line)."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising on import
        return f"CuPy not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"no CUDA device ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if n < 1:
        return "no CUDA device (device count 0)"
    return None


class Ctx:
    """Array module, timer and time budget of one benchmark run."""

    def __init__(self, gpu: bool, budget_s: float, sizes: dict):
        self.gpu = gpu
        self.t0 = time.perf_counter()
        self.budget_s = float(budget_s)
        self.sz = sizes
        if gpu:
            import cupy

            self.xp = cupy
        else:
            self.xp = np
        self.rows: list[list[str]] = []
        self.errors: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def sync(self) -> None:
        if self.gpu:
            self.xp.cuda.Device().synchronize()

    def time(self, fn, *, warmup: int = 1, repeats: int | None = None) -> float:
        """Median seconds of ``fn()`` over *repeats* calls after *warmup* untimed calls."""
        repeats = self.sz["repeats"] if repeats is None else repeats
        for _ in range(warmup):
            fn()
        self.sync()
        ts = []
        for _ in range(max(1, repeats)):
            if self.gpu:
                e0, e1 = self.xp.cuda.Event(), self.xp.cuda.Event()
                e0.record()
                fn()
                e1.record()
                e1.synchronize()
                ts.append(self.xp.cuda.get_elapsed_time(e0, e1) / 1e3)
            else:
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    def row(self, section: str, quantity: str, value: float, unit: str, check: str = "", note: str = "") -> None:
        v = f"{value:.4g}" if isinstance(value, float) else str(value)
        self.rows.append([section, quantity, v, unit, check, note])
        print(f"  {section:8s} {quantity:52s} {v:>12s} {unit:10s} {check} {note}", flush=True)

    def to_dev(self, a):
        return self.xp.asarray(a)


def relerr(gpu_val, cpu_val) -> float:
    """‖a − b‖ / ‖b‖ (host float64)."""
    from xspeckle import backend as B

    a = np.asarray(B.asnumpy(gpu_val), dtype=np.complex128 if np.iscomplexobj(gpu_val) else np.float64)
    b = np.asarray(B.asnumpy(cpu_val), dtype=a.dtype)
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30))


def _speckle(h: int, w: int, k: int = 1, seed: int = 0) -> np.ndarray:
    """Log-normal synthetic speckle ``(k, h, w)`` float32, mean ≈ 1, grains ≈ 2.5 px (host)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = np.empty((k, h, w), np.float32)
    for i in range(k):
        f = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 1.2)
        out[i] = np.exp(0.25 * f / f.std())
    out /= out.mean()
    return out


def _pwf_geometry():
    from xspeckle.geometry import Geometry

    return Geometry(energy_ev=10000.0, pixel_size_m=650e-9, sample_detector_distance_m=0.023,
                    diffuser_position="downstream", diffuser_detector_distance_m=0.020,
                    coherence_length_x_m=XC, coherence_length_y_m=YC)


def _pwf_input(h: int, w: int, nb: int, seed: int = 0):
    """Reference ``(1, h, w)`` and samples ``(nb, 1, h, w)`` (speckle × a weak lens, host float32)."""
    ref = _speckle(h, w, 1, seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    r2 = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (0.3 * min(h, w)) ** 2
    lens = np.clip(1 - r2, 0, None)
    sam = np.empty((nb, 1, h, w), np.float32)
    rng = np.random.default_rng(seed + 1)
    for b in range(nb):
        shifted = np.roll(ref[0], 1 + b % 3, axis=1)  # a crude sample-induced speckle shift inside the lens
        sam[b, 0] = (ref[0] + lens * (shifted - ref[0])) * (1 - 0.05 * lens)
        sam[b, 0] *= 1 + 0.01 * rng.standard_normal((h, w)).astype(np.float32)
    return ref, sam


# --------------------------------------------------------------------------- sections
def sec_device(c: Ctx) -> None:
    if c.gpu:
        import cupy

        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        free, total = cupy.cuda.runtime.memGetInfo()
        c.info = (f"{name}, {total / 2**30:.0f} GiB ({free / 2**30:.0f} free), CuPy {cupy.__version__}, "
                  f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver {cupy.cuda.runtime.driverGetVersion()}")
    else:
        c.info = f"CPU dry run (NumPy {np.__version__}; timings meaningless)"
    print(f"  device: {c.info}", flush=True)


def sec_roofline(c: Ctx) -> None:
    from xspeckle import backend as B
    from xspeckle.retrieve.pwf import PWFModel

    xp = c.xp
    n = c.sz["copy_mib"] * 2**20 // 4
    a = xp.ones(n, dtype=np.float32)
    b = xp.empty_like(a)
    t = c.time(lambda: xp.copyto(b, a), warmup=2)
    c.bw = 2 * a.nbytes / t                                              # read + write
    c.row("roofline", f"device copy bandwidth ({a.nbytes / 2**20:.0f} MiB float32, read+write)", c.bw / 1e9, "GB/s")
    del a, b
    # the PWF grid of a 2560 × 2160 frame, from the model itself (cheap: tiny reference, same geometry scaling)
    h, w = c.sz["pwf"]
    ref, _ = _pwf_input(h, w, 1)
    model = PWFModel(c.to_dev(ref), _pwf_geometry())
    c.grid = model.shape
    rng = np.random.default_rng(0)
    x = c.to_dev((rng.standard_normal(c.grid) + 1j * rng.standard_normal(c.grid)).astype(np.complex64))
    t = c.time(lambda: B.fft2(x), warmup=2)
    c.t_fft = t
    A = x.nbytes
    c.row("roofline", f"one complex64 FFT of the PWF grid {c.grid[0]}×{c.grid[1]}", t * 1e3, "ms",
          note=f"{4 * A / t / 1e9:.0f} GB/s at ≥ 4A bytes (A = {A / 1e6:.0f} MB)")
    c.row("roofline", "  FFT floor at the copy bandwidth (4A bytes)", 4 * A / c.bw * 1e3, "ms")
    del x, model


def sec_pwf_check(c: Ctx) -> None:
    """GPU vs CPU PWF: gradient at a random ψ and a 20-iteration solve at a small size."""
    from xspeckle.retrieve.pwf import PWFModel

    h, w = c.sz["check_pwf"]
    ref, sam = _pwf_input(h, w, 1, seed=3)
    g = _pwf_geometry()
    for kw in ({}, {"delta_over_beta": 300.0}):
        mc = PWFModel(ref, g, **kw)
        mg = PWFModel(c.to_dev(ref), g, **kw)
        rng = np.random.default_rng(1)
        psi = (0.01 * rng.standard_normal((1, 1) + mc.shape) - 0.05j * rng.random((1, 1) + mc.shape)).astype(np.complex64)
        _, yc = mc.prepare(sam)
        _, yg = mg.prepare(c.to_dev(sam))
        gc = mc.gradient(psi, yc)
        try:
            gg = mg.gradient(c.to_dev(psi), yg)
        except Exception as e:  # the fused CuPy path failed: say so, measure the reference path from here on
            from xspeckle.retrieve import pwf_kernels

            if not pwf_kernels.USE_FUSED:
                raise
            pwf_kernels.USE_FUSED = False
            c.errors.append(f"fused PWF gradient on the device: {type(e).__name__}: {str(e)[:150]}; "
                            "the PWF rows below are the reference path")
            print(f"  fused gradient failed on the device ({type(e).__name__}: {e}); using the reference path",
                  flush=True)
            gg = mg.gradient(c.to_dev(psi), yg)
        lab = " (δ/β prior)" if kw else ""
        c.row("check", f"PWF gradient{lab} GPU vs CPU, {w}×{h}", relerr(gg[1], gc[1]), "rel. L2",
              note=f"g_re {relerr(gg[0], gc[0]):.1e}, loss {relerr(gg[2], gc[2]):.1e}")
        ni = c.sz["check_iters"]
        rc = mc.solve(sam, min_iter=ni, max_iter=ni, scheme=SCHEME_ITER)
        rg = mg.solve(c.to_dev(sam), min_iter=ni, max_iter=ni, scheme=SCHEME_ITER)
        c.row("check", f"PWF phase after {ni} iterations{lab} GPU vs CPU", relerr(rg.phase, rc.phase), "rel. L2")


def sec_pwf_single(c: Ctx) -> None:
    from xspeckle.retrieve.pwf import PWFModel

    h, w = c.sz["pwf"]
    ref, sam = _pwf_input(h, w, 1)
    t0 = time.perf_counter()
    model = PWFModel(c.to_dev(ref), _pwf_geometry())
    c.sync()
    c.row("pwf", f"set-up (PWFModel, {w}×{h}, K = 1, grid {model.shape[0]}×{model.shape[1]})",
          time.perf_counter() - t0, "s", note="includes first-call cuFFT planning")
    s = c.to_dev(sam)
    _, yspec = model.prepare(s)
    rng = np.random.default_rng(0)
    psi = c.to_dev((0.01 * rng.standard_normal((1, 1) + model.shape)).astype(np.complex64))
    t = c.time(lambda: model.gradient(psi, yspec), warmup=2)
    c.t_grad = t
    note = f"{t / c.t_fft:.1f} FFT-equivalents" if getattr(c, "t_fft", None) else ""
    c.row("pwf", "gradient (model + adjoint + regulariser), 1 projection", t * 1e3, "ms", note=note)
    from xspeckle.retrieve import pwf_kernels

    if pwf_kernels.USE_FUSED:  # the same with the reference path (one CuPy kernel per NumPy operation)
        pwf_kernels.USE_FUSED = False
        try:
            t_ref = c.time(lambda: model.gradient(psi, yspec), warmup=1)
        finally:
            pwf_kernels.USE_FUSED = True
        c.row("pwf", "  gradient by the reference path (pwf_kernels.USE_FUSED = False)", t_ref * 1e3, "ms",
              note=f"fused path {t_ref / t:.2f}× faster")
    n1, n2 = c.sz["it_short"], c.sz["it_long"]
    t1 = c.time(lambda: model.solve(s, min_iter=n1, max_iter=n1, scheme=SCHEME_ITER), warmup=1, repeats=2)
    t2 = c.time(lambda: model.solve(s, min_iter=n2, max_iter=n2, scheme=SCHEME_ITER), warmup=0, repeats=2)
    per = (t2 - t1) / (n2 - n1)
    c.per_iter1 = per
    c.row("pwf", f"solver iteration ('{SCHEME_ITER}'), 1 projection (solve(n2) − solve(n1))/(n2 − n1)", per * 1e3, "ms",
          note=f"n1={n1}, n2={n2}; goal ≤ 2 ms")
    c.row("pwf", "  whole solve of 1 projection at 1000 iterations (extrapolated)", t1 + per * (1000 - n1), "s")


def sec_pwf_batched(c: Ctx) -> None:
    from xspeckle.retrieve.pwf import PWFModel

    h, w = c.sz["pwf"]
    ref, _ = _pwf_input(h, w, 1)
    model = PWFModel(c.to_dev(ref), _pwf_geometry())
    n1, n2 = c.sz["it_short"], c.sz["it_long"]
    for nb in c.sz["batches"]:
        if c.left() < 30 and c.gpu:
            c.row("pwf", f"batch B = {nb}", "skipped", "", note="time budget")
            continue
        _, sam = _pwf_input(h, w, nb, seed=nb)
        s = c.to_dev(sam)
        t1 = c.time(lambda: model.solve(s, min_iter=n1, max_iter=n1, scheme=SCHEME_ITER), warmup=1, repeats=1)
        t2 = c.time(lambda: model.solve(s, min_iter=n2, max_iter=n2, scheme=SCHEME_ITER), warmup=0, repeats=1)
        per = (t2 - t1) / (n2 - n1)
        base = getattr(c, "per_iter1", None)
        note = f"{base * nb / per:.2f}× the throughput of B = 1" if base else ""
        c.row("pwf", f"solver iteration ('{SCHEME_ITER}'), batch B = {nb}, per projection", per / nb * 1e3, "ms",
              note=note)
        del s
        if c.gpu:
            c.xp.get_default_memory_pool().free_all_blocks()


def sec_pwf_angles(c: Ctx) -> None:
    from xspeckle.retrieve.pwf import PWFModel

    h, w = c.sz["pwf"]
    na, ni = c.sz["angles_batch"], c.sz["iters_batch"]
    if c.gpu and c.left() < 60:
        c.row("pwf", f"{na}-angle batch", "skipped", "", note="time budget")
        return
    ref, sam = _pwf_input(h, w, na, seed=7)
    model = PWFModel(c.to_dev(ref), _pwf_geometry())
    s = c.to_dev(sam)
    del sam
    res = {}

    def once():
        res["r"] = model.solve(s, min_iter=ni, max_iter=ni)

    t = c.time(once, warmup=0, repeats=1)  # the first call plans cuFFT for B = 32
    t = min(t, c.time(once, warmup=0, repeats=1))
    it = float(np.mean(res["r"].iterations))
    scheme = res["r"].parameters.get("scheme", "default")
    c.row("pwf", f"{na}-angle batch, {ni} iterations each, scheme '{scheme}' (prepare + solve + finish)", na / t,
          "proj/s", note=f"{t:.2f} s per batch; {it:.0f} gradient evaluations each; "
                         f"{t / na / max(it, 1) * 1e3:.2f} ms per projection-evaluation")
    if c.gpu:
        free, total = c.xp.cuda.runtime.memGetInfo()
        c.row("pwf", f"  device memory pool after the {na}-angle batch",
              c.xp.get_default_memory_pool().total_bytes() / 2**30, "GiB")
    del s
    if c.gpu:
        c.xp.get_default_memory_pool().free_all_blocks()


def sec_mist(c: Ctx) -> None:
    from xspeckle.geometry import Geometry
    from xspeckle.retrieve.mist import MISTRetriever

    g = Geometry(energy_ev=25000.0, pixel_size_m=6.5e-6, sample_detector_distance_m=0.7)

    def inputs(n, k):
        ref = _speckle(n, n, k, seed=5)
        yy, xx = np.mgrid[:n, :n].astype(np.float32)
        disc = (((yy - n / 2) ** 2 + (xx - n / 2) ** 2) < (0.35 * n) ** 2).astype(np.float32)
        from scipy import ndimage

        smp = np.stack([ref[i] + disc * (ndimage.gaussian_filter(ref[i], 0.6) - ref[i]) for i in range(k)])
        smp *= 1 - 0.01 * disc
        return ref, smp.astype(np.float32)

    n, k = c.sz["mist"], c.sz["mist_n"]
    ref, smp = inputs(n, k)
    rd, sd = c.to_dev(ref), c.to_dev(smp)
    t0 = time.perf_counter()
    r = MISTRetriever(rd, g)
    c.sync()
    c.row("mist", f"set-up (MISTRetriever phase-object, {n}², N = {k})", time.perf_counter() - t0, "s",
          note="first call: includes kernel compilation")
    t = c.time(lambda: r(sd), warmup=1, repeats=3)
    c.row("mist", f"per projection, {n}², N = {k}", t * 1e3, "ms")
    del rd, sd, r
    # correctness at a small size
    n = c.sz["check_mist"]
    ref, smp = inputs(n, k)
    oc = MISTRetriever(ref, g)(smp)
    og = MISTRetriever(c.to_dev(ref), g)(c.to_dev(smp))
    c.row("check", f"MIST phase GPU vs CPU, {n}², N = {k}", relerr(og["phase"], oc["phase"]), "rel. L2",
          note=f"diffusion {relerr(og['diffusion'], oc['diffusion']):.1e}")


def sec_fbp(c: Ctx) -> None:
    from scipy import ndimage

    from xspeckle.tomo.fbp import fbp

    def sino(a, w, s=1):
        rng = np.random.default_rng(11)
        return ndimage.gaussian_filter(rng.standard_normal((s, a, w)).astype(np.float32), (0, 0.5, 2.0))

    a, w = c.sz["fbp_angles"], c.sz["fbp_det"]
    theta = np.linspace(0.0, 180.0, a, endpoint=False)
    sd = c.to_dev(sino(a, w, 1)[0])
    t = c.time(lambda: fbp(sd, theta), warmup=1, repeats=3)
    c.row("fbp", f"one slice {w}×{w}, {a} angles (gridrec)", t, "s")
    nb = c.sz["fbp_batch"]
    sb = c.to_dev(sino(a, w, nb))
    t = c.time(lambda: fbp(sb, theta, batch=nb), warmup=1, repeats=2)
    c.row("fbp", f"  per slice in a {nb}-slice batch", t / nb, "s", note=f"2160 slices: {2160 * t / nb / 60:.1f} min")
    del sd, sb
    a, w = c.sz["check_fbp"]
    theta = np.linspace(0.0, 180.0, a, endpoint=False)
    s = sino(a, w, 1)[0]
    c.row("check", f"FBP slice GPU vs CPU, {w} px, {a} angles", relerr(fbp(c.to_dev(s), theta), fbp(s, theta)), "rel. L2")


def sec_cpu_threads(c: Ctx) -> None:
    """The host's CPU (many cores on a GPU machine): FFT workers and fused-PWF threads (benchmarks/bench_threads.py)."""
    sys.path.insert(0, str(HERE))
    from bench_threads import fft_rows, pwf_rows

    from xspeckle.backend import available_cores

    nc = available_cores()
    workers = sorted({w for w in (1, 2, 4, 8, 16, nc) if w <= nc} | {1, 2})
    full = c.gpu
    for size, w, ms, ratio in fft_rows([(2520, 3000)] if full else [64], workers, rounds=3 if full else 1):
        c.row("cpu", f"complex64 fft2 {size}, {w} workers ({nc} cores)", float(ms), "ms", note=f"{ratio}× 1 worker")
    for frame, grid, w, ms, ratio in pwf_rows([1024] if full else [48], workers, rounds=2 if full else 1):
        c.row("cpu", f"fused PWF gradient {frame} (grid {grid}), {w} threads", float(ms), "ms",
              note=f"{ratio}× 1 thread")


SECTIONS = [("device", sec_device), ("roofline", sec_roofline), ("pwf-check", sec_pwf_check),
            ("pwf-single", sec_pwf_single), ("pwf-batched", sec_pwf_batched), ("pwf-angles", sec_pwf_angles),
            ("mist", sec_mist), ("fbp", sec_fbp), ("cpu-threads", sec_cpu_threads)]


# --------------------------------------------------------------------------- report
def markdown(c: Ctx, dry: bool) -> str:
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = ["| section | quantity | value | unit | GPU vs CPU | note |", "|---|---|---|---|---|---|"]
    body = []
    for sec, q, v, u, chk, note in c.rows:
        if sec == "check":
            body.append(f"| {sec} | {q} | | | {v} | {note} |")
        else:
            body.append(f"| {sec} | {q} | {v} | {u} | | {note} |")
    lines = [f"## {TITLE}", ""]
    if dry:
        lines += ["**CPU dry run (NumPy, tiny sizes): the figures below only show that every section runs.**", ""]
    lines += [
        "Synthetic speckle; PWF at the 2560 × 2160 frame (its padded, resampled grid as stated), K = 1, "
        "coherence lengths given; complex64/float32; CuPy + cuFFT, the project's NumPy/CuPy code path. "
        "Times: median of repeats after warm-up, CUDA events. 'GPU vs CPU' = ‖gpu − cpu‖/‖cpu‖ on the same "
        "input at a small size.",
        "",
        *head, *body, "",
    ]
    if c.errors:
        lines += ["Sections that failed: " + "; ".join(c.errors), ""]
    lines += [f"Reproduce: `{COMMAND}{' --cpu-dry-run' if dry else ''}`", "",
              f"Machine: {c.info if hasattr(c, 'info') else '?'}; host {platform.node() or '?'}, "
              f"Python {platform.python_version()}, NumPy {np.__version__}; {date}; "
              f"total {c.elapsed():.0f} s", ""]
    return "\n".join(lines)


def measure(gpu: bool, budget_s: float, only: list[str] | None = None) -> tuple[Ctx, str]:
    c = Ctx(gpu, budget_s, SIZES["full" if gpu else "dry"])
    for name, fn in SECTIONS:
        if only and name not in only and name != "device":
            continue
        if c.left() <= 0:
            print(f"[{name}] skipped: time budget of {budget_s:.0f} s spent", flush=True)
            c.errors.append(f"{name}: skipped (time budget)")
            continue
        print(f"[{name}] ({c.elapsed():.0f} s)", flush=True)
        try:
            fn(c)
        except Exception as e:
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=-4))
            print(f"[{name}] FAILED:\n{tb}", flush=True)
            c.errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        finally:
            if gpu:
                try:
                    c.sync()
                    c.xp.get_default_memory_pool().free_all_blocks()
                except Exception:
                    pass
    return c, markdown(c, dry=not gpu)


def run(quick: bool = False) -> str:
    """Entry point of ``benchmarks/run.py``: measure on a GPU, else keep the last GPU figures."""
    if probe_gpu() is None:
        return measure(True, 240.0)[1]
    old = RESULTS / "gpu.md"
    if old.is_file() and "CPU dry run" not in old.read_text():
        return old.read_text()
    return (f"## {TITLE}\n\nNot measured: no CUDA GPU was available when the benchmarks last ran. "
            f"On a GPU machine: `{COMMAND}`.\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=TITLE)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run every section on NumPy at tiny sizes (checks the code paths; timings meaningless)")
    ap.add_argument("--budget-s", type=float, default=240.0, help="skip the remaining sections past this many seconds")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown output (default benchmarks/results/gpu.md on a GPU; none in a dry run)")
    ap.add_argument("--only", action="append", default=[], help="run only this section (repeatable): "
                    + ", ".join(n for n, _ in SECTIONS))
    a = ap.parse_args(argv)
    if not a.cpu_dry_run:
        why = probe_gpu()
        if why is not None:
            print(f"bench_gpu: skipped: {why}")
            return 0
    c, text = measure(not a.cpu_dry_run, a.budget_s, a.only or None)
    print()
    print(text)
    out = a.out if a.out is not None else (None if a.cpu_dry_run else RESULTS / "gpu.md")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
        env_out = os.environ.get("OUT")
        if env_out:
            try:
                Path(env_out).mkdir(parents=True, exist_ok=True)
                shutil.copy(out, Path(env_out) / "gpu.md")
                print(f"copied to {Path(env_out) / 'gpu.md'}")
            except OSError as e:
                print(f"could not copy to $OUT: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
