"""GPU check of issue 18's numerical code paths: the same functions on CuPy and NumPy must agree.

Run on a CUDA machine: ``PYTHONPATH=src python3 benchmarks/gpu_check_issue18.py`` (one line per check, exit 1 on
a mismatch; one line and exit 0 without CuPy). Covers ``tomo.rings.remove_rings(method="gain")``,
``tomo.sinogram.remove_offset_tilt``, ``preprocess.estimate_drift`` / ``shift_reference`` and
``preprocess.flat_for_angle``.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def main() -> int:
    try:
        import cupy as cp

        cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no CuPy or no device
        print(f"gpu_check_issue18: skipped, no CuPy/CUDA ({type(exc).__name__})")
        return 0
    from scipy import ndimage as ndi

    from xspeckle.preprocess import estimate_drift, flat_for_angle, shift_reference
    from xspeckle.tomo.fbp import radon_ellipses
    from xspeckle.tomo.rings import remove_rings
    from xspeckle.tomo.sinogram import remove_offset_tilt

    ok = True

    def report(name, err, tol, extra=""):
        nonlocal ok
        good = bool(err <= tol)
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {name}: max |gpu - cpu| = {err:.3g} (tol {tol:g}) {extra}")

    obj = [(1.0, 0.6, 0.6, 0, 0, 0), (0.5, 0.12, 0.12, 0.3, 0.2, 0), (0.5, 0.1, 0.1, -0.3, -0.25, 0)]
    th = np.linspace(0, 180, 360, endpoint=False)
    sino = (-0.01 * radon_ellipses(obj, th, 256)).astype(np.float32)
    bad = np.stack([sino * (1 + np.random.default_rng(i).normal(0, 0.02, 256).astype(np.float32)) for i in range(4)])
    c_cpu = remove_rings(bad, "gain")
    t0 = time.perf_counter()
    c_gpu = remove_rings(cp.asarray(bad), "gain")
    cp.cuda.Device().synchronize()
    dt = time.perf_counter() - t0
    assert isinstance(c_gpu, cp.ndarray)
    report("rings gain", float(np.abs(cp.asnumpy(c_gpu) - c_cpu).max() / np.abs(c_cpu).max()), 1e-4,
           f"(relative; 4 sinograms 360x256 in {dt * 1e3:.0f} ms)")

    x = np.arange(256) - 127.5
    tilt = (bad + 0.3 + 0.003 * x).astype(np.float32)
    d_cpu = remove_offset_tilt(tilt)
    d_gpu = remove_offset_tilt(cp.asarray(tilt))
    report("offset/tilt wings", float(np.abs(cp.asnumpy(d_gpu) - d_cpu).max()), 1e-5)

    rng = np.random.default_rng(0)
    ref = np.stack([(1 + 3 * ndi.gaussian_filter(rng.normal(size=(192, 192)), 1.5)).astype(np.float32) for _ in range(2)])
    shifts = np.array([[0.4, -1.3], [1.7, 0.6]])
    smp = np.stack([ndi.shift(ref[i], shifts[i], order=5, mode="reflect") for i in range(2)]).astype(np.float32)
    s_cpu = estimate_drift(ref, smp)
    s_gpu = estimate_drift(cp.asarray(ref), cp.asarray(smp))
    report("drift shifts", float(np.abs(s_gpu - s_cpu).max()), 1e-3, f"(px; cpu error vs truth {np.abs(s_cpu - shifts).max():.3g})")
    r_cpu = shift_reference(ref, smp, s_cpu)
    r_gpu = shift_reference(cp.asarray(ref), cp.asarray(smp), s_cpu)
    report("shift_reference", float(np.abs(cp.asnumpy(r_gpu) - r_cpu).max()), 1e-4)

    groups = np.stack([np.full((8, 8), v, np.float32) for v in (1.0, 2.0)])
    f_gpu = flat_for_angle(cp.asarray(groups), np.array([0.0, 180.0]), 45.0, "linear")
    report("flat_for_angle", float(abs(float(f_gpu[0, 0]) - 1.25)), 1e-6)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
