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

Robustness (docs/reliability.md)
--------------------------------
* Integer frames (uint16, uint32, ...) are converted to float32 on reading, *before*
  any arithmetic, so a dark frame brighter than a sample pixel never wraps around.
* Non-finite pixels (NaN/inf) in a frame are repaired by the local 3 × 3 median when
  they are at most ``max_bad_fraction`` (default 1 %) of the frame; above that the
  frame is rejected with a :class:`~xspeckle.errors.ScanFormatError` that names the
  file, the dataset and the frame.
* A reference frame or flat field that is zero (or negative) everywhere is rejected.
* A truncated or corrupt file gives one line naming the file and the dataset.

:class:`FrameScan` offers the same reading interface over in-memory arrays or lazy
per-frame loaders (TIFF/EDF/NeXus importers), and :func:`save_scan` streams any
scan-like object into a scan file one angle at a time.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import h5py
import numpy as np

from xspeckle._version import __version__
from xspeckle.errors import GeometryError, InputError, ScanFormatError
from xspeckle.geometry import Geometry
from xspeckle.io.atomic import atomic_path

__all__ = ["Scan", "FrameScan", "open_scan", "write_scan", "save_scan", "open_h5", "parse_positions"]

#: default upper limit of the fraction of non-finite pixels repaired in one frame
MAX_BAD_FRACTION = 0.01


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """Open an HDF5 file with one clear error line for missing or corrupt files.

    Parameters
    ----------
    path : path-like
        File name.
    mode : str
        h5py mode (``"r"``, ``"r+"``, ``"w"``, ...).

    Returns
    -------
    h5py.File
    """
    p = Path(path)
    if mode in ("r", "r+") and not p.exists():
        raise ScanFormatError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise ScanFormatError(f"{p}: is a directory, expected an HDF5 file")
    try:
        return h5py.File(p, mode)
    except OSError as exc:
        if mode in ("r", "r+"):
            if p.stat().st_size == 0:
                raise ScanFormatError(f"{p}: the file is empty (0 bytes); re-copy or re-create it") from None
            raise ScanFormatError(
                f"{p}: not a readable HDF5 file ({str(exc).split(' (')[0]}); is it truncated or of another format?"
            ) from None
        raise ScanFormatError(f"{p}: cannot open for writing ({str(exc).split(' (')[0]})") from None


def parse_positions(positions: Sequence[int] | str | None, n: int, path: Any = "scan") -> list[int]:
    """Validate a selection of diffuser positions.

    Parameters
    ----------
    positions : sequence of int, str like ``"0,2,5"``, or None (= all)
    n : int
        Number of positions in the scan.
    path : str or Path
        Used in the error message.

    Returns
    -------
    list of int
    """
    if positions is None:
        return list(range(n))
    if isinstance(positions, str):
        items = [t.strip() for t in positions.split(",")]
        try:
            out = [int(t) for t in items]
        except ValueError:
            raise ScanFormatError(
                f"{path}: cannot parse positions {positions!r}; give comma-separated integers such as 0,2,5"
            ) from None
    else:
        out = [int(i) for i in positions]
    if not out:
        raise ScanFormatError(f"{path}: --positions selects no diffuser position")
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ScanFormatError(f"{path}: diffuser position(s) {bad} out of range; the scan has {n} (0..{n - 1})")
    if len(set(out)) != len(out):
        raise ScanFormatError(f"{path}: --positions lists a position twice: {out}")
    return out


_DATASET_HELP = {
    "exchange/data": "sample frames (P, A, H, W)",
    "exchange/data_reference": "reference speckle frames (P, H, W): diffuser in, sample out",
}


def _check_theta(t: np.ndarray, source: str) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(t)):
        raise ScanFormatError(f"{source}: theta contains NaN or inf; store the rotation angles in degrees")
    if t.size >= 10:
        span = float(t.max() - t.min())
        for full in (math.pi, 2 * math.pi):
            if abs(span - full * (t.size - 1) / t.size) < 0.02 * full or abs(span - full) < 0.02 * full:
                raise ScanFormatError(
                    f"{source}: theta spans {span:.4g}, which looks like radians; store degrees (multiply by 180/pi)"
                )
    return t


