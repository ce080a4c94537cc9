"""Ring (sinogram stripe) removal for phase, transmission and dark-field sinograms.

A detector column whose response differs from its neighbours (gain or offset error; in speckle imaging
every pixel's speckle statistics differ, so retrieved phase and D_eff columns carry their own bias) draws a
vertical stripe in the sinogram and a ring in the slice. The filters here act on sinograms ``(..., A, W)``
before FBP.

We use algotom's removal module (Vo et al., well kept, numpy/scipy/pywavelets) rather than rewriting it:

``"sorting"`` (default)
    Vo, Atwood & Drakopoulos, Opt. Express 26, 28396 (2018), algorithm 3: sort each column, median-filter
    across columns, unsort (``algotom.prep.removal.remove_stripe_based_sorting``).
``"filtering"``
    Vo et al. 2018, algorithm 2: separate low/high pass along angles, sorting-median on the low pass.
``"fitting"``
    Vo et al. 2018, algorithm 1: polynomial fit along angles, filter the residual (low-contrast stripes).
``"wavelet-fft"``
    Münch, Trtik, Marone & Stampanoni, Opt. Express 17, 8567 (2009): damp the vertical detail coefficients
    of a wavelet decomposition in Fourier space (``remove_stripe_based_wavelet_fft``).
``"all"``
    Vo et al. 2018, algorithms 3 + 5 + 6 (unresponsive, large and small stripes; ``remove_all_stripe``).
``"gain"`` (ours)
    Per-column *gain* errors ``s'(theta, x) = (1 + g_x) s(theta, x)``, the kind a retrieved phase or D_eff
    sinogram carries when each pixel's speckle statistics scale its answer. The sorting filters above remove
    offset stripes well but not gain stripes on a strongly varying phase sinogram: a median across columns of a
    monotone profile returns the centre value, stripe included (benchmarks/bench_rings.py measures it). Here
    the column factors ``c_x = 1 / (1 + g_x)`` minimise, over all the sinograms given (the detector rows: a
    column's gain is the same at every angle and, with ``shared=True``, in every row),

    ``sum w |D (c s)|^2 / 1 + lam' sum_n |P_n^perp S_n c|^2 + mu' sum_x (c_x - 1)^2``  with  ``a . c = a . 1``.

    * Roughness: D is the finite difference of ``order`` along x, w are Huber weights (iteratively
      reweighted) and 0 on stencils touching the object's outline (|s| below ``edge_frac`` of the
      projection's peak), so edges do not drive the fit. This is the column normalisation of Boin & Haibel
      (Opt. Express 14, 12071, 2006) made a robust least-squares fit. It sees the gain at short wavelengths
      only: a gain varying over as many columns as the object is wide looks like the object.
    * Consistency (needs ``theta_deg``): the Helgason-Ludwig conditions (Helgason 1965; Ludwig 1966; as used
      for data-consistency calibration, e.g. Basu & Bresler, IEEE TIP 9, 1760, 2000): the n-th moment of a
      projection, ``m_n(theta) = sum_x T_n(x) s(theta, x)`` (T_n: Chebyshev polynomial on the detector), is a
      trigonometric polynomial of degree <= n in theta. Harmonics 0..n of both parities are allowed, so the
      rotation axis need not be known. P_n^perp removes those harmonics; what is left must be 0. Gain errors
      break the conditions wherever the object moves across columns with the angle, at every wavelength;
      this is what pins the long-wavelength gain that roughness cannot see on narrow objects. Moments run to
      ``moments`` (capped so that half the angular degrees of freedom stay free). The term is weighted by
      ``lam' = consistency * max diag(roughness) / max_x sum_theta s^2``: data whose projections do not
      change with the angle (an object on the axis) carry little consistency weight by construction.
    * Prior and scale: ``mu' = mu * max diag(roughness)`` pulls c to 1 where the data say nothing (air columns); the
      scale ``a . c = a . 1`` with ``a_x = sum |s|`` keeps the object's mass (the roughness and consistency
      terms alone are 0 at c = 0).

    One dense W x W solve per Huber iteration, on the host; building the consistency term costs
    ``O(rows * A * W^2)``. Defaults chosen by measurement (benchmarks/bench_rings.py: tomo-beads phase and
    the analytic rod); without the angles the defaults are those of the roughness-only method (angle-sorted,
    ``mu = 1e-3``, no mass constraint). A fit whose factors leave ``1 +- max_change`` is refused.

    Measured (benchmarks/bench_rings.py, 2 % column gains on the tomo-beads truth phase, whole delta
    volume): 5.8-6.7x ring RMS reduction at 128 px / 90 angles, 14x at 256 px / 180 angles, bead delta
    within 0.4 %; roughness only: < 1x at 128 px. Limits: the object must stay inside the detector at every
    angle (no truncation); it needs many rows (the gain the same in every row of a column) and angles that
    move the object across the columns (per 16-row slab, as ``xspeckle tomo`` calls it, or per row for
    per-pixel gains, it reaches 0.6-2x on tomo-beads); a noisy retrieved phase with per-angle offsets breaks
    the consistency term (remove the offsets first, ``--dc wings``).

algotom works on 2-D NumPy sinograms; CuPy input is moved to the host and the result moved back (the
filters are cheap next to FBP). Each call is per slice, so memory stays that of one sinogram.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from xspeckle import backend
from xspeckle.errors import InputError, ParameterError

__all__ = ["RING_METHODS", "remove_rings", "column_gain"]

#: names accepted by ``method=`` (and ``xspeckle tomo --rings``)
RING_METHODS = ("sorting", "filtering", "fitting", "wavelet-fft", "all", "gain")

#: default parameters of each method (algotom's names); ``size`` in detector columns
_DEFAULTS = {
    "sorting": {"size": 21},
    "filtering": {"sigma": 3, "size": 21},
    "fitting": {"order": 2, "sigma": 10},
    "wavelet-fft": {"level": 5, "size": 1, "wavelet_name": "db9"},
    "all": {"snr": 3.0, "la_size": 51, "sm_size": 21},
    "gain": {"mu": None, "huber": 2.5, "iterations": 4, "edge_frac": 0.15, "sort": None, "order": 2,
             "consistency": 13.0, "moments": 30, "shared": True, "max_change": 0.25},
}


def _algotom_removal():
    try:
        import algotom.prep.removal as rem
    except ImportError:  # pragma: no cover - the [tomo] extra installs it
        raise InputError(
            "ring removal needs algotom; install it with: pip install 'xspeckle[tomo]' (or pip install algotom)"
        ) from None
    return rem


def remove_rings(sinogram, method: str = "sorting", *, theta_deg=None,
                 progress: Callable[[int, int], None] | None = None, **params):
    """Remove vertical stripes from sinograms (rings in the reconstructed slices).

    Parameters
    ----------
    sinogram : array (..., A, W)
        Sinograms of any unit (phase in rad, transmission, ln T, D_eff in m): A angles by W detector columns.
        NumPy or CuPy; not modified.
    method : {"sorting", "filtering", "fitting", "wavelet-fft", "all", "gain"}
        Stripe filter (module notes give each source).
    theta_deg : array (A,), optional
        Rotation angles in degrees. ``"gain"`` uses them for its consistency term (module notes); without
        them it fits the roughness term only. The algotom filters ignore them.
    progress : callable(done, total), optional
        Called after each sinogram (``"gain"`` with ``shared=True``: after each Huber iteration).
    **params
        Method parameters in algotom's names, e.g. ``size=31`` (median width in columns) for ``"sorting"``,
        ``level=6`` for ``"wavelet-fft"``. For ``"gain"`` (:func:`column_gain`): ``mu``, ``huber``,
        ``iterations``, ``edge_frac``, ``sort``, ``order``, ``consistency``, ``moments`` and ``shared``
        (True: one gain per detector column for all the sinograms given, i.e. all rows; False: one per
        sinogram, for per-pixel gains). Defaults: :data:`_DEFAULTS`.

    Returns
    -------
    array (..., A, W) float32, same array module as the input.
    """
    if method not in RING_METHODS:
        raise ParameterError(f"rings: unknown method {method!r}; use one of {', '.join(RING_METHODS)}")
    xp = backend.get_xp(sinogram)
    shape = tuple(sinogram.shape)
    if len(shape) < 2:
        raise ParameterError(f"rings: a sinogram is (..., angles, columns), got shape {shape}")
    a, w = shape[-2:]
    if a < 3 or w < 3:
        raise ParameterError(f"rings: sinogram {a} x {w} is too small for stripe removal")
    if not bool(xp.isfinite(sinogram).all()):
        raise ParameterError("rings: the sinogram contains NaN or inf; fix the retrieval first")
    kw = dict(_DEFAULTS[method])
    unknown = set(params) - set(kw) if method == "gain" else set()
    if unknown:
        raise ParameterError(
            f"rings: unknown parameter(s) {', '.join(sorted(unknown))} for 'gain'; use {', '.join(_DEFAULTS['gain'])}"
        )
    kw.update(params)
    if method == "gain":
        s3 = xp.asarray(sinogram, dtype=xp.float32).reshape(-1, a, w)
        shared = bool(kw.pop("shared"))
        if shared:
            c = column_gain(s3, theta_deg, progress=progress, **kw)
            return (s3 * xp.asarray(c, dtype=xp.float32)[None, None, :]).reshape(shape)
        out = xp.empty_like(s3)
        for i in range(s3.shape[0]):
            out[i] = s3[i] * xp.asarray(column_gain(s3[i], theta_deg, **kw), dtype=xp.float32)[None, :]
            if progress is not None:
                progress(i + 1, s3.shape[0])
        return out.reshape(shape)
    s = np.asarray(backend.asnumpy(sinogram), dtype=np.float32)
    # the median windows must fit in the sinogram (algotom pads, but a window wider than W is meaningless)
    for key in ("size", "la_size", "sm_size"):
        if key in kw and method != "wavelet-fft":
            kw[key] = int(min(int(kw[key]), w if w % 2 else w - 1))
    if method == "wavelet-fft":
        import pywt

        kw["level"] = int(max(1, min(int(kw["level"]), pywt.dwt_max_level(min(a, w), kw["wavelet_name"]))))
    rem = _algotom_removal()
    fn = {
        "sorting": rem.remove_stripe_based_sorting,
        "filtering": rem.remove_stripe_based_filtering,
        "fitting": rem.remove_stripe_based_fitting,
        "wavelet-fft": rem.remove_stripe_based_wavelet_fft,
        "all": rem.remove_all_stripe,
    }[method]
    s3 = s.reshape(-1, a, w)
    out = np.empty_like(s3)
    for i, sl in enumerate(s3):
        try:
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.asarray(fn(np.asarray(sl, dtype=np.float32), **kw), dtype=np.float32)[:a, :w]
        except ValueError as exc:  # algotom's own refusals (e.g. "all" on noise-free data)
            raise ParameterError(f"rings: {method!r} failed on this sinogram: {str(exc).splitlines()[0]}") from None
        if not np.isfinite(r).all():
            raise ParameterError(
                f"rings: {method!r} gave NaN/inf on this sinogram (it divides by a fit, so it needs a positive "
                "sinogram such as transmission); use 'sorting' or 'gain' for phase"
            )
        out[i] = r
        if progress is not None:
            progress(i + 1, s3.shape[0])
    out = out.reshape(s.shape)
    return xp.asarray(out) if xp is not np else out


def _consistency_matrix(b: np.ndarray, theta_deg, moments: int) -> np.ndarray:
    """Helgason-Ludwig consistency normal matrix ``sum_rows sum_n S_n^T P_n^perp S_n`` (W, W) of sinograms
    ``b`` (R, A, W) float64, ``S_n = s diag(T_n)``; module notes.

    The harmonic bases are nested (QR of [1, cos t, sin t, cos 2t, ...]), so with ``h_j = q_j^T s``:
    ``sum_n T_n T_n^T o (C - sum_{j<=2n} h_j h_j^T)`` = ``U_0 o C - sum_j U_{n(j)} o sum_rows h_j h_j^T``,
    ``U_n = sum_{m>=n} T_m T_m^T`` (o: elementwise product, C = sum_rows s^T s).
    """
    R, A, W = b.shape
    th = np.deg2rad(np.asarray(theta_deg, dtype=np.float64).reshape(-1))
    if th.size != A:
        raise ParameterError(f"rings: theta_deg has {th.size} angles, the sinogram {A}")
    nmax = int(min(int(moments), (A - 4) // 2))  # some angular degrees of freedom stay free
    if nmax < 1:
        return np.zeros((W, W))
    cols = [np.ones(A)]
    for n in range(1, nmax + 1):
        cols += [np.cos(n * th), np.sin(n * th)]
    Q, _ = np.linalg.qr(np.stack(cols, axis=1))  # (A, 2 nmax + 1), nested in n
    T = np.polynomial.chebyshev.chebvander(np.linspace(-1.0, 1.0, W), nmax).T  # (nmax + 1, W)
    flat = b.reshape(R * A, W)
    C = flat.T @ flat
    h = np.einsum("aj,raw->jrw", Q, b)  # (2 nmax + 1, R, W)
    U = np.zeros((W, W))
    G = np.zeros((W, W))
    for n in range(nmax, -1, -1):
        U += np.outer(T[n], T[n])
        for j in ((0,) if n == 0 else (2 * n - 1, 2 * n)):
            G -= U * (h[j].T @ h[j])
    G += U * C
    return G


def column_gain(sinogram, theta_deg=None, *, mu: float | None = None, huber: float | None = 2.5, iterations: int = 4,
                edge_frac: float = 0.15, order: int = 2, sort: bool | None = None, consistency: float = 13.0,
                moments: int = 30, max_change: float | None = 0.25,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Column factors ``c`` (W,) that undo per-column gains of sinograms (method ``"gain"``).

    Minimises the robust roughness across columns of ``c * s`` plus, given the angles, the Helgason-Ludwig
    inconsistency of ``c * s``, with a prior ``mu`` towards 1 and the mass constraint ``a . c = a . 1``
    (module notes give the sources).

    Parameters
    ----------
    sinogram : array (A, W) or (R, A, W)
        Sinogram(s), any unit, NumPy or CuPy (moved to the host). Several rows share one set of factors.
    theta_deg : array (A,), optional
        Angles in degrees; None leaves out the consistency term.
    mu : float, optional
        Prior weight relative to the largest diagonal entry of the roughness term. Default 3e-3 with the
        consistency term, 1e-3 without (each measured best in benchmarks/bench_rings.py).
    huber : float or None
        Huber threshold in robust sigmas (1.4826 MAD of the roughness residuals); None: one unweighted pass.
    iterations : int
        Reweighting passes.
    edge_frac : float
        Roughness stencils with a column below this fraction of the projection's peak ``|s|`` get weight 0.
    order : int
        Order (1..4) of the finite difference along x.
    sort : bool, optional
        Roughness on the angle-sorted sinogram (Vo et al. 2018's trick; a gain commutes with sorting)
        instead of the projections themselves. Default: sorted without the consistency term, not with it.
    consistency : float
        Weight of the consistency term (0: off), relative as in the module notes.
    moments : int
        Highest moment order n of the consistency term.
    max_change : float or None
        Refuse (ParameterError) factors that leave ``1 +- max_change`` on a column carrying signal: detector
        and retrieval gains are a few per cent, so such a fit means the sinogram breaks the model (e.g. a
        noisy retrieved phase with per-angle offsets: run ``--dc wings`` first, or use another filter).
        None: no check.
    progress : callable(done, total), optional
        Called after each reweighting pass.

    Returns
    -------
    ndarray (W,) float64, the factors ``1 / (1 + g_x)``.
    """
    from math import comb

    b = np.asarray(backend.asnumpy(sinogram), dtype=np.float64)
    if b.ndim == 2:
        b = b[None]
    if b.ndim != 3:
        raise ParameterError(f"rings: column_gain takes (A, W) or (rows, A, W) sinograms, got shape {b.shape}")
    R, A, W = b.shape
    order = int(order)
    if not 1 <= order <= 4:
        raise ParameterError(f"rings: gain order must be 1..4, got {order}")
    if W <= order + 1:
        raise ParameterError(f"rings: {W} columns are too few for a gain fit of order {order}")
    d = [float((-1) ** (order - k) * comb(order, k)) for k in range(order + 1)]  # finite difference of that order
    m_st, n = order + 1, W - order
    use_hl = theta_deg is not None and float(consistency) > 0
    mu = (3e-3 if use_hl else 1e-3) if mu is None else float(mu)
    sort = (not use_hl) if sort is None else bool(sort)
    rb = np.sort(b, axis=1) if sort else b  # roughness data
    a = np.abs(rb)
    small = a < float(edge_frac) * a.max(axis=2, keepdims=True)
    touch = small[:, :, :n].copy()
    for k in range(1, m_st):
        touch |= small[:, :, k : n + k]
    w0 = np.where(touch, 0.0, 1.0)  # stencils off the object's outline and air
    wts = w0
    G = None
    if use_hl:
        G = _consistency_matrix(b, theta_deg, moments)
        G *= float(consistency) / max(float((b * b).sum(axis=(0, 1)).max()), np.finfo(float).tiny)
    mass = np.abs(b).sum(axis=(0, 1))
    rows = np.concatenate([np.arange(n) + k1 for k1 in range(m_st) for k2 in range(m_st)])
    cols = np.concatenate([np.arange(n) + k2 for k1 in range(m_st) for k2 in range(m_st)])
    c = np.ones(W)
    n_it = max(1, int(iterations)) if huber is not None else 1
    for it in range(n_it):
        # roughness normal matrix M[x, x'] = sum D[r, x] D[r, x'] w s[x] s[x'] (band = order), summed over rows
        vals = [d[k1] * d[k2] * (wts * rb[:, :, k1 : n + k1] * rb[:, :, k2 : n + k2]).sum(axis=(0, 1))
                for k1 in range(m_st) for k2 in range(m_st)]
        M = np.zeros((W, W))
        np.add.at(M, (rows, cols), np.concatenate(vals))
        scale = max(float(M.diagonal().max()), np.finfo(float).tiny)
        if G is not None:
            M += scale * G
        m = float(mu) * scale
        M[np.diag_indices(W)] += m
        c = np.linalg.solve(M, np.full(W, m))
        if G is not None:  # a . c = a . 1 (the consistency term alone would shrink c towards 0)
            c1 = np.linalg.solve(M, mass)
            den = float(mass @ c1)
            if den > 0:
                c = c + (mass.sum() - float(mass @ c)) / den * c1
        if progress is not None:
            progress(it + 1, n_it)
        if it == n_it - 1:
            break
        cb = rb * c[None, None, :]
        r = sum(d[k] * cb[:, :, k : n + k] for k in range(m_st))
        rr = r[w0 > 0]
        if rr.size == 0:
            break
        sigma = 1.4826 * float(np.median(np.abs(rr - np.median(rr)))) + 1e-300
        wts = np.minimum(w0, float(huber) * sigma / np.maximum(np.abs(r), 1e-300))
    if max_change is not None:
        sig = mass > 0.05 * mass.max()  # columns carrying signal (air columns stay near 1 through the prior)
        lo, hi = float(c[sig].min()), float(c[sig].max())
        if not (np.isfinite(c).all() and 1 - float(max_change) <= lo and hi <= 1 + float(max_change)):
            raise ParameterError(
                f"rings: the column-gain fit is implausible (factors {lo:.3g}..{hi:.3g}, more than "
                f"{float(max_change):.0%} off 1): the sinogram does not look like small gains on consistent "
                "projections; remove per-angle offsets first (--dc wings) or use another filter"
            )
    return np.asarray(c, dtype=np.float64)
