"""Preprocessing: dark/flat normalisation stays finite with zeros, hot pixels and NaN."""

from __future__ import annotations

import numpy as np
import pytest

from xspeckle.errors import InputError
from xspeckle.preprocess import bin_frames, crop, fix_bad_pixels, normalise


@pytest.fixture
def frames():
    rng = np.random.default_rng(5)
    flat = rng.uniform(900, 1100, (24, 30)).astype(np.float32)
    dark = rng.uniform(95, 105, (24, 30)).astype(np.float32)
    t = rng.uniform(0.5, 1.0, (3, 24, 30)).astype(np.float32)  # true normalised intensity
    raw = t * (flat - dark) + dark
    return raw, flat, dark, t


def test_normalise_exact(frames):
    raw, flat, dark, t = frames
    out = normalise(raw, flat, dark)
    assert out.dtype == np.float32 and out.shape == raw.shape
    np.testing.assert_allclose(out, t, rtol=1e-5)
    # uint16 input gives the same result as float (no integer wrap-around)
    out16 = normalise(np.rint(raw).astype(np.uint16), flat, dark)
    np.testing.assert_allclose(out16, t, atol=2e-3)


def test_normalise_without_flat_or_dark(frames):
    raw, flat, dark, t = frames
    np.testing.assert_allclose(normalise(raw, None, dark), raw - dark, rtol=1e-6)
    np.testing.assert_allclose(normalise(raw, flat, None), raw / flat, rtol=1e-6)
    np.testing.assert_array_equal(normalise(raw), raw)


def test_flat_with_zeros_hot_pixels_and_nan(frames):
    raw, flat, dark, t = frames
    bad = flat.copy()
    bad[0, 0] = 0.0  # dead pixel
    bad[1, 1] = np.nan
    bad[2, 2] = np.inf
    bad[3, 3] = -5.0
    bad[4, 4] = 50.0  # below the dark level: flat - dark < 0
    out = normalise(raw, bad, dark)
    assert np.isfinite(out).all()
    good = np.ones(out.shape[-2:], bool)
    good[[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]] = False
    np.testing.assert_allclose(out[:, good], t[:, good], rtol=1e-5)  # other pixels untouched
    assert np.all(np.abs(out[:, ~good]) < 10)  # replaced by a typical flat value, not huge


def test_nan_and_inf_in_frames_repaired(frames):
    raw, flat, dark, t = frames
    r = raw.copy()
    r[0, 5, 5] = np.nan
    r[1, 6, 7] = np.inf
    r[2, 8, 9] = -np.inf
    d = dark.copy()
    d[10, 10] = np.nan  # NaN dark pixel
    out = normalise(r, flat, d)
    assert np.isfinite(out).all()
    for idx in [(0, 5, 5), (1, 6, 7), (2, 8, 9), (0, 10, 10)]:
        assert 0.5 <= out[idx] <= 1.0  # local 3x3 median of U(0.5, 1)


def test_hot_pixel_in_frames_stays_finite(frames):
    raw, flat, dark, t = frames
    r = raw.copy()
    r[0, 3, 3] = 65535.0
    out = normalise(r, flat, dark)
    assert np.isfinite(out).all() and out[0, 3, 3] > 10  # kept (it is data), but finite


def test_flat_all_zero_is_clear_error(frames):
    raw, flat, dark, t = frames
    with pytest.raises(InputError, match="flat field is zero or negative everywhere"):
        normalise(raw, np.zeros_like(flat), dark)
    with pytest.raises(InputError, match="does not match"):
        normalise(raw, flat[:10], dark)
    with pytest.raises(InputError, match="does not match"):
        normalise(raw, flat, dark[:, :5])


def test_fix_bad_pixels_and_mask():
    a = np.full((9, 9), 2.0, np.float32)
    a[4, 4] = np.nan
    m = np.zeros((9, 9), bool)
    m[1, 1] = True
    a[1, 1] = 1000.0
    out = fix_bad_pixels(a, mask=m)
    assert out[4, 4] == 2.0 and out[1, 1] == 2.0
    all_bad = fix_bad_pixels(np.full((4, 4), np.nan))
    assert np.isfinite(all_bad).all()


def test_crop_and_bin():
    a = np.arange(2 * 6 * 8, dtype=np.float32).reshape(2, 6, 8)
    np.testing.assert_array_equal(crop(a, (1, 4, 2, 6)), a[:, 1:4, 2:6])
    assert crop(a, None) is a
    with pytest.raises(InputError, match="outside the frame"):
        crop(a, (0, 7, 0, 8))
    b = bin_frames(a, 2)
    assert b.shape == (2, 3, 4) and b.dtype == np.float32
    assert b[0, 0, 0] == pytest.approx(np.mean([0, 1, 8, 9]))
    assert bin_frames(a[:, :5, :7], 2).shape == (2, 2, 3)  # partial blocks dropped
    with pytest.raises(InputError, match=">= 1"):
        bin_frames(a, 0)


def test_overflow_past_float32_is_repaired_silently():
    """Found by hypothesis: a frame value near float32's maximum divided by a flat of 0.5 overflows to inf;
    the pixel is repaired like any bad pixel, with no RuntimeWarning (warnings are errors for xspeckle)."""
    frames = np.zeros((2, 9, 11), np.float32)
    frames[0, 0, 0] = 1.7014118e38
    out = normalise(frames, flat=np.full((9, 11), 0.5, np.float32))
    assert np.isfinite(out).all() and out[0, 0, 0] == 0.0
