"""Per-pixel linear least squares over the diffuser positions — the solver shared by MIST and LCS.

Both methods fit, independently at every pixel, a small linear model to the P (or K) diffuser
positions, ``min_x Σ_n (b_n − Σ_j A[j, n] x_j)² + Σ_j λ_j x_j²``, whose columns ``A`` depend on the
reference only: the normal-matrix inverses are computed once per reference and each projection is
then one product ``x = M⁻¹ Aᵀb`` (methods.md §1.5, §1.8 "closed normal equations").  In both the
Tikhonov weight is dimensionless, ``λ_j = α·mean over pixels of (AᵀA)_jj`` (one scale per unknown,
independent of the intensity normalisation; methods.md §1.5).  Two storage forms:

* :class:`PixelLSQ` — MIST (Pavlov 2020 Eq. 6–7 by least squares; Alloo 2023; directional MIST):
  column-equilibrated normal matrices, inverse stored packed (upper triangle), float32 where α bounds
  the conditioning and float64 otherwise, processed in row blocks of bounded memory.  The numba fast
  path of MIST's phase-object model (``retrieve/mist_kernels.py``) is its fused twin for q = 2.
* :func:`normal_inverse` / :func:`solve_normal` — LCS (Quénot 2021; mbipy ``Lcs``): the full q×q
  inverse per pixel (float32, accumulated and inverted in float64), with numba kernels on NumPy arrays
  and a NumPy/CuPy twin (``numba=False``, used on CuPy and with ``XSPECKLE_NUMBA=0``).

The thread helpers :func:`thread_chunks` and :func:`map_rows` run a kernel over row chunks on a thread
pool (numba kernels release the GIL).  Everything works on NumPy and CuPy arrays.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import ParameterError

__all__ = ["PixelLSQ", "normal_inverse", "solve_normal", "rows_per_block", "thread_chunks", "map_rows"]

#: target size of one float64 work block (bytes) for the row-block loops
_BLOCK_BYTES = 64 * 2**20
_KERNELS: dict[str, Any] | None = None  # compiled kernels, {} when numba is unavailable


def rows_per_block(n_planes: int, w: int, block_rows: int | None) -> int:
    """Rows per work block: *block_rows* when given, else about ``_BLOCK_BYTES`` of float64 planes."""
    if block_rows is not None:
        if int(block_rows) < 1:
            raise ParameterError(f"block_rows must be >= 1, got {block_rows}")
        return int(block_rows)
    return max(8, _BLOCK_BYTES // max(1, 8 * n_planes * w))


def thread_chunks(h: int, threads: int, block_rows: int | None):
    """Row ranges for the thread pool: ``block_rows`` rows each, or ~4 chunks per thread."""
    step = int(block_rows) if block_rows else max(1, -(-h // (4 * threads)))
    return [(y0, min(h, y0 + step)) for y0 in range(0, h, step)]


def map_rows(fn, chunks, threads: int):
    """Run ``fn(y0, y1)`` over *chunks* on *threads* threads; returns the results in order."""
    if threads <= 1 or len(chunks) == 1:
        return [fn(y0, y1) for y0, y1 in chunks]
    with ThreadPoolExecutor(max_workers=min(threads, len(chunks))) as ex:
        return list(ex.map(lambda c: fn(*c), chunks))


# --------------------------------------------------------------------------- MIST form
class PixelLSQ:
    """Per-pixel linear least squares ``min_x Σ_n (b_n − Σ_j A[j, n] x_j)² + α Σ_j (s_j x_j)²``.

    The columns ``A`` (q, P, H, W) float32 depend on the reference only, so the
    normal-matrix inverses are computed once (sums accumulated in float64, inverse in
    float64: methods.md §1.8 "closed normal equations"; performance.md: float32 cancels
    the determinant at N = 2) and stored packed (upper triangle).  ``s_j`` is the
    global RMS of column j, so α is dimensionless (relative to the equilibrated normal
    matrix whose mean diagonal is P).  The stored inverse and the per-projection
    right-hand sides are float32 when the regularisation bounds the condition number
    (α ≥ 1e-5·P), float64 otherwise.
    """

    def __init__(self, columns, alpha_rel: float, block_rows: int | None, alpha_abs_eq: float | None = None):
        # columns: sequence of q float32 arrays (P, H, W) (the reference itself may be one: no copy)
        xp = B.get_xp(columns[0])
        self.A = list(columns)
        q = len(self.A)
        p, h, w = self.A[0].shape
        self.q, self.p, self.h, self.w = q, p, h, w
        self.rows = rows_per_block(q * q + q, w, block_rows)
        # column scales s_j = RMS over positions and pixels
        s = np.array([math.sqrt(float(xp.vdot(c.ravel(), c.ravel())) / c.size) for c in self.A])
        s[~(s > 0)] = 1.0
        self.scale = s
        # Tikhonov weight on the equilibrated system (mean diagonal = P)
        alpha_eq = float(alpha_abs_eq) if alpha_abs_eq is not None else float(alpha_rel) * p
        self.alpha_eq = alpha_eq
        # float32 is enough when α bounds the condition number (sums of P ≤ ~100 float32 products
        # carry ~1e-6 relative error, far below α); otherwise float64 throughout
        self.dtype = np.float32 if alpha_eq >= 1e-4 * p else np.float64
        acc_t = self.dtype
        self.iu = [(i, j) for i in range(q) for j in range(i, q)]
        inv = xp.empty((len(self.iu), h, w), dtype=self.dtype)
        for y0 in range(0, h, self.rows):
            y1 = min(h, y0 + self.rows)
            m = {}
            tmp = xp.empty((y1 - y0, w), dtype=np.float32)
            for i, j in self.iu:
                acc = xp.zeros((y1 - y0, w), dtype=acc_t)
                ai, aj = self.A[i], self.A[j]
                for n in range(p):
                    xp.multiply(ai[n, y0:y1], aj[n, y0:y1], out=tmp)
                    acc += tmp
                if q > 2:
                    acc = acc.astype(np.float64, copy=False)  # batched inverse in float64
                acc *= acc.dtype.type(1.0 / (s[i] * s[j]))
                if i == j:
                    acc += acc.dtype.type(alpha_eq)
                m[i, j] = acc
            if q == 2:
                # closed 2×2 inverse (Pavlov 2020 Eq. 7 generalised to N ≥ 2 by least squares)
                # (float32 only when α bounds the conditioning, see above; else float64)
                det = m[0, 0] * m[1, 1] - m[0, 1] * m[0, 1]
                tiny = np.finfo(det.dtype).tiny
                det = xp.where(xp.abs(det) > tiny, det, tiny)
                det = 1 / det
                mi = {(0, 0): m[1, 1] * det, (1, 1): m[0, 0] * det, (0, 1): -m[0, 1] * det}
            else:
                full = xp.empty((y1 - y0, w, q, q), dtype=np.float64)
                for (i, j), v in m.items():
                    full[..., i, j] = v
                    full[..., j, i] = v
                if alpha_eq <= 0:
                    full += xp.eye(q) * (1e-12 * p)  # keep exactly singular pixels finite
                fi = xp.linalg.inv(full)
                mi = {(i, j): fi[..., i, j] for i, j in self.iu}
            for k, (i, j) in enumerate(self.iu):
                inv[k, y0:y1] = mi[i, j] * mi[i, j].dtype.type(1.0 / (s[i] * s[j]))
        self.inv = inv

    @property
    def xp(self):
        """Array module of the stored columns (not an attribute: retrievers must pickle)."""
        return B.get_xp(self.A[0])

    def solve_block(self, b, y0: int, y1: int, sample=None):
        """Solve rows ``y0:y1`` given ``b`` (P, y1−y0, W).

        Returns ``x`` (q, rows, W), and with *sample* (P, rows, W) also the residual map
        ``sqrt(Σ_n (b_n − A_n·x)² / Σ_n sample_n²)``, from the identity
        ``‖b − Ax‖² = ‖b‖² − x·Aᵀb − α Σ_j (s_j x_j)²`` of the regularised solution
        (no second pass over the stack).
        """
        xp = self.xp
        q = self.q
        dt = self.dtype
        r = xp.zeros((q, y1 - y0, self.w), dtype=dt)
        bb = xp.zeros((y1 - y0, self.w), dtype=dt) if sample is not None else None
        ss = xp.zeros((y1 - y0, self.w), dtype=dt) if sample is not None else None
        tmp = xp.empty((y1 - y0, self.w), dtype=np.float32)
        for n in range(self.p):
            bn = b[n]
            for j in range(q):
                xp.multiply(self.A[j][n, y0:y1], bn, out=tmp)
                r[j] += tmp
            if sample is not None:
                xp.multiply(bn, bn, out=tmp)
                bb += tmp
                xp.multiply(sample[n], sample[n], out=tmp)
                ss += tmp
        x = xp.zeros_like(r)
        t2 = xp.empty_like(r[0])
        for k, (i, j) in enumerate(self.iu):
            mij = self.inv[k, y0:y1]
            xp.multiply(mij, r[j], out=t2)
            x[i] += t2
            if i != j:
                xp.multiply(mij, r[i], out=t2)
                x[j] += t2
        if sample is None:
            return x
        ms = bb.astype(np.float64)
        for j in range(q):
            ms -= x[j] * r[j]
            if self.alpha_eq > 0:
                ms -= (self.alpha_eq * self.scale[j] ** 2) * (x[j] * x[j])
        res = xp.sqrt(xp.maximum(ms, 0) / xp.maximum(ss, 1e-30)).astype(np.float32)
        return x, res

    def misfit_sq(self, b, x, y0: int, y1: int):
        """Σ_n (b_n − A_n·x)² for the block, by a direct second pass (reference for tests)."""
        xp = self.xp
        out = xp.zeros((y1 - y0, self.w), dtype=np.float64)
        for n in range(self.p):
            res = b[n].astype(np.float64)
            for j in range(self.q):
                res -= self.A[j][n, y0:y1] * x[j]
            out += res * res
        return out


# --------------------------------------------------------------------------- LCS form
def _nb_diag_sums(A, y0, y1):
    """Σ over rows y0:y1, positions and x of A[j]² (float64), per column j."""
    q, K, H, W = A.shape
    out = np.zeros(q)
    for j in range(q):
        acc = 0.0
        for n in range(K):
            for y in range(y0, y1):
                r = A[j, n, y]
                for x in range(W):
                    v = np.float64(r[x])
                    acc += v * v
        out[j] = acc
    return out


def _nb_inverse(A, lam, out, y0, y1):
    """out[:, :, y, x] = (AᵀA + diag(lam))⁻¹ per pixel: sums over positions in float64, Gauss–Jordan
    inverse of the symmetric q×q matrix in float64 (a singular pixel gets zeros, as the 3×3 path)."""
    q, K, H, W = A.shape
    acc = np.empty((q, q, W))
    m = np.empty((q, 2 * q))
    for y in range(y0, y1):
        acc[:] = 0.0
        for n in range(K):
            for j in range(q):
                aj = A[j, n, y]
                for k in range(j, q):
                    ak = A[k, n, y]
                    for x in range(W):
                        acc[j, k, x] += np.float64(aj[x]) * np.float64(ak[x])
        for x in range(W):
            for j in range(q):
                for k in range(q):
                    m[j, k] = acc[j, k, x] if k >= j else acc[k, j, x]
                    m[j, q + k] = 1.0 if j == k else 0.0
                m[j, j] += lam[j]
            ok = True
            for c in range(q):
                piv = c
                for r in range(c + 1, q):
                    if abs(m[r, c]) > abs(m[piv, c]):
                        piv = r
                if not abs(m[piv, c]) > 1e-300:
                    ok = False
                    break
                if piv != c:
                    for k in range(2 * q):
                        tmp = m[c, k]
                        m[c, k] = m[piv, k]
                        m[piv, k] = tmp
                d = 1.0 / m[c, c]
                for k in range(2 * q):
                    m[c, k] *= d
                for r in range(q):
                    if r != c:
                        f = m[r, c]
                        if f != 0.0:
                            for k in range(2 * q):
                                m[r, k] -= f * m[c, k]
            for j in range(q):
                for k in range(q):
                    out[j, k, y, x] = np.float32(m[j, q + k]) if ok else np.float32(0.0)
    return 0


def _nb_solve(A, Minv, lam, smp, x_out, res_out, y0, y1):
    """Per pixel: Aᵀb (float64 sums over positions), x = M⁻¹Aᵀb, RMS misfit sqrt((bᵀb − xᵀAᵀb − Σλ_j x_j²)/K)
    (the identity of :func:`solve_normal`); the numba twin of its NumPy code (row by row, x innermost)."""
    q, K, H, W = A.shape
    atb = np.empty((q, W))
    bb = np.empty(W)
    r2 = np.empty(W)
    for y in range(y0, y1):
        atb[:] = 0.0
        bb[:] = 0.0
        for n in range(K):
            srow = smp[n, y]
            for x in range(W):
                v = np.float64(srow[x])
                bb[x] += v * v
            for j in range(q):
                arow = A[j, n, y]
                for x in range(W):
                    atb[j, x] += np.float64(arow[x]) * np.float64(srow[x])
        r2[:] = bb
        for j in range(q):
            lj = lam[j]
            for x in range(W):
                v = 0.0
                for k in range(q):
                    v += np.float64(Minv[j, k, y, x]) * atb[k, x]
                x_out[j, y, x] = np.float32(v)
                r2[x] -= v * atb[j, x] + lj * v * v
        for x in range(W):
            res_out[y, x] = np.float32(np.sqrt(max(r2[x], 0.0) / K))
    return 0


def _kernels() -> dict[str, Any]:
    """The compiled kernels of the LCS form (numba, ``nogil``, disk-cached where possible), or {} without numba."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = B.compile_kernels({"diag": _nb_diag_sums, "inverse": _nb_inverse, "solve": _nb_solve})
    return _KERNELS


