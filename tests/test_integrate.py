"""Gradient integration, inverse Laplacian and finite-difference derivatives (retrieve/integrate.py,
retrieve/derivatives.py) against analytic phases and derivatives."""

from __future__ import annotations

import numpy as np
import pytest

from xspeckle.errors import ParameterError
from xspeckle.retrieve import derivatives as D
from xspeckle.retrieve import integrate as I

P = 2e-6  # pixel size, m


def phase_field(h=96, w=128):
    """A smooth, non-periodic phase (rad) with its analytic gradient (rad/m) and Laplacian (rad/m^2)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) * P
    x0, y0, s = 0.55 * w * P, 0.4 * h * P, 14 * P
    g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * s * s))
    a, b = 3.0, 0.8  # bump amplitude (rad) and a tilt across the field (rad)
    lx, ly = w * P, h * P
    phi = -a * g + b * (x / lx) + 0.5 * b * (y / ly) ** 2
    gx = a * (x - x0) / s**2 * g + b / lx
    gy = a * (y - y0) / s**2 * g + b * y / ly**2
    r2 = ((x - x0) ** 2 + (y - y0) ** 2) / s**2
    lap = -a * g * (r2 - 2) / s**2 + b / ly**2
    return phi, gx, gy, lap


def rel_rms(est, truth):
    e = (est - est.mean()) - (truth - truth.mean())
    return float(np.sqrt(np.mean(e**2)) / np.std(truth))


@pytest.mark.parametrize("fn", [I.frankot_chellappa, I.kottler])
def test_gradient_integration_recovers_phase(fn):
    phi, gx, gy, _ = phase_field()
    est = fn(gx.astype(np.float32), gy.astype(np.float32), P)
    assert est.dtype == np.float32 and est.shape == phi.shape
    err = rel_rms(est, phi)
    assert err < 0.02, err  # antisymmetric padding: no boundary artefact from the tilt
    # without padding the non-periodic tilt leaks across the borders: clearly worse
    bad = rel_rms(fn(gx.astype(np.float32), gy.astype(np.float32), P, pad="none"), phi)
    assert bad > 3 * err, (bad, err)


def test_fc_sign_and_batch():
    # d(phi)/dx > 0 everywhere -> phase grows with x; leading axes are batched
    phi, gx, gy, _ = phase_field(64, 64)
    stack = np.stack([gx, 2 * gx]).astype(np.float32), np.stack([gy, 2 * gy]).astype(np.float32)
    est = I.frankot_chellappa(*stack, P)
    assert est.shape == (2, 64, 64)
    np.testing.assert_allclose(est[1], 2 * est[0], atol=1e-3 * np.abs(est[1]).max())
    assert rel_rms(est[0], phi) < 0.02


def test_inverse_laplacian_recovers_phase():
    # a bump with (nearly) zero normal derivative at the border: the Laplacian determines it up to a constant
    # (a harmonic part such as a tilt is invisible to any Laplacian-based method, so it is left out here)
    h, w = 96, 128
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) * P
    x0, y0, s = 0.55 * w * P, 0.45 * h * P, 10 * P
    g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * s * s))
    phi = -3.0 * g
    lap = -3.0 * g * (((x - x0) ** 2 + (y - y0) ** 2) / s**2 - 2) / s**2
    est = I.inverse_laplacian(lap.astype(np.float32), P)
    err = rel_rms(est, phi)
    assert err < 0.03, err  # mirror padding: no wrap-around
    # a Tikhonov epsilon suppresses long wavelengths: the error grows with epsilon
    big = rel_rms(I.inverse_laplacian(lap.astype(np.float32), P, epsilon_per_m2=(2 * np.pi / (20 * P)) ** 2), phi)
    assert big > err
    with pytest.raises(ParameterError):
        I.inverse_laplacian(lap, P, epsilon_per_m2=-1.0)


def test_padding_symmetries():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((5, 7)).astype(np.float32)
    m = I.mirror_pad(f)
    assert m.shape == (10, 14)
    np.testing.assert_array_equal(m[:5, 7:], f[:, ::-1])
    np.testing.assert_array_equal(m[5:, :7], f[::-1, :])
    gx, gy = I.antisymmetric_pad(f, 2 * f)
    np.testing.assert_array_equal(gx[:5, 7:], -f[:, ::-1])  # gx odd in x
    np.testing.assert_array_equal(gx[5:, :7], f[::-1, :])  # gx even in y
    np.testing.assert_array_equal(gy[5:, :7], -2 * f[::-1, :])  # gy odd in y
    np.testing.assert_array_equal(gy[:5, 7:], 2 * f[:, ::-1])  # gy even in x


def test_zero_border_median():
    phi, gx, gy, _ = phase_field()
    est = I.frankot_chellappa(gx.astype(np.float32), gy.astype(np.float32), P) + 5.0
    z = I.zero_border_median(est, border_px=4)
    b = np.concatenate([z[:4].ravel(), z[-4:].ravel(), z[4:-4, :4].ravel(), z[4:-4, -4:].ravel()])
    assert abs(np.median(b)) < 1e-5
    np.testing.assert_allclose(z - z.mean(), est - est.mean(), atol=1e-4)


def test_derivatives_match_analytic():
    h, w = 80, 96
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) * P
    kx, ky = 2 * np.pi / (23 * P), 2 * np.pi / (31 * P)
    f = np.sin(kx * x) * np.cos(ky * y)
    fx = kx * np.cos(kx * x) * np.cos(ky * y)
    fy = -ky * np.sin(kx * x) * np.sin(ky * y)
    fxx = -(kx**2) * f
    fyy = -(ky**2) * f
    fxy = -kx * ky * np.cos(kx * x) * np.sin(ky * y)
    a = f.astype(np.float32)
    gy, gx = D.gradient(a, P)
    assert gx.dtype == np.float32
    # second-order central differences: relative error ~ (k p)^2 / 6 = 1.2 % inside, about twice that on the
    # one-sided (edge_order=2) border rows
    for est, tru in ((gx, fx), (gy, fy)):
        assert np.max(np.abs(est - tru)[1:-1, 1:-1]) < 0.015 * np.max(np.abs(tru))
        assert np.max(np.abs(est - tru)) < 0.03 * np.max(np.abs(tru))
    lap = D.laplacian(a, P)
    s = (slice(1, -1), slice(1, -1))  # reflect borders are exact only for even functions
    assert np.max(np.abs(lap[s] - (fxx + fyy)[s])) < 0.02 * np.max(np.abs(fxx + fyy))
    dxx, dyy, dxy = D.hessian(a, P)
    assert np.max(np.abs(dxx[s] - fxx[s])) < 0.02 * np.max(np.abs(fxx))
    assert np.max(np.abs(dyy[s] - fyy[s])) < 0.02 * np.max(np.abs(fyy))
    assert np.max(np.abs(dxy[s] - fxy[s])) < 0.03 * np.max(np.abs(fxy))
    # Laplacian = trace of the Hessian
    np.testing.assert_allclose(lap, dxx + dyy, rtol=1e-4, atol=1e-4 * np.abs(lap).max())


def test_fine_gradient_is_more_accurate_on_speckle():
    # the 9-point stencil used for sub-pixel tracking (tracking.fine_gradient) vs np.gradient at k = 1 rad/px
    from xspeckle.retrieve.tracking import fine_gradient

    x = np.arange(64, dtype=np.float64)
    f = np.tile(np.sin(1.0 * x), (8, 1)).astype(np.float32)
    tru = np.cos(1.0 * x)[None, 8:-8]
    _, c = D.gradient(f)
    _, fine = fine_gradient(f)
    err_c = np.max(np.abs(c[:, 8:-8] - tru))
    err_f = np.max(np.abs(fine[:, 8:-8] - tru))
    assert err_c > 0.1 and err_f < 0.01, (err_c, err_f)
