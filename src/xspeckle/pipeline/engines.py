"""Engines: who computes the angles of a run, and the settings of the processes that do.

Every engine runs the same per-angle code (:func:`xspeckle.pipeline.state.compute`), so CPU
results are bit-for-bit identical between them, and hands each finished angle to one
callback in this process (the single writer):

* :class:`SerialEngine` — in this process (``workers=1``; ``scipy.fft`` and MIST's row
  threads use every core), also the GPU engine (``device="cuda"``, several angles per step);
* :class:`ProcessPoolEngine` — N local processes (spawn context) with ``cores // N`` threads
  each; every worker opens the scan itself and a task carries only angle numbers;
* :class:`DaskEngine` — a Dask distributed cluster, same task function, FFT threads capped
  to each worker's share of its host, adaptive angles per task (:class:`Batcher`).

:func:`choose_engine` decides which one runs; :func:`settle_engine` makes it (keeping a
pool started early when the memory plan keeps its size).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, MethodUnavailableError
from xspeckle.pipeline.memory import TASK_TARGET_S, MemoryPlan
from xspeckle.pipeline.state import Spec, State, compute, resolve_method

__all__ = ["choose_engine", "settle_engine", "SerialEngine", "ProcessPoolEngine", "DaskEngine", "Batcher",
           "THREAD_ENV", "INNER_PROGRESS_S"]

#: callback receiving each finished angle: ``on_result(angle, maps)``
OnResult = Callable[[int, Mapping[str, np.ndarray]], None]


# =========================================================================== choice
def choose_engine(*, device: str, scheduler: Any, workers: int, n_todo: int,
                  plan: MemoryPlan | None = None) -> tuple[str, int]:
    """The engine of a run and its computing processes.

    Parameters
    ----------
    device : {"cpu", "cuda"}
    scheduler : str, Client or None
        Dask scheduler (CPU only).
    workers : int
        Requested local processes.
    n_todo : int
        Angles still to compute (more processes than angles would idle).
    plan : MemoryPlan, optional
        The memory plan; without it, what to start before the plan is made (local processes
        start early so that their start-up overlaps this process's set-up).

    Returns
    -------
    (kind, n) : ``("cuda", 1)``, ``("dask", n)`` (``n`` = the plan's workers, 0 before the plan),
        ``("processes", n)`` with n > 1, or ``("serial", 1)`` (also when the memory plan
        allows only one process).
    """
    if device == "cuda":
        return "cuda", 1
    if scheduler is not None:
        return "dask", 0 if plan is None else plan.workers
    n = max(1, min(int(workers), n_todo))
    if plan is not None:
        n = min(n, plan.workers)
    return ("processes", n) if n > 1 else ("serial", 1)


def settle_engine(started, kind: str, n: int, spec: Spec, state: State):
    """The engine that runs: *started* when it is the chosen one, else a new one.

    A pool started early with another number of processes than the plan allows is
    stopped; with processes other than this one computing, this process's retriever is
    freed (every worker builds its own).

    Parameters
    ----------
    started : engine or None
        The pool started before the plan, or the Dask engine.
    kind, n : str, int
        From :func:`choose_engine` with the plan.
    spec : Spec
    state : State
        This process's state (used by the serial and GPU engines).
    """
    if started is not None and started.name == kind and (kind == "dask" or started.workers == n):
        engine = started
    else:
        if started is not None:  # the memory limit allows fewer processes
            started.close(kill=True)
        engine = ProcessPoolEngine(spec, n) if kind == "processes" else SerialEngine(state, name=kind)
    if kind in ("processes", "dask"):
        state.retriever = None
    return engine


# =========================================================================== task side
_LOCAL = threading.local()


def _thread_state(spec: Spec) -> State:
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
        st = states[spec.key] = State(spec)
    return st


def _task(spec: Spec, angles: tuple[int, ...]) -> tuple[list[tuple[int, dict[str, np.ndarray]]], float]:
    """Task run by a worker process or a Dask worker: compute some angles.

    Returns
    -------
    (results, seconds) : list of (angle, maps) and the seconds spent computing them
        (reading, normalising, retrieving; not the one-off state set-up), which sizes
        later tasks when batching is adaptive.
    """
    st = _thread_state(spec)
    t0 = time.perf_counter()
    res = compute(st, angles)
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


def _warm(spec: Spec) -> int:
    """First task of every local worker: import what computing needs while the parent sets up.

    Imports only (the method's module, scan reader, normalisation): the worker builds its
    state with the first real task, after the parent has chosen the number of workers
    and freed its own copy, so the memory plan holds.  Returns the worker's pid.
    """
    with contextlib.suppress(Exception):  # any real problem surfaces with the first task, with its own error
        import xspeckle.io.scan  # noqa: F401
        import xspeckle.preprocess  # noqa: F401

        resolve_method(spec.method)
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


def _dask_task(spec: Spec, angles: tuple[int, ...], host_threads: Mapping[str, int], client_pid: int):
    """:func:`_task` on a Dask worker: FFT threads capped to the worker's share of its host,
    large temporaries from the heap (:func:`_worker_settings`)."""
    with _worker_settings(_dask_fft_threads(host_threads, client_pid)):
        return _task(spec, angles)


class Batcher:
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


class SerialEngine:
    """Every angle in this process, with the state built for the memory plan (also the GPU engine).

    Parameters
    ----------
    state : State
    name : {"serial", "cuda"}
        Name in the run's log.
    """

    def __init__(self, state: State, name: str = "serial"):
        self.state = state
        self.name = name
        self.workers = 1
        self.tasks = 0

    def run(self, todo: Sequence[int], on_result: OnResult, plan: MemoryPlan,
            within: Callable[[float], None] | None = None) -> None:
        """Compute *todo* in tasks of ``plan.batch`` angles; *within(fraction)* is fed by the retriever's own
        progress (PWF iterations, UMPA/XSVT rows), so that a single long projection shows progress."""
        batcher = Batcher(todo, plan.batch)
        while True:
            angles = batcher.take()
            if not angles:
                break
            with _inner_progress(self.state.retriever, within, len(angles)):
                results = compute(self.state, angles)
            for a, maps in results:
                on_result(a, maps)
        self.tasks = batcher.tasks

    def close(self, kill: bool = False) -> None:
        """Nothing to stop."""


#: thread settings of the local worker processes (set while they are spawned)
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
              "XSPECKLE_FFT_WORKERS")


class ProcessPoolEngine:
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

    def __init__(self, spec: Spec, workers: int):
        threads = max(1, B.available_cores() // workers)
        saved = {k: os.environ.get(k) for k in THREAD_ENV}
        try:
            for k in THREAD_ENV:
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

    def run(self, todo: Sequence[int], on_result: OnResult, plan: MemoryPlan,
            within: Callable[[float], None] | None = None) -> None:
        """Compute *todo* in tasks of ``plan.batch`` angles, ``plan.in_flight`` at a time (no fractional progress)."""
        batcher = Batcher(todo, plan.batch)
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


class DaskEngine:
    """A Dask distributed cluster (``Client(address)``; a Client object is used as is).

    Tasks carry only the (small) spec and the angle numbers; every worker thread opens the
    scan and builds its state once (:func:`_thread_state`).  Each task caps the FFT threads
    to its worker's share of the host and undoes the page-fault cost of Dask's default
    malloc setting while it runs (:func:`_worker_settings`), and tasks grow to several
    angles when one angle is short (:class:`Batcher`), so that the scheduler's per-task
    cost stays small against the computing.
    """

    name = "dask"

    def __init__(self, spec: Spec, scheduler: Any, log: Callable[[str], None] | None = None):
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
        self.log = log  # one-line messages (waiting for workers)
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
    def workers(self) -> int:
        """Workers connected to the scheduler now (at least 1)."""
        return max(1, len(self._workers()))

    def run(self, todo: Sequence[int], on_result: OnResult, plan: MemoryPlan,
            within: Callable[[float], None] | None = None) -> None:
        """Compute *todo* on the cluster, adaptive angles per task unless the plan fixes them (no fractional
        progress)."""
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
        batcher = Batcher(todo, b_max, adaptive=plan.adaptive, n_workers=max(1, len(workers)))
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


