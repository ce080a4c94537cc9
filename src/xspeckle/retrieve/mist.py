"""MIST: Multimodal Intrinsic Speckle Tracking (phase, transmission and dark field).

Models (``model=`` of :class:`MISTRetriever`, and plain functions):

* ``"phase-object"`` (default) — Pavlov et al., J. Opt. 22, 125604 (2020)
  (arXiv:1911.06814), Eq. (4)/(6)/(7): for every diffuser position n

      I_R,n − I_S,n = (Δ/k) I_R,n ∇²φ − Δ D_eff ∇²I_R,n ,

  solved per pixel in the least-squares sense over the N ≥ 2 positions for ∇²φ and
  D_eff (closed 2×2 normal equations precomputed from the reference; float64, or float32
  where the Tikhonov α bounds the conditioning); φ from ∇²φ by the Tikhonov-regularised
  inverse Laplacian with mirror boundaries, computed as a DCT (text after Eq. 7;
  methods.md §1.8, §1.14).
* ``"attenuating"`` — Alloo et al., J. Med. Imaging 9, 031502 (2022) (methods.md
  §1.11): single-material attenuating object with slowly varying dark field,
  ``I_S,n/I_R,n = G1 + Δ D ∇²I_R,n/I_R,n``; the paper's pair-wise weighted
  determinant is the least-squares fit of this line (identity
  Σ_{i<j}(q_j − q_i)² = N Σ(q − q̄)²), so it costs O(N) not O(N²).  Gives the
  transmission I_ob by the single-material TIE filter (Paganin/Pavlov, methods.md §1.9)
  and ``D_eff = D/I_ob``.  Needs γ = δ/β.
* ``"rapid"`` — Alloo et al., Sci. Rep. 13, 5424 (2023) (methods.md §1.10): rapidly
  varying dark field, unknowns ``[∇²(φ/k − D), D, ∂_xD, ∂_yD]`` per pixel, Tikhonov
  α = std(A)/10⁴, low-/high-pass fusion of D with its gradient, then φ.
* ``"transport"`` — Pavlov 2020 Eq. (1)–(2) *without* approximation (5): the speckle
  transport term (Δ/k)∇I_R·∇φ is kept, unknowns ``[∇²φ, D_eff, u_x, u_y]`` with
  u = Δ∇φ/(k p) the speckle displacement in px (design.md); φ by Frankot–Chellappa from
  ∇φ.  For samples whose refraction moves the speckle by a sizeable fraction of a grain,
  where the phase-object model's Laplacian is swamped by the neglected term.  N ≥ 4.
* directional (:class:`DirectionalMISTRetriever`) — tensor extension of Pavlov 2020
  Eq. (9)–(10) (methods.md §1.12) with the design.md convention: the Fokker–Planck
  term is Δ(∂_xx(D_xx I) + ∂_yy(D_yy I) + 2∂_xy(D_xy I)); phase-object (default) or
  single-material attenuating (``model="attenuating"``, γ = δ/β; Pavlov et al. 2021,
  arXiv:2105.10693).

**Blur calibration** (our extension, opt-in with ``blur_calibration=True``): the models are
first order in ΔD (exp(ΔD∇²) ≈ 1 + ΔD∇²), so a blur σ = sqrt(2ΔD) approaching the speckle
size is underestimated (≈ 0.67× at σ ≈ 1.1 px on the mist-berry speckle).  At construction the
estimator is run on a central crop of the reference diffused by the exact Fokker–Planck
solution for a ladder of uniform D (Gaussian of covariance 2ΔD); the monotone curve
D_true ↦ median D_estimate is inverted per pixel (for the tensor: applied to its eigenvalues).
The default (``False``) gives the paper's first-order estimate, comparable with published maps.

Units are SI throughout (design.md): ∇² in m⁻², D_eff in m, so that
``Δ·D_eff·∇²I`` is dimensionless; ε of the inverse Laplacian in m⁻².  Internally the
least-squares columns are evaluated with pixel-unit derivatives and rescaled
analytically, which keeps every normal matrix well scaled (no 1e18 entries).

All solvers work on NumPy or CuPy arrays (``backend.get_xp``), process the image in
row blocks (memory bounded by ``block_rows``) and return float32 maps that are finite
everywhere.  On NumPy arrays the phase-object model (the paper's, the default) runs three fused
numba kernels when numba is importable (the ``[fast]`` extra; :class:`_FastPhaseObject`): the
same least-squares solve in one pass over the data with float64 sums, threaded over row
chunks (``backend.fft_workers()`` threads); ``XSPECKLE_NUMBA=0`` selects the NumPy path.
The inverse-Laplacian filter is computed once per retriever (reference-only work).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve.base import Retriever, as_stack
from xspeckle.retrieve.derivatives import gradient, hessian, laplacian
from xspeckle.retrieve.tie import single_material_tie
from xspeckle.retrieve.integrate import (
    angular_frequency_grid,
    frankot_chellappa,
    antisymmetric_pad,
    mirror_pad,
    zero_border_median,
)

__all__ = [
    "MISTRetriever",
    "DirectionalMISTRetriever",
    "mist",
    "mist_attenuating",
    "mist_rapid",
    "mist_directional",
    "fuse_diffusion",
    "single_material_tie",
    "default_epsilon_per_m2",
    "auto_epsilon_per_m2",
    "inverse_laplacian_dct",
    "MODELS",
]

#: the models of :class:`MISTRetriever`
MODELS = ("phase-object", "attenuating", "rapid", "transport")

#: target size of one float64 work block (bytes) for the row-block loops
_BLOCK_BYTES = 64 * 2**20


# --------------------------------------------------------------------------- helpers
def default_epsilon_per_m2(shape, pixel_size_m: float) -> float:
    """Default Tikhonov ε (m⁻²) of the inverse Laplacian for an image of *shape*.

    ε = 0.1·k_min² with k_min = 2π/(2·max(H, W)·p) the lowest non-zero angular
    frequency of the 2H×2W mirror pad (methods.md §1.14): it only damps the very
    lowest frequencies (lengths beyond ~3× the field of view), so the phase of objects
    inside the field is kept, while the k → 0 noise amplification is bounded.
    """
    h, w = shape[-2:]
    kmin = 2 * math.pi / (2 * max(h, w) * pixel_size_m)
    return 0.1 * kmin * kmin


def _rows_per_block(n_planes: int, w: int, block_rows: int | None) -> int:
    if block_rows is not None:
        if int(block_rows) < 1:
            raise ParameterError(f"block_rows must be >= 1, got {block_rows}")
        return int(block_rows)
    return max(8, _BLOCK_BYTES // max(1, 8 * n_planes * w))


def _finite(a, fill: float = 0.0):
    """Replace non-finite values (float32 result)."""
    xp = B.get_xp(a)
    a = xp.asarray(a, dtype=np.float32)
    bad = ~xp.isfinite(a)
    if bool(bad.any()):
        a = xp.where(bad, np.float32(fill), a)
    return a


def _check_pair(reference, sample, min_positions: int, name: str):
    ref = as_stack(reference, "reference")
    smp = as_stack(sample, "sample")
    if ref.shape != smp.shape:
        raise InputError(f"{name}: sample stack {tuple(smp.shape)} does not match reference stack {tuple(ref.shape)}")
    if ref.shape[0] < min_positions:
        raise InputError(f"{name} needs at least {min_positions} diffuser positions, got {ref.shape[0]}")
    if min(ref.shape[-2:]) < 4:
        raise InputError(f"{name}: images must be at least 4x4 pixels, got {tuple(ref.shape[-2:])}")
    return ref, smp


def _safe_positive(a, rel: float = 1e-3):
    """Clip *a* below at ``rel × mean(|a|)`` (avoids division by ~0 intensities)."""
    xp = B.get_xp(a)
    floor = np.float32(rel * float(xp.mean(xp.abs(a))) + 1e-30)
    return xp.maximum(a, floor)


class _PixelLSQ:
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
        self.rows = _rows_per_block(q * q + q, w, block_rows)
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


# --------------------------------------------------------------------------- CPU fast path (numba)
# The phase-object model (the paper's, and the default) on NumPy arrays: three fused kernels,
# compiled lazily with numba when it is importable (the ``[fast]`` extra), each run over row
# chunks by a thread pool (``nogil``; as many threads as ``backend.fft_workers()``, which the
# pipeline caps per worker process).  They compute exactly what :class:`_PixelLSQ` computes for the
# columns [I_R, −∇²I_R] (same stencil, same equilibrated Tikhonov term, same residual identity),
# with every per-pixel sum in float64, in one pass over the data instead of ~60 NumPy passes.
# Set ``XSPECKLE_NUMBA=0`` (or ``mist._USE_NUMBA = False``) to use the NumPy path.

_USE_NUMBA = os.environ.get("XSPECKLE_NUMBA", "1").strip().lower() not in ("0", "false", "no", "off")
_KERNELS: dict[str, Any] | None = None  # compiled kernels, {} when numba is unavailable


def _nb_columns(ref, col, y0, y1, acc0, acc1):
    """col[:, y0:y1] = −∇²_px I_R (5-point stencil with reflected borders, in the operation order of
    :func:`_laplacian_px`, float32); adds Σ_n I_R² and Σ_n col² per column x to acc0/acc1 (float64)."""
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
    (00, 01, 11) and scaled back by 1/(s_i s_j), as :class:`_PixelLSQ`."""
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
                # ‖b − Ax‖² = ‖b‖² − x·Aᵀb − Σ_j λ_j x_j² for the regularised solution (as _PixelLSQ)
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


