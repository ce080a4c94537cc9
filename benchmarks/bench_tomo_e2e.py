"""End to end: simulated tomo-beads -> PWF retrieval of every angle -> FBP -> delta/beta in the beads.

Both diffuser-field estimates: the paper's zero-phase field and our phase-only one (``diffuser_estimate``).

Chain (the real one, file to file): ``make_preset("tomo-beads")`` -> ``write_simulated`` ->
``pipeline.retrieve_scan(method="pwf")`` (all P = 2 diffuser positions, the multi-position variant, and
position 0 alone) -> ``tomo.reconstruct.reconstruct_file`` with the automatic rotation centre (reconstruction
entropy around the centre-of-mass estimate; the scan has no 0/180 pair) and the default quadratic background
removal -> mean delta and beta in the bead cores (the truth glass mask eroded by 2 voxels) against the truth
volumes (same voxel grid: Z = detector rows, voxel = pixel). The same is reported with the true axis and
with the true projections (truth ``phase``/``transmission`` through the same FBP) to separate retrieval,
centre and reconstruction errors.

Issue criterion: mean delta in the beads within 2 % of the truth at benchmark size.

Standalone: ``python benchmarks/bench_tomo_e2e.py [--quick]`` writes ``benchmarks/results/tomo_e2e.md``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import main_standalone, md_table, section  # noqa: E402

TITLE = "Tomography end to end: PWF retrieval -> FBP, delta and beta in the beads against the truth"


def bead_cores(delta_true, erode_px: int = 2):
    """Voxels of the glass beads (delta >= 90 % of the maximum), eroded by ``erode_px`` voxels."""
    import numpy as np
    from scipy import ndimage as ndi

    glass = delta_true >= 0.9 * float(delta_true.max())  # the PMMA rod has delta 1/4 of glass
    return ndi.binary_erosion(glass, iterations=erode_px) if erode_px > 0 else glass


def chain(size: int, angles: int, *, positions=None, workdir: Path, params=None, seed: int = 0,
          noise: bool = True) -> dict:
    """Run the chain once; return the errors (relative, signed) and timings."""
    import h5py
    import numpy as np

    from xspeckle.pipeline import retrieve_scan
    from xspeckle.simulate import make_preset, write_simulated
    from xspeckle.tomo.convert import beta_from_transmission, delta_from_phase, remove_background_quadratic
    from xspeckle.tomo.reconstruct import reconstruct_file

    t0 = time.perf_counter()
    sim = make_preset("tomo-beads", size=size, angles=angles, seed=seed, noise=noise)
    scan = write_simulated(sim, workdir / "scan.h5", overwrite=True)
    t_sim = time.perf_counter() - t0
    tag = "all" if positions is None else "p" + "".join(map(str, positions))
    t0 = time.perf_counter()
    ret = retrieve_scan(scan, workdir / f"ret_{tag}.h5", method="pwf", overwrite=True, positions=positions,
                        params=dict(params or {}))
    t_ret = time.perf_counter() - t0
    t0 = time.perf_counter()
    vol = reconstruct_file(ret, workdir / f"vol_{tag}.h5", overwrite=True)
    t_rec = time.perf_counter() - t0
    tr = sim.truth
    d_true, b_true = np.asarray(tr["delta"], np.float64), np.asarray(tr["beta"], np.float64)
    core = bead_cores(d_true)
    c_true = float(tr["rotation_center_px"])
    with h5py.File(vol) as f:
        delta, beta, c_auto = f["volume/delta"][()], f["volume/beta"][()], float(f.attrs["center_px"])
    with h5py.File(ret) as f:
        phase, trans = f["retrieval/phase"][()], f["retrieval/transmission"][()]
    geo, theta = sim.geometry, sim.theta_deg
    kw = dict(wavenumber_per_m=geo.wavenumber_per_m, voxel_size_m=geo.pixel_size_m / geo.magnification)

    def vols(ph, tt, c):
        d = remove_background_quadratic(delta_from_phase(np.moveaxis(ph, 1, 0), theta, center=c, **kw))
        b = remove_background_quadratic(beta_from_transmission(np.moveaxis(tt, 1, 0), theta, center=c, **kw))
        return d, b

    def err(v, t):
        return float(v[core].mean() / t[core].mean() - 1.0)

    # retrieval transfer: Re<F(ret) conj F(true)> / <|F(true)|^2> over all projections, by spatial frequency
    Fr, Ft = np.fft.fft2(phase.astype(np.float64)), np.fft.fft2(np.asarray(tr["phase"], np.float64))
    fr = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None])
    cross, power = (Fr * np.conj(Ft)).real.sum(0), (np.abs(Ft) ** 2).sum(0)
    gain = {b: float(cross[(fr >= lo) & (fr < hi)].sum() / power[(fr >= lo) & (fr < hi)].sum())
            for b, (lo, hi) in {"<0.01": (0, 0.01), "0.01-0.04": (0.01, 0.04), "0.04-0.1": (0.04, 0.1),
                                "0.1-0.2": (0.1, 0.2)}.items()}
    d_tc, b_tc = vols(phase, trans, c_true)  # retrieved projections, true axis
    d_pp, b_pp = vols(np.asarray(tr["phase"], np.float32), np.asarray(tr["transmission"], np.float32), c_true)
    return dict(
        size=size, angles=angles, positions=tag, center_true=c_true, center_auto=c_auto,
        delta_err=err(delta, d_true), beta_err=err(beta, b_true),
        delta_err_true_axis=err(d_tc, d_true), beta_err_true_axis=err(b_tc, b_true),
        delta_err_true_proj=err(d_pp, d_true), beta_err_true_proj=err(b_pp, b_true),
        n_core=int(core.sum()), gain=gain, t_sim=t_sim, t_ret=t_ret, t_rec=t_rec,
    )


def center_rows(w: int, a: int, offset: float, rows: int = 16) -> list:
    """Automatic axis on an analytic bead sinogram (w px, a angles over [0, 180]) with a retrieval-like error.

    The error imitates PWF's on tomo-beads: smooth, antisymmetric about the detector middle, the same sign
    at every angle, 6 % of the peak (tests/test_tomo_center.py), plus 2 % white noise."""
    import numpy as np

    from xspeckle.tomo.center import find_center, find_center_com, find_center_pair, opposite_pair
    from xspeckle.tomo.fbp import radon_ellipses

    theta = np.linspace(0.0, 180.0, a)
    c = (w - 1) / 2 + offset
    beads = [(-1.0, 0.25, 0.25, 0.10, 0.50, 0.0), (-1.0, 0.18, 0.18, -0.45, -0.30, 0.0),
             (-1.0, 0.12, 0.12, 0.45, 0.40, 0.0), (-0.3, 0.20, 0.20, 0.0, 0.0, 0.0)]
    s = np.stack([radon_ellipses([(v, r * (1 - 0.02 * k), r * (1 - 0.02 * k), x, y, p) for v, r, _, x, y, p in beads],
                                 theta, w, radius_px=0.45 * w, center=c) for k in range(rows)])
    t = (np.arange(w) - (w - 1) / 2) / w
    peak = np.abs(s).max()
    rng = np.random.default_rng(0)
    s = s - 0.06 * peak * np.tanh(6 * t) * (1 + 0.5 * np.cos(2 * np.deg2rad(theta) + 0.3))[:, None]
    s = (s + 0.02 * peak * rng.standard_normal(s.shape)).astype(np.float32)
    i, j = opposite_pair(theta)
    t0 = time.perf_counter()
    auto = find_center(s, theta)
    dt = time.perf_counter() - t0
    return [f"{w} x {a}, axis {c:.1f}", f"{auto - c:+.2f}", f"{find_center_pair(s[:, i], s[:, j]) - c:+.2f}",
            f"{find_center_com(s, theta) - c:+.2f}", f"{dt:.1f} s"]


def run(quick: bool = False) -> str:
    size, angles = (64, 24) if quick else (128, 90)
    rows, gains, verdict = [], [], []
    with tempfile.TemporaryDirectory() as td:
        for pos, est in ((None, "zero-phase"), (None, "phase-only"), ((0,), "zero-phase"), ((0,), "phase-only")):
            r = chain(size, angles, positions=pos, workdir=Path(td), params={"diffuser_estimate": est})
            rows.append([
                f"{size} px, {angles} angles", "0, 1 (multi-position)" if pos is None else "0", est,
                f"{r['center_auto']:.2f} ({r['center_auto'] - r['center_true']:+.2f})",
                f"{100 * r['delta_err']:+.2f} %", f"{100 * r['delta_err_true_axis']:+.2f} %",
                f"{100 * r['delta_err_true_proj']:+.2f} %",
                f"{100 * r['beta_err']:+.1f} %", f"{100 * r['beta_err_true_axis']:+.1f} %",
                f"{100 * r['beta_err_true_proj']:+.1f} %",
                f"{r['t_ret']:.0f} s", f"{r['t_rec']:.1f} s", r["n_core"],
            ])
            if pos is None:  # the criterion is on the multi-position chain
                src = ("retrieval" if abs(r["delta_err_true_proj"]) < 0.005
                       and abs(r["delta_err"] - r["delta_err_true_axis"]) < 0.005 else "reconstruction/centre")
                verdict.append(f"- Criterion (|δ err| ≤ 2 %, both positions), diffuser estimate {est}: "
                               f"{'met' if abs(r['delta_err']) <= 0.02 else 'NOT met'} ({100 * r['delta_err']:+.2f} %); "
                               f"the error comes from the {src} (true projections: "
                               f"{100 * r['delta_err_true_proj']:+.2f} %, auto vs true axis: "
                               f"{100 * (r['delta_err'] - r['delta_err_true_axis']):+.2f} %).")
            gains.append([f"{size} px", rows[-1][1], est] + [f"{v:.3f}" for v in r["gain"].values()])
    body = md_table(
        ["scan", "positions", "diffuser estimate", "auto centre px (err)", "δ err", "δ err, true axis", "δ err, true projections",
         "β err", "β err, true axis", "β err, true projections", "PWF (all angles)", "FBP + centre", "core voxels"],
        rows,
    )
    body += ("\n\nPWF phase transfer (Re⟨F(retrieved) F(true)*⟩ / ⟨|F(true)|²⟩ over all projections) by "
             "spatial frequency band, cycles/px:\n\n")
    body += md_table(["scan", "positions", "diffuser estimate", "< 0.01", "0.01–0.04", "0.04–0.1", "0.1–0.2"], gains)
    crow = [center_rows(1024, 400, 13.4)]
    if not quick:
        crow.append(center_rows(2560, 801, 37.3))
    body += ("\n\nAutomatic axis on analytic bead sinograms (16 rows) with an emulated retrieval error, "
             "error in px:\n\n")
    body += md_table(["detector x angles", "auto (metric)", "0/180 pair", "centre of mass", "auto: seconds"], crow)
    notes = (
        "\n\n- Errors: mean over the bead cores (glass voxels eroded by 2) of the reconstruction / truth − 1. "
        "'true axis': the same retrieved projections reconstructed at the simulated axis; 'true projections': "
        "the simulator's exact phase / transmission through the same FBP and background removal (the floor set by "
        "FBP and the voxelised truth).\n"
        "- PWF with its default parameters (scheme 'lbfgs') but for the diffuser estimate: 'zero-phase' is the paper's "
        "(pwf.md §5, the default), 'phase-only' ours (Richardson–Lucy + Gerchberg–Saxton, "
        "`--param diffuser_estimate=phase-only`); one local process; the automatic centre is "
        "`reconstruct_file`'s default (`find_center(method='auto')`).\n"
        "- Issue criterion: |δ err| ≤ 2 % at benchmark size.\n" + "\n".join(verdict) +
        "\n- Why the zero-phase chain's δ is biased (model error of that diffuser field; the bias against a_re, a_im): "
        "benchmarks/bench_pwf_bias.py."
    )
    return section(TITLE, body + notes, "python benchmarks/bench_tomo_e2e.py" + (" --quick" if quick else ""),
                   quick=quick)


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
