"""Single-material speckle TIE: transmission and phase from ONE reference/sample pair.

Pavlov et al., Phys. Rev. Applied 13, 054023 (2020) (methods.md §1.9), the
speckle analogue of Paganin et al., J. Microsc. 206, 33 (2002): for a sample of one
material with known γ = δ/β,

    I_ob = F⁻¹[ F(I_S / I_R) / (1 + πγΔλ|f|²) ],      φ = (γ/2) ln I_ob

(|f| in cycles/m), mirror-padded on both axes.  It is deterministic, needs a single
exposure, and is what the upstream FourRod "single exposure transmission" map is; the
MIST "attenuating" and "rapid" models use the same filter.  The phase follows the
contract (negative in matter, since ln I_ob < 0 there).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve.base import Retriever
from xspeckle.retrieve.integrate import angular_frequency_grid, mirror_pad

__all__ = ["single_material_tie", "tie", "TIERetriever"]


def single_material_tie(g, geometry: Geometry, gamma: float, *, pad: str = "mirror"):
    """Single-material TIE filter ``I_ob = F⁻¹[F(G)/(1 + γΔλ|k|²/(4π))]`` (float32).

    Paganin et al. J. Microsc. 206, 33 (2002); Pavlov et al. Phys. Rev. Applied 13,
    054023 (2020); methods.md §1.9 (``1 + πγΔλ|f|²`` with |f| in cycles/m equals
    ``1 + γΔλ|k|²/(4π)`` with |k| in rad/m).  Mirror-padded on both axes.

    Parameters
    ----------
    g : array (..., H, W)
        ``G = I_ob − (γΔ/2k)∇²I_ob`` (dimensionless), e.g. ``I_S/I_R`` for one position.
    geometry : Geometry
        Uses Δ, λ and the pixel size.
    gamma : float
        δ/β of the material (> 0).

    Returns
    -------
    I_ob : float32 (..., H, W), the intensity transmission.
    """
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ParameterError(f"gamma (delta/beta) must be a positive number, got {gamma!r}")
    xp = B.get_xp(g)
    f = xp.asarray(g, dtype=np.float32)
    h, w = f.shape[-2:]
    if pad == "mirror":
        f = mirror_pad(f)
    shape = f.shape[-2:]
    ky, kx = angular_frequency_grid(shape, geometry.pixel_size_m, xp=xp, rfft=True)
    c = np.float32(gamma * geometry.sample_detector_distance_m * geometry.wavelength_m / (4 * math.pi))
    den = 1 + c * (kx * kx + ky * ky)
    spec = B.rfft2(f)
    spec /= den
    out = B.irfft2(spec, s=shape)
    return xp.ascontiguousarray(out[..., :h, :w]).astype(np.float32, copy=False)


def tie(*, reference, sample, geometry: Geometry, gamma: float, floor: float = 1e-6) -> dict[str, Any]:
    """Transmission and phase of a single-material sample from reference/sample pairs.

    Parameters
    ----------
    reference, sample : array (P, H, W) or (H, W)
        Flat-normalised frames.  With P > 1 the ratios I_S/I_R are averaged over the
        positions before filtering (the filter is linear, so this equals averaging the
        P single-shot results).
    geometry : Geometry
        Uses Δ, λ and the pixel size.
    gamma : float
        δ/β of the material.
    floor : float
        Lower bound applied to I_ob before the logarithm (keeps the phase finite).

    Returns
    -------
    dict with ``transmission`` (1) and ``phase`` (rad), float32 (H, W).
    """
    xp = B.get_xp(reference, sample)
    r = xp.asarray(reference, dtype=np.float32)
    s = xp.asarray(sample, dtype=np.float32)
    if r.ndim == 2:
        r, s = r[None], s[None]
    safe = xp.where(r > 0, r, np.float32(1.0))
    ratio = xp.where(r > 0, s / safe, np.float32(1.0)).mean(axis=0)
    iob = single_material_tie(ratio, geometry, gamma)
    # Pavlov et al. 2020: φ = (γ/2) ln I_ob (single material, δ = γβ).
    phase = np.float32(gamma / 2) * xp.log(xp.maximum(iob, np.float32(floor)))
    return {"transmission": iob, "phase": phase.astype(np.float32, copy=False)}


class TIERetriever(Retriever):
    """Single-material TIE (Pavlov et al. 2020) as a retriever (name ``"tie"``).

    Parameters: ``gamma`` (δ/β, required).  Works with one or more positions.
    """

    name: ClassVar[str] = "tie"
    summary: ClassVar[str] = "single-material speckle TIE (Pavlov et al., PRApplied 2020); needs gamma = delta/beta"
    outputs: ClassVar[tuple[str, ...]] = ("phase", "transmission")
    min_positions: ClassVar[int] = 1

    def __init__(self, reference, geometry: Geometry, *, gamma: float | None = None):
        super().__init__(reference, geometry)
        if gamma is None:
            raise ParameterError("method 'tie' needs the material's delta/beta: pass --param gamma=VALUE")
        if not (float(gamma) > 0 and math.isfinite(float(gamma))):
            raise ParameterError(f"gamma (delta/beta) must be a positive number, got {gamma!r}")
        self.gamma = float(gamma)
        self.parameters = {"gamma": self.gamma, "filter": "1 + pi*gamma*Delta*lambda*|f|^2", "pad": "mirror"}

    def _retrieve(self, sample) -> dict[str, Any]:
        return tie(reference=self.reference, sample=sample, geometry=self.geometry, gamma=self.gamma)