class _ScanBase:
    """Reading logic shared by :class:`Scan` and :class:`FrameScan`.

    Subclasses set ``path``, ``geometry``, ``n_positions``, ``n_angles``, ``frame_shape``,
    ``theta_deg`` and implement ``_raw_reference(i)``, ``_raw_sample(pos, angle)``,
    ``_raw_white()``, ``_raw_dark()`` returning raw arrays.
    """

    path: Any
    geometry: Geometry
    n_positions: int
    n_angles: int
    frame_shape: tuple[int, int]
    theta_deg: np.ndarray
    max_bad_fraction: float = MAX_BAD_FRACTION

    @property
    def _cache(self) -> dict:
        c = self.__dict__.get("_flat_dark_cache")
        if c is None:
            c = self.__dict__["_flat_dark_cache"] = {}
        return c

    #: names of the datasets the frames come from, for messages
    _names = {"data": "/exchange/data", "reference": "/exchange/data_reference",
              "white": "/exchange/data_white", "dark": "/exchange/data_dark"}

    # -------------------------------------------------------------- checking
    def _finite(self, a: np.ndarray, what: str) -> np.ndarray:
        """Return float32 *a* with few non-finite pixels repaired; raise when there are many."""
        a = np.asarray(a, dtype=np.float32)
        bad = ~np.isfinite(a)
        if not bad.any():
            return a
        frac = float(bad.mean())
        if frac > self.max_bad_fraction:
            raise ScanFormatError(
                f"{self.path}: {what} has {frac:.1%} NaN/inf pixels (more than {self.max_bad_fraction:.0%} can be "
                f"repaired); re-export that frame or remove it"
            )
        from xspeckle.preprocess import fix_bad_pixels

        return fix_bad_pixels(a)

    def _positive(self, a: np.ndarray, what: str) -> np.ndarray:
        if not (a.size and float(a.max()) > 0):
            raise ScanFormatError(f"{self.path}: {what} is zero (or negative) everywhere; check that the frame was recorded")
        return a

    # -------------------------------------------------------------- access
    @property
    def has_flat(self) -> bool:
        return self._raw_white() is not None

    @property
    def has_dark(self) -> bool:
        return self._raw_dark() is not None

    def positions(self, positions: Sequence[int] | str | None = None) -> list[int]:
        """Validate a selection of diffuser positions (``None`` = all)."""
        return parse_positions(positions, self.n_positions, self.path)

    def reference(self, positions: Sequence[int] | str | None = None) -> np.ndarray:
        """Raw reference frames ``(P', H, W)`` as float32 (finite; zero frames rejected)."""
        pos = self.positions(positions)
        out = np.empty((len(pos),) + tuple(self.frame_shape), np.float32)
        for j, i in enumerate(pos):
            what = f"{self._names['reference']} position {i}"
            out[j] = self._positive(self._finite(self._raw_reference(i), what), what)
        return out

    def sample(self, angle: int, positions: Sequence[int] | str | None = None) -> np.ndarray:
        """Raw sample frames of one angle, all selected positions: ``(P', H, W)`` float32 (finite)."""
        if not 0 <= int(angle) < self.n_angles:
            raise ScanFormatError(f"{self.path}: angle index {angle} out of range 0..{self.n_angles - 1}")
        pos = self.positions(positions)
        out = np.empty((len(pos),) + tuple(self.frame_shape), np.float32)
        for j, i in enumerate(pos):
            out[j] = self._finite(self._raw_sample(i, int(angle)), f"{self._names['data']} position {i} angle {angle}")
        return out

    def _mean(self, stack, what: str) -> np.ndarray:
        """Mean over the frames of ``(N, H, W)`` (or a single ``(H, W)``), one frame at a time, in float64.

        NaN/inf pixels are left out of the mean; a pixel bad in every frame is repaired afterwards.
        """
        if stack.ndim == 2:
            return self._finite(np.asarray(stack, dtype=np.float32), what)
        acc = np.zeros(tuple(stack.shape[-2:]), np.float64)
        cnt = np.zeros(acc.shape, np.int64)
        try:
            for i in range(stack.shape[0]):
                fr = np.asarray(stack[i], dtype=np.float64)
                ok = np.isfinite(fr)
                acc += np.where(ok, fr, 0.0)
                cnt += ok
        except (OSError, RuntimeError) as exc:
            raise ScanFormatError(
                f"{self.path}: cannot read {what} ({str(exc).split(' (')[0]}); the file is truncated or corrupt"
            ) from None
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
        return self._finite(m.astype(np.float32), what)

    def flat(self) -> np.ndarray | None:
        """Mean flat field ``(H, W)`` float32, or ``None`` (zero flats rejected).  Computed once, then cached."""
        if "flat" not in self._cache:
            w = self._raw_white()
            if w is None:
                self._cache["flat"] = None
            else:
                what = self._names["white"]
                self._cache["flat"] = self._positive(self._mean(w, what), what)
        return self._cache["flat"]

    def dark(self) -> np.ndarray | None:
        """Mean dark frame ``(H, W)`` float32, or ``None``.  Computed once, then cached."""
        if "dark" not in self._cache:
            d = self._raw_dark()
            self._cache["dark"] = None if d is None else self._mean(d, self._names["dark"])
        return self._cache["dark"]

    def intensity_scale(self) -> float:
        """Common divisor applied by the ``normalised_*`` methods when there is no flat field.

        The mean of the dark-subtracted reference frames over all positions (PWF notes §1),
        so that normalised intensities are ≈ 1 and sample/reference ratios are unchanged.
        Returns 1.0 when the scan has a flat field.
        """
        if "scale" not in self._cache:
            if self.has_flat:
                self._cache["scale"] = 1.0
            else:
                d = self.dark()
                dm = 0.0 if d is None else float(d.mean(dtype=np.float64))
                m = float(np.mean([self.reference([i]).mean(dtype=np.float64) for i in range(self.n_positions)])) - dm
                if not (np.isfinite(m) and m > 0):
                    raise ScanFormatError(
                        f"{self.path}: the dark-subtracted reference frames have mean {m:.4g} <= 0; check the dark frames"
                    )
                self._cache["scale"] = m
        return self._cache["scale"]

    def _flat_angles(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Degrees at which each flat and the references were taken (``/exchange/theta_white``, ``theta_reference``)."""
        return None, None

    def _flat_groups(self, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """Flats averaged per position of ``/exchange/theta_white``: ``(groups (G, H, W), degrees (G,))``, cached."""
        if "flat_groups" not in self._cache:
            from xspeckle.preprocess import flat_groups

            raw = self._raw_white()
            if raw is None:
                raise InputError(f"{self.path}: flat_mode={mode!r} needs flat fields (/exchange/data_white); the scan has none")
            pos = self._flat_angles()[0]
            if pos is None:
                raise InputError(
                    f"{self.path}: flat_mode={mode!r} needs /exchange/theta_white (the angle, in degrees, at which each "
                    "flat was taken); add it or use flat_mode='mean'"
                )
            self._cache["flat_groups"] = flat_groups(np.asarray(raw[()], np.float32), pos)
        return self._cache["flat_groups"]

    def effective_flat_dark(self, angle_deg: float | None = None, *,
                            flat_mode: str = "mean") -> tuple[np.ndarray, np.ndarray | None]:
        """The flat and dark that normalise this scan, ``preprocess.normalise(frames, flat, dark)`` ~ 1 (decided here only).

        Parameters
        ----------
        angle_deg : float, optional
            Rotation angle (degrees) of the frames to normalise; None for the reference frames.
        flat_mode : {"mean", "nearest", "linear"}
            ``"mean"``: the mean flat; without flats ``dark + intensity_scale()``, so that ``(I - dark) / (flat - dark)``
            divides by the mean dark-subtracted reference.  ``"nearest"``/``"linear"`` (flat drift): flats grouped by
            ``/exchange/theta_white`` (degrees), :func:`xspeckle.preprocess.flat_for_angle` at *angle_deg*; the
            references use ``/exchange/theta_reference`` (first value) when present, else the mean of the groups.

        Returns
        -------
        (flat (H, W) float32, dark (H, W) float32 or None)
        """
        from xspeckle.preprocess import FLAT_MODES, flat_for_angle

        if flat_mode not in FLAT_MODES:
            raise InputError(f"flat_mode must be one of {', '.join(FLAT_MODES)}, got {flat_mode!r}")
        if flat_mode == "mean":
            if "effective_flat" not in self._cache:
                flat, scale = self.flat(), np.float32(self.intensity_scale())
                if flat is None:  # (I - D) / ((D + s) - D): intensities ~ 1 whatever the detector's counts
                    flat = (self.dark() + scale) if self.has_dark else np.full(self.frame_shape, scale, np.float32)
                self._cache["effective_flat"] = flat
            return self._cache["effective_flat"], self.dark()
        groups, gpos = self._flat_groups(flat_mode)
        if angle_deg is not None:
            return flat_for_angle(groups, gpos, float(angle_deg), flat_mode), self.dark()
        ref_pos = self._flat_angles()[1]
        flat = groups.mean(axis=0) if ref_pos is None else flat_for_angle(groups, gpos, float(ref_pos.ravel()[0]), flat_mode)
        return flat, self.dark()

    def normalised_reference(self, positions=None, *, flat_mode: str = "mean") -> np.ndarray:
        """Reference frames dark-subtracted and flat-normalised (:meth:`effective_flat_dark`), ``(P', H, W)`` ~ 1."""
        from xspeckle.preprocess import normalise

        return normalise(self.reference(positions), *self.effective_flat_dark(None, flat_mode=flat_mode))

    def normalised_sample(self, angle: int, positions=None, *, flat_mode: str = "mean") -> np.ndarray:
        """Sample frames of one angle, dark-subtracted and flat-normalised (:meth:`effective_flat_dark` at its
        ``theta_deg``), ``(P', H, W)`` float32; without a flat field divided by :meth:`intensity_scale` instead."""
        from xspeckle.preprocess import normalise

        raw = self.sample(angle, positions)
        return normalise(raw, *self.effective_flat_dark(float(self.theta_deg[int(angle)]), flat_mode=flat_mode))

    def truth(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, positions={self.n_positions}, angles={self.n_angles}, "
            f"frame={self.frame_shape}, dtype={self.dtype}, {self.geometry.diffuser_position} diffuser)"
        )


class Scan(_ScanBase):
    """Lazy view of a scan file.

    Parameters
    ----------
    path : path-like
        HDF5 file in the layout above.
    max_bad_fraction : float, optional
        Largest fraction of NaN/inf pixels in one frame that is repaired (local median);
        frames with more are rejected.  Default 0.01.

    Attributes
    ----------
    geometry : Geometry
    n_positions, n_angles : int
    frame_shape : tuple (H, W)
    theta_deg : ndarray (A,) float64, rotation angles in degrees (zeros when absent and A = 1)
    """

    def __init__(self, path: str | os.PathLike, *, max_bad_fraction: float = MAX_BAD_FRACTION):
        self.path = Path(path)
        self.max_bad_fraction = float(max_bad_fraction)
        self._f = open_h5(self.path, "r")
        try:
            self._setup()
        except Exception:
            self._f.close()
            raise

    # ------------------------------------------------------------------ set-up
    def _dataset(self, name: str, required: bool = True):
        try:
            obj = self._f.get(name)
        except (OSError, RuntimeError, KeyError) as exc:
            raise ScanFormatError(f"{self.path}: cannot read /{name} ({exc}); the file may be corrupt") from None
        if obj is None:
            if required:
                what = _DATASET_HELP.get(name, "see interfaces.md, scan file")
                raise ScanFormatError(
                    f"{self.path}: missing dataset /{name} ({what}); add it, or convert TIFF/NeXus/DXchange input "
                    f"with 'xspeckle import'"
                )
            return None
        if not isinstance(obj, h5py.Dataset):
            raise ScanFormatError(f"{self.path}: /{name} is a group, expected a dataset")
        if obj.dtype.kind not in "uif":
            raise ScanFormatError(f"{self.path}: /{name} has dtype {obj.dtype}; expected integer or float frames")
        return obj

    def _setup(self) -> None:
        if "geometry" not in self._f:
            raise ScanFormatError(f"{self.path}: missing group /geometry with the set-up attributes (interfaces.md)")
        try:
            self.geometry = Geometry.from_attrs(self._f["geometry"].attrs, source=f"{self.path}:/geometry")
        except GeometryError as exc:
            msg = str(exc)
            if str(self.path) not in msg:  # name the file: "scan.h5:/geometry: energy_ev=25 is ..."
                msg = f"{self.path}:/geometry: {msg.removeprefix('geometry: ')}"
            raise GeometryError(msg) from None
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
        if n_pos == 0:
            raise ScanFormatError(f"{self.path}: /exchange/data_reference holds no frame")
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
        if n_ang == 0:
            raise ScanFormatError(f"{self.path}: /exchange/data holds no angle")
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
            if d is None:
                continue
            if d.ndim not in (2, 3) or tuple(d.shape[-2:]) != tuple(hw) or d.size == 0:
                raise ScanFormatError(
                    f"{self.path}: /exchange/{name} has shape {d.shape}, expected (N, {hw[0]}, {hw[1]})"
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
            t = self._read(th, (), "/exchange/theta").reshape(-1)
            if t.shape[0] != n_ang:
                raise ScanFormatError(f"{self.path}: /exchange/theta has {t.shape[0]} angles but the data has {n_ang}")
            self.theta_deg = _check_theta(t, f"{self.path}:/exchange/theta")

    def _read(self, ds, index, name: str) -> np.ndarray:
        """Read ``ds[index]``; a truncated or corrupt file becomes one clear line."""
        try:
            return np.asarray(ds[index])
        except (OSError, RuntimeError, ValueError) as exc:
            raise ScanFormatError(
                f"{self.path}: cannot read {name} ({str(exc).split(' (')[0]}); the file is truncated or corrupt, "
                f"copy or export it again"
            ) from None

    def _raw_reference(self, i: int) -> np.ndarray:
        if not self._ref_4d:
            return self._read(self._ref, (), "/exchange/data_reference")
        return self._read(self._ref, i, f"/exchange/data_reference[{i}]")

    def _raw_sample(self, pos: int, angle: int) -> np.ndarray:
        if self._data_4d is None:
            return self._read(self._data, (), "/exchange/data")
        if not self._data_4d:
            return self._read(self._data, angle, f"/exchange/data[{angle}]")
        return self._read(self._data, (pos, angle), f"/exchange/data[{pos}, {angle}]")

    def _raw_white(self):
        """The flat-field dataset (lazy h5py dataset, read frame by frame), or None."""
        return self._white

    def _raw_dark(self):
        """The dark-frame dataset (lazy h5py dataset), or None."""
        return self._dark

    def _flat_angles(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        ds = [self._f.get(f"exchange/{k}") for k in ("theta_white", "theta_reference")]
        return tuple(None if d is None else np.asarray(self._read(d, (), d.name), np.float64) for d in ds)

    def __reduce__(self):
        # picklable for process pools and Dask: re-open the file by name on the other side
        return (_reopen_scan, (str(self.path), self.max_bad_fraction))

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

    def truth(self) -> dict[str, np.ndarray]:
        """Ground truth from ``/truth`` (simulated scans), as a dict of arrays/attributes."""
        g = self._f.get("truth")
        if g is None:
            return {}
        out: dict[str, Any] = {k: self._read(g[k], (), f"/truth/{k}") for k in g if isinstance(g[k], h5py.Dataset)}
        out.update({f"attr:{k}": v for k, v in g.attrs.items()})
        return out

    def close(self) -> None:
        self._f.close()


def _reopen_scan(path: str, max_bad_fraction: float) -> "Scan":
    return Scan(path, max_bad_fraction=max_bad_fraction)


class _Indexed:
    """Lazy frame list: ``frames[i]`` -> ``source[indices[i]]`` (h5py dataset, memmap, ...)."""

    def __init__(self, source, indices: Sequence[int]):
        self.source = source
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.source[self.indices[i]])


class FrameScan(_ScanBase):
    """Scan-compatible view over arrays or lazy frame loaders (importers build these).

    Parameters
    ----------
    samples : array (P, A, H, W) or sequence (length P) of sequences (length A) of frames
        Per position, an indexable returning one ``(H, W)`` frame per angle (an array,
        an h5py dataset, or any object with ``__len__``/``__getitem__``).
    reference : array (P, H, W) or sequence of P ``(H, W)`` frames
    geometry : Geometry
    flat, dark : array (N, H, W) or (H, W), optional
    theta_deg : array (A,), optional (zeros when A = 1)
    source : str
        Description used in error messages (e.g. the sidecar file name).
    names : dict, optional
        Override the frame descriptions used in messages (keys data/reference/white/dark).
    attrs : dict, optional
        Root attributes to carry into a converted scan file.
    max_bad_fraction : float
        See :class:`Scan`.
    handles : sequence, optional
        Open files (h5py, TiffFile, ...) closed by :meth:`close`.
    """

    def __init__(self, *, samples, reference, geometry: Geometry, flat=None, dark=None, theta_deg=None,
                 source: str = "<arrays>", names: Mapping[str, str] | None = None,
                 attrs: Mapping[str, Any] | None = None, max_bad_fraction: float = MAX_BAD_FRACTION,
                 handles: Sequence[Any] = ()):
        self.path = source
        self._handles = list(handles)
        self.max_bad_fraction = float(max_bad_fraction)
        if not isinstance(geometry, Geometry):
            raise ScanFormatError(f"{source}: geometry must be an xspeckle.Geometry")
        self.geometry = geometry
        self._names = dict(self._names, **(names or {}))
        self._attrs = dict(attrs or {})
        self._samples = list(samples)
        self._refs = list(reference) if not (isinstance(reference, np.ndarray) and reference.ndim == 2) else [reference]
        if not self._refs or not self._samples:
            raise ScanFormatError(f"{source}: no reference or no sample frame found")
        if len(self._refs) != len(self._samples):
            raise ScanFormatError(
                f"{source}: {len(self._refs)} reference frame(s) but {len(self._samples)} sample position(s); "
                f"give one reference per diffuser position"
            )
        n_ang = {len(s) for s in self._samples}
        if len(n_ang) != 1 or 0 in n_ang:
            raise ScanFormatError(f"{source}: every diffuser position needs the same number of angles, got {sorted(n_ang)}")
        self.n_positions = len(self._refs)
        self.n_angles = n_ang.pop()
        first = np.asarray(self._refs[0])
        if first.ndim != 2:
            raise ScanFormatError(f"{source}: reference frames must be 2-D images, got shape {first.shape}")
        self.frame_shape = (int(first.shape[0]), int(first.shape[1]))
        if min(self.frame_shape) < 8:
            raise ScanFormatError(f"{source}: frames of {self.frame_shape} pixels are too small (need at least 8 x 8)")
        s0 = np.asarray(self._samples[0][0])
        if s0.shape != self.frame_shape:
            raise ScanFormatError(
                f"{source}: sample frames are {s0.shape} but reference frames are {self.frame_shape}; "
                f"they must have the same (H, W)"
            )
        self._dtype = np.result_type(s0.dtype, np.float32) if s0.dtype.kind == "f" else s0.dtype
        self._white = None if flat is None else np.asarray(flat)
        self._dark = None if dark is None else np.asarray(dark)
        for key, d in (("white", self._white), ("dark", self._dark)):
            if d is not None and (d.ndim not in (2, 3) or tuple(d.shape[-2:]) != self.frame_shape):
                raise ScanFormatError(f"{source}: {self._names[key]} has shape {d.shape}, expected frames of {self.frame_shape}")
        if theta_deg is None:
            if self.n_angles > 1:
                raise ScanFormatError(f"{source}: rotation angles (theta, degrees) are required for {self.n_angles} angles")
            self.theta_deg = np.zeros(1)
        else:
            t = np.asarray(theta_deg, dtype=np.float64).reshape(-1)
            if t.size != self.n_angles:
                raise ScanFormatError(f"{source}: {t.size} rotation angles given but there are {self.n_angles} projections")
            self.theta_deg = _check_theta(t, source)

    def _frame(self, frame, what: str) -> np.ndarray:
        a = np.asarray(frame)
        if a.shape != self.frame_shape:
            raise ScanFormatError(f"{self.path}: {what} has shape {a.shape}, expected {self.frame_shape}")
        if a.dtype.kind not in "uif":
            raise ScanFormatError(f"{self.path}: {what} has dtype {a.dtype}; expected integer or float frames")
        return a

    def _raw_reference(self, i: int) -> np.ndarray:
        return self._frame(self._refs[i], f"{self._names['reference']} position {i}")

    def _raw_sample(self, pos: int, angle: int) -> np.ndarray:
        return self._frame(self._samples[pos][angle], f"{self._names['data']} position {pos} angle {angle}")

    def _raw_white(self):
        return self._white

    def _raw_dark(self):
        return self._dark

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._dtype)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    def close(self) -> None:
        for h in self._handles:
            try:
                h.close()
            except Exception:  # already closed
                pass
        self._handles = []


def open_scan(path: str | os.PathLike, **kwargs: Any) -> Scan:
    """Open a scan file (see :class:`Scan`)."""
    return Scan(path, **kwargs)


def _check_write_array(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "uif":
        raise ScanFormatError(f"write_scan: {name} has dtype {a.dtype}; give uint16 or float32 frames")
    if a.dtype.kind == "f" and a.dtype.itemsize > 4:
        a = a.astype(np.float32)
    return a


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
    path : path-like
        Output file; written under a temporary name and renamed on success.
    data : array (P, A, H, W) or (A, H, W)
        Sample frames (uint16 or float32; float64 is stored as float32).
    reference : array (P, H, W) or (H, W)
        Reference speckle frames.
    geometry : Geometry
    flat, dark : array (F, H, W) or (H, W), optional
    theta_deg : array (A,), optional
        Rotation angles in degrees.
    truth : mapping, optional
        Arrays go to datasets under ``/truth``; scalars and strings to its attributes.
    attrs : mapping, optional
        Root attributes.
    overwrite : bool
        Replace an existing file.
    compression : str, optional
        h5py compression filter (``"gzip"``, ``"lzf"``).

    Returns
    -------
    Path of the written file.
    """
    data = _check_write_array(data, "data")
    reference = _check_write_array(reference, "reference")
    if not isinstance(geometry, Geometry):
        raise ScanFormatError("write_scan: geometry must be an xspeckle.Geometry")
    if data.ndim not in (3, 4) and not (data.ndim == 2 and reference.ndim == 2):
        raise ScanFormatError(f"write_scan: data has shape {data.shape}; expected (P, A, H, W) or (A, H, W)")
    if reference.ndim not in (2, 3):
        raise ScanFormatError(f"write_scan: reference has shape {reference.shape}; expected (P, H, W) or (H, W)")
    if data.shape[-2:] != reference.shape[-2:]:
        raise ScanFormatError(f"write_scan: data frames {data.shape[-2:]} and reference frames {reference.shape[-2:]} differ")
    if data.ndim == 4 and (reference.ndim != 3 or reference.shape[0] != data.shape[0]):
        raise ScanFormatError(
            f"write_scan: data has {data.shape[0]} positions but reference has shape {reference.shape}; give (P, H, W)"
        )
    if data.ndim == 3 and reference.ndim == 3 and reference.shape[0] != 1:
        raise ScanFormatError("write_scan: (A, H, W) data needs a single reference frame; store (P, A, H, W) data")
    n_ang = data.shape[-3] if data.ndim >= 3 else 1
    if theta_deg is not None and np.asarray(theta_deg).size != n_ang:
        raise ScanFormatError(f"write_scan: theta_deg has {np.asarray(theta_deg).size} angles, data has {n_ang}")
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
            ex["data_reference"].attrs["units"] = "counts"
            if flat is not None:
                flat = _check_write_array(flat, "flat")
                ex.create_dataset("data_white", data=flat[None] if flat.ndim == 2 else flat, compression=compression)
                ex["data_white"].attrs["units"] = "counts"
            if dark is not None:
                dark = _check_write_array(dark, "dark")
                ex.create_dataset("data_dark", data=dark[None] if dark.ndim == 2 else dark, compression=compression)
                ex["data_dark"].attrs["units"] = "counts"
            if theta_deg is not None:
                ex.create_dataset("theta", data=np.asarray(theta_deg, dtype=np.float64).reshape(-1))
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


def save_scan(
    scan,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    compression: str | None = None,
    dtype: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Stream any scan-like object (:class:`Scan`, :class:`FrameScan`) into a scan file.

    Frames are copied one angle (all positions) at a time, so memory stays at one
    ``(P, H, W)`` stack.  The output is written atomically.

    Parameters
    ----------
    scan : Scan or FrameScan
    path : path-like
        Output scan file.
    overwrite : bool
        Replace an existing file.
    compression : str, optional
        h5py compression filter for the frame datasets.
    dtype : numpy dtype, optional
        Storage dtype of the frames; default: uint16 when the source is integer with
        values that fit, else float32.
    progress : callable(done, total), optional
        Called after each angle.

    Returns
    -------
    Path of the written file.
    """
    p, a = scan.n_positions, scan.n_angles
    h, w = scan.frame_shape
    if dtype is None:
        src = np.dtype(scan.dtype)
        dtype = np.uint16 if (src.kind == "u" and src.itemsize <= 2) else np.float32
    dtype = np.dtype(dtype)
    ref = scan.reference()

    def cast(x: np.ndarray, what: str) -> np.ndarray:
        if dtype.kind == "u":
            info = np.iinfo(dtype)
            if x.size and (float(x.min()) < info.min or float(x.max()) > info.max):
                raise ScanFormatError(
                    f"{scan.path}: {what} has values outside the {dtype} range {info.min}..{info.max}; store as float32"
                )
            return np.rint(x).astype(dtype)
        return x.astype(dtype)

    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["xspeckle_version"] = __version__
            for k, v in scan.attrs.items():
                if k != "xspeckle_version":
                    f.attrs[k] = v
            ex = f.create_group("exchange")
            d = ex.create_dataset("data", shape=(p, a, h, w), dtype=dtype, chunks=(1, 1, h, w), compression=compression)
            d.attrs["units"] = "counts"
            r = ex.create_dataset("data_reference", data=cast(ref, "reference"), compression=compression)
            r.attrs["units"] = "counts"
            for key, arr in (("data_white", scan._raw_white()), ("data_dark", scan._raw_dark())):
                if arr is not None:
                    arr = np.stack([np.asarray(arr[i]) for i in range(arr.shape[0])]) if arr.ndim == 3 else np.asarray(arr)
                    arr = arr[None] if arr.ndim == 2 else arr
                    ex.create_dataset(key, data=cast(arr.astype(np.float32), key), compression=compression)
                    ex[key].attrs["units"] = "counts"
            if a > 1 or np.any(scan.theta_deg):
                ex.create_dataset("theta", data=np.asarray(scan.theta_deg, np.float64))
                ex["theta"].attrs["units"] = "degree"
            g = f.create_group("geometry")
            for k, v in scan.geometry.to_attrs().items():
                g.attrs[k] = v
            for i in range(a):
                d[:, i] = cast(scan.sample(i), f"sample frames of angle {i}")
                if progress is not None:
                    progress(i + 1, a)
    return Path(path)
