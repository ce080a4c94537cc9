"""Whole scans at scale: stream a scan through a retriever, angle by angle, resumably.

:func:`retrieve_scan` is what ``xspeckle retrieve`` runs.  It

1. opens the scan lazily (:class:`xspeckle.io.scan.Scan`) and normalises the reference
   stack once (``(R - dark) / (flat - dark)``, :func:`xspeckle.preprocess.normalise`);
2. builds the retriever once (reference-only work is done in its ``__init__``);
3. streams the projections: one *angle* = the ``(P', H, W)`` stack of the selected
   diffuser positions, read, normalised, retrieved, and written into the output as soon
   as it is done.  Memory is bounded by ``memory_limit_bytes`` (the number of angles in
   flight is chosen from it);
4. writes into a hidden partial file next to the output (``.OUT.h5.partial``) that
   records which angles are finished (``/progress/angles_done``, flushed after every
   angle) and a hash of the command's inputs.  A run stopped at any point (Ctrl-C,
   SIGKILL, power cut of the worker) and started again with the same command skips the
   finished angles; at the end the partial file is renamed atomically onto ``OUT.h5``,
   so the final name never holds a partial or corrupt file.  A partial file made with
   other inputs or parameters is discarded and the run starts fresh (it says so).

Engines (the same per-projection code everywhere, so CPU results are bit-for-bit
identical between them):

* ``workers=1`` — in this process (``scipy.fft`` and MIST's row threads use every core);
* ``workers=N`` — N local processes (:class:`concurrent.futures.ProcessPoolExecutor`,
  spawn context) with ``cores // N`` threads each (no oversubscription), started before
  this process builds its own reference and retriever so that their start-up overlaps it;
  every worker opens the scan itself (h5py handles cannot be pickled), a task carries only
  angle numbers, and only this process writes the HDF5 output;
* ``scheduler=ADDRESS`` — a Dask distributed cluster (``dask.distributed.Client``;
  ``pip install xspeckle[dask]``), same task function, same single writer; FFT threads
  capped to each worker's share of its host, and several angles per task when one angle
  is short (adaptive, about :data:`TASK_TARGET_S` per task);
* ``device="cuda"`` — CuPy on the current GPU, several projections per step.

Throughput on a 2-core CPU (``benchmarks/results/pipeline.md``): workers pay for methods
whose projections take seconds (PWF: two single-threaded processes run close to twice
serial, whose FFT threads barely help at ~300² grids); for 10-30 ms projections the
single writer and the workers' start-up (~1 s) bound what they add.

The output follows the retrieval file of ``interfaces.md``: ``/retrieval/<name>``
``(A, H, W)`` float32 chunked one angle per chunk (``(C, A, H, W)`` for
``diffusion_tensor``/``displacement``), root attributes ``method``,
``xspeckle_version``, ``parameters`` (JSON) and ``pipeline`` (JSON: scan, positions,
device, input hash), ``/exchange/theta`` and ``/geometry`` copied from the scan.  A JSON
log ``OUT.h5.log.json`` records the command, effective parameters, engine, timings and
memory figures.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import h5py
import numpy as np

from xspeckle import backend as B
from xspeckle._version import __version__
from xspeckle.errors import InputError, MethodUnavailableError, OutputError, ParameterError, ScanFormatError
from xspeckle.io.atomic import atomic_path, check_output_path
from xspeckle.retrieve.output_check import check_maps
from xspeckle.io.results import json_text as _dumps

__all__ = [
    "retrieve_scan",
    "partial_path",
    "log_path",
    "input_hash",
    "estimate_memory",
    "MemoryPlan",
    "DEFAULT_WORKING_FACTOR",
    "TASK_TARGET_S",
    "MAX_ADAPTIVE_BATCH",
]

logger = logging.getLogger("xspeckle.pipeline")

#: retrieval outputs with a leading component axis (interfaces.md): name -> components
_COMPONENTS = {"diffusion_tensor": 3, "displacement": 2}
#: units of the retrieval datasets (interfaces.md)
_UNITS = {
    "phase": "rad",
    "transmission": "1",
    "diffusion": "m",
    "diffusion_tensor": "m",
    "visibility": "1",
    "displacement": "px",
    "residual": "1",
}
_COMPONENT_NAMES = {"diffusion_tensor": "xx,yy,xy", "displacement": "x,y"}
#: per-angle diagnostics a retriever may return beside its maps (interfaces.md: ``iterations``
#: int (A,), ``stop_reason`` string (A,); ``warnings``: list of one-line messages, summarised in
#: the root attribute ``warnings`` and on stderr)
_DIAG_KEYS = ("iterations", "stop_reason", "warnings")
#: stop reasons of iterative methods that count as converged (anything else is reported)
CONVERGED_REASONS = ("converged", "correlation")
_REASON_BYTES = 24
_WARNING_BYTES = 480

#: temporaries of one retrieval call, in units of one ``(P, H, W)`` float32 stack, when
#: the retriever class does not say (class attribute ``working_factor``)
DEFAULT_WORKING_FACTOR = 8.0

#: adaptive batching (Dask): a task should last about this long, so that the scheduler's
#: per-task cost (a round trip, serialising the results) stays a few per cent of it
TASK_TARGET_S = 0.25
#: adaptive batching (Dask): at most this many angles per task
MAX_ADAPTIVE_BATCH = 32


# =========================================================================== paths, hash
def partial_path(out_path: str | os.PathLike) -> Path:
    """Hidden partial file of an output: ``dir/.NAME.partial`` (resume state lives there)."""
    p = Path(out_path)
    return p.with_name(f".{p.name}.partial")


def log_path(out_path: str | os.PathLike) -> Path:
    """JSON log written next to an output: ``dir/NAME.log.json``."""
    p = Path(out_path)
    return p.with_name(f"{p.name}.log.json")




def _method_ref(method: Any) -> str:
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
    blob = _dumps({
        "scan": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "method": _method_ref(method),
        "positions": [int(i) for i in positions], "device": device, "params": dict(params or {}),
        "xspeckle_version": __version__,
    })
    return hashlib.sha256(blob.encode()).hexdigest()


# =========================================================================== memory plan
def _array_bytes(obj: Any, seen: set[int], depth: int = 0) -> int:
    """Bytes of the arrays reachable from *obj* (attributes, dicts, lists; 3 levels)."""
    if id(obj) in seen or depth > 3:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray) or B.is_cupy(obj):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(_array_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_array_bytes(v, seen, depth + 1) for v in obj)
    d = getattr(obj, "__dict__", None)
    if d is not None and not isinstance(obj, type):
        return sum(_array_bytes(v, seen, depth + 1) for v in d.values())
    return 0


def _n_output_maps(outputs: Iterable[str]) -> int:
    n = sum(_COMPONENTS.get(k, 1) for k in outputs)
    return n or 7


@dataclass
class MemoryPlan:
    """How a run fits into ``memory_limit_bytes`` (all figures in bytes).

    Attributes
    ----------
    limit : int
        The memory setting.
    fixed : int
        Per computing process: normalised reference, flat, dark and retriever state.
    per_angle : int
        One angle in flight: raw and normalised ``(P, H, W)`` float32 stacks, the
        retriever's temporaries (``working_factor`` stacks) and the output maps.
    output_per_angle : int
        Output maps of one angle (held by the writer until written).
    workers : int
        Computing processes that fit (<= requested).
    batch : int
        Angles per task (the largest task when ``adaptive``).
    in_flight : int
        Tasks submitted at once (parent-side bound).
    adaptive : bool
        Angles per task grow from 1 up to ``batch`` so that one task lasts about
        :data:`TASK_TARGET_S` (Dask, where every task costs a scheduler round trip).
    notes : list of str
        Decisions taken to fit the limit (fewer workers, smaller batch).
    """

    limit: int
    fixed: int
    per_angle: int
    output_per_angle: int
    workers: int
    batch: int
    in_flight: int
    notes: list[str] = field(default_factory=list)
    adaptive: bool = False

    @property
    def estimate(self) -> int:
        """Estimated peak of the arrays held by the run."""
        return self.workers * (self.fixed + self.batch * self.per_angle) + self.in_flight * self.batch * self.output_per_angle

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (written to the run's log)."""
        return {"limit_bytes": self.limit, "fixed_bytes": self.fixed, "per_angle_bytes": self.per_angle,
                "output_per_angle_bytes": self.output_per_angle, "workers": self.workers, "batch": self.batch,
                "adaptive_batch": self.adaptive, "in_flight": self.in_flight, "estimate_bytes": self.estimate,
                "notes": list(self.notes)}


