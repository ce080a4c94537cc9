"""Fused PWF iteration (retrieve/pwf_kernels.py) against the reference path of PWFModel.gradient.

Tiny grids; both paths run in float32/complex64 with float64 loss sums.  The NumPy/CuPy twin (XpOps)
does the same operations in the same order as the reference, so it must agree to ~1 ulp; the numba
kernels reorder a few float32 operations (fused complex products, two-pass inverse real FFT), so they
agree within float32 rounding amplified by the preconditioner 1/κ² (tolerance 3e-5 of the largest
gradient value; observed ≤ 7e-6).
"""

from __future__ import annotations

import numpy as np
import pytest

from xspeckle.geometry import Geometry
from xspeckle.retrieve import pwf_kernels as pk
from xspeckle.retrieve import pwf_vector as pv
from xspeckle.retrieve.pwf import PWFModel

XC, YC = 3.48e-6, 4.31e-6
pytestmark = pytest.mark.skipif(not pk._kernels(), reason="numba not installed")


def _geom():
    return Geometry(energy_ev=10000.0, pixel_size_m=650e-9, sample_detector_distance_m=0.023,
                    diffuser_position="downstream", diffuser_detector_distance_m=0.020,
                    coherence_length_x_m=XC, coherence_length_y_m=YC)


def _speckle(rng, k, h, w):
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.standard_normal((k, h, w)), (0, 1.2, 1.2))
    return np.exp(0.25 * f / f.std()).astype(np.float32)


def _case(k=1, nb=2, seed=0, **kw):
    rng = np.random.default_rng(seed)
    ref = _speckle(rng, k, 40, 48)
    sam = (ref[None] * (1 + 0.05 * rng.standard_normal((nb, k, 40, 48)))).astype(np.float32)
    model = PWFModel(ref, _geom(), **kw)
    psi = (0.05 * rng.standard_normal((nb, 1) + model.shape)
           - 0.1j * rng.random((nb, 1) + model.shape)).astype(np.complex64)
    _, yspec = model.prepare(sam)
    return model, psi, yspec, sam


def _reference(model, psi, yspec, precondition=True):
    old = pk.USE_FUSED
    pk.USE_FUSED = False
    try:
        return model.gradient(psi, yspec, precondition=precondition)
    finally:
        pk.USE_FUSED = old


def _rel(a, b):
    dt = np.complex128 if np.iscomplexobj(a) else np.float64
    a, b = np.asarray(a, dt), np.asarray(b, dt)
    return float(np.abs(a - b).max() / np.abs(b).max())


CASES = [dict(k=1), dict(k=1, delta_over_beta=300.0), dict(k=3), dict(k=3, delta_over_beta=50.0)]


@pytest.mark.parametrize("case", CASES, ids=["K1", "K1-prior", "K3", "K3-prior"])
@pytest.mark.parametrize("precondition", [True, False])
def test_numba_path_equals_reference(case, precondition):
    model, psi, yspec, _ = _case(**case)
    g_re0, g_im0, loss0, x0 = _reference(model, psi, yspec, precondition)
    g_re, g_im, loss, x = pk.fused_gradient(model, psi, yspec, precondition=precondition, ops=pk.NumbaOps())
    for a in (g_re, g_im):
        assert a.dtype == np.float32 and a.shape == psi.shape
    assert x.dtype == np.complex64 and loss.dtype == np.float64 and loss.shape == (psi.shape[0],)
    assert _rel(g_re, g_re0) < 3e-5
    assert _rel(g_im, g_im0) < 3e-5
    assert _rel(x, x0) < 1e-6
    np.testing.assert_allclose(loss, loss0, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=["K1", "K1-prior", "K3", "K3-prior"])
def test_numpy_twin_equals_reference(case):
    # the twin is what CuPy runs: same operations, same order -> agreement to rounding of a few ulp
    model, psi, yspec, _ = _case(**case)
    ref = _reference(model, psi, yspec)
    out = pk.fused_gradient(model, psi, yspec, ops=pk.XpOps(np))
    for a, b in zip(out[:2], ref[:2]):
        assert _rel(a, b) < 1e-6
    np.testing.assert_allclose(out[2], ref[2], rtol=1e-7)
    np.testing.assert_array_equal(out[3], ref[3])


