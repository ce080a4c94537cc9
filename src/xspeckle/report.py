"""The demo report (``xspeckle demo``, ``make demo``): simulate, retrieve, reconstruct, compare.

:func:`run_demo` runs the whole chain on small simulated scans with known ground truth and
writes a self-contained report folder::

    OUTDIR/
      index.html        every figure with a caption, the numbers table, what was unavailable
      numbers.json      accuracy against the truth and timings (machine-readable)
      figures/*.png     matplotlib (Agg) figures with colour bars and units
      data/*.h5         the simulated scans, retrieval files and volumes (xspeckle formats)

A screenshot of the default report as headless Chromium shows it: ``docs/demo_report.png``
(``tests/test_report_browser.py`` checks in Chromium, when installed, that every figure loads).

Chain: ``pwf-beads`` -> PWF; ``mist-berry`` -> MIST and LCS; ``tomo-beads`` -> PWF for every
angle (:func:`xspeckle.pipeline.retrieve_scan`) -> FBP (:func:`xspeckle.tomo.reconstruct.reconstruct_file`)
-> delta vs truth and the FSC of two half-scans (even / odd angles).  Methods that are not
available in this installation are listed as such; nothing is faked.

Accuracy measures (all dimensionless unless stated):

* ``phase_rel_rms`` — ``||phi - phi_true|| / ||phi_true||`` over the frame without an 8 px border;
* ``deff_rel_error`` — ``|mean(D) - mean(D_true)| / mean(D_true)`` over the scattering core
  (MIST), and ``deff_rel_rms`` the pixel-wise relative RMS there;
* ``delta_rel_rms`` — ``||delta - delta_true|| / ||delta_true||`` over the reconstruction disc;
* ``fsc`` — resolution (m) where the even/odd half-scan FSC of delta falls below 1/4 and 1/7.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xspeckle._version import __version__
from xspeckle.errors import MethodUnavailableError
from xspeckle.io.atomic import atomic_path

__all__ = ["run_demo", "DEMO_STEPS"]

#: number of progress steps of :func:`run_demo`
DEMO_STEPS = 9

_LABELS = {
    "phase": ("phase", "rad"),
    "transmission": ("transmission T", "1"),
    "diffusion": ("dark field D_eff", "m"),
    "visibility": ("dark field (visibility ratio)", "1"),
    "residual": ("residual", "1"),
}


# --------------------------------------------------------------------------- figures
#: figures are saved at this resolution; with the panel sizes below a figure is at most ~1100 px wide,
#: so the report (max. 1400 px wide) shows it at 1:1 and its 9-13 pt text stays legible
_DPI = 100
#: map panels per row (more panels wrap to further rows)
_MAX_COLS = 3


def _figure(ncols: int, nrows: int = 1, w: float = 3.6, h: float = 3.2):
    """A matplotlib (Agg) figure of *ncols* x *nrows* panels of *w* x *h* inches each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _imshow(fig, ax, img, title: str, unit: str, *, cmap: str = "gray", vmin=None, vmax=None) -> None:
    """One map panel: image without ticks, title, colour bar labelled with the unit."""
    im = ax.imshow(np.asarray(img, np.float32), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label(unit, fontsize=10)
    cb.ax.tick_params(labelsize=9)
    cb.ax.yaxis.get_offset_text().set_fontsize(9)  # the "1e-11" of D_eff (m) and δ maps


def _save(fig, path: Path) -> str:
    """Write *fig* as PNG (atomically) and return its path relative to the report folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=_DPI, format="png")
    return f"figures/{path.name}"


def _maps_figure(path: Path, title: str, truth: dict[str, np.ndarray], maps: dict[str, np.ndarray]) -> str:
    """Truth phase, retrieved phase, transmission, dark field, residual and phase error.

    At most :data:`_MAX_COLS` panels per row, so that each map is shown large enough to read
    (a single row of six was ~190 px per map in the report)."""
    panels: list[tuple[np.ndarray, str, str, str]] = []
    if "phase" in truth:
        panels.append((truth["phase"], "true phase", "rad", "gray"))
    for key in ("phase", "transmission", "diffusion", "visibility", "residual"):
        if key in maps:
            name, unit = _LABELS[key]
            panels.append((maps[key], f"retrieved {name}", unit, "magma" if key in ("diffusion", "visibility") else
                           ("viridis" if key == "residual" else "gray")))
    if "phase" in truth and "phase" in maps:
        panels.append((maps["phase"] - truth["phase"], "phase error", "rad", "RdBu_r"))
    ncols = min(_MAX_COLS, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = _figure(ncols, nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (img, t, unit, cmap) in zip(axes, panels):
        if cmap == "RdBu_r":
            m = float(np.nanmax(np.abs(img))) or 1.0
            _imshow(fig, ax, img, t, unit, cmap=cmap, vmin=-m, vmax=m)
        else:
            _imshow(fig, ax, img, t, unit, cmap=cmap)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=13)
    return _save(fig, path)


# --------------------------------------------------------------------------- metrics
def _rel_rms(a, b, mask=None) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    den = float(np.sqrt(np.mean(b * b)))
    return float(np.sqrt(np.mean((a - b) ** 2)) / den) if den > 0 else float("nan")


def _inner(shape, border: int = 8) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[border:-border, border:-border] = True
    return m


def _disc(n: int, frac: float = 0.9) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n] - (n - 1) / 2.0
    return (x * x + y * y) <= (frac * n / 2.0) ** 2


# --------------------------------------------------------------------------- steps

def _demo_params(preset: str, method: str) -> dict[str, Any]:
    """Method parameters a user would choose for each demo scan.

    The berry is a single material (water at 17 keV, δ/β = 7.97e-7 / 6.4e-10 ≈ 1245, the simulator's
    ``MATERIALS``) that shifts speckles by up to ~2 px: Pavlov 2020's phase-object MIST neglects the
    ∇I_R·∇φ term (its Eq. 5) and overestimates the phase ~2x there, while the attenuating-object model
    (Alloo et al. 2022) uses δ/β and recovers phase, transmission and D_eff.
    """
    if preset == "mist-berry" and method == "mist":
        from xspeckle.simulate.presets import MATERIALS

        d, b = MATERIALS["water@17keV"]
        return {"model": "attenuating", "gamma": d / b}
    return {}

class _Demo:
    def __init__(self, outdir: Path, progress, log, seed: int):
        self.out = outdir
        self.data = outdir / "data"
        self.figs = outdir / "figures"
        self.data.mkdir(parents=True, exist_ok=True)
        self.figs.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.log = log or (lambda s: None)
        self.seed = seed
        self.step = 0
        self.numbers: dict[str, Any] = {"xspeckle_version": __version__, "methods": {}, "unavailable": {},
                                        "timings_s": {}}
        self.figures: list[tuple[str, str]] = []  # (relative path, caption)

    def tick(self, msg: str) -> None:
        self.step += 1
        self.log(msg)
        if self.progress is not None:
            self.progress(min(self.step, DEMO_STEPS), DEMO_STEPS)

    def simulate(self, preset: str, **kw) -> Path:
        from xspeckle.simulate import make_preset, write_simulated

        t0 = time.perf_counter()
        sim = make_preset(preset, seed=self.seed, **kw)
        path = write_simulated(sim, self.data / f"{preset}.h5", overwrite=True)
        self.numbers["timings_s"][f"simulate {preset}"] = round(time.perf_counter() - t0, 3)
        return path

    def retrieve(self, method: str, scan: Path, tag: str, **kw) -> Path | None:
        from xspeckle.pipeline import retrieve_scan

        t0 = time.perf_counter()
        try:
            out = retrieve_scan(scan, self.data / f"{tag}_{method}.h5", method=method, overwrite=True, **kw)
        except MethodUnavailableError as exc:
            self.numbers["unavailable"][method] = str(exc)
            self.log(f"{method}: unavailable ({exc})")
            return None
        self.numbers["timings_s"][f"retrieve {method} ({tag})"] = round(time.perf_counter() - t0, 3)
        return out

    # ------------------------------------------------------------------ 2-D methods
    def two_d(self, size: int) -> None:
        from xspeckle.io.results import open_retrieval
        from xspeckle.io.scan import Scan

        for preset, methods in (("pwf-beads", ("pwf",)), ("mist-berry", ("mist", "lcs"))):
            scan = self.simulate(preset, size=size, **({"positions": 4} if preset == "pwf-beads" else {}))
            self.tick(f"simulated {preset} ({size} px)")
            with Scan(scan) as s:
                truth = s.truth()
            t_phase = np.asarray(truth["phase"][0], np.float32)
            for m in methods:
                out = self.retrieve(m, scan, preset, params=_demo_params(preset, m))
                if out is None:
                    continue
                with open_retrieval(out) as r:
                    maps = {k: r.read(k, angles=0) for k in r.names if r.dataset(k).ndim == 3}
                nums: dict[str, Any] = {"scan": preset, "size_px": size,
                                        "seconds": self.numbers["timings_s"][f"retrieve {m} ({preset})"]}
                nums.update(_solver_summary(out))
                if "phase" in maps:
                    nums["phase_rel_rms"] = _rel_rms(maps["phase"], t_phase, _inner(t_phase.shape))
                if "transmission" in maps and "transmission" in truth:
                    nums["transmission_rms"] = float(np.sqrt(np.mean(
                        (maps["transmission"] - truth["transmission"][0])[_inner(t_phase.shape)] ** 2)))
                if "diffusion" in maps and "diffusion" in truth:
                    d_true = np.asarray(truth["diffusion"][0], np.float64)
                    core = d_true > 0.5 * d_true.max()
                    nums["deff_mean_true_m"] = float(d_true[core].mean())
                    nums["deff_mean_m"] = float(np.mean(maps["diffusion"][core]))
                    nums["deff_rel_error"] = abs(nums["deff_mean_m"] - nums["deff_mean_true_m"]) / nums["deff_mean_true_m"]
                    nums["deff_rel_rms"] = _rel_rms(maps["diffusion"], d_true, core)
                self.numbers["methods"][m] = nums
                cap = (f"{m.upper()} on the simulated '{preset}' scan ({size} x {size} px): true phase, retrieved maps "
                       f"and the phase error (retrieved − true).")
                if "phase_rel_rms" in nums:
                    cap += f" Relative RMS phase error {nums['phase_rel_rms']:.3f}."
                if "deff_rel_error" in nums:
                    cap += f" Mean D_eff in the scattering core off by {100 * nums['deff_rel_error']:.1f} %."
                self.figures.append((_maps_figure(self.figs / f"maps_{m}.png", f"{m.upper()} — {preset}",
                                                  {"phase": t_phase}, maps), cap))
                self.log(f"{m}: done")
            self.tick(f"retrieved {preset}")

    # ------------------------------------------------------------------ tomography
    def tomography(self, size: int, angles: int, workers: int) -> None:
        from xspeckle.analysis.fsc import fsc, fsc_summary
        from xspeckle.io.results import open_retrieval, open_volume
        from xspeckle.io.scan import Scan

        scan = self.simulate("tomo-beads", size=size, angles=angles)
        self.tick(f"simulated tomo-beads ({angles} angles, {size} px)")
        out = self.retrieve("pwf", scan, "tomo-beads", workers=workers)
        if out is None:
            self.numbers["tomography"] = {"skipped": "PWF unavailable"}
            self.tick("tomography skipped")
            self.tick("")
            return
        self.tick("retrieved every angle of tomo-beads with PWF")
        try:
            from xspeckle.tomo.reconstruct import reconstruct, reconstruct_file
        except ImportError as exc:  # the tomo module is part of xspeckle; report it rather than hide it
            self.numbers["unavailable"]["tomo"] = str(exc)
            self.tick("tomography unavailable")
            return
        with Scan(scan) as s:
            truth = s.truth()
        # the rotation axis is found automatically, as `xspeckle tomo` does without --center
        # (xspeckle.tomo.center.find_center, "auto"); the simulated axis is reported next to it
        center_true = truth.get("attr:rotation_center_px")
        center_true = None if center_true is None else float(center_true)
        t0 = time.perf_counter()
        vol_path = reconstruct_file(out, self.data / "tomo-beads_volume.h5", overwrite=True)
        self.numbers["timings_s"]["reconstruct (FBP)"] = round(time.perf_counter() - t0, 3)
        d_true = np.asarray(truth["delta"], np.float32)
        with open_volume(vol_path) as v:
            delta = v.delta
            voxel = v.voxel_size_m
            center = float(v.attrs.get("center_px", (size - 1) / 2))
        center_auto = center
        with open_retrieval(out) as r:
            phase = r.read("phase")
            theta = r.theta_deg
            geom = r.geometry
        mask = np.broadcast_to(_disc(delta.shape[-1]), delta.shape)
        tomo_nums: dict[str, Any] = {"scan": "tomo-beads", "size_px": size, "angles": angles, "voxel_size_m": voxel,
                                     "center_px": center, "center_px_true": center_true, "center_px_auto": center_auto}
        tomo_nums.update(_solver_summary(out))
        if d_true.shape == delta.shape:
            tomo_nums["delta_rel_rms"] = _rel_rms(delta, d_true, mask)
            tomo_nums["delta_max_true"] = float(d_true.max())
            tomo_nums["delta_max"] = float(np.percentile(delta[mask], 99.9))
        else:
            tomo_nums["delta_rel_rms"] = None
            tomo_nums["note"] = f"truth volume {d_true.shape} and reconstruction {delta.shape} differ in shape"
        # FSC of two independent half-scans (even / odd angles), reconstructed the same way
        t0 = time.perf_counter()
        halves = [reconstruct(phase[i::2], theta[i::2], geom, center_px=center)["delta"] for i in (0, 1)]
        f = fsc(halves[0], halves[1], voxel_size_m=voxel)
        f.update(fsc_summary(f, voxel))
        self.numbers["timings_s"]["FSC (two half-scan FBPs)"] = round(time.perf_counter() - t0, 3)
        tomo_nums["fsc_resolution_m"] = f["resolution_m"]
        tomo_nums["fsc_resolution_m_1_7"] = f["resolution_m_1_7"]
        tomo_nums["nyquist_resolution_m"] = 2 * voxel
        self.numbers["tomography"] = tomo_nums
        self.tick("reconstructed the tomogram and computed the FSC")

        # sinogram
        row = phase.shape[1] // 2
        fig = _figure(1, w=7.5, h=4.8)
        ax = fig.subplots()
        im = ax.imshow(phase[:, row, :], cmap="gray", aspect="auto", interpolation="nearest",
                       extent=(0, phase.shape[2], float(theta[-1]), float(theta[0])))
        ax.set_xlabel("detector column (px)")
        ax.set_ylabel("rotation angle (degree)")
        ax.set_title(f"PWF phase sinogram, detector row {row}", fontsize=12)
        fig.colorbar(im, ax=ax).set_label("rad")
        self.figures.append((_save(fig, self.figs / "sinogram.png"),
                             f"Phase sinogram of tomo-beads (row {row}) retrieved by PWF at each of {angles} angles "
                             f"over [0°, 180°)."))
        # slices vs truth
        z = delta.shape[0] // 2
        y = delta.shape[1] // 2
        fig = _figure(3, 2, w=3.6, h=3.2)
        axes = fig.subplots(2, 3)
        vmax = float(np.percentile(d_true, 99.9)) if d_true.size else None
        for j, (name, vol) in enumerate((("truth", d_true), ("reconstruction", delta))):
            if vol.ndim != 3:
                continue
            zz, yy = min(z, vol.shape[0] - 1), min(y, vol.shape[1] - 1)
            _imshow(fig, axes[j, 0], vol[zz], f"{name}: axial slice z={zz}", "δ (1)", vmin=0, vmax=vmax)
            _imshow(fig, axes[j, 1], vol[:, yy, :], f"{name}: slice y={yy}", "δ (1)", vmin=0, vmax=vmax)
            if name == "reconstruction" and d_true.shape == delta.shape:
                err = delta[zz] - d_true[zz]
                m = float(np.abs(err).max()) or 1.0
                _imshow(fig, axes[j, 2], err, "error, axial slice", "δ (1)", cmap="RdBu_r", vmin=-m, vmax=m)
            else:
                _imshow(fig, axes[j, 2], vol[:, :, vol.shape[2] // 2], f"{name}: slice x={vol.shape[2] // 2}", "δ (1)",
                        vmin=0, vmax=vmax)
        cap = (f"Tomogram of δ (FBP of the PWF phase, rotation axis found automatically at {center:.2f} px"
               + (f"; simulated {center_true:.2f} px" if center_true is not None else "")
               + ") against the simulated truth.")
        if tomo_nums.get("delta_rel_rms") is not None:
            cap += f" Relative RMS δ error inside the reconstruction disc {tomo_nums['delta_rel_rms']:.3f}."
        self.figures.append((_save(fig, self.figs / "tomogram_slices.png"), cap))
        # FSC curve
        fig = _figure(1, w=7.5, h=4.8)
        ax = fig.subplots()
        fr = np.asarray(f["frequency_per_m"]) * 1e-6
        ax.plot(fr[1:], np.asarray(f["fsc"])[1:], "o-", ms=3, label="FSC, even vs odd angles (δ)")
        ax.axhline(0.25, color="C1", ls="--", label="1/4")
        ax.axhline(1 / 7, color="C2", ls=":", label="1/7")
        ax.set_xlabel("spatial frequency (1/µm)")
        ax.set_ylabel("FSC")
        ax.set_ylim(min(-0.2, float(np.min(np.asarray(f["fsc"])[1:])) - 0.05), 1.05)
        ax.legend(fontsize=10)
        ax.set_title("Fourier shell correlation of two half-scan tomograms", fontsize=12)
        res = f["resolution_m"]
        cap = "FSC between the δ tomograms of the even and of the odd angles, with the 1/4 and 1/7 thresholds."
        if res is not None:
            cap += f" 1/4 crossing: {res * 1e6:.2f} µm."
        if f["resolution_m_1_7"] is not None:
            cap += f" 1/7 crossing: {f['resolution_m_1_7'] * 1e6:.2f} µm."
        self.figures.append((_save(fig, self.figs / "fsc.png"), cap))
        self.tick("figures")

    # ------------------------------------------------------------------ around the retrieval (issue 18)
    def around_retrieval(self) -> None:
        """Ring removal, drift estimate and TIFF export on the demo's tomography (issue 18's steps).

        Rings: 2 % RMS gain errors per detector column are injected into the scan's true phase (the
        ring-free reference is its reconstruction), then removed by ``"gain"`` (with the angles, over all
        rows) and by algotom's ``"sorting"``; ring RMS = RMS of the δ error against the reference in the
        reconstruction disc. Drift: :func:`xspeckle.preprocess.estimate_drift` in the
        free-space wings of a few angles (the demo scan is simulated without drift, so the shifts should be
        ~0). Export: the δ volume as one TIFF per slice (:func:`xspeckle.io.export.export_file`).
        """
        from xspeckle.errors import InputError

        scan = self.data / "tomo-beads.h5"
        out = self.data / "tomo-beads_pwf.h5"
        vol_path = self.data / "tomo-beads_volume.h5"
        self.sections: list[str] = []
        if not (scan.is_file() and out.is_file() and vol_path.is_file()):
            self.numbers["around_retrieval"] = {"skipped": "no tomography in this run"}
            self.tick("ring removal, drift and export skipped (no tomography)")
            return
        nums: dict[str, Any] = {}
        for name, step in (("rings", self._demo_rings), ("drift", self._demo_drift), ("export", self._demo_export)):
            t0 = time.perf_counter()
            try:
                nums[name] = step(scan, out, vol_path)
            except (InputError, ImportError) as exc:  # e.g. algotom or tifffile missing: say so
                nums[name] = {"unavailable": str(exc)}
                self.numbers["unavailable"][name] = str(exc)
            self.numbers["timings_s"][f"{name} (tomo-beads)"] = round(time.perf_counter() - t0, 3)
        self.numbers["around_retrieval"] = nums
        self.tick("ring removal, drift estimate and TIFF export")

    def _demo_rings(self, scan: Path, out: Path, vol_path: Path) -> dict[str, Any]:
        from scipy import ndimage as ndi

        from xspeckle.errors import InputError
        from xspeckle.io.results import open_retrieval, open_volume
        from xspeckle.io.scan import Scan
        from xspeckle.tomo.convert import delta_from_phase
        from xspeckle.tomo.rings import remove_rings

        with open_retrieval(out) as r:
            theta, geo, w_px = r.theta_deg, r.geometry, r.frame_shape[-1]
        with open_volume(vol_path) as v:
            center = float(v.attrs.get("center_px", (w_px - 1) / 2))
        with Scan(scan) as s:
            truth = s.truth()
        if truth.get("attr:rotation_center_px") is not None:  # the simulated axis, for the simulated phase
            center = float(truth["attr:rotation_center_px"])
        # the simulated projections' phase: a ring-free reference. (The demo's PWF phase, with ~20 % error and
        # per-angle offsets at this size, would hide a 2 % gain among its own errors.)
        sino = np.ascontiguousarray(np.moveaxis(np.asarray(truth["phase"], np.float32), 1, 0))  # (rows, A, W)
        d_true = np.asarray(truth["delta"], np.float32)
        k, p = geo.wavenumber_per_m, geo.pixel_size_m / geo.magnification

        def recon(x):
            return delta_from_phase(x, theta, wavenumber_per_m=k, voxel_size_m=p, center=center)

        n = sino.shape[-1]
        gain = np.random.default_rng(self.seed + 1).normal(0.0, 0.02, n).astype(np.float32)
        bad = sino * (1 + gain)  # one gain per detector column, the same in every row
        ref = recon(sino)
        disc = np.broadcast_to(_disc(n), ref.shape)
        glass = d_true > 0.5 * d_true.max() if d_true.shape == ref.shape else np.zeros(ref.shape, bool)
        lab, nlab = ndi.label(ndi.binary_erosion(glass, iterations=1))
        beads = [lab == i for i in range(1, nlab + 1) if (lab == i).sum() >= 8]
        rec_bad = recon(bad)
        before = float(np.sqrt(np.mean((rec_bad - ref)[disc] ** 2)))
        res: dict[str, Any] = {"injected_gain_rms": 0.02, "angles": int(len(theta)), "rows": int(sino.shape[0])}
        recs = {}
        for label, kw in (("gain", {"theta_deg": theta}), ("sorting", {})):
            t0 = time.perf_counter()
            try:
                fixed = remove_rings(bad, label, **kw)
            except InputError as exc:  # e.g. algotom missing for 'sorting'
                res[label] = {"unavailable": str(exc)}
                continue
            rec = recon(fixed)
            after = float(np.sqrt(np.mean((rec - ref)[disc] ** 2)))
            bead = max((abs(float(rec[b].mean()) / float(ref[b].mean()) - 1) for b in beads), default=None)
            res[label] = {"ring_rms_before": before, "ring_rms_after": after,
                          "ring_rms_reduction": before / after if after > 0 else float("inf"),
                          "max_bead_delta_change": bead, "seconds": round(time.perf_counter() - t0, 3)}
            recs[label] = rec
        z = int(np.argmax([b.sum() for b in glass])) if glass.any() else ref.shape[0] // 2
        panels = [(rec_bad, "2 % column gains injected")] + [
            (recs[m], f"--rings {m}: ring RMS reduction {res[m]['ring_rms_reduction']:.1f}x") for m in ("sorting", "gain")
            if m in recs] + [(ref, "without gain errors (reference)")]
        vmin, vmax = np.percentile(ref[z][_disc(n)], [0.5, 99.9])
        fig = _figure(2, 2, w=3.8, h=3.3)
        axes = np.atleast_1d(fig.subplots(2, 2)).ravel()
        for ax, (img, title) in zip(axes, panels):
            _imshow(fig, ax, img[z], title, "δ (1)", vmin=float(vmin), vmax=float(vmax))
        for ax in axes[len(panels):]:
            ax.set_axis_off()
        fig.suptitle(f"Ring removal on the tomo-beads δ volume, axial slice z={z}", fontsize=12)
        cap = (f"Ring removal (xspeckle tomo --rings): 2 % RMS gain errors per detector column injected into the "
               f"simulated phase of all {sino.shape[0]} rows and {len(theta)} angles (a noise-free retrieval), "
               f"δ slice z={z}.")
        for m in ("gain", "sorting"):
            if m in recs:
                r_ = res[m]
                cap += (f" '{m}' takes the ring RMS (δ error vs the reconstruction without gain errors, in "
                        f"the disc) from {r_['ring_rms_before']:.3g} to {r_['ring_rms_after']:.3g} "
                        f"({r_['ring_rms_reduction']:.1f}x)")
                if r_["max_bead_delta_change"] is not None:
                    cap += f", glass-bead δ changed by at most {100 * r_['max_bead_delta_change']:.2f} %"
                cap += "."
        self.figures.append((_save(fig, self.figs / "rings.png"), cap))
        return res

    def _demo_drift(self, scan: Path, out: Path, vol_path: Path) -> dict[str, Any]:
        from xspeckle.io.scan import Scan
        from xspeckle.preprocess import estimate_drift

        rows = []
        with Scan(scan) as s:
            ref = s.normalised_reference()
            a = len(s.theta_deg)
            for i in sorted({0, a // 3, (2 * a) // 3, a - 1}):
                sh = estimate_drift(ref, s.normalised_sample(i), region="wings")
                for j, (dy, dx) in enumerate(sh):
                    rows.append({"angle_deg": float(s.theta_deg[i]), "position": j, "dy_px": float(dy),
                                 "dx_px": float(dx)})
        body = "".join(f"<tr><td>{r['angle_deg']:.1f}</td><td>{r['position']}</td><td>{r['dy_px']:+.3f}</td>"
                       f"<td>{r['dx_px']:+.3f}</td></tr>\n" for r in rows)
        worst = max((max(abs(r["dy_px"]), abs(r["dx_px"])) for r in rows), default=float("nan"))
        self.sections.append(
            "<h3>Diffuser drift (xspeckle retrieve --drift wings)</h3>\n<p>Shift of the speckle between each "
            "reference and sample frame, measured in the free-space side wings (cross-correlation, then "
            "Gauss-Newton). The demo scan is simulated without drift, so these are the estimator's own errors "
            f"(largest {worst:.3f} px).</p>\n<table>\n<tr><th>angle (degree)</th><th>diffuser position</th>"
            f"<th>dy (px)</th><th>dx (px)</th></tr>\n{body}</table>\n")
        return {"shifts": rows, "max_abs_px": worst}

    def _demo_export(self, scan: Path, out: Path, vol_path: Path) -> dict[str, Any]:
        from xspeckle.io.export import export_file

        folder = self.out / "export_delta"
        info = export_file(vol_path, folder, dataset="delta", overwrite=True)
        files = list(info["files"])
        shown = files if len(files) <= 4 else files[:2] + ["…"] + files[-2:]
        self.sections.append(
            "<h3>Export (xspeckle export)</h3>\n<p>The δ volume written as one float32 TIFF per slice for "
            "ImageJ/Fiji, Avizo, Dragonfly and napari, with the voxel size in the TIFF resolution tags and a JSON "
            f"of units and scaling: {len(files)} files in <code>export_delta/</code> "
            f"({html.escape(', '.join(shown))}; <code>delta.json</code>), voxel "
            f"{info['pixel_size_m'] * 1e6:.3g} µm, shape {info['shape']}.</p>\n")
        return {"folder": "export_delta", "n_files": len(files), "files": files, "pixel_size_m": info["pixel_size_m"],
                "shape": info["shape"]}

    # ------------------------------------------------------------------ output
    def write(self) -> Path:
        with atomic_path(self.out / "numbers.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.numbers, indent=2, default=float))
        rows = []
        for m, n in self.numbers["methods"].items():
            rows.append((m.upper(), n.get("scan", ""), _fmt(n.get("phase_rel_rms")), _fmt(n.get("deff_rel_error")),
                         "", "", n.get("solver", "—"), _fmt(n.get("seconds"))))
        t = self.numbers.get("tomography", {})
        if "delta_rel_rms" in t:
            rows.append(("PWF + FBP", "tomo-beads", "", "", _fmt(t.get("delta_rel_rms")),
                         _fmt_um(t.get("fsc_resolution_m")) + " / " + _fmt_um(t.get("fsc_resolution_m_1_7")),
                         t.get("solver", "—"), ""))
        head = ("method", "scan", "relative RMS phase error", "D_eff relative error", "relative RMS δ error",
                "FSC resolution 1/4 / 1/7 (µm)", "solver: stop reasons, iterations", "time (s)")
        warn_items = [(m, w) for m, n in list(self.numbers["methods"].items()) + [("PWF + FBP", t)]
                      for w in n.get("warnings", [])]
        table = "<table>\n<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>\n"
        for r in rows:
            table += "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>\n"
        table += "</table>\n"
        timing = "<table>\n<tr><th>step</th><th>seconds</th></tr>\n" + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.2f}</td></tr>\n" for k, v in self.numbers["timings_s"].items()
        ) + "</table>\n"
        unav = ""
        if warn_items:
            unav += "<h2>Warnings of the runs</h2>\n<ul>\n" + "".join(
                f"<li><b>{html.escape(m)}</b>: {html.escape(w)}</li>\n" for m, w in warn_items) + "</ul>\n"
        if self.numbers["unavailable"]:
            unav += "<h2>Not available in this installation</h2>\n<ul>\n" + "".join(
                f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>\n" for k, v in self.numbers["unavailable"].items()
            ) + "</ul>\n"
        figs = "".join(
            f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}'
            f"</figcaption></figure>\n" for src, cap in self.figures
        )
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>xspeckle demo report</title>
<style>
body {{ font-family: sans-serif; max-width: 1400px; margin: 1em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em 0; }}
th, td {{ border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ display: block; max-width: 100%; height: auto; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.9em; color: #444; margin-top: 0.3em; }}
</style></head><body>
<h1>xspeckle demo report</h1>
<p>xspeckle {html.escape(__version__)} — simulated scans with known ground truth, retrieved with every available
method, reconstructed by FBP and compared with the truth. Generated {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.
Machine-readable numbers: <a href="numbers.json">numbers.json</a>.</p>
<h2>Accuracy against the simulated truth</h2>
{table}<h2>Timings</h2>
{timing}{unav}{"<h2>Around the retrieval</h2>" + chr(10) + "".join(getattr(self, "sections", [])) if getattr(self, "sections", None) else ""}<h2>Figures</h2>
{figs}</body></html>
"""
        with atomic_path(self.out / "index.html", overwrite=True) as tmp:
            tmp.write_text(page, encoding="utf-8")
        return self.out / "index.html"


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _fmt_um(v) -> str:
    return "n/a" if v is None else f"{v * 1e6:.2f}"


