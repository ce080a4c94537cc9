"""Retrieval and volume files of ``interfaces.md``: write atomically, read lazily.

Retrieval file (output of ``xspeckle retrieve``)::

    /retrieval/phase              (A, H, W)     float32, units "rad"
    /retrieval/transmission       (A, H, W)     float32, units "1"
    /retrieval/diffusion          (A, H, W)     float32, units "m"
    /retrieval/diffusion_tensor   (3, A, H, W)  float32, units "m"   (xx, yy, xy)
    /retrieval/visibility         (A, H, W)     float32, units "1"
    /retrieval/displacement       (2, A, H, W)  float32, units "px"  (x, y)
    /retrieval/residual           (A, H, W)     float32, units "1"
    /exchange/theta               (A,)          degrees, copied from the scan
    /geometry                     attributes copied from the scan
    root attributes: method, xspeckle_version, parameters (JSON text)

Volume file (output of ``xspeckle tomo``)::

    /volume/delta, /volume/beta [, /volume/diffusion]   (Z, Y, X) float32
    /volume attribute voxel_size_m

:func:`write_retrieval` writes whole arrays at once; the streaming pipeline writes angle by
angle, resumably, with :class:`xspeckle.io.partial.RetrievalWriter` (same layout, units and
components from :data:`RETRIEVAL_UNITS` and :data:`RETRIEVAL_COMPONENTS`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from xspeckle._version import __version__
from xspeckle.errors import ScanFormatError
from xspeckle.geometry import Geometry
from xspeckle.io.atomic import atomic_path
from xspeckle.io.scan import open_h5

__all__ = [
    "RETRIEVAL_UNITS",
    "RETRIEVAL_COMPONENTS",
    "write_retrieval",
    "write_volume",
    "open_retrieval",
    "open_volume",
    "Retrieval",
    "Volume",
]

#: units attribute of every retrieval dataset (interfaces.md)
RETRIEVAL_UNITS: dict[str, str] = {
    "phase": "rad",
    "transmission": "1",
    "diffusion": "m",
    "diffusion_tensor": "m",
    "visibility": "1",
    "displacement": "px",
    "residual": "1",
}

#: leading component axis of multi-component outputs: file shape (C, A, H, W)
RETRIEVAL_COMPONENTS: dict[str, tuple[str, ...]] = {
    "diffusion_tensor": ("xx", "yy", "xy"),
    "displacement": ("x", "y"),
}


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def json_text(obj: Any) -> str:
    """Deterministic JSON text (sorted keys) of parameters that may hold NumPy scalars/arrays or paths."""
    return json.dumps(obj, default=_json_default, sort_keys=True)


def _parameters_json(parameters: Mapping[str, Any] | None) -> str:
    return json_text(dict(parameters or {}))


def _check_name(name: str) -> None:
    if name not in RETRIEVAL_UNITS:
        raise ScanFormatError(
            f"retrieval output {name!r} is not one of {', '.join(RETRIEVAL_UNITS)} (interfaces.md, retrieval file)"
        )


def _write_header(f: h5py.File, *, method: str, parameters, geometry: Geometry | None, theta_deg) -> None:
    f.attrs["method"] = str(method)
    f.attrs["xspeckle_version"] = __version__
    f.attrs["parameters"] = _parameters_json(parameters)
    if theta_deg is not None:
        ex = f.require_group("exchange")
        ex.create_dataset("theta", data=np.asarray(theta_deg, dtype=np.float64).reshape(-1))
        ex["theta"].attrs["units"] = "degree"
    if geometry is not None:
        g = f.require_group("geometry")
        for k, v in geometry.to_attrs().items():
            g.attrs[k] = v


def write_retrieval(
    path: str | os.PathLike,
    outputs: Mapping[str, np.ndarray],
    *,
    method: str,
    parameters: Mapping[str, Any] | None,
    geometry: Geometry | None,
    theta_deg: Sequence[float] | np.ndarray | None,
    overwrite: bool = False,
) -> Path:
    """Write a retrieval file atomically.

    Parameters
    ----------
    path : path-like
        Output HDF5 file.
    outputs : mapping name -> array
        ``(A, H, W)`` arrays (phase in rad, transmission, diffusion in m, visibility,
        residual); ``diffusion_tensor`` ``(3, A, H, W)`` and ``displacement`` ``(2, A, H, W)``
        in px.  Stored as float32.
    method : str
        Method name (``xspeckle retrieve --method``).
    parameters : mapping
        Effective parameters, stored as JSON text.
    geometry : Geometry or None
        Copied to ``/geometry``.
    theta_deg : array (A,) or None
        Rotation angles in degrees, copied to ``/exchange/theta``.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path of the written file.
    """
    if not outputs:
        raise ScanFormatError("write_retrieval: no output map given")
    n_ang = None
    arrays = {}
    for name, arr in outputs.items():
        _check_name(name)
        a = np.asarray(arr, dtype=np.float32)
        want = 4 if name in RETRIEVAL_COMPONENTS else 3
        if a.ndim != want or (want == 4 and a.shape[0] != len(RETRIEVAL_COMPONENTS[name])):
            exp = f"({len(RETRIEVAL_COMPONENTS[name])}, A, H, W)" if want == 4 else "(A, H, W)"
            raise ScanFormatError(f"write_retrieval: {name} has shape {a.shape}; expected {exp}")
        na = a.shape[-3]
        if n_ang is not None and na != n_ang:
            raise ScanFormatError(f"write_retrieval: {name} has {na} angles, other outputs have {n_ang}")
        n_ang = na
        arrays[name] = a
    if theta_deg is not None and np.asarray(theta_deg).size != n_ang:
        raise ScanFormatError(f"write_retrieval: theta_deg has {np.asarray(theta_deg).size} angles, outputs have {n_ang}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_header(f, method=method, parameters=parameters, geometry=geometry, theta_deg=theta_deg)
            g = f.create_group("retrieval")
            for name, a in arrays.items():
                chunks = (1,) * (a.ndim - 2) + a.shape[-2:]
                d = g.create_dataset(name, data=a, chunks=chunks)
                d.attrs["units"] = RETRIEVAL_UNITS[name]
                if name in RETRIEVAL_COMPONENTS:
                    d.attrs["components"] = ",".join(RETRIEVAL_COMPONENTS[name])
    return Path(path)


def _require_attr(f: h5py.File, path: Path, key: str, where: str = "/"):
    obj = f[where]
    if key not in obj.attrs:
        raise ScanFormatError(f"{path}: missing attribute {key} on {where} (interfaces.md)")
    v = obj.attrs[key]
    return v.decode() if isinstance(v, bytes) else v


class Retrieval:
    """Lazy view of a retrieval file (see :func:`open_retrieval`).

    Attributes
    ----------
    method : str
    parameters : dict
    xspeckle_version : str
    geometry : Geometry or None
    theta_deg : ndarray (A,) or None
    names : list of str
        Datasets present under ``/retrieval``.
    n_angles : int
    frame_shape : (H, W)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = open_h5(self.path, "r")
        try:
            f = self._f
            if "retrieval" not in f or not isinstance(f["retrieval"], h5py.Group):
                raise ScanFormatError(f"{self.path}: no /retrieval group; is this a retrieval file (xspeckle retrieve output)?")
            self.method = str(_require_attr(f, self.path, "method"))
            self.xspeckle_version = str(f.attrs.get("xspeckle_version", ""))
            txt = _require_attr(f, self.path, "parameters")
            try:
                self.parameters = json.loads(txt)
            except (TypeError, ValueError):
                raise ScanFormatError(f"{self.path}: root attribute parameters is not valid JSON text") from None
            self.geometry = (
                Geometry.from_attrs(f["geometry"].attrs, source=f"{self.path}:/geometry") if "geometry" in f else None
            )
            self.theta_deg = np.asarray(f["exchange/theta"][()], np.float64) if "exchange/theta" in f else None
            # maps are (A, H, W) or (C, A, H, W); per-angle records such as iterations/stop_reason (A,) are not
            self.names = [k for k in f["retrieval"] if isinstance(f["retrieval"][k], h5py.Dataset)
                          and f["retrieval"][k].ndim >= 3]
            if not self.names:
                raise ScanFormatError(f"{self.path}: /retrieval holds no dataset")
            d0 = f["retrieval"][self.names[0]]
            self.n_angles = int(d0.shape[-3])
            self.frame_shape = (int(d0.shape[-2]), int(d0.shape[-1]))
        except Exception:
            self._f.close()
            raise

    @property
    def complete(self) -> bool:
        """False when ``/progress/angles_done`` says some angle is missing (partial file)."""
        d = self._f.get("progress/angles_done")
        return True if d is None else bool(np.all(d[()]))

    def dataset(self, name: str) -> h5py.Dataset:
        """The h5py dataset ``/retrieval/<name>`` (lazy)."""
        if name not in self.names:
            raise ScanFormatError(f"{self.path}: no /retrieval/{name}; the file has {', '.join(self.names)}")
        return self._f["retrieval"][name]

    def units(self, name: str) -> str:
        return str(self.dataset(name).attrs.get("units", ""))

    def read(self, name: str, angles=None, rows=None) -> np.ndarray:
        """Read ``name`` for a selection of angles and detector rows as float32.

        Parameters
        ----------
        angles : int, slice or None
            Angle index or slice (``None`` = all).
        rows : int, slice or None
            Detector rows (``None`` = all); ``rows=k`` with all angles is a sinogram.

        Returns
        -------
        ndarray, ``(A', H', W)`` (or ``(C, A', H', W)`` for multi-component outputs).
        """
        d = self.dataset(name)
        a = slice(None) if angles is None else angles
        r = slice(None) if rows is None else rows
        idx = (slice(None), a, r) if d.ndim == 4 else (a, r)
        try:
            return np.asarray(d[idx], dtype=np.float32)
        except (OSError, RuntimeError) as exc:
            raise ScanFormatError(f"{self.path}: cannot read /retrieval/{name} ({exc}); the file may be truncated") from None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.read(name)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Retrieval":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Retrieval({str(self.path)!r}, method={self.method!r}, angles={self.n_angles}, frame={self.frame_shape}, maps={self.names})"


