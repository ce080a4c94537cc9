"""``retrieve_scan``: one scan through one retriever, angle by angle, resumably.

Read top to bottom, :func:`retrieve_scan` does: validate the options -> resume the partial
file or start fresh -> build the reference and retriever once -> plan the memory and choose
the engine -> ``engine.run`` (each finished angle written by this process) -> diagnostics,
atomic rename onto the output name, JSON log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import h5py
import numpy as np

from xspeckle import backend as B
from xspeckle._version import __version__
from xspeckle.errors import InputError, MethodUnavailableError, ScanFormatError
from xspeckle.io.atomic import atomic_path, check_output_path
from xspeckle.io.partial import RetrievalWriter, input_hash, log_path, method_ref, partial_path
from xspeckle.io.results import RETRIEVAL_UNITS, json_text
from xspeckle.pipeline.engines import DaskEngine, ProcessPoolEngine, choose_engine, settle_engine
from xspeckle.pipeline.memory import MemoryPlan, array_bytes, default_memory_limit, estimate_memory, gpu_batch
from xspeckle.pipeline.state import Spec, State, resolve_method

__all__ = ["retrieve_scan", "summarise_diagnostics", "open_geometry_attrs", "CONVERGED_REASONS"]

logger = logging.getLogger("xspeckle.pipeline")

#: stop reasons of iterative methods that count as converged (anything else is reported)
CONVERGED_REASONS = ("converged", "correlation")


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
    workers, cls = _validate(method, device=device, workers=workers, scheduler=scheduler, batch=batch,
                             memory_limit_bytes=memory_limit_bytes, flat_mode=flat_mode, drift=drift)
    method_name = method if isinstance(method, str) else (cls.name or cls.__name__)
    params = dict(params or {})

    from xspeckle.io.scan import Scan

    scan = Scan(scan_path)
    output: _Output | None = None
    engine = None
    finished = False
    try:
        pos = scan.positions(positions)
        n_ang = scan.n_angles
        digest = input_hash(scan_path, method=method, positions=pos, device=device,
                            params={**params, **({"drift": drift} if drift else {}),
                                    **({"flat_mode": flat_mode} if flat_mode != "mean" else {})})
        spec = Spec(str(Path(scan_path).resolve()), tuple(pos), method, json_text(params), device, drift, flat_mode)

        # ---- resume, or start fresh
        output = _Output(partial_path(final), digest, n_ang, progress=progress, say=say)
        output.resume(final.name)

        # ---- local worker processes start first: their interpreter start-up (imports) then overlaps
        # this process's set-up below instead of following it
        request = dict(device=device, scheduler=scheduler, workers=workers, n_todo=len(output.todo()))
        kind, n = choose_engine(**request)
        engine = ProcessPoolEngine(spec, n) if kind == "processes" else None

        # ---- reference and retriever, once (in this process also for the parallel engines: it validates
        # the parameters with one clear error before any worker computes and gives the effective parameters
        # and the state size for the memory plan)
        t0 = time.perf_counter()
        state = State(spec, scan=scan)
        t_ref = time.perf_counter() - t0
        # a deep copy taken now: some retrievers update their parameters while they run
        parameters = json.loads(json_text({**params, **dict(state.retriever.parameters or {})}))
        if kind == "dask":
            engine = DaskEngine(spec, scheduler, log=say)

        # ---- memory plan, then the engine that fits it
        plan = _memory_plan(state, workers=engine.workers if kind == "dask" else n, distributed=kind == "dask",
                            device=device, batch=batch, memory_limit_bytes=memory_limit_bytes)
        for note in plan.notes:
            say(note)
        kind, n = choose_engine(**request, plan=plan)
        engine = settle_engine(engine, kind, n, spec, state)

        # ---- compute: the engine hands every finished angle to this process, the only writer
        with open_geometry_attrs(scan.path) as geom_attrs:
            geometry_attrs = dict(geom_attrs)
        pipeline_info = {"scan": spec.scan_path, "positions": pos, "device": device, "input_hash": digest,
                         "method_ref": method_ref(method), "drift": drift, "flat_mode": flat_mode}
        output.start(method=method_name, parameters=parameters, pipeline=pipeline_info,
                     geometry_attrs=geometry_attrs, theta_deg=scan.theta_deg)
        t1 = time.perf_counter()
        engine.run(output.todo(), output.write, plan, within=output.within)
        t_compute = time.perf_counter() - t1

        # ---- honest diagnostics (angles that did not converge, the retrievers' warnings) on stderr, in the
        # file (root attribute ``warnings``) and in the log; then the atomic rename onto the final name
        writer = output.writer
        if writer is None:  # nothing to do and no partial file: cannot happen with A >= 1
            raise ScanFormatError(f"{scan.path}: no angle to retrieve")
        if not writer.done.all():
            raise RuntimeError(f"{int((~writer.done).sum())} angles were not computed")  # a bug, not a user error
        reasons, warns, iters = writer.diagnostics()
        messages = summarise_diagnostics(reasons, warns, method_name)
        for msg in messages:
            if log is not None:
                log(f"warning: {msg}")
            else:
                logger.warning(msg)
        writer.finalise(messages)
        writer.commit(final, overwrite=overwrite)

        # ---- the JSON log beside the output
        n_new = n_ang - output.resumed
        t_results = output.t_results
        info = {
            "xspeckle_version": __version__,
            "command": {"scan": str(scan_path), "out": str(final), "method": method_ref(method), "positions": pos,
                        "device": device, "workers": workers, "scheduler": None if scheduler is None else str(scheduler),
                        "params": params, "memory_limit_bytes": memory_limit_bytes, "batch": batch},
            "method": method_name,
            "parameters": parameters,
            "input_hash": digest,
            "engine": engine.name,
            "memory": plan.as_dict(),
            "tasks": int(engine.tasks),
            "angles": n_ang,
            "frame_shape": list(scan.frame_shape),
            "resumed_angles": output.resumed,
            "restarted": output.restarted,
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
        if engine is not None:
            # on an error (bad parameters found while the workers were starting, Ctrl-C, ...) do not wait
            # for the workers to end their tasks
            engine.close(kill=not finished)
        if output is not None:
            output.close()
        scan.close()


def _validate(method: Any, *, device: str, workers: Any, scheduler: Any, batch: int | None,
              memory_limit_bytes: int | None, flat_mode: str, drift: str | None) -> tuple[int, type]:
    """Check the options before any work: ``(workers as int, Retriever class)`` or one clear error."""
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
    cls = resolve_method(method)  # MethodUnavailableError early, before any work
    from xspeckle.preprocess import DRIFT_REGIONS, FLAT_MODES

    if flat_mode not in FLAT_MODES:
        raise InputError(f"flat_mode must be one of {', '.join(FLAT_MODES)}, got {flat_mode!r}")
    if drift is not None and drift not in DRIFT_REGIONS:
        raise InputError(f"drift must be one of {', '.join(DRIFT_REGIONS)}, got {drift!r}")
    return workers, cls


def _memory_plan(state: State, *, workers: int, distributed: bool, device: str, batch: int | None,
                 memory_limit_bytes: int | None) -> MemoryPlan:
    """The run's memory plan from this process's state (reference, flat, dark, retriever); GPU: angles per step."""
    retriever = state.retriever
    plan = estimate_memory(
        n_positions=len(state.positions), frame_shape=state.scan.frame_shape,
        reference_bytes=sum(array_bytes(x, set()) for x in (state.flat, state.dark)),
        state_bytes=array_bytes(retriever, set()), outputs=tuple(retriever.outputs or ()),
        working_factor=float(retriever.working_factor),
        memory_limit_bytes=int(memory_limit_bytes) if memory_limit_bytes is not None else default_memory_limit(),
        workers=workers, batch=batch if device == "cpu" else 1, distributed=distributed,
    )
    if device == "cuda":
        plan.batch = gpu_batch(plan, batch)
    return plan


class _Output:
    """The run's partial file and progress: resumed, or created with the first result; committed at the end.

    Parameters
    ----------
    path : Path
        The partial file (:func:`~xspeckle.io.partial.partial_path` of the output).
    digest : str
        :func:`~xspeckle.io.partial.input_hash` of the run.
    n_angles : int
    progress : callable(done, total) or None
    say : callable(str)
        One-line messages.
    """

    def __init__(self, path: Path, digest: str, n_angles: int, *, progress: Callable[[float, int], None] | None,
                 say: Callable[[str], None]):
        self.path, self.digest, self.n_angles = path, digest, int(n_angles)
        self.progress, self.say = progress, say
        self.writer: RetrievalWriter | None = None
        self.header: dict[str, Any] = {}
        self.resumed = 0
        self.restarted: str | None = None
        self.done = 0
        self.t_results: list[float] = []
        #: fractional progress from inside a long projection (PWF, UMPA, XSVT), for the serial engine
        self.within = None if progress is None else self._within

    def resume(self, name: str) -> None:
        """Reopen the partial file when it was made with the same inputs; otherwise remove it."""
        if not self.path.exists():
            return
        writer, why = RetrievalWriter.try_open(self.path, self.digest, self.n_angles)
        if writer is None:
            self.restarted = why
            self.say(f"{why}: starting fresh")
            with contextlib.suppress(OSError):
                self.path.unlink()
            return
        self.writer = writer
        self.resumed = self.done = int(writer.done.sum())
        self.say(f"resuming {name}: {self.resumed} of {self.n_angles} angles already done")

    def todo(self) -> list[int]:
        """Angles not written yet."""
        return [a for a in range(self.n_angles) if self.writer is None or not self.writer.done[a]]

    def start(self, **header: Any) -> None:
        """Keep the file's header (``RetrievalWriter.create`` keywords) and report the progress so far."""
        self.header = header
        if self.progress is not None:
            self.progress(self.done, self.n_angles)

    def write(self, angle: int, maps: Mapping[str, np.ndarray]) -> None:
        """Write one finished angle (the engines' ``on_result``); the first one creates the partial file."""
        if self.writer is None:
            self.writer = self._create(maps)
        if self.writer.done[angle]:
            return
        self.writer.write(angle, maps)
        self.t_results.append(time.perf_counter())
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.n_angles)

    def _within(self, fraction: float) -> None:
        self.progress(self.done + fraction, self.n_angles)

    def _create(self, maps: Mapping[str, Any]) -> RetrievalWriter:
        """The partial file, made from the first result: its maps give the datasets and their shapes."""
        shapes = {k: tuple(np.shape(v)) for k, v in maps.items() if k in RETRIEVAL_UNITS}
        extra = sorted(k for k in maps if k not in RETRIEVAL_UNITS and k != "_diag")
        if extra:
            self.say(f"not stored (not in the retrieval layout of interfaces.md): {', '.join(extra)}")
        if not shapes:
            raise ScanFormatError(f"method {self.header['method']!r} returned no map of the retrieval layout")
        return RetrievalWriter.create(self.path, shapes=shapes, n_angles=self.n_angles, digest=self.digest,
                                      diag_keys=tuple(maps.get("_diag") or ()), **self.header)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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



@contextlib.contextmanager
def open_geometry_attrs(path: str | os.PathLike):
    """Yield the raw ``/geometry`` attributes of a scan file (copied verbatim to the output)."""
    with h5py.File(path, "r") as f:
        g = f.get("geometry")
        yield {} if g is None else {k: g.attrs[k] for k in g.attrs}
