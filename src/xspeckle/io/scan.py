"""The scan file of ``interfaces.md``: read lazily, write atomically.

Layout (a superset of DXchange)::

    /exchange/data            (P, A, H, W) or (A, H, W) when P = 1   sample frames
    /exchange/data_reference  (P, H, W)    or (H, W)    when P = 1   reference speckle
    /exchange/data_white      (F, H, W)   optional flat fields
    /exchange/data_dark       (D, H, W)   optional dark frames
    /exchange/theta           (A,)        rotation angles in degrees (optional if A = 1)
    /geometry                 attributes, see :class:`xspeckle.geometry.Geometry`
    /truth                    optional ground truth written by the simulator

:class:`Scan` never reads the whole stack: a real scan is 801 × 2160 × 2560 uint16
(8.9 GB) per diffuser position.  Frames are read one angle (all positions) at a time.
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

__all__ = ["Scan", "open_scan", "write_scan", "open_h5"]


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """Open an HDF5 file with one clear error line for missing or corrupt files."""
    p = Path(path)
    if mode == "r" and not p.exists():
        raise ScanFormatError(f"{p}: no such file")
    if mode == "r" and p.is_dir():
        raise ScanFormatError(f"{p}: is a directory, expected an HDF5 file")
    try:
        return h5py.File(p, mode)
    except OSError as exc:
        raise ScanFormatError(f"{p}: not a readable HDF5 file ({str(exc).split(' (')[0]}); is it truncated or of another format?") from None


def _parse_positions(positions: Sequence[int] | None, n: int, path) -> list[int]:
    if positions is None:
        return list(range(n))
    out = [int(i) for i in positions]
    if not out:
        raise ScanFormatError(f"{path}: --positions selects no diffuser position")
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ScanFormatError(f"{path}: diffuser position(s) {bad} out of range; the scan has {n} (0..{n - 1})")
    if len(set(out)) != len(out):
        raise ScanFormatError(f"{path}: --positions lists a position twice: {out}")
    return out


class Scan:
    """Lazy view of a scan file.

    Parameters
    ----------
    path : path-like
        HDF5 file in the layout above.

    Attributes
    ----------
    geometry : Geometry
    n_positions, n_angles : int
    frame_shape : tuple (H, W)
    theta_deg : ndarray (A,) float64, rotation angles in degrees (zeros when absent and A = 1)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = open_h5(self.path, "r")
        try:
            self._setup()
        except Exception:
            self._f.close()
            raise

    # ------------------------------------------------------------------ set-up
    def _dataset(self, name: str, required: bool = True):
        obj = self._f.get(name)
        if obj is None:
            if required:
                raise ScanFormatError(f"{self.path}: missing dataset {name} (see interfaces.md, scan file)")
            return None
        if not isinstance(obj, h5py.Dataset):
            raise ScanFormatError(f"{self.path}: {name} is a group, expected a dataset")
        if obj.dtype.kind not in "uif":
            raise ScanFormatError(f"{self.path}: {name} has dtype {obj.dtype}; expected integer or float frames")
        return obj

    def _setup(self) -> None:
        if "geometry" not in self._f:
            raise ScanFormatError(f"{self.path}: missing group /geometry with the set-up attributes (interfaces.md)")
        self.geometry = Geometry.from_attrs(self._f["geometry"].attrs, source=f"{self.path}:/geometry")
        data = self._dataset("exchange/data")
        ref = self._dataset("exchange/data_reference")
        if ref.ndim == 2:
            self._ref_4d = False
            n_pos = 1
            hw = ref.shape
        elif ref.ndim == 3:
            self._ref_4d = True
            n_pos = ref.shape[0]
            hw = ref.shape[1:]
        else:
            raise ScanFormatError(
                f"{self.path}: /exchange/data_reference has shape {ref.shape}; expected (P, H, W) or (H, W)"
            )
        if data.ndim == 4:
            if data.shape[0] != n_pos:
                raise ScanFormatError(
                    f"{self.path}: /exchange/data has {data.shape[0]} diffuser positions but "
                    f"/exchange/data_reference has {n_pos}; they must match (P, A, H, W) vs (P, H, W)"
                )
            self._data_4d = True
            n_ang = data.shape[1]
        elif data.ndim == 3:
            if n_pos != 1:
                raise ScanFormatError(
                    f"{self.path}: /exchange/data is (A, H, W) but there are {n_pos} reference positions; "
                    f"store the samples as (P, A, H, W)"
                )
            self._data_4d = False
            n_ang = data.shape[0]
        elif data.ndim == 2:
            self._data_4d = None
            n_ang = 1
        else:
            raise ScanFormatError(f"{self.path}: /exchange/data has shape {data.shape}; expected (P, A, H, W) or (A, H, W)")
        if tuple(data.shape[-2:]) != tuple(hw):
            raise ScanFormatError(
                f"{self.path}: sample frames are {tuple(data.shape[-2:])} but reference frames are {tuple(hw)}; "
                f"they must have the same (H, W)"
            )
        if min(hw) < 8:
            raise ScanFormatError(f"{self.path}: frames of {tuple(hw)} pixels are too small (need at least 8 x 8)")
        self._data, self._ref = data, ref
        self._white = self._dataset("exchange/data_white", required=False)
        self._dark = self._dataset("exchange/data_dark", required=False)
        for name, d in (("data_white", self._white), ("data_dark", self._dark)):
            if d is not None and tuple(d.shape[-2:]) != tuple(hw):
                raise ScanFormatError(
                    f"{self.path}: /exchange/{name} frames are {tuple(d.shape[-2:])}, expected {tuple(hw)}"
                )
        self.n_positions = int(n_pos)
        self.n_angles = int(n_ang)
        self.frame_shape = (int(hw[0]), int(hw[1]))
        th = self._f.get("exchange/theta")
        if th is None:
            if n_ang > 1:
                raise ScanFormatError(
                    f"{self.path}: missing /exchange/theta (rotation angles in degrees) for {n_ang} angles"
                )
            self.theta_deg = np.zeros(1)
        else:
            t = np.asarray(th[()], dtype=np.float64).reshape(-1)
            if t.shape[0] != n_ang:
                raise ScanFormatError(f"{self.path}: /exchange/theta has {t.shape[0]} angles but the data has {n_ang}")
            if not np.all(np.isfinite(t)):
                raise ScanFormatError(f"{self.path}: /exchange/theta contains NaN or inf")
            self.theta_deg = t

    # ------------------------------------------------------------------ access
    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def has_flat(self) -> bool:
        return self._white is not None

    @property
    def has_dark(self) -> bool:
        return self._dark is not None

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._f.attrs)

    def positions(self, positions: Sequence[int] | None = None) -> list[int]:
        """Validate a selection of diffuser positions (``None`` = all)."""
        return _parse_positions(positions, self.n_positions, self.path)

    def reference(self, positions: Sequence[int] | None = None) -> np.ndarray:
        """Raw reference frames ``(P', H, W)`` as float32."""
        pos = self.positions(positions)
        if not self._ref_4d:
            return np.asarray(self._ref[()], dtype=np.float32)[None]
        return np.stack([np.asarray(self._ref[i], dtype=np.float32) for i in pos])

    def sample(self, angle: int, positions: Sequence[int] | None = None) -> np.ndarray:
        """Raw sample frames of one angle, all selected positions: ``(P', H, W)`` float32."""
        if not 0 <= angle < self.n_angles:
            raise ScanFormatError(f"{self.path}: angle index {angle} out of range 0..{self.n_angles - 1}")
        pos = self.positions(positions)
        if self._data_4d is None:
            return np.asarray(self._data[()], dtype=np.float32)[None]
        if not self._data_4d:
            return np.asarray(self._data[angle], dtype=np.float32)[None]
        return np.stack([np.asarray(self._data[i, angle], dtype=np.float32) for i in pos])

    def flat(self) -> np.ndarray | None:
        """Mean flat field ``(H, W)`` float32, or ``None``."""
        if self._white is None:
            return None
        w = self._white
        return (np.asarray(w[()], dtype=np.float64).mean(axis=0) if w.ndim == 3 else np.asarray(w[()], np.float64)).astype(np.float32)

    def dark(self) -> np.ndarray | None:
        """Mean dark frame ``(H, W)`` float32, or ``None``."""
        if self._dark is None:
            return None
        d = self._dark
        return (np.asarray(d[()], dtype=np.float64).mean(axis=0) if d.ndim == 3 else np.asarray(d[()], np.float64)).astype(np.float32)

    def truth(self) -> dict[str, np.ndarray]:
        """Ground truth from ``/truth`` (simulated scans), as a dict of arrays/attributes."""
        g = self._f.get("truth")
        if g is None:
            return {}
        out: dict[str, Any] = {k: g[k][()] for k in g if isinstance(g[k], h5py.Dataset)}
        out.update({f"attr:{k}": v for k, v in g.attrs.items()})
        return out

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Scan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Scan({str(self.path)!r}, positions={self.n_positions}, angles={self.n_angles}, "
            f"frame={self.frame_shape}, dtype={self.dtype}, {self.geometry.diffuser_position} diffuser)"
        )


