"""Fused PWF iteration: the loss and preconditioned Wirtinger gradient of :class:`~xspeckle.retrieve.pwf.PWFModel`
with the element-wise work fused into a few kernels and every FFT done in place.

The mathematics is exactly that of :meth:`PWFModel.gradient`'s reference path (pwf.md §1–3; Lee et al.,
Light Sci. Appl. 2026, Eqs. 4–5 for the IPSF/IOTF blur, Eqs. 14–15 for Γ² = 1 − STF, Algorithm S2 for the
preconditioner 1/κ²); only the evaluation order of the element-wise steps changes, so both paths agree
within float32 rounding (tests/test_pwf_kernels.py).

Per iteration (batch B, K diffuser positions), counted transforms:

- forward model ``Y = P_L2{t · P_L1{e^ψ}}``: 2 complex FFTs on ``(B, 1)`` + 2 on ``(B, K)``;
- data residual and its adjoint blur ``IPSF ⊛``: 2 real forward + 2 real inverse FFTs on ``(B, K)``;
- adjoint ``P_{-L1}{t̄ · P_{-L2}{·}}``: 2 complex FFTs on ``(B, K)`` + 2 on ``(B, 1)``;
- regulariser and preconditioner: 3 real forward (Re ψ, Im ψ, Im g) + 2 real inverse FFTs on ``(B, 1)``
  (1 inverse with the δ/β prior).

That is the reference path's count (8 complex + 9 real for K = 1); the gain is in how they run: every
complex FFT in place on one reused work buffer (no 60 MB page-faulted temporaries), the real FFTs as
two 1-D passes of which one is in place, and the ~60 NumPy element-wise passes of the reference (the
complex exponential alone is a slow NumPy loop) fused into the 11 kernels below (the solvers' own vector
work — FISTA step, L-BFGS inner products and combinations — is in :mod:`xspeckle.retrieve.pwf_vector`).  Tried and dropped:
F{Re ψ}, F{Im ψ} from one complex FFT of ψ split by Hermitian symmetry (no gain measured; 50x the
rounding error on F{Re ψ} for thick samples).  Fewer transforms would need the solver to carry F{ψ}
alongside ψ.

========================  ==============================================================
``exp``                   x = e^ψ = e^{Re ψ}(cos Im ψ + i sin Im ψ), float32, vectorised polynomials
                          (Cephes), written twice (x is returned; the copy is transformed in place)
``mul``                   a ·= q or a ·= q̄ (Fresnel transfer, t, t̄; broadcast over the batch)
``expand``                v[b, k] = u[b] · t[k]  (K > 1)
``intensity``             |Y|²
``residual_spectrum``     S = S · IOTF − F{y_B}
``mask_loss``             Σ (m r)² per row (float64), r ← m² r
``mul_real``              a ·= h (real factor, broadcast or full)
``conj_mean``             G[b] = (1/K) Σ_k v[b, k] · t̄[k]  (K > 1)
``final``                 g = G · x̄ / c; Re g, Im g + b Re g, Re ψ, Im ψ as contiguous float32
``add``                   g_re = a_re Γ²⊛Re ψ + Re g
``regulariser``           Σ w|F Re ψ|², Σ w'|F Im ψ|² (float64), F{g_im} = P⁻¹ F{Im g} + a_im Γ² F{Im ψ}
                          (+ b a_re Γ² F{Re ψ}), F{g_re,reg} = a_re Γ² F{Re ψ}
========================  ==============================================================

Implementations of the kernels: numba (``nogil``, float32, rows split over a thread pool of
:func:`xspeckle.backend.fft_workers` threads, work buffers kept per thread and model) on NumPy arrays; a NumPy/CuPy twin (:class:`XpOps`, in-place ufuncs with ``out=``) that runs the same driver
on CuPy, and on NumPy when numba is missing or ``XSPECKLE_NUMBA=0``.  The reference path of
:meth:`PWFModel.gradient` stays as the specification (``pwf_kernels.USE_FUSED = False`` selects it).
"""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from xspeckle import backend as B

