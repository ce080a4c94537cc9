"""The memory plan of a run: workers, angles per task and tasks in flight that fit a bound.

:func:`estimate_memory` sizes a run from the arrays it holds: per computing process the
normalised reference, flat, dark and the retriever's state; per angle in flight the raw and
normalised ``(P, H, W)`` stacks, the retriever's temporaries
(:attr:`xspeckle.retrieve.base.Retriever.working_factor` stacks) and the output maps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError
from xspeckle.io.results import RETRIEVAL_COMPONENTS
from xspeckle.retrieve.base import DEFAULT_WORKING_FACTOR

__all__ = ["MemoryPlan", "estimate_memory", "array_bytes", "default_memory_limit", "gpu_batch",
           "DEFAULT_WORKING_FACTOR", "TASK_TARGET_S", "MAX_ADAPTIVE_BATCH"]

#: adaptive batching (Dask): a task should last about this long, so that the scheduler's
#: per-task cost (a round trip, serialising the results) stays a few per cent of it
TASK_TARGET_S = 0.25
#: adaptive batching (Dask): at most this many angles per task
MAX_ADAPTIVE_BATCH = 32


def array_bytes(obj: Any, seen: set[int], depth: int = 0) -> int:
    """Bytes of the arrays reachable from *obj* (attributes, dicts, lists; 3 levels)."""
    if id(obj) in seen or depth > 3:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray) or B.is_cupy(obj):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(array_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(array_bytes(v, seen, depth + 1) for v in obj)
    d = getattr(obj, "__dict__", None)
    if d is not None and not isinstance(obj, type):
        return sum(array_bytes(v, seen, depth + 1) for v in d.values())
    return 0


def _n_output_maps(outputs: Iterable[str]) -> int:
    n = sum(len(RETRIEVAL_COMPONENTS[k]) if k in RETRIEVAL_COMPONENTS else 1 for k in outputs)
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


def default_memory_limit() -> int:
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


def gpu_batch(plan: MemoryPlan, batch: int | None) -> int:
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

