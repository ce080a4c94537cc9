"""Preconditioned L-BFGS for the PWF objective (xspeckle's default PWF solver, not in the paper).

The paper runs Nesterov/FISTA with a fixed step on the preconditioned gradient (Lee et al. 2026,
Algorithm S1; pwf.md §4).  The objective it minimises (module docstring of :mod:`pwf`) is smooth
and, after the preconditioner of Algorithm S2, still badly conditioned in its low spatial
frequencies: on data the model did not make (a thick, fine-grained diffuser, 2 % bandwidth) FISTA
needs 1500+ iterations there.  Limited-memory BFGS (Nocedal, Math. Comp. 35, 773 (1980); Nocedal &
Wright, *Numerical Optimization*, 2nd ed., Algorithm 7.4 two-loop recursion, Algorithm 3.1
backtracking Armijo line search) with the paper's preconditioner as its initial inverse Hessian
``H₀ = γ_k M`` (Eq. 7.20 scaling ``γ_k = sᵀy / yᵀMy``) learns that curvature from the last few steps
and reaches the same fixed point in 5–7x fewer gradient evaluations (benchmarks/bench_pwf_independent.py).

Conventions.  :meth:`PWFModel.gradient` returns the preconditioned direction ``D = M·g`` where g is
(half) the gradient of the loss it returns (the Wirtinger factor 2 dropped, pwf.md §2), M = identity
on Re ψ and ``F⁻¹ P⁻¹ F`` on Im ψ (Algorithm S2, ``P⁻¹ = 1/κ²``, DC = 0).  So ``g = M⁻¹ D`` costs one
real FFT pair, and ``M y = D_{k+1} − D_k`` costs nothing.  With the single-material prior
(``delta_over_beta``) the unknown is the real φ of ``ψ = (β/δ + i)φ`` and M is ``1/(κ² + (β/δ)²)``.
A constant factor in g cancels in the L-BFGS direction (it scales y and g alike) and only makes the
Armijo test more lenient.  The DC of Im ψ is fixed (M is 0 there), as in the paper.

Every projection of a batch carries its own step, history weights and stop state; all arrays are
``(B, 1, Hr, Wr)`` float32 on NumPy or CuPy.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from xspeckle import backend as B

__all__ = ["solve_lbfgs"]


class _Space:
    """The real unknowns of ψ and the preconditioner acting on them."""

    def __init__(self, model):
        self.m = model
        xp = model.xp
        self.prior = model.delta_over_beta is not None
        pinv = model.pinv_sm_r if self.prior else model.pinv_r
        self.pinv = pinv
        # M⁻¹: κ² (+ b²); 0 where M is 0 (the fixed DC of the phase)
        self.minv = xp.where(pinv > 0, 1.0 / xp.where(pinv > 0, pinv, 1.0), 0.0).astype(np.float32)
        self.b = np.float32(1.0 / model.delta_over_beta) if self.prior else None

    def from_psi(self, psi):
        if self.prior:                      # ψ = (b + i)φ: φ = Im ψ
            return (psi.imag.astype(np.float32),)
        return (psi.real.astype(np.float32), psi.imag.astype(np.float32))

    def to_psi(self, x):
        if self.prior:
            return (self.b * x[0] + 1j * x[0]).astype(np.complex64)
        return (x[0] + 1j * x[1]).astype(np.complex64)

    def direction(self, g_re, g_im):
        """The preconditioned direction D = M·g from :meth:`PWFModel.gradient`'s output."""
        return (g_im,) if self.prior else (g_re, g_im)

    def _filter(self, a, f):
        spec = B.rfft2(a)
        spec *= f
        return B.irfft2(spec, s=self.m.shape).astype(np.float32)

    def precondition(self, v):
        """M·v."""
        return (self._filter(v[0], self.pinv),) if self.prior else (v[0], self._filter(v[1], self.pinv))

    def unprecondition(self, d):
        """M⁻¹·d (the gradient g from the direction D)."""
        return (self._filter(d[0], self.minv),) if self.prior else (d[0], self._filter(d[1], self.minv))


def _dot(a, b) -> np.ndarray:
    """Per-projection inner product of two tuples of ``(B, 1, H, W)`` arrays, float64 ``(B,)`` (host);
    one fused pass per component (:func:`xspeckle.retrieve.pwf_kernels.batch_dot`)."""
    from xspeckle.retrieve.pwf_kernels import batch_dot

    return np.asarray(batch_dot(tuple(a), tuple(b)), dtype=np.float64)


def _axpy(y, coef, x):
    """In place ``y += coef[b]·x`` per projection for tuples of arrays (fused, :func:`pwf_kernels.batch_axpy`)."""
    from xspeckle.retrieve.pwf_kernels import batch_axpy

    batch_axpy(tuple(y), np.asarray(coef, np.float32), tuple(x))
    return y


def _col(xp, v):
    return xp.asarray(np.asarray(v, dtype=np.float32))[:, None, None, None]


