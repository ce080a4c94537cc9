"""Command line: every kind of bad input -> exit 2 and exactly one stderr line, no traceback.

Most cases run in-process through :func:`xspeckle.cli.run` (fast); a parametrised set
also runs ``python -m xspeckle`` in a subprocess to check the process-level contract.
Nothing here needs the other helpers' modules (simulate, pipeline, tomo, ...): errors are
ones the CLI detects before dispatching, and dispatch itself is checked with a test double.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import h5py
import numpy as np
import pytest
import tifffile
import yaml

from xspeckle.cli import run
from xspeckle.io import write_retrieval, write_scan, write_volume


def cli(capsys, *args):
    """Run the CLI in-process; return (status, stdout, stderr lines)."""
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


def assert_one_error(code, err, match=None, status=2):
    assert code == status, (code, err)
    assert len(err) == 1, err
    assert err[0].startswith("xspeckle: error: "), err
    assert "Traceback" not in err[0]
    if match is not None:
        assert match in err[0], err[0]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def files(tmp_path, small_scan, small_geometry):
    d = {"scan": small_scan}
    d["text"] = tmp_path / "notes.h5"
    d["text"].write_text("this is not HDF5\n")
    raw = small_scan.read_bytes()
    d["trunc"] = tmp_path / "trunc.h5"
    d["trunc"].write_bytes(raw[:2000])
    d["nods"] = tmp_path / "nods.h5"
    with h5py.File(d["nods"], "w") as f:
        f["exchange/data"] = np.ones((2, 16, 16), np.float32)
        f.create_group("geometry").attrs.update(small_geometry.to_attrs())
    d["shape"] = tmp_path / "shape.h5"
    with h5py.File(d["shape"], "w") as f:
        f["exchange/data"] = np.ones((2, 3, 16, 16), np.float32)
        f["exchange/data_reference"] = np.ones((2, 16, 20), np.float32)
        f.create_group("geometry").attrs.update(small_geometry.to_attrs())
    d["negdist"] = tmp_path / "negdist.h5"
    with h5py.File(d["negdist"], "w") as f:
        f["exchange/data"] = np.ones((16, 16), np.float32)
        f["exchange/data_reference"] = np.ones((16, 16), np.float32)
        f.create_group("geometry").attrs.update(dict(small_geometry.to_attrs(), sample_detector_distance_m=-0.5))
    d["kev"] = tmp_path / "kev.h5"
    with h5py.File(d["kev"], "w") as f:
        f["exchange/data"] = np.ones((16, 16), np.float32)
        f["exchange/data_reference"] = np.ones((16, 16), np.float32)
        f.create_group("geometry").attrs.update(dict(small_geometry.to_attrs(), energy_ev=25.0))
    rng = np.random.default_rng(0)
    data = rng.uniform(1, 2, (2, 2, 16, 16)).astype(np.float32)
    data[1, 1] = np.nan
    d["nan"] = write_scan(tmp_path / "nan.h5", data=data, reference=np.ones((2, 16, 16), np.float32),
                          geometry=small_geometry, theta_deg=[0, 90])
    d["ret1"] = write_retrieval(tmp_path / "ret1.h5", {"phase": np.zeros((1, 16, 16))}, method="mist",
                                parameters={}, geometry=small_geometry, theta_deg=[0])
    d["ret"] = write_retrieval(tmp_path / "ret.h5", {"phase": np.zeros((4, 16, 16)), "transmission": np.ones((4, 16, 16))},
                               method="umpa", parameters={"window": 3}, geometry=small_geometry, theta_deg=[0, 45, 90, 135])
    d["vol"] = write_volume(tmp_path / "vol.h5", delta=np.zeros((4, 8, 8)), beta=np.zeros((4, 8, 8)), voxel_size_m=1e-6)
    d["vol2"] = write_volume(tmp_path / "vol2.h5", delta=np.zeros((4, 8, 9)), beta=np.zeros((4, 8, 9)), voxel_size_m=1e-6)
    d["dx"] = tmp_path / "dx.h5"
    with h5py.File(d["dx"], "w") as f:
        f["exchange/data"] = np.ones((2, 16, 16), np.float32)
    d["dir"] = tmp_path / "folder"
    d["dir"].mkdir()
    return d


# ----------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    "args, match",
    [
        ([], "missing command"),
        (["frobnicate"], "No such command"),
        (["info"], "Missing argument 'FILE.h5'"),
        (["retrieve", "a.h5"], "Missing argument 'OUT.h5'"),
        (["retrieve", "a.h5", "b.h5"], "Missing option '--method'"),
        (["info", "a.h5", "--bogus"], "No such option: --bogus"),
        (["retrieve", "a.h5", "b.h5", "--method", "mist", "--workers", "many"], "--workers"),
        (["tomo", "r.h5", "v.h5", "--center", "middle"], "--center"),
        (["fsc", "a.h5", "b.h5", "--dataset"], "requires an argument"),
    ],
)
def test_usage_errors(capsys, args, match):
    code, out, err = cli(capsys, *args)
    assert_one_error(code, err, match)
    assert out == ""


def test_help_and_version(capsys):
    code, out, err = cli(capsys, "--help")
    assert code == 0 and not err
    for c in ("simulate", "retrieve", "calibrate", "tomo", "fsc", "info", "demo", "import"):
        assert c in out
    code, out, err = cli(capsys, "retrieve", "--help")
    assert code == 0 and "--method" in out and "--param" in out and "--overwrite" in out
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.startswith("xspeckle ")


# ----------------------------------------------------------------------------- bad files
@pytest.mark.parametrize(
    "key, match",
    [
        ("missing", "no such file"),
        ("dir", "is a directory"),
        ("text", "not a readable HDF5 file"),
        ("trunc", "trunc.h5"),
        ("nods", "missing dataset /exchange/data_reference"),
        ("shape", "same (H, W)"),
        ("negdist", "sample_detector_distance_m must be a positive"),
        ("kev", "if it is in keV, give energy_ev=25000"),
        ("dx", "xspeckle import"),
    ],
)
def test_bad_input_files(capsys, files, tmp_path, key, match):
    path = files.get(key, tmp_path / "does_not_exist.h5")
    for cmd in (["info", path], ["retrieve", path, tmp_path / "o.h5", "--method", "mist"]):
        if key == "dx" and cmd[0] == "retrieve":
            continue
        code, out, err = cli(capsys, *cmd)
        assert_one_error(code, err, match)
        assert not (tmp_path / "o.h5").exists()


def test_nan_frame_check(capsys, files):
    code, out, err = cli(capsys, "info", files["nan"], "--check")
    assert_one_error(code, err, "/exchange/data position 1 angle 1 has 100.0% NaN/inf")
    code, out, err = cli(capsys, "info", files["scan"], "--check")
    assert code == 0 and "check: OK" in out and not err


# ----------------------------------------------------------------------------- retrieve checks before dispatch
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--method", "magic"], "unknown method 'magic'; choose one of: pwf, mist"),
        (["--method", "mist", "--positions", "0,x"], "--positions '0,x'"),
        (["--method", "mist", "--positions", "0,7"], "[7] out of range; the scan has 3"),
        (["--method", "mist", "--positions", "1,1"], "twice"),
        (["--method", "mist", "--positions", "-1"], "cannot be negative"),
        (["--method", "mist", "--device", "tpu"], "use cpu or cuda"),
        (["--method", "mist", "--workers", "0"], "at least 1"),
        (["--method", "mist", "--param", "alpha"], "expected KEY=VALUE"),
        (["--method", "mist", "--param", "1x=3"], "not a valid parameter name"),
    ],
)
def test_retrieve_bad_options(capsys, files, tmp_path, extra, match):
    code, out, err = cli(capsys, "retrieve", files["scan"], tmp_path / "out.h5", *extra)
    assert_one_error(code, err, match)


def test_output_errors(capsys, files, tmp_path):
    exists = tmp_path / "exists.h5"
    exists.write_text("x")
    code, _, err = cli(capsys, "retrieve", files["scan"], exists, "--method", "mist")
    assert_one_error(code, err, "output file exists; choose another name or pass --overwrite")
    assert exists.read_text() == "x"
    code, _, err = cli(capsys, "retrieve", files["scan"], tmp_path / "nofolder" / "o.h5", "--method", "mist")
    assert_one_error(code, err, "does not exist; create it first")
    code, _, err = cli(capsys, "retrieve", files["scan"], files["scan"], "--method", "mist", "--overwrite")
    assert_one_error(code, err, "would replace the input file")
    code, _, err = cli(capsys, "simulate", "anything", exists)
    assert_one_error(code, err, "--overwrite")
    code, _, err = cli(capsys, "tomo", files["ret"], exists)
    assert_one_error(code, err, "--overwrite")


def test_unwritable_folder(capsys, files, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root ignores permissions: make access() tell the truth
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if (str(p) == str(ro) and m & os.W_OK) else real(p, m, *a, **k))
    try:
        code, _, err = cli(capsys, "retrieve", files["scan"], ro / "o.h5", "--method", "mist")
        assert_one_error(code, err, "is not writable")
    finally:
        ro.chmod(0o700)


def test_unknown_preset_or_unavailable(capsys, tmp_path):
    code, out, err = cli(capsys, "simulate", "no-such-preset", tmp_path / "s.h5")
    assert_one_error(code, err)
    assert ("unknown preset" in err[0]) or ("not available" in err[0]) or ("no-such-preset" in err[0])
    assert not (tmp_path / "s.h5").exists()
    code, _, err = cli(capsys, "simulate", "x", tmp_path / "s.h5", "--size", "4")
    assert_one_error(code, err, "at least 8 pixels")


def test_tomo_and_fsc_checks(capsys, files, tmp_path):
    code, _, err = cli(capsys, "tomo", files["ret1"], tmp_path / "v.h5")
    assert_one_error(code, err, "tomography needs a rotation series")
    code, _, err = cli(capsys, "tomo", files["ret"], tmp_path / "v.h5", "--center", "99")
    assert_one_error(code, err, "inside the detector width")
    code, _, err = cli(capsys, "tomo", files["scan"], tmp_path / "v.h5")
    assert_one_error(code, err, "no /retrieval group")
    code, _, err = cli(capsys, "fsc", files["vol"], files["vol"], "--dataset", "diffusion")
    assert_one_error(code, err, "no /volume/diffusion")
    code, _, err = cli(capsys, "fsc", files["vol"], files["vol2"])
    assert_one_error(code, err, "differ in shape")
    code, _, err = cli(capsys, "fsc", files["scan"], files["vol"])
    assert_one_error(code, err, "no /volume group")
    code, _, err = cli(capsys, "demo", tmp_path / "nofolder" / "demo")
    assert_one_error(code, err, "does not exist")
    code, _, err = cli(capsys, "demo", files["scan"])
    assert_one_error(code, err, "not a folder")


# ----------------------------------------------------------------------------- dispatch (test doubles)
def test_retrieve_dispatch_passes_options(capsys, files, tmp_path, monkeypatch):
    calls = {}

    def retrieve_scan(scan_path, out_path, **kw):
        calls.update(kw, scan_path=scan_path, out_path=out_path)
        return out_path

    monkeypatch.setitem(sys.modules, "xspeckle.pipeline", types.SimpleNamespace(retrieve_scan=retrieve_scan))
    out = tmp_path / "out.h5"
    code, stdout, err = cli(capsys, "retrieve", files["scan"], out, "--method", "umpa", "--positions", "0,2",
                            "--workers", "2", "--param", "window=5", "--param", "subpixel=paraboloid",
                            "--param", "max_shift=3.0")
    assert code == 0 and not err
    assert calls["method"] == "umpa" and calls["positions"] == [0, 2] and calls["workers"] == 2
    # JSON values; text when it does not parse; 3.0 given to an int parameter arrives as 3
    assert calls["params"] == {"window": 5, "subpixel": "paraboloid", "max_shift": 3}
    assert type(calls["params"]["max_shift"]) is int
    assert calls["device"] == "cpu" and calls["overwrite"] is False and calls["scheduler"] is None
    assert str(out) in stdout


def test_module_unavailable_is_exit_2(capsys, files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "xspeckle.pipeline", None)  # import -> ModuleNotFoundError
    code, _, err = cli(capsys, "retrieve", files["scan"], tmp_path / "o.h5", "--method", "mist")
    assert_one_error(code, err, "is not available yet")
    monkeypatch.setitem(sys.modules, "xspeckle.analysis.fsc", types.SimpleNamespace())  # no fsc_files
    code, _, err = cli(capsys, "fsc", files["vol"], files["vol"])
    assert_one_error(code, err, "is not available yet")


def test_json_outputs_one_object(capsys, files, monkeypatch):
    def calibrate_scan(scan, positions=None):
        return {"coherence_length_x_m": np.float64(2e-5), "coherence_length_y_m": 1e-5, "curve": np.arange(3),
                "n": scan.n_positions}

    def fsc_files(a, b, *, dataset="delta"):
        return {"resolution_m": 3e-6, "resolution_m_1_7": float("nan"), "curve": [0.1, 0.2], "dataset": dataset}

    monkeypatch.setitem(sys.modules, "xspeckle.retrieve.coherence", types.SimpleNamespace(calibrate_scan=calibrate_scan))
    monkeypatch.setitem(sys.modules, "xspeckle.analysis.fsc", types.SimpleNamespace(fsc_files=fsc_files))
    code, out, err = cli(capsys, "calibrate", files["scan"], "--json")
    assert code == 0 and not err and len(out.strip().splitlines()) == 1
    assert json.loads(out) == {"coherence_length_x_m": 2e-5, "coherence_length_y_m": 1e-5, "curve": [0, 1, 2], "n": 3}
    code, out, err = cli(capsys, "calibrate", files["scan"])
    assert code == 0 and "coherence_length_x_m" in out and "µm" in out
    code, out, err = cli(capsys, "fsc", files["vol"], files["vol"], "--json", "--dataset", "beta")
    assert code == 0 and not err
    res = json.loads(out)  # NaN is not valid JSON: written as null
    assert res["resolution_m"] == 3e-6 and res["resolution_m_1_7"] is None and res["dataset"] == "beta"


def test_keyboard_interrupt_exit_130(capsys, files, monkeypatch):
    import xspeckle.cli as c

    def boom(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(c, "_describe", boom)
    code, _, err = cli(capsys, "info", files["scan"])
    assert_one_error(code, err, "interrupted", status=130)


# ----------------------------------------------------------------------------- info / import
def test_info_on_each_file_kind(capsys, files):
    code, out, err = cli(capsys, "info", files["scan"])
    assert code == 0 and not err
    assert "xspeckle scan file" in out and "positions=3 angles=4 frame=32x40" in out and "energy_ev=20000.0" in out
    code, out, _ = cli(capsys, "info", files["ret"])
    assert code == 0 and "method=umpa" in out and '"window": 3' in out and "[rad]" in out
    code, out, _ = cli(capsys, "info", files["vol"])
    assert code == 0 and "voxel_size_m=1e-06" in out


def test_import_sidecar_cli(capsys, tmp_path, small_scan_arrays):
    a = small_scan_arrays
    for k in range(3):
        tifffile.imwrite(tmp_path / f"r{k}.tif", a["reference"][k])
        tifffile.imwrite(tmp_path / f"s{k}.tif", a["data"][k], photometric="minisblack")
    side = tmp_path / "scan.yaml"
    side.write_text(yaml.safe_dump({"geometry": {"energy_ev": 2e4, "pixel_size_m": 1e-6, "sample_detector_distance_m": 0.5},
                                    "reference": "r*.tif", "sample": "s*.tif", "theta_deg": {"start": 0, "step": 1}}))
    code, out, err = cli(capsys, "import", side, tmp_path / "scan.h5")
    assert code == 0 and not err and "scan.h5" in out
    code, out, _ = cli(capsys, "info", tmp_path / "scan.h5")
    assert "positions=3 angles=4" in out
    code, _, err = cli(capsys, "import", side, tmp_path / "scan.h5")
    assert_one_error(code, err, "--overwrite")
    side.write_text(yaml.safe_dump({"geometry": {"energy_ev": 20, "pixel_size_m": 1e-6, "sample_detector_distance_m": 0.5},
                                    "reference": "r*.tif", "sample": "s*.tif"}))
    code, _, err = cli(capsys, "import", side, tmp_path / "other.h5")
    assert_one_error(code, err, "keV")
    assert not (tmp_path / "other.h5").exists()


# ----------------------------------------------------------------------------- the real process
@pytest.mark.parametrize(
    "args, match",
    [
        (["info", "{missing}"], "no such file"),
        (["info", "{text}"], "not a readable HDF5"),
        (["retrieve", "{scan}", "{tmp}/o.h5", "--method", "nope"], "unknown method"),
        (["retrieve", "{scan}", "{tmp}/o.h5", "--method", "mist", "--unknown"], "No such option"),
        (["calibrate"], "Missing argument"),
    ],
)
def test_subprocess_contract(files, tmp_path, args, match):
    fmt = {"missing": tmp_path / "missing.h5", "text": files["text"], "scan": files["scan"], "tmp": tmp_path}
    argv = [a.format(**fmt) for a in args]
    env = dict(os.environ, XSPECKLE_NO_PROGRESS="1")
    p = subprocess.run([sys.executable, "-m", "xspeckle", *argv], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("xspeckle: error: ") and match in lines[0], p.stderr
    assert p.stdout == ""


# ----------------------------------------------------------------------------- issue 15: reliability defects
def _scan_with_geometry_attrs(path, small_scan, **attrs):
    import shutil

    shutil.copy(small_scan, path)
    with h5py.File(path, "a") as f:
        for k, v in attrs.items():
            f["geometry"].attrs[k] = v
    return path


def test_geometry_numbers_stored_as_text_are_read_as_numbers(capsys, tmp_path, small_scan, monkeypatch):
    """Case 1: str / bytes geometry attributes were a TypeError (exit 1) in retrieve and calibrate."""
    p = _scan_with_geometry_attrs(tmp_path / "text.h5", small_scan, energy_ev="17000", pixel_size_m=b"1e-6",
                                  sample_detector_distance_m=np.bytes_("0.5"))
    code, out, err = cli(capsys, "info", p, "--check")
    assert code == 0 and not err and "check: OK" in out
    code, out, err = cli(capsys, "retrieve", p, tmp_path / "r.h5", "--method", "tie", "--param", "gamma=100")
    assert code == 0, err
    from xspeckle.io.results import open_retrieval

    with open_retrieval(tmp_path / "r.h5") as r:
        assert np.isfinite(r.read("phase")).all()

    seen = {}

    def calibrate_scan(scan, positions=None):  # the real calibration needs real speckle; the geometry is the point
        seen["energy"] = scan.geometry.energy_ev * 1.0  # arithmetic on the value: TypeError before the fix
        return {"coherence_length_x_m": 1e-5}

    monkeypatch.setitem(sys.modules, "xspeckle.retrieve.coherence", types.SimpleNamespace(calibrate_scan=calibrate_scan))
    code, out, err = cli(capsys, "calibrate", p)
    assert code == 0 and not err and seen["energy"] == 17000.0


@pytest.mark.parametrize("value, match", [("17 keV", "energy_ev must be a number in SI units, got '17 keV'"),
                                          (b"\xff\xfe", "energy_ev must be a number"),
                                          ("", "energy_ev must be a number")])
def test_geometry_text_that_is_not_a_number(capsys, tmp_path, small_scan, value, match):
    p = _scan_with_geometry_attrs(tmp_path / "bad.h5", small_scan, energy_ev=np.bytes_(value) if isinstance(value, bytes) else value)
    for cmd in (["info", p, "--check"], ["retrieve", p, tmp_path / "o.h5", "--method", "mist"], ["calibrate", p]):
        code, out, err = cli(capsys, *cmd)
        assert_one_error(code, err, match)
        assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize(
    "param, match",
    [
        ("alpha=abc", "parameter alpha='abc' must be a number"),
        ("alpha=", "no value after '='"),
        ("alpha=[1,2]", "parameter alpha=[1, 2] must be a number"),
        ("alpha=NaN", "must be a finite number"),
        ("alpha=Infinity", "must be a finite number"),
        ("border_px=2.5", "border_px=2.5 must be a whole number"),
        ("blur_calibration=3", "must be true or false"),
        ("bogus=1", "has no parameter 'bogus'; valid parameter names: model, alpha,"),
    ],
)
def test_bad_param_values_one_line(capsys, files, tmp_path, param, match):
    """Cases 2 and 6: bad --param values and unknown keys, before any frame is read."""
    code, _, err = cli(capsys, "retrieve", files["scan"], tmp_path / "o.h5", "--method", "mist", "--param", param)
    assert_one_error(code, err, match)
    assert not (tmp_path / "o.h5").exists()


def test_repeated_param_is_refused(capsys, files, tmp_path):
    code, _, err = cli(capsys, "retrieve", files["scan"], tmp_path / "o.h5", "--method", "mist",
                       "--param", "alpha=1e-3", "--param", "alpha=2e-3")
    assert_one_error(code, err, "--param alpha is given twice")


@pytest.mark.parametrize(
    "method, param, match",
    [
        ("tie", "gamma=1e300", "gave NaN/inf in 100% of the"),
        ("mist", "alpha=1e308", "gave a constant phase map"),
        ("lcs", "alpha=1e308", "NaN/inf"),
        ("mist", "border_px=1000000000", "border_px=1000000000 must be a whole number of pixels in 1..16"),
    ],
)
def test_out_of_range_params_write_nothing(capsys, files, tmp_path, method, param, match):
    """Case 3: no all-NaN or all-zero map written with exit 0, and no flood of RuntimeWarnings."""
    out = tmp_path / "o.h5"
    code, stdout, err = cli(capsys, "retrieve", files["scan"], out, "--method", method, "--param", param)
    assert_one_error(code, err, match)
    assert not out.exists() and not (tmp_path / ".o.h5.partial").exists()


def test_warnings_are_one_line_on_success(capsys, files, monkeypatch):
    import warnings

    import xspeckle.cli as c

    def noisy(path):
        for i in range(50):
            warnings.warn_explicit("overflow encountered in multiply", RuntimeWarning, "kernel.py", i)
        return ["ok"]

    monkeypatch.setattr(c, "_describe", noisy)
    code, out, err = cli(capsys, "info", files["scan"])
    assert code == 0 and out.strip() == "ok"
    assert len(err) == 1 and err[0].startswith("xspeckle: warning: RuntimeWarning: overflow") and "49 more" in err[0]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, match", [("not-an-address", "not a scheduler address; give HOST:PORT"),
                                            ("tcp://127.0.0.1:99999", "outside 1..65535"),
                                            ("ucx://host:1", "unsupported protocol"),
                                            ("closed", "cannot connect")])
def test_scheduler_address_fails_fast(capsys, files, tmp_path, address, match):
    """Case 4: a malformed address was a ValueError traceback; a closed port took 22 s."""
    import time

    pytest.importorskip("distributed")
    if address == "closed":
        address = f"tcp://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    code, _, err = cli(capsys, "retrieve", files["scan"], tmp_path / "o.h5", "--method", "mist", "--scheduler", address)
    assert_one_error(code, err, match)
    assert time.monotonic() - t0 < 5


def test_symlinked_output_rule(capsys, files, tmp_path):
    """Case 7: an output name that is a symbolic link (dangling or not) needs --overwrite; then the
    file it points to is replaced and the link is kept."""
    target = tmp_path / "real.h5"
    target.write_text("old")
    link = tmp_path / "link.h5"
    link.symlink_to(target)
    args = ["retrieve", files["scan"], link, "--method", "tie", "--param", "gamma=100"]
    code, _, err = cli(capsys, *args)
    assert_one_error(code, err, "is a symbolic link to")
    assert link.is_symlink() and target.read_text() == "old"
    code, out, err = cli(capsys, *args, "--overwrite")
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    with h5py.File(link, "r") as f:  # the target was replaced by the retrieval
        assert "retrieval/phase" in f
    dangling = tmp_path / "dangling.h5"
    gone = tmp_path / "sub" / "gone.h5"
    (tmp_path / "sub").mkdir()
    dangling.symlink_to(gone)
    code, _, err = cli(capsys, "retrieve", files["scan"], dangling, "--method", "tie", "--param", "gamma=100")
    assert_one_error(code, err, "symbolic link (dangling)")
    assert dangling.is_symlink() and not gone.exists()
    code, _, err = cli(capsys, "retrieve", files["scan"], dangling, "--method", "tie", "--param", "gamma=100", "--overwrite")
    assert code == 0 and dangling.is_symlink() and gone.is_file()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_unwritable_special_folder_is_refused_before_the_work(capsys, files, monkeypatch):
    """Case 8: output under /proc failed after the computation with a raw h5py message."""
    called = []
    monkeypatch.setitem(sys.modules, "xspeckle.pipeline",
                        types.SimpleNamespace(retrieve_scan=lambda *a, **k: called.append(1)))
    code, _, err = cli(capsys, "retrieve", files["scan"], "/proc/o.h5", "--method", "mist")
    assert_one_error(code, err, "cannot create files in folder /proc")
    assert not called
    code, _, err = cli(capsys, "simulate", "pwf-beads", "/proc/s.h5")
    assert_one_error(code, err, "/proc")


@pytest.mark.parametrize("name", ["a.tif", "b.TIFF", "c.edf", "d.npy"])
def test_import_of_bare_frames_shows_the_sidecar(capsys, tmp_path, name):
    """Case 10: 'not a readable HDF5 file' for TIFF input; now the minimal sidecar is shown."""
    src = tmp_path / name
    src.write_bytes(b"II*\x00")
    code, _, err = cli(capsys, "import", src, tmp_path / "other.tif", tmp_path / "out.h5")
    assert_one_error(code, err, "frames need a sidecar")
    assert "geometry: {energy_ev:" in err[0] and "xspeckle import scan.yaml OUT.h5" in err[0] and "docs/import.md" in err[0]
    assert not (tmp_path / "out.h5").exists()


def test_help_lists_come_from_the_registries(capsys, monkeypatch):
    """Case 11: method and preset lists in --help are read from METHODS and PRESETS (they cannot drift)."""
    from xspeckle.retrieve import METHODS
    from xspeckle.simulate.presets import PRESETS

    code, out, err = cli(capsys, "retrieve", "--help")
    assert code == 0 and not err
    import re

    for name in METHODS:
        assert re.search(rf"^ +{re.escape(name)} +>= \d position", out, re.M), name
    assert "--param keys: model, alpha" in out  # mist's keys, from its signature
    code, out, _ = cli(capsys, "simulate", "--help")
    for name in PRESETS:
        assert re.search(rf"^ +{re.escape(name)}$", out, re.M), name
    monkeypatch.setitem(PRESETS, "zz-new-preset", "added by a test")
    monkeypatch.setitem(METHODS, "zz-new-method", ("xspeckle.no_such_module", "Nope"))
    monkeypatch.setitem(METHODS, "zz-needs-dep", ("zz_not_installed_pkg.mod", "Nope"))
    _, out, _ = cli(capsys, "simulate", "--help")
    assert "zz-new-preset" in out and "added by a test" in out
    _, out, _ = cli(capsys, "retrieve", "--help")
    # a registry line pointing into xspeckle at nothing is broken (shown with its cause, not hidden);
    # a missing third-party package is "not available" with what to install
    assert re.search(r"zz-new-method +BROKEN: method 'zz-new-method' is broken: .*xspeckle.no_such_module", out)
    assert re.search(r"zz-needs-dep +\(not available in this installation: .*needs missing dependency "
                     r"'zz_not_installed_pkg' \(pip install zz_not_installed_pkg\)", out)


def test_progress_bar_takes_fractions_and_starts_without_none(monkeypatch):
    """Case 12 (CLI side): the bar starts as 'setting up' (not 0/None) and accepts fractional progress."""
    import io

    import xspeckle.cli as c

    buf = io.StringIO()
    buf.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", buf)
    monkeypatch.delenv("XSPECKLE_NO_PROGRESS", raising=False)
    with c._progress("retrieve pwf") as cb:
        assert cb is not None
        from rich.progress import Progress  # noqa: F401  (rich is a dependency of typer)

        cb(0, 1)
        cb(0.4, 1)
        cb(1, 1)
    assert "None" not in buf.getvalue()
