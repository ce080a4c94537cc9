"""Ring (sinogram stripe) removal: ring RMS before/after and bead delta change, per filter and error kind.

Cases (all with the exact, ring-free reconstruction as reference):

* ``tomo-beads``: the simulated speckle tomography's truth phase (glass beads around a PMMA rod; 128 px with 90
  angles, and 256 px with 180 angles) with 2 % RMS column gain errors, 12 rows reconstructed by
  ``delta_from_phase``;
* ``rod 256``: analytic phase sinogram of a rod with three beads (tests/test_rings.py), 360 angles, 256 px,
  2 % column gain errors (3 seeds) or 0.01 rad column offsets;
* ``weak absorber``: transmission of the same rod with ln T down to -0.05 and 1 % detector gain stripes
  (the sorting filter's design case).

Ring RMS = RMS over the reconstruction disc (90 % of the radius) of the slice minus the ring-free slice; the
table gives its reduction factor (before / after). Bead delta = mean over each bead (eroded to 70 % of its
radius), the largest relative change against the ring-free slice. Standalone:
``python benchmarks/bench_rings.py [--quick]`` writes ``benchmarks/results/rings.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import main_standalone, md_table, section  # noqa: E402

TITLE = "Ring removal: ring RMS reduction and bead delta change per stripe filter"

METHODS = ("sorting", "filtering", "wavelet-fft", "all", "gain", "gain order=3")
OBJ = [(1.0, 0.6, 0.6, 0, 0, 0), (0.5, 0.12, 0.12, 0.3, 0.2, 0), (0.5, 0.1, 0.1, -0.3, -0.25, 0),
       (0.5, 0.08, 0.08, 0.1, -0.35, 0)]


def _disc(n, frac=0.9):
    yy, xx = np.mgrid[:n, :n]
    return np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) < frac * n / 2


def _rms(x, m):
    return float(np.sqrt(np.mean(x[..., m] ** 2)))


def _evaluate(bad, clean_rec, recon, masks, disc, method):
    from xspeckle.errors import ParameterError
    from xspeckle.tomo.rings import remove_rings

    name, _, opt = method.partition(" ")
    kw = {k: int(v) for k, v in (o.split("=") for o in opt.split())} if opt else {}
    t0 = time.perf_counter()
    try:
        fixed = remove_rings(bad, name, **kw)
    except ParameterError as exc:
        return ["n/a", "n/a", str(exc).split(":")[-1].strip()[:40]]
    dt = time.perf_counter() - t0
    rec = recon(fixed)
    before = _rms(recon(bad) - clean_rec, disc)
    ratio = before / _rms(rec - clean_rec, disc)
    bead = max(abs(rec[m].mean() / clean_rec[m].mean() - 1) for m in masks)
    n_sino = int(np.prod(bad.shape[:-2])) if bad.ndim > 2 else 1
    return [f"{ratio:.1f}x", f"{100 * bead:.2f} %", f"{1e3 * dt / n_sino:.0f} ms"]


def _rod_case(n, angles, kind, seed):
    from xspeckle.tomo.fbp import fbp, radon_ellipses

    th = np.linspace(0.0, 180.0, angles, endpoint=False)
    sino = (-0.01 * radon_ellipses(OBJ, th, n)).astype(np.float32)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    masks = [np.hypot(xx - ((n - 1) / 2 + x0 * n / 2), yy - ((n - 1) / 2 - y0 * n / 2)) < 0.7 * a * n / 2
             for _, a, _, x0, y0, _ in OBJ[1:]]
    if kind == "gain":
        bad = sino * (1 + rng.normal(0, 0.02, n).astype(np.float32))
        return bad, fbp(sino, th), (lambda s: fbp(s, th)), masks
    if kind == "offset":
        bad = sino + rng.normal(0, 0.01, n).astype(np.float32)
        return bad, fbp(sino, th), (lambda s: fbp(s, th)), masks
    T = np.exp(0.05 * sino / np.abs(sino).max()).astype(np.float32)  # weak absorber
    bad = T * (1 + rng.normal(0, 0.01, n).astype(np.float32))
    return bad, fbp(-np.log(T), th), (lambda s: fbp(-np.log(s), th)), masks


def _tomo_beads_case(size, angles, seed=0):
    from scipy import ndimage as ndi

    from xspeckle.simulate import make_preset
    from xspeckle.tomo.convert import delta_from_phase

    sim = make_preset("tomo-beads", size=size, angles=angles, positions=1, noise=False, seed=seed)
    geo, th = sim.geometry, sim.theta_deg
    k, p = geo.wavenumber_per_m, geo.pixel_size_m / geo.magnification
    sino = np.ascontiguousarray(np.moveaxis(sim.truth["phase"], 1, 0))  # (rows, A, W)
    rows = np.unique(np.linspace(0.15 * size, 0.85 * size, 12).astype(int))
    sino = sino[rows]
    g = np.random.default_rng(seed + 1).normal(0, 0.02, size).astype(np.float32)  # one gain per detector column
    bad = sino * (1 + g)

    def recon(s):
        return delta_from_phase(s, th, wavenumber_per_m=k, voxel_size_m=p)

    clean = recon(sino)
    truth = sim.truth["delta"][rows]
    glass = truth > 0.5 * truth.max()  # the glass beads (delta 5.16e-6 vs PMMA 2.64e-6)
    lab, nlab = ndi.label(ndi.binary_erosion(glass, iterations=2))
    masks = [lab == i for i in range(1, nlab + 1) if (lab == i).sum() > 20]
    return bad, clean, recon, masks


def run(quick: bool = False) -> str:
    rows = []
    disc128, disc256 = _disc(128), _disc(256)
    bad, clean, recon, masks = _tomo_beads_case(128, 45 if quick else 90)
    for m in METHODS:
        rows.append(["tomo-beads truth phase, 128 px, 2 % column gain", m] + _evaluate(bad, clean, recon, masks, disc128, m))
    if not quick:
        bad, clean, recon, masks = _tomo_beads_case(256, 180)
        for m in METHODS:
            rows.append(["tomo-beads truth phase, 256 px, 180 angles, 2 % column gain", m]
                        + _evaluate(bad, clean, recon, masks, disc256, m))
    seeds = (0,) if quick else (0, 1, 2)
    for seed in seeds:
        bad, clean, recon, masks = _rod_case(256, 180 if quick else 360, "gain", seed)
        for m in METHODS:
            rows.append([f"rod 256 px, 2 % column gain, seed {seed}", m] + _evaluate(bad, clean, recon, masks, disc256, m))
    for kind, label in (("offset", "rod 256 px, 0.01 rad column offsets"), ("weak", "weak absorber T, 1 % gain")):
        bad, clean, recon, masks = _rod_case(256, 180 if quick else 360, kind, 3)
        for m in METHODS:
            rows.append([label, m] + _evaluate(bad, clean, recon, masks, disc256, m))
    table = md_table(["case", "filter", "ring RMS reduction", "max bead delta change", "time per sinogram"], rows)
    body = (
        f"{table}\n\n"
        "- `gain` is ours (column-gain least squares, `tomo/rings.py`); the others are algotom's (Vo et al. 2018, "
        "Muench et al. 2009).\n"
        "- On phase sinograms, whose columns vary steeply, the sorting-based filters keep most of the stripes: "
        "a median across neighbouring columns of a monotone profile returns the centre column, stripe included. "
        "They work on their design case (weak-absorber transmission).\n"
        "- `gain` needs columns that vary smoothly across x: on the 256 px rod it meets the issue's 5x / 1 % "
        "criterion (tests/test_rings.py). On the tomo-beads truth phase (a narrow object: 25-40 columns carry "
        "signal per row at 128 px) the best is 2.1x (`order=3`, 128 px, 90 angles) and 3.3x (default, 256 px, "
        "180 angles): the issue's 5x criterion is **not met** on that simulated speckle tomography, only on the "
        "analytic rod.\n"
        "- Bead change on the weak absorber is large for every filter because the beads' -ln T is tiny "
        "(the rod's ln T reaches only -0.05).\n"
    )
    return section(TITLE, body, "python benchmarks/bench_rings.py" + (" --quick" if quick else ""), quick=quick)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
