"""Fused vector operations of the PWF solvers: the FISTA step and the L-BFGS inner products/combinations.

The gradient's kernels are in :mod:`xspeckle.retrieve.pwf_kernels` (whose thread pool, numba switch and
row-splitting driver these share); here are the solvers' own passes over ψ-sized arrays, each one pass
(numba, float32 data, float64 accumulation, threaded over rows) with a NumPy/CuPy twin:

- :func:`momentum_step` — one FISTA step of Algorithm S1 (Lee et al. 2026; pwf.md §4 step 8) with the
  divergence guard's accept/reject, for :mod:`~xspeckle.retrieve.pwf_fista`;
- :func:`batch_dot`, :func:`batch_axpy` — per-projection inner products and updates;
- :func:`batch_multi_dot`, :func:`batch_combine` — the two passes of the compact L-BFGS direction
  (Byrd, Nocedal & Schnabel 1994, Eq. 2.6) in :mod:`~xspeckle.retrieve.pwf_lbfgs`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xspeckle import backend as B
from xspeckle.retrieve import pwf_kernels as _pk

__all__ = ["momentum_step", "batch_dot", "batch_axpy", "batch_multi_dot", "batch_combine"]

_KERNELS: dict[str, Any] | None = None


def _nb_step(psi, zold, gre, gim, acc, er, ei, ok, beta, hh, r0, r1):
    # rows (b, y) of (B, 1, H, W): z = ψ − (η_re g_re + i η_im g_im) (ψ when rejected);
    # acc ← ψ (when accepted); ψ ← z + β (z − z_old); z_old ← z
    n = gre.shape[1]
    for r in range(r0, r1):
        b = r // hh
        a_re = er[b]
        a_im = ei[b]
        bt = beta[b]
        pr_ = psi[r]
        zr_ = zold[r]
        g1 = gre[r]
        g2 = gim[r]
        if ok[b]:
            ac = acc[r]
            for j in range(2 * n):
                ac[j] = pr_[j]
            for j in range(n):
                zr = pr_[2 * j] - g1[j] * a_re
                zi = pr_[2 * j + 1] - g2[j] * a_im
                pr_[2 * j] = zr + bt * (zr - zr_[2 * j])
                pr_[2 * j + 1] = zi + bt * (zi - zr_[2 * j + 1])
                zr_[2 * j] = zr
                zr_[2 * j + 1] = zi
        else:                                                  # rejected: z = ψ (g may be non-finite)
            for j in range(2 * n):
                zz = pr_[j]
                pr_[j] = zz + bt * (zz - zr_[j])
                zr_[j] = zz
    return 0


def _nb_dot(u, v, rows, r0, r1):
    n = u.shape[1]
    for r in range(r0, r1):
        ur = u[r]
        vr = v[r]
        acc = 0.0
        for j in range(n):
            acc += np.float64(ur[j] * vr[j])
        rows[r] = acc
    return 0


def _nb_axpy(y, a, x, hh, r0, r1):
    n = y.shape[1]
    for r in range(r0, r1):
        c = a[r // hh]
        yr = y[r]
        xr = x[r]
        for j in range(n):
            yr[j] += c * xr[j]
    return 0


def _nb_mdot(s, idx, v, out, r0, r1):
    # out[i, r] = Σ_j s[idx[i], r, j] v[r, j]: the row of v stays in cache while each stored vector streams once
    n = v.shape[1]
    for r in range(r0, r1):
        vr = v[r]
        for i in range(idx.shape[0]):
            sr = s[idx[i], r]
            acc = 0.0
            for j in range(n):
                acc += np.float64(sr[j] * vr[j])
            out[i, r] = acc
    return 0


def _nb_combine(d, a0, dv, s, cs, ys, cy, idx, hh, r0, r1):
    # d[r] = a0[b] dv[r] + Σ_i cs[i, b] s[idx[i], r] + Σ_i cy[i, b] ys[idx[i], r]
    n = d.shape[1]
    for r in range(r0, r1):
        b = r // hh
        dr = d[r]
        dvr = dv[r]
        c0 = a0[b]
        for j in range(n):
            dr[j] = c0 * dvr[j]
        for i in range(idx.shape[0]):
            c1 = cs[i, b]
            c2 = cy[i, b]
            sr = s[idx[i], r]
            yr = ys[idx[i], r]
            for j in range(n):
                dr[j] += c1 * sr[j] + c2 * yr[j]
    return 0


_NB_FUNCS = {"step": _nb_step, "dot": _nb_dot, "axpy": _nb_axpy, "mdot": _nb_mdot, "combine": _nb_combine}


def _kernels() -> dict[str, Any]:
    """The compiled kernels (numba, ``nogil``, disk-cached where possible), or {} without numba."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = B.compile_kernels(
            _NB_FUNCS,
            # the float64 sum of a dot product may be reordered (vectorised): rounding at 1e-16, not float32's
            lambda name: {"error_model": "numpy", "fastmath": {"reassoc"} if name in ("dot", "mdot") else False})
    return _KERNELS