__all__ = ["USE_FUSED", "fused_available", "fused_gradient", "NumbaOps",
           "XpOps", "ops_for", "kernel_threads"]

#: numba kernels on the CPU (env ``XSPECKLE_NUMBA=0`` switches them off; the NumPy twin then runs)
_USE_NUMBA = os.environ.get("XSPECKLE_NUMBA", "1").strip().lower() not in ("0", "false", "no", "off")
#: the fused driver at all (False: PWFModel.gradient runs its reference NumPy/CuPy code)
USE_FUSED = True

_KERNELS: dict[str, Any] | None = None
_POOL: dict[Any, Any] = {"pid": None}
_POOL_LOCK = threading.Lock()
#: per-thread scratch buffers of the numba path, per model (weak keys: freed with the model)
_TLS = threading.local()
#: below this many float32 elements a kernel runs on the calling thread
_SMALL = 1 << 16


def kernel_threads(size: int | None = None) -> int:
    """Threads of the fused element-wise kernels for *size* elements: :func:`xspeckle.backend.fft_workers`."""
    return B.fft_workers(size)


# --------------------------------------------------------------------------- numba kernels (float32 views)
# Complex arrays are passed as float32 views (rows, 2·W): element j is (2j, 2j+1) = (re, im).  Each kernel
# handles rows [r0, r1) of its output; broadcast operands are indexed with row % (their row count).

def _nb_exp(p, x, w, r0, r1):
    # x = w = e^ψ = e^{Re ψ}(cos Im ψ + i sin Im ψ) in float32, by branch-free polynomials that LLVM
    # vectorises (libm's expf/sinf/cosf do not vectorise without SVML: 5x slower).  Coefficients and
    # argument reduction: S. L. Moshier, Cephes Math Library (expf.c: degree-5 minimax on [-ln2/2, ln2/2],
    # 2^n from the exponent bits; sinf.c/cosf.c: Cody-Waite reduction by pi/2 in three parts, valid to
    # |x| = 8192, degree-3/4 polynomials on [-pi/4, pi/4]).  Max error vs NumPy's complex64 exp:
    # 2.3e-7 relative (tests/test_pwf_kernels.py).  Rows with any |Im ψ| > 8192 use libm.
    n = p.shape[1] // 2
    tmp = np.empty(n, np.float32)
    ti = tmp.view(np.int32)
    l2e = np.float32(1.44269504088896341)
    c1 = np.float32(0.693359375)
    c2 = np.float32(-2.12194440e-4)
    two_pi = np.float32(0.63661977236758134)                   # 2/π
    dp1 = np.float32(1.5703125)                               # π/2 = dp1 + dp2 + dp3
    dp2 = np.float32(4.837512969970703125e-4)
    dp3 = np.float32(7.54978995489188216e-8)
    lo = np.float32(-87.0)
    hi = np.float32(88.72)
    for r in range(r0, r1):
        big = np.float32(0.0)
        for j in range(n):
            big = max(big, abs(p[r, 2 * j + 1]))
        if big > np.float32(8192.0):
            for j in range(n):
                e = np.exp(p[r, 2 * j])
                c = np.cos(p[r, 2 * j + 1])
                s = np.sin(p[r, 2 * j + 1])
                x[r, 2 * j] = e * c
                x[r, 2 * j + 1] = e * s
                w[r, 2 * j] = e * c
                w[r, 2 * j + 1] = e * s
            continue
        for j in range(n):                                     # 2^(n-1) as float32 bits
            a = min(max(p[r, 2 * j], lo), hi)
            fn = np.floor(a * l2e + np.float32(0.5))
            ti[j] = (np.int32(fn) + np.int32(126)) << 23
        for j in range(n):
            a0 = p[r, 2 * j]
            a = min(max(a0, lo), hi)
            fn = np.floor(a * l2e + np.float32(0.5))
            rr = (a - fn * c1) - fn * c2
            z = rr * rr
            pe = ((((np.float32(1.9875691500e-4) * rr + np.float32(1.3981999507e-3)) * rr
                    + np.float32(8.3334519073e-3)) * rr + np.float32(4.1665795894e-2)) * rr
                  + np.float32(1.6666665459e-1)) * rr + np.float32(5.0000001201e-1)
            pe = pe * z + rr + np.float32(1.0)
            e = (pe + pe) * tmp[j]
            e = np.float32(0.0) if a0 < lo else e
            e = np.float32(np.inf) if a0 > np.float32(88.7228) else e
            y = p[r, 2 * j + 1]
            fk = np.floor(y * two_pi + np.float32(0.5))
            t = ((y - fk * dp1) - fk * dp2) - fk * dp3
            t2 = t * t
            sn = ((np.float32(-1.9515295891e-4) * t2 + np.float32(8.3321608736e-3)) * t2
                  + np.float32(-1.6666654611e-1)) * t2 * t + t
            cs = ((np.float32(2.443315711809948e-5) * t2 + np.float32(-1.388731625493765e-3)) * t2
                  + np.float32(4.166664568298827e-2)) * t2 * t2 - np.float32(0.5) * t2 + np.float32(1.0)
            q = np.int32(fk) & np.int32(3)
            odd = (q & np.int32(1)) != 0
            sv = cs if odd else sn
            cv = sn if odd else cs
            cv = -cv if (q == 1 or q == 2) else cv
            sv = -sv if q >= 2 else sv
            x[r, 2 * j] = e * cv
            x[r, 2 * j + 1] = e * sv
            w[r, 2 * j] = e * cv
            w[r, 2 * j + 1] = e * sv
    return 0