def _fast(xp, numba: bool) -> bool:
    return numba and xp is np and bool(_kernels())


def sym3_adjugate(m):
    """Adjugate and determinant of batched symmetric 3×3 matrices given by their 6 entries (00, 01, 02, 11, 12, 22).

    Returns ``((c00, c01, c02, c11, c12, c22), det)``: the inverse is the adjugate / det (Cramer's rule).
    """
    a00, a01, a02, a11, a12, a22 = m
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    return (c00, c01, c02, c11, c12, c22), a00 * c00 + a01 * c01 + a02 * c02


def normal_inverse(A, alpha: float, *, numba: bool = True, chunk_rows: int = 256):
    """``(AᵀA + Λ)⁻¹`` per pixel, ``(q, q, H, W)`` float32, accumulated and inverted in float64.

    Parameters
    ----------
    A : array (q, K, H, W) float32
        Design-matrix columns per pixel.
    alpha : float
        Dimensionless Tikhonov weight: ``Λ = α·diag(mean over pixels of diag(AᵀA))``.
    numba : bool
        Use the numba kernels on NumPy arrays when numba is importable (else the NumPy/CuPy twin).

    Returns
    -------
    (Minv (q, q, H, W) float32, lam (q,) float64)
    """
    xp = B.get_xp(A)
    q, K, H, W = A.shape
    if _fast(xp, numba) and A.flags.c_contiguous:
        k = _kernels()
        threads = B.fft_workers()
        chunks = thread_chunks(H, threads, None)
        sums = np.sum(map_rows(lambda y0, y1: k["diag"](A, y0, y1), chunks, threads), axis=0)
        lam = alpha * np.maximum(sums / (H * W), 1e-30)  # Λ = α·diag(mean diag(AᵀA)), as below
        out = np.empty((q, q, H, W), np.float32)
        map_rows(lambda y0, y1: k["inverse"](A, np.asarray(lam, np.float64), out, y0, y1), chunks, threads)
        return out, lam
    return _normal_inverse_xp(A, alpha, chunk_rows)


