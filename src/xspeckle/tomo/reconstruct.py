"""Reconstruction of delta / beta / dark-field volumes: :func:`reconstruct` (arrays or file-backed maps) and
:func:`reconstruct_file` (a retrieval file (``interfaces.md``) in, a volume file out, streamed by slabs of rows).

Both run the same code — :func:`reconstruct` — so the rotation-axis rule, the ring filter, the 360-degree
stitching, the offset/tilt removal and the background fit are the same for notebooks (``xspeckle.api.tomo``)
and the command line (``xspeckle tomo``).

``/retrieval/phase`` -> ``/volume/delta``, ``/retrieval/transmission`` -> ``/volume/beta`` and
``/retrieval/diffusion`` (MIST's D_eff) -> ``/volume/diffusion``, each ``(Z, Y, X)`` float32 with Z the
detector rows. A slab of ``slab_rows`` detector rows (all angles) is read, reconstructed and written
before the next, so a 2160 x 801 x 2560 retrieval never sits in memory (a 16-row slab is 130 MB of
sinograms plus 420 MB of slices per quantity). The output is written under a temporary name and renamed
(:func:`xspeckle.io.atomic.atomic_path`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from xspeckle._version import __version__
from xspeckle.errors import InputError, ParameterError, ScanFormatError
from xspeckle.io.atomic import atomic_path, check_output_path
from xspeckle.io.results import open_retrieval
from xspeckle.tomo.center import find_center, opposite_pair
from xspeckle.tomo.convert import (
    beta_from_transmission,
    delta_from_phase,
    diffusion_from_deff,
    remove_background_quadratic,
)
from xspeckle.tomo.fbp import FILTERS
from xspeckle.tomo.rings import RING_METHODS, remove_rings
from xspeckle.tomo.sinogram import DC_METHODS, convert_360_to_180, estimate_center_360, is_full_turn, remove_offset_tilt

__all__ = ["reconstruct", "reconstruct_file", "VOLUME_UNITS"]

#: units attribute of each volume dataset
VOLUME_UNITS = {"delta": "1", "beta": "1", "diffusion": "1"}


def _check_options(filter, background, rings, dc, slab_rows) -> None:
    if filter not in FILTERS:
        raise ParameterError(f"tomo: unknown filter {filter!r}; use one of {', '.join(FILTERS)}")
    if background not in ("quadratic", None):
        raise ParameterError(f"tomo: background must be 'quadratic' or None, got {background!r}")
    if rings is not None and rings not in RING_METHODS:
        raise ParameterError(f"tomo: unknown ring filter {rings!r}; use one of {', '.join(RING_METHODS)}")
    if dc is not None and dc not in DC_METHODS:
        raise ParameterError(f"tomo: unknown offset/tilt method {dc!r}; use one of {', '.join(DC_METHODS)}")
    if slab_rows is not None and int(slab_rows) < 1:
        raise ParameterError("tomo: slab_rows must be at least 1")


def _rows(x, rows: slice) -> np.ndarray:
    """Sinograms ``(rows, A, W)`` float32 of a projection map ``(A, H, W)`` (array or file-backed)."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(x[:, rows], dtype=np.float32), 1, 0))


def _as_projections(x, name: str, n_angles: int):
    """An ``(A, H, W)`` map: arrays are converted (a sinogram ``(A, W)`` becomes one row), file-backed maps
    (anything with ``shape`` and ``[:, rows]`` reading that is not an ndarray) are read slab by slab later."""
    a = x if (hasattr(x, "shape") and not isinstance(x, np.ndarray)) else np.asarray(x, dtype=np.float32)
    if isinstance(a, np.ndarray) and a.ndim == 2:
        a = a[:, None, :]
    if len(a.shape) != 3 or a.shape[0] != n_angles:
        raise InputError(f"tomo: {name} must be (A, H, W) with A = {n_angles} angles, got shape {np.shape(x)}")
    return a