def _nb_mul(a, q, conj, r0, r1):
    n = a.shape[1] // 2
    hq = q.shape[0]
    for r in range(r0, r1):
        ar = a[r]
        qr = q[r % hq]
        if conj:
            for j in range(n):
                xr = ar[2 * j]
                xi = ar[2 * j + 1]
                yr = qr[2 * j]
                yi = -qr[2 * j + 1]
                ar[2 * j] = xr * yr - xi * yi
                ar[2 * j + 1] = xr * yi + xi * yr
        else:
            for j in range(n):
                xr = ar[2 * j]
                xi = ar[2 * j + 1]
                yr = qr[2 * j]
                yi = qr[2 * j + 1]
                ar[2 * j] = xr * yr - xi * yi
                ar[2 * j + 1] = xr * yi + xi * yr
    return 0


def _nb_mul_real(a, h, r0, r1):
    n = a.shape[1] // 2
    hh = h.shape[0]
    for r in range(r0, r1):
        ar = a[r]
        hr = h[r % hh]
        for j in range(n):
            f = hr[j]
            ar[2 * j] *= f
            ar[2 * j + 1] *= f
    return 0


def _nb_expand(u, t, v, kk, hh, r0, r1):
    # v rows (b, k, y) = u rows (b, y) · t rows (k, y)
    n = v.shape[1] // 2
    for r in range(r0, r1):
        y = r % hh
        bk = r // hh
        k = bk % kk
        b = bk // kk
        ur = u[b * hh + y]
        tr_ = t[k * hh + y]
        vr = v[r]
        for j in range(n):
            xr = ur[2 * j]
            xi = ur[2 * j + 1]
            yr = tr_[2 * j]
            yi = tr_[2 * j + 1]
            vr[2 * j] = xr * yr - xi * yi
            vr[2 * j + 1] = xr * yi + xi * yr
    return 0


def _nb_intensity(y, out, r0, r1):
    n = out.shape[1]
    for r in range(r0, r1):
        yr = y[r]
        orow = out[r]
        for j in range(n):
            a = yr[2 * j]
            b = yr[2 * j + 1]
            orow[j] = a * a + b * b
    return 0


def _nb_residual_spectrum(s, f, ys, r0, r1):
    n = s.shape[1] // 2
    hf = f.shape[0]
    for r in range(r0, r1):
        sr = s[r]
        fr = f[r % hf]
        yr = ys[r]
        for j in range(n):
            g = fr[j]
            sr[2 * j] = sr[2 * j] * g - yr[2 * j]
            sr[2 * j + 1] = sr[2 * j + 1] * g - yr[2 * j + 1]
    return 0


