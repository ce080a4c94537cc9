"""Centre finding, unit conversion, background removal and the file-level reconstruction."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from xspeckle.errors import InputError, OutputError
from xspeckle.geometry import Geometry
from xspeckle.tomo import fbp as F
from xspeckle.tomo.center import find_center, find_center_com, find_center_pair, opposite_pair
from xspeckle.tomo.convert import (
    background_mask,
    beta_from_transmission,
    delta_from_phase,
    diffusion_from_deff,
    remove_background_quadratic,
)
from xspeckle.tomo.reconstruct import reconstruct_file


@pytest.mark.parametrize("center", [79.5, 83.3, 74.77, 90.0])
def test_center_from_pair_recovers_offset(center):
    n, theta = 160, np.linspace(0.0, 180.0, 121)  # 0 and 180 both present
    rng = np.random.default_rng(3)
    sino = F.radon_ellipses(F.SHEPP_LOGAN_MODIFIED, theta, n, radius_px=55, center=center)
    sino += rng.normal(0, 0.02 * sino.max(), sino.shape)
    c = find_center(np.stack([sino, sino * 0.9]), theta)
    assert abs(c - center) < 0.25, (c, center)


def test_center_pair_direct_and_errors():
    n = 120
    s = F.radon_ellipses(F.SHEPP_LOGAN_MODIFIED, np.array([30.0, 210.0]), n, radius_px=40, center=61.7)
    assert abs(find_center_pair(s[0], s[1]) - 61.7) < 0.25
    assert opposite_pair(np.linspace(0, 180, 5)) == (0, 4)
    with pytest.raises(InputError, match="--center"):
        opposite_pair(np.linspace(0, 180, 90, endpoint=False) [:40])


@pytest.mark.parametrize("center", [63.5, 66.2, 60.9])
def test_center_of_mass_fit_without_pair(center):
    n, theta = 128, np.linspace(0.0, 180.0, 90, endpoint=False)  # no 180-degree pair
    rng = np.random.default_rng(7)
    sino = -F.radon_ellipses(F.SHEPP_LOGAN_MODIFIED, theta, n, radius_px=40, center=center) + 0.3  # offset air
    sino += rng.normal(0, 0.02 * np.abs(sino).max(), sino.shape)
    assert abs(find_center_com(sino, theta) - center) < 0.25
    assert abs(find_center(sino[None], theta) - center) < 0.25  # auto falls back to the fit
    with pytest.raises(InputError, match="--center"):
        find_center(sino[None], theta, method="pair")


def _disc_sino(n, theta, r_px, value, x0=0.0, y0=0.0):
    return F.radon_ellipses([(value, r_px, r_px, x0, y0, 0.0)], theta, n, radius_px=1.0)


def test_delta_beta_diffusion_units_and_signs():
    geo = Geometry(energy_ev=20000.0, pixel_size_m=1e-6, sample_detector_distance_m=0.5)
    k, p = geo.wavenumber_per_m, 1e-6
    n, theta = 96, np.linspace(0, 180, 120, endpoint=False)
    d0, b0, e0 = 3e-7, 2e-9, 0.05
    chord_px = _disc_sino(n, theta, 25.0, 1.0)  # path length in px
    phase = (-k * p * d0 * chord_px).astype(np.float32)  # phase = -k int delta dz (interfaces.md)
    trans = np.exp(-2 * k * p * b0 * chord_px).astype(np.float32)  # T = exp(-2k int beta dz)
    deff = (e0 * p * chord_px).astype(np.float32)  # D_eff = int d dz, m
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    inside = np.hypot(xx, yy) < 20
    d = delta_from_phase(phase, theta, wavenumber_per_m=k, voxel_size_m=p)
    b = beta_from_transmission(trans, theta, wavenumber_per_m=k, voxel_size_m=p)
    e = diffusion_from_deff(deff, theta, voxel_size_m=p)
    assert abs(d[inside].mean() / d0 - 1) < 0.01  # positive in matter, right scale
    assert abs(b[inside].mean() / b0 - 1) < 0.01
    assert abs(e[inside].mean() / e0 - 1) < 0.01
    assert abs(d[~(np.hypot(xx, yy) < 30)].mean()) < 0.01 * d0


def test_quadratic_background_removed():
    n = 96
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    disc = (np.hypot(xx - 10, yy + 5) < 15).astype(np.float32)
    bg = 0.05 + 0.3 * (xx / n) - 0.2 * (yy / n) + 0.4 * (xx / n) ** 2 + 0.25 * (xx * yy / n**2) - 0.3 * (yy / n) ** 2
    vol = np.stack([disc + bg, 2 * disc - bg]).astype(np.float32)
    m = background_mask(vol[0])
    assert not m[np.hypot(xx - 10, yy + 5) < 17].any()  # the dilated sample is excluded
    remove_background_quadratic(vol)
    usable = np.hypot(xx, yy) < 0.9 * n / 2
    assert np.abs(vol[0][usable & (disc == 0)]).max() < 1e-4
    assert np.abs(vol[0][disc > 0] - 1).max() < 1e-4
    assert np.abs(vol[1][disc > 0] - 2).max() < 1e-4


def test_quadratic_background_user_mask():
    n = 64
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    vol = (0.1 + 0.2 * xx / n).astype(np.float32)
    mask = np.zeros((n, n), bool)
    mask[:, :20] = True
    remove_background_quadratic(vol, mask=mask)
    assert np.abs(vol).max() < 1e-5


def _write_retrieval(path, sim, theta, with_diffusion):
    from xspeckle.io.results import write_retrieval

    outputs = {"phase": sim.truth["phase"], "transmission": sim.truth["transmission"]}
    if with_diffusion is not None:
        outputs["diffusion"] = with_diffusion
    return write_retrieval(path, outputs, method="truth", parameters={}, geometry=sim.geometry, theta_deg=theta)


def test_tomo_beads_end_to_end(tmp_path):
    from xspeckle.simulate import make_preset

    sim = make_preset("tomo-beads", size=64, angles=96, positions=1, noise=False)
    A, H, W = sim.truth["phase"].shape
    theta = sim.theta_deg
    # a dark-field density e0 inside a vertical cylinder of radius 12 px: D_eff = e0 * chord (m)
    p = float(sim.truth["voxel_size_m"])
    e0 = 0.02
    chord = _disc_sino(W, theta, 12.0, 1.0, x0=-8.0, y0=6.0)
    deff = np.broadcast_to((e0 * p * chord)[:, None, :], (A, H, W)).astype(np.float32)
    ret = _write_retrieval(tmp_path / "ret.h5", sim, theta, deff)
    calls = []
    out = reconstruct_file(ret, tmp_path / "vol.h5", slab_rows=24, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (H, H) and len(calls) == 3
    assert not list(tmp_path.glob(".vol.h5.tmp*"))
    with h5py.File(out, "r") as f:
        assert f["volume"].attrs["voxel_size_m"] == pytest.approx(p)
        delta, beta, dif = f["volume/delta"][()], f["volume/beta"][()], f["volume/diffusion"][()]
        assert delta.shape == (H, W, W) and delta.dtype == np.float32
        assert f["volume/delta"].attrs["units"] == "1" and f["volume/diffusion"].attrs["units"] == "1"
        assert f.attrs["center_source"] == "centre-of-mass fit"  # [0, 180) has no 180-degree pair
        assert abs(f.attrs["center_px"] - (W - 1) / 2) < 0.25
        json.loads(f.attrs["parameters"])
    # simulate.phantoms uses the FBP orientation (y up, performance.md §3): no flip
    td, tb = sim.truth["delta"], sim.truth["beta"]
    glass = td >= 0.9 * td.max()  # bead voxels (glass is the densest material)
    core = glass & (np.abs(np.gradient(td.astype(np.float64))[1]) == 0)  # away from the voxelised surfaces
    for rec, tru in ((delta, td), (beta, tb)):
        ratio = rec[core].mean() / tru[core].mean()
        assert abs(ratio - 1) < 0.05, ratio  # mean delta / beta inside the beads within 5%
    yy, xx = np.mgrid[:W, :W] - (W - 1) / 2
    cyl = np.hypot(xx + 8, -yy - 6) < 9  # x0 = -8, y0 = +6 (y up)
    assert abs(dif[:, cyl].mean() / e0 - 1) < 0.05
    with pytest.raises(OutputError, match="exists"):
        reconstruct_file(ret, out)
    # an explicit --center equal to the truth gives the same volume
    out2 = reconstruct_file(ret, tmp_path / "vol2.h5", center_px=(W - 1) / 2, background=None)
    with h5py.File(out2, "r") as f:
        d2 = f["volume/delta"][()]
        assert f.attrs["center_source"] == "user" and "diffusion" in f["volume"]
    assert abs(d2[core].mean() / td[core].mean() - 1) < 0.05


def test_transmission_only_with_offset_axis(tmp_path):
    from xspeckle.io.results import write_retrieval

    geo = Geometry(energy_ev=20000.0, pixel_size_m=2e-6, sample_detector_distance_m=0.5)
    k, p = geo.wavenumber_per_m, 2e-6
    n, h, theta = 64, 4, np.linspace(0.0, 180.0, 91)  # 0 and 180 present: centre from the pair
    b0, c = 5e-9, 33.4
    chord = F.radon_ellipses([(1.0, 14.0, 14.0, 5.0, -3.0, 0.0)], theta, n, radius_px=1.0, center=c)
    T = np.exp(-2 * k * p * b0 * chord).astype(np.float32)
    ret = write_retrieval(tmp_path / "t.h5", {"transmission": np.repeat(T[:, None, :], h, axis=1)}, method="x",
                          parameters={}, geometry=geo, theta_deg=theta)
    out = reconstruct_file(ret, tmp_path / "v.h5", slab_rows=3)
    with h5py.File(out, "r") as f:
        assert set(f["volume"]) == {"beta"}
        assert f.attrs["center_source"] == "0/180 pair" and abs(f.attrs["center_px"] - c) < 0.25
        beta = f["volume/beta"][()]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    inside = np.hypot(xx - 5, -yy + 3) < 11  # disc at x = 5, y = -3 (y up) relative to the axis
    assert abs(beta[:, inside].mean() / b0 - 1) < 0.02


def test_reconstruct_rejects_bad_input(tmp_path):
    from xspeckle.errors import ScanFormatError

    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f.create_group("retrieval").create_dataset("visibility", data=np.ones((4, 8, 8), np.float32))
        f.attrs["method"] = "umpa"
        f.attrs["parameters"] = "{}"
    with pytest.raises(ScanFormatError):
        reconstruct_file(p, tmp_path / "v.h5")


def test_arrays_and_file_share_one_reconstruction(tmp_path):
    """``xspeckle.tomo.reconstruct`` (arrays; what ``api.tomo`` wraps) and ``reconstruct_file`` (``xspeckle tomo``)
    are one code path: same rotation-axis rule (offset axis found from the 0/180 pair), same volume."""
    from xspeckle import api
    from xspeckle.io.results import write_retrieval
    from xspeckle.tomo import reconstruct

    geo = Geometry(energy_ev=20000.0, pixel_size_m=2e-6, sample_detector_distance_m=0.5)
    n, h, theta = 48, 5, np.linspace(0.0, 180.0, 73)
    c = 25.3
    chord = F.radon_ellipses([(1.0, 9.0, 9.0, 4.0, -2.0, 0.0)], theta, n, radius_px=1.0, center=c)
    phase = np.repeat((-geo.wavenumber_per_m * 1e-6 * geo.pixel_size_m * chord)[:, None, :], h, axis=1)
    phase = phase.astype(np.float32)
    ret = write_retrieval(tmp_path / "r.h5", {"phase": phase}, method="x", parameters={}, geometry=geo,
                          theta_deg=theta)
    vol = reconstruct_file(ret, tmp_path / "v.h5", slab_rows=2)
    arr = reconstruct(phase, theta, geo)
    via_api = api.tomo(phase, theta, geo)
    with h5py.File(vol, "r") as f:
        assert f.attrs["center_px"] == arr["center_px"] == via_api["center_px"]
        assert f.attrs["center_source"] == arr["center_source"] == "0/180 pair"
        assert abs(arr["center_px"] - c) < 0.25
        np.testing.assert_allclose(arr["delta"], f["volume/delta"][()], rtol=0, atol=1e-6 * np.abs(arr["delta"]).max())
    np.testing.assert_array_equal(via_api["delta"], arr["delta"])
