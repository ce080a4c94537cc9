"""MIST benchmark: xspeckle's MIST against LCS-Retrieval's ``mist_df`` on the same input.

Input: a synthetic speckle stack (N = 4 positions, 2048 × 2048, float32): log-normal speckle of
~2.5 px grains, a sample that blurs it (uniform Fokker–Planck diffusion inside a disc) and
lenses it slightly.  Both codes get the same arrays, each in its own layout (ours (N, H, W),
LCS-Retrieval (H, W, N); the transposition is done once, outside the timings).

Rows: the plain function ``xspeckle.retrieve.mist.mist`` (reference work + one projection: the
call comparable with ``mist_df``), with and without the opt-in blur calibration; the
per-projection cost of a prepared ``MISTRetriever`` (what a tomography scan pays per angle); the
same two with the NumPy path (numba kernels switched off, as without the ``[fast]`` extra);
``mist.mist_df(..., win_size=1)`` from ``lcs-retrieval`` (its non-windowed MIST).  Warm calls
(one untimed call first); the first call in a fresh process (numba import and kernel load from
its disk cache, FFT set-up) is timed separately in a subprocess for both codes.  Also the
correlation of the two D maps (LCS-Retrieval's D is in px² units: D_eff = D·p²; its default
α = 1e5 would zero D, so α = 1e-6).

Standalone: ``python benchmarks/bench_mist.py [--quick]`` writes ``benchmarks/results/mist.md``
(run it under the shared lock: ``flock /tmp/xspeckle-bench.lock .venv/bin/python benchmarks/bench_mist.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench, main_standalone, md_table, section  # noqa: E402

TITLE = "MIST (Pavlov 2020): xspeckle vs LCS-Retrieval mist_df"


def make_input(n: int, positions: int, seed: int = 0):
    """Synthetic reference/sample stacks (positions, n, n) float32 and a Geometry."""
    import scipy.fft as sfft
    from scipy import ndimage

    from xspeckle.geometry import Geometry

    g = Geometry(energy_ev=25000.0, pixel_size_m=6.5e-6, sample_detector_distance_m=0.7)
    rng = np.random.default_rng(seed)
    ref = np.empty((positions, n, n), np.float32)
    for i in range(positions):
        f = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), 1.2)
        ref[i] = np.exp(0.25 * f / f.std())
    ref /= ref.mean()
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    r2 = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2) / (0.35 * n) ** 2
    disc = ndimage.gaussian_filter((r2 < 1).astype(np.float32), 4)
    d_eff = 8e-12  # m, blur σ ≈ 0.5 px
    ky = 2 * np.pi * np.fft.fftfreq(n, g.pixel_size_m)[:, None]
    kx = 2 * np.pi * np.fft.rfftfreq(n, g.pixel_size_m)[None, :]
    fac = np.exp(-g.sample_detector_distance_m * d_eff * (kx**2 + ky**2)).astype(np.float32)
    blurred = sfft.irfft2(sfft.rfft2(ref, workers=-1) * fac, s=(n, n), workers=-1).astype(np.float32)
    smp = ref + disc * (blurred - ref)  # diffusion inside the disc only
    smp *= 1 - 0.01 * disc  # weak lensing/attenuation
    return ref, smp.astype(np.float32), g


_FIRST_CALL = """
import sys, time
sys.path.insert(0, {bench!r})
import numpy as np
from bench_mist import make_input
ref, smp, g = make_input({n}, {positions})
if {which!r} == "lcs":  # the layout change is not timed (as in the warm rows)
    r, s = np.ascontiguousarray(np.moveaxis(ref, 0, -1)), np.ascontiguousarray(np.moveaxis(smp, 0, -1))
t0 = time.perf_counter()  # the method's own imports are timed
if {which!r} == "ours":
    from xspeckle.retrieve.mist import mist
    mist(reference=ref, sample=smp, geometry=g, blur_calibration=False)
else:
    from mist import mist_df
    mist_df(r, s, g.sample_detector_distance_m, g.wavelength_m, win_size=1, alpha=1e-6)