def _normal_inverse_xp(A, alpha: float, chunk_rows: int = 256):
    """NumPy/CuPy twin of the numba set-up."""
    xp = B.get_xp(A)
    q, K, H, W = A.shape
    Af = A.reshape(q, K, H * W)
    if q == 3:
        # closed-form symmetric 3×3 inverse (adjugate), float64: much faster than batched LAPACK
        e = {(j, k): xp.einsum("np,np->p", Af[j], Af[k], dtype=np.float64)
             for j in range(3) for k in range(j, 3)}
        lam = alpha * np.maximum([float(xp.mean(e[(j, j)])) for j in range(3)], 1e-30)
        (c00, c01, c02, c11, c12, c22), det = sym3_adjugate(
            (e[(0, 0)] + lam[0], e[(0, 1)], e[(0, 2)], e[(1, 1)] + lam[1], e[(1, 2)], e[(2, 2)] + lam[2]))
        inv = xp.where(xp.abs(det) > 1e-300, 1.0 / xp.where(xp.abs(det) > 1e-300, det, 1.0), 0.0)
        out = xp.stack([xp.stack([c00, c01, c02]), xp.stack([c01, c11, c12]), xp.stack([c02, c12, c22])])
        out = (out * inv).astype(np.float32).reshape(3, 3, H, W)
        return out, lam
    diag_mean = np.zeros(q)
    for j in range(q):
        diag_mean[j] = float(xp.mean(xp.einsum("np,np->p", Af[j], Af[j], dtype=np.float64)))
    lam = alpha * np.maximum(diag_mean, 1e-30)  # Λ = α·diag(mean diag(AᵀA)), one scale per unknown
    out = xp.empty((q, q, H, W), dtype=np.float32)
    for y0 in range(0, H, chunk_rows):
        y1 = min(H, y0 + chunk_rows)
        a = A[:, :, y0:y1].astype(np.float64)
        M = xp.einsum("jnhw,knhw->hwjk", a, a)
        M[..., xp.arange(q), xp.arange(q)] += xp.asarray(lam)
        Minv = xp.linalg.inv(M)
        out[:, :, y0:y1] = xp.moveaxis(Minv, (2, 3), (0, 1)).astype(np.float32)
    return out, lam


