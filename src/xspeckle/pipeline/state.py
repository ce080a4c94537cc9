"""Per-process computing state of a run: the scan, flat/dark, the retriever, and one step of work.

:class:`Spec` is what a computing process needs to build its own :class:`State` (small,
picklable: a worker process or a Dask worker gets only this and angle numbers).
:func:`compute` is the per-angle work every engine runs — read, normalise, retrieve,
check — so results are bit-for-bit the same whichever engine runs them.

The device is chosen once, in :func:`xspeckle.pipeline.run.retrieve_scan`, and travels in
:attr:`Spec.device`; :meth:`State.put` is the only place that moves arrays onto it.
The flat and dark frames come from :meth:`xspeckle.io.scan.Scan.effective_flat_dark`,
the same that :meth:`~xspeckle.io.scan.Scan.normalised_sample` uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError
from xspeckle.io.partial import DIAGNOSTIC_KEYS, method_ref
from xspeckle.io.results import json_text
from xspeckle.retrieve.base import Retriever
from xspeckle.retrieve.output_check import check_maps

__all__ = ["Spec", "State", "compute", "run_batch", "resolve_method", "method_label"]


@dataclass(frozen=True)
class Spec:
    """What a computing process needs to build its own state (small, picklable)."""

    scan_path: str
    positions: tuple[int, ...]
    method: Any  # str (registry name) or a Retriever subclass (pickled by reference)
    params_json: str
    device: str  # "cpu" or "cuda", decided once by retrieve_scan
    drift: str | None = None  # "wings" / "frame": correct diffuser drift per angle (preprocess.estimate_drift)
    flat_mode: str = "mean"  # "nearest" / "linear": per-angle flat from /exchange/theta_white (flat drift)

    @property
    def key(self) -> str:
        return json_text([self.scan_path, self.positions, method_ref(self.method), self.params_json, self.device,
                          self.drift, self.flat_mode])


class State:
    """Per-process (per-thread) computing state: open scan, flat/dark, retriever.

    Parameters
    ----------
    spec : Spec
    retriever : Retriever, optional
        Use this one instead of building it (the drift hook still keeps the reference).
    scan : Scan, optional
        An open scan of ``spec.scan_path`` (default: opened here).
    """

    def __init__(self, spec: Spec, retriever: Retriever | None = None, scan=None):
        from xspeckle.io.scan import Scan

        self.spec = spec
        self.device = spec.device
        self.scan = scan if scan is not None else Scan(spec.scan_path)
        self.positions = list(spec.positions)
        flat, dark = self.scan.effective_flat_dark(flat_mode="mean")
        ref_flat = self.put(self.scan.effective_flat_dark(None, flat_mode=spec.flat_mode)[0])
        self.flat, self.dark = self.put(flat), self.put(dark)
        self.reference = None
        if retriever is None or spec.drift:
            ref = self._normalised_reference(self.positions, ref_flat)
            if spec.drift:
                self.reference = ref  # kept: shifted onto each angle's speckle (drift hook in compute)
            if retriever is None:
                params = json.loads(spec.params_json)
                if _wants_all_references(spec.method, params, self.scan, self.positions):
                    # PWF: every reference position of the scan for the coherence calibration and, with
                    # diffuser_estimate=multi-reference, for the diffuser (single shot from one position)
                    params["all_references"] = self._normalised_reference(list(range(self.scan.n_positions)), ref_flat)
                retriever = build_retriever(spec.method, ref, self.scan.geometry, params)
        self.retriever = retriever
        self._drift_key = None  # shifts (0.01 px) the current drift-corrected retriever was built for
        self._drift_retriever = None

    def put(self, x):
        """*x* on this run's device (NumPy on ``"cpu"``, CuPy on ``"cuda"``); None stays None."""
        return None if x is None else B.to_device(x, self.device)

    def _normalised_reference(self, positions: Sequence[int], flat):
        from xspeckle.preprocess import normalise

        return normalise(self.put(self.scan.reference(positions)), flat, self.dark)

    def read(self, angles: Sequence[int]) -> np.ndarray:
        """Raw frames of several angles ``(B, P', H, W)`` float32 (host memory)."""
        h, w = self.scan.frame_shape
        raw = np.empty((len(angles), len(self.positions), h, w), np.float32)
        for j, a in enumerate(angles):
            raw[j] = self.scan.sample(int(a), self.positions)
        return raw

    def normalise(self, raw, angles: Sequence[int]):
        """Dark/flat normalisation of a batch ``(B, P, H, W)``: the mean flat, or each angle's own (flat drift)."""
        from xspeckle.preprocess import normalise

        if self.spec.flat_mode == "mean":
            return normalise(raw, self.flat, self.dark)
        xp = B.get_xp(raw)
        theta = self.scan.theta_deg
        return xp.stack([
            normalise(raw[j], self.put(self.scan.effective_flat_dark(float(theta[int(a)]), flat_mode=self.spec.flat_mode)[0]),
                      self.dark)
            for j, a in enumerate(angles)
        ])


