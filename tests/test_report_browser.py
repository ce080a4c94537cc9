"""The demo report opens in a real browser with every figure displayed (headless Chromium).

Skipped when no Chromium is installed (``apt-get install chromium``), except on CI, where
``.ci/run`` installs it and a skip counts as a failure.
A small report is built (64 px 2-D scans, a 32 px / 8-angle tomogram), then:

1. Chromium loads a copy of ``index.html`` (same folder, so the same relative figure paths)
   with a short script appended that, on the window's ``load`` event, writes what the
   browser made of every ``<img>`` (``complete``, ``naturalWidth``/``naturalHeight``) into
   an attribute; ``--dump-dom`` returns the DOM after that: every image must have decoded
   with the pixel size of its PNG file, and every figure must carry its caption;
2. Chromium takes a screenshot of the page as it is: the picture must not be blank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from xspeckle.report import run_demo


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = _chromium()
# on CI (CI=true) a skip here is a failure (tests/conftest.py): .ci/run installs Chromium
pytestmark = [pytest.mark.required_in_ci,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")]

_CHECK = """<script>
window.addEventListener("load", function () {
  var out = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    var cap = im.parentElement.querySelector("figcaption");
    out.push({src: im.getAttribute("src"), complete: im.complete, w: im.naturalWidth, h: im.naturalHeight,
              caption: cap ? cap.textContent : ""});
  }
  document.body.setAttribute("data-images", JSON.stringify(out));
});
</script>
"""


def _run_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG file's IHDR chunk (checks the signature)."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "report"
    run_demo(out, size=64, tomo_size=32, tomo_angles=8)
    return out


def test_every_figure_loads_in_chromium(report, tmp_path):
    page = (report / "index.html").read_text(encoding="utf-8")
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs, "the report has no figure"
    check = report / "index_browser_check.html"
    check.write_text(page.replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    res = _run_chromium(tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom", check.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r'data-images="([^"]*)"', res.stdout)
    assert m, "the page's load handler did not run (no data-images attribute in the dumped DOM)"
    import html

    images = json.loads(html.unescape(m.group(1)))
    assert [im["src"] for im in images] == srcs  # the browser saw every figure of the HTML, in order
    for im in images:
        w, h = _png_size(report / im["src"])
        assert im["complete"] and (im["w"], im["h"]) == (w, h), f"{im['src']} did not load: {im}"
        assert len(im["caption"].strip()) >= 20, f"{im['src']} has no caption"


def test_screenshot_of_the_report_is_not_blank(report, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    res = _run_chromium(tmp_path / "profile-shot", "--hide-scrollbars", f"--screenshot={shot}",
                        "--window-size=1200,4000", (report / "index.html").as_uri())
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    img = imread(str(shot))[..., :3]  # float in [0, 1]
    assert img.shape[:2] == (4000, 1200)
    gray = img.mean(axis=-1)
    # a blank (white) page has std 0; text alone gives little ink.  The figures (gray and colour maps,
    # colour bars) fill a large part of the page with mid-tones and colour.
    assert float(gray.std()) > 0.1, f"screenshot looks blank (std {gray.std():.3f})"
    mid = (gray > 0.1) & (gray < 0.9)
    assert float(mid.mean()) > 0.05, f"too little image content ({100 * mid.mean():.1f} % mid-tone pixels)"
    colour = (img.max(axis=-1) - img.min(axis=-1)) > 0.2
    assert float(colour.mean()) > 0.01, "no coloured pixels: the colour maps did not render"
    assert np.isfinite(img).all()