def _rotation_axis(src, from_transmission: bool, theta, center_px, half_acquisition: bool):
    """Rotation axis of projections *src* ``(A, H, W)``: (center, center_source, center_refinement, theta_rec,
    center_rec, W_out) — see :func:`reconstruct` (``center_px``, ``half_acquisition``)."""
    H, W = src.shape[-2:]
    if half_acquisition:
        if not is_full_turn(theta):
            raise ParameterError(
                f"tomo: a half-acquisition scan needs angles over a full turn; the scan spans "
                f"{float(np.ptp(theta)):.4g} degrees"
            )
        rows = slice(int(0.1 * H), max(int(0.9 * H), int(0.1 * H) + 1), max(1, int(0.8 * H) // 8))
        sino = _rows(src, rows)
        if from_transmission:
            sino = -np.log(np.clip(sino, 1e-6, None))
        if center_px is None:
            center, _, _ = estimate_center_360(sino, theta)
            center_source = "360 overlap"
        else:
            center, center_source = float(center_px), "user"
        probe, theta_rec, center_rec, _ = convert_360_to_180(sino[:1], theta, center=center)
        return center, center_source, "none", theta_rec, center_rec, probe.shape[-1]
    if center_px is None:
        # 16 rows spread over the middle 80 % (one pass over a file: frames are chunked whole)
        rows = slice(int(0.1 * H), max(int(0.9 * H), int(0.1 * H) + 1), max(1, int(0.8 * H) // 16))
        sino = _rows(src, rows)  # (rows, A, W)
        if from_transmission:
            sino = -np.log(np.clip(sino, 1e-6, None))
        try:
            opposite_pair(theta)
            center_source = "0/180 pair"  # the coarse estimate; refined below
        except InputError:
            center_source = "centre-of-mass fit"
        center_refinement = "reconstruction negativity"
        try:
            center = find_center(sino, theta)
        except InputError:  # no usable signal: use the detector middle
            center = (W - 1) / 2.0
            center_source, center_refinement = "detector middle", "none"
    else:
        center = float(center_px)
        center_source, center_refinement = "user", "none"
        if not -W < center < 2 * W:
            raise ParameterError(f"tomo: --center {center_px} is far outside the detector (0..{W - 1} px)")
    return center, center_source, center_refinement, theta, center, W


def reconstruct(
    phase=None,
    theta_deg=None,
    geometry=None,
    *,
    transmission=None,
    diffusion=None,
    center_px: float | None = None,
    filter: str = "ramlak",
    background: str | None = "quadratic",
    method: str = "gridrec",
    rings: str | None = None,
    ring_params: dict | None = None,
    half_acquisition: bool = False,
    dc: str | None = None,
    slab_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    out: Callable[[str, tuple], Any] | None = None,
) -> dict[str, Any]:
    """Reconstruct delta (from phase), beta (from transmission) and dark-field (from D_eff) volumes by FBP.

    Parameters
    ----------
    phase, transmission, diffusion : array (A, H, W), optional
        Phase (rad, negative in matter), intensity transmission (1 in air) and MIST's D_eff (m) projections;
        a single sinogram ``(A, W)`` gives a one-slice volume.  Besides arrays, any object with ``shape`` and
        ``[:, rows]`` reading (an h5py dataset) is read slab by slab.  Phase or transmission is required.
    theta_deg : array (A,)
        Rotation angles in degrees.
    geometry : Geometry
        For k and the voxel size (pixel size / magnification).
    center_px : float, optional
        Rotation axis as a detector column (the CLI's ``--center``).  Default: found from 16 rows spread over
        the middle 80 % of the detector (:func:`xspeckle.tomo.center.find_center`, ``"auto"``: the sharpest
        reconstruction around the 180-degree pair estimate when there is one, else around the
        centre-of-mass sinusoid fit), falling back to ``(W - 1) / 2`` when that fails.  ``center_source``
        (coarse estimate: "0/180 pair", "centre-of-mass fit", "detector middle", "360 overlap" with
        ``half_acquisition``, or "user") and ``center_refinement`` ("reconstruction negativity" or "none")
        in the result say which.
    filter : {"ramlak", "shepp-logan", "cosine", "hann"}
    background : {"quadratic", None}
        Subtract a 2-D quadratic fitted to each slice's background (delta and beta; seed 000 Methods).
    method : {"gridrec", "backproject", "astra"}
        FBP algorithm (:func:`xspeckle.tomo.fbp.fbp`).
    rings : {"sorting", "filtering", "fitting", "wavelet-fft", "all", "gain"}, optional
        Remove sinogram stripes (rings) from every map's sinogram before FBP
        (:func:`xspeckle.tomo.rings.remove_rings`); None (default) leaves them.
    ring_params : dict, optional
        Parameters of the ring filter (e.g. ``{"size": 31}``).
    half_acquisition : bool
        A 360-degree half-acquisition (offset-axis) scan: each row's sinogram is stitched into a
        180-degree sinogram of width ``W2 = 2 W - overlap`` (:func:`xspeckle.tomo.sinogram.convert_360_to_180`)
        and the volume is ``(H, W2, W2)``.  ``center_px`` is then the axis column in the 360 sinogram
        (default: estimated from the overlap of the two half turns).  A full-field 360-degree scan needs no
        flag (FBP weights angles modulo 180).
    dc : {"wings"}, optional
        Remove each phase projection's offset and slow tilt before FBP
        (:func:`xspeckle.tomo.sinogram.remove_offset_tilt`).
    slab_rows : int, optional
        Detector rows reconstructed at once (default: all).
    progress : callable(done, total), optional
        Called after each slab with rows done and total rows.
    out : callable(name, shape) -> array, optional
        Makes the output volume of each quantity (e.g. an h5py dataset); default ``numpy.empty`` float32.

    Returns
    -------
    dict with ``delta``, ``beta`` and/or ``diffusion`` ``(Z, N, N)`` (dimensionless, positive in matter;
    Z = detector rows; ``diffusion`` = FBP(D_eff)/voxel), ``voxel_size_m``, ``center_px``, ``center_source``,
    ``center_refinement`` and, with ``half_acquisition``, ``center_180_px`` (axis in the stitched sinogram).
    """
    _check_options(filter, background, rings, dc, slab_rows)
    ring_params = dict(ring_params or {})
    if geometry is None or theta_deg is None:
        raise InputError("tomo needs theta_deg (degrees) and geometry")
    if phase is None and transmission is None:
        raise InputError("tomo needs phase and/or transmission projections (A, H, W)")
    theta = np.asarray(theta_deg, dtype=np.float64).reshape(-1)
    todo = {v: _as_projections(x, s, theta.size)
            for v, s, x in (("delta", "phase", phase), ("beta", "transmission", transmission),
                            ("diffusion", "diffusion", diffusion)) if x is not None}
    first = todo["delta"] if "delta" in todo else todo["beta"]
    H, W = first.shape[-2:]
    k = geometry.wavenumber_per_m
    p = geometry.pixel_size_m / geometry.magnification  # voxel size at the sample
    center, center_source, center_refinement, theta_rec, center_rec, W_out = _rotation_axis(
        first, "delta" not in todo, theta, center_px, half_acquisition)
    result: dict[str, Any] = {"voxel_size_m": p, "center_px": center, "center_source": center_source,
                              "center_refinement": center_refinement}
    if half_acquisition:
        result["center_180_px"] = float(center_rec)
    make = out if out is not None else (lambda name, shape: np.empty(shape, np.float32))
    for v in todo:
        result[v] = make(v, (H, W_out, W_out))
    fkw = dict(center=center_rec, filter=filter, method=method)
    step = H if slab_rows is None else int(slab_rows)
    for r0 in range(0, H, step):
        rows = slice(r0, min(H, r0 + step))
        for v, src in todo.items():
            sino = _rows(src, rows)  # (rows, A, W)
            if rings is not None:  # stripes belong to detector columns: before any stitching
                sino = remove_rings(sino, rings, **ring_params)
            if half_acquisition:
                sino = convert_360_to_180(sino, theta, center=center)[0]
            if dc is not None and v == "delta":
                sino = remove_offset_tilt(sino, method=dc)
            if v == "delta":
                vol = delta_from_phase(sino, theta_rec, wavenumber_per_m=k, voxel_size_m=p, **fkw)
            elif v == "beta":
                vol = beta_from_transmission(sino, theta_rec, wavenumber_per_m=k, voxel_size_m=p, **fkw)
            else:
                vol = diffusion_from_deff(sino, theta_rec, voxel_size_m=p, **fkw)
            if background == "quadratic" and v != "diffusion":
                remove_background_quadratic(vol)
            result[v][rows] = vol
        if progress is not None:
            progress(rows.stop, H)
    return result


class _RetrievalMap:
    """One map of an open retrieval file, read by rows (``[:, rows]``) through ``RetrievalFile.read``."""

    def __init__(self, r, name: str):
        self._r, self._name = r, name
        self.shape = (r.n_angles,) + tuple(r.frame_shape)

    def __getitem__(self, idx):
        return self._r.read(self._name, rows=idx[1])


def reconstruct_file(
    retrieval_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    center_px: float | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    slab_rows: int = 16,
    filter: str = "ramlak",
    background: str | None = "quadratic",
    method: str = "gridrec",
    rings: str | None = None,
    ring_params: dict | None = None,
    half_acquisition: bool = False,
    dc: str | None = None,
) -> Path:
    """Reconstruct the volumes of a retrieval file (:func:`reconstruct`, streamed by slabs of rows).

    Parameters
    ----------
    retrieval_path : path-like
        Retrieval file with ``/retrieval/phase`` and/or ``/retrieval/transmission`` (and optional
        ``/retrieval/diffusion``), ``(A, H, W)``; ``/exchange/theta`` (degrees) and ``/geometry``.
    out_path : path-like
        Volume file to write (``/volume/delta``, ``/volume/beta`` [, ``/volume/diffusion``]).
    center_px : float, optional
        Rotation axis as a detector column (the CLI's ``--center``); default and rule as :func:`reconstruct`.
        The root attributes ``center_source`` and ``center_refinement`` say how it was found.
    overwrite : bool
        Replace an existing output file.
    progress : callable(done, total), optional
        Called after each slab with rows done and total rows.
    slab_rows : int
        Detector rows per slab.
    filter, background, method, rings, ring_params, half_acquisition, dc
        As :func:`reconstruct`.

    Returns
    -------
    Path of the volume file. Root attributes record ``center_px``, ``filter``, ``background`` and the
    source file; ``/volume`` has ``voxel_size_m`` = pixel_size_m / magnification.
    """
    _check_options(filter, background, rings, dc, slab_rows)
    ring_params = dict(ring_params or {})
    check_output_path(out_path, overwrite=overwrite)
    with open_retrieval(retrieval_path) as r:
        if r.theta_deg is None:
            raise ScanFormatError(f"{r.path}: missing /exchange/theta (rotation angles in degrees); cannot reconstruct")
        if r.geometry is None:
            raise ScanFormatError(f"{r.path}: missing /geometry (energy_ev, pixel_size_m, ...); cannot convert units")
        if r.n_angles < 2:
            raise ScanFormatError(f"{r.path}: a tomogram needs many angles; the file has {r.n_angles}")
        if "phase" not in r and "transmission" not in r:
            raise ScanFormatError(
                f"{r.path}: neither /retrieval/phase nor /retrieval/transmission; nothing to reconstruct"
            )
        geo = r.geometry
        theta = r.theta_deg
        maps = {s: _RetrievalMap(r, s) for s in ("phase", "transmission", "diffusion") if s in r}
        if half_acquisition and not is_full_turn(theta):
            raise ParameterError(
                f"tomo: a half-acquisition scan needs angles over a full turn; {r.path} spans "
                f"{float(np.ptp(theta)):.4g} degrees"
            )
        with atomic_path(out_path, overwrite=overwrite) as tmp:
            with h5py.File(tmp, "w") as f:
                g = f.create_group("volume")

                def dataset(name, shape):
                    d = g.create_dataset(name, shape=shape, dtype=np.float32, chunks=(1,) + tuple(shape[1:]))
                    d.attrs["units"] = VOLUME_UNITS[name]
                    if name == "diffusion":
                        d.attrs["description"] = "FBP(D_eff)/voxel: m of D_eff per m of path"
                    return d

                res = reconstruct(maps.get("phase"), theta, geo, transmission=maps.get("transmission"),
                                  diffusion=maps.get("diffusion"), center_px=center_px, filter=filter,
                                  background=background, method=method, rings=rings, ring_params=ring_params,
                                  half_acquisition=half_acquisition, dc=dc, slab_rows=slab_rows, progress=progress,
                                  out=dataset)
                center = res["center_px"]
                f.attrs["xspeckle_version"] = __version__
                f.attrs["source"] = str(r.path)
                f.attrs["retrieval_method"] = r.method
                f.attrs["center_px"] = float(center)
                f.attrs["center_source"] = res["center_source"]
                f.attrs["center_refinement"] = res["center_refinement"]
                f.attrs["parameters"] = json.dumps(
                    {"filter": filter, "background": background, "method": method, "center_px": float(center),
                     "slab_rows": int(slab_rows), "rings": rings, "ring_params": ring_params,
                     "half_acquisition": bool(half_acquisition), "dc": dc}
                )
                g.attrs["voxel_size_m"] = float(res["voxel_size_m"])
                gg = f.create_group("geometry")
                for a, val in geo.to_attrs().items():
                    gg.attrs[a] = val
                f.create_dataset("exchange/theta", data=np.asarray(theta, np.float64))
                if half_acquisition:
                    f.attrs["center_180_px"] = res["center_180_px"]  # axis column in the stitched sinograms
    return Path(out_path)
