"""Scan, retrieval and volume files: round trips and hardening against bad input."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from xspeckle.errors import GeometryError, OutputError, ScanFormatError
from xspeckle.io import (
    RetrievalWriter,
    Scan,
    open_retrieval,
    open_volume,
    save_scan,
    write_retrieval,
    write_scan,
    write_volume,
)


# ----------------------------------------------------------------------------- scan round trip
def test_scan_roundtrip(small_scan, small_scan_arrays, small_geometry):
    a = small_scan_arrays
    with Scan(small_scan) as s:
        assert (s.n_positions, s.n_angles, s.frame_shape) == (3, 4, (32, 40))
        assert s.dtype == np.uint16 and s.has_flat and s.has_dark
        assert s.geometry == small_geometry
        np.testing.assert_array_equal(s.reference(), a["reference"].astype(np.float32))
        np.testing.assert_array_equal(s.sample(2), a["data"][:, 2].astype(np.float32))
        np.testing.assert_array_equal(s.sample(1, positions=[2, 0]), a["data"][[2, 0], 1].astype(np.float32))
        np.testing.assert_allclose(s.flat(), a["flat"].mean(0), rtol=1e-6)
        np.testing.assert_allclose(s.dark(), a["dark"].mean(0), rtol=1e-6)
        np.testing.assert_allclose(s.theta_deg, a["theta_deg"])
        # normalised = (I - D) / (F - D)
        exp = (a["data"][:, 0] - a["dark"].mean(0)) / (a["flat"].mean(0) - a["dark"].mean(0))
        np.testing.assert_allclose(s.normalised_sample(0), exp, rtol=1e-5)
    with h5py.File(small_scan) as f:
        assert f["exchange/data"].chunks == (1, 1, 32, 40)  # one frame per chunk
        assert f["exchange/theta"].attrs["units"] == "degree"


def test_scan_single_position_layouts(tmp_path, small_geometry):
    rng = np.random.default_rng(0)
    ref = rng.uniform(1, 2, (16, 16)).astype(np.float32)
    data = rng.uniform(1, 2, (3, 16, 16)).astype(np.float32)  # (A, H, W), P = 1
    p = write_scan(tmp_path / "s.h5", data=data, reference=ref, geometry=small_geometry, theta_deg=[0, 1, 2])
    with Scan(p) as s:
        assert (s.n_positions, s.n_angles) == (1, 3)
        np.testing.assert_array_equal(s.sample(2)[0], data[2])
        assert not s.has_flat and s.flat() is None and s.dark() is None


def test_save_scan_streams_a_copy(small_scan, tmp_path):
    out = save_scan(Scan(small_scan), tmp_path / "copy.h5")
    with Scan(small_scan) as a, Scan(out) as b:
        assert b.dtype == np.uint16
        for i in range(a.n_angles):
            np.testing.assert_array_equal(a.sample(i), b.sample(i))
        np.testing.assert_array_equal(a.reference(), b.reference())
        np.testing.assert_allclose(a.theta_deg, b.theta_deg)


def test_write_scan_refuses_overwrite_and_leaves_no_temp(small_scan, small_scan_arrays, small_geometry):
    with pytest.raises(OutputError, match="--overwrite"):
        write_scan(small_scan, geometry=small_geometry, **small_scan_arrays)
    write_scan(small_scan, geometry=small_geometry, overwrite=True, **small_scan_arrays)
    assert [p.name for p in small_scan.parent.iterdir()] == [small_scan.name]


def test_atomic_write_leaves_nothing_on_failure(tmp_path, small_geometry):
    bad = np.zeros((2, 2, 16, 16), np.float32)
    with pytest.raises(ScanFormatError):
        write_scan(tmp_path / "x.h5", data=bad, reference=np.zeros((3, 16, 16), np.float32), geometry=small_geometry)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- FourRod (real data)
def test_fourrod_loads(fourrod_path):
    with Scan(fourrod_path) as s:
        assert s.n_positions == 13 and s.n_angles == 1
        assert s.frame_shape == (256, 2220)
        assert s.has_flat and not s.has_dark
        assert s.geometry.diffuser_detector_distance_m is None
        assert s.geometry.energy_ev == 25000.0 and s.geometry.pixel_size_m == 6.5e-6
        ref = s.reference([0, 5])
        assert ref.shape == (2, 256, 2220) and ref.dtype == np.float32
        n = s.normalised_sample(0, [0])
        # air columns ~1420-1580: sample/flat about 1 (speckle visibility ~6 %)
        assert 0.8 < float(np.median(n[0, :, 1420:1580])) < 1.2
        assert np.isfinite(n).all()
        with pytest.raises(GeometryError, match="diffuser_detector_distance_m"):
            s.geometry.require_l2()


# ----------------------------------------------------------------------------- hardening
def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
        g = f.create_group("geometry")
        g.attrs.update(dict(energy_ev=20000.0, pixel_size_m=1e-6, sample_detector_distance_m=0.5,
                            diffuser_position="upstream"))
    return path


def test_missing_dataset_named(tmp_path):
    p = _h5(tmp_path / "a.h5", **{"exchange/data": np.ones((2, 16, 16), np.float32)})
    with pytest.raises(ScanFormatError, match=r"a\.h5.*/exchange/data_reference"):
        Scan(p)


def test_wrong_dims_and_shapes(tmp_path):
    p = _h5(tmp_path / "b.h5", **{"exchange/data": np.ones((2, 16, 16), np.float32),
                                  "exchange/data_reference": np.ones((16, 12), np.float32)})
    with pytest.raises(ScanFormatError, match="same"):
        Scan(p)
    p = _h5(tmp_path / "c.h5", **{"exchange/data": np.ones((2, 3, 2, 16, 16), np.float32),
                                  "exchange/data_reference": np.ones((2, 16, 16), np.float32)})
    with pytest.raises(ScanFormatError, match=r"\(P, A, H, W\)"):
        Scan(p)
    p = _h5(tmp_path / "d.h5", **{"exchange/data": np.ones((3, 2, 16, 16), np.float32),
                                  "exchange/data_reference": np.ones((2, 16, 16), np.float32)})
    with pytest.raises(ScanFormatError, match="must match"):
        Scan(p)


def test_missing_geometry_attr(tmp_path):
    p = tmp_path / "g.h5"
    with h5py.File(p, "w") as f:
        f["exchange/data"] = np.ones((16, 16), np.float32)
        f["exchange/data_reference"] = np.ones((16, 16), np.float32)
        f.create_group("geometry").attrs["energy_ev"] = 20000.0
    with pytest.raises(GeometryError, match="pixel_size_m"):
        Scan(p)


def test_nan_frames_rejected_or_repaired(tmp_path, small_geometry):
    rng = np.random.default_rng(2)
    ref = rng.uniform(1, 2, (2, 16, 16)).astype(np.float32)
    data = rng.uniform(1, 2, (2, 2, 16, 16)).astype(np.float32)
    data[1, 1] = np.nan  # a whole frame lost
    data[0, 0, 3, 4] = np.inf  # one hot/bad pixel: repaired
    p = write_scan(tmp_path / "n.h5", data=data, reference=ref, geometry=small_geometry, theta_deg=[0, 90])
    with Scan(p) as s:
        fixed = s.sample(0)
        assert np.isfinite(fixed).all()
        assert 1 <= fixed[0, 3, 4] <= 2  # local median of U(1, 2) neighbours
        with pytest.raises(ScanFormatError, match=r"n\.h5: /exchange/data position 1 angle 1 has 100\.0% NaN"):
            s.sample(1)


def test_all_zero_reference_and_flat(tmp_path, small_geometry):
    ref = np.ones((2, 16, 16), np.uint16)
    ref[1] = 0
    p = write_scan(tmp_path / "z.h5", data=np.ones((2, 1, 16, 16), np.uint16), reference=ref,
                   flat=np.zeros((16, 16), np.uint16), geometry=small_geometry)
    with Scan(p) as s:
        with pytest.raises(ScanFormatError, match="data_reference position 1 is zero"):
            s.reference()
        s.reference([0])
        with pytest.raises(ScanFormatError, match="data_white is zero"):
            s.flat()


def test_uint16_dark_larger_than_frame_does_not_wrap(tmp_path, small_geometry):
    data = np.full((1, 16, 16), 100, np.uint16)
    dark = np.full((16, 16), 150, np.uint16)  # dark > frame: uint16 arithmetic would wrap to ~65486
    flat = np.full((16, 16), 1150, np.uint16)
    p = write_scan(tmp_path / "u.h5", data=data, reference=np.full((16, 16), 1000, np.uint16), dark=dark, flat=flat,
                   geometry=small_geometry)
    with Scan(p) as s:
        np.testing.assert_allclose(s.normalised_sample(0), -0.05, atol=1e-6)


def test_truncated_file(tmp_path, small_scan):
    raw = small_scan.read_bytes()
    t = tmp_path / "trunc.h5"
    t.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ScanFormatError, match=r"trunc\.h5"):
        with Scan(t) as s:  # either opening or reading a frame fails, with the file named
            for i in range(s.n_angles):
                s.sample(i)
    e = tmp_path / "empty.h5"
    e.write_bytes(b"")
    with pytest.raises(ScanFormatError, match="empty"):
        Scan(e)
    n = tmp_path / "text.h5"
    n.write_text("not hdf5\n")
    with pytest.raises(ScanFormatError, match="not a readable HDF5"):
        Scan(n)


def test_theta_in_radians_rejected(tmp_path, small_geometry):
    data = np.ones((12, 16, 16), np.float32)
    with pytest.raises(ScanFormatError, match="radians"):
        p = write_scan(tmp_path / "r.h5", data=data, reference=np.ones((16, 16), np.float32), geometry=small_geometry,
                       theta_deg=np.linspace(0, np.pi, 12, endpoint=False))
        Scan(p)


def test_positions_validation(small_scan):
    with Scan(small_scan) as s:
        with pytest.raises(ScanFormatError, match="out of range"):
            s.reference([0, 3])
        with pytest.raises(ScanFormatError, match="twice"):
            s.reference([1, 1])
        assert s.positions("0, 2") == [0, 2]
        with pytest.raises(ScanFormatError, match="comma-separated"):
            s.positions("0;2")


# ----------------------------------------------------------------------------- retrieval / volume files
def test_retrieval_roundtrip(tmp_path, small_geometry):
    rng = np.random.default_rng(3)
    outs = {
        "phase": rng.normal(size=(2, 8, 10)),
        "transmission": rng.uniform(size=(2, 8, 10)),
        "diffusion_tensor": rng.normal(size=(3, 2, 8, 10)),
        "displacement": rng.normal(size=(2, 2, 8, 10)),
    }
    p = write_retrieval(tmp_path / "r.h5", outs, method="mist", parameters={"alpha": np.float32(0.5), "n": 3},
                        geometry=small_geometry, theta_deg=[0.0, 90.0])
    with h5py.File(p) as f:
        assert f.attrs["method"] == "mist" and "xspeckle_version" in f.attrs
        assert json.loads(f.attrs["parameters"]) == {"alpha": 0.5, "n": 3}
        assert f["retrieval/phase"].attrs["units"] == "rad"
        assert f["retrieval/transmission"].attrs["units"] == "1"
        assert f["retrieval/displacement"].attrs["units"] == "px"
        assert f["retrieval/diffusion_tensor"].shape == (3, 2, 8, 10)
        assert f["retrieval/phase"].dtype == np.float32
        np.testing.assert_allclose(f["exchange/theta"][()], [0, 90])
        assert f["geometry"].attrs["energy_ev"] == small_geometry.energy_ev
    with open_retrieval(p) as r:
        assert r.method == "mist" and r.n_angles == 2 and r.frame_shape == (8, 10) and r.geometry == small_geometry
        np.testing.assert_allclose(r["phase"], outs["phase"].astype(np.float32))
        np.testing.assert_allclose(r.read("phase", rows=3), outs["phase"][:, 3].astype(np.float32))  # sinogram
        np.testing.assert_allclose(r.read("displacement", angles=1), outs["displacement"][:, 1].astype(np.float32))
    with pytest.raises(ScanFormatError, match="expected \\(A, H, W\\)"):
        write_retrieval(tmp_path / "bad.h5", {"phase": np.zeros((8, 10))}, method="m", parameters={},
                        geometry=None, theta_deg=None)
    with pytest.raises(ScanFormatError, match="not one of"):
        write_retrieval(tmp_path / "bad.h5", {"phaze": np.zeros((1, 8, 10))}, method="m", parameters={},
                        geometry=None, theta_deg=None)


def test_retrieval_writer_streams_and_resumes(tmp_path, small_geometry):
    from xspeckle.io.partial import partial_path

    tmp = partial_path(tmp_path / "out.h5")
    assert tmp.name == ".out.h5.partial"
    shapes = {"phase": (8, 10), "displacement": (2, 8, 10)}
    header = dict(method="umpa", parameters={"window": 5}, pipeline={}, geometry_attrs=small_geometry.to_attrs(),
                  theta_deg=[0, 60, 120])
    w = RetrievalWriter.create(tmp, shapes=shapes, n_angles=3, digest="h1", **header)
    w.write(0, {"phase": np.full((8, 10), 1.0), "displacement": np.full((2, 8, 10), 2.0)})
    w.close()
    w, why = RetrievalWriter.try_open(tmp, "h1", 3)
    assert why == "" and w.done.tolist() == [True, False, False]
    with pytest.raises(ScanFormatError, match="not written"):
        w.commit(tmp_path / "out.h5")
    for i in (1, 2):
        w.write(i, {"phase": np.full((8, 10), i + 1.0), "displacement": np.full((2, 8, 10), 5.0)})
    with pytest.raises(ScanFormatError, match="expected \\(8, 10\\)"):
        w.write(1, {"phase": np.zeros((8, 9)), "displacement": np.zeros((2, 8, 10))})
    final = w.commit(tmp_path / "out.h5")
    assert not tmp.exists()
    with open_retrieval(final) as r:
        assert r.complete and r.parameters == {"window": 5} and r.geometry == small_geometry
        np.testing.assert_array_equal(r["phase"][:, 0, 0], [1, 2, 3])
        assert r["displacement"].shape == (2, 3, 8, 10)
        with h5py.File(final) as f:
            assert f["retrieval/phase"].chunks == (1, 8, 10)
            assert f["retrieval/displacement"].attrs["components"] == "x,y"
    # a partial file of other inputs (another hash), or not a partial file, is not resumed
    w = RetrievalWriter.create(tmp, shapes=shapes, n_angles=3, digest="h1", **header)
    w.close()
    assert RetrievalWriter.try_open(tmp, "h2", 3) == (None, "the partial file was made with other inputs or parameters")
    other = write_retrieval(tmp_path / "whole.h5", {"phase": np.zeros((3, 8, 10))}, method="umpa", parameters={},
                            geometry=None, theta_deg=None)
    assert RetrievalWriter.try_open(other, "h1", 3) == (None, "whole.h5 is not an xspeckle partial file")
    with pytest.raises(ScanFormatError, match="not one of"):
        RetrievalWriter.create(tmp, shapes={"phaze": (8, 10)}, n_angles=3, digest="h1", **header)


def test_one_retrieval_writer_class():
    """Issue 17: the pipeline's resumable writer is the only angle-by-angle writer of retrieval files."""
    import inspect
    from pathlib import Path

    import xspeckle
    from xspeckle.io.partial import RetrievalWriter as W
    from xspeckle.pipeline import run

    assert RetrievalWriter is W and run.RetrievalWriter is W
    src = Path(inspect.getfile(xspeckle)).parent
    writers = [p.relative_to(src).as_posix() for p in src.rglob("*.py")
               if "progress/angles_done" in p.read_text() and "create_dataset(\"angles_done\"" in p.read_text()]
    assert writers == ["io/partial.py"], writers


