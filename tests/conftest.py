"""Shared pytest fixtures, the hypothesis profiles and the CI rule "what users rely on must run".

``shared_dir`` locates the project's shared folder (specs, real data) next to the
repository (``<repo>/../shared``, or ``$XSPECKLE_SHARED_DIR``); on a developer machine tests
that need it are skipped with a clear reason where it is absent.

Under CI (environment ``CI=true``, set by ``.ci/run``):

* hypothesis runs derandomised with no example database (profile ``ci``): the same examples
  on every machine, so a property test cannot pass on one run and fail on the next;
* a test that needs the shared real data (it uses ``shared_dir``, ``real_data_dir`` or
  ``fourrod_path``) or is marked ``required_in_ci`` (the headless-browser report test)
  FAILS instead of being skipped when its requirement is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

REPO = Path(__file__).resolve().parent.parent

#: true on the CI machine (``.ci/run`` sets CI=true; so do GitHub Actions and GitLab CI)
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

try:
    from hypothesis import HealthCheck
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True, database=None, print_blob=True,
                                   suppress_health_check=[HealthCheck.too_slow])
    _hyp_settings.register_profile("dev")
    _hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if IN_CI else "dev"))
except ImportError:  # pragma: no cover - hypothesis is in the [test] extra
    pass

#: fixtures whose presence means "this test reads the shared real data"
_SHARED_FIXTURES = ("shared_dir", "real_data_dir", "fourrod_path")


def pytest_configure(config):
    config.addinivalue_line("markers", "required_in_ci: must not be skipped on CI (a skip there is a failure)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a skipped test that needs the shared data or is ``required_in_ci`` is a failure."""
    outcome = yield
    if not IN_CI:
        return
    rep = outcome.get_result()
    if not rep.skipped or hasattr(rep, "wasxfail"):
        return
    needs = item.get_closest_marker("required_in_ci") is not None or any(
        f in getattr(item, "fixturenames", ()) for f in _SHARED_FIXTURES)
    if needs:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"CI=true: this test must run, but was skipped: {reason}"


def _find_shared() -> Path | None:
    env = os.environ.get("XSPECKLE_SHARED_DIR")
    cands = [Path(env)] if env else []
    cands += [REPO.parent / "shared", REPO / "shared"]
    for c in cands:
        if (c / "data").is_dir() or (c / "specs").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder (``specs/``, ``data/real/``); skips the test when it is absent."""
    d = _find_shared()
    if d is None:
        pytest.skip("shared folder (../shared next to the repository) not found; set XSPECKLE_SHARED_DIR")
    return d


@pytest.fixture(scope="session")
def real_data_dir(shared_dir) -> Path:
    """``shared/data/real``; skips when absent."""
    d = shared_dir / "data" / "real"
    if not d.is_dir():
        pytest.skip(f"real data folder {d} not found")
    return d


@pytest.fixture(scope="session")
def fourrod_path(real_data_dir) -> Path:
    """The FourRod 13-position scan file (real data); skips when absent."""
    p = real_data_dir / "fourrod_mct" / "fourrod_13pos_rows000-256.h5"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture
def small_geometry():
    """A plausible upstream-diffuser geometry (20 keV, 1 µm pixel, Δ = 0.5 m)."""
    from xspeckle.geometry import Geometry

    return Geometry(energy_ev=20000.0, pixel_size_m=1e-6, sample_detector_distance_m=0.5)


@pytest.fixture
def small_scan_arrays():
    """Random but deterministic raw frames: P = 3 positions, A = 4 angles, 32 x 40 px, uint16.

    Returns a dict with ``data`` (3, 4, 32, 40), ``reference`` (3, 32, 40), ``flat`` (2, 32, 40),
    ``dark`` (2, 32, 40) and ``theta_deg`` (4,).
    """
    rng = np.random.default_rng(1)
    p, a, h, w = 3, 4, 32, 40
    ref = rng.uniform(800, 1200, (p, h, w)).astype(np.uint16)
    data = (ref[:, None] * rng.uniform(0.6, 0.9, (p, a, h, w))).astype(np.uint16)
    return {
        "data": data,
        "reference": ref,
        "flat": rng.uniform(1000, 1100, (2, h, w)).astype(np.uint16),
        "dark": rng.uniform(90, 110, (2, h, w)).astype(np.uint16),
        "theta_deg": np.linspace(0.0, 180.0, a, endpoint=False),
    }


@pytest.fixture
def small_scan(tmp_path, small_scan_arrays, small_geometry) -> Path:
    """A small scan file written with :func:`xspeckle.io.scan.write_scan`."""
    from xspeckle.io.scan import write_scan

    return write_scan(tmp_path / "small_scan.h5", geometry=small_geometry, **small_scan_arrays)
