"""The method registry (``xspeckle.retrieve.METHODS``) is the one place that lists the methods.

* adding a method is one new module plus one registry line: a toy method written to a temporary directory
  runs through ``xspeckle retrieve`` on a tiny simulated scan and shows up in ``xspeckle retrieve --help``;
* a method whose third-party dependency is missing says which and what to install; a broken one (its own
  code fails to import) says so with the cause and is never hidden;
* the README method table and the docs' method list name exactly the registered methods.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from xspeckle.cli import run
from xspeckle.errors import MethodUnavailableError
from xspeckle.retrieve import METHODS, MethodBrokenError, available_methods, get_method, method_status

ROOT = Path(__file__).resolve().parents[1]

TOY = '''"""A toy retrieval method: phase = gain x (mean reference - mean sample), for tests/test_registry.py."""

from typing import Any

from xspeckle.retrieve.base import Retriever


class ToyRetriever(Retriever):
    name = "toy"
    summary = "toy method: gain times the mean intensity change"
    outputs = ("phase", "transmission")
    min_positions = 1

    def __init__(self, reference, geometry, *, gain: float = 1.0):
        super().__init__(reference, geometry)
        self.gain = float(gain)
        self.parameters = {"gain": self.gain}

    def _retrieve(self, sample) -> dict[str, Any]:
        ref = self.reference.mean(axis=0)
        return {"phase": self.gain * (ref - sample.mean(axis=0)), "transmission": sample.mean(axis=0) / ref}
'''


def _cli(capsys, *args):
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A directory on sys.path for the test's method modules (removed from sys.modules afterwards)."""
    d = tmp_path / "plugins"
    d.mkdir()
    monkeypatch.syspath_prepend(str(d))
    before = set(sys.modules)
    yield d
    for name in set(sys.modules) - before:
        if name.startswith("xspeckle_test_"):
            del sys.modules[name]


def test_toy_method_is_one_file_and_one_registry_line(tmp_path, capsys, monkeypatch, module_dir):
    (module_dir / "xspeckle_test_toy.py").write_text(TOY)
    monkeypatch.setitem(METHODS, "toy", ("xspeckle_test_toy", "ToyRetriever"))  # the one registry line

    code, out, _ = _cli(capsys, "retrieve", "--help")
    assert code == 0
    assert re.search(r"^ +toy +>= 1 position\(s\): phase, transmission$", out, re.M), out
    assert "toy method: gain times the mean intensity change" in out and "--param keys: gain" in out
    assert "toy" in available_methods()

    scan = tmp_path / "scan.h5"
    code, _, err = _cli(capsys, "simulate", "mist-berry", scan, "--size", "32", "--angles", "2")
    assert code == 0, err
    out_path = tmp_path / "toy.h5"
    code, _, err = _cli(capsys, "retrieve", scan, out_path, "--method", "toy", "--param", "gain=2")
    assert code == 0, err
    with h5py.File(out_path, "r") as f:
        assert f.attrs["method"] == "toy"
        phase = f["retrieval/phase"][()]
        assert phase.shape == (2, 32, 32) and np.isfinite(phase).all() and np.abs(phase).max() > 0
        assert "transmission" in f["retrieval"]


def test_missing_third_party_dependency_says_what_to_install(monkeypatch, module_dir):
    (module_dir / "xspeckle_test_needs.py").write_text("import zz_not_installed_pkg\n")
    monkeypatch.setitem(METHODS, "needs", ("xspeckle_test_needs", "X"))
    with pytest.raises(MethodUnavailableError,
                       match=r"method 'needs' needs missing dependency 'zz_not_installed_pkg' "
                             r"\(pip install zz_not_installed_pkg\)"):
        get_method("needs")
    (module_dir / "xspeckle_test_gpu.py").write_text("import cupy\n")
    monkeypatch.setitem(sys.modules, "cupy", None)  # as if CuPy were not installed
    monkeypatch.setitem(METHODS, "gpu", ("xspeckle_test_gpu", "X"))
    with pytest.raises(MethodUnavailableError, match=r"needs missing dependency 'cupy' \(pip install 'xspeckle\[gpu\]'\)"):
        get_method("gpu")
    assert method_status("needs")[0] == "unavailable"
    names = available_methods()  # left out, not an error
    assert "needs" not in names and "gpu" not in names and "mist" in names


@pytest.mark.parametrize("source, cause", [
    ("from xspeckle.retrieve.base import NoSuchName\n", r"ImportError: cannot import name 'NoSuchName'"),
    ("import xspeckle.retrieve.no_such_module\n", r"ModuleNotFoundError: No module named 'xspeckle.retrieve.no_such"),
    ("from xspeckle import backend\nbackend.no_such_function()\n", r"AttributeError: .*no_such_function"),
    ("x = undefined_name\n", r"NameError: name 'undefined_name'"),
    ("class NotTheRegisteredOne:\n    pass\n", r"xspeckle_test_broken defines no X \(registry line"),
])
def test_broken_method_is_reported_with_its_cause(monkeypatch, module_dir, capsys, source, cause):
    (module_dir / "xspeckle_test_broken.py").write_text(source)
    monkeypatch.setitem(METHODS, "broken", ("xspeckle_test_broken", "X"))
    with pytest.raises(MethodBrokenError, match=r"method 'broken' is broken: " + cause) as info:
        get_method("broken")
    assert info.value.__cause__ is not None  # the original exception stays chained (traceback of the bug)
    with pytest.raises(MethodBrokenError):
        available_methods()  # never silently hidden
    code, out, _ = _cli(capsys, "retrieve", "--help")
    assert code == 0 and re.search(r"^ +broken +BROKEN: method 'broken' is broken: ", out, re.M)


def test_every_registered_method_imports_and_declares_itself():
    for name in METHODS:
        status, cls = method_status(name)
        assert status == "ok", (name, cls)
        assert cls.name == name
        assert cls.outputs and int(cls.min_positions) >= 1


def _readme_rows():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Methods", 1)[1]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    out = []
    for ln in rows:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if cells[0] == "`--method`":  # the header
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        mins = [int(v) for v in re.findall(r"\d+", cells[-1])]
        out.append((names, cells[2], mins))
    return out


def test_readme_method_table_matches_the_registry():
    rows = _readme_rows()
    listed = [n for names, _, _ in rows for n in names]
    assert sorted(listed) == sorted(METHODS), "README method table vs xspeckle.retrieve.METHODS"
    assert len(listed) == len(set(listed))
    for names, modules, mins in rows:
        for i, name in enumerate(names):
            mod, _ = METHODS[name]
            path = "/".join(mod.split(".")[1:]) + ".py"
            assert f"`{path}`" in modules, (name, path, modules)
            cls = get_method(name)
            want = mins[i] if len(mins) == len(names) else mins[0]
            assert cls.min_positions == want, (name, cls.min_positions, mins)


def test_docs_method_list_matches_the_registry():
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    m = re.search(r"unknown method 'magic'; choose one of: ([a-z, -]+)", text)
    assert m, "docs/reliability.md: the unknown-method row"
    assert [s.strip() for s in m.group(1).split(",")] == list(METHODS)