def solve_normal(A, Minv, lam, b, *, numba: bool = True):
    """Return ``x (q, H, W)`` and the per-pixel RMS misfit ``sqrt(‖b − Ax‖²/K)`` ``(H, W)`` for ``b (K, H, W)``.

    ``x = M⁻¹(Aᵀb)`` with ``Minv, lam`` from :func:`normal_inverse`; the misfit follows from the normal
    equations without forming ``Ax``: ``‖b − Ax‖² = bᵀb − xᵀAᵀb − xᵀΛx`` (exact, since
    ``(AᵀA + Λ)x = Aᵀb``).  *numba* as :func:`normal_inverse`.
    """
    xp = B.get_xp(b)
    q, K, H, W = A.shape
    if _fast(xp, numba) and A.flags.c_contiguous and Minv.flags.c_contiguous:
        smp = np.ascontiguousarray(b, dtype=np.float32)
        x = np.empty((q, H, W), np.float32)
        res = np.empty((H, W), np.float32)
        kern = _kernels()["solve"]
        lam64 = np.asarray(lam, np.float64)
        threads = B.fft_workers(K * H * W)
        map_rows(lambda y0, y1: kern(A, Minv, lam64, smp, x, res, y0, y1), thread_chunks(H, threads, None), threads)
        return x, res
    bf = b.reshape(K, H * W)
    # sums in float64 (the misfit identity cancels: bᵀb ≈ xᵀAᵀb), as the numba kernel
    atb = xp.einsum("jnp,np->jp", A.reshape(q, K, H * W), bf, dtype=np.float64).reshape(q, H, W)  # Aᵀb
    bb = xp.einsum("np,np->p", bf, bf, dtype=np.float64).reshape(H, W)
    x = []
    for j in range(q):
        acc = Minv[j, 0] * atb[0]
        for k in range(1, q):
            acc += Minv[j, k] * atb[k]
        x.append(acc)
    x = xp.stack(x)
    r2 = bb - xp.sum(x * atb, axis=0)
    for j in range(q):
        r2 -= float(lam[j]) * x[j] * x[j]
    return x.astype(np.float32), xp.sqrt(xp.maximum(r2, 0) / K).astype(np.float32)