def test_threaded_kernels_match_single_thread(monkeypatch):
    model, psi, yspec, _ = _case(k=3, nb=3)
    monkeypatch.setenv("XSPECKLE_FFT_WORKERS", "1")
    one = pk.fused_gradient(model, psi, yspec, ops=pk.NumbaOps())
    monkeypatch.setenv("XSPECKLE_FFT_WORKERS", "3")
    monkeypatch.setattr(pk, "_SMALL", 0)          # split even these tiny arrays over the threads
    many = pk.fused_gradient(model, psi, yspec, ops=pk.NumbaOps())
    for a, b in zip(one[:2], many[:2]):
        assert _rel(a, b) < 1e-6                  # row blocks do the same arithmetic; only the FFT threads differ
    np.testing.assert_allclose(one[2], many[2], rtol=1e-6)


def test_gradient_dispatch_and_results_not_aliased(monkeypatch):
    model, psi, yspec, _ = _case(k=1, nb=1)
    first = model.gradient(psi, yspec)             # fused by default
    ref = _reference(model, psi, yspec)
    assert _rel(first[1], ref[1]) < 3e-5
    keep = [a.copy() for a in first[:2]]
    model.gradient(psi * np.complex64(0.5), yspec)  # a second call must not overwrite the first results
    for a, b in zip(first[:2], keep):
        np.testing.assert_array_equal(a, b)
    # XSPECKLE_NUMBA=0 -> the NumPy twin
    monkeypatch.setattr(pk, "_USE_NUMBA", False)
    assert isinstance(pk.ops_for(np), pk.XpOps)
    monkeypatch.setattr(pk, "_USE_NUMBA", True)
    assert isinstance(pk.ops_for(np), pk.NumbaOps)


def test_solve_fused_equals_reference():
    model, _, _, sam = _case(k=1, nb=1, seed=4)
    fused = model.solve(sam, min_iter=15, max_iter=15)
    old = pk.USE_FUSED
    pk.USE_FUSED = False
    try:
        ref = model.solve(sam, min_iter=15, max_iter=15)
    finally:
        pk.USE_FUSED = old
    assert fused.iterations == ref.iterations
    assert _rel(fused.phase, ref.phase) < 1e-4
    np.testing.assert_allclose(fused.loss_history[0], ref.loss_history[0], rtol=1e-5)


def test_numba_is_a_core_dependency():
    # issue 16: `make demo` (core install only) must get the numba paths
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("numba>=") for d in deps), deps