def _nb_mask_loss(res, m, rows, r0, r1):
    n = res.shape[1]
    hm = m.shape[0]
    for r in range(r0, r1):
        rr = res[r]
        mr = m[r % hm]
        acc = 0.0
        for j in range(n):
            v = mr[j] * rr[j]
            acc += np.float64(v) * np.float64(v)
            rr[j] = mr[j] * v
        rows[r] = acc
    return 0


def _nb_conj_mean(v, t, g, kk, hh, inv_k, r0, r1):
    # g rows (b, y) = inv_k · Σ_k v rows (b, k, y) · conj(t rows (k, y))
    n = g.shape[1] // 2
    for r in range(r0, r1):
        y = r % hh
        b = r // hh
        gr = g[r]
        for j in range(2 * n):
            gr[j] = np.float32(0.0)
        for k in range(kk):
            vr = v[(b * kk + k) * hh + y]
            tr_ = t[k * hh + y]
            for j in range(n):
                xr = vr[2 * j]
                xi = vr[2 * j + 1]
                yr = tr_[2 * j]
                yi = tr_[2 * j + 1]
                gr[2 * j] += xr * yr + xi * yi
                gr[2 * j + 1] += xi * yr - xr * yi
        for j in range(2 * n):
            gr[j] *= inv_k
    return 0


def _nb_final(g, x, p, cinv, bb, gre, gin, pre, pim, r0, r1):
    # g·conj(x)·cinv -> Re (gre), Im + bb·Re (gin); ψ split into contiguous Re/Im
    n = gre.shape[1]
    for r in range(r0, r1):
        gr = g[r]
        xr_ = x[r]
        pr_ = p[r]
        o1 = gre[r]
        o2 = gin[r]
        o3 = pre[r]
        o4 = pim[r]
        for j in range(n):
            ar = gr[2 * j]
            ai = gr[2 * j + 1]
            xr = xr_[2 * j]
            xi = xr_[2 * j + 1]
            re = (ar * xr + ai * xi) * cinv
            im = (ai * xr - ar * xi) * cinv
            o1[j] = re
            o2[j] = im + bb * re
            o3[j] = pr_[2 * j]
            o4[j] = pr_[2 * j + 1]
    return 0


def _nb_regulariser(fre, fim, gi, gam, pinv, wre, wim, a_re, a_im, bb, use_pinv, rows, r0, r1):
    # rows of the half spectra (b, y); gam, pinv, wre, wim: (H, W//2+1) float32
    n = fre.shape[1] // 2
    hh = gam.shape[0]
    for r in range(r0, r1):
        y = r % hh
        fr = fre[r]
        fi = fim[r]
        gr = gi[r]
        gm = gam[y]
        pv = pinv[y]
        w1 = wre[y]
        w2 = wim[y]
        acc = 0.0
        for c in range(n):
            rr = fr[2 * c]
            ri = fr[2 * c + 1]
            mr = fi[2 * c]
            mi = fi[2 * c + 1]
            acc += np.float64(rr * rr + ri * ri) * np.float64(w1[c]) + np.float64(mr * mr + mi * mi) * np.float64(w2[c])
            gg = gm[c]
            rr = (rr * gg) * a_re
            ri = (ri * gg) * a_re
            mr = (mr * gg) * a_im
            mi = (mi * gg) * a_im
            p_ = pv[c] if use_pinv else np.float32(1.0)
            gr[2 * c] = gr[2 * c] * p_ + mr + bb * rr
            gr[2 * c + 1] = gr[2 * c + 1] * p_ + mi + bb * ri
            fr[2 * c] = rr
            fr[2 * c + 1] = ri
        rows[r] = acc
    return 0


def _nb_add(a, b, r0, r1):
    n = a.shape[1]
    for r in range(r0, r1):
        ar = a[r]
        br = b[r]
        for j in range(n):
            ar[j] += br[j]
    return 0


