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
    monotone profile returns the centre value, stripe included (benchmarks/bench_rings.py measures it). Here the
    column factors ``c_x = 1 / (1 + g_x)`` minimise the robust roughness across columns of the corrected
    sinogram, ``sum_theta,x w |D_xx (c_x s(theta, x))|^2 + mu sum_x (c_x - 1)^2`` (D_xx: second difference
    along x; w: Huber weights, iteratively reweighted, and 0 on stencils touching the object's outline, so
    edges do not drive the fit; mu anchors ``c = 1`` where the data say nothing, e.g. air columns). The fit
    runs on the sinogram sorted along the angles, column by column (Vo et al. 2018's observation: sorted
    columns vary smoothly across x; a gain c > 0 commutes with sorting). One sparse W x W solve per
    iteration. It is the column normalisation of Boin & Haibel (Opt. Express 14, 12071, 2006: each column
    scaled by its mean over a smoothed mean) made a robust least-squares fit; algotom has no gain-only filter.
    Limits (benchmarks/bench_rings.py): it needs columns that vary smoothly across x; on a narrow object
    sampled by few columns (tomo-beads at 128 px, 90 angles) it removes little.

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
    "gain": {"mu": 1e-3, "huber": 2.5, "iterations": 4, "edge_frac": 0.15, "sort": True, "order": 2},
}


def _algotom_removal():
    try:
        import algotom.prep.removal as rem
    except ImportError:  # pragma: no cover - the [tomo] extra installs it
        raise InputError(
            "ring removal needs algotom; install it with: pip install 'xspeckle[tomo]' (or pip install algotom)"
        ) from None
    return rem


def remove_rings(sinogram, method: str = "sorting", *, progress: Callable[[int, int], None] | None = None, **params):
    """Remove vertical stripes from sinograms (rings in the reconstructed slices).

    Parameters
    ----------
    sinogram : array (..., A, W)
        Sinograms of any unit (phase in rad, transmission, ln T, D_eff in m): A angles by W detector columns.
        NumPy or CuPy; not modified.
    method : {"sorting", "filtering", "fitting", "wavelet-fft", "all", "gain"}
        Stripe filter (module notes give each source).
    progress : callable(done, total), optional
        Called after each sinogram.
    **params
        Method parameters in algotom's names, e.g. ``size=31`` (median width in columns) for ``"sorting"``,
        ``level=6`` for ``"wavelet-fft"``; ``mu`` (prior weight relative to the largest data weight),
        ``huber`` (threshold in robust sigmas), ``iterations``, ``edge_frac``, ``sort`` (fit on the
        angle-sorted sinogram) and ``order`` (of the finite difference across columns: 3 tolerates the
        curvature of narrow objects better, 2 removes more on wide ones) for ``"gain"``.
        Defaults: :data:`_DEFAULTS`.

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
        out = xp.empty_like(s3)
        sort = bool(kw.pop("sort"))
        for i in range(s3.shape[0]):
            c = column_gain(xp.sort(s3[i], axis=0) if sort else s3[i], **kw)
            out[i] = s3[i] * xp.asarray(c, dtype=xp.float32)[None, :]
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


def column_gain(sinogram, *, mu: float = 5e-4, huber: float | None = 2.5, iterations: int = 4,
                edge_frac: float = 0.0, order: int = 2) -> np.ndarray:
    """Column factors ``c`` (W,) that make ``c[None, :] * sinogram`` smooth across columns (method ``"gain"``).

    Minimises ``sum_theta,r w[theta, r] (D c*s)[theta, r]^2 + mu' sum_x (c_x - 1)^2`` with D the finite
    difference of ``order`` (default 2) along columns (module notes; a least-squares form of Boin & Haibel 2006's column normalisation),
    ``mu' = mu * max_x M_xx`` and Huber weights ``w = min(1, huber * sigma / |r|)`` (sigma: 1.4826 MAD of the
    residuals) updated for ``iterations`` passes (``huber=None``: one unweighted pass); stencils with a column
    below ``edge_frac`` of its row's peak ``|s|`` get weight 0 (object outline and air).

    Parameters
    ----------
    sinogram : array (A, W)
        One sinogram (any unit), NumPy or CuPy; the band sums run on its device, the W x W sparse solve on
        the host.

    Returns
    -------
    ndarray (W,) float64, the factors ``1 / (1 + g_x)``.
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as spl

    xp = backend.get_xp(sinogram)
    b = xp.asarray(sinogram, dtype=xp.float64)
    A, W = b.shape
    from math import comb

    order = int(order)
    if not 1 <= order <= 4:
        raise ParameterError(f"rings: gain order must be 1..4, got {order}")
    d = tuple(float((-1) ** (order - k) * comb(order, k)) for k in range(order + 1))  # finite difference of that order
    m_st = order + 1  # stencil width
    n = W - order
    wts = xp.ones((A, n), dtype=xp.float64)
    if edge_frac:
        # stencils that touch the object's outline (|s| below edge_frac of the row's peak) are left out: there
        # the chord profile is steep and curved (sqrt edge), so neighbours cannot predict the column
        a = xp.abs(b)
        small = a < float(edge_frac) * a.max(axis=1, keepdims=True)
        touch = small[:, :n].copy()
        for k in range(1, m_st):
            touch |= small[:, k : n + k]
        wts = xp.where(touch, 0.0, 1.0)
    c = np.ones(W)
    rows = np.concatenate([np.arange(n) + k1 for k1 in range(m_st) for k2 in range(m_st)])
    cols = np.concatenate([np.arange(n) + k2 for k1 in range(m_st) for k2 in range(m_st)])
    for it in range(max(1, int(iterations))):
        # normal matrix M[x, x'] = sum_theta sum_r D[r, x] D[r, x'] w[theta, r] s[theta, x] s[theta, x'] (band = order)
        vals = [d[k1] * d[k2] * backend.asnumpy((wts * b[:, k1 : n + k1] * b[:, k2 : n + k2]).sum(0))
                for k1 in range(m_st) for k2 in range(m_st)]
        M = sp.csr_matrix((np.concatenate(vals), (rows, cols)), shape=(W, W))
        m = float(mu) * max(float(M.diagonal().max()), np.finfo(float).tiny)
        c = spl.spsolve((M + m * sp.identity(W)).tocsc(), np.full(W, m))
        if huber is None or it == int(iterations) - 1:
            break
        cb = b * xp.asarray(c)[None, :]
        r = sum(d[k] * cb[:, k : n + k] for k in range(m_st))
        sigma = 1.4826 * float(xp.median(xp.abs(r - xp.median(r)))) + 1e-300
        wts = xp.minimum(wts, float(huber) * sigma / xp.maximum(xp.abs(r), 1e-300)) if edge_frac else \
            xp.minimum(1.0, float(huber) * sigma / xp.maximum(xp.abs(r), 1e-300))
    return np.asarray(c, dtype=np.float64)
