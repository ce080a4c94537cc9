"""CNR of dark-field maps, in the form of Table I of the MIST paper (Pavlov et al. 2020).

Table I of the paper: CNR of the dark field retrieved by MIST, UMPA and XSVT from N = 2, 4 and
10 diffuser positions (rows N, columns methods).  We give the same table for

* simulated ``mist-berry`` (10 positions, noise on, the paper's geometry: 17 keV, 5.8 µm pixels,
  Δ = 1 m, sandpaper 0.5 m upstream): ROI = the berry's scattering core (truth D_eff > half its
  peak, the paper's "inset"), background = pixels more than 8 px outside the berry (truth
  ``sample_mask`` dilated), the paper's "homogeneous zone outside the sample";
* real FourRod data (``shared/data/real/fourrod_mct``, 13 positions, rows 0–255): ROI = rod 4
  (columns 1600–2110, the most scattering rod), background = air (columns 1400–1580), both 10 px
  inside the README's ranges; N = 2, 4, 10 and all 13.  For N = 13 also MIST's CNR of every rod
  (rod 2 is the homogeneous PMMA rod: no scattering is expected there) and a finiteness check.

The dark field is MIST's ``diffusion`` (D_eff, m; phase-object model, first order
``blur_calibration=False`` = the default, as the paper) and UMPA's and XSVT's ``visibility``
(1 = no scattering), each retriever with its defaults; each method is scored on its own map.
CNR = |μ_roi − μ_bg| / σ_bg (Pavlov 2020 Eq. 8, ``xspeckle.analysis.cnr``).  MIST is per pixel,
UMPA/XSVT average over their (2·2+1)² windows, so the MIST map is also scored after a 5 × 5 box
mean (like-for-like resolution).

Standalone: ``python benchmarks/bench_cnr_table.py [--quick]`` writes
``benchmarks/results/cnr_table.md`` (quick: berry 128 px, FourRod columns 1350–2220 only).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, main_standalone, md_table, section  # noqa: E402

TITLE = "Dark-field CNR in the form of MIST paper Table I (simulated mist-berry, real FourRod)"

#: method name -> (output key holding its dark field, constructor keywords)
METHODS = {"mist": ("diffusion", {"blur_calibration": False}), "umpa": ("visibility", {}), "xsvt": ("visibility", {})}

#: FourRod column ranges (README ranges, 10 px inside)
FOURROD_RODS = {"rod 1": (10, 480), "rod 2 (PMMA)": (560, 1040), "rod 3": (1090, 1370), "rod 4": (1600, 2110)}
FOURROD_AIR = (1400, 1580)

PAPER = ("Paper (real red-currant data, Table I): MIST 10.9 / 22.6 / 23.1, UMPA 4.6 / 17.9 / 30.8, "
         "XSVT 6.9 / 11.6 / 17.1 for N = 2 / 4 / 10.")


def fourrod_file() -> Path | None:
    env = os.environ.get("XSPECKLE_SHARED_DIR")
    for base in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        p = base / "data" / "real" / "fourrod_mct" / "fourrod_13pos_rows000-256.h5"
        if p.is_file():
            return p
    return None


def cnr_rows(ref, smp, geometry, roi, bg, ns):
    """CNR table rows (per N: MIST, MIST 5×5, UMPA, XSVT), wall-time rows, notes, and the MIST maps."""
    from scipy import ndimage

    from xspeckle.analysis.cnr import cnr
    from xspeckle.errors import MethodUnavailableError
    from xspeckle.retrieve import get_method

    table: dict[str, list[str]] = {}
    times: dict[str, list[str]] = {}
    notes: list[str] = []
    mist_maps: dict[int, dict] = {}
    box: list[str] = []
    for name, (key, kw) in METHODS.items():
        try:
            cls = get_method(name)
        except MethodUnavailableError as e:
            table[name] = ["not available"] * len(ns)
            times[name] = ["—"] * len(ns)
            notes.append(f"{name}: {e}")
            continue
        row, trow = [], []
        try:  # untimed warm-up on a small crop: imports, numba kernel load, FFT set-up stay out of the timings
            m0 = max(2, getattr(cls, "min_positions", 1))
            cls(ref[:m0, :48, :48], geometry, **kw)(smp[:m0, :48, :48])
        except MethodUnavailableError:
            pass
        for n in ns:
            if n < getattr(cls, "min_positions", 1):
                row.append(f"needs ≥ {cls.min_positions}")
                trow.append("—")
                continue
            try:
                t0 = time.perf_counter()
                out = cls(ref[:n], geometry, **kw)(smp[:n])
                dt = time.perf_counter() - t0
            except MethodUnavailableError as e:
                row.append("not available")
                trow.append("—")
                notes.append(f"{name} N={n}: {e}")
                continue
            row.append(f"{cnr(out[key], roi, bg)['cnr']:.1f}")
            trow.append(f"{dt * 1e3:.0f}")
            if name == "mist":
                mist_maps[n] = out
                box.append(f"{cnr(ndimage.uniform_filter(out[key], 5), roi, bg)['cnr']:.1f}")
        table[name] = row
        times[name] = trow
    if len(box) != len(ns):
        box = ["not available"] * len(ns)
    rows = [[f"N = {n}", table["mist"][i], box[i], table["umpa"][i], table["xsvt"][i]] for i, n in enumerate(ns)]
    trows = [[f"N = {n}"] + [times[m][i] for m in METHODS] for i, n in enumerate(ns)]
    return rows, trows, notes, mist_maps


HEAD = ["CNR", "MIST (per pixel)", "MIST, 5 × 5 box mean", "UMPA", "XSVT"]


def berry_section(quick: bool) -> str:
    from scipy import ndimage

    from xspeckle.simulate import make_preset

    size = 128 if quick else 256
    sc = make_preset("mist-berry", size=size, seed=0, noise=True)
    ref, data = sc.normalised()
    d_true = sc.truth["diffusion"][0]
    mask = sc.truth["sample_mask"][0]
    roi = d_true > 0.5 * d_true.max()
    bg = ~ndimage.binary_dilation(mask, iterations=8)
    rows, trows, notes, _ = cnr_rows(ref, data[:, 0], sc.geometry, roi, bg, (2, 4, 10))
    text = (f"### Simulated mist-berry\n\n{size} × {size} px, seed 0, noise on; ROI = scattering core "
            f"({int(roi.sum())} px), background = {int(bg.sum())} px outside the berry.\n\n"
            + md_table(HEAD, rows)
            + "\n\nWall time per retrieval (ms, reference work included, warm):\n\n"
            + md_table(["time (ms)", "MIST", "UMPA", "XSVT"], trows))
    return text + "".join(f"\n- {n}" for n in notes)


def fourrod_section(quick: bool) -> str:
    from xspeckle.analysis.cnr import cnr
    from xspeckle.io.scan import Scan
    from xspeckle.preprocess import normalise

    path = fourrod_file()
    if path is None:
        return "### Real FourRod (13 positions)\n\nNot run: `shared/data/real/fourrod_mct` not found (set XSPECKLE_SHARED_DIR)."
    with Scan(path) as s:
        flat = s.flat()
        ref = normalise(s.reference(), flat=flat)
        smp = normalise(s.sample(0), flat=flat)
        geom = s.geometry
    x0 = 1350 if quick else 0  # quick: air + rod 4 only
    ref = np.ascontiguousarray(ref[..., x0:])
    smp = np.ascontiguousarray(smp[..., x0:])
    air = (slice(None), slice(FOURROD_AIR[0] - x0, FOURROD_AIR[1] - x0))
    a4, b4 = FOURROD_RODS["rod 4"]
    roi = (slice(None), slice(a4 - x0, b4 - x0))
    ns = (2, 4, 10, 13)
    rows, trows, notes, maps = cnr_rows(ref, smp, geom, roi, air, ns)
    out13 = maps.get(13)
    per_rod = ""
    if out13 is not None:
        d = out13["diffusion"]
        cells = []
        for name, (a, b) in FOURROD_RODS.items():
            if a - x0 < 0:
                continue
            c = cnr(d, (slice(None), slice(a - x0, b - x0)), air)
            cells.append([name, f"{a}–{b}", f"{np.median(d[:, a - x0:b - x0]):.2e}", f"{c['cnr']:.1f}"])
        cells.append(["air (background)", f"{FOURROD_AIR[0]}–{FOURROD_AIR[1]}", f"{np.median(d[air]):.2e}", "—"])
        finite = all(bool(np.isfinite(v).all()) for v in out13.values())
        per_rod = ("\n\nMIST, all 13 positions: dark field D_eff per rod against air (CNR = |μ_rod − μ_air|/σ_air); "
                   f"every output map finite (no NaN/inf): {'yes' if finite else 'NO'}.\n\n"
                   + md_table(["region", "columns", "median D_eff (m)", "CNR vs air"], cells))
    text = (f"### Real FourRod (13 positions)\n\n`{path.name}`: 13 positions × 256 × {ref.shape[-1]} px "
            f"(columns {x0}–2220), flat-field normalised; ROI = rod 4 (columns {a4}–{b4}), background = air "
            f"(columns {FOURROD_AIR[0]}–{FOURROD_AIR[1]}); N = the first N positions.\n\n"
            + md_table(HEAD, rows)
            + per_rod
            + "\n\nWall time per retrieval (ms, reference work included, warm):\n\n"
            + md_table(["time (ms)", "MIST", "UMPA", "XSVT"], trows))
    return text + "".join(f"\n- {n}" for n in notes)


def run(quick: bool = False) -> str:
    body = ("CNR = |μ_roi − μ_bg|/σ_bg (Pavlov 2020 Eq. 8). MIST: phase-object model, first order "
            "(`blur_calibration=False`, the default; the blur calibration is an opt-in extension); "
            "UMPA and XSVT: their visibility maps, default windows.\n\n"
            + berry_section(quick) + "\n\n" + fourrod_section(quick) + "\n\n" + PAPER)
    cmd = "flock /tmp/xspeckle-bench.lock .venv/bin/python benchmarks/bench_cnr_table.py" + (" --quick" if quick else "")
    return section(TITLE, body, cmd, quick=quick)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
