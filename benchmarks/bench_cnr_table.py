"""CNR of dark-field maps, in the form of Table I of the MIST paper (Pavlov et al. 2020).

Simulated ``mist-berry`` (10 diffuser positions, noise on): dark field retrieved with N = 2, 4 and
10 positions by MIST (``diffusion``, m), and by UMPA and XSVT (their ``visibility`` maps) when
those retrievers import from ``xspeckle.retrieve`` (rows say "not available" otherwise).

CNR = |μ_roi − μ_bg| / σ_bg (Pavlov 2020 Eq. 8, ``xspeckle.analysis.cnr``): the ROI is the
berry's scattering core (truth D_eff > half its peak, the paper's "inset"), the background the
pixels more than 8 px outside the berry (truth ``sample_mask`` dilated), the paper's
"homogeneous zone outside the sample".  Each method is scored on its own dark-field map.

Standalone: ``python benchmarks/bench_cnr_table.py [--quick]`` writes
``benchmarks/results/cnr_table.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import main_standalone, md_table, section  # noqa: E402

TITLE = "Dark-field CNR on simulated mist-berry (form of MIST paper Table I)"

#: method name -> (output key holding its dark field, constructor keywords)
METHODS = {"mist": ("diffusion", {}), "umpa": ("visibility", {}), "xsvt": ("visibility", {})}


def run(quick: bool = False) -> str:
    from scipy import ndimage

    from xspeckle.analysis.cnr import cnr
    from xspeckle.errors import MethodUnavailableError
    from xspeckle.retrieve import get_method
    from xspeckle.simulate import make_preset

    size = 128 if quick else 256
    sc = make_preset("mist-berry", size=size, seed=0, noise=True)
    ref, data = sc.normalised()
    smp = data[:, 0]
    d_true = sc.truth["diffusion"][0]
    mask = sc.truth["sample_mask"][0]
    roi = d_true > 0.5 * d_true.max()
    bg = ~ndimage.binary_dilation(mask, iterations=8)
    ns = (2, 4, 10)
    table: dict[str, list[str]] = {}
    times: dict[str, list[str]] = {}
    notes = []
    for name, (key, kw) in METHODS.items():
        try:
            cls = get_method(name)
        except MethodUnavailableError as e:
            table[name] = ["not available"] * len(ns)
            times[name] = ["—"] * len(ns)
            notes.append(f"{name}: {e}")
            continue
        row, trow = [], []
        for n in ns:
            if n < getattr(cls, "min_positions", 1):
                row.append(f"needs ≥ {cls.min_positions}")
                trow.append("—")
                continue
            try:
                t0 = time.perf_counter()
                out = cls(ref[:n], sc.geometry, **kw)(smp[:n])
                dt = time.perf_counter() - t0
                c = cnr(out[key], roi, bg)
                row.append(f"{c['cnr']:.1f}")
                trow.append(f"{dt:.2f}")
            except MethodUnavailableError as e:
                row.append("not available")
                trow.append("—")
                notes.append(f"{name} N={n}: {e}")
        table[name] = row
        times[name] = trow
    # MIST is per pixel; UMPA/XSVT average over their (2·2+1)² windows.  For a like-for-like
    # resolution, also score the MIST map after a 5 × 5 box mean.
    box = []
    if table["mist"][0] != "not available":
        mist_cls = get_method("mist")
        for n in ns:
            d = mist_cls(ref[:n], sc.geometry)(smp[:n])["diffusion"]
            box.append(f"{cnr(ndimage.uniform_filter(d, 5), roi, bg)['cnr']:.1f}")
    else:
        box = ["not available"] * len(ns)
    rows = [[f"N = {n}"] + [table["mist"][i], box[i]] + [table[m][i] for m in ("umpa", "xsvt")] for i, n in enumerate(ns)]
    trows = [[f"N = {n}"] + [times[m][i] for m in METHODS] for i, n in enumerate(ns)]
    body = (f"mist-berry, {size} × {size} px, seed 0, noise on. CNR = |μ_roi − μ_bg|/σ_bg (Pavlov 2020 Eq. 8); "
            f"ROI = scattering core ({int(roi.sum())} px), background = {int(bg.sum())} px outside the berry. "
            "MIST uses its defaults (phase-object model, blur calibration on).\n\n"
            + md_table(["CNR", "MIST (per pixel)", "MIST, 5 × 5 box mean", "UMPA", "XSVT"], rows)
            + "\n\nWall time per retrieval (s, reference work included):\n\n"
            + md_table(["time (s)", "MIST", "UMPA", "XSVT"], trows)
            + "\n\nPaper (real red-currant data, Table I): MIST 10.9 / 22.6 / 23.1, UMPA 4.6 / 17.9 / 30.8, "
              "XSVT 6.9 / 11.6 / 17.1 for N = 2 / 4 / 10.")
    if notes:
        body += "\n\n" + "\n".join(f"- {n}" for n in notes)
    cmd = "python benchmarks/bench_cnr_table.py" + (" --quick" if quick else "")
    return section(TITLE, body, cmd, quick=quick)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
