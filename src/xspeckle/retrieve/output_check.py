"""Reject degenerate retrieval maps: NaN/inf anywhere, or a phase that is flat although the sample is not.

The Retriever protocol promises finite maps; a parameter far out of range (``gamma=1e300``
overflows float32, ``alpha=1e308`` regularises every unknown to zero) breaks that promise
silently.  :func:`check_maps` turns both outcomes into one :class:`ParameterError` line
that names the method, the map, the angle and the parameters the user gave, so that no
all-NaN or all-zero map is ever written with exit status 0 (``docs/reliability.md``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import ParameterError

__all__ = ["check_maps", "FLAT_ULPS", "SAMPLE_CONTRAST_MIN"]

#: a map whose peak-to-peak is within this many float32 ulps of its largest magnitude is "flat"
FLAT_ULPS = 4
#: the sample counts as "different from the reference" when the relative spread of the ratio
#: sample/reference exceeds this (a uniform attenuator, ratio constant, legitimately gives a flat phase)
SAMPLE_CONTRAST_MIN = 1e-3

_EPS32 = float(np.finfo(np.float32).eps)


def _given(params: Mapping[str, Any] | None) -> str:
    if not params:
        return "the default parameters"
    return "parameters " + ", ".join(f"{k}={v!r}" for k, v in params.items())


def _flat(a) -> tuple[bool, float]:
    xp = B.get_xp(a)
    hi, lo = float(xp.max(a)), float(xp.min(a))
    return (hi - lo) <= FLAT_ULPS * _EPS32 * max(abs(hi), abs(lo)), hi


def check_maps(maps: Mapping[str, Any], *, method: str, angle: int, params: Mapping[str, Any] | None = None,
               sample=None, reference=None) -> None:
    """Raise :class:`ParameterError` when a retrieval result is not usable.

    Parameters
    ----------
    maps : mapping name -> array
        One projection's maps (NumPy or CuPy); keys starting with ``_`` are ignored.
    method : str
        Method name, for the message.
    angle : int
        Angle index, for the message.
    params : mapping, optional
        The parameters the user gave (named in the message).
    sample, reference : array ``(P, H, W)``, optional
        Normalised frames; when both are given, a flat phase map is rejected unless the
        sample is a uniform multiple of the reference.

    Raises
    ------
    ParameterError
        A map holds NaN/inf, or the phase map is flat while the sample differs from the reference.
    """
    for name, a in maps.items():
        if name.startswith("_") or not hasattr(a, "dtype") or a.dtype.kind not in "fc":
            continue
        xp = B.get_xp(a)
        finite = xp.isfinite(a)
        if not bool(xp.all(finite)):
            frac = 100.0 * (1.0 - float(xp.mean(finite)))
            raise ParameterError(
                f"method {method!r} gave NaN/inf in {frac:.3g}% of the {name} map at angle {angle} with "
                f"{_given(params)}; a value is out of range (e.g. overflows float32): use a smaller one"
            )
    phase = maps.get("phase")
    if phase is None or sample is None or reference is None:
        return
    flat, value = _flat(phase)
    if not flat:
        return
    xp = B.get_xp(sample)
    s = xp.asarray(sample, dtype=np.float32)
    r = xp.asarray(reference, dtype=np.float32)
    if s.shape != r.shape:
        return
    ratio = s / xp.maximum(r, np.float32(1e-12))
    spread = float(xp.std(ratio)) / max(abs(float(xp.mean(ratio))), 1e-30)
    if spread > SAMPLE_CONTRAST_MIN:
        raise ParameterError(
            f"method {method!r} gave a constant phase map (all {value:.3g} rad) at angle {angle} although the "
            f"sample differs from the reference, with {_given(params)}; a regularisation or scale parameter "
            "is out of range: use a value nearer the default"
        )