def open_scan(path: str | os.PathLike) -> Scan:
    """Open a scan file (see :class:`Scan`)."""
    return Scan(path)


def write_scan(
    path: str | os.PathLike,
    *,
    data: np.ndarray,
    reference: np.ndarray,
    geometry: Geometry,
    flat: np.ndarray | None = None,
    dark: np.ndarray | None = None,
    theta_deg: np.ndarray | None = None,
    truth: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    compression: str | None = None,
) -> Path:
    """Write a scan file atomically in the ``interfaces.md`` layout.

    Parameters
    ----------
    data : array (P, A, H, W) or (A, H, W)
        Sample frames (uint16 or float32).
    reference : array (P, H, W) or (H, W)
        Reference speckle frames.
    geometry : Geometry
    flat, dark : array (F, H, W) or (H, W), optional
    theta_deg : array (A,), optional
    truth : mapping, optional
        Arrays go to datasets under ``/truth``; scalars and strings to its attributes.
    """
    data = np.asarray(data)
    reference = np.asarray(reference)
    if data.ndim == 4 and reference.ndim == 3 and data.shape[0] == 1:
        pass
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["xspeckle_version"] = __version__
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
            ex = f.create_group("exchange")
            chunks = (1,) * (data.ndim - 2) + tuple(data.shape[-2:])
            ex.create_dataset("data", data=data, chunks=chunks, compression=compression)
            ex["data"].attrs["units"] = "counts"
            ex.create_dataset("data_reference", data=reference, compression=compression)
            if flat is not None:
                flat = np.asarray(flat)
                ex.create_dataset("data_white", data=flat[None] if flat.ndim == 2 else flat, compression=compression)
            if dark is not None:
                dark = np.asarray(dark)
                ex.create_dataset("data_dark", data=dark[None] if dark.ndim == 2 else dark, compression=compression)
            if theta_deg is not None:
                ex.create_dataset("theta", data=np.asarray(theta_deg, dtype=np.float64))
                ex["theta"].attrs["units"] = "degree"
            g = f.create_group("geometry")
            for k, v in geometry.to_attrs().items():
                g.attrs[k] = v
            if truth:
                t = f.create_group("truth")
                for k, v in truth.items():
                    if isinstance(v, np.ndarray) and v.ndim > 0:
                        t.create_dataset(k, data=v, compression=compression)
                    elif isinstance(v, (dict, list)):
                        t.attrs[k] = json.dumps(v)
                    else:
                        t.attrs[k] = v
    return Path(path)
