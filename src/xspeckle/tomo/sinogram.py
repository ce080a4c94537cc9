"""Sinogram preparation before FBP: 360-degree / half-acquisition scans, and the offset and tilt of integrated phase.

360 degrees
    A full-field scan over [0, 360) needs nothing: :func:`xspeckle.tomo.fbp.fbp` weights each angle by its share
    of the half circle (angles modulo 180). A *half-acquisition* scan (rotation axis near one detector edge,
    so each half turn sees one half of the object, "offset-axis" or "extended field of view") is stitched
    into a 180-degree sinogram of about twice the width: row ``theta`` is joined with the mirrored row
    ``theta + 180`` over their overlap with a linear ramp, and the overlap (equivalently the axis) is found by
    correlating the two halves (Vo, Atwood, Drakopoulos & Connolley, Opt. Express 29, 17849 (2021), Sec. 2.2;
    algotom ``find_center_360`` and ``convert_sinogram_360_to_180``, used here).

Offset and tilt of integrated phase
    Phase integrated from its gradient (speckle tracking, MIST, UMPA, ...) is known up to a constant per
    projection, and low-frequency integration errors add a slow tilt. A systematic offset ``a`` (the same
    sign at every angle, as when the border median that fixes the constant is taken over a border that is
    not all air) back-projects into a broad bowl: cupping in delta; a tilt into a ramp. ``"wings"`` fits
    ``a + b x`` to the air columns of each projection (both wings, ``wing_px`` each side, outside the object
    at every angle) and subtracts it: exact when the wings are air (phase 0 there, interfaces.md). It is
    the air normalisation of each projection (a linear least-squares fit, no further model) that the
    quadratic slice background of ``convert.py`` only approximates after FBP.

    algotom's double-wedge filter (Vo et al. 2021, Sec. 2.4), suggested for this in the issue, does not
    remove a systematic offset or tilt: their 2-D spectrum lies at angular frequency 0, inside the wedge
    (measured: the same 10 % RMS delta error in a rod before and after at 96 px; benchmarks/bench_sinogram.py),
    so it is not offered here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from xspeckle import backend
from xspeckle.errors import InputError, ParameterError

__all__ = [
    "is_full_turn",
    "estimate_center_360",
    "convert_360_to_180",
    "DC_METHODS",
    "remove_offset_tilt",
]

#: names accepted by ``method=`` of :func:`remove_offset_tilt` (and ``xspeckle tomo --dc``)
DC_METHODS = ("wings",)


def _algotom(module: str):
    try:
        import importlib

        return importlib.import_module(f"algotom.prep.{module}")
    except ImportError:  # pragma: no cover - the [tomo] extra installs it
        raise InputError(
            "360-degree stitching needs algotom; pip install 'xspeckle[tomo]'"
        ) from None


def _uniform_step(theta_deg) -> float:
    th = np.asarray(theta_deg, dtype=np.float64)
    if th.ndim != 1 or th.size < 4:
        raise ParameterError("360-degree scan: theta must be a list of at least 4 angles (degrees)")
    d = np.diff(th)
    step = float(np.median(d))
    if not step > 0 or np.max(np.abs(d - step)) > 0.05 * step:
        raise ParameterError(
            "360-degree scan: the angles must increase in uniform steps to pair theta with theta + 180"
        )
    return step


def is_full_turn(theta_deg, tol_steps: float = 1.5) -> bool:
    """True when the (uniform) angles span a full turn: last - first >= 360 - ``tol_steps`` steps."""
    th = np.asarray(theta_deg, dtype=np.float64)
    if th.size < 4:
        return False
    step = float(np.median(np.diff(th)))
    return bool(step > 0 and th[-1] - th[0] >= 360.0 - tol_steps * step)


def _closed_turn(sino: np.ndarray, theta_deg) -> np.ndarray:
    """(A, W) over [t0, t0 + 360) in uniform steps -> (2N + 1, W) over [t0, t0 + 360] (row 0 repeated at 360),
    the layout algotom's 360-degree tools expect (row i pairs with row i + N at theta + 180)."""
    step = _uniform_step(theta_deg)
    th = np.asarray(theta_deg, dtype=np.float64)
    n_half = 180.0 / step
    if abs(n_half - round(n_half)) > 0.05 or not is_full_turn(th):
        raise ParameterError(
            f"360-degree scan: need uniform angles over a full turn with 180 degrees a whole number of steps "
            f"(got {th.size} angles, step {step:.4g} deg, span {th[-1] - th[0]:.4g} deg)"
        )
    n2 = 2 * int(round(n_half))
    if sino.shape[-2] < n2:
        raise ParameterError(f"360-degree scan: {sino.shape[-2]} angles, expected {n2} for a full turn")
    s = sino[..., :n2, :]
    return np.concatenate([s, s[..., :1, :]], axis=-2)