def _default_memory_limit() -> int:
    """Half of the available physical memory (psutil when installed, else sysconf), at least 256 MiB."""
    avail = None
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except Exception:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    if not avail:
        avail = 4 << 30
    return max(256 << 20, avail // 2)


def estimate_memory(*, n_positions: int, frame_shape: tuple[int, int], reference_bytes: int, state_bytes: int,
                    outputs: Iterable[str], working_factor: float = DEFAULT_WORKING_FACTOR,
                    memory_limit_bytes: int, workers: int = 1, batch: int | None = None,
                    distributed: bool = False) -> MemoryPlan:
    """Choose workers, angles per task and tasks in flight so the run fits the memory setting.

    Parameters
    ----------
    n_positions : int
        P', diffuser positions per angle.
    frame_shape : (H, W)
    reference_bytes : int
        Normalised reference + flat + dark held by every computing process.
    state_bytes : int
        Retriever state (arrays precomputed in ``__init__``) not already counted.
    outputs : iterable of str
        Output names (sizes of the maps written per angle).
    working_factor : float
        Retriever temporaries, in ``(P, H, W)`` float32 stacks.
    memory_limit_bytes : int
        The bound.
    workers : int
        Requested computing processes (1 = this process).
    batch : int, optional
        Angles per task; default: 1 for local engines, adaptive (1 up to what the parent's
        share of the limit allows, at most :data:`MAX_ADAPTIVE_BATCH`) for a Dask cluster.
    distributed : bool
        Dask cluster: the workers' memory is the cluster's business (their own limits);
        only the parent's results in flight count against the setting.

    Returns
    -------
    MemoryPlan

    Raises
    ------
    InputError
        When not even one angle fits.
    """
    h, w = frame_shape
    stack = 4 * n_positions * h * w
    out = 4 * _n_output_maps(outputs) * h * w
    per_angle = int(2 * stack + working_factor * stack + out)
    fixed = int(reference_bytes + state_bytes)
    limit = int(memory_limit_bytes)
    notes: list[str] = []
    b = max(1, int(batch or 1))
    if distributed:
        n = max(1, int(workers))
        if limit < b * out:
            raise InputError(
                f"memory_limit_bytes={limit} is below the {b * out} bytes of one task's results; "
                f"raise it or lower --batch"
            )
        # parent holds at most in_flight finished results; keep >= 2 tasks per worker queued
        in_flight = max(1, min(2 * n, limit // max(1, b * out)))
        adaptive = batch is None
        if adaptive:
            b = int(max(1, min(MAX_ADAPTIVE_BATCH, limit // max(1, in_flight * out))))
        return MemoryPlan(limit, fixed, per_angle, out, n, b, in_flight, notes, adaptive=adaptive)
    need1 = fixed + per_angle + out
    if limit < need1:
        raise InputError(
            f"memory_limit_bytes={limit} is below the {need1} bytes ({need1 / 2**20:.1f} MiB) one projection needs "
            f"(reference, retriever state, one angle of {n_positions} x {h} x {w}); raise the limit or crop/bin the scan"
        )
    n_workers = max(1, int(workers))
    if n_workers > 1:
        # every worker process holds its own reference + state, plus what it computes;
        # the parent holds up to 2 tasks per worker of finished results
        per_worker = fixed + b * per_angle + 2 * b * out
        fit = max(1, limit // per_worker)
        if fit < n_workers:
            notes.append(f"memory limit allows {fit} of {n_workers} workers")
            n_workers = int(fit)
        while b > 1 and n_workers * (fixed + b * per_angle + 2 * b * out) > limit:
            b -= 1
        in_flight = 2 * n_workers
    else:
        while b > 1 and fixed + b * (per_angle + out) > limit:
            b -= 1
        in_flight = 1
    if batch and b < int(batch):
        notes.append(f"batch lowered from {batch} to {b} to fit the memory limit")
    return MemoryPlan(limit, fixed, per_angle, out, n_workers, b, in_flight, notes)


# =========================================================================== task side
@dataclass(frozen=True)
class _Spec:
    """What a computing process needs to build its own state (small, picklable)."""

    scan_path: str
    positions: tuple[int, ...]
    method: Any  # str (registry name) or a Retriever subclass (pickled by reference)
    params_json: str
    device: str
    drift: str | None = None  # "wings" / "frame": correct diffuser drift per angle (preprocess.estimate_drift)
    flat_mode: str = "mean"  # "nearest" / "linear": per-angle flat from /exchange/theta_white (flat drift)

    @property
    def key(self) -> str:
        return _dumps([self.scan_path, self.positions, _method_ref(self.method), self.params_json, self.device, self.drift,
                       self.flat_mode])


class _State:
    """Per-process (per-thread) computing state: open scan, flat/dark, retriever."""

    def __init__(self, spec: _Spec, retriever=None, scan=None):
        from xspeckle.io.scan import Scan

        self.spec = spec
        self.scan = scan if scan is not None else Scan(spec.scan_path)
        self.positions = list(spec.positions)
        flat, dark = self.scan.flat(), self.scan.dark()
        if flat is None:
            # no flat field: divide by the mean dark-subtracted reference instead (PWF notes §1), exactly as
            # Scan.normalised_* do, so every method sees intensities ≈ 1 whatever the detector's counts
            scale = np.float32(self.scan.intensity_scale())
            flat = (dark + scale) if dark is not None else np.full(self.scan.frame_shape, scale, np.float32)
        self.flat_groups = self.flat_positions = None
        ref_flat = flat
        if spec.flat_mode != "mean":  # flat drift: flats grouped by /exchange/theta_white, one flat per angle
            self.flat_groups, self.flat_positions, ref_flat = _flat_drift_setup(self.scan, spec.flat_mode)
        if spec.device == "cuda":
            self.flat = None if flat is None else B.to_device(flat, "cuda")
            self.dark = None if dark is None else B.to_device(dark, "cuda")
            ref_flat = None if ref_flat is None else B.to_device(ref_flat, "cuda")
            if self.flat_groups is not None:
                self.flat_groups = B.to_device(self.flat_groups, "cuda")
        else:
            self.flat, self.dark = flat, dark
        self.reference = None
        if retriever is None or spec.drift:
            ref = _normalised_reference(self.scan, self.positions, spec.device, ref_flat, self.dark)
            if spec.drift:
                self.reference = ref  # kept: shifted onto each angle's speckle (drift hook in _compute)
            if retriever is None:
                params = json.loads(spec.params_json)
                if _wants_all_references(spec.method, params, self.scan, self.positions):
                    # PWF: every reference position of the scan for the coherence calibration and, with
                    # diffuser_estimate=multi-reference, for the diffuser (single shot from one position)
                    params["all_references"] = _normalised_reference(self.scan, list(range(self.scan.n_positions)),
                                                                     spec.device, ref_flat, self.dark)
                retriever = _build(spec.method, ref, self.scan.geometry, params)
        self.retriever = retriever
        self._drift_key = None  # shifts (0.01 px) the current drift-corrected retriever was built for
        self._drift_retriever = None


def _wants_all_references(method: Any, params: Mapping[str, Any], scan, positions: Sequence[int]) -> bool:
    """PWF gets the reference frames of every position when it can use them (calibration, multi-reference)."""
    if "all_references" in params or _method_label(method) != "pwf":
        return False
    if params.get("diffuser_estimate") == "multi-reference":
        return True
    g = scan.geometry
    need_cal = (params.get("coherence_length_x_m", g.coherence_length_x_m) is None
                or params.get("coherence_length_y_m", g.coherence_length_y_m) is None)
    return need_cal and scan.n_positions > len(positions)


def _flat_drift_setup(scan, mode: str):
    """Flat groups and positions (degrees) from ``/exchange/theta_white`` (DXchange's name), and the flat for
    the references: at ``/exchange/theta_reference`` (P,) when present (the first position's), else the mean."""
    import h5py

    from xspeckle.preprocess import flat_for_angle, flat_groups

    raw = scan._raw_white()
    if raw is None:
        raise InputError(f"{scan.path}: flat_mode={mode!r} needs flat fields (/exchange/data_white); the scan has none")
    with h5py.File(scan.path, "r") as f:
        if "exchange/theta_white" not in f:
            raise InputError(
                f"{scan.path}: flat_mode={mode!r} needs /exchange/theta_white (the angle, in degrees, at which each "
                "flat was taken); add it or use flat_mode='mean'"
            )
        pos = np.asarray(f["exchange/theta_white"][()], np.float64)
        ref_pos = np.asarray(f["exchange/theta_reference"][()], np.float64) if "exchange/theta_reference" in f else None
    groups, gpos = flat_groups(np.asarray(raw[()], np.float32), pos)
    ref_flat = groups.mean(axis=0) if ref_pos is None else flat_for_angle(groups, gpos, float(ref_pos.ravel()[0]), mode)
    return groups, gpos, ref_flat


def _normalise_angles(state: "_State", raw, angles: Sequence[int]):
    """Dark/flat normalisation of a batch ``(B, P, H, W)``: the mean flat, or each angle's own (flat drift)."""
    from xspeckle.preprocess import flat_for_angle, normalise

    if state.flat_groups is None:
        return normalise(raw, state.flat, state.dark)
    xp = B.get_xp(raw)
    theta = state.scan.theta_deg
    return xp.stack([
        normalise(raw[j], flat_for_angle(state.flat_groups, state.flat_positions, float(theta[int(a)]),
                                         state.spec.flat_mode), state.dark)
        for j, a in enumerate(angles)
    ])


def _resolve_method(method: Any):
    """Return the Retriever class for a registry name or a class."""
    if isinstance(method, str):
        from xspeckle.retrieve import get_method

        return get_method(method)
    if isinstance(method, type) and callable(method):
        return method
    raise InputError(f"method must be a method name or a Retriever class, got {method!r}")


def _build(method: Any, reference, geometry, params: Mapping[str, Any]):
    from xspeckle.retrieve.params import check_params

    cls = _resolve_method(method)
    params = check_params(cls, params)  # unknown key (lists the valid ones), wrong kind of value
    try:
        return cls(reference, geometry, **dict(params))
    except InputError:
        raise
    except (TypeError, ValueError) as exc:
        # with user parameters, a value the method cannot use is a user mistake (one line), not a bug
        if not params:
            raise
        name = getattr(cls, "name", "") or cls.__name__
        given = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ParameterError(f"method {name!r} cannot use {given} ({exc}); check the values") from None


def _normalised_reference(scan, positions, device: str, flat, dark):
    from xspeckle.preprocess import normalise

    raw = scan.reference(positions)
    if device == "cuda":
        raw = B.to_device(raw, "cuda")
    return normalise(raw, flat, dark)


def _read_angles(state: _State, angles: Sequence[int]) -> np.ndarray:
    """Raw frames of several angles ``(B, P', H, W)`` float32."""
    h, w = state.scan.frame_shape
    raw = np.empty((len(angles), len(state.positions), h, w), np.float32)
    for j, a in enumerate(angles):
        raw[j] = state.scan.sample(int(a), state.positions)
    return raw


def retrieve_batch(retriever, stack, *, batch_axis: bool | None = None) -> list[dict[str, Any]]:
    """Apply a retriever to a normalised ``(B, P, H, W)`` stack of B projections.

    Parameters
    ----------
    retriever : Retriever
    stack : array (B, P, H, W) float32, NumPy or CuPy
    batch_axis : bool, optional
        Process the B projections in one call: the retriever's ``retrieve_batch(stack)``
        method when it has one (list of dicts), else ``retriever(stack)`` when it declares
        ``supports_batch = True`` (dict of ``(B, ...)`` maps).  Default: when it
        declares support and the stack is on the GPU; on the CPU projections are
        always computed one by one (the same code as every other engine).

    Returns
    -------
    list of B dicts name -> map (same back-end as *stack*).
    """
    n = int(stack.shape[0])
    can = bool(getattr(retriever, "supports_batch", False)) or callable(getattr(retriever, "retrieve_batch", None))
    use = can if batch_axis is None else bool(batch_axis)
    if batch_axis is None and not B.is_cupy(stack):
        use = False
    if use and n > 1:
        if callable(getattr(retriever, "retrieve_batch", None)):  # e.g. PWFRetriever.retrieve_batch
            return list(retriever.retrieve_batch(stack))
        out = retriever(stack)
        return [{k: v[j] for k, v in out.items()} for j in range(n)]
    return [retriever(stack[j]) for j in range(n)]


def _compute(state: _State, angles: Sequence[int]) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Read, normalise and retrieve some angles; maps come back as float32 NumPy."""
    raw = _read_angles(state, angles)
    if state.spec.device == "cuda":
        raw = B.to_device(raw, "cuda")
    norm = _normalise_angles(state, raw, angles)
    del raw
    if state.spec.drift:
        results, retrievers, shifts = _retrieve_drift_corrected(state, norm)
    else:
        results, retrievers, shifts = retrieve_batch(state.retriever, norm), None, None
    out = []
    for j, (a, res) in enumerate(zip(angles, results)):
        # NaN/inf, or a flat phase from a non-flat sample: a parameter out of range (one line, nothing written)
        check_maps({k: v for k, v in res.items() if k not in _DIAG_KEYS}, method=_method_label(state.spec.method),
                   angle=int(a), params=json.loads(state.spec.params_json), sample=norm[j],
                   reference=getattr(state.retriever if retrievers is None else retrievers[j], "reference", None))
        maps = {k: np.ascontiguousarray(B.asnumpy(v), dtype=np.float32) for k, v in res.items() if k not in _DIAG_KEYS}
        diag = _diagnostics(res)
        if shifts is not None:
            diag["drift_px"] = shifts[j].tolist()
        if diag:
            maps["_diag"] = diag
        out.append((int(a), maps))
    return out


def _retrieve_drift_corrected(state: _State, norm):
    """Drift hook (issue 18): per angle, the speckle shift of each position between the reference and the
    sample frame (``preprocess.estimate_drift`` in the region ``spec.drift``), the reference moved onto it,
    and a retriever built on that reference (reused while the shifts stay within 0.01 px)."""
    from xspeckle.preprocess import estimate_drift, shift_reference

    results, retrievers, shifts = [], [], []
    for j in range(norm.shape[0]):
        s = estimate_drift(state.reference, norm[j], region=state.spec.drift)
        key = tuple(np.round(s, 2).ravel().tolist())
        if key != state._drift_key:
            ref = shift_reference(state.reference, norm[j], s)
            state._drift_retriever = _build(state.spec.method, ref, state.scan.geometry, json.loads(state.spec.params_json))
            state._drift_key = key
        retrievers.append(state._drift_retriever)
        results.append(state._drift_retriever(norm[j]))
        shifts.append(np.asarray(s, dtype=np.float64))
    return results, retrievers, shifts


def _method_label(method: Any) -> str:
    return method if isinstance(method, str) else (getattr(method, "name", "") or getattr(method, "__name__", "method"))


def _diagnostics(res: Mapping[str, Any]) -> dict[str, Any]:
    """The per-angle diagnostics of one result (plain Python values, picklable)."""
    d: dict[str, Any] = {}
    if "iterations" in res:
        d["iterations"] = int(res["iterations"])
    if "stop_reason" in res:
        d["stop_reason"] = str(res["stop_reason"])
    w = res.get("warnings")
    if w:
        d["warnings"] = [str(x) for x in (w if isinstance(w, (list, tuple)) else [w])]
    return d


def summarise_diagnostics(stop_reason: Sequence[str] | None, warnings_per_angle: Sequence[str] | None,
                          method: str) -> list[str]:
    """One-line messages for angles that did not converge and for the retrievers' warnings.

    Parameters
    ----------
    stop_reason : sequence of str, one per angle (empty strings: no iterative method)
    warnings_per_angle : sequence of str, one per angle, messages joined by ``"\n"``
    method : str, for the message prefix

    Returns
    -------
    list of str, e.g. ``"pwf: 3 of 90 angles did not converge (max_iter: 2, stalled: 1; angles 4, 7, 9);
    see /retrieval/stop_reason"``.
    """
    lines = []
    if stop_reason is not None:
        reasons = [str(r) for r in stop_reason]
        bad = [i for i, r in enumerate(reasons) if r and r not in CONVERGED_REASONS]
        if bad:
            counts: dict[str, int] = {}
            for i in bad:
                counts[reasons[i]] = counts.get(reasons[i], 0) + 1
            which = ", ".join(str(i) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
            lines.append(f"{method}: {len(bad)} of {len(reasons)} angle{'s' if len(reasons) > 1 else ''} did not converge "
                         f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}; angle{'s' if len(bad) > 1 else ''} "
                         f"{which}); the maps of those angles are not converged results, see /retrieval/stop_reason")
    if warnings_per_angle is not None:
        seen: dict[str, list[int]] = {}
        for i, w in enumerate(warnings_per_angle):
            for msg in filter(None, str(w).split("\n")):
                seen.setdefault(msg, []).append(i)
        n = len(warnings_per_angle)
        for msg, idx in seen.items():
            lines.append(f"{method}: {msg} ({len(idx)} of {n} angle{'s' if n > 1 else ''})")
    return lines


_LOCAL = threading.local()


def _thread_state(spec: _Spec) -> _State:
    """This thread's state for *spec* (built once per worker thread and reused)."""
    states = getattr(_LOCAL, "states", None)
    if states is None:
        states = _LOCAL.states = {}
    st = states.get(spec.key)
    if st is None:
        for old in states.values():  # one scan per worker thread at a time: long-lived workers do not pile up
            with contextlib.suppress(Exception):
                old.scan.close()
        states.clear()
        st = states[spec.key] = _State(spec)
    return st


def _task(spec: _Spec, angles: tuple[int, ...]) -> tuple[list[tuple[int, dict[str, np.ndarray]]], float]:
    """Task run by a worker process or a Dask worker: compute some angles.

    Returns
    -------
    (results, seconds) : list of (angle, maps) and the seconds spent computing them
        (reading, normalising, retrieving; not the one-off state set-up), which sizes
        later tasks when batching is adaptive.
    """
    st = _thread_state(spec)
    t0 = time.perf_counter()
    res = _compute(st, angles)
    return res, time.perf_counter() - t0


def _worker_init(fft_workers: int) -> None:
    """Initialiser of local worker processes: deterministic FFT thread count, no oversubscription."""
    os.environ["XSPECKLE_FFT_WORKERS"] = str(int(fft_workers))
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    try:  # optional: cap BLAS/OpenMP pools to the same share of the cores
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(fft_workers))
    except Exception:  # not installed, or no pool it knows
        pass


def _warm(spec: _Spec) -> int:
    """First task of every local worker: import what computing needs while the parent sets up.

    Imports only (the method's module, scan reader, normalisation): the worker builds its
    state with the first real task, after the parent has chosen the number of workers
    and freed its own copy, so the memory plan holds.  Returns the worker's pid.
    """
    with contextlib.suppress(Exception):  # any real problem surfaces with the first task, with its own error
        import xspeckle.io.scan  # noqa: F401
        import xspeckle.preprocess  # noqa: F401

        _resolve_method(spec.method)
    return os.getpid()


_CAP_LOCK = threading.Lock()
_CAP: dict[str, Any] = {"depth": 0, "fft": False, "mmap": False}
#: glibc ``mallopt`` parameter M_MMAP_THRESHOLD (malloc.h) and its default value
_M_MMAP_THRESHOLD = -3
_GLIBC_MMAP_DEFAULT = 128 << 10
#: arrays up to this size come from the heap while xspeckle tasks run on a Dask worker
_TASK_MMAP_THRESHOLD = 256 << 20


def _libc():
    """The C library when it has glibc's ``mallopt`` and ``malloc_trim``, else None."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (AttributeError when not glibc)
        return libc
    except (OSError, AttributeError, ImportError):
        return None


@contextlib.contextmanager
def _worker_settings(fft: int | None):
    """Settings of this (Dask worker) process while xspeckle tasks run in it.

    * ``XSPECKLE_FFT_WORKERS=fft``: Dask workers start with OMP/MKL/OpenBLAS capped to 1
      thread, but ``backend`` gives ``scipy.fft`` (and MIST's row threads) every core by
      default: two single-threaded worker processes on two cores would each run two FFT
      threads.  An explicit setting in the worker's environment is left alone.
    * glibc's mmap threshold raised to 256 MiB when Dask's default worker environment set
      ``MALLOC_TRIM_THRESHOLD_`` (and no ``MALLOC_MMAP_THRESHOLD_``): that variable pins the
      threshold at 128 KiB, so every larger array is a fresh mmap whose pages fault on first
      touch — for methods that allocate temporaries every iteration (PWF, UMPA) the tasks ran
      1.5-3x slower (benchmarks/results/pipeline.md).  The threshold is put back and the heap
      trimmed (``malloc_trim``) when the last task ends, so the worker returns the memory as
      Dask intends.

    ``fft=None`` (a worker inside the calling process) changes nothing.  Concurrent tasks of
    one process share the settings; the last one to end restores them.
    """
    if fft is None:
        yield
        return
    with _CAP_LOCK:
        if _CAP["depth"] == 0:
            if "XSPECKLE_FFT_WORKERS" not in os.environ:
                os.environ["XSPECKLE_FFT_WORKERS"] = str(int(fft))
                _CAP["fft"] = True
            if "MALLOC_TRIM_THRESHOLD_" in os.environ and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
                libc = _libc()
                _CAP["mmap"] = bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, _TASK_MMAP_THRESHOLD))
        _CAP["depth"] += 1
    try:
        yield
    finally:
        with _CAP_LOCK:
            _CAP["depth"] -= 1
            if _CAP["depth"] == 0:
                if _CAP["fft"]:
                    os.environ.pop("XSPECKLE_FFT_WORKERS", None)
                    _CAP["fft"] = False
                if _CAP["mmap"]:
                    libc = _libc()
                    libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_DEFAULT)
                    libc.malloc_trim(0)
                    _CAP["mmap"] = False


def _dask_fft_threads(host_threads: Mapping[str, int], client_pid: int) -> int | None:
    """FFT threads for a task on this Dask worker: its host's cores / threads of all workers there.

    None (leave the setting alone) for a worker running inside the calling process
    (``LocalCluster(processes=False)``), whose threads share that process's settings.
    """
    if os.getpid() == client_pid:
        return None
    try:
        from distributed import get_worker

        w = get_worker()
        share = int(host_threads.get(w.address) or getattr(w.state, "nthreads", 0) or 1)
    except (ImportError, ValueError, AttributeError):
        return None
    return max(1, B.available_cores() // max(1, share))


def _dask_task(spec: _Spec, angles: tuple[int, ...], host_threads: Mapping[str, int], client_pid: int):
    """:func:`_task` on a Dask worker: FFT threads capped to the worker's share of its host,
    large temporaries from the heap (:func:`_worker_settings`)."""
    with _worker_settings(_dask_fft_threads(host_threads, client_pid)):
        return _task(spec, angles)


class _Batcher:
    """Hands out the angles still to do, one task at a time.

    Fixed: ``batch`` angles per task.  Adaptive: 1 angle per task until a result has
    said how long an angle takes, then as many as fill :data:`TASK_TARGET_S` (at most
    ``batch``), and never more than an even share of what is left between
    ``2 * n_workers`` tasks, so that the last tasks do not leave workers idle.
    """

    def __init__(self, todo: Sequence[int], batch: int, *, adaptive: bool = False, n_workers: int = 1,
                 target_s: float = TASK_TARGET_S):
        self.todo = [int(a) for a in todo]
        self.pos = 0
        self.batch = max(1, int(batch))
        self.adaptive = bool(adaptive)
        self.n_workers = max(1, int(n_workers))
        self.target_s = float(target_s)
        self._n = 0
        self._s = 0.0
        self.tasks = 0

    def observe(self, n_angles: int, seconds: float) -> None:
        """Record that a task computed *n_angles* angles in *seconds*."""
        if n_angles > 0 and seconds >= 0:
            self._n += int(n_angles)
            self._s += float(seconds)

    def size(self) -> int:
        """Angles for the next task (0 when none is left)."""
        left = len(self.todo) - self.pos
        if left <= 0:
            return 0
        if not self.adaptive:
            return min(self.batch, left)
        if self._n == 0:
            b = 1
        else:
            per = self._s / self._n
            b = self.batch if per <= 0 else int(min(self.batch, max(1, round(self.target_s / per))))
        return max(1, min(b, left, -(-left // (2 * self.n_workers))))

    def take(self) -> tuple[int, ...]:
        """The next task's angles (empty when all are handed out)."""
        b = self.size()
        out = tuple(self.todo[self.pos:self.pos + b])
        self.pos += b
        if out:
            self.tasks += 1
        return out


# =========================================================================== writer
class _PartialWriter:
    """The resumable partial output: ``/retrieval/*`` allocated up front, ``/progress``.

    Every chunk is allocated when the file is created (``H5D_ALLOC_TIME_EARLY``), so
    writing an angle later only writes raw data at fixed places and never changes the
    file's metadata: a process killed in the middle of a write leaves at worst that
    angle's data torn, and that angle is not marked done.  Data is flushed *before* the
    done flag is set (and flushed again).
    """

    def __init__(self, f: h5py.File, path: Path):
        self.f = f
        self.path = path
        self._done = f["progress/angles_done"]
        self.done = np.asarray(self._done[()], dtype=bool)
        self.names = {k: tuple(f["retrieval"][k].shape) for k in f["retrieval"] if k not in _DIAG_KEYS}

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: Path, *, shapes: Mapping[str, tuple[int, ...]], n_angles: int, method: str,
               parameters: Mapping[str, Any], pipeline: Mapping[str, Any], geometry_attrs: Mapping[str, Any],
               theta_deg: np.ndarray, hash_: str, diag_keys: Iterable[str] = ()) -> "_PartialWriter":
        if path.exists():
            path.unlink()
        f = h5py.File(path, "w")
        try:
            f.attrs["method"] = str(method)
            f.attrs["xspeckle_version"] = __version__
            f.attrs["parameters"] = _dumps(dict(parameters))
            f.attrs["pipeline"] = _dumps(dict(pipeline))
            ex = f.create_group("exchange")
            ex.create_dataset("theta", data=np.asarray(theta_deg, np.float64).reshape(-1))
            ex["theta"].attrs["units"] = "degree"
            g = f.create_group("geometry")
            for k, v in geometry_attrs.items():
                g.attrs[k] = v
            r = f.create_group("retrieval")
            for name, shp in shapes.items():
                if name not in _UNITS:
                    raise ScanFormatError(
                        f"retriever output {name!r} is not one of {', '.join(_UNITS)} (interfaces.md, retrieval file)"
                    )
                if name in _COMPONENTS:
                    if len(shp) != 3 or shp[0] != _COMPONENTS[name]:
                        raise ScanFormatError(f"retriever output {name} has shape {shp}; expected ({_COMPONENTS[name]}, H, W)")
                    full, chunks = (shp[0], n_angles) + tuple(shp[1:]), (1, 1) + tuple(shp[1:])
                else:
                    if len(shp) != 2:
                        raise ScanFormatError(f"retriever output {name} has shape {shp}; expected (H, W)")
                    full, chunks = (n_angles,) + tuple(shp), (1,) + tuple(shp)
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_chunk(chunks)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
                space = h5py.h5s.create_simple(full)
                dsid = h5py.h5d.create(r.id, name.encode(), h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)
                d = h5py.Dataset(dsid)
                d.attrs["units"] = _UNITS[name]
                if name in _COMPONENT_NAMES:
                    d.attrs["components"] = _COMPONENT_NAMES[name]
            if "iterations" in diag_keys:
                d = r.create_dataset("iterations", data=np.full(n_angles, -1, np.int32))
                d.attrs["units"] = "1"
            if "stop_reason" in diag_keys:
                d = r.create_dataset("stop_reason", data=np.zeros(n_angles, f"S{_REASON_BYTES}"))
                d.attrs["units"] = "string"
            p = f.create_group("progress")
            p.attrs["input_hash"] = hash_
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
    def try_open(cls, path: Path, hash_: str, n_angles: int) -> tuple["_PartialWriter | None", str]:
        """Open a partial file to resume; ``(None, reason)`` when it cannot be used."""
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
            if prog.attrs.get("input_hash") != hash_:
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
    def write(self, angle: int, maps: Mapping[str, np.ndarray]) -> None:
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
                d.attrs["description"] = "speckle shift (dy, dx) of each position's sample frame vs its reference, per angle; corrected before retrieval"
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

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()


# =========================================================================== engines
#: seconds between two progress reports from inside one projection
INNER_PROGRESS_S = 0.2


@contextlib.contextmanager
def _inner_progress(retriever, within: Callable[[float], None] | None, n_angles: int):
    """Connect a retriever's own progress hook to *within* (angles done in this task, fractional).

    PWF takes ``progress(iteration, max_iter)`` through its ``solve_params``; UMPA and XSVT
    have a ``progress(rows_done, rows_total)`` attribute.  Other retrievers: nothing to do.
    """
    if within is None or retriever is None:
        yield
        return
    last = [0.0]

    def hook(done, total) -> None:
        now = time.monotonic()
        if total and now - last[0] >= INNER_PROGRESS_S:
            last[0] = now
            within(n_angles * min(1.0, float(done) / float(total)))

    solve = getattr(retriever, "solve_params", None)
    if isinstance(solve, dict):
        solve["progress"] = hook
    elif hasattr(retriever, "progress"):
        retriever.progress = hook
    else:
        yield
        return
    try:
        yield
    finally:
        if isinstance(solve, dict):
            solve.pop("progress", None)
        else:
            retriever.progress = None


class _Serial:
    """Every angle in this process (the state built for the memory plan is used as is)."""

    name = "serial"

    def __init__(self, state: _State):
        self.state = state
        self.tasks = 0
        #: callable(fraction_of_the_current_task) fed by the retriever's own progress (PWF iterations,
        #: UMPA/XSVT rows), so that a single long projection shows progress; set by retrieve_scan
        self.within: Callable[[float], None] | None = None

    def run(self, todo: Sequence[int], on_result, plan: MemoryPlan) -> None:
        batcher = _Batcher(todo, plan.batch)
        while True:
            angles = batcher.take()
            if not angles:
                break
            with _inner_progress(self.state.retriever, self.within, len(angles)):
                results = _compute(self.state, angles)
            for a, maps in results:
                on_result(a, maps)
        self.tasks = batcher.tasks

    def close(self, kill: bool = False) -> None:
        pass


_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "XSPECKLE_FFT_WORKERS")


class _Pool:
    """Local worker processes (spawn context; each opens the scan and builds its own state).

    The thread pools of the children (BLAS, OpenMP, numba, scipy.fft and MIST's row
    threads through ``XSPECKLE_FFT_WORKERS``) are capped to ``cores // workers``: N
    single-threaded processes rather than N processes that each start a thread per core.
    They read these settings when they start, so the variables are set in this process's
    environment only while the children are spawned, which happens at once: every worker
    gets a warm-up task (:func:`_warm`, imports) as soon as the pool is made, so that the
    interpreter start-up of the workers overlaps the parent's own set-up.
    """

    name = "processes"

    def __init__(self, spec: _Spec, workers: int):
        threads = max(1, B.available_cores() // workers)
        saved = {k: os.environ.get(k) for k in _THREAD_ENV}
        try:
            for k in _THREAD_ENV:
                os.environ[k] = str(threads)
            self.ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                             initializer=_worker_init, initargs=(threads,))
            # one submit per worker while none is idle: the executor spawns all of them now
            self._warm = [self.ex.submit(_warm, spec) for _ in range(workers)]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.spec = spec
        self.workers = int(workers)
        self.threads = threads
        self.tasks = 0

    def run(self, todo: Sequence[int], on_result, plan: MemoryPlan) -> None:
        batcher = _Batcher(todo, plan.batch)
        pending: set[cf.Future] = set()

        def submit() -> bool:
            angles = batcher.take()
            if not angles:
                return False
            pending.add(self.ex.submit(_task, self.spec, angles))
            return True

        try:
            for _ in range(plan.in_flight):
                if not submit():
                    break
            while pending:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    pending.discard(fut)
                    res, _seconds = fut.result()
                    submit()  # keep the workers busy while this process writes
                    for a, maps in res:
                        on_result(a, maps)
        except cf.process.BrokenProcessPool:
            raise InputError(
                "a worker process died (killed, out of memory, or started from a script without the "
                "'if __name__ == \"__main__\":' guard that multiprocessing needs); fix that, or use workers=1. "
                "Finished angles are kept: run the same command again to resume"
            ) from None
        finally:
            self.tasks = batcher.tasks

    def close(self, kill: bool = False) -> None:
        if not kill:
            self.ex.shutdown(wait=True, cancel_futures=True)
            return
        # interrupted or failed: end the workers, then shut the executor down. shutdown(wait=True) after
        # terminating workers can (rarely) block for ever on their result pipes, so it runs in a helper
        # thread with a time limit, and any worker still alive after it is killed.
        def procs():
            return list((getattr(self.ex, "_processes", None) or {}).values())

        seen = procs()
        for p in seen:
            with contextlib.suppress(Exception):
                p.terminate()
        t = threading.Thread(target=self.ex.shutdown, kwargs=dict(wait=True, cancel_futures=True), daemon=True)
        t.start()
        t.join(timeout=5)
        for p in seen + [q for q in procs() if q not in seen]:
            with contextlib.suppress(Exception):
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=5)


class _Dask:
    """A Dask distributed cluster (``Client(address)``; a Client object is used as is).

    Tasks carry only the (small) spec and the angle numbers; every worker thread opens the
    scan and builds its state once (:func:`_thread_state`).  Each task caps the FFT threads
    to its worker's share of the host and undoes the page-fault cost of Dask's default
    malloc setting while it runs (:func:`_worker_settings`), and tasks grow to several
    angles when one angle is short (:class:`_Batcher`), so that the scheduler's per-task
    cost stays small against the computing.
    """

    name = "dask"

    def __init__(self, spec: _Spec, scheduler: Any):
        try:
            from distributed import Client
        except ImportError:
            raise MethodUnavailableError(
                "--scheduler needs Dask distributed; install it with 'pip install xspeckle[dask]'"
            ) from None
        from xspeckle.scheduler import CONNECT_TIMEOUT_S, NO_WORKER_TIMEOUT_S, check_scheduler_address

        self.spec = spec
        self._own = False
        self.tasks = 0
        self.log: Callable[[str], None] | None = None  # set by retrieve_scan
        self.no_worker_timeout_s = NO_WORKER_TIMEOUT_S
        self.address = scheduler if isinstance(scheduler, str) else getattr(getattr(scheduler, "scheduler", None),
                                                                               "address", None)
        if isinstance(scheduler, Client):
            self.client = scheduler
        else:
            check_scheduler_address(str(scheduler))  # malformed or closed: one line within seconds
            try:
                self.client = Client(scheduler, timeout=f"{4 * CONNECT_TIMEOUT_S:g}s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise InputError(f"cannot reach the Dask scheduler at {scheduler!r} ({exc}); check the address") from None
            self._own = True

    def _workers(self) -> dict[str, dict]:
        try:
            return dict(self.client.scheduler_info()["workers"])
        except Exception:  # an old or unusual scheduler: fall back to defaults
            return {}

    @property
    def n_workers(self) -> int:
        return max(1, len(self._workers()))

    def run(self, todo: Sequence[int], on_result, plan: MemoryPlan) -> None:
        workers = self._workers()
        # threads of all workers that share a host (address "tcp://host:port")
        per_host: dict[str, int] = {}
        for addr, w in workers.items():
            host = w.get("host") or addr.rsplit(":", 1)[0]
            per_host[host] = per_host.get(host, 0) + int(w.get("nthreads") or 1)
        host_threads = {addr: per_host[w.get("host") or addr.rsplit(":", 1)[0]] for addr, w in workers.items()}
        b_max = plan.batch
        if plan.adaptive:
            # a task's angles live on the worker until it returns: keep them within a quarter of its memory
            limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
            lim = min((x for x in limits if x > 0), default=0)
            if lim:
                b_max = int(max(1, min(b_max, (lim // 4 - plan.fixed) // max(1, plan.per_angle))))
        batcher = _Batcher(todo, b_max, adaptive=plan.adaptive, n_workers=max(1, len(workers)))
        pid = os.getpid()
        pending: set = set()

        def submit() -> bool:
            angles = batcher.take()
            if not angles:
                return False
            pending.add(self.client.submit(_dask_task, self.spec, angles, host_threads, pid, pure=False))
            return True

        try:
            for _ in range(plan.in_flight):
                if not submit():
                    break
            no_worker_since: float | None = None
            while pending:
                done = self._wait(pending)
                if not done:  # nothing finished for a while: are there still workers?
                    no_worker_since = self._check_workers(no_worker_since, pending)
                    continue
                no_worker_since = None
                for fut in done:
                    pending.discard(fut)
                    res, seconds = self._result(fut)
                    fut.release()
                    batcher.observe(len(res), seconds)
                    submit()
                    for a, maps in res:
                        on_result(a, maps)
        finally:
            self.tasks = batcher.tasks

    #: seconds between checks of the scheduler's worker list while no task finishes
    POLL_S = 2.0

    def _wait(self, pending: set) -> set:
        import asyncio

        from distributed import wait

        try:
            return set(wait(list(pending), timeout=self.POLL_S, return_when="FIRST_COMPLETED").done)
        except TimeoutError:
            return set()
        except (Exception, asyncio.CancelledError) as exc:
            raise self._as_input_error(exc) from None

    def _check_workers(self, since: float | None, pending: set) -> float | None:
        """Fail when the cluster has had no worker for :attr:`no_worker_timeout_s` (a run never waits silently)."""
        try:
            n = len(self.client.scheduler_info()["workers"])
        except Exception as exc:  # the scheduler itself is gone
            raise InputError(f"lost the Dask scheduler at {self.address!r} ({type(exc).__name__}); restart it and run "
                             "the same command again: finished angles are kept") from None
        if n:
            return None
        now = time.monotonic()
        if since is None:
            if self.log is not None:
                self.log(f"no Dask worker is connected to {self.address}; waiting up to "
                         f"{self.no_worker_timeout_s:g} s for one")
            return now
        if now - since >= self.no_worker_timeout_s:
            with contextlib.suppress(Exception):
                self.client.cancel(list(pending))
            raise InputError(
                f"no Dask worker connected to the scheduler at {self.address} for {self.no_worker_timeout_s:g} s "
                "(all workers died or were stopped); start workers (dask worker ADDRESS) and run the same command "
                "again: finished angles are kept")
        return since

    def _result(self, fut):
        import asyncio

        try:
            return fut.result()
        except InputError:
            raise
        except (Exception, asyncio.CancelledError) as exc:
            raise self._as_input_error(exc) from None

    def _as_input_error(self, exc: BaseException) -> BaseException:
        """A cluster failure as one line (scheduler lost, workers killed, environment mismatch); else *exc*."""
        kind = type(exc).__name__
        text = " ".join(str(exc).split())
        if "Cancelled" in kind or "connection-lost" in text:
            return InputError(f"lost the Dask scheduler at {self.address} (it stopped, restarted or became "
                              "unreachable); start it again and run the same command: finished angles are kept")
        if kind == "KilledWorker":
            return InputError(f"Dask workers died while computing (killed, or out of memory: {text[:200]}); give "
                              "the workers more memory or use fewer threads each, and run the same command again: "
                              "finished angles are kept")
        if "deserialization" in text or kind in ("ModuleNotFoundError", "ImportError"):
            return InputError(f"the Dask workers cannot load the task ({kind}: {text[:160]}); install the same "
                              "xspeckle and packages on every worker (same Python environment as this client)")
        return exc

    def close(self, kill: bool = False) -> None:
        if self._own:
            with contextlib.suppress(Exception):
                self.client.close()


# =========================================================================== main entry
def _gpu_batch(plan: MemoryPlan, batch: int | None) -> int:
    """Angles per GPU step: *batch*, else what fits in half the free GPU memory (1..64)."""
    if batch:
        return max(1, int(batch))
    try:
        import cupy

        free = int(cupy.cuda.runtime.memGetInfo()[0])
    except Exception:
        return 1
    room = free // 2 - plan.fixed
    return int(max(1, min(64, room // max(1, plan.per_angle))))


def retrieve_scan(
    scan_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    method: Any,
    positions: Sequence[int] | str | None = None,
    device: str = "cpu",
    workers: int = 1,
    scheduler: Any = None,
    params: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    memory_limit_bytes: int | None = None,
    batch: int | None = None,
    log: Callable[[str], None] | None = None,
    drift: str | None = None,
    flat_mode: str = "mean",
) -> Path:
    """Retrieve every projection of a scan file into a retrieval file (streaming, resumable).

    Parameters
    ----------
    scan_path : path-like
        Scan file (``interfaces.md``): ``/exchange/data`` ``(P, A, H, W)``.
    out_path : path-like
        Retrieval file to write; ``/retrieval/<map>`` ``(A, H, W)`` float32.
    method : str or Retriever subclass
        Registry name (``"mist"``, ``"lcs"``, ...) or a class following the Retriever
        protocol (``xspeckle.retrieve.base``).
    positions : sequence of int or str, optional
        Diffuser positions to use (``"0,2,5"``); default all.
    device : {"cpu", "cuda"}
        ``"cuda"``: CuPy on the current GPU, ``batch`` projections per step.
    workers : int
        Local computing processes (1 = this process).
    scheduler : str or distributed.Client, optional
        Address of a Dask scheduler (``tcp://host:8786``) or a Client; overrides ``workers``.
    params : mapping, optional
        Method parameters (keyword arguments of the retriever).
    overwrite : bool
        Replace an existing output (it stays untouched until the new one is complete).
    progress : callable(done, total), optional
        Called with angles done so far (resumed ones included) and the total A: once at
        the start, then after every written angle.  With the serial engine, methods that
        report their own progress (PWF iterations, UMPA/XSVT rows) also give fractional
        ``done`` values (at most every 0.2 s) while one projection is computed.
    memory_limit_bytes : int, optional
        Bound on the arrays held by the run (all local processes together); default half
        the available RAM.  Workers, angles per task and tasks in flight are chosen from it.
    batch : int, optional
        Angles per task (CPU engines, default 1) or per GPU step (default: what fits).
    log : callable(str), optional
        Receives one-line messages (resume, restart, memory decisions); default: the
        ``xspeckle.pipeline`` logger.
    drift : {"wings", "frame"}, optional
        Correct diffuser drift: for every angle and position, the sub-pixel speckle shift between the
        reference and the sample frame is measured in the free-space side wings (or the whole frame) and the
        reference is moved onto it before retrieval (:func:`xspeckle.preprocess.estimate_drift`); the shifts
        are stored as ``/drift/shifts_px`` ``(A, P, 2)`` (dy, dx) px.
    flat_mode : {"mean", "nearest", "linear"}
        Flat-field drift: with several flats taken during the scan (``/exchange/theta_white``, the angle in
        degrees of each flat, DXchange's name), normalise each angle with the nearest flat group or the linear
        interpolation between the two that bracket it (:func:`xspeckle.preprocess.flat_for_angle`). The
        references use the flat at ``/exchange/theta_reference`` when given, else the mean flat.

    Returns
    -------
    Path of the finished retrieval file.

    Raises
    ------
    InputError
        Bad scan, positions, parameters, output path, or a memory limit too small.
    MethodUnavailableError
        Unknown method, CuPy/CUDA absent for ``device="cuda"``, Dask absent for ``scheduler``.
    """
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    say = log if log is not None else logger.info
    final = check_output_path(out_path, overwrite=overwrite)
    part = partial_path(final)
    if device not in ("cpu", "cuda"):
        raise MethodUnavailableError(f"unknown device {device!r}: use 'cpu' or 'cuda'")
    if device == "cuda" and not B.cuda_available():
        raise MethodUnavailableError(
            "--device cuda needs CuPy and a CUDA GPU; install the extra with 'pip install xspeckle[gpu]' or use --device cpu"
        )
    try:
        workers = int(workers)
    except (TypeError, ValueError):
        raise InputError(f"workers must be a whole number >= 1, got {workers!r}") from None
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if device == "cuda" and scheduler is not None:
        raise InputError(
            "--scheduler with --device cuda is not supported: run the GPU retrieval on the GPU machine "
            "(one process per GPU), or use --device cpu with the cluster"
        )
    if batch is not None and int(batch) < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    if memory_limit_bytes is not None and int(memory_limit_bytes) <= 0:
        raise InputError(f"memory_limit_bytes must be positive, got {memory_limit_bytes}")
    cls = _resolve_method(method)  # MethodUnavailableError early, before any work
    method_name = method if isinstance(method, str) else (getattr(cls, "name", "") or cls.__name__)
    params = dict(params or {})
    params_json = _dumps(params)
    from xspeckle.preprocess import FLAT_MODES

    if flat_mode not in FLAT_MODES:
        raise InputError(f"flat_mode must be one of {', '.join(FLAT_MODES)}, got {flat_mode!r}")
    if drift is not None:
        from xspeckle.preprocess import DRIFT_REGIONS

        if drift not in DRIFT_REGIONS:
            raise InputError(f"drift must be one of {', '.join(DRIFT_REGIONS)}, got {drift!r}")

    from xspeckle.io.scan import Scan

    scan = Scan(scan_path)
    pool = None
    writer: _PartialWriter | None = None
    finished = False
    try:
        pos = scan.positions(positions)
        n_ang = scan.n_angles
        hash_ = input_hash(scan_path, method=method, positions=pos, device=device,
                           params={**params, **({"drift": drift} if drift else {}),
                                   **({"flat_mode": flat_mode} if flat_mode != "mean" else {})})
        spec = _Spec(str(Path(scan_path).resolve()), tuple(pos), method, params_json, device, drift, flat_mode)

        # ---- resume?
        restarted = None
        resumed = 0
        if part.exists():
            writer, why = _PartialWriter.try_open(part, hash_, n_ang)
            if writer is None:
                restarted = why
                say(f"{why}: starting fresh")
                with contextlib.suppress(OSError):
                    part.unlink()
            else:
                resumed = int(writer.done.sum())
                say(f"resuming {final.name}: {resumed} of {n_ang} angles already done")

        # ---- local workers are started first: their interpreter start-up (imports) then overlaps
        # this process's set-up below instead of following it
        n_todo = n_ang - resumed
        n_local = max(1, min(workers, n_todo)) if device == "cpu" and scheduler is None else 1
        if n_local > 1:
            pool = _Pool(spec, n_local)

        # ---- reference and retriever, once (in this process also for the parallel engines:
        # it validates the parameters with one clear error before any worker computes and
        # gives the effective parameters and the state size for the memory plan)
        t0 = time.perf_counter()
        state = _State(spec, scan=scan)
        retr = state.retriever
        t_ref = time.perf_counter() - t0
        # a deep copy taken now: some retrievers update their parameters while they run
        parameters = json.loads(_dumps({**params, **dict(getattr(retr, "parameters", {}) or {})}))
        ref_bytes = sum(_array_bytes(x, set()) for x in (state.flat, state.dark))
        state_bytes = _array_bytes(retr, set())
        outputs = tuple(getattr(retr, "outputs", ()) or ())
        working = float(getattr(retr, "working_factor", DEFAULT_WORKING_FACTOR))
        limit = int(memory_limit_bytes) if memory_limit_bytes is not None else _default_memory_limit()

        # ---- engine and memory plan
        if scheduler is not None and device == "cpu":
            pool = _Dask(spec, scheduler)
            pool.log = say
            n_req = pool.n_workers
        else:
            n_req = n_local
        plan = estimate_memory(
            n_positions=len(pos), frame_shape=scan.frame_shape, reference_bytes=ref_bytes, state_bytes=state_bytes,
            outputs=outputs, working_factor=working, memory_limit_bytes=limit, workers=n_req,
            batch=batch if device == "cpu" else 1, distributed=isinstance(pool, _Dask),
        )
        if device == "cuda":
            plan.batch = _gpu_batch(plan, batch)
        for note in plan.notes:
            say(note)
        if isinstance(pool, _Pool) and pool.workers != plan.workers:  # the memory limit allows fewer
            pool.close(kill=True)
            pool = None
        if pool is None:
            pool = _Serial(state) if plan.workers <= 1 else _Pool(spec, plan.workers)
        if not isinstance(pool, _Serial):
            # workers build their own state; free this process's retriever
            state.retriever = None
            del retr
        with open_geometry_attrs(scan.path) as geom_attrs:
            geometry_attrs = dict(geom_attrs)
        pipeline_info = {"scan": str(Path(scan_path).resolve()), "positions": pos, "device": device,
                         "input_hash": hash_, "method_ref": _method_ref(method), "drift": drift,
                         "flat_mode": flat_mode}

        total = n_ang
        done_count = [resumed]
        t_results: list[float] = []
        if progress is not None:
            progress(done_count[0], total)
            if isinstance(pool, _Serial):  # fractional angles from inside a long projection (PWF, UMPA, XSVT)
                pool.within = lambda frac: progress(done_count[0] + frac, total)

        def on_result(angle: int, maps: Mapping[str, np.ndarray]) -> None:
            nonlocal writer
            if writer is None:
                shapes = {k: tuple(np.shape(v)) for k, v in maps.items() if k in _UNITS}
                extra = sorted(k for k in maps if k not in _UNITS and k != "_diag")
                if extra:
                    say(f"not stored (not in the retrieval layout of interfaces.md): {', '.join(extra)}")
                if not shapes:
                    raise ScanFormatError(f"method {method_name!r} returned no map of the retrieval layout")
                writer = _PartialWriter.create(
                    part, shapes=shapes, n_angles=n_ang, method=method_name, parameters=parameters,
                    pipeline=pipeline_info, geometry_attrs=geometry_attrs, theta_deg=scan.theta_deg, hash_=hash_,
                    diag_keys=tuple(maps.get("_diag") or ()),
                )
            if writer.done[angle]:
                return
            writer.write(angle, maps)
            t_results.append(time.perf_counter())
            done_count[0] += 1
            if progress is not None:
                progress(done_count[0], total)

        todo = [a for a in range(n_ang) if writer is None or not writer.done[a]]
        t1 = time.perf_counter()
        try:
            pool.run(todo, on_result, plan)
        except BaseException:
            if not isinstance(pool, _Serial):
                pool.close(kill=True)
                pool = None
            raise
        t_compute = time.perf_counter() - t1
        if writer is None:  # nothing to do and no partial file: cannot happen with A >= 1
            raise ScanFormatError(f"{scan.path}: no angle to retrieve")
        if not writer.done.all():
            raise RuntimeError(f"{int((~writer.done).sum())} angles were not computed")  # a bug, not a user error
        # ---- honest diagnostics: angles that did not converge and the retrievers' warnings, on stderr
        # (one line each), in the file (root attribute ``warnings``) and in the log
        reasons, warns, iters = writer.diagnostics()
        messages = summarise_diagnostics(reasons, warns, method_name)
        for msg in messages:
            if log is not None:
                log(f"warning: {msg}")
            else:
                logger.warning(msg)
        writer.finalise(messages)
        writer.close()
        # ---- finalise: atomic rename; the final name never holds a partial file
        check_output_path(final, overwrite=overwrite)
        os.replace(part, final)
        writer = None
        n_new = n_ang - resumed
        info = {
            "xspeckle_version": __version__,
            "command": {"scan": str(scan_path), "out": str(final), "method": _method_ref(method), "positions": pos,
                        "device": device, "workers": workers, "scheduler": None if scheduler is None else str(scheduler),
                        "params": params, "memory_limit_bytes": memory_limit_bytes, "batch": batch},
            "method": method_name,
            "parameters": parameters,
            "input_hash": hash_,
            "engine": "cuda" if device == "cuda" else pool.name,
            "memory": plan.as_dict(),
            "tasks": int(getattr(pool, "tasks", 0)),
            "angles": n_ang,
            "frame_shape": list(scan.frame_shape),
            "resumed_angles": resumed,
            "restarted": restarted,
            "warnings": messages,
            "iterations": iters,
            "stop_reason": reasons,
            "timings": {"setup_s": t_ref, "compute_s": t_compute, "total_s": time.perf_counter() - t_start,
                        # from the call to the first written angle: set-up plus worker start-up
                        "first_result_s": (t_results[0] - t_start) if t_results else None,
                        "projections_per_s": (n_new / t_compute) if t_compute > 0 and n_new else None,
                        # after the first result: excludes worker start-up and per-worker set-up
                        "steady_projections_per_s": ((len(t_results) - 1) / (t_results[-1] - t_results[0])
                                                     if len(t_results) > 1 and t_results[-1] > t_results[0] else None)},
            "started_utc": started,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with atomic_path(log_path(final), overwrite=True) as tmp:
            tmp.write_text(json.dumps(info, indent=2, default=str))
        finished = True
        return final
    finally:
        if writer is not None:
            writer.close()
        if pool is not None:
            # on an error (bad parameters found while the workers were starting, ...) do not wait
            # for their start-up to end
            pool.close(kill=not finished)
        scan.close()


@contextlib.contextmanager
def open_geometry_attrs(path: str | os.PathLike):
    """Yield the raw ``/geometry`` attributes of a scan file (copied verbatim to the output)."""
    with h5py.File(path, "r") as f:
        g = f.get("geometry")
        yield {} if g is None else {k: g.attrs[k] for k in g.attrs}
