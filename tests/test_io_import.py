"""Importers: TIFF/EDF stacks + sidecar, NeXus NXtomo, DXchange -> scan files."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest
import tifffile
import yaml

from xspeckle.errors import GeometryError, MethodUnavailableError, ScanFormatError
from xspeckle.io import Scan, import_hdf5, import_sidecar, read_dxchange, read_nxtomo, read_sidecar

GEOM = {"energy_ev": 20000.0, "pixel_size_m": 1e-6, "sample_detector_distance_m": 0.5, "diffuser_position": "upstream"}


def _write_tiffs(folder, a):
    """P = 3, A = 4: one file per reference, one multi-page file per position for the samples."""
    folder.mkdir(exist_ok=True)
    for k in range(3):
        tifffile.imwrite(folder / f"ref_{k + 1}.tif", a["reference"][k])
        tifffile.imwrite(folder / f"sam_{k + 1}.tif", a["data"][k], photometric="minisblack")  # (A, H, W) stack
    tifffile.imwrite(folder / "flat.tif", a["flat"])
    for j in range(2):
        tifffile.imwrite(folder / f"dark_{j}.tif", a["dark"][j])


def test_tiff_sidecar_roundtrip(tmp_path, small_scan_arrays):
    a = small_scan_arrays
    _write_tiffs(tmp_path / "raw", a)
    side = tmp_path / "raw" / "scan.yaml"
    side.write_text(yaml.safe_dump({
        "geometry": GEOM, "reference": "ref_*.tif", "sample": "sam_*.tif", "flat": "flat.tif",
        "dark": ["dark_*.tif"], "theta_deg": {"start": 0, "step": 45}, "attrs": {"title": "test"},
    }))
    out = import_sidecar(side, tmp_path / "scan.h5")
    with Scan(out) as s:
        assert (s.n_positions, s.n_angles, s.frame_shape) == (3, 4, (32, 40))
        assert s.dtype == np.uint16
        for i in range(4):
            np.testing.assert_array_equal(s.sample(i), a["data"][:, i].astype(np.float32))
        np.testing.assert_array_equal(s.reference(), a["reference"].astype(np.float32))
        np.testing.assert_allclose(s.theta_deg, [0, 45, 90, 135])
        np.testing.assert_allclose(s.dark(), a["dark"].mean(0), rtol=1e-6)
        np.testing.assert_allclose(s.flat(), a["flat"].mean(0), rtol=1e-6)  # 2-frame flat.tif, averaged
        assert s.attrs["title"] == "test" and s.geometry.energy_ev == 20000.0


@pytest.mark.filterwarnings("ignore:.*stored as RGB:DeprecationWarning")
def test_tiff_sidecar_json_angle_major_and_lists(tmp_path, small_scan_arrays):
    a = small_scan_arrays
    d = tmp_path / "raw"
    d.mkdir()
    files = []
    for i in range(4):  # angle-major single frames: (angle i, position k)
        for k in range(3):
            name = f"img_{i * 3 + k}.tif"
            tifffile.imwrite(d / name, a["data"][k, i])
            files.append(name)
    tifffile.imwrite(d / "refs.tif", a["reference"])  # 3 frames: stored planar "SYX", read as P frames
    side = d / "scan.json"
    side.write_text(json.dumps({"geometry": GEOM, "reference": "refs.tif", "sample": "img_*.tif",
                                "sample_order": "angle-major", "theta_deg": [0, 1, 2, 3]}))
    with read_sidecar(side) as s:
        assert (s.n_positions, s.n_angles) == (3, 4)
        np.testing.assert_array_equal(s.sample(3), a["data"][:, 3].astype(np.float32))  # natural order img_10 after img_9
    # per-position lists
    side.write_text(json.dumps({"geometry": GEOM, "reference": "refs.tif",
                                "sample": [[files[i * 3 + k] for i in range(4)] for k in range(3)],
                                "theta_deg": {"start": 0, "stop": 180}}))
    with read_sidecar(side) as s:
        np.testing.assert_array_equal(s.sample(2, [1]), a["data"][[1], 2].astype(np.float32))
        np.testing.assert_allclose(s.theta_deg, [0, 45, 90, 135])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"sample": "nothing_*.tif"}, "matches no file"),
        ({"reference": "missing.tif"}, "does not exist"),
        ({"geometry": dict(GEOM, energy_ev=20)}, "keV"),
        ({"geometry": dict(GEOM, energy_kev=20)}, "unknown geometry key"),
        ({"thetas": [0]}, "unknown key"),
        ({"theta_deg": None}, "rotation angles"),
        ({"sample_order": "random"}, "sample_order"),
    ],
)
def test_tiff_sidecar_errors(tmp_path, small_scan_arrays, change, match):
    _write_tiffs(tmp_path, small_scan_arrays)
    d = {"geometry": GEOM, "reference": "ref_*.tif", "sample": "sam_*.tif", "theta_deg": [0, 1, 2, 3]}
    d.update(change)
    d = {k: v for k, v in d.items() if v is not None}
    side = tmp_path / "s.yaml"
    side.write_text(yaml.safe_dump(d))
    with pytest.raises((ScanFormatError, GeometryError), match=match):
        read_sidecar(side)


def test_tiff_sidecar_count_mismatch_and_bad_yaml(tmp_path, small_scan_arrays):
    _write_tiffs(tmp_path, small_scan_arrays)
    side = tmp_path / "s.yaml"
    side.write_text(yaml.safe_dump({"geometry": GEOM, "reference": "ref_*.tif", "sample": ["sam_1.tif", "ref_1.tif"]}))
    with pytest.raises(ScanFormatError, match="cannot be split over 3"):
        read_sidecar(side)
    side.write_text("geometry: [unclosed\n")
    with pytest.raises(ScanFormatError, match="cannot parse"):
        read_sidecar(side)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    side.write_text(yaml.safe_dump({"geometry": GEOM, "reference": "bad.tif", "sample": "bad.tif"}))
    with pytest.raises(ScanFormatError, match="not a readable TIFF"):
        read_sidecar(side)


def test_fourrod_tiffs_import(real_data_dir, tmp_path):
    t = real_data_dir / "fourrod_mct" / "tiff"
    if not t.is_dir():
        pytest.skip("FourRod TIFFs absent")
    side = tmp_path / "fourrod.yaml"
    side.write_text(yaml.safe_dump({
        "geometry": {"energy_ev": 25000.0, "pixel_size_m": 6.5e-6, "sample_detector_distance_m": 0.7},
        "reference": str(t / "ReferenceSpeckle_1.tif"), "sample": str(t / "SamplePlusSpeckle_1.tif"),
        "flat": str(t / "Flatfield.tif"),
    }))
    with read_sidecar(side) as s:
        assert (s.n_positions, s.n_angles, s.frame_shape) == (1, 1, (430, 2220))
        raw = tifffile.imread(t / "SamplePlusSpeckle_1.tif")
        np.testing.assert_array_equal(s.sample(0)[0], raw)


# ----------------------------------------------------------------------------- EDF
def test_edf_frames(tmp_path, small_scan_arrays):
    fabio = pytest.importorskip("fabio")
    from fabio.edfimage import EdfImage

    a = small_scan_arrays
    for k in range(3):
        EdfImage(data=a["reference"][k]).write(str(tmp_path / f"ref_{k}.edf"))
        for i in range(4):
            EdfImage(data=a["data"][k, i]).write(str(tmp_path / f"sam_{k}_{i}.edf"))
    side = tmp_path / "s.yaml"
    side.write_text(yaml.safe_dump({"geometry": GEOM, "reference": "ref_*.edf", "sample": "sam_*.edf",
                                    "theta_deg": [0, 1, 2, 3]}))
    with read_sidecar(side) as s:
        assert (s.n_positions, s.n_angles) == (3, 4)
        np.testing.assert_array_equal(s.sample(1), a["data"][:, 1].astype(np.float32))
    assert fabio is not None


def test_edf_without_fabio(tmp_path, monkeypatch):
    from xspeckle.io.edf import EDFFile

    monkeypatch.setitem(sys.modules, "fabio", None)  # import fabio -> ImportError
    (tmp_path / "x.edf").write_bytes(b"{}")
    with pytest.raises(MethodUnavailableError, match=r"pip install 'xspeckle\[edf\]'"):
        EDFFile(tmp_path / "x.edf")


# ----------------------------------------------------------------------------- NeXus / DXchange
def _nxtomo(path, a, k, *, rad=False, with_geom=True):
    """NXtomo for diffuser position k: 2 darks, 2 flats (= reference), A projections, 1 invalid."""
    ref = a["reference"][k]
    frames = [a["dark"][0], a["dark"][1], ref, ref] + list(a["data"][k]) + [np.zeros_like(ref)]
    keys = [2, 2, 1, 1] + [0] * a["data"].shape[1] + [3]
    ang = [0, 0, 0, 0] + list(a["theta_deg"]) + [0]
    with h5py.File(path, "w") as f:
        e = f.create_group("entry")
        e.attrs["NX_class"] = "NXentry"
        det = e.create_group("instrument/detector")
        det["data"] = np.stack(frames)
        det["image_key"] = np.array(keys)
        if with_geom:
            det["x_pixel_size"] = 1.0
            det["x_pixel_size"].attrs["units"] = "um"
            det["distance"] = 500.0
            det["distance"].attrs["units"] = "mm"
            e["instrument/source/energy"] = 20.0
            e["instrument/source/energy"].attrs["units"] = "keV"
        s = e.create_group("sample")
        s["rotation_angle"] = np.radians(ang) if rad else np.array(ang, float)
        s["rotation_angle"].attrs["units"] = "rad" if rad else "deg"
    return path


def test_nxtomo_import(tmp_path, small_scan_arrays):
    a = small_scan_arrays
    files = [_nxtomo(tmp_path / f"pos{k}.nxs", a, k, rad=(k == 1)) for k in range(3)]
    with read_nxtomo(files) as s:
        assert (s.n_positions, s.n_angles, s.frame_shape) == (3, 4, (32, 40))
        assert s.geometry.energy_ev == pytest.approx(20000.0)
        assert s.geometry.pixel_size_m == pytest.approx(1e-6)
        assert s.geometry.sample_detector_distance_m == pytest.approx(0.5)
        np.testing.assert_allclose(s.theta_deg, a["theta_deg"], atol=1e-9)
        np.testing.assert_allclose(s.dark(), a["dark"].mean(0), rtol=1e-6)
    out = import_hdf5(files, tmp_path / "scan.h5")
    with Scan(out) as s:
        np.testing.assert_array_equal(s.sample(3), a["data"][:, 3].astype(np.float32))
        np.testing.assert_array_equal(s.reference(), a["reference"].astype(np.float32))


def test_nxtomo_errors(tmp_path, small_scan_arrays):
    a = small_scan_arrays
    p = _nxtomo(tmp_path / "nogeom.nxs", a, 0, with_geom=False)
    with pytest.raises(GeometryError, match="--geometry"):
        read_nxtomo(p)
    with read_nxtomo(p, geometry={"geometry": GEOM}) as s:
        assert s.geometry.pixel_size_m == 1e-6
    with h5py.File(p, "r+") as f:
        del f["entry/instrument/detector/image_key"]
    with pytest.raises(ScanFormatError, match="image_key"):
        read_nxtomo(p, geometry=GEOM)


def test_dxchange_import(tmp_path, small_scan_arrays):
    a = small_scan_arrays
    files = []
    for k in range(3):
        p = tmp_path / f"dx{k}.h5"
        with h5py.File(p, "w") as f:
            f["exchange/data"] = a["data"][k]
            f["exchange/data_white"] = np.stack([a["reference"][k]] * 2)
            f["exchange/data_dark"] = a["dark"]
            f["exchange/theta"] = a["theta_deg"]
        files.append(p)
    with pytest.raises(GeometryError, match="--geometry"):
        read_dxchange(files)
    with read_dxchange(files, geometry=GEOM) as s:
        assert (s.n_positions, s.n_angles) == (3, 4)
        np.testing.assert_array_equal(s.sample(0), a["data"][:, 0].astype(np.float32))
        np.testing.assert_array_equal(s.reference(), a["reference"].astype(np.float32))


def test_save_scan_uint16_overflow_is_clear(tmp_path, small_geometry):
    from xspeckle.io import FrameScan, save_scan

    data = np.full((1, 1, 16, 16), 70000, np.uint32)  # does not fit uint16
    fs = FrameScan(samples=data, reference=np.full((1, 16, 16), 1000, np.uint32), geometry=small_geometry)
    with pytest.raises(ScanFormatError, match="outside the uint16 range"):
        save_scan(fs, tmp_path / "o.h5", dtype=np.uint16)
    assert not (tmp_path / "o.h5").exists()
    out = save_scan(fs, tmp_path / "o.h5")  # default: float32 keeps the values
    with Scan(out) as s:
        assert s.dtype == np.float32 and s.sample(0).max() == 70000


def test_import_cli_nxtomo_with_geometry_sidecar(tmp_path, small_scan_arrays, capsys):
    from xspeckle.cli import run

    a = small_scan_arrays
    files = [_nxtomo(tmp_path / f"p{k}.nxs", a, k, with_geom=False) for k in range(3)]
    geo = tmp_path / "geo.yaml"
    geo.write_text(yaml.safe_dump({"geometry": GEOM}))
    code = run(["import", *map(str, files), str(tmp_path / "scan.h5")])
    err = capsys.readouterr().err
    assert code == 2 and "--geometry" in err and len(err.strip().splitlines()) == 1
    code = run(["import", *map(str, files), str(tmp_path / "scan.h5"), "--geometry", str(geo), "--compression", "gzip"])
    assert code == 0, capsys.readouterr().err
    with Scan(tmp_path / "scan.h5") as s:
        assert (s.n_positions, s.n_angles) == (3, 4)
        np.testing.assert_array_equal(s.sample(1), a["data"][:, 1].astype(np.float32))


# ----------------------------------------------------------------------------- docs/import.md
def test_docs_worked_example(tmp_path):
    """The worked example of docs/import.md (its last YAML block) imports as the page says."""
    import re
    from pathlib import Path

    from xspeckle.io.tiff import import_sidecar

    doc = (Path(__file__).resolve().parent.parent / "docs" / "import.md").read_text()
    side_text = re.findall(r"```yaml\n(.*?)```", doc, re.S)[-1]
    rng = np.random.default_rng(0)
    h, w = 12, 14
    for k in range(3):
        tifffile.imwrite(tmp_path / f"ref_{k}.tif", rng.uniform(900, 1100, (h, w)).astype(np.uint16))
    for k in range(12):  # position-major: smp_0..3 = position 0
        tifffile.imwrite(tmp_path / f"smp_{k}.tif", np.full((h, w), 100 + k, np.uint16))
    tifffile.imwrite(tmp_path / "flat.tif", rng.uniform(1000, 1100, (2, h, w)).astype(np.uint16), photometric="minisblack")
    for k in range(2):
        tifffile.imwrite(tmp_path / f"dark_{k}.tif", np.full((h, w), 10, np.uint16))
    (tmp_path / "scan.yaml").write_text(side_text)
    out = import_sidecar(tmp_path / "scan.yaml", tmp_path / "scan.h5")
    with Scan(out) as s:
        assert (s.n_positions, s.n_angles, s.frame_shape) == (3, 4, (h, w))
        np.testing.assert_allclose(s.theta_deg, [0, 45, 90, 135])
        assert s.sample(1)[0, 0, 0] == 101 and s.sample(0)[2, 0, 0] == 108  # angle 1 of position 0; position 2
        assert s.has_flat and s.has_dark and s.geometry.energy_ev == 20000