def test_volume_roundtrip(tmp_path, small_geometry):
    d = np.random.default_rng(4).normal(size=(4, 6, 6))
    p = write_volume(tmp_path / "v.h5", delta=d, beta=d / 100, diffusion=d * 2, voxel_size_m=1e-6,
                     attrs={"method": "fbp", "center_px": 3.0, "info": {"a": 1}}, geometry=small_geometry)
    with h5py.File(p) as f:
        assert f["volume"].attrs["voxel_size_m"] == 1e-6
        assert f["volume/delta"].dtype == np.float32 and f["volume/delta"].attrs["units"] == "1"
    with open_volume(p) as v:
        assert v.shape == (4, 6, 6) and v.names == ["beta", "delta", "diffusion"]
        np.testing.assert_allclose(v.delta, d.astype(np.float32))
        np.testing.assert_allclose(v.read("beta", z=2), (d / 100)[2].astype(np.float32))
        assert json.loads(v.attrs["info"]) == {"a": 1}
    with pytest.raises(ScanFormatError, match="voxel size"):
        write_volume(tmp_path / "w.h5", delta=d, beta=d, voxel_size_m=6.5)
    with pytest.raises(ScanFormatError, match="no /volume group"):
        open_volume(tmp_path / "v.h5" if False else write_retrieval(
            tmp_path / "rr.h5", {"phase": np.zeros((1, 8, 8))}, method="x", parameters={}, geometry=None, theta_deg=None))


