"""Rotation-axis (centre) finding for parallel-beam scans.

The projection at ``theta + 180`` degrees is the mirror image of the one at ``theta`` about the axis:
``p_180(t) = p_0(2c - t)`` (detector column t, axis c). Flipping ``p_180`` left-right gives
``p_0(t + d)`` with ``d = 2c - (W - 1)``, so the shift that best aligns ``p_0`` with the flipped
``p_180`` gives ``c = (W - 1 + d) / 2``. The shift is found by FFT cross-correlation (integer peak), then
refined to 0.01 px by maximising the Fourier-interpolated correlation ``Re sum F0 conj(F1) exp(2 pi i k d)``
(the band-limited cross-correlation evaluated off-grid).

Both the pair and the centre-of-mass fit use the raw projection values, so a smooth error in retrieved
phase (PWF leaves an antisymmetric low-frequency component) moves them by pixels. The reconstruction
metric (:func:`find_center_metric`, used by ``"auto"``) instead reconstructs a few rows at candidate axes
and keeps the cleanest slice, the approach of Donath et al., J. Opt. Soc. Am. A 23, 1048 (2006) (they
minimise the histogram entropy, available here as ``metric="entropy"``). The default criterion is the
energy of wrong-sign values ("negativity", our choice): with a wrong axis each edge is back-projected into
arcs whose ramp-filter undershoot has the wrong sign. A slow error of the projections is nearly constant
across each projection, which the ramp filter suppresses, so it barely changes either criterion.
"""

from __future__ import annotations

import numpy as np

from xspeckle import backend
from xspeckle.errors import InputError

__all__ = [
    "find_center_pair", "find_center", "find_center_com", "find_center_metric", "opposite_pair", "CENTER_METHODS",
]

#: methods of :func:`find_center`
CENTER_METHODS = ("auto", "metric", "pair", "com")


def opposite_pair(theta_deg, tol_deg: float | None = None) -> tuple[int, int]:
    """Indices ``(i, j)`` of the two angles closest to 180 degrees apart.

    Raises :class:`InputError` when no pair lies within ``tol_deg`` of 180 (default half the median step).
    """
    th = np.asarray(theta_deg, dtype=np.float64).reshape(-1)
    if th.size < 2:
        raise InputError("centre finding needs at least two angles 180 degrees apart; pass --center PX")
    step = np.median(np.abs(np.diff(np.sort(th)))) if th.size > 2 else 180.0
    tol = 0.5 * step + 1e-9 if tol_deg is None else tol_deg
    gap = np.abs(np.abs(th[None, :] - th[:, None]) - 180.0)
    i, j = np.unravel_index(np.argmin(gap), gap.shape)
    if gap[i, j] > tol:
        raise InputError(
            f"no two projections are 180 degrees apart (closest pair {abs(th[j] - th[i]):.3f} deg); pass --center PX"
        )
    return (int(i), int(j)) if th[i] < th[j] else (int(j), int(i))


def find_center_pair(p0, p180, *, search_px: float | None = None) -> float:
    """Rotation axis (detector column, sub-pixel) from two projections 180 degrees apart.

    Parameters
    ----------
    p0, p180 : array (W,) or (H, W)
        Projections (or sinogram rows) at theta and theta + 180 degrees; several rows are averaged
        in the correlation. Any line-integral quantity (phase, -ln T, ...).
    search_px : float, optional
        Limit |c - (W-1)/2| to this many pixels (default W/4).

    Returns
    -------
    float: axis position c as a column index (``(W-1)/2`` for a centred axis).
    """
    a = np.atleast_2d(np.asarray(backend.asnumpy(p0), dtype=np.float64))
    b = np.atleast_2d(np.asarray(backend.asnumpy(p180), dtype=np.float64))[:, ::-1]
    if a.shape != b.shape:
        raise InputError(f"centre finding: projections have shapes {a.shape} and {b.shape}; they must match")
    w = a.shape[-1]
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    win = 1.0  # no taper: a window would weight p0 and the flipped p180 differently off-axis; 2x padding stops wrap-around
    n = 2 * w
    Fa = np.fft.rfft(a * win, n=n)
    Fb = np.fft.rfft(b * win, n=n)
    X = (Fa * np.conj(Fb)).sum(axis=0)  # cross-spectrum, rows summed
    cc = np.fft.irfft(X, n=n)  # cc[d] = sum_t a(t + d) b(t)
    lim = w / 4 if search_px is None else float(search_px)
    dmax = int(np.ceil(2 * lim))
    lags = np.arange(-dmax, dmax + 1)
    # b(t) = a(t + d): cc[m] = sum_t a(t + m) a(t + d) peaks at m = d
    d0 = lags[np.argmax(cc[np.mod(lags, n)])]
    k = np.fft.rfftfreq(n)
    wk = np.where((k > 0) & (k < 0.5), 2.0, 1.0)  # one-sided spectrum weights
    cands = d0 + np.linspace(-1.0, 1.0, 201)
    vals = (np.exp(2j * np.pi * np.outer(cands, k)) * (wk * X)).real.sum(axis=1)
    d = cands[np.argmax(vals)]
    c = (w - 1 + d) / 2.0
    return float(c)