_NB_FUNCS = {"exp": _nb_exp, "mul": _nb_mul, "mul_real": _nb_mul_real, "expand": _nb_expand,
             "intensity": _nb_intensity, "residual_spectrum": _nb_residual_spectrum, "mask_loss": _nb_mask_loss,
             "conj_mean": _nb_conj_mean, "final": _nb_final, "regulariser": _nb_regulariser, "add": _nb_add}


def _kernels() -> dict[str, Any]:
    """The compiled kernels (numba, ``nogil``, disk-cached where possible), or {} without numba."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = B.compile_kernels(_NB_FUNCS, lambda name: {"error_model": "numpy"})
    return _KERNELS


def _executor(n: int):
    """A thread pool of *n* threads (one per size, kept), recreated after a fork (a child inherits no live threads)."""
    with _POOL_LOCK:
        if _POOL["pid"] != os.getpid():
            _POOL.clear()
            _POOL["pid"] = os.getpid()
        ex = _POOL.get(n)
        if ex is None:
            ex = _POOL[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="xspeckle-pwf")
        return ex


def _run(fn, rows: int, size: int, *args) -> None:
    """``fn(*args, r0, r1)`` over row blocks of ``[0, rows)`` on :func:`kernel_threads` threads."""
    nt = kernel_threads(size)
    if nt <= 1 or size < _SMALL or rows < 2:
        fn(*args, 0, rows)
        return
    nt = min(nt, rows)
    step = -(-rows // nt)
    ex = _executor(nt)
    futs = [ex.submit(fn, *args, r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]
    for f in futs:
        f.result()


def _f32(a):
    """(…, W) complex64 → (rows, 2W) float32 view; (…, W) float32 → (rows, W) view (no copy)."""
    if a.dtype == np.complex64:
        return a.reshape(-1, a.shape[-1]).view(np.float32)
    return a.reshape(-1, a.shape[-1])


# --------------------------------------------------------------------------- ops: numba and NumPy/CuPy twins
class NumbaOps:
    """The kernels on NumPy arrays (numba, float32, threaded over rows); FFTs by scipy.fft in place."""

    def __init__(self):
        self.k = _kernels()
        import scipy.fft as sfft

        self.sfft = sfft
        self.xp = np

    # -- FFTs (in place where the transform allows it)
    def fft2(self, a):
        return self.sfft.fft2(a, overwrite_x=True, workers=B.fft_workers(a.size))

    def ifft2(self, a):
        return self.sfft.ifft2(a, overwrite_x=True, workers=B.fft_workers(a.size))

    def rfft2(self, a):
        # two 1-D passes, the second in place (scipy's rfft2 makes one more copy of the half spectrum)
        w = B.fft_workers(a.size)
        s = self.sfft.rfft(a, axis=-1, workers=w)
        return self.sfft.fft(s, axis=-2, overwrite_x=True, workers=w)

    def irfft2(self, a, shape):
        # two 1-D passes, the first in place on the (consumed) spectrum: scipy's irfft2 copies its input
        w = B.fft_workers(a.size)
        a = self.sfft.ifft(a, axis=-2, overwrite_x=True, workers=w)
        return self.sfft.irfft(a, n=shape[-1], axis=-1, overwrite_x=True, workers=w)

    # -- element-wise
    def exp(self, psi, x, w):
        p, xv, wv = _f32(psi), _f32(x), _f32(w)
        _run(self.k["exp"], p.shape[0], p.size, p, xv, wv)

    def mul(self, a, q, conj=False):
        av = _f32(a)
        _run(self.k["mul"], av.shape[0], av.size, av, _f32(q), bool(conj))

    def mul_real(self, a, h):
        av = _f32(a)
        _run(self.k["mul_real"], av.shape[0], av.size, av, _f32(h))

    def expand(self, u, t, v):
        vv = _f32(v)
        _run(self.k["expand"], vv.shape[0], vv.size, _f32(u), _f32(t), vv, v.shape[1], v.shape[-2])

    def intensity(self, y, out):
        o = _f32(out)
        _run(self.k["intensity"], o.shape[0], o.size, _f32(y), o)

    def residual_spectrum(self, s, f, ys):
        sv = _f32(s)
        _run(self.k["residual_spectrum"], sv.shape[0], sv.size, sv, _f32(f), _f32(ys))

    def mask_loss(self, r, m):
        rv = _f32(r)
        rows = np.empty(rv.shape[0], np.float64)
        _run(self.k["mask_loss"], rv.shape[0], rv.size, rv, _f32(m), rows)
        return rows.reshape(r.shape[:-1]).sum(axis=-1)                         # (B, K)

    def conj_mean(self, v, t, g):
        gv = _f32(g)
        kk = v.shape[1]
        _run(self.k["conj_mean"], gv.shape[0], gv.size, _f32(v), _f32(t), gv, kk, v.shape[-2], np.float32(1.0 / kk))

    def scratch(self, model, name, shape, dtype):
        """A work buffer kept between calls (per thread, per model): large fresh NumPy arrays are
        mmap-ed and page-faulted on every call, which costs as much as the kernels themselves."""
        ws = getattr(_TLS, "ws", None)
        if ws is None:
            ws = _TLS.ws = weakref.WeakKeyDictionary()
        d = ws.setdefault(model, {})
        a = d.get(name)
        if a is None or a.shape != tuple(shape) or a.dtype != dtype:
            a = d[name] = np.empty(shape, dtype)
        return a

    def final(self, g, x, psi, cinv, bb, model):
        shp = psi.shape
        gre, gin, pre, pim = (self.scratch(model, n, shp, np.float32) for n in ("gre", "gin", "pre", "pim"))
        o = _f32(gre)
        _run(self.k["final"], o.shape[0], o.size, _f32(g), _f32(x), _f32(psi), np.float32(cinv), np.float32(bb),
             o, _f32(gin), _f32(pre), _f32(pim))
        return gre, gin, (pre, pim)

    def regularise(self, model, gin, parts, gam, pinv, wre, wim, a_re, a_im, bb, use_pinv):
        """F{g_im} (preconditioned + regulariser), a_re Γ² F{Re ψ} and the regulariser loss (B,).

        F{Re ψ} and F{Im ψ} are two real FFTs, as in the reference: one complex FFT of ψ split by Hermitian
        symmetry was measured no faster here (the mirrored reads cost what the saved transform did) and loses
        precision on F{Re ψ} where |Im ψ| ≫ |Re ψ| (thick samples: 50x the rounding error at −150 rad)."""
        fre, fim, gi = self.rfft2(parts[0]), self.rfft2(parts[1]), self.rfft2(gin)
        return gi, fre, self.regulariser(fre, fim, gi, gam, pinv, wre, wim, a_re, a_im, bb, use_pinv)

    def regulariser(self, fre, fim, gi, gam, pinv, wre, wim, a_re, a_im, bb, use_pinv):
        fv = _f32(fre)
        rows = np.empty(fv.shape[0], np.float64)
        _run(self.k["regulariser"], fv.shape[0], fv.size, fv, _f32(fim), _f32(gi), _f32(gam), _f32(pinv), _f32(wre),
             _f32(wim), np.float32(a_re), np.float32(a_im), np.float32(bb), bool(use_pinv), rows)
        return rows.reshape(fre.shape[:-2] + (-1,)).sum(axis=(-2, -1))      # (B,)

    def add(self, a, b):
        av = _f32(a)
        _run(self.k["add"], av.shape[0], av.size, av, _f32(b))

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)


class XpOps:
    """NumPy/CuPy twin of :class:`NumbaOps`: the same steps as in-place ufuncs (``out=``), FFTs via
    :mod:`xspeckle.backend` (cuFFT, plan-cached, on CuPy)."""

    def __init__(self, xp):
        self.xp = xp

    def fft2(self, a):
        return B.fft2(a, overwrite_x=True)

    def ifft2(self, a):
        return B.ifft2(a, overwrite_x=True)

    def rfft2(self, a):
        return B.rfft2(a)

    def irfft2(self, a, shape):
        return B.irfft2(a, s=shape[-2:])

    def exp(self, psi, x, w):
        self.xp.exp(psi, out=x)
        w[...] = x

    def mul(self, a, q, conj=False):
        if conj:
            a *= self.xp.conj(q)
        else:
            a *= q

    def mul_real(self, a, h):
        a *= h

    def expand(self, u, t, v):
        self.xp.multiply(u, t, out=v)

    def intensity(self, y, out):
        xp = self.xp
        xp.multiply(y.real, y.real, out=out)
        out += y.imag * y.imag

    def residual_spectrum(self, s, f, ys):
        s *= f
        s -= ys

    def mask_loss(self, r, m):
        r *= m
        loss = (r * r).sum(axis=(-2, -1), dtype=np.float64)                   # (B, K)
        r *= m
        return B.asnumpy(loss)

    def conj_mean(self, v, t, g):
        v *= self.xp.conj(t)
        self.xp.mean(v, axis=1, keepdims=True, out=g)

    def scratch(self, model, name, shape, dtype):
        """A fresh array (CuPy's memory pool already reuses device memory)."""
        return self.xp.empty(shape, dtype)

    def final(self, g, x, psi, cinv, bb, model=None):
        xp = self.xp
        g *= xp.conj(x)
        g *= np.float32(cinv)
        gre = xp.ascontiguousarray(g.real)
        gin = xp.ascontiguousarray(g.imag)
        if bb:
            gin += np.float32(bb) * gre
        return gre, gin, (xp.ascontiguousarray(psi.real), xp.ascontiguousarray(psi.imag))

    def regularise(self, model, gin, parts, gam, pinv, wre, wim, a_re, a_im, bb, use_pinv):
        """F{g_im} (preconditioned + regulariser), a_re Γ² F{Re ψ} and the regulariser loss (B,)."""
        fre = self.rfft2(parts[0])
        fim = self.rfft2(parts[1])
        gi = self.rfft2(gin)
        return gi, fre, self.regulariser(fre, fim, gi, gam, pinv, wre, wim, a_re, a_im, bb, use_pinv)

    def regulariser(self, fre, fim, gi, gam, pinv, wre, wim, a_re, a_im, bb, use_pinv):
        pw_re = fre.real * fre.real + fre.imag * fre.imag
        pw_im = fim.real * fim.real + fim.imag * fim.imag
        loss = (pw_re * wre).sum(axis=(-3, -2, -1), dtype=np.float64) + \
            (pw_im * wim).sum(axis=(-3, -2, -1), dtype=np.float64)
        fre *= gam
        fre *= np.float32(a_re)
        fim *= gam
        fim *= np.float32(a_im)
        if use_pinv:
            gi *= pinv
        gi += fim
        if bb:
            gi += np.float32(bb) * fre
        return B.asnumpy(loss)

    def add(self, a, b):
        a += b

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype)