def open_retrieval(path: str | os.PathLike) -> Retrieval:
    """Open a retrieval file (lazy; use as a context manager)."""
    return Retrieval(path)


def write_volume(
    path: str | os.PathLike,
    *,
    delta: np.ndarray,
    beta: np.ndarray,
    diffusion: np.ndarray | None = None,
    voxel_size_m: float,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    geometry: Geometry | None = None,
    diffusion_units: str = "1",
) -> Path:
    """Write a volume file atomically.

    Parameters
    ----------
    path : path-like
        Output HDF5 file.
    delta, beta : array (Z, Y, X)
        Refractive-index decrement and absorption index, dimensionless, positive in
        matter; Z along the rotation axis (detector rows).
    diffusion : array (Z, Y, X), optional
        Reconstructed dark-field (diffusion) volume.
    voxel_size_m : float
        Voxel size in metres (attribute of ``/volume``).
    attrs : mapping, optional
        Extra root attributes (e.g. ``method``, ``center_px``); dicts/lists stored as JSON text.
    overwrite : bool
        Replace an existing file.
    geometry : Geometry, optional
        Copied to ``/geometry``.
    diffusion_units : str
        ``units`` attribute of ``/volume/diffusion``.

    Returns
    -------
    Path of the written file.
    """
    vols = {"delta": delta, "beta": beta}
    if diffusion is not None:
        vols["diffusion"] = diffusion
    shape = None
    arrays = {}
    for k, v in vols.items():
        a = np.asarray(v, dtype=np.float32)
        if a.ndim != 3:
            raise ScanFormatError(f"write_volume: {k} has shape {a.shape}; expected (Z, Y, X)")
        if shape is not None and a.shape != shape:
            raise ScanFormatError(f"write_volume: {k} has shape {a.shape}, delta has {shape}")
        shape = a.shape
        arrays[k] = a
    try:
        vs = float(voxel_size_m)
    except (TypeError, ValueError):
        raise ScanFormatError(f"write_volume: voxel_size_m must be a number, got {voxel_size_m!r}") from None
    if not (np.isfinite(vs) and 0 < vs < 1e-2):
        raise ScanFormatError(f"write_volume: voxel_size_m={vs!r} is not a plausible voxel size in metres")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["xspeckle_version"] = __version__
            for k, v in (attrs or {}).items():
                f.attrs[k] = json.dumps(v, default=_json_default) if isinstance(v, (dict, list, tuple)) else v
            g = f.create_group("volume")
            g.attrs["voxel_size_m"] = vs
            units = {"delta": "1", "beta": "1", "diffusion": diffusion_units}
            for k, a in arrays.items():
                d = g.create_dataset(k, data=a, chunks=(1,) + a.shape[1:])
                d.attrs["units"] = units[k]
            if geometry is not None:
                gg = f.create_group("geometry")
                for k, v in geometry.to_attrs().items():
                    gg.attrs[k] = v
    return Path(path)


