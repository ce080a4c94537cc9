"""Import stacks of TIFF (or EDF, or .npy) frames described by a small YAML/JSON sidecar.

Sidecar format (YAML shown; the same keys in JSON work).  Paths are relative to the
sidecar's folder; each entry is a file name, a glob pattern, or a list of them, and
matches are taken in natural order (``img_2`` before ``img_10``).  A file may hold one
frame or a multi-page stack; all frames are concatenated in order::

    # xspeckle import sidecar, version 1
    geometry:                       # SI units, exactly the /geometry attributes
      energy_ev: 25000
      pixel_size_m: 6.5e-6
      sample_detector_distance_m: 0.7
      diffuser_position: upstream   # or downstream (then diffuser_detector_distance_m)
    reference: "ReferenceSpeckle_*.tif"   # P frames: one per diffuser position
    sample: "SamplePlusSpeckle_*.tif"     # P x A frames (see sample_order), or a list of P entries
    sample_order: position-major          # position-major (default) | angle-major
    flat: Flatfield.tif                   # optional: no diffuser, no sample (averaged)
    dark: "dark_*.tif"                    # optional (averaged)
    theta_deg: {start: 0, step: 0.225}    # list, {start, step} or {start, stop[, endpoint]}; needed if A > 1
    attrs: {title: my scan}               # optional root attributes of the scan file

``sample`` as a list of lists (``[[pos0 frames...], [pos1 frames...]]``) gives every
diffuser position its own file list of A frames.  The number of angles A is the
number of sample frames divided by P.  Unknown keys are rejected (typos).

Use :func:`read_sidecar` to get a Scan-compatible :class:`~xspeckle.io.scan.FrameScan`
and :func:`import_sidecar` (``xspeckle import SIDECAR.yaml OUT.h5``) to write a scan file.
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from xspeckle.errors import GeometryError, ScanFormatError
from xspeckle.geometry import Geometry
from xspeckle.io.scan import FrameScan, save_scan

__all__ = [
    "SIDECAR_KEYS",
    "FrameList",
    "open_frame_file",
    "load_sidecar",
    "geometry_from_mapping",
    "read_sidecar",
    "import_sidecar",
]

SIDECAR_KEYS = ("geometry", "reference", "sample", "sample_order", "flat", "dark", "theta_deg", "attrs", "version")


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


class _TiffFrames:
    """Lazy pages of one TIFF file."""

    def __init__(self, path: Path):
        import tifffile

        self.path = path
        try:
            self._tf = tifffile.TiffFile(str(path))
            series = self._tf.series[0]
            shape = tuple(series.shape)
            axes = str(getattr(series, "axes", ""))
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error ...
            raise ScanFormatError(f"{path}: not a readable TIFF file ({type(exc).__name__}: {exc})") from None
        # planar-separate samples (axes "SYX", what tifffile writes for a 3- or 4-frame stack without
        # photometric="minisblack") are taken as frames; contiguous colour ("YXS") is rejected.
        if axes.endswith("S") or len(shape) < 2:
            self._tf.close()
            raise ScanFormatError(f"{path}: TIFF of shape {shape} (axes {axes}) is not a grey-level frame or stack")
        if len(shape) == 2:
            self._pages = None
            self.n_frames = 1
        else:
            self._pages = list(self._tf.pages)
            self.n_frames = int(np.prod(shape[:-2]))
            if len(self._pages) != self.n_frames:
                # e.g. ImageJ hyperstacks stored in one page sequence: fall back to reading all
                self._all = series.asarray().reshape((-1,) + shape[-2:])
            else:
                self._all = None
        self.frame_shape = tuple(shape[-2:])

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, i: int) -> np.ndarray:
        try:
            if self._pages is None:
                return self._tf.asarray()
            if self._all is not None:
                return self._all[i]
            return self._pages[i].asarray()
        except Exception as exc:
            raise ScanFormatError(f"{self.path}: cannot read TIFF frame {i} ({type(exc).__name__}: {exc})") from None

    def close(self) -> None:
        self._tf.close()


class _NpyFrames:
    def __init__(self, path: Path):
        try:
            a = np.load(path, mmap_mode="r")
        except Exception as exc:
            raise ScanFormatError(f"{path}: not a readable .npy file ({exc})") from None
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ScanFormatError(f"{path}: array of shape {a.shape}; expected (H, W) or (N, H, W)")
        self._a = a
        self.path = path
        self.n_frames = a.shape[0]

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self._a[i])

    def close(self) -> None:
        pass


def open_frame_file(path: str | os.PathLike):
    """Open one frame file lazily by extension: ``.tif/.tiff``, ``.edf`` (fabio), ``.npy``.

    Returns
    -------
    object with ``len()``, ``[i] -> (H, W) ndarray`` and ``close()``.
    """
    p = Path(path)
    if not p.is_file():
        raise ScanFormatError(f"{p}: no such file")
    ext = p.suffix.lower()
    if ext in (".tif", ".tiff"):
        return _TiffFrames(p)
    if ext == ".edf":
        from xspeckle.io.edf import EDFFile

        return EDFFile(p)
    if ext == ".npy":
        return _NpyFrames(p)
    raise ScanFormatError(f"{p}: unsupported frame file type {ext!r}; use .tif, .tiff, .edf or .npy")


class FrameList:
    """Frames from a list of files (each one frame or a stack), concatenated, read lazily.

    Parameters
    ----------
    files : sequence of path-like
    what : str
        Description for error messages (``"reference"``, ``"sample"``...).
    """

    def __init__(self, files: Sequence[str | os.PathLike], what: str = "frames"):
        self.what = what
        self.files = [open_frame_file(f) for f in files]
        self._index: list[tuple[int, int]] = [(k, i) for k, f in enumerate(self.files) for i in range(len(f))]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> np.ndarray:
        k, j = self._index[i]
        return self.files[k][j]

    def sub(self, indices: Sequence[int]) -> "_SubList":
        return _SubList(self, indices)

    def stack(self) -> np.ndarray:
        """All frames as one ``(N, H, W)`` array."""
        frames = [self[i] for i in range(len(self))]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise ScanFormatError(f"{self.what} frames have different shapes: {sorted(shapes)}")
        return np.stack(frames)

    def close(self) -> None:
        for f in self.files:
            f.close()


class _SubList:
    def __init__(self, base: FrameList, indices: Sequence[int]):
        self.base = base
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.base[self.indices[i]]


def _expand(entry: Any, base: Path, key: str, source: Path) -> list[Path]:
    items = entry if isinstance(entry, (list, tuple)) else [entry]
    out: list[Path] = []
    for it in items:
        if not isinstance(it, (str, os.PathLike)):
            raise ScanFormatError(f"{source}: {key} entries must be file names or glob patterns, got {it!r}")
        pat = Path(it)
        pat = pat if pat.is_absolute() else base / pat
        if any(c in str(it) for c in "*?["):
            hits = sorted((Path(h) for h in glob.glob(str(pat))), key=_natural_key)
            if not hits:
                raise ScanFormatError(f"{source}: {key} pattern {it!r} matches no file in {pat.parent}")
            out.extend(hits)
        else:
            if not pat.is_file():
                raise ScanFormatError(f"{source}: {key} file {pat} does not exist")
            out.append(pat)
    return out


def load_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON sidecar into a dict (one clear error line on syntax errors)."""
    p = Path(path)
    if not p.is_file():
        raise ScanFormatError(f"{p}: no such file")
    text = p.read_text(errors="replace")
    try:
        if p.suffix.lower() == ".json":
            d = json.loads(text)
        else:
            import yaml

            d = yaml.safe_load(text)
    except Exception as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        if problem and mark is not None:  # YAML: "line 2: expected ',' or ']'"
            msg = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
        else:
            msg = " ".join(str(exc).split())[:200]
        raise ScanFormatError(f"{p}: cannot parse the sidecar ({msg})") from None
    if not isinstance(d, dict):
        raise ScanFormatError(f"{p}: the sidecar must be a mapping of keys (geometry, reference, sample, ...)")
    return d


