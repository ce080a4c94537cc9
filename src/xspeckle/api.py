"""Python API for notebooks: the command line's jobs as functions (arrays in, arrays out).

Every function is a thin wrapper over the module that does the work (imported lazily, so
``import xspeckle.api`` is cheap):

=====================  ===============================================  =====================
function               does                                             CLI twin
=====================  ===============================================  =====================
:func:`simulate`       a preset scan with ground truth (in memory)      ``xspeckle simulate``
:func:`simulate_file`  the same, written to a scan file                 ``xspeckle simulate``
:func:`retrieve`       one method on arrays (one or many angles)        —
:func:`retrieve_file`  a whole scan file, streaming and resumable       ``xspeckle retrieve``
:func:`calibrate`      coherence lengths from reference speckle         ``xspeckle calibrate``
:func:`tomo`           delta/beta volumes from phase/transmission maps  —
:func:`tomo_file`      the same from a retrieval file                   ``xspeckle tomo``
:func:`fsc`            Fourier shell correlation of two volumes         ``xspeckle fsc``
:func:`demo`           the demo report                                  ``xspeckle demo``
=====================  ===============================================  =====================

Units are SI and conventions those of ``interfaces.md`` (phase in rad, negative in
matter; transmission 1 in air; D_eff in m; delta and beta positive in matter).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from xspeckle.errors import InputError
from xspeckle.geometry import Geometry

__all__ = ["simulate", "simulate_file", "retrieve", "retrieve_file", "calibrate", "tomo", "tomo_file", "fsc", "demo",
           "methods"]


def methods() -> list[str]:
    """Names of the retrieval methods available in this installation (``--method`` values)."""
    from xspeckle.retrieve import available_methods

    return available_methods()


# --------------------------------------------------------------------------- simulate
def simulate(preset: str, *, seed: int = 0, size: int | None = None, angles: int | None = None,
             positions: int | None = None, noise: bool = True, photons: float | None = None):
    """Simulate a preset scan with ground truth (:func:`xspeckle.simulate.make_preset`).

    Parameters
    ----------
    preset : str
        ``"pwf-beads"``, ``"mist-berry"``, ``"mist-fibres"``, ``"tomo-beads"``, ``"tracking-shift"``.
    seed : int
        Random seed (deterministic output).
    size : int, optional
        Detector size in px (square).
    angles, positions : int, optional
        Rotation angles A and diffuser positions P.
    noise : bool
        Poisson and read noise.
    photons : float, optional
        Mean photons per pixel of the open beam.

    Returns
    -------
    SimulatedScan
        ``.data`` (P, A, H, W) counts, ``.reference`` (P, H, W), ``.flat``, ``.dark``,
        ``.theta_deg`` (A,) degrees, ``.geometry``, ``.truth`` (dict of arrays),
        ``.normalised()`` -> (reference, data) normalised float32.
    """
    from xspeckle.simulate import make_preset

    return make_preset(preset, seed=seed, size=size, angles=angles, positions=positions, noise=noise, photons=photons)


def simulate_file(preset: str, out_path: str | os.PathLike, *, seed: int = 0, size: int | None = None,
                  angles: int | None = None, positions: int | None = None, overwrite: bool = False) -> Path:
    """Simulate a preset and write it as a scan file (``xspeckle simulate PRESET OUT.h5``)."""
    from xspeckle.simulate import simulate_preset

    return Path(simulate_preset(preset, out_path, seed=seed, size=size, angles=angles, positions=positions,
                                overwrite=overwrite))


# --------------------------------------------------------------------------- retrieve
def retrieve(reference, sample, geometry: Geometry, *, method: str = "mist", flat=None, dark=None,
             progress: Callable[[int, int], None] | None = None, **params: Any) -> dict[str, np.ndarray]:
    """Run one retrieval method on arrays.

    Parameters
    ----------
    reference : array (P, H, W) or (H, W)
        Reference speckle frames (diffuser in, sample out), one per diffuser position.
        Normalised (≈ 1) unless *flat*/*dark* are given, in which case raw counts.
    sample : array (P, H, W), (H, W) or (P, A, H, W)
        Sample frames at the same diffuser positions; with an angle axis every angle is
        retrieved with the same retriever (reference work done once).
    geometry : Geometry
        Set-up (SI units).
    method : str
        ``"pwf"``, ``"mist"``, ``"lcs"``, ``"umpa"``, ... (see :func:`methods`).
    flat, dark : array (H, W) or (N, H, W), optional
        Flat field and dark frames: the frames are then normalised
        ``(I - dark) / (flat - dark)`` first (:func:`xspeckle.preprocess.normalise`).
    progress : callable(done, total), optional
        Called after each angle.
    **params
        Method parameters (keyword arguments of the method's Retriever).

    Returns
    -------
    dict name -> ndarray float32
        ``phase`` (rad), ``transmission``, ``diffusion`` (m), ``visibility``,
        ``diffusion_tensor`` (3, ...), ``displacement`` (2, ..., px), ``residual``: shapes
        ``(H, W)`` for one angle, ``(A, H, W)`` (``(C, A, H, W)``) with an angle axis, as in
        the retrieval file.  Iterative methods add ``iterations`` (int) and ``stop_reason``
        (str; arrays ``(A,)`` with an angle axis); a method whose model does not fit the data
        adds ``warnings`` (list of one-line messages naming the fix).  ``"parameters"`` is not included; see ``retriever.parameters``
        via :func:`xspeckle.retrieve.make_retriever` when needed.
    """
    from xspeckle import backend as B
    from xspeckle.preprocess import normalise
    from xspeckle.retrieve import make_retriever

    ref = np.asarray(reference)
    smp = np.asarray(sample)
    if ref.ndim == 2:
        ref = ref[None]
    if ref.ndim != 3:
        raise InputError(f"reference must be (P, H, W) or (H, W), got shape {ref.shape}")
    if smp.ndim == 2:
        smp = smp[None]
    many = smp.ndim == 4
    if smp.ndim not in (3, 4):
        raise InputError(f"sample must be (P, H, W), (H, W) or (P, A, H, W), got shape {smp.shape}")
    if smp.shape[0] != ref.shape[0] or smp.shape[-2:] != ref.shape[-2:]:
        raise InputError(
            f"sample {smp.shape} and reference {ref.shape} disagree: same positions P and frame size (H, W) needed"
        )

    def _mean(x):
        if x is None:
            return None
        x = np.asarray(x, dtype=np.float32)
        return x.mean(axis=0, dtype=np.float64).astype(np.float32) if x.ndim == 3 else x

    fl, dk = _mean(flat), _mean(dark)
    norm = (lambda x: normalise(x, fl, dk)) if (fl is not None or dk is not None) else (lambda x: np.asarray(x, np.float32))
    r = make_retriever(method, norm(ref), geometry, **params)
    diag_keys = ("iterations", "stop_reason", "warnings")   # per-angle diagnostics, not maps

    def _diag(res, into):
        if "iterations" in res:
            into.setdefault("iterations", []).append(int(res["iterations"]))
        if "stop_reason" in res:
            into.setdefault("stop_reason", []).append(str(res["stop_reason"]))
        if res.get("warnings"):
            into.setdefault("warnings", []).extend(w for w in res["warnings"] if w not in into.get("warnings", []))

    if not many:
        res = r(norm(smp))
        out1 = {k: np.asarray(B.asnumpy(v), dtype=np.float32) for k, v in res.items() if k not in diag_keys}
        d1: dict = {}
        _diag(res, d1)
        if "iterations" in d1:
            out1["iterations"] = np.int32(d1["iterations"][0])
        if "stop_reason" in d1:
            out1["stop_reason"] = d1["stop_reason"][0]
        if "warnings" in d1:
            out1["warnings"] = d1["warnings"]
        return out1
    n = smp.shape[1]
    out: dict[str, np.ndarray] = {}
    dd: dict = {}
    for a in range(n):
        res = r(norm(smp[:, a]))
        _diag(res, dd)
        res = {k: v for k, v in res.items() if k not in diag_keys}
        for k, v in res.items():
            v = np.asarray(B.asnumpy(v), dtype=np.float32)
            if k not in out:
                shape = (v.shape[0], n) + v.shape[1:] if v.ndim == 3 else (n,) + v.shape
                out[k] = np.empty(shape, np.float32)
            if v.ndim == 3:
                out[k][:, a] = v
            else:
                out[k][a] = v
        if progress is not None:
            progress(a + 1, n)
    if "iterations" in dd:
        out["iterations"] = np.asarray(dd["iterations"], np.int32)
    if "stop_reason" in dd:
        out["stop_reason"] = np.asarray(dd["stop_reason"])
    if "warnings" in dd:
        out["warnings"] = dd["warnings"]
    return out


def retrieve_file(scan_path: str | os.PathLike, out_path: str | os.PathLike, *, method: Any,
                  positions: Sequence[int] | str | None = None, device: str = "cpu", workers: int = 1,
                  scheduler: Any = None, params: Mapping[str, Any] | None = None, overwrite: bool = False,
                  progress: Callable[[int, int], None] | None = None, memory_limit_bytes: int | None = None,
                  batch: int | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Retrieve a whole scan file (``xspeckle retrieve``): see :func:`xspeckle.pipeline.retrieve_scan`.

    Streams angle by angle with bounded memory, resumes an interrupted run, runs on
    ``workers`` local processes, a Dask ``scheduler`` or ``device="cuda"``.

    Returns
    -------
    Path of the retrieval file (``/retrieval/<map>`` ``(A, H, W)``).
    """
    from xspeckle.pipeline import retrieve_scan

    return retrieve_scan(scan_path, out_path, method=method, positions=positions, device=device, workers=workers,
                         scheduler=scheduler, params=params, overwrite=overwrite, progress=progress,
                         memory_limit_bytes=memory_limit_bytes, batch=batch, log=log)


# --------------------------------------------------------------------------- calibrate
def calibrate(reference, pixel_size_m: float, **kw: Any) -> dict[str, Any]:
    """Coherence lengths from reference speckle (:func:`xspeckle.retrieve.coherence.calibrate`).

    Parameters
    ----------
    reference : array (P, H, W) or (H, W)
        Normalised reference speckle.
    pixel_size_m : float
        Detector pixel size in m.
    **kw
        ``model`` (``"power-gaussian"`` or ``"paper"``), ``exponent``.

    Returns
    -------
    dict with ``coherence_length_x_m`` and ``coherence_length_y_m`` (m) and fit diagnostics.
    """
    from xspeckle.retrieve.coherence import calibrate as _cal

    return _cal(reference, pixel_size_m, **kw).to_dict()


# --------------------------------------------------------------------------- tomography
def tomo(phase=None, theta_deg=None, geometry: Geometry | None = None, *, transmission=None,
         center_px: float | None = None, filter: str = "ramlak", background: str | None = "quadratic",
         method: str = "gridrec") -> dict[str, Any]:
    """Reconstruct delta (from phase) and beta (from transmission) volumes by FBP: :func:`xspeckle.tomo.reconstruct`.

    Parameters
    ----------
    phase : array (A, H, W), optional
        Phase projections in rad (the retrieval file's ``phase``; negative in matter).  A
        single sinogram ``(A, W)`` gives a one-slice volume.
    theta_deg : array (A,)
        Rotation angles in degrees.
    geometry : Geometry
        For k and the voxel size (pixel size / magnification).
    transmission : array (A, H, W), optional
        Intensity transmission (1 in air).
    center_px : float, optional
        Rotation axis as a detector column; default found as ``xspeckle tomo`` does
        (:func:`xspeckle.tomo.reconstruct`: 16 rows over the middle 80 % of the detector,
        :func:`xspeckle.tomo.center.find_center`), else ``(W - 1) / 2``.
    filter, method : str
        FBP filter and algorithm (:func:`xspeckle.tomo.fbp.fbp`).
    background : {"quadratic", None}
        Subtract a quadratic background fitted per slice (as ``xspeckle tomo``).

    Returns
    -------
    dict with ``delta`` and/or ``beta`` ``(Z, N, N)`` float32 (dimensionless, positive in
    matter; Z = detector rows), ``voxel_size_m``, ``center_px`` and how the centre was found
    (``center_source``, ``center_refinement``).
    """
    from xspeckle.tomo import reconstruct

    return reconstruct(phase, theta_deg, geometry, transmission=transmission, center_px=center_px, filter=filter,
                       background=background, method=method)


def tomo_file(retrieval_path: str | os.PathLike, out_path: str | os.PathLike, *, center_px: float | None = None,
              overwrite: bool = False, progress: Callable[[int, int], None] | None = None, **kw: Any) -> Path:
    """Volume file from a retrieval file (``xspeckle tomo``): :func:`xspeckle.tomo.reconstruct.reconstruct_file`."""
    from xspeckle.tomo.reconstruct import reconstruct_file

    return Path(reconstruct_file(retrieval_path, out_path, center_px=center_px, overwrite=overwrite,
                                 progress=progress, **kw))


# --------------------------------------------------------------------------- analysis
def fsc(vol_a, vol_b, voxel_size_m: float = 1.0, *, crop=None) -> dict[str, Any]:
    """Fourier shell correlation of two volumes (or ring correlation of two images).

    Parameters
    ----------
    vol_a, vol_b : array (Z, Y, X) or (Y, X)
        Two reconstructions of the same object with independent noise.
    voxel_size_m : float
        Voxel size in m.
    crop : int or tuple, optional
        Central box to use.

    Returns
    -------
    dict with ``resolution_m`` (1/4 criterion), ``resolution_m_1_7`` (1/7), ``None`` where
    the curve never crosses; ``frequency_per_m`` and ``fsc`` arrays (shells 0..Nyquist); the
    crossings and ``nyquist_resolution_m`` of :func:`xspeckle.analysis.fsc.fsc_summary`.
    """
    from xspeckle.analysis.fsc import fsc as _fsc
    from xspeckle.analysis.fsc import fsc_summary

    c = _fsc(np.asarray(vol_a), np.asarray(vol_b), voxel_size_m=voxel_size_m, crop=crop)
    out: dict[str, Any] = {"frequency_per_m": c["frequency_per_m"], "fsc": c["fsc"], "voxel_size_m": float(voxel_size_m)}
    out.update(fsc_summary(c, voxel_size_m))
    return out


def demo(outdir: str | os.PathLike = "xspeckle-demo", progress: Callable[[int, int], None] | None = None,
         **kw: Any) -> Path:
    """Build the demo report (``xspeckle demo``): see :func:`xspeckle.report.run_demo`.

    Returns
    -------
    Path of ``OUTDIR/index.html``.
    """
    from xspeckle.report import run_demo

    return run_demo(outdir, progress=progress, **kw)
