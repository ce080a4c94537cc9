"""PWF: iterations, accuracy and seconds per projection, paper scheme vs ours.

1. Same simulated input (``pwf-beads``, coherence lengths given), ``scheme="paper"`` (Alg. S1:
   FISTA, η = 1, no restart, correlation stop + our 300-iteration/loss-plateau guard) against
   ``scheme="fast"`` (η = 1, O'Donoghue–Candès function restart, ψ-change + loss-plateau stop):
   iterations, stop reason, relative phase error over the sample, wall time.
2. Seconds per iteration and per projection on this CPU for 512², 1024² (full runs on pwf-beads)
   and 2560×2160 (a fixed number of iterations timed on synthetic speckle, multiplied by the
   iteration count measured at 512²/1024²; marked "extrapolated").

Standalone: ``python benchmarks/bench_pwf.py [--quick]`` writes ``benchmarks/results/pwf.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench, main_standalone, md_table, section  # noqa: E402

TITLE = "PWF (preconditioned Wirtinger flow): iterations, accuracy, seconds per projection"

XC, YC = 3.48e-6, 4.31e-6


def _relerr(phase, truth, mask):
    import numpy as np

    return float(np.linalg.norm((phase - truth)[mask]) / np.linalg.norm(truth[mask]))


def _scheme_rows(size: int, positions: int):
    from xspeckle.retrieve.pwf import PWFModel
    from xspeckle.simulate import make_preset

    s = make_preset("pwf-beads", size=size, seed=1, positions=positions)
    ref, dat = s.normalised()
    g = s.geometry.replace(coherence_length_x_m=XC, coherence_length_y_m=YC)
    model = PWFModel(ref, g)
    tr, m = s.truth["phase"][0], s.truth["sample_mask"][0]
    rows = []
    for scheme in ("paper", "fast", "lbfgs"):
        t0 = time.perf_counter()
        r = model.solve(dat[None, :, 0], scheme=scheme)
        dt = time.perf_counter() - t0
        rows.append([f"{size}²", positions, scheme, r.iterations[0], r.stop_reason[0],
                     f"{_relerr(r.phase[0], tr, m):.4f}", f"{dt:.1f}"])
    if positions == 1:
        import numpy as np

        from xspeckle.simulate.presets import MATERIALS

        # our single-material prior (true glass δ/β)
        d, b = MATERIALS["glass@10keV"]
        for f, lab in ((1.0, "true"), (1 / 3, "true / 3"), (3.0, "true x 3")):
            sm = PWFModel(ref, g, delta_over_beta=f * d / b)
            t0 = time.perf_counter()
            r = sm.solve(dat[None, :, 0])
            dt = time.perf_counter() - t0
            rows.append([f"{size}²", positions, f"lbfgs + δ/β prior ({lab})", r.iterations[0], r.stop_reason[0],
                         f"{_relerr(r.phase[0], tr, m):.4f}", f"{dt:.1f}"])
        # diagnosis: data made by the model's own forward operator from the true ψ (no noise, same
        # estimated diffuser): what is left is the bias of the objective itself, not of the data
        T = s.truth["transmission"][0]
        psi_true = model._to_grid((0.5 * np.log(T) + 1j * tr).astype(np.complex64))[None, None]
        y = (model._from_grid(model.forward(psi_true)[0, 0]) * model.mean_ref[0]).astype(np.float32)
        t0 = time.perf_counter()
        r = model.solve(y[None, None])
        dt = time.perf_counter() - t0
        rows.append([f"{size}²", positions, "lbfgs, exact-model noise-free data", r.iterations[0], r.stop_reason[0],
                     f"{_relerr(r.phase[0], tr, m):.4f}", f"{dt:.1f}"])
    return rows


def _speed_full(size: int, prior: bool = False):
    """Full default-scheme (lbfgs) run on pwf-beads (P = 1): iterations (gradient evaluations), s/iteration, s/projection."""
    from xspeckle.retrieve.pwf import PWFModel
    from xspeckle.simulate import make_preset

    s = make_preset("pwf-beads", size=size, seed=1, positions=1)
    ref, dat = s.normalised()
    g = s.geometry.replace(coherence_length_x_m=XC, coherence_length_y_m=YC)
    kw = {}
    if prior:
        from xspeckle.simulate.presets import MATERIALS

        d, b = MATERIALS["glass@10keV"]
        kw = dict(delta_over_beta=d / b)
    t0 = time.perf_counter()
    model = PWFModel(ref, g, **kw)
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = model.solve(dat[None, :, 0])
    t = time.perf_counter() - t0
    return dict(shape=f"{size}×{size}" + (" (δ/β prior)" if prior else ""), grid=model.shape, init=t_init,
                iters=r.iterations[0],
                per_iter=t / r.iterations[0], total=t, relerr=_relerr(r.phase[0], s.truth["phase"][0],
                                                                   s.truth["sample_mask"][0]))


def _speed_fixed(h: int, w: int, n_iter: int = 6):
    """Per-iteration time on synthetic speckle of (h, w): (t(n) − t(2))/(n − 2) over solve() calls."""
    import numpy as np
    from scipy import ndimage

    from xspeckle.geometry import Geometry
    from xspeckle.retrieve.pwf import PWFModel

    rng = np.random.default_rng(0)
    ref = (1 + 0.3 * ndimage.gaussian_filter(rng.standard_normal((h, w)), 2.0) * 4).astype(np.float32)
    ref = np.clip(ref, 0.05, None)[None]
    sam = (ref * (1 + 0.01 * rng.standard_normal((1, h, w)))).astype(np.float32)
    g = Geometry(energy_ev=10000.0, pixel_size_m=650e-9, sample_detector_distance_m=0.023,
                 diffuser_position="downstream", diffuser_detector_distance_m=0.020,
                 coherence_length_x_m=XC, coherence_length_y_m=YC)
    t0 = time.perf_counter()
    model = PWFModel(ref, g)
    t_init = time.perf_counter() - t0
    t2 = bench(lambda: model.solve(sam[None], max_iter=2, min_iter=2), label="2 it", warmup=0, repeats=1)
    tn = bench(lambda: model.solve(sam[None], max_iter=n_iter, min_iter=n_iter), label=f"{n_iter} it",
               warmup=0, repeats=1)
    per_iter = (tn.median_s - t2.median_s) / (n_iter - 2)
    return dict(shape=f"{w}×{h}", grid=model.shape, init=t_init, per_iter=per_iter, timings=[t2, tn])


def _iteration_cost(h: int, w: int, rounds: int = 5, n_short: int = 2, n_long: int = 6):
    """Cost of one PWF iteration in units of one complex64 FFT of the PWF grid (issue 16), same run.

    Each round times, back to back: one ``scipy.fft.fft2`` of a complex64 array of the grid (out of place,
    default workers: the unit), the gradient by the fused numba path, by the fused NumPy twin (what runs
    with ``XSPECKLE_NUMBA=0`` and on CuPy), by the reference path, and one solver iteration
    ``(solve(n_long) − solve(n_short))/(n_long − n_short)``; each ratio is taken within its round and the
    median over rounds is reported (the machine is shared: ratios within a round are what is comparable).
    """
    import numpy as np
    import scipy.fft as sfft

    from xspeckle import backend as B
    from xspeckle.retrieve import pwf_kernels as pk

    model, sam = _synthetic_model(h, w)
    _, yspec = model.prepare(sam[None])
    rng = np.random.default_rng(1)
    psi = (0.01 * rng.standard_normal((1, 1) + model.shape) - 0.01j * rng.random((1, 1) + model.shape)).astype(np.complex64)
    x = psi[0, 0].copy()

    def reference():
        pk.USE_FUSED = False
        try:
            model.gradient(psi, yspec)
        finally:
            pk.USE_FUSED = True

    def solver_iteration(scheme):
        t0 = time.perf_counter()
        a = model.solve(sam[None], max_iter=n_short, min_iter=n_short, scheme=scheme)
        t1 = time.perf_counter()
        b = model.solve(sam[None], max_iter=n_long, min_iter=n_long, scheme=scheme)
        t2 = time.perf_counter()
        return ((t2 - t1) - (t1 - t0)) / max(1, b.iterations[0] - a.iterations[0])

    from xspeckle.retrieve.pwf import SCHEMES

    schemes = [sc for sc in ("fast", "lbfgs") if sc in SCHEMES]

    ops = pk.NumbaOps()
    cbuf = np.empty((1, 1) + model.shape, np.complex64)
    rbuf = np.random.default_rng(2).random((1, 1) + model.shape, dtype=np.float32)

    def fft_floor():
        """Only the transforms of one fused gradient (K = 1): 8 complex in place + 5 real forward + 4 inverse."""
        w = cbuf
        for _ in range(4):
            w = ops.fft2(w)
            w = ops.ifft2(w)
        for _ in range(4):
            ops.irfft2(ops.rfft2(rbuf), model.shape)
        ops.rfft2(rbuf)

    fns = {
        "one complex64 FFT (scipy.fft.fft2, out of place)": lambda: sfft.fft2(x, workers=B.fft_workers()),
        "FFT floor: the gradient's 8 complex + 9 real transforms alone, as the fused path runs them": fft_floor,
        "gradient, fused (numba kernels)": lambda: pk.fused_gradient(model, psi, yspec, ops=pk.NumbaOps()),
        "gradient, fused NumPy twin (XSPECKLE_NUMBA=0, CuPy)": lambda: pk.fused_gradient(model, psi, yspec,
                                                                                          ops=pk.XpOps(np)),
        "gradient, reference path": reference,
    }
    for fn in fns.values():  # warm-up: numba load, FFT plans, page cache
        fn()
    lab = {sc: f"solver iteration, scheme='{sc}' (per gradient evaluation)" for sc in schemes}
    times = {k: [] for k in list(fns) + list(lab.values())}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        for sc in schemes:
            times[lab[sc]].append(solver_iteration(sc))
    unit = np.asarray(times["one complex64 FFT (scipy.fft.fft2, out of place)"])
    rows = [[k, f"{np.median(v) * 1e3:.0f}", f"{np.median(np.asarray(v) / unit):.1f}"] for k, v in times.items()]
    return model.shape, rows


def _synthetic_model(h: int, w: int):
    """PWFModel on synthetic speckle (h, w) with the coherence lengths given (no calibration) + a sample."""
    import numpy as np
    from scipy import ndimage

    from xspeckle.geometry import Geometry
    from xspeckle.retrieve.pwf import PWFModel

    rng = np.random.default_rng(0)
    ref = (1 + 0.3 * ndimage.gaussian_filter(rng.standard_normal((h, w)), 2.0) * 4).astype(np.float32)
    ref = np.clip(ref, 0.05, None)[None]
    sam = (ref * (1 + 0.01 * rng.standard_normal((1, h, w)))).astype(np.float32)
    g = Geometry(energy_ev=10000.0, pixel_size_m=650e-9, sample_detector_distance_m=0.023,
                 diffuser_position="downstream", diffuser_detector_distance_m=0.020,
                 coherence_length_x_m=XC, coherence_length_y_m=YC)
    return PWFModel(ref, g), sam


def run(quick: bool = False) -> str:
    scheme_cfg = [(128, 1), (128, 12)] if quick else [(256, 1), (256, 12), (512, 1)]
    rows = []
    for size, pos in scheme_cfg:
        rows += _scheme_rows(size, pos)
    t1 = md_table(["frame", "positions", "scheme", "iterations", "stop", "phase rel. error", "wall s"], rows)

    full_sizes = [256] if quick else [512, 1024]
    speed = [_speed_full(n) for n in full_sizes]
    speed_prior = [_speed_full(n, prior=True) for n in full_sizes]
    fixed = _speed_fixed(540, 640) if quick else _speed_fixed(2160, 2560)
    mean_it = sum(d["iters"] for d in speed) / len(speed)
    mean_it_prior = sum(d["iters"] for d in speed_prior) / len(speed_prior)
    speed = speed + speed_prior
    srows = [[d["shape"], "×".join(map(str, d["grid"])), f"{d['init']:.2f}", d["iters"],
              f"{d['per_iter'] * 1e3:.0f}", f"{d['total']:.1f}", f"{d['relerr']:.3f}", "measured"] for d in speed]
    srows.append([fixed["shape"], "×".join(map(str, fixed["grid"])), f"{fixed['init']:.2f}", f"{mean_it:.0f}",
                  f"{fixed['per_iter'] * 1e3:.0f}", f"{fixed['per_iter'] * mean_it:.0f}", "–",
                  f"extrapolated: s/iteration × mean iterations of the free rows above"])
    srows.append([fixed["shape"] + " (δ/β prior)", "×".join(map(str, fixed["grid"])), f"{fixed['init']:.2f}",
                  f"{mean_it_prior:.0f}", f"{fixed['per_iter'] * 1e3:.0f}", f"{fixed['per_iter'] * mean_it_prior:.0f}",
                  "–", "extrapolated: s/iteration × mean iterations of the prior rows above"])
    t2 = md_table(["frame", "PWF grid (padded, resampled)", "set-up s", "iterations", "ms / iteration",
                   "s / projection", "phase rel. error", "how"], srows)
    ch, cw = (540, 640) if quick else (2160, 2560)
    cgrid, crows = _iteration_cost(ch, cw, rounds=3 if quick else 5)
    t3 = md_table(["operation", "ms (median)", "× one complex64 FFT (median of per-round ratios)"], crows)
    body = (
        "Same simulated input for both schemes (pwf-beads, seed 1, 10⁴ photons/px, coherence lengths given). "
        "`paper` = Algorithm S1 (FISTA, η = 1, no restart) stopped by the paper's correlation rule, with our guard "
        "(≥ 300 iterations and a loss plateau; without it the rule fires after 10–30 iterations, pwf.md §9.3). "
        "`fast` (the default before L-BFGS) = η = 1, O'Donoghue–Candès function-value restart, stop when ψ changes "
        "< 3e-3 (relative, per 10 iterations) and the loss has plateaued. `lbfgs` (default, `retrieve/pwf_lbfgs.py`) "
        "= preconditioned L-BFGS with an Armijo line search, iterations = gradient evaluations. All converge to the "
        "same objective. "
        "The single-position error of the paper's objective is its fixed point, not noise or the diffuser "
        "estimate: data made noise-free by the model's own forward operator from the true ψ (row 'exact-model') "
        "give a similar error (0.07–0.09), because one speckle image barely separates low-frequency phase from "
        "low-frequency absorption and the regularisation settles the rest. Two ways past it: several positions "
        "(gradient averaged over 12, multi-position PWF), or, for single-material samples, our prior "
        "ψ = (β/δ + i)φ (`--param delta_over_beta=…`; preconditioner 1/(κ² + (β/δ)²)), which also needs fewer "
        "iterations. The prior needs δ/β (rows 'true / 3', 'true x 3': a wrong ratio costs much on this absorbing phantom), and on a "
        "two-material sample (tomo-beads: glass + PMMA) it makes δ worse, so it is off by default.\n\n"
        + t1 + "\n\n"
        "CPU timing, numpy + scipy.fft (workers = all cores), complex64, one projection, P = 1, default scheme (lbfgs; iterations = gradient evaluations):\n\n"
        + t2 + "\n\n"
        f"Cost of one iteration at {cw}×{ch} (PWF grid {cgrid[0]}×{cgrid[1]}, complex64, K = 1) in units of one "
        "complex64 FFT of that grid, all rows timed back to back in each round (issue 16's measure: ≤ 7× is the "
        "target). The fused path (`retrieve/pwf_kernels.py`) does the reference's 8 complex + 9 real FFTs, all "
        "complex ones in place on one reused buffer, and fuses the element-wise work into numba kernels. The row "
        "'FFT floor' runs those transforms alone, exactly as the fused path runs them: no gradient can cost less. "
        "A solver iteration adds the scheme's own vector work (FISTA momentum/restart for 'fast'; for 'lbfgs' the "
        "compact-form direction, two fused passes over the stored pairs, one preconditioner filter for the "
        "gradient and the line search, counted per gradient evaluation):\n\n"
        + t3 + "\n"
    )
    cmd = "python benchmarks/bench_pwf.py" + (" --quick" if quick else "")
    return section(TITLE, body, cmd, quick=quick, timings=fixed["timings"])


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
