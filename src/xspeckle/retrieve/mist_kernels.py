"""MIST's CPU fast path: fused numba kernels of the phase-object model, with their NumPy twins.

The phase-object model (Pavlov et al., J. Opt. 22, 125604 (2020), Eq. 6–7; the paper's model and
MIST's default) on NumPy arrays: three fused kernels (columns, normal-matrix inverse, solve), compiled
lazily with numba, each run over row chunks by a thread pool (``nogil``; as many threads as
``backend.fft_workers()``, which the pipeline caps per worker process).  They compute exactly what
:class:`xspeckle.retrieve.pixel_lsq.PixelLSQ` computes for the columns [I_R, −∇²I_R] (same stencil,
same equilibrated Tikhonov term, same residual identity), with every per-pixel sum in float64, in one
pass over the data instead of ~60 NumPy passes.

NumPy twins beside them: :func:`laplacian_px` (the stencil of ``_nb_columns``) and
:meth:`FastPhaseObject._solve_numpy` (``PixelLSQ`` on the stored columns), used on CuPy arrays, where
numba is missing, and with ``XSPECKLE_NUMBA=0`` (or ``mist_kernels._USE_NUMBA = False``).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from xspeckle import backend as B
from xspeckle.retrieve.mist_common import finite
from xspeckle.retrieve.pixel_lsq import PixelLSQ, map_rows, thread_chunks

__all__ = ["FastPhaseObject", "fast_available", "laplacian_px"]

_USE_NUMBA = os.environ.get("XSPECKLE_NUMBA", "1").strip().lower() not in ("0", "false", "no", "off")
_KERNELS: dict[str, Any] | None = None  # compiled kernels, {} when numba is unavailable


def _nb_columns(ref, col, y0, y1, acc0, acc1):
    """col[:, y0:y1] = −∇²_px I_R (5-point stencil with reflected borders, in the operation order of
    :func:`laplacian_px`, float32); adds Σ_n I_R² and Σ_n col² per column x to acc0/acc1 (float64)."""
    P, H, W = ref.shape
    m4 = np.float32(-4.0)
    for n in range(P):
        for y in range(y0, y1):
            yu = y - 1 if y > 0 else 0
            yd = y + 1 if y < H - 1 else H - 1
            a, u, d, o = ref[n, y], ref[n, yu], ref[n, yd], col[n, y]
            # x = 0 and x = W − 1 reflect (a[−1] = a[0], a[W] = a[W − 1]); W ≥ 4 is checked by the caller
            o[0] = -((((m4 * a[0] + u[0]) + d[0]) + a[0]) + a[1])
            for x in range(1, W - 1):
                o[x] = -((((m4 * a[x] + u[x]) + d[x]) + a[x - 1]) + a[x + 1])
            o[W - 1] = -((((m4 * a[W - 1] + u[W - 1]) + d[W - 1]) + a[W - 2]) + a[W - 1])
            for x in range(W):
                v = np.float64(a[x])
                c = np.float64(o[x])
                acc0[x] += v * v
                acc1[x] += c * c
    return 0


def _nb_inverse(ref, col, inv, y0, y1, s0, s1, alpha_eq, tiny):
    """Per-pixel inverse of the equilibrated, regularised 2×2 normal matrix of [I_R, col]
    (Pavlov 2020 Eq. 7 by least squares over the N positions; sums in float64), stored packed
    (00, 01, 11) and scaled back by 1/(s_i s_j), as :class:`PixelLSQ`."""
    P, H, W = ref.shape
    m00 = np.empty(W)
    m01 = np.empty(W)
    m11 = np.empty(W)
    w00 = 1.0 / (s0 * s0)
    w01 = 1.0 / (s0 * s1)
    w11 = 1.0 / (s1 * s1)
    for y in range(y0, y1):
        m00[:] = 0.0
        m01[:] = 0.0
        m11[:] = 0.0
        for n in range(P):
            a, c = ref[n, y], col[n, y]
            for x in range(W):
                av = np.float64(a[x])
                cv = np.float64(c[x])
                m00[x] += av * av
                m01[x] += av * cv
                m11[x] += cv * cv
        for x in range(W):
            e00 = m00[x] * w00 + alpha_eq
            e11 = m11[x] * w11 + alpha_eq
            e01 = m01[x] * w01
            det = e00 * e11 - e01 * e01
            if not abs(det) > tiny:
                det = tiny
            det = 1.0 / det
            inv[0, y, x] = e11 * det * w00
            inv[1, y, x] = -e01 * det * w01
            inv[2, y, x] = e00 * det * w11
    return 0


def _nb_solve(ref, col, smp, inv, lam0, lam1, gscale, cscale, g_out, c_out, res_out, y0, y1, want_res):
    """Per pixel: b_n = I_R,n − I_S,n (Pavlov 2020 Eq. 6), x = M⁻¹ Aᵀb, g_out = x₀·gscale,
    c_out = x₁·cscale and (want_res) the residual sqrt((‖b‖² − x·Aᵀb − Σλ_j x_j²)/Σ I_S²);
    non-finite results are written as 0."""
    P, H, W = ref.shape
    r0 = np.empty(W)
    r1 = np.empty(W)
    bb = np.empty(W)
    ss = np.empty(W)
    for y in range(y0, y1):
        r0[:] = 0.0
        r1[:] = 0.0
        if want_res:
            bb[:] = 0.0
            ss[:] = 0.0
        for n in range(P):
            a, c, s = ref[n, y], col[n, y], smp[n, y]
            if want_res:
                for x in range(W):
                    b = np.float64(a[x] - s[x])  # difference in float32, as the NumPy path
                    sv = np.float64(s[x])
                    r0[x] += np.float64(a[x]) * b
                    r1[x] += np.float64(c[x]) * b
                    bb[x] += b * b
                    ss[x] += sv * sv
            else:
                for x in range(W):
                    b = np.float64(a[x] - s[x])
                    r0[x] += np.float64(a[x]) * b
                    r1[x] += np.float64(c[x]) * b
        for x in range(W):
            i00 = np.float64(inv[0, y, x])
            i01 = np.float64(inv[1, y, x])
            i11 = np.float64(inv[2, y, x])
            x0 = i00 * r0[x] + i01 * r1[x]
            x1 = i01 * r0[x] + i11 * r1[x]
            g = np.float32(x0 * gscale)  # finiteness checked after the float32 rounding (overflow → inf)
            cc = np.float32(x1 * cscale)
            g_out[y, x] = g if np.isfinite(g) else np.float32(0.0)
            c_out[y, x] = cc if np.isfinite(cc) else np.float32(0.0)
            if want_res:
                # ‖b − Ax‖² = ‖b‖² − x·Aᵀb − Σ_j λ_j x_j² for the regularised solution (as PixelLSQ)
                ms = bb[x] - x0 * r0[x] - x1 * r1[x] - lam0 * (x0 * x0) - lam1 * (x1 * x1)
                r = np.float32(np.sqrt(max(ms, 0.0) / max(ss[x], 1e-30)))
                res_out[y, x] = r if np.isfinite(r) else np.float32(0.0)
    return 0


def _kernels() -> dict[str, Any]:
    """The compiled kernels (numba, ``nogil``, cached on disk where possible), or {} without numba."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = B.compile_kernels({"columns": _nb_columns, "inverse": _nb_inverse, "solve": _nb_solve})
    return _KERNELS