@pytest.mark.parametrize("use_numba", [True, False])
def test_momentum_step_equals_solver_formula(monkeypatch, use_numba):
    # the explicit update of PWFModel.solve (pwf.md §4 step 8) for 3 projections, one rejected
    monkeypatch.setattr(pk, "_USE_NUMBA", use_numba)
    monkeypatch.setattr(pk, "_SMALL", 0)
    rng = np.random.default_rng(5)
    shp = (3, 1, 20, 24)

    def c():
        return (rng.standard_normal(shp) + 1j * rng.standard_normal(shp)).astype(np.complex64)

    psi, z_old, acc = c(), c(), c()
    g_re, g_im = rng.standard_normal((2,) + shp).astype(np.float32)
    g_re[1, 0, 3, 4] = np.nan                     # a rejected step's direction may be non-finite
    er, ei = np.array([1.0, 0.5, 0.25]), np.array([1.0, 1.0, 0.5])
    ok = np.array([True, False, True])
    beta = np.array([0.3, 0.0, 0.7])
    # expected, written as in the solver
    s4 = (3, 1, 1, 1)
    z = psi - (g_re * er.astype(np.float32).reshape(s4) + 1j * g_im * ei.astype(np.float32).reshape(s4)).astype(np.complex64)
    z = np.where(ok.reshape(s4), z, psi)
    want_psi = z + beta.astype(np.float32).reshape(s4) * (z - z_old)
    want_acc = np.where(ok.reshape(s4), psi, acc)
    g_keep = g_re.copy()
    p2, z2 = pv.momentum_step(psi, z_old, g_re, g_im, er, ei, ok, beta, psi_acc=acc)
    assert p2 is psi and z2 is z_old
    np.testing.assert_allclose(psi, want_psi, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(z_old, z, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(acc, want_acc)
    np.testing.assert_array_equal(g_re, g_keep)
    assert np.isfinite(psi).all()


def test_exp_kernel_accuracy():
    # the vectorised Cephes-style exp/sin/cos against NumPy's complex64 exp, over log-amplitudes and
    # phases far beyond any sample's, and a row with |Im ψ| > 8192 (libm fallback)
    rng = np.random.default_rng(9)
    psi = (rng.uniform(-30, 10, (6, 1000)) + 1j * rng.uniform(-8000, 8000, (6, 1000))).astype(np.complex64)
    psi[1] = (rng.uniform(-1, 0.2, 1000) + 1j * rng.uniform(-4, 4, 1000)).astype(np.complex64)
    psi[2, 7] = np.complex64(0.1 + 9000.5j)
    ref = np.exp(psi)
    x = np.empty_like(psi)
    w = np.empty_like(psi)
    pk.NumbaOps().exp(psi, x, w)
    np.testing.assert_array_equal(x, w)
    err = np.abs(x.astype(np.complex128) - ref) / np.abs(ref)
    assert err.max() < 5e-7, err.max()
    # overflow and underflow as NumPy: inf beyond ~88.72, ~0 below -87
    big = np.array([[100.0 + 0j, -120.0 + 0.3j]], np.complex64)
    xb, wb = np.empty_like(big), np.empty_like(big)
    pk.NumbaOps().exp(big, xb, wb)
    assert np.isinf(xb[0, 0].real) and abs(xb[0, 1]) < 1e-37


@pytest.mark.parametrize("prior", [None, 300.0])
def test_numba_path_thick_sample(prior):
    # phase down to −150 rad (|Im ψ| ≫ |Re ψ|): still float32 rounding (observed ≤ 4e-6)
    model, psi, yspec, _ = _case(k=1, nb=1, delta_over_beta=prior)
    h, w = model.shape
    yy, xx = np.mgrid[:h, :w]
    disc = np.clip(1 - ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (0.3 * min(h, w)) ** 2, 0, None)
    psi = (psi + (-0.3 - 150j) * disc).astype(np.complex64)
    ref = _reference(model, psi, yspec)
    out = pk.fused_gradient(model, psi, yspec, ops=pk.NumbaOps())
    for a, b in zip(out[:2], ref[:2]):
        assert _rel(a, b) < 3e-5
    assert _rel(out[3], ref[3]) < 1e-6
    np.testing.assert_allclose(out[2], ref[2], rtol=1e-6)


@pytest.mark.parametrize("use_numba", [True, False])
def test_batch_dot_and_axpy(monkeypatch, use_numba):
    monkeypatch.setattr(pk, "_USE_NUMBA", use_numba)
    monkeypatch.setattr(pk, "_SMALL", 0)
    monkeypatch.setenv("XSPECKLE_FFT_WORKERS", "2")
    rng = np.random.default_rng(2)
    u, v, w = rng.standard_normal((3, 3, 1, 30, 34)).astype(np.float32)
    want = (u.astype(np.float64) * v).reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(pv.batch_dot(u, v), want, rtol=1e-6)
    np.testing.assert_allclose(pv.batch_dot((u, w), (v, w)), want + (w.astype(np.float64) ** 2).reshape(3, -1).sum(1),
                               rtol=1e-6)
    a = np.array([0.5, -2.0, 0.0])
    y = u.copy()
    out = pv.batch_axpy(y, a, v)
    assert out is y
    np.testing.assert_allclose(y, u + a.astype(np.float32)[:, None, None, None] * v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("use_numba", [True, False])
def test_batch_multi_dot_and_combine(monkeypatch, use_numba):
    monkeypatch.setattr(pk, "_USE_NUMBA", use_numba)
    monkeypatch.setattr(pk, "_SMALL", 0)
    monkeypatch.setenv("XSPECKLE_FFT_WORKERS", "2")
    rng = np.random.default_rng(3)
    stack = rng.standard_normal((4, 2, 1, 20, 22)).astype(np.float32)
    ys = rng.standard_normal((4, 2, 1, 20, 22)).astype(np.float32)
    v = rng.standard_normal((2, 1, 20, 22)).astype(np.float32)
    idx = [3, 0, 2]
    want = np.stack([(stack[i].astype(np.float64) * v).reshape(2, -1).sum(1) for i in idx])
    np.testing.assert_allclose(pv.batch_multi_dot(stack, idx, v), want, rtol=1e-6)
    a0 = np.array([-1.5, 0.25])
    cs = rng.standard_normal((3, 2))
    cy = rng.standard_normal((3, 2))
    out = np.empty_like(v)
    got = pv.batch_combine(out, a0, v, stack, cs, ys, cy, idx)
    assert got is out
    want = a0[:, None, None, None] * v.astype(np.float64)
    for k, i in enumerate(idx):
        want = want + cs[k][:, None, None, None] * stack[i] + cy[k][:, None, None, None] * ys[i]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