def geometry_from_mapping(d: Mapping[str, Any], source: Any) -> Geometry:
    """Build a :class:`Geometry` from a sidecar's ``geometry:`` section (or its top level).

    Unknown keys are rejected so that typos such as ``energy_kev`` do not pass silently.
    """
    g = d.get("geometry", d)
    if not isinstance(g, Mapping):
        raise GeometryError(f"{source}: geometry must be a mapping of SI attributes (energy_ev, pixel_size_m, ...)")
    from dataclasses import fields

    known = {f.name for f in fields(Geometry)}
    if "geometry" in d:
        unknown = sorted(set(g) - known)
        if unknown:
            raise GeometryError(f"{source}: unknown geometry key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return Geometry.from_attrs({k: v for k, v in g.items() if k in known}, source=str(source))


def _theta(spec: Any, n: int, source: Path) -> np.ndarray | None:
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        try:
            start = float(spec.get("start", 0.0))
            if "step" in spec:
                return start + float(spec["step"]) * np.arange(n)
            if "stop" in spec:
                return np.linspace(start, float(spec["stop"]), n, endpoint=bool(spec.get("endpoint", False)))
        except (TypeError, ValueError):
            raise ScanFormatError(f"{source}: theta_deg values must be numbers") from None
        raise ScanFormatError(f"{source}: theta_deg mapping needs 'step' or 'stop' (degrees)")
    try:
        return np.asarray(spec, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ScanFormatError(f"{source}: theta_deg must be a list of numbers (degrees)") from None


def read_sidecar(path: str | os.PathLike, **kwargs: Any) -> FrameScan:
    """Open the frames described by a sidecar as a Scan-compatible :class:`FrameScan`.

    Parameters
    ----------
    path : path-like
        YAML (``.yaml``/``.yml``) or JSON sidecar, format in the module docstring.
    **kwargs
        Passed to :class:`FrameScan` (e.g. ``max_bad_fraction``).

    Returns
    -------
    FrameScan (close it, or use it as a context manager).
    """
    src = Path(path)
    d = load_sidecar(src)
    unknown = sorted(set(d) - set(SIDECAR_KEYS))
    if unknown:
        raise ScanFormatError(f"{src}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(SIDECAR_KEYS)}")
    for key in ("geometry", "reference", "sample"):
        if key not in d or d[key] in (None, [], ""):
            raise ScanFormatError(f"{src}: missing key {key!r} (see xspeckle.io.tiff for the sidecar format)")
    geometry = geometry_from_mapping(d, src)
    base = src.parent
    handles: list[FrameList] = []
    try:
        refs = FrameList(_expand(d["reference"], base, "reference", src), "reference")
        handles.append(refs)
        p = len(refs)
        order = d.get("sample_order", "position-major")
        if order not in ("position-major", "angle-major"):
            raise ScanFormatError(f"{src}: sample_order must be 'position-major' or 'angle-major', got {order!r}")
        sample_entry = d["sample"]
        if isinstance(sample_entry, list) and sample_entry and all(isinstance(e, list) for e in sample_entry):
            if len(sample_entry) != p:
                raise ScanFormatError(f"{src}: sample lists {len(sample_entry)} positions but there are {p} reference frames")
            samples = []
            for k, e in enumerate(sample_entry):
                fl = FrameList(_expand(e, base, f"sample[{k}]", src), f"sample position {k}")
                handles.append(fl)
                samples.append(fl)
        else:
            fl = FrameList(_expand(sample_entry, base, "sample", src), "sample")
            handles.append(fl)
            n = len(fl)
            if n % p:
                raise ScanFormatError(
                    f"{src}: {n} sample frames cannot be split over {p} diffuser positions (one reference each); "
                    f"give P x A sample frames"
                )
            a = n // p
            if order == "position-major":
                samples = [fl.sub(range(k * a, (k + 1) * a)) for k in range(p)]
            else:
                samples = [fl.sub(range(k, n, p)) for k in range(p)]
        n_ang = len(samples[0])
        flat = dark = None
        if d.get("flat"):
            ff = FrameList(_expand(d["flat"], base, "flat", src), "flat")
            flat = ff.stack()
            ff.close()
        if d.get("dark"):
            dd = FrameList(_expand(d["dark"], base, "dark", src), "dark")
            dark = dd.stack()
            dd.close()
        theta = _theta(d.get("theta_deg"), n_ang, src)
        attrs = d.get("attrs") or {}
        if not isinstance(attrs, Mapping):
            raise ScanFormatError(f"{src}: attrs must be a mapping")
        attrs = {str(k): (v if isinstance(v, (int, float, str)) else json.dumps(v)) for k, v in attrs.items()}
        attrs.setdefault("imported_from", str(src))
        return FrameScan(
            samples=samples, reference=[refs[i] for i in range(p)], geometry=geometry, flat=flat, dark=dark,
            theta_deg=theta, source=str(src), attrs=attrs, handles=handles,
            names={"data": "sample frame", "reference": "reference frame", "white": "flat", "dark": "dark"},
            **kwargs,
        )
    except Exception:
        for h in handles:
            h.close()
        raise


def import_sidecar(
    sidecar: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    overwrite: bool = False,
    compression: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Convert the frames described by a sidecar into a scan file (``interfaces.md``).

    Parameters
    ----------
    sidecar : path-like
        YAML/JSON sidecar (module docstring).
    out_path : path-like
        Output scan file, written atomically.
    overwrite : bool
    compression : str, optional
        h5py compression (``"gzip"``).
    progress : callable(done, total), optional

    Returns
    -------
    Path of the scan file.
    """
    with read_sidecar(sidecar) as scan:
        return save_scan(scan, out_path, overwrite=overwrite, compression=compression, progress=progress)