def test_scan_pickles_and_caches_flat(small_scan):
    import pickle

    with Scan(small_scan) as s:
        f1 = s.flat()
        assert s.flat() is f1  # computed once per Scan
        s2 = pickle.loads(pickle.dumps(s))
        try:
            np.testing.assert_array_equal(s2.sample(1), s.sample(1))
            np.testing.assert_array_equal(s2.flat(), f1)
        finally:
            s2.close()


def test_flat_stack_with_nan_frame_pixels(tmp_path, small_geometry):
    flat = np.full((3, 16, 16), 100.0, np.float32)
    flat[0, 2, 2] = np.nan  # bad in one flat frame only: mean of the other two
    flat[:, 5, 5] = np.inf  # bad in every flat frame: repaired from neighbours
    p = write_scan(tmp_path / "f.h5", data=np.ones((16, 16), np.float32), reference=np.ones((16, 16), np.float32),
                   flat=flat, geometry=small_geometry)
    with Scan(p) as s:
        f = s.flat()
        assert np.isfinite(f).all() and np.allclose(f, 100.0)


def test_normalised_without_flat_is_scaled_to_one(tmp_path, small_geometry):
    rng = np.random.default_rng(6)
    ref = rng.uniform(900, 1100, (2, 16, 16)).astype(np.float32)
    data = (ref * 0.5)[:, None]
    p = write_scan(tmp_path / "nf.h5", data=data, reference=ref, dark=np.full((16, 16), 100.0, np.float32),
                   geometry=small_geometry)
    with Scan(p) as s:
        assert s.intensity_scale() == pytest.approx(ref.mean() - 100.0, rel=1e-6)
        r, x = s.normalised_reference(), s.normalised_sample(0)
        assert abs(float(r.mean()) - 1.0) < 1e-5
        np.testing.assert_allclose(x, (ref * 0.5 - 100) / (ref.mean() - 100), rtol=1e-5)