def run_demo(outdir: str | os.PathLike = "xspeckle-demo", progress: Callable[[int, int], None] | None = None, *,
             log: Callable[[str], None] | None = None, size: int = 128, tomo_size: int = 96, tomo_angles: int = 32,
             seed: int = 0, workers: int = 1) -> Path:
    """Run the demo chain and write the report folder (what ``xspeckle demo`` does).

    Parameters
    ----------
    outdir : path-like
        Report folder (created; files of an earlier demo are replaced).
    progress : callable(done, total), optional
        Called after each of :data:`DEMO_STEPS` steps.
    log : callable(str), optional
        One-line messages (which step, which method was unavailable).
    size : int
        Detector size (px) of the 2-D scans (pwf-beads, mist-berry).
    tomo_size, tomo_angles : int
        Detector size (px) and number of angles of the tomography scan (tomo-beads).
    seed : int
        Simulation seed.
    workers : int
        Local processes for the tomography retrieval.

    Returns
    -------
    Path of ``OUTDIR/index.html``; ``OUTDIR/numbers.json`` holds the numbers (relative RMS
    phase error per method, D_eff error, δ error, FSC resolutions in m, timings in s).
    """
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        from xspeckle.errors import OutputError

        raise OutputError(f"{out}: exists and is not a folder; choose another report folder")
    t0 = time.perf_counter()
    demo = _Demo(out, progress, log, seed)
    demo.numbers["settings"] = {"size_px": size, "tomo_size_px": tomo_size, "tomo_angles": tomo_angles, "seed": seed}
    demo.two_d(size)
    demo.tomography(tomo_size, tomo_angles, workers)
    demo.around_retrieval()
    demo.numbers["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    return demo.write()


def _solver_summary(path) -> dict[str, Any]:
    """Stop reasons and iterations of an iterative method's retrieval file, and the run's warnings.

    Returns ``{}`` for direct methods; else ``{"solver": "converged 4/4, 141-160 iterations",
    "stop_reason": {...}, "iterations": [...], "warnings": [...]}``.
    """
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        warns = json.loads(f.attrs.get("warnings", "[]"))
        if warns:
            out["warnings"] = list(warns)
        if "retrieval/stop_reason" not in f:
            return out
        reasons = [x.decode() for x in f["retrieval/stop_reason"][()]]
        iters = [int(i) for i in f["retrieval/iterations"][()]] if "retrieval/iterations" in f else []
    counts: dict[str, int] = {}
    for r in reasons:
        counts[r] = counts.get(r, 0) + 1
    text = ", ".join(f"{k} {v}/{len(reasons)}" for k, v in sorted(counts.items()))
    if iters:
        text += f"; {min(iters)}–{max(iters)} iterations" if min(iters) != max(iters) else f"; {iters[0]} iterations"
    out.update(solver=text, stop_reason=counts, iterations=iters)
    return out
