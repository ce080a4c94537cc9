"""The resumable retrieval writer: one angle at a time into a hidden partial file.

``xspeckle retrieve`` writes ``dir/.OUT.h5.partial`` (:func:`partial_path`) and renames it
onto ``OUT.h5`` when every angle is in (:meth:`RetrievalWriter.commit`), so the final name
never holds a partial or corrupt file.  Beside the retrieval layout of ``interfaces.md``
(:mod:`xspeckle.io.results`) the partial file holds what a resumed run needs::

    /progress/angles_done   (A,) uint8   1 once an angle's maps are on disk
    /progress/warnings      (A,) bytes   the retriever's warning lines of each angle
    /progress attribute input_hash       SHA-256 of the inputs (:func:`input_hash`)

and the per-angle diagnostics ``/retrieval/iterations`` (int) and ``/retrieval/stop_reason``
(string) of iterative methods, and ``/drift/shifts_px`` ``(A, P, 2)`` with diffuser drift
correction.  A run started again with the same inputs reopens the file
(:meth:`RetrievalWriter.try_open`) and skips the finished angles; other inputs, or a
damaged file, start fresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import h5py
import numpy as np

from xspeckle._version import __version__
from xspeckle.errors import OutputError, ScanFormatError
from xspeckle.io.atomic import check_output_path
from xspeckle.io.results import RETRIEVAL_COMPONENTS, RETRIEVAL_UNITS, json_text

__all__ = ["RetrievalWriter", "partial_path", "log_path", "input_hash", "method_ref", "DIAGNOSTIC_KEYS"]

#: per-angle diagnostics a retriever may return beside its maps (interfaces.md: ``iterations``
#: int (A,), ``stop_reason`` string (A,); ``warnings``: list of one-line messages, summarised in
#: the root attribute ``warnings`` and on stderr)
DIAGNOSTIC_KEYS = ("iterations", "stop_reason", "warnings")
#: bytes stored per angle for a stop reason and for the warning lines
_REASON_BYTES = 24
_WARNING_BYTES = 480


def partial_path(out_path: str | os.PathLike) -> Path:
    """Hidden partial file of an output: ``dir/.NAME.partial`` (resume state lives there)."""
    p = Path(out_path)
    return p.with_name(f".{p.name}.partial")


def log_path(out_path: str | os.PathLike) -> Path:
    """JSON log written next to an output: ``dir/NAME.log.json``."""
    p = Path(out_path)
    return p.with_name(f"{p.name}.log.json")


def method_ref(method: Any) -> str:
    """A method as text: its registry name, or ``module.QualifiedName`` of a Retriever class."""
    if isinstance(method, str):
        return method
    return f"{method.__module__}.{method.__qualname__}"


def input_hash(scan_path: str | os.PathLike, *, method: Any, positions: Sequence[int], device: str,
               params: Mapping[str, Any] | None) -> str:
    """SHA-256 of what determines a retrieval's result (resume only when it matches).

    Parameters
    ----------
    scan_path : path-like
        Scan file; its resolved path, size and modification time enter the hash.
    method : str or Retriever subclass
    positions : sequence of int
        Selected diffuser positions.
    device : {"cpu", "cuda"}
        GPU results are not bitwise equal to CPU ones, so the device is part of the hash.
    params : mapping
        Method parameters as given by the user.

    Returns
    -------
    str, 64 hex digits.
    """
    p = Path(scan_path).resolve()
    st = p.stat()
    blob = json_text({
        "scan": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "method": method_ref(method),
        "positions": [int(i) for i in positions], "device": device, "params": dict(params or {}),
        "xspeckle_version": __version__,
    })
    return hashlib.sha256(blob.encode()).hexdigest()


def _create_map(group: h5py.Group, name: str, shape: tuple[int, ...], n_angles: int) -> None:
    """``/retrieval/<name>`` float32, one angle per chunk, every chunk allocated now (no later metadata change)."""
    if name not in RETRIEVAL_UNITS:
        raise ScanFormatError(
            f"retriever output {name!r} is not one of {', '.join(RETRIEVAL_UNITS)} (interfaces.md, retrieval file)"
        )
    if name in RETRIEVAL_COMPONENTS:
        nc = len(RETRIEVAL_COMPONENTS[name])
        if len(shape) != 3 or shape[0] != nc:
            raise ScanFormatError(f"retriever output {name} has shape {shape}; expected ({nc}, H, W)")
        full, chunks = (shape[0], n_angles) + tuple(shape[1:]), (1, 1) + tuple(shape[1:])
    else:
        if len(shape) != 2:
            raise ScanFormatError(f"retriever output {name} has shape {shape}; expected (H, W)")
        full, chunks = (n_angles,) + tuple(shape), (1,) + tuple(shape)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(chunks)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple(full)
    d = h5py.Dataset(h5py.h5d.create(group.id, name.encode(), h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl))
    d.attrs["units"] = RETRIEVAL_UNITS[name]
    if name in RETRIEVAL_COMPONENTS:
        d.attrs["components"] = ",".join(RETRIEVAL_COMPONENTS[name])


class RetrievalWriter:
    """The resumable partial output: ``/retrieval/*`` allocated up front, ``/progress``.

    Every chunk is allocated when the file is created (``H5D_ALLOC_TIME_EARLY``), so
    writing an angle later only writes raw data at fixed places and never changes the
    file's metadata: a process killed in the middle of a write leaves at worst that
    angle's data torn, and that angle is not marked done.  Data is flushed *before* the
    done flag is set (and flushed again).

    Make one with :meth:`create` (new file) or :meth:`try_open` (resume); write angles
    with :meth:`write`; end with :meth:`finalise` and :meth:`commit`.

    Attributes
    ----------
    path : Path
        The partial file.
    done : ndarray (A,) bool
        Angles already written.
    names : dict name -> file shape
        The maps under ``/retrieval``.

    Examples
    --------
    >>> w = RetrievalWriter.create(partial_path(out), shapes={"phase": (H, W)}, n_angles=A,  # doctest: +SKIP
    ...                            method="mist", parameters={}, pipeline={}, geometry_attrs={},
    ...                            theta_deg=theta, digest=h)
    >>> for i in range(A):                                                               # doctest: +SKIP
    ...     if not w.done[i]: w.write(i, maps_of_angle(i))
    >>> w.commit(out)                                                                    # doctest: +SKIP
    """

    def __init__(self, f: h5py.File, path: Path):
        self.f = f
        self.path = Path(path)
        self._done = f["progress/angles_done"]
        self.done = np.asarray(self._done[()], dtype=bool)
        self.names = {k: tuple(f["retrieval"][k].shape) for k in f["retrieval"] if k not in DIAGNOSTIC_KEYS}

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | os.PathLike, *, shapes: Mapping[str, tuple[int, ...]], n_angles: int, method: str,
               parameters: Mapping[str, Any], pipeline: Mapping[str, Any], geometry_attrs: Mapping[str, Any],
               theta_deg: np.ndarray, digest: str, diag_keys: Iterable[str] = ()) -> "RetrievalWriter":
        """Create the partial file (an existing one is replaced).

        Parameters
        ----------
        path : path-like
            The partial file (:func:`partial_path` of the output).
        shapes : mapping name -> per-angle shape
            ``(H, W)`` for maps, ``(C, H, W)`` for ``diffusion_tensor``/``displacement``.
        n_angles : int
            A.
        method : str
            Root attribute ``method``.
        parameters, pipeline : mapping
            Root attributes ``parameters`` and ``pipeline`` (JSON text).
        geometry_attrs : mapping
            Copied verbatim to the attributes of ``/geometry``.
        theta_deg : array (A,)
            ``/exchange/theta`` in degrees.
        digest : str
            :func:`input_hash` of the run (``/progress`` attribute ``input_hash``).
        diag_keys : iterable of str
            Diagnostics the retriever returns: ``iterations`` and ``stop_reason`` get datasets.

        Returns
        -------
        RetrievalWriter
        """
        path = Path(path)
        if path.exists():
            path.unlink()
        f = h5py.File(path, "w")
        try:
            f.attrs["method"] = str(method)
            f.attrs["xspeckle_version"] = __version__
            f.attrs["parameters"] = json_text(dict(parameters))
            f.attrs["pipeline"] = json_text(dict(pipeline))
            ex = f.create_group("exchange")
            ex.create_dataset("theta", data=np.asarray(theta_deg, np.float64).reshape(-1))
            ex["theta"].attrs["units"] = "degree"
            g = f.create_group("geometry")
            for k, v in geometry_attrs.items():
                g.attrs[k] = v
            r = f.create_group("retrieval")
            for name, shp in shapes.items():
                _create_map(r, name, tuple(shp), n_angles)
            if "iterations" in diag_keys:
                d = r.create_dataset("iterations", data=np.full(n_angles, -1, np.int32))
                d.attrs["units"] = "1"
            if "stop_reason" in diag_keys:
                d = r.create_dataset("stop_reason", data=np.zeros(n_angles, f"S{_REASON_BYTES}"))
                d.attrs["units"] = "string"
            p = f.create_group("progress")
            p.attrs["input_hash"] = digest
            p.create_dataset("angles_done", data=np.zeros(n_angles, np.uint8))
            # warnings of each angle (utf-8, messages joined by newlines), summarised when the run ends
            p.create_dataset("warnings", data=np.zeros(n_angles, f"S{_WARNING_BYTES}"))
            f.flush()
        except BaseException:
            f.close()
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return cls(f, path)

    @classmethod
    def try_open(cls, path: str | os.PathLike, digest: str, n_angles: int) -> tuple["RetrievalWriter | None", str]:
        """Open a partial file to resume; ``(None, reason)`` when it cannot be used.

        Raises
        ------
        OutputError
            When another process holds the file open for writing (HDF5 lock).
        """
        path = Path(path)
        try:
            f = h5py.File(path, "r+")
        except OSError as exc:
            if "lock" in str(exc).lower():
                raise OutputError(
                    f"{path}: another xspeckle run is writing this output now; wait for it or choose another name"
                ) from None
            return None, f"the partial file {path.name} is unreadable ({str(exc).split(' (')[0]})"
        try:
            prog = f.get("progress")
            if prog is None or "angles_done" not in prog or "retrieval" not in f:
                f.close()
                return None, f"{path.name} is not an xspeckle partial file"
            if prog.attrs.get("input_hash") != digest:
                f.close()
                return None, "the partial file was made with other inputs or parameters"
            w = cls(f, path)
            if w.done.shape != (n_angles,) or not w.names:
                f.close()
                return None, "the partial file has another number of angles"
            return w, ""
        except (OSError, KeyError, RuntimeError, ValueError) as exc:
            f.close()
            return None, f"the partial file {path.name} is damaged ({str(exc).split(' (')[0]})"

    # ------------------------------------------------------------------ writing
    def write(self, angle: int, maps: Mapping[str, Any]) -> None:
        """Write the maps of one angle, then mark it done.

        Parameters
        ----------
        angle : int
            0 <= angle < A.
        maps : mapping name -> array
            Per-angle maps (NumPy), and optionally ``_diag``: a dict with ``iterations``,
            ``stop_reason``, ``warnings`` (list of str) and ``drift_px`` ``(P, 2)``.
        """
        r = self.f["retrieval"]
        missing = [k for k in self.names if k not in maps]
        if missing:
            raise ScanFormatError(f"retriever returned no {', '.join(missing)} for angle {angle}")
        for name, full in self.names.items():
            a = np.asarray(maps[name], dtype=np.float32)
            if len(full) == 4:
                if a.shape != (full[0],) + full[2:]:
                    raise ScanFormatError(f"{name} of angle {angle} has shape {a.shape}, expected {(full[0],) + full[2:]}")
                r[name][:, angle] = a
            else:
                if a.shape != full[1:]:
                    raise ScanFormatError(f"{name} of angle {angle} has shape {a.shape}, expected {full[1:]}")
                r[name][angle] = a
        diag = maps.get("_diag") or {}
        if "iterations" in r and "iterations" in diag:
            r["iterations"][angle] = int(diag["iterations"])
        if "stop_reason" in r and "stop_reason" in diag:
            r["stop_reason"][angle] = str(diag["stop_reason"]).encode()[:_REASON_BYTES]
        if "drift_px" in diag:  # drift hook: (A, P, 2) shifts (dy, dx) px, outside /retrieval (not a map)
            sh = np.asarray(diag["drift_px"], dtype=np.float32)
            if "drift/shifts_px" not in self.f:
                d = self.f.create_dataset("drift/shifts_px", data=np.full((len(self.done),) + sh.shape, np.nan, np.float32))
                d.attrs["units"] = "px"
                d.attrs["description"] = ("speckle shift (dy, dx) of each position's sample frame vs its reference, "
                                          "per angle; corrected before retrieval")
            self.f["drift/shifts_px"][angle] = sh
        if "warnings" in self.f["progress"]:
            msg = "\n".join(diag.get("warnings", ())).encode()
            self.f["progress/warnings"][angle] = msg[:_WARNING_BYTES]
        self.f.flush()  # data on disk before the flag says so
        self._done[angle] = 1
        self.f.flush()
        self.done[angle] = True

    def diagnostics(self) -> tuple[list[str] | None, list[str] | None, list[int] | None]:
        """``(stop_reason, warnings, iterations)`` per angle as stored (None where not recorded)."""
        r, p = self.f["retrieval"], self.f["progress"]
        reasons = [x.decode() for x in r["stop_reason"][()]] if "stop_reason" in r else None
        warns = [x.decode(errors="replace") for x in p["warnings"][()]] if "warnings" in p else None
        iters = [int(i) for i in r["iterations"][()]] if "iterations" in r else None
        return reasons, warns, iters

    def finalise(self, messages: Sequence[str]) -> None:
        """Record the run's summary messages as the root attribute ``warnings`` (JSON list)."""
        self.f.attrs["warnings"] = json.dumps(list(messages))
        self.f.flush()

    def commit(self, final_path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Close and rename the partial file onto *final_path* (atomic); every angle must be written.

        Returns
        -------
        Path of the retrieval file.
        """
        if not self.done.all():
            n = int((~self.done).sum())
            raise ScanFormatError(f"{self.path}: {n} angle(s) not written yet; cannot finish the retrieval file")
        self.close()
        final = check_output_path(final_path, overwrite=overwrite)
        os.replace(self.path, final)
        return final

    def close(self) -> None:
        """Close the file (it stays at :attr:`path`)."""
        if self.f.id.valid:
            self.f.close()

    def __enter__(self) -> "RetrievalWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
