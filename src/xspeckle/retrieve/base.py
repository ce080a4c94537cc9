"""The retriever protocol shared by every method (PWF, MIST, LCS, UMPA, XSVT, OF).

A retriever is built once per reference stack (everything that depends only on the
reference — diffuser estimate, per-pixel pseudo-inverses, FFT filters — is computed
in ``__init__``) and then applied to every projection angle::

    r = MISTRetriever(reference, geometry, alpha=...)   # reference (P, H, W) float32
    out = r(sample)                                      # sample (P, H, W) -> dict

Inputs are dark-subtracted, flat-normalised float32 frames (``xspeckle.preprocess``),
on NumPy or CuPy; outputs are on the same back-end.  Output keys follow the retrieval
file of ``interfaces.md``: ``phase`` (rad), ``transmission`` (1), ``diffusion`` (m),
``diffusion_tensor`` (3, H, W) = xx, yy, xy (m), ``visibility`` (1),
``displacement`` (2, H, W) = x, y (px), ``residual`` (1).  Every output has the full
input (H, W); pixels a method cannot compute (window borders) are filled from the
nearest computed pixel and the margin is reported in :attr:`parameters`.

Retrievers must be picklable (plain attributes, no closures): Dask ships them to workers.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError
from xspeckle.geometry import Geometry

__all__ = ["Retriever", "as_stack", "DEFAULT_WORKING_FACTOR"]

#: temporaries of one call, in ``(P, H, W)`` float32 stacks, of a retriever that does not say
DEFAULT_WORKING_FACTOR = 8.0


def as_stack(frames, name: str):
    """Return frames as a float32 ``(P, H, W)`` stack (a single ``(H, W)`` frame becomes P = 1)."""
    xp = B.get_xp(frames)
    a = xp.asarray(frames, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"{name} must be (P, H, W) or (H, W), got shape {tuple(a.shape)}")
    return a


class Retriever(abc.ABC):
    """Base class: validates inputs and records parameters.  Subclasses implement ``_retrieve``.

    Hooks the pipeline reads (``xspeckle.pipeline``), with their defaults:

    * :attr:`working_factor` — memory of the temporaries of one call, in ``(P, H, W)``
      float32 stacks (a property where it depends on the parameters, as PWF's);
    * :attr:`supports_batch` and :meth:`retrieve_batch` — several projections in one call
      (the GPU engine hands batches to retrievers that support them).
    """

    name: ClassVar[str] = ""
    outputs: ClassVar[tuple[str, ...]] = ()
    min_positions: ClassVar[int] = 1
    needs_downstream: ClassVar[bool] = False
    #: temporaries of one call in ``(P, H, W)`` float32 stacks, for the pipeline's memory plan
    working_factor: float = DEFAULT_WORKING_FACTOR
    #: True when :meth:`retrieve_batch` computes a batch together (faster than one call per projection)
    supports_batch: ClassVar[bool] = False

    def __init__(self, reference, geometry: Geometry, **params: Any):
        self.reference = as_stack(reference, "reference")
        if self.reference.shape[0] < self.min_positions:
            raise InputError(
                f"{self.name} needs at least {self.min_positions} diffuser positions, got {self.reference.shape[0]}"
            )
        if not isinstance(geometry, Geometry):
            raise InputError("geometry must be an xspeckle.Geometry")
        if self.needs_downstream and geometry.diffuser_position != "downstream":
            raise InputError(f"{self.name} models a diffuser downstream of the sample; this scan has it {geometry.diffuser_position}")
        self.geometry = geometry
        self.parameters: dict[str, Any] = {}

    def __call__(self, sample) -> dict[str, Any]:
        s = as_stack(sample, "sample")
        if s.shape != self.reference.shape:
            raise InputError(
                f"{self.name}: sample stack {tuple(s.shape)} does not match reference stack {tuple(self.reference.shape)}"
            )
        return self._retrieve(s)

    @abc.abstractmethod
    def _retrieve(self, sample) -> dict[str, Any]:
        """Retrieve from a checked sample stack ``(P, H, W)``; each method module defines it."""

    def retrieve_batch(self, stack) -> list[dict[str, Any]]:
        """Retrieve B projections: ``stack (B, P, H, W)`` -> list of B output dicts, in order.

        Each dict is what :meth:`__call__` returns for ``stack[j]`` (same keys, same back-end);
        a subclass that computes the batch together overrides this method and sets
        :attr:`supports_batch` = True.  Default: one call per projection.
        """
        return [self(stack[j]) for j in range(int(stack.shape[0]))]