def _overlap_misfit(top: np.ndarray, bot: np.ndarray, side: int, max_ov: int) -> np.ndarray:
    """Normalised misfit of the two halves for every integer overlap 1..max_ov (index = overlap)."""
    a_all, b_all = top.astype(np.float64), bot.astype(np.float64)
    w = a_all.shape[-1]
    eps = 1e-6 * float(np.mean(a_all**2) + np.mean(b_all**2)) * a_all.shape[0] + 1e-300
    out = np.full(max_ov + 1, np.inf)
    for ov in range(1, max_ov + 1):
        if side == 1:
            a, b = a_all[:, w - ov :], b_all[:, :ov]
        else:
            a, b = a_all[:, :ov], b_all[:, w - ov :]
        e = eps * ov  # an overlap of pure air (0 = 0) scores 1, not 0
        out[ov] = (float(((a - b) ** 2).sum()) + e) / (float((a * a).sum() + (b * b).sum()) + e)
    return out


def estimate_center_360(sinograms, theta_deg, *, min_overlap_px: int = 4, n_angles: int = 90) -> tuple[float, float, int]:
    """Rotation axis of a half-acquisition 360-degree scan from the overlap of its two halves.

    The half turn ``[t0, t0 + 180]`` and the mirrored second half ``[t0 + 180, t0 + 360]`` see the same
    object over the overlap columns near the axis (Vo et al. 2021, Sec. 2.2). For every integer overlap and
    both sides we score ``(sum (a - b)^2 + e) / (sum a^2 + b^2 + e)`` over a subset of the angle pairs
    (``e`` tiny, so an overlap of pure air scores 1, not 0: the sinogram must be ~0 in air, as phase, -ln T
    and D_eff are) and refine the best with a parabola through its neighbours. (algotom's
    ``find_center_360`` correlates intensity windows and misfires on phase sinograms that are exactly 0 in
    air, hence this least-squares form.)

    Parameters
    ----------
    sinograms : array (A, W) or (R, A, W)
        360-degree sinograms of one or several detector rows (summed scores).
    theta_deg : array (A,)
        Uniform angles over a full turn, degrees.
    min_overlap_px : int
        Smallest overlap searched.
    n_angles : int
        Angle pairs used (evenly spread).

    Returns
    -------
    (center_px, overlap_px, side) : axis column in the 360 sinogram, overlap width of the two halves in columns
    (fractional), side of the overlap (0: axis near the left edge, 1: near the right edge).
    """
    s = np.asarray(backend.asnumpy(sinograms), dtype=np.float32)
    s = s[None] if s.ndim == 2 else s
    w = s.shape[-1]
    closed = np.stack([_closed_turn(row, theta_deg) for row in s])  # (R, 2N + 1, W)
    n = closed.shape[-2] // 2
    pick = np.unique(np.linspace(0, n, min(n + 1, int(n_angles))).astype(int))
    top = closed[:, pick, :].reshape(-1, w)
    bot = closed[:, pick + n, ::-1].reshape(-1, w)  # theta + 180, mirrored
    best = None
    for side in (0, 1):
        m = _overlap_misfit(top, bot, side, w)
        m[: max(1, int(min_overlap_px))] = np.inf
        k = int(np.argmin(m))
        if best is None or m[k] < best[0]:
            best = (m[k], k, side, m)
    val, k, side, m = best
    ov = float(k)
    if 1 <= k < w and np.isfinite(m[k - 1]) and np.isfinite(m[k + 1]):
        den = m[k - 1] - 2 * m[k] + m[k + 1]
        if den > 0:
            ov += float(np.clip(0.5 * (m[k - 1] - m[k + 1]) / den, -0.5, 0.5))
    if val > 0.5:
        raise ParameterError(
            "360-degree scan: no overlap between the two half turns matches (is it a half-acquisition scan with "
            "the axis inside the detector?); give the axis with --center"
        )
    center = ov / 2.0 - 0.5 if side == 0 else w - ov / 2.0 - 0.5  # algotom's convention
    return float(center), ov, int(side)