def _numba_ok(*arrays) -> bool:
    return (_pk._USE_NUMBA and all(type(a) is np.ndarray and a.dtype == np.float32 and a.flags.c_contiguous
                                   for a in arrays) and bool(_kernels()))


def momentum_step(psi, z_old, g_re, g_im, eta_re, eta_im, ok, beta, psi_acc=None):
    """One FISTA step of :meth:`PWFModel.solve` (pwf.md §4 step 8, Alg. S1), fused and in place.

    For each projection b (all arrays ``(B, 1, Hr, Wr)``; per-projection factors ``(B,)``)::

        z      = ψ − (η_re[b] g_re + i η_im[b] g_im)      (z = ψ where ok[b] is False: step rejected)
        ψ_acc  = ψ                                          (where ok[b]; the accepted point)
        ψ      ← z + β[b] (z − z_old)                       (Nesterov momentum)
        z_old  ← z

    One pass over the data instead of the ~8 NumPy passes (and 60 MB temporaries) of the explicit
    formula.  Offered for the solver loop; a NumPy/CuPy twin runs where numba does not.

    Parameters
    ----------
    psi, z_old : complex64 arrays, updated in place
    g_re, g_im : float32 arrays, the update direction from :meth:`PWFModel.gradient` (not modified)
    eta_re, eta_im, beta : float arrays ``(B,)``, steps and momentum coefficients
    ok : bool array ``(B,)``, steps accepted by the divergence guard
    psi_acc : complex64 array, optional, receives ψ before the step where ok

    Returns
    -------
    psi, z_old (the same arrays)
    """
    xp = B.get_xp(psi)
    nb = psi.shape[0]
    er = np.asarray(B.asnumpy(eta_re), np.float32).reshape(nb)
    ei = np.asarray(B.asnumpy(eta_im), np.float32).reshape(nb)
    bt = np.asarray(B.asnumpy(beta), np.float32).reshape(nb)
    okb = np.asarray(B.asnumpy(ok), bool).reshape(nb)
    contiguous = all(a.flags.c_contiguous for a in (psi, z_old, g_re, g_im)) and (
        psi_acc is None or psi_acc.flags.c_contiguous)
    if xp is np and _pk._USE_NUMBA and _kernels() and contiguous:
        _f32, _run = _pk._f32, _pk._run
        pv = _f32(psi)
        accv = _f32(psi_acc) if psi_acc is not None else pv   # ψ into itself: a no-op before ψ is overwritten
        _run(_kernels()["step"], pv.shape[0], pv.size, pv, _f32(z_old), _f32(g_re), _f32(g_im), accv, er, ei, okb,
             bt, int(np.prod(psi.shape[1:-1])))
        return psi, z_old
    # NumPy/CuPy twin (the explicit formula of PWFModel.solve)
    shp = (nb,) + (1,) * (psi.ndim - 1)
    okx = xp.asarray(okb).reshape(shp)
    if psi_acc is not None:
        psi_acc[...] = xp.where(okx, psi, psi_acc)
    z = psi - (g_re * xp.asarray(er).reshape(shp) + 1j * (g_im * xp.asarray(ei).reshape(shp))).astype(np.complex64)
    z = xp.where(okx, z, psi)
    psi[...] = z + xp.asarray(bt).reshape(shp) * (z - z_old)
    z_old[...] = z
    return psi, z_old


def batch_dot(u, v) -> np.ndarray:
    """Per-projection inner products ``Σ u·v`` of float32 arrays ``(B, ...)``, accumulated in float64.

    One pass (numba, threaded) instead of a product temporary plus a sum; the vector operations of a
    quasi-Newton solver (L-BFGS two-loop recursion, Nocedal & Wright Alg. 7.4) are made of these and
    :func:`batch_axpy`.  Tuples of arrays are summed component-wise (``Σ_i Σ u_i·v_i``).

    Returns
    -------
    float64 ndarray ``(B,)`` on the host.
    """
    if isinstance(u, tuple):
        return sum(batch_dot(a, b) for a, b in zip(u, v))
    nb = u.shape[0]
    if _numba_ok(u, v):
        uv, vv = u.reshape(u.shape[0] * int(np.prod(u.shape[1:-1])), u.shape[-1]), v.reshape(-1, v.shape[-1])
        rows = np.empty(uv.shape[0], np.float64)
        _pk._run(_kernels()["dot"], uv.shape[0], uv.size, uv, vv, rows)
        return rows.reshape(nb, -1).sum(axis=1)
    return np.asarray(B.asnumpy((u * v).reshape(nb, -1).sum(axis=1, dtype=np.float64)), dtype=np.float64)


