"""Iterations to the paper scheme's converged accuracy: PWF error against gradient evaluations (issue 16, point 2).

Same projection, same model (objective, preconditioner, coherence lengths) for both solvers; only the
iteration differs:

- ``paper``: the paper's Algorithm S1 (FISTA, η = 1, no restart), run to a fixed 3000 iterations (its own
  stop rule held off), one gradient evaluation per iteration;
- ``lbfgs``: xspeckle's default (``retrieve/pwf_lbfgs.py``), its own stop rule, every gradient evaluation
  counted (line-search trials included).

The phase error (the issue-13 metric, ``analysis.accuracy.phase_relative_error``) is recorded every 10
iterations.  "Converged accuracy" E_p is the paper scheme's error at 3000 iterations; N_p is the first
evaluation count at which the paper scheme's error is at or below ``E_p·(1 + TOL)``, N_l the first at which
L-BFGS's is.  Traces are saved to ``/tmp/xspeckle_pwf_convergence.json`` for plotting.  The issue's target: N_l ≤ 0.4 N_p.

Scenes: the independent simulator (``simulate/independent.py``), ``indep-beads`` with the calibrated
coherence and ``fine`` with the true coherence lengths (with its calibrated ones the paper scheme does not
converge to a usable phase at all, see results/pwf_independent.md).

Standalone: ``python benchmarks/bench_pwf_convergence.py [--quick]`` writes
``benchmarks/results/pwf_convergence.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import main_standalone, md_table, section  # noqa: E402

TITLE = "PWF: iterations to the paper scheme's converged accuracy (issue 16)"
TOL = 0.01
LOSS_RTOL = 1e-5          # the float32 loss is reproducible to ~1e-6 relative
PAPER_ITERS = 3000
SCENES = {
    "indep-beads": (dict(), "calibrated"),
    "fine": (dict(grain_diameter_m=(0.2e-6, 1.0e-6), grain_coverage=4.0), "true"),
}


def trace(scene: str, size: int, seed: int, scheme: str, paper_iters: int = PAPER_ITERS):
    """Error against gradient evaluations for one solver on one simulated projection.

    Returns ``(evals, errors, iterations, stop_reason, losses)`` with *evals*/*errors* sampled every 10
    iterations and *losses* the objective at every gradient evaluation.
    """
    import numpy as np

    from xspeckle.analysis.accuracy import phase_relative_error
    from xspeckle.retrieve.pwf import PWFModel, zero_background_plane
    from xspeckle.simulate.independent import simulate_independent
    from xspeckle import backend as B

    sim_kw, coherence = SCENES[scene]
    sim = simulate_independent("downstream", size=size, seed=seed, positions=1, **sim_kw)
    ref, dat = sim.normalised()
    geo = sim.geometry
    if coherence == "true":
        geo = geo.replace(coherence_length_x_m=sim.truth["coherence_length_x_m"],
                          coherence_length_y_m=sim.truth["coherence_length_y_m"])
    model = PWFModel(ref[:1], geo)
    count = [0]
    losses = []
    grad = model.gradient

    def counted(psi, *a, **k):                 # one gradient evaluation per projection of the batch
        count[0] += 1
        out = grad(psi, *a, **k)
        losses.append(float(out[2][0]))
        return out

    model.gradient = counted
    truth, mask = sim.truth["phase"][0], sim.truth["sample_mask"][0]
    evals, errs = [], []

    def cb(it, active, psi):
        psi_d = model._from_grid(psi[:, 0])                 # the phase exactly as the solver's result gives it
        ph = np.asarray(B.asnumpy(zero_background_plane(psi_d.imag.astype(np.float32), model.background_mask)[0]))
        evals.append(count[0])
        errs.append(phase_relative_error(ph, truth, mask))

    kw = dict(max_iter=paper_iters, min_iter=paper_iters) if scheme == "paper" else {}
    res = model.solve(dat[:1, 0][None], scheme=scheme, callback=cb, **kw)
    evals.append(count[0])
    errs.append(phase_relative_error(res.phase[0], truth, mask))
    return np.asarray(evals), np.asarray(errs), int(res.iterations[0]), res.stop_reason[0], np.asarray(losses)


def plot(traces: dict, path) -> None:
    """Phase error and loss against gradient evaluations, one column per scene/seed (matplotlib, Agg)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(traces)
    fig = Figure(figsize=(3.0 * len(keys), 5.2))
    FigureCanvasAgg(fig)
    axs = fig.subplots(2, len(keys), squeeze=False)
    for j, k in enumerate(keys):
        t = traces[k]
        for name, col in (("paper", "tab:orange"), ("lbfgs", "tab:blue")):
            e, err = t[name]
            axs[0, j].plot(e, err, color=col, label={"paper": "paper Alg. S1", "lbfgs": "lbfgs (default)"}[name])
            loss = np.minimum.accumulate(np.asarray(t[f"{name}_loss"]))
            axs[1, j].plot(np.arange(1, loss.size + 1), loss - min(np.min(t["paper_loss"]), np.min(t["lbfgs_loss"]))
                           + 1e-7, color=col)
        axs[0, j].set_xscale("log")
        axs[1, j].set_xscale("log")
        axs[1, j].set_yscale("log")
        axs[0, j].set_title(k.replace("/", ", "), fontsize=9)
        axs[1, j].set_xlabel("gradient evaluations")
    axs[0, 0].set_ylabel("phase rel. error")
    axs[1, 0].set_ylabel("loss − best loss")
    axs[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def first_within(evals, errs, target):
    """First evaluation count at which the error is ≤ *target* (None when never)."""
    import numpy as np

    ok = np.nonzero(errs <= target)[0]
    return int(evals[ok[0]]) if ok.size else None


def run(quick: bool = False) -> str:
    import numpy as np

    seeds = (0,) if quick else (0, 1, 2)
    size = 128 if quick else 256
    paper_iters = 600 if quick else PAPER_ITERS
    import json

    rows = []
    ratios = []
    loss_ratios = []
    traces = {}
    for scene in SCENES:
        for sd in seeds:
            pe, perr, _, _, ploss = trace(scene, size, sd, "paper", paper_iters)
            le, lerr, lit, lwhy, lloss = trace(scene, size, sd, "lbfgs")
            # objective: evaluations for L-BFGS to reach the paper scheme's final loss (the accepted loss is
            # the running minimum over evaluations: a rejected line-search trial never lowers it)
            lp = float(ploss[-1])
            reach = np.nonzero(np.minimum.accumulate(lloss) <= lp * (1 + LOSS_RTOL))[0]
            n_loss = int(reach[0]) + 1 if reach.size else None
            loss_ratios.append(n_loss / paper_iters if n_loss else float("nan"))
            traces[f"{scene}/{size}/{sd}"] = dict(paper=[pe.tolist(), perr.tolist()], lbfgs=[le.tolist(), lerr.tolist()],
                                                 paper_loss=ploss.tolist(), lbfgs_loss=lloss.tolist())
            ep = float(perr[-1])
            n_p = first_within(pe, perr, ep * (1 + TOL))
            n_l = first_within(le, lerr, ep * (1 + TOL))
            ratio = (n_l / n_p) if (n_l and n_p) else float("nan")
            ratios.append(ratio)
            best_l = float(lerr.min())
            rows.append([scene, size, sd, f"{ep:.4f}", n_p, f"{float(lerr[-1]):.4f}", f"{lit} ({lwhy})",
                         n_l if n_l is not None else "not reached", f"{ratio:.2f}", f"{best_l:.4f}",
                         f"{lp:.6g}", f"{float(np.min(lloss)):.6g}", n_loss if n_loss else "not reached",
                         f"{loss_ratios[-1]:.2f}"])
            print(rows[-1], flush=True)
    with open("/tmp/xspeckle_pwf_convergence.json", "w") as fh:
        json.dump(traces, fh)
    if not quick:
        plot(traces, Path(__file__).resolve().parent / "results" / "pwf_convergence.png")
    body = md_table(["scene", "px", "seed", f"paper error at {paper_iters} it. (E_p)",
                     f"paper: evaluations to ≤ E_p·{1 + TOL:g} (N_p)", "lbfgs final error", "lbfgs evaluations (stop)",
                     f"lbfgs: evaluations to ≤ E_p·{1 + TOL:g} (N_l)", "N_l / N_p", "lbfgs best error",
                     f"paper loss at {paper_iters} it.", "lbfgs final loss", "lbfgs: evaluations to the paper's loss",
                     f"… / {paper_iters}"], rows)
    fin = np.asarray([r for r in ratios if np.isfinite(r)])
    notes = f"""
- Phase error: N_l / N_p over the runs where L-BFGS reaches E_p·{1 + TOL:g}:
  {('median %.2f, max %.2f' % (np.median(fin), fin.max())) if fin.size else 'n/a'}; it does not reach it in
  {int(np.sum(~np.isfinite(np.asarray(ratios))))} of {len(ratios)} runs (issue 16 target ≤ 0.40).
- Objective: evaluations for L-BFGS to reach the paper scheme's loss after {paper_iters} iterations (within
  {LOSS_RTOL:g} relative, float32 rounding of the loss), as a fraction
  of {paper_iters}: {', '.join('%.2f' % v for v in loss_ratios)}.
- Evaluations are gradient evaluations (each costs the same fused loss + gradient), so the ratio is also the
  ratio of solver time up to the (un-fused) vector work of each scheme (results/pwf.md).
- Errors are sampled every 10 iterations (the solvers' callback), so N is resolved to 10 iterations.
- The phase error is not monotone along either path (column "lbfgs best error": both pass below their
  converged error on the way, the iterate then fits noise and model error), so the first crossing of E_p
  measures when each solver reaches the converged accuracy, and the loss measures convergence itself.
  On `fine`, L-BFGS converges to a lower loss than FISTA's after 3000 iterations but a 1–2 % higher phase
  error: the paper scheme's better error there is that of an iterate not yet converged (implicit early
  stopping), not of its objective; tightening L-BFGS's stop (change_tol 3e-4, plateau_tol 3e-5) leaves its
  error unchanged (0.2232 / 0.1697 on seeds 1 / 2).
- Figure: `benchmarks/results/pwf_convergence.png` (top: phase error, bottom: loss above the best loss seen).
"""
    return section(TITLE, body + notes, "python benchmarks/bench_pwf_convergence.py" + (" --quick" if quick else ""),
                   quick=quick)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
