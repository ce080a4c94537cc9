"""Rotation-axis (centre) finding for parallel-beam scans.

The projection at ``theta + 180`` degrees is the mirror image of the one at ``theta`` about the axis:
``p_180(t) = p_0(2c - t)`` (detector column t, axis c). Flipping ``p_180`` left-right gives
``p_0(t + d)`` with ``d = 2c - (W - 1)``, so the shift that best aligns ``p_0`` with the flipped
``p_180`` gives ``c = (W - 1 + d) / 2``. The shift is found by FFT cross-correlation (integer peak), then
refined to 0.01 px by maximising the Fourier-interpolated correlation ``Re sum F0 conj(F1) exp(2 pi i k d)``
(the band-limited cross-correlation evaluated off-grid).
"""

from __future__ import annotations

import numpy as np

from xspeckle import backend
from xspeckle.errors import InputError

__all__ = ["find_center_pair", "find_center", "find_center_com", "opposite_pair"]


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


def find_center(sinograms, theta_deg, *, method: str = "auto", **kw) -> float:
    """Rotation axis (detector column) from a stack of sinograms ``(..., A, W)``.

    Parameters
    ----------
    method : {"auto", "pair", "com"}
        ``"pair"``: mirror cross-correlation of the 0/180-degree pair (:func:`find_center_pair`, rows averaged);
        ``"com"``: centre-of-mass sinusoid fit (:func:`find_center_com`); ``"auto"``: the pair when the scan
        has two projections 180 degrees apart, else the centre-of-mass fit.
    """
    s = np.asarray(backend.asnumpy(sinograms), dtype=np.float32)
    s = s.reshape(-1, s.shape[-2], s.shape[-1])
    if method not in ("auto", "pair", "com"):
        raise InputError(f"centre finding: unknown method {method!r}; use auto, pair or com")
    if method in ("auto", "pair"):
        try:
            i, j = opposite_pair(theta_deg)
        except InputError:
            if method == "pair":
                raise
        else:
            return find_center_pair(s[:, i, :], s[:, j, :], **kw)
    return find_center_com(s, theta_deg, **kw)
