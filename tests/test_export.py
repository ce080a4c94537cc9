"""``xspeckle export``: TIFF round trip (float32 exact, uint16 within scale/2), pixel size read back by tifffile."""

import json

import h5py
import numpy as np
import pytest
import tifffile

from xspeckle.errors import InputError, OutputError, ParameterError
from xspeckle.geometry import Geometry
from xspeckle.io.export import export_file
from xspeckle.io.results import write_retrieval

VOXEL_M = 0.65e-6


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(0)
    delta = (rng.normal(size=(6, 20, 20)) * 1e-7 + 3e-7).astype(np.float32)
    beta = (rng.normal(size=(6, 20, 20)) * 1e-9).astype(np.float32)
    p = tmp_path / "vol.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("volume")
        g.attrs["voxel_size_m"] = VOXEL_M
        for k, v in (("delta", delta), ("beta", beta)):
            g.create_dataset(k, data=v).attrs["units"] = "1"
    return p, delta, beta


def _pixel_size_m(tif):
    with tifffile.TiffFile(tif) as t:
        page = t.pages[0]
        assert page.tags["ResolutionUnit"].value == 3  # CENTIMETER
        assert t.imagej_metadata["unit"] == "cm"
        xr, yr = page.resolution  # pixels per cm
        return 0.01 / xr, 0.01 / yr, t.imagej_metadata


def test_volume_float32_per_slice_exact(volume, tmp_path):
    p, delta, _ = volume
    calls = []
    info = export_file(p, tmp_path / "out", progress=lambda d, t: calls.append((d, t)))
    assert info["dataset"] == "/volume/delta" and info["files"][0] == "delta_0000.tif" and len(info["files"]) == 6
    assert calls[-1] == (6, 6)
    back = np.stack([tifffile.imread(tmp_path / "out" / fn) for fn in info["files"]])
    assert back.dtype == np.float32 and np.array_equal(back, delta)  # exact
    px, py, _ = _pixel_size_m(tmp_path / "out" / "delta_0003.tif")
    assert abs(px / VOXEL_M - 1) < 1e-6 and abs(py / VOXEL_M - 1) < 1e-6
    js = json.loads((tmp_path / "out" / "delta.json").read_text())
    assert js["units"] == "1" and js["pixel_size_m"] == VOXEL_M and js["dtype"] == "float32"
    assert js["axes"] == "ZYX" and js["slice_spacing_m"] == VOXEL_M


def test_volume_uint16_multipage_within_scale(volume, tmp_path):
    p, _, beta = volume
    info = export_file(p, tmp_path / "u", dataset="/volume/beta", dtype="uint16", multipage=True)
    assert info["files"] == ["beta.tif"]
    with tifffile.TiffFile(tmp_path / "u" / "beta.tif") as t:
        a = t.asarray()
        assert len(t.pages) == 6 and t.imagej_metadata["slices"] == 6
        assert abs(t.imagej_metadata["spacing"] / (VOXEL_M * 100) - 1) < 1e-9
    assert a.dtype == np.uint16 and a.shape == beta.shape and a.min() == 0 and a.max() == 65535
    js = json.loads((tmp_path / "u" / "beta.json").read_text())
    assert abs(js["scale"] - (beta.max() - beta.min()) / 65535) < 1e-6 * js["scale"]
    err = np.abs(a * js["scale"] + js["offset"] - beta.astype(np.float64))
    assert err.max() <= 0.5 * js["scale"] * (1 + 1e-3) and js["max_abs_error"] == js["scale"] / 2
    px, _, _ = _pixel_size_m(tmp_path / "u" / "beta.tif")
    assert abs(px / VOXEL_M - 1) < 1e-6


def test_retrieval_maps_and_components(tmp_path):
    geo = Geometry(energy_ev=20000.0, pixel_size_m=2e-6, sample_detector_distance_m=0.5,
                   source_sample_distance_m=1.0)  # magnification 1.5: sample-plane pixel 1.333 um
    rng = np.random.default_rng(1)
    phase = rng.normal(size=(3, 8, 10)).astype(np.float32)
    disp = rng.normal(size=(2, 3, 8, 10)).astype(np.float32)
    r = write_retrieval(tmp_path / "r.h5", {"phase": phase, "displacement": disp}, method="umpa", parameters={},
                        geometry=geo, theta_deg=[0.0, 1.0, 2.0])
    info = export_file(r, tmp_path / "ph")
    assert info["axes"] == "AYX" and info["units"] == "rad" and info["theta_deg"] == [0.0, 1.0, 2.0]
    assert abs(info["pixel_size_m"] - 2e-6 / 1.5) < 1e-15
    assert np.array_equal(tifffile.imread(tmp_path / "ph" / "phase_0002.tif"), phase[2])
    px, _, _ = _pixel_size_m(tmp_path / "ph" / "phase_0000.tif")
    assert abs(px / (2e-6 / 1.5) - 1) < 1e-6
    info = export_file(r, tmp_path / "d", dataset="displacement", multipage=True)
    assert info["files"] == ["displacement_c0.tif", "displacement_c1.tif"] and info["units"] == "px"
    assert np.array_equal(tifffile.imread(tmp_path / "d" / "displacement_c1.tif"), disp[1])


def test_errors_and_atomicity(volume, tmp_path):
    p, delta, _ = volume
    out = tmp_path / "o"
    export_file(p, out)
    with pytest.raises(OutputError, match="exists"):
        export_file(p, out)
    export_file(p, out, overwrite=True, dtype="uint16")  # replaced whole
    assert json.loads((out / "delta.json").read_text())["dtype"] == "uint16"
    with pytest.raises(ParameterError, match="no dataset 'nope'"):
        export_file(p, tmp_path / "x", dataset="nope")
    with pytest.raises(ParameterError, match="uint16"):
        export_file(p, tmp_path / "x", dtype="int8")
    with pytest.raises(InputError, match="no such file"):
        export_file(tmp_path / "missing.h5", tmp_path / "x")
    with h5py.File(p, "a") as f:
        f["volume/delta"][0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        export_file(p, tmp_path / "x", dtype="uint16")

    def boom(d, t):
        if d == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        export_file(p, tmp_path / "x", progress=boom)
    assert not (tmp_path / "x").exists() and not [q for q in tmp_path.iterdir() if q.name.startswith(".x.")]


def test_cli_export(volume, tmp_path, capsys):
    from xspeckle.cli import run

    p, delta, _ = volume
    assert run(["export", str(p), str(tmp_path / "c"), "--dtype", "uint16", "--multipage"]) == 0
    assert "delta.json" in capsys.readouterr().out
    assert tifffile.imread(tmp_path / "c" / "delta.tif").shape == delta.shape
    assert run(["export", str(p), str(tmp_path / "c")]) == 2  # exists, no --overwrite
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert run(["export", str(p), str(tmp_path / "e"), "--dtype", "int8"]) == 2
