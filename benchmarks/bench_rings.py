"""Ring (sinogram stripe) removal: ring RMS before/after and bead delta change, per filter and error kind.

Cases (all with the exact, ring-free reconstruction as reference):

* ``tomo-beads``: the simulated speckle tomography's truth phase (glass beads around a PMMA rod; 128 px with 90
  angles, the preset's defaults, and 256 px with 180 angles) with 2 % RMS gain errors per detector column (the
  same in every row, as a column-parallel readout makes them), the whole delta volume reconstructed by
  ``delta_from_phase``; also per-pixel gains (each row its own) and the filter run per 16-row slab (what
  ``xspeckle tomo --rings`` does, without the angles);
* ``rod 256``: analytic phase sinogram of a rod with three beads (tests/test_rings.py), 360 angles, 256 px,
  2 % column gain errors (3 seeds) or 0.01 rad column offsets;
* ``weak absorber``: transmission of the same rod with ln T down to -0.05 and 1 % detector gain stripes
  (the sorting filter's design case).

Ring RMS = RMS over the reconstruction disc (90 % of the radius) of the slice (volume) minus the ring-free
one; the table gives its reduction factor (before / after). Bead delta = mean over each bead (rod: eroded to
70 % of its radius; tomo-beads: the glass voxels eroded by 2 voxels), the largest relative change against the
ring-free reconstruction. Standalone:
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

#: "gain" gets the angles (consistency term); "gain no-angles" is the roughness term only; "gain per-row"
#: fits each sinogram alone (shared=False); "gain slab16" fits 16 rows at a time without the angles
METHODS = ("sorting", "filtering", "wavelet-fft", "all", "gain", "gain no-angles")
GAIN_VARIANTS = ("gain", "gain no-angles", "gain per-row", "gain slab16")
OBJ = [(1.0, 0.6, 0.6, 0, 0, 0), (0.5, 0.12, 0.12, 0.3, 0.2, 0), (0.5, 0.1, 0.1, -0.3, -0.25, 0),
       (0.5, 0.08, 0.08, 0.1, -0.35, 0)]


def _disc(n, frac=0.9):
    yy, xx = np.mgrid[:n, :n]
    return np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) < frac * n / 2


def _rms(x, m):
    return float(np.sqrt(np.mean(x[..., m] ** 2)))


def _filter(bad, theta, method):
    from xspeckle.tomo.rings import remove_rings

    name, _, opt = method.partition(" ")
    if name != "gain":
        return remove_rings(bad, name)
    if opt == "no-angles":
        return remove_rings(bad, "gain")
    if opt == "per-row":
        return remove_rings(bad, "gain", theta_deg=theta, shared=False)
    if opt == "slab16":
        b3 = bad.reshape(-1, *bad.shape[-2:])
        return np.concatenate([remove_rings(b3[i : i + 16], "gain") for i in range(0, b3.shape[0], 16)])
    return remove_rings(bad, "gain", theta_deg=theta)


def _evaluate(bad, clean_rec, recon, masks, disc, method, theta):
    from xspeckle.errors import ParameterError

    t0 = time.perf_counter()
    try:
        fixed = _filter(bad, theta, method)
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
        return bad, fbp(sino, th), (lambda s: fbp(s, th)), masks, th
    if kind == "offset":
        bad = sino + rng.normal(0, 0.01, n).astype(np.float32)
        return bad, fbp(sino, th), (lambda s: fbp(s, th)), masks, th
    T = np.exp(0.05 * sino / np.abs(sino).max()).astype(np.float32)  # weak absorber
    bad = T * (1 + rng.normal(0, 0.01, n).astype(np.float32))
    return bad, fbp(-np.log(T), th), (lambda s: fbp(-np.log(s), th)), masks, th


def _tomo_beads_case(size, angles, seed=1, per_pixel=False):
    """The whole tomo-beads delta volume with 2 % RMS gain errors per detector column (``per_pixel``: per
    detector pixel, each row its own) injected into the truth phase."""
    from scipy import ndimage as ndi

    from xspeckle.simulate import make_preset
    from xspeckle.tomo.convert import delta_from_phase

    sim = make_preset("tomo-beads", size=size, angles=angles, positions=1, noise=False, seed=0)
    geo, th = sim.geometry, sim.theta_deg
    k, p = geo.wavenumber_per_m, geo.pixel_size_m / geo.magnification
    sino = np.ascontiguousarray(np.moveaxis(sim.truth["phase"], 1, 0))  # (rows, A, W)
    shape = (size, 1, size) if per_pixel else (size,)
    g = np.random.default_rng(seed).normal(0, 0.02, shape).astype(np.float32)
    bad = sino * (1 + g)

    def recon(s):
        return delta_from_phase(s, th, wavenumber_per_m=k, voxel_size_m=p)

    clean = recon(sino)
    truth = sim.truth["delta"]
    glass = truth > 0.5 * truth.max()  # the glass beads (delta 5.16e-6 vs PMMA 2.64e-6)
    lab, nlab = ndi.label(ndi.binary_erosion(glass, iterations=2))
    masks = [lab == i for i in range(1, nlab + 1) if (lab == i).sum() > 20]
    return bad, clean, recon, masks, th, g


def _oracle(bad, g, sigma_px):
    """Undo the exact gain except its Gaussian low-pass of ``sigma_px`` columns: what a filter that sees
    every gain component shorter than that would reach."""
    from scipy import ndimage as ndi

    lo = ndi.gaussian_filter1d(g.astype(np.float64), sigma_px, axis=-1)
    return (bad * ((1 + lo) / (1 + g))).astype(np.float32)


def run(quick: bool = False) -> str:
    rows = []
    disc128, disc256 = _disc(128), _disc(256)
    seeds = (1,) if quick else (1, 2, 3)
    for seed in seeds:
        bad, clean, recon, masks, th, g = _tomo_beads_case(128, 90, seed)
        disc = np.broadcast_to(disc128, clean.shape)
        label = f"tomo-beads delta volume, 128 px, 90 angles, 2 % column gain, seed {seed}"
        first = seed == seeds[0]
        for m in (METHODS[:-2] if first else ()) + (GAIN_VARIANTS if first else ("gain", "gain no-angles")):
            rows.append([label, m] + _evaluate(bad, clean, recon, masks, disc, m, th))
        if first:
            before = _rms(recon(bad) - clean, disc)
            for sig in (1.0, 2.0, 4.0):
                rec = recon(_oracle(bad, g, sig))
                bead = max(abs(rec[m].mean() / clean[m].mean() - 1) for m in masks)
                rows.append([label, f"oracle: exact gain but its sigma={sig:g} px low-pass",
                             f"{before / _rms(rec - clean, disc):.1f}x", f"{100 * bead:.2f} %", "-"])
    bad, clean, recon, masks, th, _ = _tomo_beads_case(128, 90, 1, per_pixel=True)
    for m in ("gain", "gain per-row", "gain no-angles"):
        rows.append(["tomo-beads, 128 px, 90 angles, 2 % per-pixel gain (each row its own)", m]
                    + _evaluate(bad, clean, recon, masks, np.broadcast_to(disc128, clean.shape), m, th))
    if not quick:
        bad, clean, recon, masks, th, _ = _tomo_beads_case(256, 180, 1)
        for m in ("sorting", "wavelet-fft", "gain", "gain no-angles", "gain slab16"):
            rows.append(["tomo-beads delta volume, 256 px, 180 angles, 2 % column gain, seed 1", m]
                        + _evaluate(bad, clean, recon, masks, np.broadcast_to(disc256, clean.shape), m, th))
    for seed in (0,) if quick else (0, 1, 2):
        bad, clean, recon, masks, th = _rod_case(256, 180 if quick else 360, "gain", seed)
        for m in METHODS:
            rows.append([f"rod 256 px, 2 % column gain, seed {seed}", m] + _evaluate(bad, clean, recon, masks, disc256, m, th))
    for kind, label in (("offset", "rod 256 px, 0.01 rad column offsets"), ("weak", "weak absorber T, 1 % gain")):
        bad, clean, recon, masks, th = _rod_case(256, 180 if quick else 360, kind, 3)
        for m in METHODS:
            rows.append([label, m] + _evaluate(bad, clean, recon, masks, disc256, m, th))
    table = md_table(["case", "filter", "ring RMS reduction", "max bead delta change", "time per sinogram"], rows)
    body = (
        f"{table}\n\n"
        "- `gain` is ours (`tomo/rings.py`): one gain per detector column fitted to all the sinograms given, "
        "from the roughness across columns plus, with the angles, the Helgason-Ludwig consistency of the "
        "projection moments; `gain no-angles` is the roughness term only (the method before 2026-12-05), "
        "`gain per-row` one fit per sinogram, `gain slab16` the roughness fit per 16-row slab, which is what "
        "`xspeckle tomo --rings gain` runs (it does not pass the angles yet). The others are algotom's "
        "(Vo et al. 2018, Muench et al. 2009).\n"
        "- Why roughness alone fails on tomo-beads: it tells a gain from the object only at wavelengths "
        "shorter than the object's features (a gain varying over ~10 columns looks like the rod's own "
        "profile), and the rod, on the axis, is the same at every angle and in every row. The oracle rows "
        "show how much those long components weigh in the ring RMS: leaving only the gain's Gaussian "
        "low-pass of sigma 2 px already caps the reduction near 5x. The consistency term sees them wherever "
        "the beads move across columns with the angle.\n"
        "- The issue's criterion (>= 5x, beads < 1 %) holds on the tomo-beads delta volume when the gain is "
        "the same for every row of a column and the filter sees the whole volume with its angles "
        "(tests/test_rings.py). It does **not** hold for per-pixel gains (each row its own: one sinogram "
        "per fit is too little data on this narrow object), nor per 16-row slab without the angles.\n"
        "- All tomo-beads rows use the simulated (truth) phase, i.e. a noise-free retrieval. A retrieved "
        "phase carries its own errors and per-angle offsets that break the consistency term: on the demo's "
        "PWF phase (96 px, 32 angles) the fit leaves factors far outside 1 +- 25 % and `gain` refuses it "
        "(`max_change`) instead of applying it; remove the offsets first (`--dc wings`).\n"
        "- On phase sinograms, whose columns vary steeply, the sorting-based filters keep most of the "
        "stripes: a median across neighbouring columns of a monotone profile returns the centre column, "
        "stripe included. They work on their design case (weak-absorber transmission).\n"
        "- Bead change on the weak absorber is large for every filter because the beads' -ln T is tiny "
        "(the rod's ln T reaches only -0.05).\n"
    )
    return section(TITLE, body, "python benchmarks/bench_rings.py" + (" --quick" if quick else ""), quick=quick)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