def convert_360_to_180(sinograms, theta_deg, *, center: float | None = None,
                       progress: Callable[[int, int], None] | None = None):
    """Stitch half-acquisition 360-degree sinograms into 180-degree sinograms of the whole object.

    Row ``theta`` is joined with the left-right mirrored row ``theta + 180`` over their overlap with a linear
    ramp (Vo et al. 2021, Sec. 2.2; ``algotom.prep.conversion.convert_sinogram_360_to_180``, no intensity
    normalisation, so a phase that is 0 in air stays 0).

    Parameters
    ----------
    sinograms : array (A, W) or (R, A, W)
        360-degree sinograms (phase in rad, ln T, D_eff ...), uniform angles over a full turn.
    theta_deg : array (A,)
    center : float, optional
        Axis column in the 360 sinogram; default :func:`estimate_center_360` on these sinograms.
    progress : callable(done, total), optional

    Returns
    -------
    (sino180, theta180, center180, info)
        ``sino180`` (..., N + 1, W2) float32 over ``[t0, t0 + 180]`` (N = A / 2), same array module as the input;
        ``theta180`` (N + 1,) degrees; ``center180`` the axis column in ``sino180``; ``info`` a dict with
        ``center_360``, ``overlap_px`` and ``side``.
    """
    conv = _algotom("conversion")
    xp = backend.get_xp(sinograms)
    s = np.asarray(backend.asnumpy(sinograms), dtype=np.float32)
    lead = s.shape[:-2]
    s3 = s.reshape((-1,) + s.shape[-2:])
    w = s3.shape[-1]
    if center is None:
        rows = s3[np.linspace(0, len(s3) - 1, min(len(s3), 8)).astype(int)]
        center, _, _ = estimate_center_360(rows, theta_deg)
    center = float(center)
    if not (0 <= center <= w - 1):
        raise ParameterError(f"360-degree scan: axis at column {center:.2f} lies outside the detector (0..{w - 1})")
    side = 0 if center <= (w - 1) / 2.0 else 1
    overlap = 2.0 * center + 1.0 if side == 0 else 2.0 * (w - center) - 1.0  # algotom's relation
    out, c180 = [], None
    for i, row in enumerate(s3):
        st, c180 = conv.convert_sinogram_360_to_180(_closed_turn(row, theta_deg), (overlap, side), norm=False)
        out.append(np.asarray(st, dtype=np.float32))
        if progress is not None:
            progress(i + 1, len(s3))
    res = np.stack(out).reshape(lead + out[0].shape)
    th = np.asarray(theta_deg, dtype=np.float64)
    theta180 = th[0] + _uniform_step(th) * np.arange(res.shape[-2])
    info = {"center_360": center, "overlap_px": overlap, "side": side}
    return (xp.asarray(res) if xp is not np else res), theta180, float(c180), info


def remove_offset_tilt(sinograms, *, method: str = "wings", wing_px: int | None = None):
    """Remove the per-projection offset and slow tilt of integrated-phase sinograms (module notes).

    Parameters
    ----------
    sinograms : array (..., A, W)
        Phase (rad) or other line-integral sinograms whose outer columns are air (0) at every angle.
    method : {"wings"}
        Least-squares line ``a + b x`` through the air columns of each projection, subtracted.
    wing_px : int, optional
        Air columns used on each side (default ``max(4, W // 20)``).

    Returns
    -------
    array (..., A, W) float32, same array module as the input.
    """
    if method not in DC_METHODS:
        raise ParameterError(f"offset/tilt removal: unknown method {method!r}; use one of {', '.join(DC_METHODS)}")
    xp = backend.get_xp(sinograms)
    s = xp.asarray(sinograms, dtype=xp.float32)
    w = s.shape[-1]
    k = max(4, w // 20) if wing_px is None else int(wing_px)
    if not 2 <= k <= w // 3:
        raise ParameterError(f"offset/tilt removal: wing_px={k} must lie in 2..{w // 3} for {w} columns")
    x = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
    cols = np.r_[0:k, w - k : w]
    # least-squares line a + b x through the wing columns of every projection (normal equations, closed form)
    X = np.stack([np.ones(2 * k), x[cols]], axis=1)
    pinv = np.linalg.pinv(X)  # (2, 2k)
    coef = xp.einsum("ij,...j->...i", xp.asarray(pinv), s[..., cols].astype(xp.float64))  # (..., A, 2)
    line = coef[..., 0:1] + coef[..., 1:2] * xp.asarray(x)
    return (s - line).astype(xp.float32)