def find_center_com(sinograms, theta_deg, *, edge_frac: float = 0.03) -> float:
    """Axis from the sinusoidal track of the projections' centre of mass (any angular coverage).

    For an object inside the field of view, the centre of mass of the projection at angle theta is
    ``s_cm(theta) = c + x0 cos(theta) + y0 sin(theta)`` (the projection of the object's centre of mass
    (x0, y0); Helgason-Ludwig consistency, order 1). A least-squares fit of (c, x0, y0) over all angles gives c.

    Parameters
    ----------
    sinograms : array (..., A, W)
        Line integrals (phase, -ln T, ...) that vanish in air; rows are summed.
    theta_deg : array (A,)
    edge_frac : float
        Fraction of columns at each edge whose mean is taken as the background level and removed.

    Returns
    -------
    float: axis column. Raises :class:`InputError` when the projections carry no net signal.
    """
    s = np.asarray(backend.asnumpy(sinograms), dtype=np.float64)
    s = s.reshape(-1, s.shape[-2], s.shape[-1]).sum(axis=0)  # (A, W)
    a, w = s.shape
    e = max(1, int(round(edge_frac * w)))
    s = s - 0.5 * (s[:, :e].mean(axis=1, keepdims=True) + s[:, -e:].mean(axis=1, keepdims=True))
    mass = s.sum(axis=1)
    if not np.all(np.abs(mass) > 1e-6 * np.abs(s).sum(axis=1).max()):
        raise InputError("centre finding: some projections have no net signal (empty or truncated); pass --center PX")
    t = np.arange(w, dtype=np.float64)
    scm = (s * t).sum(axis=1) / mass  # centre of mass per angle, columns
    th = np.deg2rad(np.asarray(theta_deg, dtype=np.float64).reshape(-1))
    if np.unique(np.round(np.mod(th, 2 * np.pi), 9)).size < 3:
        raise InputError("centre finding: need at least 3 distinct angles; pass --center PX")
    M = np.stack([np.ones_like(th), np.cos(th), np.sin(th)], axis=1)
    coef, *_ = np.linalg.lstsq(M, scm, rcond=None)  # s_cm = c + x0 cos + y0 sin
    return float(coef[0])


