"""UMPA — Unified Modulated Pattern Analysis (Zdora et al., PRL 118, 203903 (2017)).

For every pixel a window of ``(2Nw+1)²`` pixels (weights: outer product of two Hamming
windows, normalised to sum 1) is compared, over all diffuser positions n, with the
reference window displaced by a candidate integer shift ``s``; the dark-field model
(methods.md §1.3) is

    I_S,n(r + j) ≈ β·⟨I_R,n⟩(r − s) + K·I_R,n(r + j − s)          (Zdora 2017, Eq. 3 form)

with ``⟨I_R,n⟩`` the window-weighted mean of reference frame n (UMPA++ choice),
``T = β + K`` and visibility ``v = K/T``.  The no-DF model sets ``β = 0``.  The cost is the
window-weighted squared misfit, minimised in closed form for (β, K) at each shift; the
integer minimum over ``[-max_shift, max_shift]²`` is refined to sub-pixel by a
least-squares paraboloid on its 3×3 neighbourhood (methods.md §1.1 (b)).

**Sign.** Original UMPA reports ``dx, dy = −u``.  Here the candidate shift ``s`` compares
``I_S(r)`` with ``I_R(r − s)``, so the output ``displacement`` is **+u** (design.md).

**Vectorisation.** For each of the ``(2s+1)²`` shifts the window sums are separable
sliding sums over the whole image (``tracking.window_sum``); the cost volume is held for
a band of rows at a time (``chunk_rows``), so memory is bounded.  Second moments are
accumulated on data with the global reference mean removed, and the misfit is assembled
from centred window moments plus a per-frame mean term, so float32 does not cancel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve.base import Retriever, as_stack
from xspeckle.retrieve.tracking import (
    argmin_subpixel,
    fill_border,
    hamming_window,
    maps_with_phase,
    refine_esm,
    row_chunks,
    shift_grid,
    shifted,
    window_sum,
)

__all__ = ["umpa", "UMPARetriever"]

_SUBPIX = ("gauss-newton", "paraboloid", "separable", "none")


def _check(window: int, max_shift: int, subpixel: str, step: int) -> None:
    if int(window) != window or window < 0 or window > 50:
        raise ParameterError(f"umpa: window (Nw, half-width in px) must be an integer 0..50, got {window!r}")
    if int(max_shift) != max_shift or max_shift < 0 or max_shift > 64:
        raise ParameterError(f"umpa: max_shift must be an integer 0..64 px, got {max_shift!r}")
    if subpixel not in _SUBPIX:
        raise ParameterError(f"umpa: subpixel must be one of {_SUBPIX}, got {subpixel!r}")
    if int(step) != step or step < 1:
        raise ParameterError(f"umpa: step must be a positive integer, got {step!r}")


def _reference_terms(ref, w1d, offset):
    """Reference-only maps (full image): centred stack, window means and window variances."""
    xp = B.get_xp(ref)
    rc = ref - np.float32(offset)  # centred data: second moments do not cancel in float32
    m = window_sum(rc, w1d)  # ⟨I_R,n⟩ − c, window-weighted mean (Σw = 1)
    var = window_sum(rc * rc, w1d)
    var -= m * m  # window variance of each frame
    a = xp.sum(var, axis=0)  # A = Σ_n var_w(I_R,n)
    return rc, m, a


def _band(sample, rc, m, a, offset, w1d, max_shift, df, subpixel, step, ref=None):
    """UMPA on a band of rows: returns (ux, uy, T, v, cost, norm) for every pixel of the band."""
    xp = B.get_xp(sample)
    c = np.float32(offset)
    N, H, W = sample.shape
    s = int(max_shift)
    sc = sample - c
    sm = window_sum(sc, w1d)  # ⟨I_S,n⟩ − c
    v_s = window_sum(sc * sc, w1d)
    v_s -= sm * sm
    V = xp.sum(v_s, axis=0)  # Σ_n var_w(I_S,n)
    del v_s
    sm_raw = sm + c
    U = xp.sum(sm_raw * sm_raw, axis=0)  # Σ_n ⟨I_S,n⟩², normalises the residual
    padw = ((0, 0), (s, s), (s, s))
    rcp = xp.pad(rc, padw, mode="edge")
    mp = xp.pad(m, padw, mode="edge")
    ap = xp.pad(a, padw[1:], mode="edge")
    shifts = shift_grid(s)
    track = not (df and step == 1)  # else T, K are re-evaluated at the minimum after the loop
    Hs, Ws = sample[:, ::step, ::step].shape[1:]
    cost = xp.empty((len(shifts), Hs, Ws), dtype=np.float32)
    best = xp.full((Hs, Ws), np.inf, dtype=np.float32)
    bestT = xp.ones((Hs, Ws), dtype=np.float32)
    bestv = xp.ones((Hs, Ws), dtype=np.float32)
    bestK = xp.ones((Hs, Ws), dtype=np.float32)
    bestM = xp.zeros((Hs, Ws), dtype=np.float32)
    tiny = np.float32(1e-12)
    for k, (dx, dy) in enumerate(shifts):
        r_s = shifted(rcp, s, dx, dy, H, W)
        m_s = shifted(mp, s, dx, dy, H, W)
        A = shifted(ap, s, dx, dy, H, W)
        # centred window covariance C = Σ_n cov_w(I_S,n, I_R,n(· − s))
        prod = xp.einsum("nhw,nhw->hw", sc, r_s)  # Σ_n (I_S,n − c)(I_R,n(· − s) − c)
        C = window_sum(prod, w1d)
        C -= xp.einsum("nhw,nhw->hw", sm, m_s)
        m_raw = m_s + c
        # per-frame means: T fits ⟨I_S,n⟩ ≈ T·⟨I_R,n⟩ (DF: T = β + K; methods.md §1.3)
        t4 = xp.einsum("nhw,nhw->hw", sm_raw, m_raw)
        t2 = xp.einsum("nhw,nhw->hw", m_raw, m_raw)
        Asafe = xp.maximum(A, tiny)
        if df:
            K = C / Asafe  # speckle amplitude factor K = cov/var (closed form of methods.md §1.3)
            T = t4 / xp.maximum(t2, tiny)
            mean_term = xp.sum((sm_raw - T * m_raw) ** 2, axis=0)
        else:
            # β = 0: one factor K = T for means and fluctuations together
            T = (t4 + C) / xp.maximum(t2 + A, tiny)
            K = T
            mean_term = xp.sum((sm_raw - T * m_raw) ** 2, axis=0)
        # L = Σ_n Σ_w w (I_S − β⟨I_R⟩ − K I_R)² = mean misfit + (V − 2KC + K²A)
        L = V - 2 * K * C + K * K * A
        L += mean_term
        L = xp.maximum(L, 0)
        if step > 1:
            L = L[::step, ::step]
            T = T[::step, ::step]
            K = K[::step, ::step]
            mean_term = mean_term[::step, ::step]
        cost[k] = L
        if track:
            better = L < best
            best = xp.where(better, L, best)
            bestT = xp.where(better, T, bestT)
            bestv = xp.where(better, K / xp.where(xp.abs(T) > tiny, T, tiny), bestv)
            bestK = xp.where(better, K, bestK)
            bestM = xp.where(better, mean_term, bestM)
    search_mode = "paraboloid" if subpixel == "gauss-newton" else subpixel
    ux, uy, idx, cmin = argmin_subpixel(cost, s, search_mode)
    del cost
    if not track:
        # DF model, full grid: re-evaluate T, K and the mean misfit at the integer minimum from the
        # padded reference maps (a gather) instead of tracking them through the shift loop
        n = 2 * s + 1
        yy = xp.arange(H)[:, None] + s - (idx // n - s)
        xx = xp.arange(W)[None, :] + s - (idx % n - s)
        m_raw = mp[:, yy, xx] + c
        t4 = xp.einsum("nhw,nhw->hw", sm_raw, m_raw)
        t2 = xp.einsum("nhw,nhw->hw", m_raw, m_raw)
        bestT = t4 / xp.maximum(t2, tiny)
        bestM = xp.sum((sm_raw - bestT * m_raw) ** 2, axis=0)
        # L = V − C²/A + mean ⇒ K = C/A = sqrt((V + mean − L)/A) (C > 0 at a match)
        A = xp.maximum(ap[yy, xx], tiny)
        bestK = xp.sqrt(xp.maximum(V + bestM - cmin, 0) / A)
        bestv = bestK / xp.where(xp.abs(bestT) > tiny, bestT, tiny)
    norm = U[::step, ::step] if step > 1 else U
    if subpixel == "gauss-newton":
        # one symmetric Gauss–Newton step on the same windowed DF misfit (tracking.refine_esm)
        ux, uy, K, rho = refine_esm(ref, sample, ux, uy, bestK, w1d, centre="frame", max_shift=s)
        if df:
            # The joint (δ, K) Gauss–Newton fit sharpens K where the speckle is well modelled, but on
            # low-visibility real speckle (FourRod: 6 %) with strong scatterers it can run away
            # (negative or > 2×).  Keep it only where it stays within a factor 2 of the closed-form
            # K = cov/var at the integer shift (methods.md §1.3); elsewhere use the closed form.
            ok = (K > 0.5 * bestK) & (K < 2 * bestK + np.float32(0.05))
            K = xp.where(ok, K, bestK)
            bestv = K / xp.where(xp.abs(bestT) > tiny, bestT, tiny)
        cmin = V * (1 - rho * rho) + bestM  # misfit of the refined fit: centred part + mean part
    return ux, uy, bestT, bestv, cmin / xp.maximum(norm, np.float32(1e-12)), None


def umpa(
    *,
    reference,
    sample,
    window: int = 2,
    max_shift: int = 4,
    df: bool = True,
    subpixel: str = "gauss-newton",
    step: int = 1,
    roi: tuple[int, int, int, int] | None = None,
    chunk_rows: int | None = None,
    fill: bool = True,
    progress=None,
    _precomputed=None,
) -> dict[str, Any]:
    """UMPA speckle matching (Zdora et al. 2017) of a sample stack against a reference stack.

    Parameters
    ----------
    reference, sample : array, shape (N, H, W) or (H, W)
        Flat-normalised speckle images (float32; NumPy or CuPy), N diffuser positions.
    window : int
        ``Nw``: the window is ``(2Nw+1)²`` px, Hamming-weighted (default 2 → 5×5 as in the paper).
    max_shift : int
        Largest integer shift searched, px (the search grid is ``[-s, s]²``).
    df : bool
        Fit the dark-field model (β, K); ``False`` fits transmission only (visibility = 1).
    subpixel : {"gauss-newton", "paraboloid", "separable", "none"}
        Sub-pixel refinement.  ``"paraboloid"``: least-squares paraboloid on the 3×3 cost
        neighbourhood (the classic choice; ≈0.07 px RMS pattern noise with a 5×5 window).
        ``"gauss-newton"`` (default): after the paraboloid, one symmetric Gauss–Newton step on the
        same windowed DF misfit at the rounded shift (:func:`~xspeckle.retrieve.tracking.refine_esm`;
        O(δ³) linearisation error, no interpolation); K (hence visibility) and the residual then come
        from that sub-pixel fit, T from the per-frame means at the rounded shift.
    step : int
        Evaluate every ``step``-th pixel only (outputs are ``(ceil(H/step), ceil(W/step))``);
        ``step > 1`` uses the paraboloid refinement.
    roi : (y0, y1, x0, x1), optional
        Process only this region (px, Python slice bounds); the inputs are cut with a halo of
        ``Nw + max_shift + 4`` px where available, and the outputs cover the ROI only (a preview).
    chunk_rows : int, optional
        Rows processed at once (bounds memory: the cost volume is ``(2s+1)²·chunk_rows·W`` float32).
        Default: chosen so that the volume stays below about 256 MB.
    progress : callable(rows_done, rows_total), optional
        Called after every band of rows (bands are then at most ``max(64, H // 16)`` rows).
    fill : bool
        Fill the ``Nw + max_shift`` border (not computable) from the nearest valid pixel.

    Returns
    -------
    dict with
        ``displacement`` (2, H, W) float32, px, (x, y), **+u**: ``I_S(r) ≈ T·I_R(r − u)``;
        ``transmission`` (H, W); ``visibility`` (H, W) = K/T (1 = no scattering);
        ``residual`` (H, W) = sqrt(L_min / Σ_n⟨I_S,n⟩²), the window-weighted RMS misfit of the
        model relative to the RMS window mean of the sample;
        ``margin`` int, px of border that was filled.
    """
    _check(window, max_shift, subpixel, step)
    ref = as_stack(reference, "reference")
    sam = as_stack(sample, "sample")
    if ref.shape != sam.shape:
        raise ParameterError(f"umpa: sample {tuple(sam.shape)} and reference {tuple(ref.shape)} differ in shape")
    if roi is not None:
        H0, W0 = sam.shape[-2:]
        try:
            y0, y1, x0, x1 = (int(v) for v in roi)
        except (TypeError, ValueError):
            raise ParameterError(f"umpa: roi must be (y0, y1, x0, x1), got {roi!r}") from None
        if not (0 <= y0 < y1 <= H0 and 0 <= x0 < x1 <= W0):
            raise ParameterError(f"umpa: roi {roi!r} is outside the {H0}x{W0} image or empty")
        hr = int(window) + int(max_shift) + 4  # + the 9-point gradient stencil of the refinement
        a0, a1, b0, b1 = max(0, y0 - hr), min(H0, y1 + hr), max(0, x0 - hr), min(W0, x1 + hr)
        res = umpa(reference=ref[:, a0:a1, b0:b1], sample=sam[:, a0:a1, b0:b1], window=window, max_shift=max_shift,
                   df=df, subpixel=subpixel, step=1, chunk_rows=chunk_rows, fill=fill)
        crop = (slice(y0 - a0, y1 - a0), slice(x0 - b0, x1 - b0))
        return {k: (v[..., crop[0], crop[1]] if k != "margin" else v) for k, v in res.items()}
    xp = B.get_xp(sam)
    N, H, W = sam.shape
    w1d = hamming_window(window)
    if _precomputed is None:
        offset = float(xp.mean(ref))
        rc, m, a = _reference_terms(ref, w1d, offset)
    else:
        offset, rc, m, a = _precomputed
    if step > 1 and subpixel == "gauss-newton":
        subpixel = "paraboloid"
    s = int(max_shift)
    halo = int(window) + s
    band_halo = halo + (int(window) + 2 if subpixel == "gauss-newton" else 0)
    if chunk_rows is None:
        chunk_rows = max(8, int(256e6 / (4 * (2 * s + 1) ** 2 * W * max(1, N // 4 + 1))))
        if progress is not None:  # bands small enough for a progress bar with an ETA
            chunk_rows = min(chunk_rows, max(64, H // 16))
    if step > 1:
        chunk_rows = max(step, (chunk_rows // step) * step)
    Ho = -(-H // step)
    Wo = -(-W // step)
    out = {k: xp.empty((Ho, Wo), dtype=np.float32) for k in ("ux", "uy", "T", "v", "res")}
    halo_r = -(-halo // step) * step  # a multiple of step keeps the sampling grid global
    band_halo = -(-band_halo // step) * step
    for y0, y1, a0, a1 in row_chunks(H, chunk_rows, band_halo):
        gn = subpixel == "gauss-newton"
        ux, uy, T, v, mis, _ = _band(
            sam[:, a0:a1], rc[:, a0:a1], m[:, a0:a1], a[a0:a1], offset, w1d, s, df, subpixel, step,
            ref=ref[:, a0:a1] if gn else None,
        )
        o0 = (y0 - a0) // step
        o1 = o0 + (-(-(y1 - y0) // step))
        r0 = y0 // step
        r1 = r0 + (o1 - o0)
        out["ux"][r0:r1] = ux[o0:o1]
        out["uy"][r0:r1] = uy[o0:o1]
        out["T"][r0:r1] = T[o0:o1]
        out["v"][r0:r1] = v[o0:o1] if df else 1.0
        out["res"][r0:r1] = xp.sqrt(xp.maximum(mis[o0:o1], 0))
        if progress is not None:
            progress(y1, H)
    margin = -(-halo // step)
    res = {
        "displacement": xp.stack([out["ux"], out["uy"]]),
        "transmission": out["T"],
        "visibility": out["v"],
        "residual": out["res"],
    }
    if fill:
        res = {k: fill_border(v, margin) for k, v in res.items()}
    res["margin"] = margin
    return res


class UMPARetriever(Retriever):
    """UMPA (Zdora et al. 2017) as a :class:`~xspeckle.retrieve.base.Retriever`.

    Parameters
    ----------
    reference : array (P, H, W)
        Flat-normalised reference speckle stack.
    geometry : Geometry
    window : int
        ``Nw`` (window ``(2Nw+1)²``, default 2 → 5×5 as in Zdora 2017).
    max_shift : int
        Search radius in px (default 4).
    df : bool
        Dark-field model (default True; gives ``visibility``).
    subpixel : {"gauss-newton", "paraboloid", "separable", "none"}
        See :func:`umpa` (default ``"gauss-newton"``).
    integrator : {"fc", "kottler"}
        Gradient integration for ``phase``.
    chunk_rows : int, optional
        Row band processed at once (memory bound).

    Outputs: ``phase`` (rad), ``transmission``, ``visibility``, ``displacement`` (2, H, W) px = +u,
    ``residual``; every map (H, W) and finite.  ``parameters["margin_px"]`` is the filled border.
    """

    name = "umpa"
    summary = "Unified Modulated Pattern Analysis (Zdora et al., PRL 2017)"
    outputs = ("phase", "transmission", "visibility", "displacement", "residual")
    min_positions = 1

    def __init__(
        self,
        reference,
        geometry: Geometry,
        *,
        window: int = 2,
        max_shift: int = 4,
        df: bool = True,
        subpixel: str = "gauss-newton",
        integrator: str = "fc",
        chunk_rows: int | None = None,
    ):
        super().__init__(reference, geometry)
        _check(window, max_shift, subpixel, 1)
        if integrator not in ("fc", "kottler"):
            raise ParameterError(f"umpa: integrator must be 'fc' or 'kottler', got {integrator!r}")
        xp = B.get_xp(self.reference)
        w1d = hamming_window(window)
        offset = float(xp.mean(self.reference))
        rc, m, a = _reference_terms(self.reference, w1d, offset)
        self._pre = (offset, rc, m, a)
        self.window = int(window)
        self.max_shift = int(max_shift)
        self.df = bool(df)
        self.subpixel = subpixel
        self.integrator = integrator
        self.chunk_rows = chunk_rows
        #: optional callable(rows_done, rows_total) for progress inside one projection (set by the pipeline)
        self.progress = None
        self.parameters = {
            "window": self.window,
            "window_px": 2 * self.window + 1,
            "window_weights": "hamming",
            "max_shift": self.max_shift,
            "df": self.df,
            "subpixel": subpixel,
            "integrator": integrator,
            "margin_px": self.window + self.max_shift,
            "sign": "+u (I_S(r) = T I_R(r - u))",
        }

    def _retrieve(self, sample) -> dict[str, Any]:
        r = umpa(
            reference=self.reference,
            sample=sample,
            window=self.window,
            max_shift=self.max_shift,
            df=self.df,
            subpixel=self.subpixel,
            chunk_rows=self.chunk_rows,
            progress=self.progress,
            _precomputed=self._pre,
        )
        return maps_with_phase(r, self.geometry, integrator=self.integrator)
