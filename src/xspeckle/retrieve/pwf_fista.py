"""The paper's FISTA iteration for PWF (Lee et al. 2026, Algorithm S1; pwf.md §4) with our guards.

Schemes ``"paper"`` (fixed step η, Nesterov momentum, the paper's correlation stop rule held off by a
minimum iteration count and a loss plateau) and ``"fast"`` (the same with O'Donoghue–Candès function-value
restart and a ψ-change stop).  Divergence guard: a non-finite loss or one above ``divergence_factor × best``
is rejected, the projection returns to its last accepted point, η is halved and the step retaken; η grows
back after ``grow_after`` accepted iterations.  Called by :meth:`xspeckle.retrieve.pwf.PWFModel.solve`, the
default scheme is L-BFGS (:mod:`xspeckle.retrieve.pwf_lbfgs`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from xspeckle import backend as B
from xspeckle.retrieve.pwf_vector import momentum_step

__all__ = ["solve_fista"]


def solve_fista(model, yspec, psi, *, eta, max_iter: int, min_iter: int, restart: bool, stop_rule: str,
                corr_tol: float, check_every: int, plateau_window: int, plateau_tol: float,
                divergence_factor: float, change_tol: float, restart_min_gap: int, max_halvings: int,
                grow_after: int, progress: Callable[[int, int], None] | None = None,
                callback: Callable[[int, Any, Any], None] | None = None):
    """Run Algorithm S1 on the projections of *psi* ``(B, 1, Hr, Wr)`` (see :meth:`PWFModel.solve` for the
    parameters).

    Returns
    -------
    psi : complex64 ``(B, 1, Hr, Wr)``
    iterations : ndarray int ``(B,)``
    reasons : list of str
    history : list of lists of float, the accepted loss per iteration
    extra : dict of per-projection diagnostics (restarts, divergence resets)
    """
    xp = model.xp
    nb = int(psi.shape[0])
    z_old = psi.copy()
    psi_acc = psi.copy()                     # last point whose loss was accepted (divergence guard)
    out_psi = xp.empty_like(psi)
    active = np.arange(nb)
    tk = np.ones(nb)                         # FISTA s_j (pwf.md §4 step 8)
    step = np.tile(np.array(eta, dtype=np.float64), (nb, 1))
    best = np.full(nb, np.inf)
    prev_loss = np.full(nb, np.inf)
    hist: list[list[float]] = [[] for _ in range(nb)]
    iters = np.zeros(nb, int)
    reasons = [""] * nb
    n_restart = np.zeros(nb, int)
    last_restart = np.zeros(nb, int)
    n_div = np.zeros(nb, int)
    since_retreat = np.zeros(nb, int)       # accepted iterations since the last retreat (η regrowth)
    eta0 = np.array(eta, dtype=np.float64)
    x_prev = None
    corr_val = np.full(nb, np.nan)
    change_val = np.full(nb, np.inf)
    z_snap = None
    mask = model.stop_mask
    j = 0
    while active.size and j < max_iter:
        j += 1
        g_re, g_im, loss, x = model.gradient(psi, yspec if active.size == nb else yspec[xp.asarray(active)])
        # ---- paper stopping statistic: corr(e^ψ_j, e^ψ_{j+1}) over m > 0.99
        if x_prev is not None:
            a = x_prev * mask
            bm = x * mask
            num = xp.abs((xp.conj(a) * bm).sum(axis=(-3, -2, -1)))
            den = xp.sqrt((xp.abs(a) ** 2).sum(axis=(-3, -2, -1)) * (xp.abs(bm) ** 2).sum(axis=(-3, -2, -1)))
            corr_val[active] = B.asnumpy(num / den)
            x_prev = None
        if (j % check_every) == 0 and stop_rule == "correlation":
            x_prev = x.copy()
        finished = np.zeros(active.size, bool)
        # ---- divergence guard: a non-finite loss, or one above divergence_factor × the best, is
        # rejected; the projection retreats to its last ACCEPTED point (whose loss is known to be
        # good), the momentum is reset and η halved, and the step is retaken from there next
        # iteration.  η grows back (×2, up to its start value) after grow_after accepted
        # iterations, so one bad step does not slow the rest of the run.  Only when η has shrunk
        # by 2^max_halvings without an accepted step the projection ends "stalled" (or
        # "diverged" when the loss is not even finite).
        bad = ~np.isfinite(loss) | (loss > divergence_factor * best[active])
        for i_loc in np.nonzero(bad)[0]:
            gi = active[i_loc]
            il = int(i_loc)
            n_div[gi] += 1
            since_retreat[gi] = 0
            step[gi] *= 0.5
            tk[gi] = 1.0
            psi[il] = psi_acc[il]
            z_old[il] = psi_acc[il]
            if np.all(step[gi] < eta0 * 2.0 ** -max_halvings):
                finished[i_loc] = True
                reasons[gi] = "diverged" if not np.isfinite(loss[i_loc]) else "stalled"
        ok = ~bad
        for i_loc in np.nonzero(ok)[0]:
            gi = active[i_loc]
            hist[gi].append(float(loss[i_loc]))
            best[gi] = min(best[gi], loss[i_loc])
            psi_acc[int(i_loc)] = psi[int(i_loc)]
            since_retreat[gi] += 1
            if since_retreat[gi] >= grow_after and np.any(step[gi] < eta0):
                step[gi] = np.minimum(step[gi] * 2.0, eta0)
                since_retreat[gi] = 0
        # ---- momentum coefficients (pwf.md §4 step 8) and adaptive restart
        beta = np.zeros(active.size)
        for i_loc, gi in enumerate(active):
            if bad[i_loc]:
                continue
            if restart and loss[i_loc] > prev_loss[gi] and j - last_restart[gi] >= restart_min_gap:
                tk[gi] = 1.0                       # O'Donoghue & Candès (2015) function restart
                n_restart[gi] += 1
                last_restart[gi] = j
            t1 = (1 + math.sqrt(1 + 4 * tk[gi] ** 2)) / 2
            beta[i_loc] = (tk[gi] - 1) / t1
            tk[gi] = t1
            prev_loss[gi] = loss[i_loc]
        # ---- step: z_j = ψ_j − η·g ; ψ_{j+1} = z_j + β_j (z_j − z_{j−1}); a rejected step stays at the
        # accepted point (one fused pass in place, pwf_vector.momentum_step)
        momentum_step(psi, z_old, g_re, g_im, step[active, 0], step[active, 1], ok, beta)
        iters[active] = j
        if (j % check_every) == 0:
            if stop_rule == "change":
                # relative change of ψ over the stopping mask since the last check
                if z_snap is not None:
                    dz = (z_old - z_snap) * mask
                    zz = z_old * mask
                    num = (dz.real ** 2 + dz.imag ** 2).sum(axis=(-3, -2, -1), dtype=np.float64)
                    den = (zz.real ** 2 + zz.imag ** 2).sum(axis=(-3, -2, -1), dtype=np.float64)
                    change_val[active] = np.sqrt(B.asnumpy(num) / np.maximum(B.asnumpy(den), 1e-30))
                z_snap = z_old.copy()
            if callback is not None:
                callback(j, active.copy(), z_old)
        # ---- stopping rules
        for i_loc, gi in enumerate(active):
            if finished[i_loc] or bad[i_loc]:
                continue
            h = hist[gi]
            plateau = False
            if len(h) > plateau_window:
                old = h[-plateau_window - 1]
                plateau = (old - h[-1]) <= plateau_tol * abs(h[-1])
            if j < min_iter:
                continue
            if stop_rule == "correlation":
                c = corr_val[gi]
                if np.isfinite(c) and -math.log10(max(min(c, 1.0), 1e-300)) < corr_tol and plateau:
                    finished[i_loc] = True
                    reasons[gi] = "correlation"
                    corr_val[gi] = np.nan
            elif stop_rule == "change":
                if plateau and change_val[gi] < change_tol:
                    finished[i_loc] = True
                    reasons[gi] = "converged"
            elif plateau:
                finished[i_loc] = True
                reasons[gi] = "plateau"
        if progress is not None:
            progress(j, max_iter)
        if finished.any():
            keep = ~finished
            out_psi[xp.asarray(active[finished])] = z_old[xp.asarray(np.nonzero(finished)[0])]
            active = active[keep]
            if active.size:
                sel = xp.asarray(np.nonzero(keep)[0])
                psi, z_old, psi_acc = psi[sel], z_old[sel], psi_acc[sel]
                if x_prev is not None:
                    x_prev = x_prev[sel]
                if z_snap is not None:
                    z_snap = z_snap[sel]
    if active.size:
        out_psi[xp.asarray(active)] = z_old
        for gi in active:
            reasons[gi] = "max_iter"
    return out_psi, iters, reasons, hist, dict(n_restart=n_restart.tolist(), n_divergence_resets=n_div.tolist())