def fast_available(xp) -> bool:
    """True when the numba kernels serve arrays of module *xp* (NumPy, numba importable, not switched off)."""
    return _USE_NUMBA and xp is np and bool(_kernels())


def laplacian_px(a):
    """5-point Laplacian in px⁻² with reflected borders — the stencil of
    :func:`xspeckle.retrieve.derivatives.laplacian` (``pixel_size_m=1``), computed in place
    (one allocation instead of a padded copy and four temporaries; equal to round-off, tested)."""
    xp = B.get_xp(a)
    out = a * np.float32(-4)
    out[..., 1:, :] += a[..., :-1, :]  # upper neighbour
    out[..., :1, :] += a[..., :1, :]  # reflect: row −1 = row 0
    out[..., :-1, :] += a[..., 1:, :]  # lower neighbour
    out[..., -1:, :] += a[..., -1:, :]
    out[..., :, 1:] += a[..., :, :-1]
    out[..., :, :1] += a[..., :, :1]
    out[..., :, :-1] += a[..., :, 1:]
    out[..., :, -1:] += a[..., :, -1:]
    return xp.asarray(out, dtype=np.float32)


class FastPhaseObject:
    """Prepared phase-object solve (columns [I_R, −∇²I_R]) on NumPy arrays with the numba kernels.

    Same quantities as ``PixelLSQ([ref, −laplacian_px(ref)], alpha, ...)`` followed by the
    phase-object scaling: ``solve`` returns ∇²φ (m⁻²), D_eff (m) and the residual.  Picklable; in a
    process without numba it falls back to :class:`PixelLSQ` on the stored columns.
    """

    def __init__(self, ref, alpha_rel: float, block_rows: int | None):
        P, H, W = ref.shape
        self.ref = np.ascontiguousarray(ref, dtype=np.float32)
        self.p, self.h, self.w = P, H, W
        self.alpha_rel = float(alpha_rel)
        self.block_rows = block_rows
        self.col = np.empty_like(self.ref)
        k = _kernels()
        threads = B.fft_workers()
        chunks = thread_chunks(H, threads, block_rows)

        def columns(y0, y1):
            a0, a1 = np.zeros(W), np.zeros(W)
            k["columns"](self.ref, self.col, y0, y1, a0, a1)
            return a0.sum(), a1.sum()

        sums = map_rows(columns, chunks, threads)
        size = P * H * W
        s = np.array([math.sqrt(sum(v[0] for v in sums) / size), math.sqrt(sum(v[1] for v in sums) / size)])
        s[~(s > 0)] = 1.0
        self.scale = s
        self.alpha_eq = self.alpha_rel * P  # Tikhonov weight on the equilibrated system (mean diagonal P)
        # float32 storage when α bounds the conditioning (as PixelLSQ), else float64
        self.dtype = np.float32 if self.alpha_eq >= 1e-4 * P else np.float64
        self.inv = np.empty((3, H, W), dtype=self.dtype)
        tiny = float(np.finfo(self.dtype).tiny)
        map_rows(lambda y0, y1: k["inverse"](self.ref, self.col, self.inv, y0, y1, float(s[0]), float(s[1]),
                                             self.alpha_eq, tiny), chunks, threads)
        self._fallback = None

    def solve(self, sample, gscale: float, cscale: float, want_residual: bool = True):
        """(g·gscale, c·cscale, residual or None) as float32 (H, W) maps, finite."""
        smp = np.ascontiguousarray(sample, dtype=np.float32)
        k = _kernels() if _USE_NUMBA else {}
        if not k:
            return self._solve_numpy(smp, gscale, cscale, want_residual)
        H, W = self.h, self.w
        g = np.empty((H, W), np.float32)
        c = np.empty((H, W), np.float32)
        res = np.empty((H, W), np.float32) if want_residual else np.empty((1, 1), np.float32)  # (1, 1): unused
        lam0 = self.alpha_eq * self.scale[0] ** 2  # ‖b − Ax‖² = ‖b‖² − x·Aᵀb − Σ_j α s_j² x_j²
        lam1 = self.alpha_eq * self.scale[1] ** 2
        threads = B.fft_workers()
        map_rows(lambda y0, y1: k["solve"](self.ref, self.col, smp, self.inv, lam0, lam1, float(gscale), float(cscale),
                                           g, c, res, y0, y1, bool(want_residual)),
                 thread_chunks(H, threads, self.block_rows), threads)
        return g, c, (res if want_residual else None)

    def _solve_numpy(self, smp, gscale, cscale, want_residual):
        if self._fallback is None:
            self._fallback = PixelLSQ([self.ref, self.col], self.alpha_rel, self.block_rows)
        lsq = self._fallback
        g = np.empty((self.h, self.w), np.float32)
        c = np.empty_like(g)
        res = np.empty_like(g) if want_residual else None
        for y0 in range(0, self.h, lsq.rows):
            y1 = min(self.h, y0 + lsq.rows)
            b = self.ref[:, y0:y1] - smp[:, y0:y1]
            if want_residual:
                x, res[y0:y1] = lsq.solve_block(b, y0, y1, smp[:, y0:y1])
            else:
                x = lsq.solve_block(b, y0, y1)
            g[y0:y1] = x[0]
            c[y0:y1] = x[1]
        g = finite(g * np.float32(gscale))
        c = finite(c * np.float32(cscale))
        return g, c, (finite(res) if want_residual else None)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_fallback"] = None
        return d
