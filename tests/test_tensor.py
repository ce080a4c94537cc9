"""Tests of xspeckle.analysis.tensor (orientation, anisotropy, magnitude, HSV display)."""

import math

import numpy as np
import pytest

from xspeckle.analysis.tensor import (
    anisotropy,
    eigen,
    hsv_display,
    magnitude,
    orientation,
    smooth_orientation,
    tensor_metrics,
)
from xspeckle.errors import InputError


def _tensor(theta_deg, lmax, lmin, shape=(4, 5)):
    """(3, H, W) tensor (D_xx, D_yy, D_xy) with major axis at theta (from +x towards +y)."""
    t = np.deg2rad(theta_deg)
    c, s = np.cos(t), np.sin(t)
    dxx = lmax * c * c + lmin * s * s
    dyy = lmax * s * s + lmin * c * c
    dxy = (lmax - lmin) * c * s
    return np.stack([np.full(shape, dxx), np.full(shape, dyy), np.full(shape, dxy)]).astype(np.float32)


@pytest.mark.parametrize("theta", [0.0, 17.0, 45.0, 90.0, 123.0, 179.0])
def test_orientation_anisotropy_magnitude_of_known_tensor(theta):
    lmax, lmin = 3e-11, 1e-11
    t = _tensor(theta, lmax, lmin)
    got = orientation(t)
    # axial angle: compare mod 180
    err = np.abs((got - theta + 90) % 180 - 90)
    assert err.max() < 1e-3
    assert np.allclose(anisotropy(t), math.sqrt(1 - lmin / lmax), rtol=1e-5)
    assert np.allclose(magnitude(t), 0.5 * (lmax + lmin), rtol=1e-5)
    lmx, lmn, _ = eigen(t)
    assert np.allclose(lmx, lmax, rtol=1e-5) and np.allclose(lmn, lmin, rtol=1e-4)


def test_isotropic_and_negative_eigenvalues():
    t = _tensor(30.0, 2e-11, 2e-11)
    assert np.allclose(anisotropy(t), 0.0, atol=1e-3)
    # one negative eigenvalue is clipped to 0 -> anisotropy 1; both negative -> 0, magnitude 0
    t2 = _tensor(60.0, 1e-11, -1e-11)
    assert np.allclose(anisotropy(t2), 1.0)
    t3 = _tensor(60.0, -1e-11, -2e-11)
    assert np.allclose(anisotropy(t3), 0.0) and np.allclose(magnitude(t3), 0.0)


def test_smooth_orientation_wraps_at_180():
    th = np.full((16, 16), 179.0, np.float32)
    th[:, ::2] = 1.0  # neighbours at 1 and 179 degrees average to 0, not 90
    sm, coh = smooth_orientation(th, sigma_px=2.0)
    err = np.abs((sm - 0.0 + 90) % 180 - 90)
    assert err.max() < 0.5
    assert coh.min() > 0.99  # 2 degrees apart: coherent
    th2 = np.zeros((16, 16), np.float32)
    th2[:, ::2] = 90.0  # orthogonal: incoherent
    _, coh2 = smooth_orientation(th2, sigma_px=2.0)
    assert coh2[4:-4, 4:-4].max() < 0.1


def test_metrics_and_hsv_display():
    t = _tensor(72.0, 4e-11, 1e-11, shape=(12, 12))
    t[:, :, :6] *= 0.5  # left half half as strong
    m = tensor_metrics(t, sigma_px=1.0)
    assert set(m) >= {"orientation_deg", "anisotropy", "magnitude", "coherence", "lambda_max", "lambda_min"}
    assert all(v.dtype == np.float32 and v.shape == (12, 12) for v in m.values())
    rgb = hsv_display(t, sigma_px=1.0, percentile=100)
    assert rgb.shape == (12, 12, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    # brightness (V = max channel) follows the magnitude: right half 1, left half 0.5
    v = rgb.max(axis=-1)
    assert np.allclose(v[:, 6:], 1.0, atol=1e-5) and np.allclose(v[:, :6], 0.5, atol=1e-5)
    # hue 72/180 = 0.4 -> RGB hue sector 2 (green-cyan): green is the largest channel
    assert (rgb[..., 1] >= rgb[..., 0]).all() and (rgb[..., 1] >= rgb[..., 2]).all()


def test_bad_shape():
    with pytest.raises(InputError):
        orientation(np.zeros((2, 4, 4), np.float32))
