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

Modules: :mod:`~xspeckle.pipeline.run` (:func:`retrieve_scan`), :mod:`~xspeckle.pipeline.engines`
(serial, process pool, Dask; :func:`choose_engine`), :mod:`~xspeckle.pipeline.memory` (the plan),
:mod:`~xspeckle.pipeline.state` (per-process state and the per-angle work); the resumable writer is
:class:`xspeckle.io.partial.RetrievalWriter`.
"""

from xspeckle.io.partial import input_hash, log_path, partial_path
from xspeckle.pipeline.engines import choose_engine
from xspeckle.pipeline.memory import (
    DEFAULT_WORKING_FACTOR,
    MAX_ADAPTIVE_BATCH,
    TASK_TARGET_S,
    MemoryPlan,
    estimate_memory,
)
from xspeckle.pipeline.run import CONVERGED_REASONS, open_geometry_attrs, retrieve_scan, summarise_diagnostics
from xspeckle.pipeline.state import run_batch

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
    "summarise_diagnostics",
    "open_geometry_attrs",
    "CONVERGED_REASONS",
    "run_batch",
    "choose_engine",
]
