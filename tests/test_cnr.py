"""Tests of xspeckle.analysis.cnr (MIST 2020 Eq. 8 and the pooled form)."""

import math

import numpy as np
import pytest

from xspeckle.analysis.cnr import cnr
from xspeckle.errors import InputError, ParameterError


def _image():
    rng = np.random.default_rng(1)
    img = rng.normal(0.0, 1.0, (64, 64))
    img[20:40, 30:50] = rng.normal(5.0, 2.0, (20, 20))
    return img.astype(np.float32)


def test_values_match_the_formulas():
    img = _image()
    roi = (slice(20, 40), slice(30, 50))
    bg = (slice(0, 15), slice(0, 64))
    a = img[roi].astype(np.float64)
    b = img[bg].astype(np.float64)
    r = cnr(img, roi, bg)
    assert r["formula"] == "mist2020" and "sigma_bg" in r["formula_text"]
    assert r["cnr"] == pytest.approx(abs(a.mean() - b.mean()) / b.std(ddof=1), rel=1e-9)
    assert 4.0 < r["cnr"] < 6.0  # mean 5 over unit noise
    p = cnr(img, roi, bg, formula="pooled")
    assert p["formula"] == "pooled"
    assert p["cnr"] == pytest.approx(abs(a.mean() - b.mean()) / math.hypot(a.std(ddof=1), b.std(ddof=1)), rel=1e-9)
    assert p["cnr"] < r["cnr"]  # the ROI is noisier than the background
    assert r["n_roi"] == 400 and r["n_bg"] == 15 * 64


def test_masks_equal_slices_and_nan_ignored():
    img = _image()
    roi = np.zeros(img.shape, bool)
    roi[20:40, 30:50] = True
    bg = np.zeros(img.shape, bool)
    bg[0:15] = True
    r1 = cnr(img, roi, bg)
    r2 = cnr(img, (slice(20, 40), slice(30, 50)), (slice(0, 15), slice(None)))
    assert r1["cnr"] == pytest.approx(r2["cnr"], rel=1e-12)
    img2 = img.copy()
    img2[0, 0] = np.nan
    r3 = cnr(img2, roi, bg)
    assert math.isfinite(r3["cnr"]) and r3["n_bg"] == 15 * 64 - 1


def test_errors():
    img = _image()
    with pytest.raises(ParameterError):
        cnr(img, (slice(0, 5),), (slice(5, 10),), formula="nope")
    with pytest.raises(InputError):
        cnr(img, np.zeros((3, 3), bool), (slice(5, 10),))
    with pytest.raises(InputError):
        cnr(img, np.zeros(img.shape, bool), (slice(5, 10),))
