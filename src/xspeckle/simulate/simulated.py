"""The result container of the simulators: :class:`SimulatedScan` (frames, geometry, ground truth).

Shared by the presets (:mod:`xspeckle.simulate.presets`) and the independent simulator
(:mod:`xspeckle.simulate.independent`), which share no forward-model code: this module holds data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xspeckle.geometry import Geometry

__all__ = ["SimulatedScan"]


@dataclass
class SimulatedScan:
    """A simulated speckle scan with ground truth.

    Attributes
    ----------
    data : ndarray (P, A, H, W) float32
        Sample frames in detector counts (see module docstring).
    reference : ndarray (P, H, W) float32
        Reference frames (diffuser in, sample out), counts.
    flat : ndarray (F, H, W) float32 or None
        Flat fields (no diffuser, no sample), counts.
    dark : ndarray (D, H, W) float32 or None
        Dark frames, counts.
    theta_deg : ndarray (A,) float64
        Rotation angles in degrees.
    geometry : Geometry
    truth : dict
        ``phase`` (A, H, W) rad (negative in matter), ``transmission`` (A, H, W), ``sample_mask``
        (A, H, W) bool, ``displacement`` (2, A, H, W) px (x, y) = d·∇φ/(k p) with d = Δ (upstream) or
        L2 (downstream) — analytic for tracking-shift, central differences of ``phase`` otherwise —,
        ``coherence_length_x_m``/``_y_m`` (float, m), ``beam_profile`` (H, W); where relevant
        ``diffusion`` (A, H, W) m, ``diffusion_tensor`` (3, A, H, W) m (xx, yy, xy),
        ``delta``/``beta`` (Z, Y, X) with ``voxel_size_m``,
        ``diffuser_transmission`` (P, H, W) complex64 (downstream), ``intensity_reference``
        (P, H, W) and ``intensity_sample`` (P, A, H, W) noise-free normalised intensities, and
        ``parameters`` (dict of the preset's settings).
    name : str
    """

    data: np.ndarray
    reference: np.ndarray
    flat: np.ndarray | None
    dark: np.ndarray | None
    theta_deg: np.ndarray
    geometry: Geometry
    truth: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def n_positions(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_angles(self) -> int:
        return int(self.data.shape[1])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.data.shape[-2:])

    def normalised(self) -> tuple[np.ndarray, np.ndarray]:
        """Dark-subtracted, flat-normalised ``(reference (P, H, W), data (P, A, H, W))`` float32.

        ``(I − mean dark) / (mean flat − mean dark)`` (methods.md §0).
        """
        dark = np.zeros(self.frame_shape) if self.dark is None else self.dark.astype(np.float64).mean(axis=0)
        if self.flat is None:
            denom = np.full(self.frame_shape, float(self.truth.get("parameters", {}).get("photons_per_pixel", 1.0)))
        else:
            denom = self.flat.astype(np.float64).mean(axis=0) - dark
        inv = 1.0 / np.maximum(denom, 1e-12)
        ref = ((self.reference - dark) * inv).astype(np.float32)
        dat = ((self.data - dark) * inv).astype(np.float32)
        return ref, dat

    def __repr__(self) -> str:
        return (
            f"SimulatedScan({self.name!r}, data={self.data.shape} {self.data.dtype}, "
            f"{self.geometry.diffuser_position} diffuser, truth={sorted(self.truth)})"
        )


# ---------------------------------------------------------------------------------------- helpers