def _fast_available(xp) -> bool:
    return _USE_NUMBA and xp is np and bool(_kernels())


def _row_chunks(h: int, threads: int, block_rows: int | None):
    """Row ranges for the thread pool: ``block_rows`` rows each, or ~4 chunks per thread."""
    step = int(block_rows) if block_rows else max(1, -(-h // (4 * threads)))
    return [(y0, min(h, y0 + step)) for y0 in range(0, h, step)]


def _map_rows(fn, chunks, threads: int):
    """Run ``fn(y0, y1)`` over *chunks* on *threads* threads; returns the results in order."""
    if threads <= 1 or len(chunks) == 1:
        return [fn(y0, y1) for y0, y1 in chunks]
    with ThreadPoolExecutor(max_workers=min(threads, len(chunks))) as ex:
        return list(ex.map(lambda c: fn(*c), chunks))


class _FastPhaseObject:
    """Prepared phase-object solve (columns [I_R, −∇²I_R]) on NumPy arrays with the numba kernels.

    Same quantities as ``_PixelLSQ([ref, −_laplacian_px(ref)], alpha, ...)`` followed by the
    phase-object scaling: ``solve`` returns ∇²φ (m⁻²), D_eff (m) and the residual.  Picklable; in a
    process without numba it falls back to :class:`_PixelLSQ` on the stored columns.
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
        chunks = _row_chunks(H, threads, block_rows)

        def columns(y0, y1):
            a0, a1 = np.zeros(W), np.zeros(W)
            k["columns"](self.ref, self.col, y0, y1, a0, a1)
            return a0.sum(), a1.sum()

        sums = _map_rows(columns, chunks, threads)
        size = P * H * W
        s = np.array([math.sqrt(sum(v[0] for v in sums) / size), math.sqrt(sum(v[1] for v in sums) / size)])
        s[~(s > 0)] = 1.0
        self.scale = s
        self.alpha_eq = self.alpha_rel * P  # Tikhonov weight on the equilibrated system (mean diagonal P)
        # float32 storage when α bounds the conditioning (as _PixelLSQ), else float64
        self.dtype = np.float32 if self.alpha_eq >= 1e-4 * P else np.float64
        self.inv = np.empty((3, H, W), dtype=self.dtype)
        tiny = float(np.finfo(self.dtype).tiny)
        _map_rows(lambda y0, y1: k["inverse"](self.ref, self.col, self.inv, y0, y1, float(s[0]), float(s[1]),
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
        _map_rows(lambda y0, y1: k["solve"](self.ref, self.col, smp, self.inv, lam0, lam1, float(gscale), float(cscale),
                                            g, c, res, y0, y1, bool(want_residual)),
                  _row_chunks(H, threads, self.block_rows), threads)
        return g, c, (res if want_residual else None)

    def _solve_numpy(self, smp, gscale, cscale, want_residual):
        if self._fallback is None:
            self._fallback = _PixelLSQ([self.ref, self.col], self.alpha_rel, self.block_rows)
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
        g = _finite(g * np.float32(gscale))
        c = _finite(c * np.float32(cscale))
        return g, c, (_finite(res) if want_residual else None)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_fallback"] = None
        return d


def inverse_laplacian_dct(laplacian_map, pixel_size_m: float, *, epsilon_per_m2: float = 0.0):
    """Tikhonov inverse Laplacian with even (mirror) boundaries, by a DCT-II.

    Identical to :func:`xspeckle.retrieve.integrate.inverse_laplacian` with
    ``pad="mirror"`` (the 2H×2W even extension's DFT is a DCT-II; Gureyev & Nugent;
    Pavlov 2020 after Eq. 7) at about a quarter of the FFT work:
    ``φ = −IDCT[DCT(f)/(k_y² + k_x² + ε)]``, ``k_j = πj/(N p)`` (rad/m).

    Parameters
    ----------
    laplacian_map : array (..., H, W), ∇²φ in rad/m².
    pixel_size_m : float
    epsilon_per_m2 : float, ε ≥ 0 (m⁻²); 0 sets the k = 0 term to 0.

    Returns
    -------
    phase : float32 (..., H, W), rad.
    """
    if not (epsilon_per_m2 >= 0 and math.isfinite(epsilon_per_m2)):
        raise ParameterError(f"epsilon_per_m2 must be finite and >= 0, got {epsilon_per_m2!r}")
    xp = B.get_xp(laplacian_map)
    f = xp.asarray(laplacian_map, dtype=np.float32)
    return _apply_inverse_laplacian(f, _inverse_laplacian_filter(f.shape[-2:], pixel_size_m, epsilon_per_m2, xp))


def _inverse_laplacian_filter(shape, pixel_size_m: float, epsilon_per_m2: float, xp=np):
    """DCT-domain factor ``−1/(k_y² + k_x² + ε)`` (float32 (H, W); 0 at k = 0 when ε = 0) of
    :func:`inverse_laplacian_dct`, ``k_j = πj/(N p)`` rad/m (Gureyev & Nugent; Pavlov 2020 after
    Eq. 7).  Depends on the shape only: retrievers compute it once."""
    h, w = shape[-2:]
    ky = xp.asarray(np.pi * np.arange(h) / (h * pixel_size_m), dtype=np.float32)[:, None]
    kx = xp.asarray(np.pi * np.arange(w) / (w * pixel_size_m), dtype=np.float32)[None, :]
    den = ky * ky + (kx * kx + np.float32(epsilon_per_m2))  # one (H, W) allocation, updated in place
    if epsilon_per_m2 == 0:
        den[0, 0] = np.inf
    return xp.divide(np.float32(-1.0), den, out=den)


def _apply_inverse_laplacian(f, filt):
    """``IDCT[DCT(f)·filt]`` (float32), *filt* from :func:`_inverse_laplacian_filter`."""
    spec = B.dctn(f)
    spec *= filt
    return B.idctn(spec).astype(np.float32, copy=False)


def fuse_diffusion(d, d_dx, d_dy, pixel_size_m: float, r_m2: float):
    """Low-/high-pass fusion of D with its retrieved gradient (Alloo et al. 2023, Eq. 14; methods.md §1.10).

    ``D_f = F⁻¹[LP·F(D) + HP·F(∂_xD + i∂_yD)/(i k_x − k_y)]``, ``LP = exp(−r|k|²)``,
    ``HP = 1 − LP`` (|k| in rad/m, r in m²).  D is mirror padded and the gradient
    antisymmetric padded on both axes (the upstream script pads one axis only).

    Parameters
    ----------
    d, d_dx, d_dy : array (H, W)
        D (m), ∂_xD and ∂_yD (m/m).
    pixel_size_m : float
    r_m2 : float
        Cut-off r in m² (Alloo: 20–27 µm² = 2.0e-11–2.7e-11 m²).

    Returns
    -------
    D_f : float32 (H, W), in m.
    """
    if not (r_m2 > 0 and math.isfinite(r_m2)):
        raise ParameterError(f"fusion cut-off r must be a positive length² in m², got {r_m2!r}")
    xp = B.get_xp(d)
    h, w = d.shape[-2:]
    dp = mirror_pad(xp.asarray(d, dtype=np.float32))
    gx, gy = antisymmetric_pad(xp.asarray(d_dx, dtype=np.float32), xp.asarray(d_dy, dtype=np.float32))
    shape = dp.shape[-2:]
    ky, kx = angular_frequency_grid(shape, pixel_size_m, xp=xp)
    k2 = kx * kx + ky * ky
    lp = xp.exp(-np.float32(r_m2) * k2).astype(np.float32)
    den = (1j * kx - ky).astype(np.complex64)
    den[0, 0] = 1.0
    spec_d = B.fft2(dp.astype(np.complex64))
    spec_g = B.fft2((gx + 1j * gy).astype(np.complex64))
    spec_g /= den
    spec_g[..., 0, 0] = 0
    out = lp * spec_d + (1 - lp) * spec_g
    res = B.ifft2(out, overwrite_x=True).real
    return xp.ascontiguousarray(res[..., :h, :w]).astype(np.float32, copy=False)


#: blur widths σ (px) of the calibration ladder; D_k = (σ p)²/(2Δ)
_CAL_SIGMA_PX = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.45, 1.7, 2.0, 2.4)


def _laplacian_px(a):
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


def _blur_calibration_curve(make_retriever, reference, geometry: Geometry, crop: int = 160):
    """Response of an estimator to a known uniform dark field, from the reference alone.

    MIST's model is first order in ΔD (Pavlov 2020 Eq. 4: exp(ΔD∇²) ≈ 1 + ΔD∇²); for a blur
    comparable to the speckle size the first-order estimate saturates.  The reference (central
    crop ≤ ``crop``²) is diffused by the exact Fokker–Planck solution for uniform D_k (Gaussian
    of covariance 2ΔD_k: spectral factor exp(−ΔD_k|k|²), design.md) and run through the same
    estimator (``make_retriever(crop)``, D only); returns the monotone part of
    (D_k, median estimate) as two float64 arrays (m).
    """
    xp = B.get_xp(reference)
    P, H, W = reference.shape
    p, delta = geometry.pixel_size_m, geometry.sample_detector_distance_m
    ch, cw = min(H, crop), min(W, crop)
    y0, x0 = (H - ch) // 2, (W - cw) // 2
    sub = xp.ascontiguousarray(reference[:, y0 : y0 + ch, x0 : x0 + cw])
    r = make_retriever(sub)
    r._diffusion_only = True
    ky, kx = angular_frequency_grid((ch, cw), p, xp=xp, rfft=True)
    k2 = kx * kx + ky * ky
    spec = B.rfft2(sub)
    m = max(4, min(ch, cw) // 8)  # ignore the wrap-around border of the periodic blur
    d_true, d_est = [0.0], [0.0]
    for sig in _CAL_SIGMA_PX[1:]:
        dk = (sig * p) ** 2 / (2 * delta)
        blurred = B.irfft2(spec * xp.exp(-np.float32(delta * dk) * k2), s=(ch, cw)).astype(np.float32)
        est = r(blurred)["diffusion"][m:-m, m:-m]
        d_true.append(dk)
        d_est.append(float(xp.median(est)))
    d_true_a, d_est_a = np.array(d_true), np.array(d_est)
    keep = 1  # keep the strictly increasing part (beyond it the estimate has saturated)
    while keep < len(d_est_a) and d_est_a[keep] > d_est_a[keep - 1]:
        keep += 1
    return d_true_a[:keep], d_est_a[:keep]


def _apply_curve(d, curve):
    """Map first-order D estimates (m) through *curve*; linear below 0, clamped above the ladder."""
    if curve is None or len(curve[0]) < 2:
        return d
    xp = B.get_xp(d)
    t, e = curve
    slope0 = t[1] / e[1]
    out = xp.interp(d, xp.asarray(e, dtype=np.float32), xp.asarray(t, dtype=np.float32)).astype(np.float32)
    return xp.where(d < 0, d * np.float32(slope0), out).astype(np.float32)


def _calibrate_tensor(tensor, curve):
    """Apply the isotropic calibration curve to the eigenvalues of (D_xx, D_yy, D_xy) and recompose."""
    if curve is None:
        return tensor
    xp = B.get_xp(tensor)
    dxx, dyy, dxy = tensor[0], tensor[1], tensor[2]
    half_tr = 0.5 * (dxx + dyy)
    rad = xp.sqrt(0.25 * (dxx - dyy) ** 2 + dxy * dxy)
    l1 = _apply_curve(half_tr + rad, curve)
    l2 = _apply_curve(half_tr - rad, curve)
    th = 0.5 * xp.arctan2(2 * dxy, dxx - dyy)  # major axis
    c, s = xp.cos(th), xp.sin(th)
    # D = R diag(λ1, λ2) Rᵀ
    return xp.stack([l1 * c * c + l2 * s * s, l1 * s * s + l2 * c * c, (l1 - l2) * c * s]).astype(np.float32)


_EPS_RULE = "auto: minimum estimated phase risk per projection (auto_epsilon_per_m2)"


def _check_epsilon(epsilon_per_m2):
    """None (default: auto), "auto", or a finite ε ≥ 0 in m⁻² (returned as float)."""
    if epsilon_per_m2 is None or (isinstance(epsilon_per_m2, str) and epsilon_per_m2 == "auto"):
        return None
    try:
        e = float(epsilon_per_m2)
    except (TypeError, ValueError):
        e = float("nan")
    if not (e >= 0 and math.isfinite(e)):
        raise ParameterError(f"epsilon_per_m2 must be 'auto' or finite and >= 0 (m^-2), got {epsilon_per_m2!r}")
    return e


def _check_border_px(border_px, H: int, W: int) -> int:
    """``border_px`` (the band whose median phase is set to 0) must lie in 1 .. max(8, min(H, W) // 2)."""
    hi = max(8, min(H, W) // 2)
    if not (isinstance(border_px, (int, float)) and float(border_px).is_integer() and 1 <= border_px <= hi):
        raise ParameterError(f"mist: border_px={border_px!r} must be a whole number of pixels in 1..{hi} "
                             f"(half the {H}x{W} frame at most)")
    return int(border_px)


#: ε grid of the risk rule, in units of k_min² = (π/(N p))² (the lowest non-zero DCT frequency squared)
_EPS_GRID_KMIN2 = np.concatenate([[0.0], np.logspace(-4, 1, 26)])
#: upper bound of the auto ε (units of k_min²), chosen by measurement (benchmarks/results/mist.md)
_EPS_AUTO_MAX_KMIN2 = 0.03


def auto_epsilon_per_m2(spectrum, pixel_size_m: float, *, corner: int = 128) -> float:
    """Inverse-Laplacian ε (m⁻²) chosen from the data by minimising an estimate of the phase error.

    For the DCT coefficients f̂(k) of the measured ∇²φ = signal + white noise of variance σ² per
    coefficient, the Tikhonov solution ``φ̂ = −f̂/(k² + ε)`` has the expected squared error
    ``R(ε) = Σ_k |s(k)|² ε²/(k⁴(k² + ε)²) + σ²/(k² + ε)²`` (bias + noise; the classical Tikhonov risk,
    e.g. Vogel, *Computational Methods for Inverse Problems*, SIAM 2002, §7.1 "unbiased predictive risk").
    σ² = the smallest median of |f̂|² over the octave bands [N/16, N/8), …, [N/2, N) of the DCT index
    (the noise floor: the sample's signal only adds power, and the noise of a Laplacian-based estimate
    rises with k), ``|s|² = max(|f̂|² − σ², 0)``.  ε only changes terms with k² ≲ 10⁴ ε,
    so R is summed over the ``corner × corner`` lowest frequencies; the grid is ε ∈ {0} ∪ 10^[−4, 1]·k_min².

    Parameters
    ----------
    spectrum : array (H, W)
        DCT-II (``backend.dctn``) of ∇²φ in rad/m².
    pixel_size_m : float

    Returns
    -------
    float : ε in m⁻² (0 allowed: the k = 0 term is then dropped).
    """
    xp = B.get_xp(spectrum)
    h, w = spectrum.shape[-2:]
    # noise floor: the smallest median power over octave bands (the signal only adds power; the noise of a
    # Laplacian-based estimate rises with k, so the top band alone would overstate it at low k)
    sig2 = np.inf
    for lo in (16, 8, 4, 2):
        band = spectrum[h // lo : 2 * h // lo : 2, w // lo : 2 * w // lo : 2]
        if band.size:
            sig2 = min(sig2, float(xp.median(band.astype(np.float64) ** 2)))
    ch, cw = min(h, corner), min(w, corner)
    f2 = B.asnumpy(spectrum[:ch, :cw]).astype(np.float64) ** 2
    ky = np.pi * np.arange(ch) / (h * pixel_size_m)
    kx = np.pi * np.arange(cw) / (w * pixel_size_m)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    k2[0, 0] = np.inf  # the mean is fixed by the border rule, not by ε
    s2 = np.maximum(f2 - sig2, 0.0)
    kmin2 = (np.pi / (max(h, w) * pixel_size_m)) ** 2
    best, best_r = 0.0, np.inf
    for e in _EPS_GRID_KMIN2[_EPS_GRID_KMIN2 <= _EPS_AUTO_MAX_KMIN2 * (1 + 1e-9)] * kmin2:
        d = k2 + e
        r = float(np.sum(s2 * (e * e) / (k2 * k2 * d * d) + sig2 / (d * d)))
        if r < best_r:
            best, best_r = float(e), r
    return best


_AUTO_FILTERS: dict = {}  # (shape, p, ε, backend) -> inverse-Laplacian filter, at most 4 kept


def _phase_from_laplacian(lap_phi, geometry: Geometry, epsilon_per_m2: float | str | None, border_px: int, filt=None):
    """φ from ∇²φ by the inverse Laplacian, background by the border median; *filt* (optional) is the
    precomputed :func:`_inverse_laplacian_filter` for this shape and ε.  ``epsilon_per_m2="auto"``:
    ε from the data (:func:`auto_epsilon_per_m2`); ``None``: :func:`default_epsilon_per_m2`."""
    if isinstance(epsilon_per_m2, str):  # "auto"
        xp = B.get_xp(lap_phi)
        spec = B.dctn(xp.asarray(lap_phi, dtype=np.float32))
        eps = auto_epsilon_per_m2(spec, geometry.pixel_size_m)
        key = (tuple(lap_phi.shape), float(geometry.pixel_size_m), eps, xp.__name__)
        filt = _AUTO_FILTERS.get(key)
        if filt is None:  # ε takes one of a few grid values: keep the last filters (reference-shape work)
            filt = _inverse_laplacian_filter(lap_phi.shape, geometry.pixel_size_m, eps, xp)
            if len(_AUTO_FILTERS) >= 4:
                _AUTO_FILTERS.clear()  # atomic (threads of the pipeline may share this module)
            _AUTO_FILTERS[key] = filt
        spec *= filt
        phase = B.idctn(spec).astype(np.float32, copy=False)
        return zero_border_median(phase, border_px), eps
    eps = default_epsilon_per_m2(lap_phi.shape, geometry.pixel_size_m) if epsilon_per_m2 is None else float(epsilon_per_m2)
    # Gureyev & Nugent inverse Laplacian (Pavlov 2020 after Eq. 7), background by border median
    if filt is None:
        phase = inverse_laplacian_dct(lap_phi, geometry.pixel_size_m, epsilon_per_m2=eps)
    else:
        phase = _apply_inverse_laplacian(B.get_xp(lap_phi).asarray(lap_phi, dtype=np.float32), filt)
    return zero_border_median(phase, border_px), eps


# --------------------------------------------------------------------------- model check
#: attenuation (1 − transmission) above which a phase-object method warns (global or over 10 % of blocks)
ATTENUATION_WARN = 0.03


def transmission_from_data(reference_mean, sample, block_px: int = 16):
    """Block-averaged transmission ``Σ_block mean_n I_S / Σ_block mean_n I_R`` (float64 (h, w) blocks of
    *block_px* px, sampled on every second pixel) and the whole-field flux ratio.  A phase object only redistributes intensity (TIE: ∫(I_S − I_R) = 0 over
    the field, Teague 1983), so blocks clearly below 1 everywhere mean attenuation."""
    xp = B.get_xp(sample)
    # every second pixel in y and x: a check, not a measurement (a quarter of the passes over the stack)
    s_mean = xp.mean(sample[:, ::2, ::2], axis=0)
    r_mean = reference_mean[::2, ::2]
    H, W = s_mean.shape
    b = max(1, min(int(block_px) // 2, H, W))
    h, w = H // b, W // b
    rs = r_mean[: h * b, : w * b].reshape(h, b, w, b).sum(axis=(1, 3), dtype=np.float64)
    ss = s_mean[: h * b, : w * b].reshape(h, b, w, b).sum(axis=(1, 3), dtype=np.float64)
    t = ss / xp.maximum(rs, 1e-30)
    flux = float(xp.sum(ss)) / max(float(xp.sum(rs)), 1e-30)
    return t, flux


def attenuation_warning(reference_mean, sample, *, model: str, fix: str) -> str | None:
    """One warning line when the data show attenuation that a phase-object model (T = 1) would read as
    phase, else None.  Triggers: whole-field flux ratio below 1 − ATTENUATION_WARN, or the blocks below
    1 − ATTENUATION_WARN outnumbering those above 1 + ATTENUATION_WARN by 10 % of all blocks (lensing moves
    intensity both ways; attenuation only removes it)."""
    t, flux = transmission_from_data(reference_mean, sample)
    xp = B.get_xp(t)
    lo = float(xp.mean(t < 1 - ATTENUATION_WARN))
    hi = float(xp.mean(t > 1 + ATTENUATION_WARN))
    if flux < 1 - ATTENUATION_WARN or lo - hi > 0.1:
        # the same text for every angle (the pipeline counts the angles of each distinct line)
        return (f"the sample attenuates (transmission from the data below {1 - ATTENUATION_WARN:.2f}) but the "
                f"{model} model assumes T = 1, so the phase is unreliable; {fix}")
    return None


# --------------------------------------------------------------------------- retrievers
class MISTRetriever(Retriever):
    """MIST retriever (Pavlov 2020; Alloo 2022; Alloo 2023), see the module docstring.

    Parameters
    ----------
    reference : array (P, H, W) float32
        Normalised reference speckle images, P ≥ 2 (P ≥ 4 for ``model="rapid"``).
    geometry : Geometry
        Δ = ``sample_detector_distance_m`` (diffuser upstream), energy, pixel size.
    model : {"phase-object", "attenuating", "rapid", "transport"}
        Forward model (module docstring).
    alpha : float, optional
        Tikhonov weight, dimensionless, relative to the column-equilibrated normal
        matrix (mean diagonal = P; each unknown's column scaled to unit RMS).
        Defaults: ``1e-3`` (phase-object: bounds the N = 2 pixels where the two
        equations are nearly parallel, bias ≲ 0.1 % elsewhere); ``0.01`` (attenuating:
        Alloo 2022's α = mean(P²)/100, applied exactly as there).  For ``"rapid"``
        alpha is Alloo 2023's row weight (α·I₄ rows appended to A, i.e. α² added to
        AᵀA of the equilibrated system); default std(A)/10⁴ of the equilibrated A, which
        keeps the method unit-independent (in Alloo's µm units it is equally small).
    epsilon_per_m2 : float or "auto", optional
        Tikhonov ε (m⁻²) of the inverse Laplacian.  Default ``"auto"``: chosen per projection from
        the data by :func:`auto_epsilon_per_m2` (minimum estimated phase risk, capped at
        0.03·k_min²; within 1.11× of ε = 0 and of mbipy on every synthetic set measured, up to 1.12×
        better with noise or dark field — benchmarks/results/mist.md), the value used is in
        ``last_epsilon_per_m2``; a number fixes it (:func:`default_epsilon_per_m2` gives the former
        default 0.1·k_min²).  ``model="rapid"`` defaults to Alloo 2023's 1e-5 µm⁻² = 1e7 m⁻².
    gamma : float, optional
        δ/β, required for ``model="attenuating"`` (and used by ``"rapid"`` for an
        optional transmission when given).
    fusion_r_m2 : float, optional
        ``"rapid"``: LP/HP cut-off r in m² (default 0.6·p², i.e. 25 µm² at 6.5 µm
        pixels, inside Alloo's 20–27 µm²).
    border_px : int
        Border width for the background rule (:func:`zero_border_median`).
    block_rows : int, optional
        Rows per work block (default: ~64 MiB of float64 temporaries).
    blur_calibration : bool
        Map the first-order D estimate through the reference-based calibration (module
        docstring); ``False`` = Pavlov 2020 / Alloo 2022/2023 as published.
    noise_weighting : bool
        Phase-object model: weight each position's equation by 1/(I_R,n + I_S,n) (Poisson variance of
        I_R − I_S), the paper's "least squares accounting for noise" (Pavlov 2020, Table I); default
        ``False`` (unweighted, as the paper's Eq. 7 and the peers).  NumPy/CuPy path only.
    dewarp : bool
        Our extension (issue 14; phase-object and attenuating models, P ≥ 3): track the speckle
        displacement u by LCS-DF and take ``diffusion`` from the model fitted to the sample resampled at
        r + u, so that strong refraction (u ~ 1 px) is not read as dark field (second-order terms of
        Pavlov 2020 Eq. 1); phase and transmission stay from the plain fit.
        Default ``False`` (the published method); benchmarks/results/mist.md measures both.

    Notes
    -----
    Outputs: ``phase`` (rad, border median 0 for phase-object/rapid/transport), ``diffusion``
    (D_eff, m), ``residual`` (RMS misfit of the linear model / RMS of the data),
    ``transmission`` for ``"attenuating"`` (and ``"rapid"`` with γ, where ``diffusion`` is
    then D_f/T as Alloo 2023), ``displacement`` (2, H, W) px for ``"transport"``.
    The parameters record α, ε, γ, the calibration table, etc.
    """

    name: ClassVar[str] = "mist"
    outputs: ClassVar[tuple[str, ...]] = ("phase", "transmission", "diffusion", "displacement", "residual")
    min_positions: ClassVar[int] = 2

    def __init__(
        self,
        reference,
        geometry: Geometry,
        *,
        model: str = "phase-object",
        alpha: float | None = None,
        epsilon_per_m2: float | str | None = None,
        gamma: float | None = None,
        fusion_r_m2: float | None = None,
        border_px: int = 8,
        block_rows: int | None = None,
        blur_calibration: bool = False,
        dewarp: bool = False,
        noise_weighting: bool = False,
    ):
        super().__init__(reference, geometry)
        if model not in MODELS:
            raise ParameterError(f"MIST model must be one of {', '.join(MODELS)}; got {model!r}")
        ref = self.reference
        xp = B.get_xp(ref)
        P, H, W = ref.shape
        if min(H, W) < 4:
            raise InputError(f"mist: images must be at least 4x4 pixels, got {(H, W)}")
        if model in ("rapid", "transport") and P < 4:
            raise InputError(f"mist model {model!r} solves 4 unknowns per pixel and needs >= 4 diffuser positions, got {P}")
        if model == "attenuating" and gamma is None:
            raise ParameterError("mist model 'attenuating' needs gamma = delta/beta of the sample material (e.g. gamma=2335 for PMMA at 25 keV)")
        if gamma is not None and not (float(gamma) > 0 and math.isfinite(float(gamma))):
            raise ParameterError(f"gamma (delta/beta) must be a positive number, got {gamma!r}")
        epsilon_per_m2 = _check_epsilon(epsilon_per_m2)
        if alpha is not None and not (float(alpha) >= 0 and math.isfinite(float(alpha))):
            raise ParameterError(f"alpha must be finite and >= 0, got {alpha!r}")
        self.model = model
        self.gamma = None if gamma is None else float(gamma)
        self.border_px = _check_border_px(border_px, H, W)
        self.block_rows = block_rows
        p = geometry.pixel_size_m
        delta = geometry.sample_detector_distance_m
        k = geometry.wavenumber_per_m
        self._p, self._delta, self._k = p, delta, k
        if model == "rapid" and epsilon_per_m2 is None:
            epsilon_per_m2 = 1e7  # Alloo 2023 (update script): 1e-5 µm⁻² = 1e7 m⁻²
        # default: ε from each projection's data (auto_epsilon_per_m2); a number fixes it
        self.epsilon_per_m2 = "auto" if epsilon_per_m2 is None else epsilon_per_m2
        self._fast = None
        if model != "phase-object":
            lap_px = _laplacian_px(ref)  # ∇²I_R in px⁻² (5-point stencil of derivatives.laplacian)

        if model == "phase-object":
            # Pavlov 2020 Eq. (4)/(6): b_n = I_R − I_S = I_R·g − L_px·c,
            # g = (Δ/k)∇²φ (1), c = Δ D_eff / p² (1)
            self.alpha = 1e-3 if alpha is None else float(alpha)
            if _fast_available(xp):
                # fused numba kernels (same solve, one pass; see _FastPhaseObject)
                self._fast = _FastPhaseObject(ref, self.alpha, block_rows)
                self._lsq = None
            else:
                lap_px = _laplacian_px(ref)  # ∇²I_R in px⁻² (5-point stencil of derivatives.laplacian)
                lap_px *= -1
                self._lsq = _PixelLSQ([ref, lap_px], self.alpha, block_rows)
            self.outputs = ("phase", "diffusion", "residual")
        elif model == "attenuating":
            # Alloo 2022: b_n = I_S/I_R = G1 + c·q_n, q_n = ∇²I_R/I_R (px⁻²), c = ΔD/p²
            self.alpha = 0.01 if alpha is None else float(alpha)
            ir = _safe_positive(ref)
            q = lap_px / ir
            self._inv_ref = (1.0 / ir).astype(np.float32)
            qm = xp.mean(q, axis=0, dtype=np.float64)
            qc = (q - qm.astype(np.float32)).astype(np.float32)  # centred q_n − q̄
            sqq = xp.sum(xp.square(qc, dtype=np.float64), axis=0)  # Σ(q − q̄)²
            # pair-wise P = Δ Σ_{i<j} det_ij² = Δ N Σ(q − q̄)²; α = alpha·mean(P²) (Alloo 2022: mean/100)
            pp = P * sqq  # Δ and p factors cancel in P²/(P² + α), so work in px units
            a_abs = self.alpha * float(xp.mean(pp * pp))
            self._qc, self._qm = qc, qm
            # c = (Σ_{i<j} det·num)·P/(P² + α) / … expressed with the O(N) identity:
            # Σ_{i<j} det_ij num_ij = N Σ (q − q̄) b  (b̄ drops out since Σ(q − q̄) = 0)
            self._gain = (P * pp / (pp * pp + max(a_abs, 1e-300))).astype(np.float64)
            self.outputs = ("phase", "transmission", "diffusion", "residual")
        elif model == "transport":
            # Pavlov 2020 Eq. (1)–(2) without approximation (5): the transport term is kept,
            # I_R − I_S = I_R·g + Gx_px·ux + Gy_px·uy − L_px·c, with g = (Δ/k)∇²φ,
            # u = Δ∇φ/(k p) (px, the speckle displacement of design.md), c = ΔD/p²
            self.alpha = 1e-3 if alpha is None else float(alpha)
            gy, gx = gradient(ref, 1.0)
            lap_px *= -1
            self._lsq = _PixelLSQ([ref, lap_px, gx, gy], self.alpha, block_rows)
            self.outputs = ("phase", "diffusion", "displacement", "residual")
        else:  # rapid
            # Alloo 2023: (I_R − I_S) = I_R·u − L_px·c − 2 Gx_px·cx − 2 Gy_px·cy,
            # u = Δ∇²(φ/k − D), c = ΔD/p², cx = Δ∂_xD/p, cy = Δ∂_yD/p (all 1)
            gy, gx = gradient(ref, 1.0)
            gx *= -2
            gy *= -2
            lap_px *= -1
            cols = [ref, lap_px, gx, gy]
            if alpha is None:
                # α = std(A)/1e4 (Alloo 2023), on the equilibrated matrix; α² enters A^T A
                s = [math.sqrt(float(xp.vdot(c.ravel(), c.ravel())) / c.size) or 1.0 for c in cols]
                m1 = sum(float(xp.mean(cols[j], dtype=np.float64)) / s[j] for j in range(4)) / 4
                m2 = 1.0  # mean of squares of the equilibrated entries
                self.alpha = math.sqrt(max(m2 - m1 * m1, 0.0)) / 1e4
            else:
                self.alpha = float(alpha)
            # appending α·I₄ rows to A adds α² to A^T A (Alloo 2023)
            self._lsq = _PixelLSQ(cols, 0.0, block_rows, alpha_abs_eq=self.alpha**2)
            self.fusion_r_m2 = 0.6 * p * p if fusion_r_m2 is None else float(fusion_r_m2)
            self.outputs = ("phase", "diffusion", "residual") + (("transmission",) if gamma is not None else ())
        lap_px = None  # release the temporary
        self.parameters = {
            "model": model,
            "alpha": self.alpha,
            "epsilon_per_m2": self.epsilon_per_m2,
            "epsilon_rule": _EPS_RULE if self.epsilon_per_m2 == "auto" else "fixed",
            "gamma": self.gamma,
            "border_px": self.border_px,
            "n_positions": P,
            "sample_detector_distance_m": delta,
        }
        if model == "rapid":
            self.parameters["fusion_r_m2"] = self.fusion_r_m2
        # inverse-Laplacian factor for this shape and ε: reference-only work, done once
        self._ilap = (_inverse_laplacian_filter((H, W), p, self.epsilon_per_m2, xp)
                      if model in ("phase-object", "rapid") and self.epsilon_per_m2 != "auto" else None)
        self.last_epsilon_per_m2 = None  # the ε of the latest projection (auto rule)
        self._ref_mean = None  # mean reference over positions (float64), for the attenuation check
        self._calib = None
        self._diffusion_only = False  # internal: calibration runs need D only
        self.noise_weighting = bool(noise_weighting)
        if self.noise_weighting and model != "phase-object":
            raise ParameterError(f"mist: noise_weighting applies to the phase-object model, not {model!r}")
        self.parameters["noise_weighting"] = self.noise_weighting
        self._lap_w = None
        self.dewarp = bool(dewarp)
        self._lcs = None
        if self.dewarp:
            if model not in ("phase-object", "attenuating"):
                raise ParameterError(f"mist: dewarp applies to the phase-object and attenuating models, not {model!r}")
            if P < 3:
                raise InputError(f"mist: dewarp tracks the speckle with LCS and needs >= 3 diffuser positions, got {P}")
            from xspeckle.retrieve.lcs import LCSModel  # lazy: lcs imports this module

            self._lcs = LCSModel(ref, "df", alpha=1e-4)  # displacement u for the dewarp (reference work)
        self.parameters["dewarp"] = self.dewarp
        self.blur_calibration = bool(blur_calibration)
        if self.blur_calibration:
            self._calib = self._calibrate_blur(alpha=alpha, fusion_r_m2=fusion_r_m2)
            self.parameters["blur_calibration"] = {
                "true_diffusion_m": [float(v) for v in self._calib[0]],
                "first_order_estimate_m": [float(v) for v in self._calib[1]],
            }
        else:
            self.parameters["blur_calibration"] = None

    # ------------------------------------------------------------------ calibration
    def _calibrate_blur(self, *, alpha, fusion_r_m2):
        kw = dict(model=self.model, alpha=alpha, epsilon_per_m2=self.epsilon_per_m2, gamma=self.gamma,
                  fusion_r_m2=fusion_r_m2, border_px=self.border_px, blur_calibration=False)
        return _blur_calibration_curve(lambda sub: MISTRetriever(sub, self.geometry, **kw), self.reference, self.geometry)

    def _apply_calibration(self, d):
        return _apply_curve(d, self._calib)

    # ------------------------------------------------------------------ per projection
    def _dewarped(self, sample):
        """Issue 14: the sample resampled at r + u, with u the speckle displacement tracked by LCS-DF (two
        refine passes), so that the first-order fit does not take refraction's second-order terms
        (½ u_i u_j ∂_i∂_j I_R, Pavlov 2020 Eq. 1 before approximation 5) for Fokker–Planck blur."""
        from xspeckle.retrieve.lcs import warp_cubic

        u = self._lcs(sample, refine=2)["displacement"]
        return warp_cubic(sample, -u[0], -u[1])

    def _retrieve(self, sample) -> dict[str, Any]:
        out = self._retrieve_model(sample)
        if self._lcs is not None and not self._diffusion_only:
            # D from the fit to the dewarped sample; phase/transmission stay from the plain fit (resampling
            # moves ∇²φ to r + u and costs phase accuracy: measured in benchmarks/results/mist.md)
            out["diffusion"] = self._retrieve_model(self._dewarped(sample)).pop("diffusion")
        return out

    def _retrieve_model(self, sample) -> dict[str, Any]:
        if self.model == "phase-object":
            return self._model_check(self._phase_object(sample), sample)
        if self.model == "transport":
            return self._model_check(self._transport(sample), sample)
        if self.model == "attenuating":
            out = self._attenuating(sample)
        elif self.model == "transport":
            out = self._transport(sample)
        else:
            out = self._rapid(sample)
        return out

    def _model_check(self, out, sample):
        """Issue 14: a phase-object model reads attenuation as phase (FourRod: 5·10⁴ rad instead of ~140 rad);
        say so in ``out["warnings"]`` (one line naming the fix) when the data show it."""
        if self._diffusion_only:
            return out
        if self._ref_mean is None:
            self._ref_mean = B.get_xp(self.reference).mean(self.reference, axis=0, dtype=np.float64)
        w = attenuation_warning(self._ref_mean, sample, model=self.model,
                                fix="use --param model=attenuating gamma=<delta/beta> (e.g. 2335 for PMMA at 25 keV), "
                                    "or --method tie --param gamma=<delta/beta>")
        if w:
            out["warnings"] = [w]
        return out

    def _calibrated(self, d):
        return self._apply_calibration(d) if self._calib is not None else d

    def _transport(self, sample):
        xp = B.get_xp(sample)
        ref = self.reference
        P, H, W = ref.shape
        lsq = self._lsq
        x_all = xp.empty((4, H, W), dtype=np.float32)
        res = xp.empty((H, W), dtype=np.float32)
        for y0 in range(0, H, lsq.rows):
            y1 = min(H, y0 + lsq.rows)
            b = ref[:, y0:y1] - sample[:, y0:y1]  # Pavlov 2020 Eq. (1)–(2) left side
            x, res[y0:y1] = lsq.solve_block(b, y0, y1, sample[:, y0:y1])
            x_all[:, y0:y1] = x
        p, delta, k = self._p, self._delta, self._k
        if self._diffusion_only:
            return {"diffusion": _finite(x_all[1] * np.float32(p * p / delta))}
        u = _finite(x_all[2:])  # displacement (px), design.md: ∇φ = k p u / Δ
        gscale = np.float32(k * p / delta)
        phase = frankot_chellappa(u[0] * gscale, u[1] * gscale, p)  # FC 1988, antisymmetric pad
        phase = zero_border_median(phase, self.border_px)
        d_eff = self._calibrated(_finite(x_all[1] * np.float32(p * p / delta)))
        return {"phase": _finite(phase), "diffusion": d_eff, "displacement": xp.ascontiguousarray(u), "residual": _finite(res)}

    def _weighted_phase_object(self, sample):
        """Pavlov 2020 Eq. (6) solved "in the least-squares sense accounting for noise" (paper, Table I): each
        equation n weighted by 1/var(b_n) with var(I_R,n − I_S,n) ∝ I_R,n + I_S,n (Poisson, normalised
        units; the photon scale cancels).  Per projection 2×2 weighted normal equations in float64, Tikhonov
        λ_j = α·mean_pixels(M_jj) (the unweighted solver's rule in unit-free form)."""
        xp = B.get_xp(sample)
        ref = self.reference
        P, H, W = ref.shape
        if self._lap_w is None:
            self._lap_w = _laplacian_px(ref)  # ∇²I_R (px⁻²), reference-only: once
        lap = self._lap_w  # column −∇²I_R
        m00 = xp.zeros((H, W), np.float64)
        m01 = xp.zeros_like(m00)
        m11 = xp.zeros_like(m00)
        r0 = xp.zeros_like(m00)
        r1 = xp.zeros_like(m00)
        for n in range(P):
            w = 1.0 / xp.maximum(ref[n].astype(np.float64) + sample[n], 1e-6)
            a = ref[n].astype(np.float64)
            c = -lap[n].astype(np.float64)
            b = a - sample[n]
            m00 += w * a * a
            m01 += w * a * c
            m11 += w * c * c
            r0 += w * a * b
            r1 += w * c * b
        m00 += self.alpha * float(xp.mean(m00))
        m11 += self.alpha * float(xp.mean(m11))
        det = m00 * m11 - m01 * m01
        ok = xp.abs(det) > 1e-300
        det = xp.where(ok, det, 1.0)
        g = xp.where(ok, (m11 * r0 - m01 * r1) / det, 0.0)
        c = xp.where(ok, (m00 * r1 - m01 * r0) / det, 0.0)
        lap_phi = _finite((g * (self._k / self._delta)).astype(np.float32))  # ∇²φ = (k/Δ)·g
        d_eff = _finite((c * (self._p**2 / self._delta)).astype(np.float32))  # D_eff = c·p²/Δ
        if self._diffusion_only:
            return {"diffusion": d_eff}
        res = xp.zeros((H, W), np.float64)
        ss = xp.zeros((H, W), np.float64)
        for n in range(P):
            e = ref[n] - sample[n] - g * ref[n] + c * lap[n]
            res += e * e
            ss += sample[n].astype(np.float64) ** 2
        res = _finite(xp.sqrt(res / xp.maximum(ss, 1e-30)).astype(np.float32))
        phase, self.last_epsilon_per_m2 = _phase_from_laplacian(lap_phi, self.geometry, self.epsilon_per_m2,
                                                                self.border_px, self._ilap)
        return {"phase": _finite(phase), "diffusion": self._calibrated(d_eff), "residual": res}

    def _phase_object(self, sample):
        if self.noise_weighting:
            return self._weighted_phase_object(sample)
        if self._fast is not None:
            # ∇²φ = (k/Δ)·g [m⁻²], D_eff = c·p²/Δ [m] (Pavlov 2020 Eq. 6–7 with our column scaling)
            lap_phi, d_eff, res = self._fast.solve(sample, self._k / self._delta, self._p**2 / self._delta,
                                                   want_residual=not self._diffusion_only)
            if self._diffusion_only:
                return {"diffusion": d_eff}
            phase, self.last_epsilon_per_m2 = _phase_from_laplacian(lap_phi, self.geometry, self.epsilon_per_m2,
                                                                    self.border_px, self._ilap)
            return {"phase": _finite(phase), "diffusion": self._calibrated(d_eff), "residual": res}
        xp = B.get_xp(sample)
        ref = self.reference
        P, H, W = ref.shape
        lsq = self._lsq
        g = xp.empty((H, W), dtype=np.float32)
        c = xp.empty((H, W), dtype=np.float32)
        res = xp.empty((H, W), dtype=np.float32)
        for y0 in range(0, H, lsq.rows):
            y1 = min(H, y0 + lsq.rows)
            b = ref[:, y0:y1] - sample[:, y0:y1]  # Pavlov 2020 Eq. (6) left side
            if self._diffusion_only:
                x = lsq.solve_block(b, y0, y1)
            else:
                x, res[y0:y1] = lsq.solve_block(b, y0, y1, sample[:, y0:y1])
            g[y0:y1] = x[0]
            c[y0:y1] = x[1]
        lap_phi = g * np.float32(self._k / self._delta)  # ∇²φ = (k/Δ)·g   [m⁻²]
        d_eff = c * np.float32(self._p**2 / self._delta)  # D_eff = c·p²/Δ   [m]
        if self._diffusion_only:
            return {"diffusion": _finite(d_eff)}
        phase, self.last_epsilon_per_m2 = _phase_from_laplacian(_finite(lap_phi), self.geometry, self.epsilon_per_m2,
                                                                self.border_px, self._ilap)
        return {"phase": _finite(phase), "diffusion": self._calibrated(_finite(d_eff)), "residual": _finite(res)}

    def _attenuating(self, sample):
        xp = B.get_xp(sample)
        P, H, W = self.reference.shape
        rows = _rows_per_block(3 * P, W, self.block_rows)
        c = xp.empty((H, W), dtype=np.float32)
        g1 = xp.empty((H, W), dtype=np.float32)
        res = xp.empty((H, W), dtype=np.float32)
        for y0 in range(0, H, rows):
            y1 = min(H, y0 + rows)
            b = sample[:, y0:y1] * self._inv_ref[:, y0:y1]  # I_S,n/I_R,n
            qc = self._qc[:, y0:y1]
            s = xp.zeros((y1 - y0, W), dtype=np.float64)
            for n in range(P):
                s += qc[n] * b[n]
            # Alloo 2022: D·Δ/p² = (Σ det·num)·P/(P² + α) with the O(N) sums
            cc = s * self._gain[y0:y1]
            bm = xp.mean(b, axis=0, dtype=np.float64)
            gg = bm - cc * self._qm[y0:y1]  # G1 = mean(I_S/I_R) − ΔD·mean(q)
            c[y0:y1] = cc
            g1[y0:y1] = gg
            ms = xp.zeros_like(s)
            for n in range(P):
                r = b[n] - gg - cc * (qc[n] + self._qm[y0:y1])
                ms += r * r
            res[y0:y1] = xp.sqrt(ms / xp.maximum(xp.sum(xp.square(b, dtype=np.float64), axis=0), 1e-30))
        if self._diffusion_only:
            return {"diffusion": _finite(c * np.float32(self._p**2 / self._delta))}
        g2 = c  # ΔD/p² ; G = G1 − ∇²(ΔD) = G1 − ∇²_px(c)   (Alloo 2022, methods.md §1.11)
        gmap = g1 - laplacian(g2, 1.0)
        iob = single_material_tie(gmap, self.geometry, self.gamma)
        iob = xp.maximum(_finite(iob, 1.0), np.float32(1e-6))
        d = self._calibrated(_finite(c * np.float32(self._p**2 / self._delta)))  # D (m), includes I_ob
        d_eff = d / iob  # D_att = D / I_ob (Alloo 2022)
        phase = np.float32(self.gamma / 2) * xp.log(iob)  # φ = (γ/2) ln T (single material)
        return {
            "phase": _finite(phase),
            "transmission": _finite(iob, 1.0),
            "diffusion": _finite(d_eff),
            "residual": _finite(res),
        }

    def _rapid(self, sample):
        xp = B.get_xp(sample)
        ref = self.reference
        P, H, W = ref.shape
        lsq = self._lsq
        x_all = xp.empty((4, H, W), dtype=np.float32)
        res = xp.empty((H, W), dtype=np.float32)
        for y0 in range(0, H, lsq.rows):
            y1 = min(H, y0 + lsq.rows)
            b = ref[:, y0:y1] - sample[:, y0:y1]  # Δ × left side of Alloo 2023's system
            x, res[y0:y1] = lsq.solve_block(b, y0, y1, sample[:, y0:y1])
            x_all[:, y0:y1] = x
        p, delta, k = self._p, self._delta, self._k
        d = x_all[1] * np.float32(p * p / delta)  # D (m)
        d_dx = x_all[2] * np.float32(p / delta)  # ∂_xD (1)
        d_dy = x_all[3] * np.float32(p / delta)
        d_f = fuse_diffusion(_finite(d), _finite(d_dx), _finite(d_dy), p, self.fusion_r_m2)
        if self._diffusion_only:
            return {"diffusion": _finite(d_f)}
        # Alloo 2023 phase: (Δ/k)∇²φ I_R,n = I_R,n − I_S,n + Δ∇²(D_f I_R,n), LS over n (weights I_R,n)
        num = xp.zeros((H, W), dtype=np.float64)
        den = xp.zeros((H, W), dtype=np.float64)
        scale = np.float32(delta / (p * p))
        for n in range(P):
            cn = ref[n] - sample[n] + scale * laplacian(d_f * ref[n], 1.0)
            num += ref[n] * cn
            den += ref[n] * ref[n]
        lap_phi = (num / xp.maximum(den, 1e-30) * (k / delta)).astype(np.float32)
        phase, self.last_epsilon_per_m2 = _phase_from_laplacian(_finite(lap_phi), self.geometry, self.epsilon_per_m2,
                                                                self.border_px, self._ilap)
        out = {"phase": _finite(phase), "diffusion": self._calibrated(_finite(d_f)), "residual": _finite(res)}
        if self.gamma is not None:
            # single-material transmission φ = (γ/2) ln T → T = exp(2φ/γ); D_att = D_f/T (Alloo 2023)
            out["transmission"] = _finite(xp.exp(xp.minimum(2 * phase / np.float32(self.gamma), 50)), 1.0)
            out["diffusion"] = _finite(out["diffusion"] / xp.maximum(out["transmission"], 1e-6))
        return out


class DirectionalMISTRetriever(Retriever):
    """Directional-dark-field MIST: tensor extension of Pavlov 2020 Eq. (9)–(10).

    Models (methods.md §1.12; design.md tensor convention, 2·D_xy multiplies ∂_xy), per pixel over
    N ≥ 4 positions, slowly varying D (the derivatives of D·I_R are dropped as in Pavlov 2020 Eq. 3–5):

    * ``"phase-object"`` (default)::

          I_R,n − I_S,n = (Δ/k) I_R,n ∇²φ − Δ (D_xx ∂_xx + D_yy ∂_yy + 2 D_xy ∂_xy) I_R,n

      unknowns ``[∇²φ, D_xx, D_yy, D_xy]``; φ by the inverse Laplacian.  It assumes no attenuation:
      a sample that absorbs a few per cent is read as lensing (φ then wrong; D and orientation not).
    * ``"attenuating"`` — single-material object (Pavlov et al. 2021, arXiv:2105.10693; popcorn
      ``MISTII_2``; the isotropic analogue is Alloo 2022, methods.md §1.11)::

          I_S,n / I_R,n = G1 + (G_xx ∂_xx + G_yy ∂_yy + 2 G_xy ∂_xy) I_R,n / I_R,n ,  G_ij = Δ D_ij I_ob

      unknowns ``[G1, G_xx, G_yy, G_xy]``; then ``G = G1 − (∂_xx G_xx + ∂_yy G_yy + 2∂_xy G_xy)`` is
      the single-material TIE image, ``I_ob`` from G by the Pavlov/Paganin filter (methods.md §1.9),
      ``φ = (γ/2) ln I_ob`` and ``D_ij = G_ij/(Δ I_ob)``.  Needs γ = δ/β.

    The 4×4 normal matrices are inverted once per reference (float64).

    Parameters
    ----------
    reference : array (P, H, W)
    geometry : Geometry
    model : {"phase-object", "attenuating"}
    gamma : float, optional
        δ/β of the sample material; required for ``model="attenuating"``.
    alpha : float
        Tikhonov weight relative to the equilibrated normal matrix (default 1e-3).
    epsilon_per_m2 : float, optional
        Inverse-Laplacian ε (m⁻², phase-object model) or ``"auto"`` (default), as :class:`MISTRetriever`.
    border_px, block_rows : int
        As :class:`MISTRetriever`.
    blur_calibration : bool
        As :class:`MISTRetriever` (applied to the tensor's eigenvalues).

    Outputs: ``phase`` (rad), ``diffusion`` (trace/2 = isotropic-equivalent D, m),
    ``diffusion_tensor`` (3, H, W) = D_xx, D_yy, D_xy (m), ``residual``; ``transmission`` (I_ob)
    for ``"attenuating"``.
    """

    name: ClassVar[str] = "mist-directional"
    outputs: ClassVar[tuple[str, ...]] = ("phase", "transmission", "diffusion", "diffusion_tensor", "residual")
    min_positions: ClassVar[int] = 4

    def __init__(
        self,
        reference,
        geometry: Geometry,
        *,
        model: str = "phase-object",
        gamma: float | None = None,
        alpha: float = 1e-3,
        epsilon_per_m2: float | str | None = None,
        border_px: int = 8,
        block_rows: int | None = None,
        blur_calibration: bool = False,
    ):
        super().__init__(reference, geometry)
        if model not in ("phase-object", "attenuating"):
            raise ParameterError(f"directional MIST model must be 'phase-object' or 'attenuating'; got {model!r}")
        if model == "attenuating" and gamma is None:
            raise ParameterError("directional MIST model 'attenuating' needs gamma = delta/beta of the sample material")
        if gamma is not None and not (float(gamma) > 0 and math.isfinite(float(gamma))):
            raise ParameterError(f"gamma (delta/beta) must be a positive number, got {gamma!r}")
        if not (float(alpha) >= 0 and math.isfinite(float(alpha))):
            raise ParameterError(f"alpha must be finite and >= 0, got {alpha!r}")
        epsilon_per_m2 = _check_epsilon(epsilon_per_m2)
        ref = self.reference
        P, H, W = ref.shape
        if min(H, W) < 4:
            raise InputError(f"mist-directional: images must be at least 4x4 pixels, got {(H, W)}")
        self.model = model
        self.gamma = None if gamma is None else float(gamma)
        dxx, dyy, dxy = hessian(ref, 1.0)  # px⁻²
        if model == "phase-object":
            # columns of [g, cxx, cyy, cxy]: g = (Δ/k)∇²φ, c_ij = Δ D_ij / p²   (b = I_R − I_S)
            dxx *= -1
            dyy *= -1
            dxy *= -2
            cols = [ref, dxx, dyy, dxy]
            self._inv_ref = None
            self.outputs = ("phase", "diffusion", "diffusion_tensor", "residual")
        else:
            # columns of [G1, cxx, cyy, cxy]: 1, ∂_xxI_R/I_R, ∂_yyI_R/I_R, 2∂_xyI_R/I_R (px⁻²);
            # c_ij = Δ D_ij I_ob / p²   (b = I_S/I_R)
            inv_ref = (1.0 / _safe_positive(ref)).astype(np.float32)
            dxx *= inv_ref
            dyy *= inv_ref
            dxy *= inv_ref
            dxy *= 2
            xp = B.get_xp(ref)
            cols = [xp.ones_like(ref), dxx, dyy, dxy]
            self._inv_ref = inv_ref
            self.outputs = ("phase", "transmission", "diffusion", "diffusion_tensor", "residual")
        self.alpha = float(alpha)
        self._lsq = _PixelLSQ(cols, self.alpha, block_rows)
        self.epsilon_per_m2 = "auto" if epsilon_per_m2 is None else epsilon_per_m2
        self.border_px = _check_border_px(border_px, *self.reference.shape[-2:])
        self._p = geometry.pixel_size_m
        self._delta = geometry.sample_detector_distance_m
        self._k = geometry.wavenumber_per_m
        self.parameters = {
            "model": "phase-object-directional" if model == "phase-object" else "attenuating-directional",
            "alpha": self.alpha,
            "epsilon_per_m2": self.epsilon_per_m2,
            "epsilon_rule": _EPS_RULE if self.epsilon_per_m2 == "auto" else "fixed",
            "gamma": self.gamma,
            "border_px": self.border_px,
            "n_positions": P,
            "sample_detector_distance_m": self._delta,
        }
        self._ilap = (_inverse_laplacian_filter((H, W), self._p, self.epsilon_per_m2, B.get_xp(ref))
                      if model == "phase-object" and self.epsilon_per_m2 != "auto" else None)
        self.last_epsilon_per_m2 = None
        self._diffusion_only = False
        self._calib = None
        self.blur_calibration = bool(blur_calibration)
        if self.blur_calibration:
            kw = dict(model=model, gamma=gamma, alpha=alpha, epsilon_per_m2=epsilon_per_m2, border_px=border_px,
                      blur_calibration=False)
            self._calib = _blur_calibration_curve(lambda sub: DirectionalMISTRetriever(sub, geometry, **kw), ref, geometry)
            self.parameters["blur_calibration"] = {
                "true_diffusion_m": [float(v) for v in self._calib[0]],
                "first_order_estimate_m": [float(v) for v in self._calib[1]],
            }
        else:
            self.parameters["blur_calibration"] = None

    def _retrieve(self, sample) -> dict[str, Any]:
        xp = B.get_xp(sample)
        ref = self.reference
        P, H, W = ref.shape
        lsq = self._lsq
        x_all = xp.empty((4, H, W), dtype=np.float32)
        res = xp.empty((H, W), dtype=np.float32)
        for y0 in range(0, H, lsq.rows):
            y1 = min(H, y0 + lsq.rows)
            if self._inv_ref is None:
                b = ref[:, y0:y1] - sample[:, y0:y1]  # Pavlov 2020 Eq. (10) left side
            else:
                b = sample[:, y0:y1] * self._inv_ref[:, y0:y1]  # I_S,n/I_R,n (single material)
            x, res[y0:y1] = lsq.solve_block(b, y0, y1, sample[:, y0:y1])
            x_all[:, y0:y1] = x
        if self._inv_ref is None:
            out = self._phase_object(x_all, res)
            if not self._diffusion_only:
                # model check (issue 14), as MISTRetriever._model_check
                w = attenuation_warning(xp.mean(ref, axis=0, dtype=np.float64), sample, model="phase-object",
                                        fix="use --param model=attenuating gamma=<delta/beta>, or --method tie "
                                            "--param gamma=<delta/beta>")
                if w:
                    out["warnings"] = [w]
            return out
        return self._attenuating(x_all, res)

    def _phase_object(self, x_all, res):
        xp = B.get_xp(x_all)
        lap_phi = x_all[0] * np.float32(self._k / self._delta)
        tensor = x_all[1:] * np.float32(self._p**2 / self._delta)  # D_ij = c_ij p²/Δ  [m]
        tensor = _finite(tensor)
        if self._diffusion_only:
            return {"diffusion": 0.5 * (tensor[0] + tensor[1])}
        tensor = _finite(_calibrate_tensor(tensor, self._calib))
        phase, self.last_epsilon_per_m2 = _phase_from_laplacian(_finite(lap_phi), self.geometry, self.epsilon_per_m2,
                                                                self.border_px, self._ilap)
        return {
            "phase": _finite(phase),
            "diffusion": _finite(0.5 * (tensor[0] + tensor[1])),
            "diffusion_tensor": xp.ascontiguousarray(tensor),
            "residual": _finite(res),
        }

    def _attenuating(self, x_all, res):
        xp = B.get_xp(x_all)
        c = _finite(x_all[1:])  # c_ij = Δ D_ij I_ob / p²
        scale = np.float32(self._p**2 / self._delta)
        if self._diffusion_only:  # calibration on the reference: I_ob = 1
            return {"diffusion": 0.5 * (c[0] + c[1]) * scale}
        # G = G1 − (∂_xx c_xx + ∂_yy c_yy + 2∂_xy c_xy) (px derivatives; Pavlov 2021 / methods.md §1.12)
        hxx, hyy, hxy = hessian(c, 1.0)  # of each of c_xx, c_yy, c_xy: use ∂_xx c_xx, ∂_yy c_yy, ∂_xy c_xy
        gmap = _finite(x_all[0]) - (hxx[0] + hyy[1] + 2 * hxy[2])
        iob = single_material_tie(gmap, self.geometry, self.gamma)  # Pavlov PRA 2020 filter (methods.md §1.9)
        iob = xp.maximum(_finite(iob, 1.0), np.float32(1e-6))
        tensor = _finite(c * scale / iob)  # D_ij = c_ij p² / (Δ I_ob)
        tensor = _finite(_calibrate_tensor(tensor, self._calib))
        phase = np.float32(self.gamma / 2) * xp.log(iob)  # φ = (γ/2) ln I_ob (single material)
        return {
            "phase": _finite(phase),
            "transmission": _finite(iob, 1.0),
            "diffusion": _finite(0.5 * (tensor[0] + tensor[1])),
            "diffusion_tensor": xp.ascontiguousarray(tensor),
            "residual": _finite(res),
        }


# --------------------------------------------------------------------------- functions
def mist(*, reference, sample, geometry: Geometry, model: str = "phase-object", **params) -> dict[str, Any]:
    """MIST retrieval of one projection (plain-function form of :class:`MISTRetriever`).

    Parameters
    ----------
    reference, sample : array (P, H, W)
        Normalised reference and sample stacks (same diffuser positions, same order).
    geometry : Geometry
    model : {"phase-object", "attenuating", "rapid", "transport"}
    **params
        ``alpha``, ``epsilon_per_m2``, ``gamma``, ``fusion_r_m2``, ``border_px``,
        ``block_rows``, ``blur_calibration`` (see :class:`MISTRetriever`).

    Returns
    -------
    dict of float32 (H, W) maps: ``phase`` (rad), ``diffusion`` (m), ``residual`` (1),
    ``transmission`` (1) where the model gives it, ``displacement`` (2, H, W) px for
    ``"transport"``.
    """
    ref, smp = _check_pair(reference, sample, 2, "mist")
    return MISTRetriever(ref, geometry, model=model, **params)(smp)


def mist_attenuating(*, reference, sample, geometry: Geometry, gamma: float, **params) -> dict[str, Any]:
    """MIST for attenuating single-material objects (Alloo et al. 2022), see :class:`MISTRetriever`."""
    return mist(reference=reference, sample=sample, geometry=geometry, model="attenuating", gamma=gamma, **params)


def mist_rapid(*, reference, sample, geometry: Geometry, **params) -> dict[str, Any]:
    """MIST for rapidly varying dark field (Alloo et al. 2023), see :class:`MISTRetriever`."""
    return mist(reference=reference, sample=sample, geometry=geometry, model="rapid", **params)


def mist_directional(*, reference, sample, geometry: Geometry, **params) -> dict[str, Any]:
    """Directional MIST (tensor D), see :class:`DirectionalMISTRetriever`.

    ``model="phase-object"`` (default) or ``"attenuating"`` (single material, needs ``gamma``).
    Returns ``phase``, ``diffusion``, ``diffusion_tensor`` (3, H, W) = D_xx, D_yy, D_xy
    (m) and ``residual``; ``transmission`` for ``"attenuating"``.
    """
    ref, smp = _check_pair(reference, sample, 4, "mist-directional")
    return DirectionalMISTRetriever(ref, geometry, **params)(smp)
