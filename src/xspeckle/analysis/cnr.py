"""Contrast-to-noise ratio of a region against a homogeneous background (methods.md §1.16).

Two formulas, named in the result:

* ``"mist2020"`` — Pavlov et al. 2020 (MIST), Eq. (8): ``CNR = (μ1 − μ2)/σ1`` where zone 1
  is the homogeneous background *outside* the sample and zone 2 the feature.  We
  report ``|μ_roi − μ_bg| / σ_bg`` (the paper's sign depends on which zone is brighter;
  its Table I lists positive values).
* ``"pooled"`` — ``|μ_roi − μ_bg| / sqrt(σ_roi² + σ_bg²)`` (a common alternative).

ROIs are boolean masks of the image shape, or tuples of slices, e.g.
``(slice(0, 256), slice(1390, 1590))``.  Non-finite pixels are ignored.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError

__all__ = ["cnr", "FORMULAS"]

#: formula name -> text
FORMULAS = {
    "mist2020": "|mu_roi - mu_bg| / sigma_bg  (Pavlov et al. 2020, Eq. 8)",
    "pooled": "|mu_roi - mu_bg| / sqrt(sigma_roi^2 + sigma_bg^2)",
}


def _values(img, roi, name: str):
    xp = B.get_xp(img)
    if isinstance(roi, (slice, tuple)):
        sl = roi if isinstance(roi, tuple) else (roi,)
        vals = img[sl]
    else:
        m = xp.asarray(roi)
        if m.dtype != bool:
            raise InputError(f"{name} must be a boolean mask or a tuple of slices, got dtype {m.dtype}")
        if m.shape != img.shape:
            raise InputError(f"{name} mask shape {tuple(m.shape)} does not match the image {tuple(img.shape)}")
        vals = img[m]
    vals = vals.ravel()
    vals = vals[xp.isfinite(vals)]
    if vals.size < 2:
        raise InputError(f"{name} selects fewer than 2 finite pixels; choose a larger region")
    return vals.astype(np.float64)


def cnr(image, roi, background, *, formula: str = "mist2020") -> dict[str, Any]:
    """Contrast-to-noise ratio of *roi* against *background* in *image*.

    Parameters
    ----------
    image : array (H, W)
        Any map (dark field in m, phase in rad, ...).
    roi, background : bool array (H, W) or tuple of slices
        Feature zone and homogeneous background zone.
    formula : {"mist2020", "pooled"}
        See the module docstring.

    Returns
    -------
    dict with ``cnr`` (float, dimensionless), ``formula`` (name), ``formula_text``,
    ``mu_roi``, ``mu_bg``, ``sigma_roi``, ``sigma_bg`` (image units), ``n_roi``, ``n_bg``.
    """
    if formula not in FORMULAS:
        raise ParameterError(f"formula must be one of {', '.join(FORMULAS)}, got {formula!r}")
    xp = B.get_xp(image)
    img = xp.asarray(image)
    a = _values(img, roi, "roi")
    b = _values(img, background, "background")
    mu_r, mu_b = float(a.mean()), float(b.mean())
    s_r, s_b = float(a.std(ddof=1)), float(b.std(ddof=1))
    diff = abs(mu_r - mu_b)
    if formula == "mist2020":
        den = s_b  # Pavlov 2020 Eq. (8): σ of the homogeneous zone
    else:
        den = math.sqrt(s_r * s_r + s_b * s_b)
    value = diff / den if den > 0 else (math.inf if diff > 0 else 0.0)
    return {
        "cnr": value,
        "formula": formula,
        "formula_text": FORMULAS[formula],
        "mu_roi": mu_r,
        "mu_bg": mu_b,
        "sigma_roi": s_r,
        "sigma_bg": s_b,
        "n_roi": int(a.size),
        "n_bg": int(b.size),
    }
