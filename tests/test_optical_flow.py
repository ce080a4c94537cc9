"""Optical-flow speckle tracking (Paganin et al. 2018; methods.md §1.4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from xspeckle.errors import ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve import get_method
from xspeckle.retrieve.optical_flow import OpticalFlowRetriever, optical_flow

GEOM = Geometry(energy_ev=20000.0, pixel_size_m=1.5e-6, sample_detector_distance_m=0.5)


def speckle(n, h, w, sigma=2.0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        f = ndi.gaussian_filter(rng.standard_normal((h, w)), sigma) + 1j * ndi.gaussian_filter(
            rng.standard_normal((h, w)), sigma
        )
        i = np.abs(f) ** 2
        out.append(0.7 + 0.3 * i / i.mean())
    return np.asarray(out, np.float32)


def bump_flow(h, w, amp):
    """Curl-free flow u = -grad of a Gaussian bump (px), peak |u| = amp (refraction by a phase bump)."""
    y, x = np.mgrid[0:h, 0:w].astype(float)
    s = h / 5
    g = np.exp(-((x - w / 2) ** 2 + (y - h / 2) ** 2) / (2 * s * s))
    ux, uy = (x - w / 2) / s * g, (y - h / 2) / s * g  # outward flow
    k = amp / max(np.abs(ux).max(), np.abs(uy).max())
    return (k * ux).astype(np.float32), (k * uy).astype(np.float32)


def flux_warp(ref, ux, uy):
    """Physical speckle image of a phase object: I_R(r - u) (1 - div u) (intensity conserved)."""
    h, w = ref.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    div = np.gradient(ux, axis=1) + np.gradient(uy, axis=0)
    out = [ndi.map_coordinates(f.astype(float), [yy - uy, xx - ux], order=3, mode="reflect") * (1 - div) for f in ref]
    return np.asarray(out, np.float32)


@pytest.mark.parametrize("n,tol", [(1, 0.15), (4, 0.1)])
def test_sign_and_accuracy(n, tol):
    # a known outward flow must come back outward (+u), with the right magnitude
    ref = speckle(n, 128, 128)
    ux, uy = bump_flow(128, 128, 0.5)
    sam = flux_warp(ref, ux, uy)
    out = optical_flow(reference=ref, sample=sam)
    d = out["displacement"]
    m = 16
    err = np.sqrt(np.mean((d - np.stack([ux, uy]))[:, m:-m, m:-m] ** 2)) / 0.5
    assert err < tol, err  # measured 0.10 (N = 1), 0.06 (N = 4) relative to the peak
    gain = float((d[0] * ux).sum() / (ux * ux).sum())
    assert 0.85 < gain < 1.1, gain
    corr = np.corrcoef(d[1][m:-m, m:-m].ravel(), uy[m:-m, m:-m].ravel())[0, 1]
    assert corr > 0.95


def test_retriever_phase_sign():
    # design.md: a sphere (phase < 0 inside) pushes speckles outward; grad(phi) = k p u / Delta, so an
    # outward flow integrates to a phase minimum at the centre
    ref = speckle(2, 96, 96)
    ux, uy = bump_flow(96, 96, 0.4)
    sam = flux_warp(ref, ux, uy)
    r = get_method("of")(ref, GEOM)
    assert isinstance(r, OpticalFlowRetriever)
    out = r(sam)
    for k in ("phase", "transmission", "displacement", "residual"):
        assert np.all(np.isfinite(out[k])) and out[k].shape[-2:] == (96, 96), k
    assert out["phase"][48, 48] < 0 and abs(out["phase"][48, 48]) > 5 * abs(np.median(out["phase"][:8]))
    json.dumps(r.parameters)
    with pytest.raises(ParameterError):
        OpticalFlowRetriever(ref, GEOM, combine="mean")


def test_absorption_correction_and_highpass():
    ref = speckle(3, 64, 64)
    sam = 0.7 * ref  # pure absorption: no flow
    plain = optical_flow(reference=ref, sample=sam, absorption_sigma_px=10)
    assert np.allclose(plain["transmission"], 0.7, atol=1e-3)
    assert np.abs(plain["displacement"]).max() < 1e-3
    hp = optical_flow(reference=ref, sample=sam, absorption_sigma_px=10, highpass_px=20)
    assert np.all(np.isfinite(hp["displacement"]))