def batch_axpy(y, a, x):
    """In place ``y += a[b] · x`` per projection b (float32 arrays ``(B, ...)``, *a* ``(B,)``); returns *y*.

    Tuples of arrays are updated component-wise with the same coefficients.
    """
    if isinstance(y, tuple):
        for yy, xx in zip(y, x):
            batch_axpy(yy, a, xx)
        return y
    nb = y.shape[0]
    coef = np.asarray(B.asnumpy(a), np.float32).reshape(nb)
    if _numba_ok(y, x):
        hh = int(np.prod(y.shape[1:-1]))
        yv, xv = y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1])
        _pk._run(_kernels()["axpy"], yv.shape[0], yv.size, yv, coef, xv, hh)
        return y
    xp = B.get_xp(y)
    y += xp.asarray(coef).reshape((nb,) + (1,) * (y.ndim - 1)) * x
    return y


def batch_multi_dot(stack, idx, v) -> np.ndarray:
    """Inner products of one vector with several stored ones, per projection, in one pass.

    Parameters
    ----------
    stack : float32 ``(m, B, ...)``, stored vectors (a ring buffer of a quasi-Newton solver)
    idx : sequence of int, the slots of *stack* to use
    v : float32 ``(B, ...)``

    Returns
    -------
    float64 ndarray ``(len(idx), B)`` on the host: ``Σ stack[idx[i], b]·v[b]``, accumulated in float64.
    """
    idx = np.asarray(idx, dtype=np.int64)
    nb = v.shape[0]
    if idx.size == 0:
        return np.zeros((0, nb))
    if _numba_ok(stack, v):
        w = v.shape[-1]
        vv = v.reshape(-1, w)
        sv = stack.reshape(stack.shape[0], vv.shape[0], w)
        rows = np.empty((idx.size, vv.shape[0]), np.float64)
        _pk._run(_kernels()["mdot"], vv.shape[0], vv.size * idx.size, sv, idx, vv, rows)
        return rows.reshape(idx.size, nb, -1).sum(axis=2)
    return np.stack([batch_dot(stack[int(i)], v) for i in idx])


def batch_combine(out, a0, dv, s, cs, ys, cy, idx):
    """``out[b] = a0[b]·dv[b] + Σ_i cs[i, b]·s[idx[i], b] + Σ_i cy[i, b]·ys[idx[i], b]`` in one pass; returns *out*.

    The direction of the compact L-BFGS form (Byrd, Nocedal & Schnabel, Math. Prog. 63, 129 (1994),
    Eq. 2.6): *s*, *ys* ``(m, B, ...)`` ring buffers of steps and (preconditioned) gradient changes, *dv*
    ``(B, ...)``, coefficients host arrays ``a0 (B,)``, ``cs, cy (len(idx), B)``.
    """
    idx = np.asarray(idx, dtype=np.int64)
    nb = out.shape[0]
    a0 = np.asarray(a0, np.float32).reshape(nb)
    cs = np.asarray(cs, np.float32).reshape(idx.size, nb)
    cy = np.asarray(cy, np.float32).reshape(idx.size, nb)
    if _numba_ok(out, dv, s, ys):
        w = out.shape[-1]
        hh = int(np.prod(out.shape[1:-1]))
        ov = out.reshape(-1, w)
        _pk._run(_kernels()["combine"], ov.shape[0], ov.size * (1 + 2 * idx.size), ov, a0, dv.reshape(-1, w),
             s.reshape(s.shape[0], ov.shape[0], w), cs, ys.reshape(ys.shape[0], ov.shape[0], w), cy, idx, hh)
        return out
    xp = B.get_xp(out)
    shp = (nb,) + (1,) * (out.ndim - 1)
    xp.multiply(dv, xp.asarray(a0).reshape(shp), out=out)
    for k, i in enumerate(idx):
        out += xp.asarray(cs[k]).reshape(shp) * s[int(i)]
        out += xp.asarray(cy[k]).reshape(shp) * ys[int(i)]
    return out
