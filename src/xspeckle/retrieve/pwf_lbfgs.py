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
        #: per component: is M the identity there (Re ψ without the prior)?
        self.identity = (False,) if self.prior else (True, False)

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

    def unprecondition(self, d):
        """M⁻¹·d (the gradient g from the direction D)."""
        return (self._filter(d[0], self.minv),) if self.prior else (d[0], self._filter(d[1], self.minv))


def _dot(a, b) -> np.ndarray:
    """Per-projection inner product of two tuples of ``(B, 1, H, W)`` arrays, float64 ``(B,)`` (host);
    one fused pass per component (:func:`xspeckle.retrieve.pwf_vector.batch_dot`)."""
    from xspeckle.retrieve.pwf_vector import batch_dot

    return np.asarray(batch_dot(tuple(a), tuple(b)), dtype=np.float64)


class _Pairs:
    """The last *m* curvature pairs and the direction ``d = −H g`` of the compact L-BFGS form.

    Byrd, Nocedal & Schnabel, Math. Prog. 63, 129 (1994), Theorem 2.2 (Eq. 2.6), with ``H₀ = γ M``:

        H g = γ M g + S u − γ (M Y) p,   p = R⁻¹ Sᵀg,   u = R⁻ᵀ (Δ p + γ YᵀMY p − γ Yᵀ(M g)),

    R the upper triangle of SᵀY (``R_ij = s_iᵀ y_j``, i ≤ j), Δ its diagonal, γ = sᵀy / yᵀMy of the newest
    pair (Nocedal & Wright Eq. 7.20).  The same direction as the two-loop recursion (Alg. 7.4), but the
    vector work is two fused passes over the stored vectors (``pwf_vector.batch_multi_dot`` and
    ``batch_combine``) instead of 4m dot/axpy passes plus a preconditioner filter: ``M g = D`` is what the
    model returns and ``M y = D_{k+1} − D_k`` is stored beside y.  The small m × m algebra runs on the host.

    Pairs live in ring buffers ``(m + 1, B, 1, H, W)`` per component (one spare slot: a pair no projection
    accepts is dropped without evicting the oldest).  Per projection a pair is used only when it was
    accepted (``sᵀy > 0`` and a successful line search), which is what a zero weight ρ did in the two-loop form.
    """

    def __init__(self, xp, memory: int, like, identity):
        self.xp = xp
        self.m = int(memory)
        n = self.m + 1
        self.S = tuple(xp.zeros((n,) + a.shape, np.float32) for a in like)
        self.Y = tuple(xp.zeros((n,) + a.shape, np.float32) for a in like)
        # M y: on a component where M is the identity it is y itself (no copy)
        self.MY = tuple(y if ident else xp.zeros_like(y) for y, ident in zip(self.Y, identity))
        nb = int(like[0].shape[0])
        self.order: list[int] = []               # slots, oldest → newest
        self.valid = np.zeros((nb, n), bool)
        self.sy = np.zeros((nb, n, n))           # s_iᵀ y_j (slots i, j)
        self.ymy = np.zeros((nb, n, n))          # y_iᵀ M y_j

    def _spare(self) -> int:
        used = set(self.order)
        return next(k for k in range(self.m + 1) if k not in used)

    def add(self, x_new, x, g_new, g, d_new, d_old, accept) -> np.ndarray:
        """Store the pair (x_new − x, g_new − g, d_new − d_old); *accept(sy)* → bool ``(B,)`` says for which
        projections it counts.  Returns ``sᵀy`` ``(B,)``."""
        from xspeckle.retrieve.pwf_vector import batch_multi_dot

        xp = self.xp
        k = self._spare()
        for c in range(len(self.S)):
            xp.subtract(x_new[c], x[c], out=self.S[c][k])
            xp.subtract(g_new[c], g[c], out=self.Y[c][k])
            if self.MY[c] is not self.Y[c]:
                xp.subtract(d_new[c], d_old[c], out=self.MY[c][k])
        idx = self.order + [k]
        col_sy = sum(batch_multi_dot(self.S[c], idx, self.Y[c][k]) for c in range(len(self.S)))
        col_ymy = sum(batch_multi_dot(self.Y[c], idx, self.MY[c][k]) for c in range(len(self.S)))
        sy_new = col_sy[-1]
        ok = np.asarray(accept(sy_new), bool)
        if not ok.any():                             # nobody takes it: the slot stays spare
            return sy_new
        for ii, i in enumerate(idx):
            self.sy[:, i, k] = col_sy[ii]
            self.ymy[:, i, k] = self.ymy[:, k, i] = col_ymy[ii]
        self.valid[:, k] = ok
        self.order.append(k)
        if len(self.order) > self.m:
            old = self.order.pop(0)
            self.valid[:, old] = False
        return sy_new

    def direction(self, g, dvec, out):
        """``out = −H g`` (tuple of arrays like *g*); *dvec* = M g.  Returns *out*."""
        from scipy.linalg import solve_triangular

        from xspeckle.retrieve.pwf_vector import batch_combine, batch_multi_dot

        idx = list(self.order)
        nb = int(g[0].shape[0])
        a = sum(batch_multi_dot(self.S[c], idx, g[c]) for c in range(len(g)))           # Sᵀ g      (n, B)
        q = sum(batch_multi_dot(self.Y[c], idx, dvec[c]) for c in range(len(g)))        # Yᵀ (M g)  (n, B)
        a0 = np.empty(nb)
        cs = np.zeros((len(idx), nb))
        cy = np.zeros((len(idx), nb))
        for b in range(nb):
            sel = [ii for ii, i in enumerate(idx) if self.valid[b, i]]
            if not sel:
                a0[b] = -1.0                          # no curvature yet: the preconditioned gradient
                continue
            ix = [idx[ii] for ii in sel]
            kn = ix[-1]
            sy_n, ymy_n = self.sy[b, kn, kn], self.ymy[b, kn, kn]
            gam = sy_n / ymy_n if (sy_n > 0 and ymy_n > 0) else 1.0
            r = np.triu(self.sy[b][np.ix_(ix, ix)])
            p = solve_triangular(r, a[sel, b], lower=False)
            u = solve_triangular(r, np.diag(r) * p + gam * (self.ymy[b][np.ix_(ix, ix)] @ p) - gam * q[sel, b],
                                 trans="T", lower=False)
            a0[b] = -gam                              # d = −γ M g − S u + γ (M Y) p
            cs[sel, b] = -u
            cy[sel, b] = gam * p
        for c in range(len(g)):
            batch_combine(out[c], a0, dvec[c], self.S[c], cs, self.MY[c], cy, idx)
        return out

    def keep(self, sel_dev, keep_host) -> None:
        """Drop the finished projections (device index *sel_dev*, host mask *keep_host*)."""
        self.S = tuple(a[:, sel_dev] for a in self.S)
        ident = [my is y for my, y in zip(self.MY, self.Y)]
        self.Y = tuple(a[:, sel_dev] for a in self.Y)
        self.MY = tuple(y if i else my[:, sel_dev] for my, y, i in zip(self.MY, self.Y, ident))
        self.valid = self.valid[keep_host]
        self.sy = self.sy[keep_host]
        self.ymy = self.ymy[keep_host]


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
    pairs = _Pairs(xp, memory, x, sp.identity)
    snap = None
    change = np.full(nb, np.inf)
    it = 0
    while active.size:
        it += 1
        n_act = active.size
        # ---- d = −H g, compact L-BFGS form with H₀ = γ M (class _Pairs)
        d = pairs.direction(g, dvec, tuple(xp.empty_like(a) for a in g))
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
        # ---- curvature pair (s, y, M y); a pair with sᵀy ≤ 0 is not used by that projection
        g_new = sp.unprecondition(d_new)
        good_box = {}

        def accept(sy):
            good_box["g"] = (sy > 1e-30 * np.maximum(1.0, np.abs(f_new))) & ~failed
            return good_box["g"]

        pairs.add(x_new, x, g_new, g, d_new, dvec, accept)
        n_skip[active[~good_box["g"]]] += 1
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
            pairs.keep(ksel, keep)
            if snap is not None:
                snap = snap[ksel]
    return out, evals, reasons, hist, {"line_search_backtracks": n_back.tolist(), "curvature_skips": n_skip.tolist()}