class Volume:
    """Lazy view of a volume file (see :func:`open_volume`).

    Attributes
    ----------
    voxel_size_m : float
    names : list of str
        Datasets under ``/volume`` (delta, beta, diffusion).
    shape : (Z, Y, X)
    attrs : dict
        Root attributes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = open_h5(self.path, "r")
        try:
            f = self._f
            if "volume" not in f or not isinstance(f["volume"], h5py.Group):
                raise ScanFormatError(f"{self.path}: no /volume group; is this a volume file (xspeckle tomo output)?")
            g = f["volume"]
            if "voxel_size_m" not in g.attrs:
                raise ScanFormatError(f"{self.path}: missing attribute voxel_size_m on /volume (interfaces.md)")
            self.voxel_size_m = float(g.attrs["voxel_size_m"])
            self.names = [k for k in g if isinstance(g[k], h5py.Dataset)]
            for k in ("delta", "beta"):
                if k not in self.names:
                    raise ScanFormatError(f"{self.path}: missing dataset /volume/{k} (interfaces.md, volume file)")
            self.shape = tuple(int(s) for s in g["delta"].shape)
            self.attrs = dict(f.attrs)
            self.geometry = (
                Geometry.from_attrs(f["geometry"].attrs, source=f"{self.path}:/geometry") if "geometry" in f else None
            )
        except Exception:
            self._f.close()
            raise

    def dataset(self, name: str) -> h5py.Dataset:
        if name not in self.names:
            raise ScanFormatError(f"{self.path}: no /volume/{name}; the file has {', '.join(self.names)}")
        return self._f["volume"][name]

    def read(self, name: str, z=None) -> np.ndarray:
        """Read ``/volume/<name>`` (all slices, or the slice/index *z*) as float32."""
        d = self.dataset(name)
        try:
            return np.asarray(d[slice(None) if z is None else z], dtype=np.float32)
        except (OSError, RuntimeError) as exc:
            raise ScanFormatError(f"{self.path}: cannot read /volume/{name} ({exc}); the file may be truncated") from None

    @property
    def delta(self) -> np.ndarray:
        return self.read("delta")

    @property
    def beta(self) -> np.ndarray:
        return self.read("beta")

    @property
    def diffusion(self) -> np.ndarray | None:
        return self.read("diffusion") if "diffusion" in self.names else None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.read(name)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Volume({str(self.path)!r}, shape={self.shape}, voxel_size_m={self.voxel_size_m:g}, maps={self.names})"


def open_volume(path: str | os.PathLike) -> Volume:
    """Open a volume file (lazy; use as a context manager)."""
    return Volume(path)