print(time.perf_counter() - t0)
"""


def _first_call_s(which: str, n: int, positions: int) -> float | None:
    """Seconds of the first call (imports inside the timing) in a fresh interpreter, or None on failure."""
    import subprocess

    code = _FIRST_CALL.format(bench=str(Path(__file__).resolve().parent), n=n, positions=positions, which=which)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def run(quick: bool = False) -> str:
    import xspeckle.retrieve.mist as mist_mod
    from xspeckle.backend import fft_workers
    from xspeckle.retrieve.mist import MISTRetriever, mist

    n = 512 if quick else 2048
    positions = 4
    repeats = 5
    ref, smp, g = make_input(n, positions)
    rows, timings = [], []
    fast = mist_mod._fast_available(np)

    t_ours = bench(lambda: mist(reference=ref, sample=smp, geometry=g, blur_calibration=False),
                   label="ours", warmup=1, repeats=repeats)
    t_cal = bench(lambda: mist(reference=ref, sample=smp, geometry=g, blur_calibration=True), label="ours cal",
                  warmup=1, repeats=repeats)
    r = MISTRetriever(ref, g, blur_calibration=False)
    t_call = bench(lambda: r(smp), label="ours call", warmup=1, repeats=repeats)
    timings += [t_ours, t_cal, t_call]
    ours_out = r(smp)
    ours = ours_out["diffusion"]
    # the NumPy path (no numba kernels), on the same input
    saved = mist_mod._USE_NUMBA
    mist_mod._USE_NUMBA = False
    try:
        t_np = bench(lambda: mist(reference=ref, sample=smp, geometry=g, blur_calibration=False),
                     label="numpy", warmup=1, repeats=repeats)
        r_np = MISTRetriever(ref, g, blur_calibration=False)
        t_np_call = bench(lambda: r_np(smp), label="numpy call", warmup=1, repeats=repeats)
        np_out = r_np(smp)
    finally:
        mist_mod._USE_NUMBA = saved
    timings += [t_np, t_np_call]
    path_diff = max(float(np.abs(ours_out[k] - np_out[k]).max() / np.abs(np_out[k]).max()) for k in ("phase", "diffusion"))

    try:
        from mist import mist_df  # lcs-retrieval installs a top-level package "mist"

        ref_l = np.ascontiguousarray(np.moveaxis(ref, 0, -1))
        smp_l = np.ascontiguousarray(np.moveaxis(smp, 0, -1))
        t_lcs = bench(lambda: mist_df(ref_l, smp_l, g.sample_detector_distance_m, g.wavelength_m, win_size=1, alpha=1e-6),
                      label="lcs", warmup=1, repeats=repeats)
        timings.append(t_lcs)
        theirs = mist_df(ref_l, smp_l, g.sample_detector_distance_m, g.wavelength_m, win_size=1, alpha=1e-6)["Deff"]
        theirs_m = theirs * g.pixel_size_m**2  # px² → m (D_eff = D·p², our reading of its code)
        corr = float(np.corrcoef(ours.ravel(), theirs_m.ravel())[0, 1])
        inner = (slice(n // 4, 3 * n // 4), slice(n // 4, 3 * n // 4))
        ratio = float(np.median(theirs_m[inner]) / np.median(ours[inner]))
        lcs_cell = t_lcs.cell()
    except ImportError:
        t_lcs, corr, ratio, lcs_cell = None, float("nan"), float("nan"), "not installed"
    first_ours = _first_call_s("ours", n, positions)
    first_lcs = _first_call_s("lcs", n, positions) if t_lcs is not None else None

    def speed(t):
        if t_lcs is None:
            return "—"
        return f"{t_lcs.median_s / t.median_s:.1f}x (min/min {t_lcs.min_s / t.min_s:.1f}x)"

    def cells(t):
        return [t.cell(), f"{t.min_s * 1e3:.1f}"]

    kern = "numba kernels" if fast else "NumPy path: numba not importable"
    rows.append([f"xspeckle `mist()` (reference work + 1 projection, first order as the paper; {kern})", *cells(t_ours), speed(t_ours)])
    rows.append(["xspeckle `mist(blur_calibration=True)` (opt-in extension)", *cells(t_cal), speed(t_cal)])
    rows.append([f"xspeckle `MISTRetriever.__call__` (per projection, reference work done; {kern})", *cells(t_call), speed(t_call)])
    rows.append(["xspeckle `mist()`, NumPy path (`XSPECKLE_NUMBA=0`)", *cells(t_np), speed(t_np)])
    rows.append(["xspeckle `MISTRetriever.__call__`, NumPy path", *cells(t_np_call), speed(t_np_call)])
    rows.append(["LCS-Retrieval 0.1.1 `mist.mist_df(win_size=1)`", lcs_cell,
                 f"{t_lcs.min_s * 1e3:.1f}" if t_lcs is not None else "—", "1.0x" if t_lcs is not None else "—"])

    def fmt_first(s):
        return "failed" if s is None else f"{s * 1e3:.0f} ms"

    first = (f"First call in a fresh process (imports, numba kernel load from its disk cache, page faults; one run "
             f"each): xspeckle `mist()` {fmt_first(first_ours)}, LCS-Retrieval `mist_df` {fmt_first(first_lcs)}"
             + (f" ({first_lcs / first_ours:.1f}x)" if first_ours and first_lcs else "") + ".")
    body = (f"Input: {positions} positions × {n} × {n} float32 (synthetic speckle, sample = FP diffusion "
            f"D_eff = 8e-12 m in a disc); times are medians of {repeats} warm runs in ms; "
            f"{fft_workers()} thread(s) for the FFTs and the numba kernels.\n\n"
            + md_table(["implementation", "median (ms)", "min (ms)", "speed-up vs LCS-Retrieval"], rows)
            + "\n\n" + first
            + f"\n\nAgreement: correlation of the two D_eff maps {corr:.3f}; median ratio LCS-Retrieval/xspeckle "
              f"in the central quarter {ratio:.3f} (same first-order model; LCS-Retrieval works in px² and "
              "a batched float32 solve per call, xspeckle in SI with the normal-matrix inverses precomputed from the "
              f"reference).  numba and NumPy paths: largest difference {path_diff:.1e} of the map's maximum "
              "(phase, D_eff; float rounding).")
    cmd = "flock /tmp/xspeckle-bench.lock .venv/bin/python benchmarks/bench_mist.py" + (" --quick" if quick else "")
    return section(TITLE, body, cmd, quick=quick, timings=timings)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