def fused_available(xp) -> bool:
    """True when :meth:`PWFModel.gradient` takes the fused driver for arrays of module *xp*."""
    return bool(USE_FUSED)


def ops_for(xp):
    """The kernel set for *xp*: numba on NumPy (when importable and ``XSPECKLE_NUMBA`` is not 0), else the twin."""
    if xp is np and _USE_NUMBA and _kernels():
        return NumbaOps()
    return XpOps(xp)


# --------------------------------------------------------------------------- driver
def fused_gradient(model, psi, yspec, *, precondition: bool = True, ops=None):
    """Loss and preconditioned Wirtinger gradient of *model* at ψ, fused (same contract as
    :meth:`xspeckle.retrieve.pwf.PWFModel.gradient`).

    Parameters
    ----------
    model : PWFModel
    psi : complex64 ``(B, 1, Hr, Wr)``
    yspec : complex64 ``(B, K, Hr, Wr//2+1)``, F{y_B} from :meth:`PWFModel.prepare`
    precondition : bool
        Apply P⁻¹ (Alg. S2) and report the preconditioned objective (see PWFModel.gradient).
    ops : NumbaOps or XpOps, optional
        Kernel set; default :func:`ops_for` the arrays' module.

    Returns
    -------
    g_re, g_im : float32 ``(B, 1, Hr, Wr)``
    loss : float64 ndarray ``(B,)`` (host)
    x : complex64 ``(B, 1, Hr, Wr)``, e^ψ
    """
    xp = B.get_xp(psi)
    ops = ops if ops is not None else ops_for(xp)
    psi = xp.ascontiguousarray(psi, dtype=np.complex64)
    yspec = xp.ascontiguousarray(yspec, dtype=np.complex64)
    shape = model.shape
    nb, kk = psi.shape[0], model.K
    q1 = model.q1
    q2 = model.q2
    t = model.t                                                 # (K, Hr, Wr)
    # ---- forward model (pwf.md §1): x = e^ψ, u1 = P_L1{x}, Y = P_L2{t·u1}
    x = ops.empty(psi.shape, np.complex64)                     # returned: always a fresh array
    w = ops.scratch(model, "w", psi.shape, np.complex64)
    ops.exp(psi, x, w)
    w = ops.fft2(w)
    ops.mul(w, q1)
    w = ops.ifft2(w)                                            # u1 (B,1)
    if kk == 1:
        ops.mul(w, t)
        y = w
    else:
        y = ops.scratch(model, "v", (nb, kk) + shape, np.complex64)
        ops.expand(w, t, y)
    y = ops.fft2(y)
    ops.mul(y, q2)
    y = ops.ifft2(y)                                            # Y (B,K)
    # ---- data term (pwf.md §2): r = m·(IPSF⊛|Y|² − y_B), h = IPSF^T⊛(m² r)
    inten = ops.scratch(model, "inten", y.shape, np.float32)
    ops.intensity(y, inten)
    s = ops.rfft2(inten)
    del inten
    ops.residual_spectrum(s, model.iotf_r, yspec)              # F{IPSF⊛|Y|² − y_B}
    r = ops.irfft2(s, shape)
    loss_bk = ops.mask_loss(r, model.m)                        # Σ (m r)² per (b, k); r <- m² r
    loss_d = 0.5 * np.asarray(loss_bk, dtype=np.float64).mean(axis=1)      # (B,)
    s = ops.rfft2(r)
    del r
    ops.mul_real(s, model.iotf_r)
    h = ops.irfft2(s, shape)                                    # IPSF^T ⊛ (m² r)
    del s
    ops.mul_real(y, h)                                          # ∂D/∂Y* = Y·h
    del h
    # ---- adjoint: g = conj(x)·P_{-L1}{mean_k conj(t)·P_{-L2}{Y h}} / c
    y = ops.fft2(y)
    ops.mul(y, q2, conj=True)
    y = ops.ifft2(y)
    if kk == 1:
        ops.mul(y, t, conj=True)
        g = y
    else:
        g = w                                                   # u1 is no longer needed
        ops.conj_mean(y, t, g)
    del y
    g = ops.fft2(g)
    ops.mul(g, q1, conj=True)
    g = ops.ifft2(g)
    bb = 0.0 if model.delta_over_beta is None else 1.0 / model.delta_over_beta
    gre, gin, parts = ops.final(g, x, psi, 1.0 / model.c, bb, model)
    del g, w
    # ---- regulariser (pwf.md §2) and preconditioner (Alg. S2)
    pinv = model.pinv_sm_r if model.delta_over_beta is not None else model.pinv_r
    wim = model.regw_im if precondition else model.regw_im0
    gi, fre, loss_r = ops.regularise(model, gin, parts, model.gamma2_r, pinv, model.regw_re, wim, model.a_re,
                                     model.a_im, bb, precondition)
    del parts, gin
    g_im = ops.irfft2(gi, shape)
    if model.delta_over_beta is not None:
        g_re = g_im * np.float32(bb)
    else:
        g_re = ops.irfft2(fre, shape)
        ops.add(g_re, gre)
    loss = loss_d / model.c + np.asarray(loss_r, dtype=np.float64)
    return g_re, g_im, np.asarray(loss, dtype=np.float64), x


def _numba_ok(*arrays) -> bool:
    return (_USE_NUMBA and all(type(a) is np.ndarray and a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)
            and bool(_kernels()))