def solve_lbfgs(model, yspec, psi0, *, max_iter: int, min_iter: int, memory: int = 6, check_every: int = 10,
                change_tol: float = 1e-3, plateau_window: int = 20, plateau_tol: float = 1e-4,
                max_backtracks: int = 20, armijo: float = 1e-4, loss_rtol: float = 1e-6,
                progress: Callable[[int, int], None] | None = None,
                callback: Callable[[int, Any, Any], None] | None = None):
    """Minimise the PWF objective of *model* by preconditioned L-BFGS.

    Parameters
    ----------
    model : PWFModel
    yspec : complex64 ``(B, K, Hr, Wr//2+1)``, band-limited data spectra (:meth:`PWFModel.prepare`)
    psi0 : complex64 ``(B, 1, Hr, Wr)``, start
    max_iter : int
        Most gradient evaluations per projection (line-search trials included).
    min_iter : int
        No convergence stop before this many evaluations.
    memory : int
        Curvature pairs kept (m of Nocedal & Wright Alg. 7.4).
    check_every : int
        Iterations between two tests of the relative change of ψ.
    change_tol : float
        Converged when the relative change of ψ over the stopping mask (m > 0.99) between two
        tests is below this AND the loss has plateaued.
    plateau_window, plateau_tol : int, float
        The loss has plateaued when it fell by less than ``plateau_tol`` (relative) over the last
        *plateau_window* iterations.
    max_backtracks : int
        Step halvings of one line search before it counts as failed: the projection then ends
        ``"converged"`` if its loss had plateaued (float32 precision reached), else ``"stalled"``.
    armijo : float
        Sufficient-decrease constant c₁ of the Armijo test.
    loss_rtol : float
        Relative tolerance of the Armijo test (float32 rounding of the loss).
    progress : callable(evaluations, max_iter), optional
    callback : callable(iteration, active_indices, psi), optional
        Every *check_every* iterations with ψ ``(B', 1, Hr, Wr)`` of the active projections.

    Returns
    -------
    psi : complex64 ``(B, 1, Hr, Wr)``
    evaluations : ndarray int ``(B,)``, gradient evaluations used
    reasons : list of str, ``"converged"`` / ``"max_iter"`` / ``"stalled"``
    history : list of lists of float, the accepted loss per iteration
    extra : dict, ``{"line_search_backtracks": [...], "curvature_skips": [...]}``
    """
    xp = model.xp
    sp = _Space(model)
    nb = int(psi0.shape[0])
    mask = model.stop_mask
    out = xp.empty_like(psi0)
    active = np.arange(nb)
    x = sp.from_psi(psi0)
    ys_all = yspec

    def evaluate(xx, glob):
        """Loss and direction at *xx* for the projections of global indices *glob*."""
        ysub = ys_all if glob.size == nb else ys_all[xp.asarray(glob)]
        g_re, g_im, loss, _ = model.gradient(sp.to_psi(xx), ysub)
        d = sp.direction(g_re, g_im)
        return np.asarray(loss, dtype=np.float64), d

    f, dvec = evaluate(x, active)
    g = sp.unprecondition(dvec)
    evals = np.ones(nb, int)
    hist: list[list[float]] = [[float(v)] for v in f]
    reasons = [""] * nb
    n_back = np.zeros(nb, int)
    n_skip = np.zeros(nb, int)
    S: list[tuple] = []
    Y: list[tuple] = []
    R: list[np.ndarray] = []
    my_last = None                                    # M·y of the newest pair
    snap = None
    change = np.full(nb, np.inf)
    it = 0
    while active.size:
        it += 1
        n_act = active.size
        # ---- two-loop recursion (Nocedal & Wright Alg. 7.4) with H₀ = γ M (Eq. 7.20)
        q = tuple(a.copy() for a in g)
        alphas = []
        for s_i, y_i, r_i in zip(reversed(S), reversed(Y), reversed(R)):
            a = r_i * _dot(s_i, q)
            alphas.append(a)
            _axpy(q, -a, y_i)
        if S:
            sy = _dot(S[-1], Y[-1])
            ymy = _dot(Y[-1], my_last)
            gam = np.where((ymy > 0) & (sy > 0), sy / np.where(ymy > 0, ymy, 1.0), 1.0)
        else:
            gam = np.ones(n_act)
        r = sp.precondition(q)
        gc = _col(xp, -gam)                              # d = −H g: the sign folded into the scale
        d = tuple(rr * gc for rr in r)
        for (s_i, y_i, r_i), a in zip(zip(S, Y, R), reversed(alphas)):
            b = -r_i * _dot(y_i, d)                      # r = −d
            _axpy(d, -(a - b), s_i)
        slope = _dot(g, d)
        bad = ~(slope < 0) | ~np.isfinite(slope)
        if bad.any():                                   # not a descent direction: preconditioned gradient
            bc = xp.asarray(bad)[:, None, None, None]
            d = tuple(xp.where(bc, -dd, ddir) for dd, ddir in zip(dvec, d))
            slope = _dot(g, d)
        # ---- backtracking Armijo line search, per projection (Nocedal & Wright Alg. 3.1)
        t = np.ones(n_act)
        pending = np.ones(n_act, bool)
        x_new = d_new = None                             # allocated only when a trial is rejected
        f_new = f.copy()
        for _ in range(max_backtracks + 1):
            idx = np.nonzero(pending)[0]
            sel = None if idx.size == n_act else xp.asarray(idx)
            tc = _col(xp, t[idx])
            if sel is None:
                x_try = tuple(a + tc * dd for a, dd in zip(x, d))
            else:
                x_try = tuple(a[sel] + tc * dd[sel] for a, dd in zip(x, d))
            f_try, d_try = evaluate(x_try, active[idx])
            evals[active[idx]] += 1
            # Armijo, with the float32 noise of the loss (~1e-6 relative) as tolerance: near the optimum
            # the decrease a step can show is below that noise and would otherwise fail every trial
            ok = np.isfinite(f_try) & (f_try <= f[idx] + armijo * t[idx] * slope[idx] + loss_rtol * np.abs(f[idx]))
            if x_new is None and ok.all() and idx.size == n_act:
                x_new, d_new, f_new = x_try, d_try, f_try        # every projection took the full step: no copies
                pending[:] = False
                break
            if x_new is None:
                x_new = tuple(a.copy() for a in x)
                d_new = tuple(a.copy() for a in dvec)
            if ok.any():
                acc = idx[ok]
                ai = xp.asarray(acc)
                ok_x = xp.asarray(np.nonzero(ok)[0])
                for comp, (xn, xt) in enumerate(zip(x_new, x_try)):
                    xn[ai] = xt[ok_x]
                for dn, dt in zip(d_new, d_try):
                    dn[ai] = dt[ok_x]
                f_new[acc] = f_try[ok]
            pending[idx[ok]] = False
            n_back[active[idx[~ok]]] += 1
            t[idx[~ok]] *= 0.5
            if not pending.any():
                break
        failed = pending.copy()
        # ---- curvature pair (s, y); a pair with sᵀy ≤ 0 gets weight 0 for that projection
        s_new = tuple(a - b for a, b in zip(x_new, x))
        g_new = sp.unprecondition(d_new)
        y_new = tuple(a - b for a, b in zip(g_new, g))
        sy = _dot(s_new, y_new)
        good = (sy > 1e-30 * np.maximum(1.0, np.abs(f_new))) & ~failed
        n_skip[active[~good]] += 1
        rho = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        if good.any():
            S.append(s_new)
            Y.append(y_new)
            R.append(rho)
            my_last = tuple(a - b for a, b in zip(d_new, dvec))
            if len(S) > memory:
                S.pop(0)
                Y.pop(0)
                R.pop(0)
        x, f, dvec, g = x_new, f_new, d_new, g_new
        for i_loc, gi in enumerate(active):
            if not failed[i_loc]:
                hist[gi].append(float(f[i_loc]))
        # ---- stopping
        finished = np.zeros(n_act, bool)
        if it % check_every == 0:
            psi_now = sp.to_psi(x)
            if snap is not None:
                dz = (psi_now - snap) * mask
                zz = psi_now * mask
                num = (dz.real ** 2 + dz.imag ** 2).sum(axis=(-3, -2, -1), dtype=np.float64)
                den = (zz.real ** 2 + zz.imag ** 2).sum(axis=(-3, -2, -1), dtype=np.float64)
                change[active] = np.sqrt(np.asarray(B.asnumpy(num)) / np.maximum(np.asarray(B.asnumpy(den)), 1e-30))
            snap = psi_now
            if callback is not None:
                callback(it, active.copy(), psi_now)
        for i_loc, gi in enumerate(active):
            h = hist[gi]
            plateau = len(h) > plateau_window and (h[-plateau_window - 1] - h[-1]) <= plateau_tol * abs(h[-1])
            if failed[i_loc]:
                finished[i_loc] = True
                reasons[gi] = "converged" if plateau or evals[gi] >= min_iter else "stalled"
            elif evals[gi] >= min_iter and plateau and change[gi] < change_tol:
                finished[i_loc] = True
                reasons[gi] = "converged"
            elif evals[gi] >= max_iter:
                finished[i_loc] = True
                reasons[gi] = "max_iter"
        if progress is not None:
            progress(int(evals[active].max()), max_iter)
        if finished.any():
            psi_now = sp.to_psi(x)
            out[xp.asarray(active[finished])] = psi_now[xp.asarray(np.nonzero(finished)[0])]
            keep = ~finished
            active = active[keep]
            if not active.size:
                break
            ksel = xp.asarray(np.nonzero(keep)[0])
            x = tuple(a[ksel] for a in x)
            g = tuple(a[ksel] for a in g)
            dvec = tuple(a[ksel] for a in dvec)
            f = f[keep]
            S = [tuple(a[ksel] for a in s_i) for s_i in S]
            Y = [tuple(a[ksel] for a in y_i) for y_i in Y]
            R = [r_i[keep] for r_i in R]
            if my_last is not None:
                my_last = tuple(a[ksel] for a in my_last)
            if snap is not None:
                snap = snap[ksel]
    return out, evals, reasons, hist, {"line_search_backtracks": n_back.tolist(), "curvature_skips": n_skip.tolist()}