def _bin_columns(s: np.ndarray, f: int) -> np.ndarray:
    """Mean of ``f`` adjacent detector columns (the last ``W mod f`` columns are dropped)."""
    if f <= 1:
        return s
    w = (s.shape[-1] // f) * f
    return s[..., :w].reshape(*s.shape[:-1], w // f, f).mean(axis=-1)


def _shift_columns(s: np.ndarray, d) -> np.ndarray:
    """Shift rows of ``s (..., A, W)`` by ``d`` px towards larger column index (``d`` scalar or ``(K,)``).

    Fourier shift theorem on an edge-padded copy (padding stops wrap-around); returns ``(K, ..., A, W)``.
    """
    d = np.atleast_1d(np.asarray(d, dtype=np.float64))
    w = s.shape[-1]
    padw = int(np.ceil(np.abs(d).max())) + 8
    n = int(2 ** np.ceil(np.log2(w + 2 * padw)))
    extra = n - w - 2 * padw
    pad = np.pad(s, [(0, 0)] * (s.ndim - 1) + [(padw, padw + extra)], mode="edge")
    F = backend.rfft(pad.astype(np.float32), axis=-1)
    k = np.fft.rfftfreq(n)
    ramp = np.exp(-2j * np.pi * np.outer(d, k)).astype(np.complex64)  # f(t - d) <-> F(k) exp(-2 pi i k d)
    ramp = ramp.reshape((d.size,) + (1,) * (s.ndim - 1) + (k.size,))
    out = backend.irfft(F[None] * ramp, n=n, axis=-1)
    return np.ascontiguousarray(out[..., padw : padw + w], dtype=np.float32)


def _entropy(rec: np.ndarray, disc: np.ndarray, lo: float, hi: float, bins: int) -> float:
    """Histogram entropy ``-sum p log p`` of the values in the disc (Donath et al. 2006)."""
    h, _ = np.histogram(rec[:, disc], bins=bins, range=(lo, hi))
    p = h[h > 0] / max(h.sum(), 1)
    return float(-(p * np.log(p)).sum())


def _metric_scan(s: np.ndarray, theta, centres, *, metric: str, bins: int, rng=None):
    """Metric values of the slices of ``s (S, A, W)`` reconstructed with each axis in ``centres``.

    Every candidate axis is moved to the detector middle by a Fourier shift, so one cached gridrec plan
    serves all candidates (a plan per axis would cost seconds at W = 2560).
    """
    from xspeckle.tomo.fbp import fbp

    w = s.shape[-1]
    mid = (w - 1) / 2.0
    sh = _shift_columns(s, mid - np.asarray(centres, dtype=np.float64))  # (K, S, A, W)
    rec = fbp(sh.reshape(-1, *s.shape[-2:]), theta).reshape(len(centres), s.shape[0], w, w)
    n = w
    y, x = np.mgrid[:n, :n] - (n - 1) / 2.0
    disc = x * x + y * y <= (0.45 * n) ** 2  # inside the field of view at every angle
    if metric == "entropy":
        if rng is None:
            v = rec[:, :, disc]
            lo, hi = np.percentile(v, [0.05, 99.95])
            pad = 0.1 * (hi - lo)
            rng = (float(lo - pad), float(hi + pad))
        vals = np.array([_entropy(r, disc, rng[0], rng[1], bins) for r in rec])
    elif metric == "negativity":
        # sign of the object from the net signal of the projections (phase < 0 in matter, -ln T > 0)
        sgn = 1.0 if float(s.sum()) >= 0 else -1.0
        neg = np.minimum(sgn * rec[:, :, disc], 0.0)
        vals = (neg.astype(np.float64) ** 2).sum(axis=(1, 2))  # energy of wrong-sign values
    else:
        raise InputError(f"centre finding: unknown metric {metric!r}; use entropy or negativity")
    return np.asarray(vals, dtype=np.float64), rng


def find_center_metric(sinograms, theta_deg, *, guess: float | None = None, search_px: float | None = None,
                       metric: str = "negativity", max_rows: int = 4, coarse_width: int = 128, fine_width: int = 512,
                       tol_px: float = 0.1, bins: int = 128) -> float:
    """Axis from the quality of reconstructed slices (after Donath et al., J. Opt. Soc. Am. A 23, 1048 (2006)).

    Coarse to fine: candidate axes one binned pixel apart over ``guess +- search_px`` on data binned to
    about ``coarse_width`` columns; then 9 candidates with a quarter of the previous step around the best,
    on data binned no more than the step (and to at least ``fine_width`` columns), until the step is at most
    ``tol_px`` (full-resolution px). Angles are thinned to about 1.5 per binned column (the angular Nyquist
    rate is pi/2 per column), which keeps a 2560 x 801 scan to a couple of seconds.

    Parameters
    ----------
    sinograms : array (..., A, W)
        Line integrals; the ``max_rows`` rows with the most variance are reconstructed.
    theta_deg : array (A,)
    guess : float, optional
        Coarse estimate (default: the detector middle ``(W-1)/2``). The coarse stage searches from
        ``min(guess, (W-1)/2) - search_px`` to ``max(guess, (W-1)/2) + search_px``.
    search_px : float, optional
        Margin of the search in px (default ``W/8``, at least 8 px).
    metric : {"negativity", "entropy"}
        ``"negativity"`` (default): energy of slice values of the wrong sign, the object's sign taken from the
        net projection signal (phase < 0, -ln T > 0 in matter): a wrong axis turns every edge into an arc
        with a ramp-filter undershoot of the wrong sign. ``"entropy"``: histogram entropy of the slices,
        minimal at the axis (Donath et al. 2006); on PWF-retrieved tomo-beads it also has
        spurious minima 20 px off the axis (64 px, 24 angles, one diffuser position), so it is not the default.
    coarse_width, fine_width : int
        Detector columns after binning in the first and in the last stages.
    tol_px : float
        Final step in full-resolution px.

    Returns
    -------
    float: axis column (full-resolution px).
    """
    s = np.asarray(backend.asnumpy(sinograms), dtype=np.float32)
    s = s.reshape(-1, s.shape[-2], s.shape[-1])
    th = np.asarray(theta_deg, dtype=np.float64).reshape(-1)
    if th.size != s.shape[-2]:
        raise InputError(f"centre finding: {th.size} angles for sinograms with {s.shape[-2]} rows of angles")
    if th.size < 3:
        raise InputError("centre finding: need at least 3 angles; pass --center PX")
    a, w = s.shape[-2:]
    nr = min(int(max_rows), s.shape[0])
    if s.shape[0] > nr:  # the rows with the most structure
        score = s.reshape(s.shape[0], -1).var(axis=1)
        s = s[np.sort(np.argsort(score)[-nr:])]
    if not np.any(s != s.reshape(s.shape[0], -1)[:, :1, None]):
        raise InputError("centre finding: the sinograms are constant; pass --center PX")
    g = (w - 1) / 2.0 if guess is None else float(guess)
    lim = max(8.0, w / 8.0) if search_px is None else float(search_px)
    f_min = max(1, int(np.ceil(w / fine_width)))

    def scan(cands, f, rng=None):
        # binned column j covers columns f j .. f j + f - 1: original c <-> binned (c - (f - 1)/2) / f
        da = max(1, int(np.floor(a / (1.5 * (w // f)))))
        sb = _bin_columns(s[:, ::da], f)
        return _metric_scan(sb, th[::da], (np.asarray(cands) - (f - 1) / 2.0) / f, metric=metric, bins=bins, rng=rng)

    f = max(f_min, int(np.ceil(w / coarse_width)))
    step = float(f)
    # the range spans the guess and the detector middle (a biased guess still brackets a centred axis)
    lo, hi = min(g, (w - 1) / 2.0) - lim, max(g, (w - 1) / 2.0) + lim
    cands = g + step * np.arange(np.floor((lo - g) / step), np.ceil((hi - g) / step) + 1)
    vals, _ = scan(cands, f)
    best = float(cands[int(np.argmin(vals))])
    while step > tol_px + 1e-9:
        step = max(step / 4.0, tol_px)
        f = max(f_min, min(f, int(np.floor(step * 4))))  # binned px no larger than 4 steps
        cands = best + step * np.arange(-4, 5)  # covers +-4 new steps = +-1 old step around the best
        vals, _ = scan(cands, f)
        best = float(cands[int(np.argmin(vals))])
    return best


def find_center(sinograms, theta_deg, *, method: str = "auto", **kw) -> float:
    """Rotation axis (detector column) from a stack of sinograms ``(..., A, W)``.

    Parameters
    ----------
    method : {"auto", "metric", "pair", "com"}
        ``"pair"``: mirror cross-correlation of the 0/180-degree pair (:func:`find_center_pair`, rows averaged);
        ``"com"``: centre-of-mass sinusoid fit (:func:`find_center_com`); ``"metric"``: sharpest reconstruction
        (:func:`find_center_metric`, keyword arguments passed on). ``"auto"``: the metric search around the
        pair (or, without a 180-degree pair, the centre-of-mass) estimate; the pair and centre-of-mass
        estimates are exact on clean line integrals but move by pixels with the low-frequency errors of
        retrieved phase, which the reconstruction metric ignores.
    """
    s = np.asarray(backend.asnumpy(sinograms), dtype=np.float32)
    s = s.reshape(-1, s.shape[-2], s.shape[-1])
    if method not in CENTER_METHODS:
        raise InputError(f"centre finding: unknown method {method!r}; use {', '.join(CENTER_METHODS)}")
    if method == "metric":
        return find_center_metric(s, theta_deg, **kw)
    if method == "auto":
        w = s.shape[-1]
        try:
            coarse = find_center(s, theta_deg, method="pair")
        except InputError:
            try:
                coarse = find_center_com(s, theta_deg)
            except InputError:
                coarse = (w - 1) / 2.0
        if not 0 <= coarse <= w - 1:
            coarse = (w - 1) / 2.0
        return find_center_metric(s, theta_deg, guess=coarse, **kw)
    if method == "pair":
        i, j = opposite_pair(theta_deg)
        return find_center_pair(s[:, i, :], s[:, j, :], **kw)
    return find_center_com(s, theta_deg, **kw)
