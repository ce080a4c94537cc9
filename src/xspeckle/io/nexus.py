"""Readers for NeXus NXtomo and plain DXchange files (Scan-compatible, lazy).

Speckle imaging adds a *reference* (diffuser in, sample out) to the usual tomography
frames.  In a tomography file written at a beamline with the diffuser in place, the
"flat fields" (NXtomo ``image_key = 1``, DXchange ``/exchange/data_white``) are exactly
those reference speckle images, so both readers map them to the reference:

* one input file = one diffuser position; pass several files for P positions (same
  angles in each);
* projections (``image_key = 0`` / ``/exchange/data``) are the sample frames;
* darks (``image_key = 2`` / ``/exchange/data_dark``) are the dark frames (all files pooled);
* optional true flats (no diffuser, no sample) can be given separately (``flat=``);
* invalid frames (``image_key = 3``) are skipped.

NXtomo data are looked up at ``/entry/instrument/detector/data`` then ``/entry/data/data``
(``entry`` = the first NXentry group); ``image_key`` next to them; rotation angles at
``/entry/sample/rotation_angle`` or ``/entry/data/rotation_angle`` (``units`` "deg"
or "rad").  The geometry comes from the ``geometry=`` argument (a :class:`Geometry` or
a mapping such as a sidecar's ``geometry:`` section), else from the file's ``/geometry``
group, else from NeXus fields (``instrument/source/energy`` or ``beam/incident_energy``,
``detector/x_pixel_size``, ``detector/distance`` with their units).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np

from xspeckle.errors import GeometryError, ScanFormatError
from xspeckle.geometry import Geometry
from xspeckle.io.scan import FrameScan, _Indexed, open_h5, save_scan

__all__ = ["read_nxtomo", "read_dxchange", "detect_format", "open_any", "import_hdf5"]

_LEN = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micron": 1e-6, "microns": 1e-6, "nm": 1e-9, "cm": 1e-2}
_ENERGY = {"ev": 1.0, "kev": 1e3, "mev": 1e6, "j": 1 / 1.602176634e-19}


def _paths(paths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = [Path(p) for p in paths]
    if not out:
        raise ScanFormatError("no input file given")
    return out


def _entry(f: h5py.File, path: Path) -> h5py.Group:
    for k in f:
        g = f[k]
        if isinstance(g, h5py.Group):
            cls = g.attrs.get("NX_class", b"")
            cls = cls.decode() if isinstance(cls, bytes) else str(cls)
            if cls == "NXentry":
                return g
    if "entry" in f and isinstance(f["entry"], h5py.Group):
        return f["entry"]
    raise ScanFormatError(f"{path}: no NXentry group (expected /entry with NX_class NXentry)")


def detect_format(path: str | os.PathLike) -> str:
    """Return ``"scan"`` (xspeckle scan file), ``"nxtomo"`` or ``"dxchange"`` for an HDF5 file."""
    p = Path(path)
    with open_h5(p) as f:
        if "exchange/data_reference" in f:
            return "scan"
        if "exchange/data" in f:
            return "dxchange"
        try:
            e = _entry(f, p)
        except ScanFormatError:
            e = None
        if e is not None and ("instrument/detector/data" in e or "data/data" in e):
            return "nxtomo"
    raise ScanFormatError(
        f"{p}: neither an xspeckle scan, a DXchange (/exchange/data) nor a NeXus NXtomo file "
        f"(/entry/instrument/detector/data)"
    )


def _scalar_with_units(ds, table: dict, default_unit: str):
    v = np.asarray(ds[()], dtype=np.float64).reshape(-1)
    if v.size == 0:
        return None
    u = ds.attrs.get("units", default_unit)
    u = (u.decode() if isinstance(u, bytes) else str(u)).strip().lower()
    if u not in table:
        return None
    return float(v.mean()) * table[u]


def _geometry(geometry, files: list[h5py.File], paths: list[Path], nexus: bool) -> Geometry:
    if isinstance(geometry, Geometry):
        return geometry
    if geometry is not None:
        from xspeckle.io.tiff import geometry_from_mapping

        return geometry_from_mapping(geometry, "geometry")
    f, p = files[0], paths[0]
    if "geometry" in f:
        return Geometry.from_attrs(f["geometry"].attrs, source=f"{p}:/geometry")
    if nexus:
        e = _entry(f, p)
        kw: dict[str, Any] = {}
        for loc in ("instrument/source/energy", "beam/incident_energy", "instrument/monochromator/energy"):
            if loc in e:
                kw["energy_ev"] = _scalar_with_units(e[loc], _ENERGY, "kev")
                break
        for loc in ("instrument/detector/x_pixel_size",):
            if loc in e:
                kw["pixel_size_m"] = _scalar_with_units(e[loc], _LEN, "m")
        for loc in ("instrument/detector/distance",):
            if loc in e:
                kw["sample_detector_distance_m"] = _scalar_with_units(e[loc], _LEN, "m")
        kw = {k: v for k, v in kw.items() if v is not None}
        return Geometry.from_attrs(kw, source=f"{p} (NeXus fields; or pass a geometry sidecar with --geometry)")
    raise GeometryError(f"{p}: no /geometry group; pass the geometry (energy_ev, pixel_size_m, ...) with --geometry SIDECAR.yaml")


def _angles_deg(ds) -> np.ndarray:
    a = np.asarray(ds[()], dtype=np.float64).reshape(-1)
    u = ds.attrs.get("units", "deg")
    u = (u.decode() if isinstance(u, bytes) else str(u)).strip().lower()
    if u in ("rad", "radian", "radians"):
        a = np.degrees(a)
    return a


def _mean_frames(ds, idx: Sequence[int]) -> np.ndarray:
    acc = None
    for i in idx:
        fr = np.asarray(ds[int(i)], dtype=np.float64)
        acc = fr if acc is None else acc + fr
    return (acc / len(idx)).astype(np.float32)


def _finish(samples, refs, darks, theta, geometry, flat, paths, files, kind, **kwargs) -> FrameScan:
    if theta is not None and len(theta) > 1:
        for p, t in zip(paths[1:], theta[1:]):
            if t.shape != theta[0].shape or not np.allclose(t, theta[0], atol=1e-3):
                raise ScanFormatError(f"{p}: rotation angles differ from {paths[0]}; every diffuser position needs the same angles")
    dark = np.concatenate(darks) if darks else None
    attrs = {"imported_from": ", ".join(str(p) for p in paths), "imported_format": kind}
    names = {"data": f"{kind} projection", "reference": f"{kind} reference (flat with diffuser)",
             "white": "flat", "dark": f"{kind} dark"}
    return FrameScan(
        samples=samples, reference=refs, geometry=geometry, flat=flat, dark=dark,
        theta_deg=None if theta is None else theta[0], source=str(paths[0]), names=names, attrs=attrs,
        handles=files, **kwargs,
    )


def read_nxtomo(paths, *, geometry=None, flat=None, **kwargs) -> FrameScan:
    """Open NeXus NXtomo file(s), one per diffuser position, as a :class:`FrameScan`.

    Parameters
    ----------
    paths : path-like or sequence of path-like
        One NXtomo file per diffuser position.
    geometry : Geometry or mapping, optional
        Overrides what the file says (see module docstring).
    flat : array (N, H, W) or (H, W), optional
        True flat fields (no diffuser, no sample).
    **kwargs
        Passed to :class:`FrameScan`.

    Returns
    -------
    FrameScan (lazy: projections are read per angle).
    """
    ps = _paths(paths)
    files = [open_h5(p) for p in ps]
    try:
        samples, refs, darks, thetas = [], [], [], []
        for p, f in zip(ps, files):
            e = _entry(f, p)
            if "instrument/detector/data" in e:
                grp = e["instrument/detector"]
            elif "data/data" in e:
                grp = e["data"]
            else:
                raise ScanFormatError(f"{p}: no {e.name}/instrument/detector/data or {e.name}/data/data (NXtomo)")
            data = grp["data"]
            if not isinstance(data, h5py.Dataset) or data.ndim != 3:
                raise ScanFormatError(f"{p}: {data.name} has shape {getattr(data, 'shape', '?')}; expected (N, H, W)")
            key_ds = grp.get("image_key")
            for loc in ("data/image_key", "instrument/detector/image_key"):
                if key_ds is None and loc in e:
                    key_ds = e[loc]
            if key_ds is None:
                raise ScanFormatError(f"{p}: no image_key next to {data.name}; cannot tell projections from flats and darks")
            keys = np.asarray(key_ds[()]).reshape(-1).astype(int)
            if keys.size != data.shape[0]:
                raise ScanFormatError(f"{p}: image_key has {keys.size} entries but {data.name} has {data.shape[0]} frames")
            proj = np.flatnonzero(keys == 0)
            fl = np.flatnonzero(keys == 1)
            dk = np.flatnonzero(keys == 2)
            if proj.size == 0:
                raise ScanFormatError(f"{p}: no projection (image_key = 0) in {data.name}")
            if fl.size == 0:
                raise ScanFormatError(
                    f"{p}: no flat/reference frame (image_key = 1); a speckle scan needs the diffuser-in, sample-out reference"
                )
            samples.append(_Indexed(data, proj))
            refs.append(_mean_frames(data, fl))
            if dk.size:
                darks.append(np.stack([np.asarray(data[int(i)]) for i in dk]).astype(np.float32))
            ang = None
            for loc in ("sample/rotation_angle", "data/rotation_angle", "instrument/detector/rotation_angle"):
                if loc in e:
                    ang = _angles_deg(e[loc])
                    break
            if ang is None:
                thetas.append(None)
            else:
                if ang.size == keys.size:
                    ang = ang[proj]
                elif ang.size != proj.size:
                    raise ScanFormatError(f"{p}: rotation_angle has {ang.size} values for {proj.size} projections")
                thetas.append(ang)
        theta = None if any(t is None for t in thetas) else thetas
        if theta is None and samples[0].__len__() > 1:
            raise ScanFormatError(f"{ps[0]}: no rotation_angle (expected /entry/sample/rotation_angle in degrees)")
        g = _geometry(geometry, files, ps, nexus=True)
        return _finish(samples, refs, darks, theta, g, flat, ps, files, "NXtomo", **kwargs)
    except Exception:
        for f in files:
            f.close()
        raise


def read_dxchange(paths, *, geometry=None, flat=None, **kwargs) -> FrameScan:
    """Open plain DXchange file(s) (``/exchange/data``, ``data_white``, ``data_dark``, ``theta``).

    ``data_white`` (diffuser in, sample out) becomes the reference of that file's
    diffuser position; one file per position.  ``theta`` is read in degrees unless its
    ``units`` attribute says radians.

    Parameters
    ----------
    paths : path-like or sequence of path-like
    geometry : Geometry or mapping, optional
        Else ``/geometry`` in the file; otherwise an error asks for ``--geometry``.
    flat : array, optional
        True flat fields (no diffuser).
    **kwargs
        Passed to :class:`FrameScan`.
    """
    ps = _paths(paths)
    files = [open_h5(p) for p in ps]
    try:
        samples, refs, darks, thetas = [], [], [], []
        for p, f in zip(ps, files):
            if "exchange/data_reference" in f:
                raise ScanFormatError(f"{p}: this is already an xspeckle scan file; open it with xspeckle.io.Scan")
            if "exchange/data" not in f:
                raise ScanFormatError(f"{p}: missing dataset /exchange/data (DXchange)")
            data = f["exchange/data"]
            if data.ndim != 3:
                raise ScanFormatError(f"{p}: /exchange/data has shape {data.shape}; expected (A, H, W)")
            if "exchange/data_white" not in f:
                raise ScanFormatError(
                    f"{p}: missing /exchange/data_white; a speckle scan needs the diffuser-in, sample-out reference frames"
                )
            w = f["exchange/data_white"]
            refs.append(_mean_frames(w, range(w.shape[0])) if w.ndim == 3 else np.asarray(w[()], np.float32))
            samples.append(_Indexed(data, range(data.shape[0])))
            if "exchange/data_dark" in f:
                dd = np.asarray(f["exchange/data_dark"][()], np.float32)
                darks.append(dd[None] if dd.ndim == 2 else dd)
            thetas.append(_angles_deg(f["exchange/theta"]) if "exchange/theta" in f else None)
        theta = None if any(t is None for t in thetas) else thetas
        if theta is None and len(samples[0]) > 1:
            raise ScanFormatError(f"{ps[0]}: missing /exchange/theta (rotation angles in degrees)")
        g = _geometry(geometry, files, ps, nexus=False)
        return _finish(samples, refs, darks, theta, g, flat, ps, files, "DXchange", **kwargs)
    except Exception:
        for f in files:
            f.close()
        raise


def open_any(paths, *, geometry=None, **kwargs):
    """Open a scan, NXtomo or DXchange file set as a Scan-compatible object (format auto-detected)."""
    ps = _paths(paths)
    kinds = {detect_format(p) for p in ps}
    if len(kinds) != 1:
        raise ScanFormatError(f"input files mix formats: {sorted(kinds)}")
    kind = kinds.pop()
    if kind == "scan":
        if len(ps) != 1:
            raise ScanFormatError("give a single xspeckle scan file (it already holds every diffuser position)")
        from xspeckle.io.scan import Scan

        return Scan(ps[0], **kwargs)
    reader = read_nxtomo if kind == "nxtomo" else read_dxchange
    return reader(ps, geometry=geometry, **kwargs)


def import_hdf5(
    paths,
    out_path: str | os.PathLike,
    *,
    geometry=None,
    overwrite: bool = False,
    compression: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Convert NXtomo / DXchange file(s) (one per diffuser position) into a scan file.

    Parameters
    ----------
    paths : path-like or sequence
    out_path : path-like
        Output scan file, written atomically.
    geometry : Geometry or mapping, optional
    overwrite : bool
    compression : str, optional
    progress : callable(done, total), optional

    Returns
    -------
    Path of the scan file.
    """
    with open_any(paths, geometry=geometry) as scan:
        return save_scan(scan, out_path, overwrite=overwrite, compression=compression, progress=progress)
