"""docs/design.md describes the tree that is there (issue 17): every module file it names exists, and so do
the functions and classes its "Where do I go to ..." section sends people to."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "xspeckle"
DESIGN = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")


def test_every_named_module_exists():
    files = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")}
    files |= {p.relative_to(ROOT).as_posix() for d in ("tests", "benchmarks") for p in (ROOT / d).glob("*.py")}
    names = set(re.findall(r"`((?:[a-z_]+/)?[a-z_0-9]+\.py)(?:::\w+)?`", DESIGN))
    names |= set(re.findall(r"`([a-z_]+/[a-z_0-9]+\.py)", DESIGN))
    assert names, "design.md names no module"
    missing = sorted(n for n in names if not any(f == n or f.endswith("/" + n) for f in files))
    assert not missing, missing


def test_where_do_i_go_targets_exist():
    import xspeckle.io.partial as partial
    import xspeckle.io.scan as scan
    import xspeckle.pipeline.engines as engines
    import xspeckle.pipeline.memory as memory
    import xspeckle.pipeline.run as run
    import xspeckle.retrieve as retrieve
    from xspeckle.retrieve.base import Retriever

    assert "## Where do I go to" in DESIGN
    for obj, names in ((partial.RetrievalWriter, ("create", "try_open", "write", "commit")),
                       (scan.Scan, ("effective_flat_dark",)),
                       (engines, ("choose_engine", "settle_engine", "SerialEngine", "ProcessPoolEngine", "DaskEngine")),
                       (memory, ("estimate_memory", "MemoryPlan")), (run, ("retrieve_scan", "_Output")),
                       (retrieve, ("METHODS", "get_method")), (scan, ("FrameScan", "save_scan")),
                       (Retriever, ("working_factor", "supports_batch", "retrieve_batch"))):
        for n in names:
            assert hasattr(obj, n), (obj, n)
            assert n in DESIGN, n