def _wants_all_references(method: Any, params: Mapping[str, Any], scan, positions: Sequence[int]) -> bool:
    """PWF gets the reference frames of every position when it can use them (calibration, multi-reference)."""
    if "all_references" in params or method_label(method) != "pwf":
        return False
    if params.get("diffuser_estimate") == "multi-reference":
        return True
    g = scan.geometry
    need_cal = (params.get("coherence_length_x_m", g.coherence_length_x_m) is None
                or params.get("coherence_length_y_m", g.coherence_length_y_m) is None)
    return need_cal and scan.n_positions > len(positions)


def resolve_method(method: Any) -> type[Retriever]:
    """Return the Retriever class for a registry name or a class."""
    if isinstance(method, str):
        from xspeckle.retrieve import get_method

        return get_method(method)
    if isinstance(method, type) and issubclass(method, Retriever):
        return method
    raise InputError(f"method must be a method name or a subclass of xspeckle.retrieve.base.Retriever, got {method!r}")


def build_retriever(method: Any, reference, geometry, params: Mapping[str, Any]) -> Retriever:
    """The retriever of *method* for a normalised reference; a value the method rejects is one line."""
    from xspeckle.retrieve.params import check_params

    cls = resolve_method(method)
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


def method_label(method: Any) -> str:
    """Short name of a method for messages: the registry name, else the class's ``name``."""
    return method if isinstance(method, str) else (getattr(method, "name", "") or getattr(method, "__name__", "method"))


def run_batch(retriever: Retriever, stack, *, batch_axis: bool | None = None) -> list[dict[str, Any]]:
    """Apply a retriever to a normalised ``(B, P, H, W)`` stack of B projections.

    Parameters
    ----------
    retriever : Retriever
    stack : array (B, P, H, W) float32, NumPy or CuPy
    batch_axis : bool, optional
        Process the B projections in one call, :meth:`Retriever.retrieve_batch`.  Default:
        when the retriever declares ``supports_batch`` and the stack is on the GPU; on the
        CPU projections are always computed one by one (the same code as every other engine).

    Returns
    -------
    list of B dicts name -> map (same back-end as *stack*).
    """
    n = int(stack.shape[0])
    use = retriever.supports_batch and B.is_cupy(stack) if batch_axis is None else bool(batch_axis)
    if use and n > 1:
        return list(retriever.retrieve_batch(stack))
    return [retriever(stack[j]) for j in range(n)]


def compute(state: State, angles: Sequence[int]) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Read, normalise and retrieve some angles; maps come back as float32 NumPy (``_diag``: diagnostics)."""
    raw = state.put(state.read(angles))
    norm = state.normalise(raw, angles)
    del raw
    if state.spec.drift:
        results, retrievers, shifts = _retrieve_drift_corrected(state, norm)
    else:
        results, retrievers, shifts = run_batch(state.retriever, norm), None, None
    out = []
    for j, (a, res) in enumerate(zip(angles, results)):
        # NaN/inf, or a flat phase from a non-flat sample: a parameter out of range (one line, nothing written)
        check_maps({k: v for k, v in res.items() if k not in DIAGNOSTIC_KEYS}, method=method_label(state.spec.method),
                   angle=int(a), params=json.loads(state.spec.params_json), sample=norm[j],
                   reference=getattr(state.retriever if retrievers is None else retrievers[j], "reference", None))
        maps = {k: np.ascontiguousarray(B.asnumpy(v), dtype=np.float32) for k, v in res.items()
                if k not in DIAGNOSTIC_KEYS}
        diag = _diagnostics(res)
        if shifts is not None:
            diag["drift_px"] = shifts[j].tolist()
        if diag:
            maps["_diag"] = diag
        out.append((int(a), maps))
    return out


def _retrieve_drift_corrected(state: State, norm):
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
            state._drift_retriever = build_retriever(state.spec.method, ref, state.scan.geometry,
                                                     json.loads(state.spec.params_json))
            state._drift_key = key
        retrievers.append(state._drift_retriever)
        results.append(state._drift_retriever(norm[j]))
        shifts.append(np.asarray(s, dtype=np.float64))
    return results, retrievers, shifts


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
