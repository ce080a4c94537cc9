"""Accuracy of a retrieved map against a simulated ground truth."""

from __future__ import annotations

import numpy as np

__all__ = ["phase_relative_error"]


def phase_relative_error(phase, truth, mask) -> float:
    """Relative RMS phase error ``‖φ − φ_true − c‖ / ‖φ_true‖`` over *mask*.

    The constant c (the phase's arbitrary offset) is the median of ``φ − φ_true`` outside the mask,
    i.e. the background levels are matched first.

    Parameters
    ----------
    phase, truth : array ``(H, W)``, rad
    mask : array ``(H, W)`` bool, the sample (True) against the background (False)

    Returns
    -------
    float
    """
    tr = np.asarray(truth, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    d = np.asarray(phase, dtype=np.float64) - tr
    d = d - np.median(d[~m])
    return float(np.linalg.norm(d[m]) / np.linalg.norm(tr[m]))
