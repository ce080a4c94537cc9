"""Faults: full disk, unreadable TIFFs, interrupted writes, and library warnings.

Each case must end with exit status 2 (or 130), one line on stderr, and nothing under
the final output name; a clean run must print nothing on stderr (no library warnings).
"""

from __future__ import annotations

import errno
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import yaml

from xspeckle.cli import run
from xspeckle.errors import OutputError
from xspeckle.geometry import Geometry
from xspeckle.io.atomic import atomic_path
from xspeckle.io.scan import write_scan


def cli(capsys, *args):
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    final = tmp_path / "out.h5"
    with pytest.raises(OutputError, match="disk full"):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_full_disk_through_the_cli(capsys, tmp_path, monkeypatch):
    import h5py

    real_create = h5py.Group.create_dataset

    def full(self, name, *a, **k):
        if name == "data":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_create(self, name, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    code, _, err = cli(capsys, "simulate", "pwf-beads", tmp_path / "s.h5", "--size", "64")
    assert code == 2 and len(err) == 1 and "disk full" in err[0], err
    assert not (tmp_path / "s.h5").exists()
    assert not any(p.name.startswith(".s.h5") for p in tmp_path.iterdir())


def test_unreadable_tiff_on_import(capsys, tmp_path):
    rng = np.random.default_rng(0)
    for k in range(2):
        tifffile.imwrite(tmp_path / f"r{k}.tif", rng.uniform(1, 2, (16, 16)).astype(np.float32))
        tifffile.imwrite(tmp_path / f"s{k}.tif", rng.uniform(1, 2, (16, 16)).astype(np.float32))
    (tmp_path / "s1.tif").write_bytes(b"II*\x00garbage, not a TIFF directory")  # corrupt header
    side = tmp_path / "scan.yaml"
    side.write_text(yaml.safe_dump({"geometry": {"energy_ev": 2e4, "pixel_size_m": 1e-6, "sample_detector_distance_m": 0.5},
                                    "reference": "r*.tif", "sample": "s*.tif"}))
    code, _, err = cli(capsys, "import", side, tmp_path / "scan.h5")
    assert code == 2 and len(err) == 1, err
    assert "s1.tif" in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "scan.h5").exists()


@pytest.mark.parametrize("method", ["mist", "lcs", "umpa", "xsvt"])
def test_no_library_warnings_on_degenerate_frames(tmp_path, method):
    """A dead (all-zero) detector region and a saturated one: results finite, stderr silent."""
    rng = np.random.default_rng(1)
    p, h, w = 4, 48, 48
    ref = (1000 * (1 + 0.3 * rng.standard_normal((p, h, w)))).clip(1, None).astype(np.float32)
    smp = (0.9 * np.roll(ref, 1, axis=-1)).astype(np.float32)[:, None]
    ref[:, 10:20, 10:20] = 0  # dead region
    smp[..., 10:20, 10:20] = 0
    ref[:, 30:34, 30:34] = 65535  # saturated, flat
    smp[..., 30:34, 30:34] = 65535
    g = Geometry(energy_ev=20000, pixel_size_m=2e-6, sample_detector_distance_m=0.5)
    scan = tmp_path / "scan.h5"
    write_scan(scan, data=smp, reference=ref, geometry=g)
    out = tmp_path / "out.h5"
    r = subprocess.run([sys.executable, "-m", "xspeckle", "retrieve", str(scan), str(out), "--method", method],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr  # no RuntimeWarning / library noise
    import h5py

    with h5py.File(out) as f:
        for k in f["retrieval"]:
            assert np.isfinite(f["retrieval"][k][()]).all(), k
