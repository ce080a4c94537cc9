"""Directional MIST: the diffusion tensor (Pavlov 2020 Eq. 9–10; methods.md §1.12).

The tensor extension of :mod:`xspeckle.retrieve.mist`, with the design.md convention
(Fokker–Planck term Δ(∂_xx(D_xx I) + ∂_yy(D_yy I) + 2∂_xy(D_xy I))): a phase-object model and a
single-material attenuating one (Pavlov et al. 2021, arXiv:2105.10693).  See
:class:`DirectionalMISTRetriever`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve.base import Retriever
from xspeckle.retrieve.derivatives import hessian
from xspeckle.retrieve.integrate import inverse_laplacian_filter
from xspeckle.retrieve.mist_common import (
    _EPS_RULE,
    _blur_calibration_curve,
    _calibrate_tensor,
    _check_border_px,
    _check_epsilon,
    _check_pair,
    _phase_from_laplacian,
    _safe_positive,
    attenuation_warning,
    finite,
)
from xspeckle.retrieve.pixel_lsq import PixelLSQ
from xspeckle.retrieve.tie import single_material_tie

__all__ = ["DirectionalMISTRetriever", "mist_directional"]


class DirectionalMISTRetriever(Retriever):
    """Directional-dark-field MIST: tensor extension of Pavlov 2020 Eq. (9)–(10).

    Models (methods.md §1.12; design.md tensor convention, 2·D_xy multiplies ∂_xy), per pixel over
    N ≥ 4 positions, slowly varying D (the derivatives of D·I_R are dropped as in Pavlov 2020 Eq. 3–5):

    * ``"phase-object"`` (default)::

          I_R,n − I_S,n = (Δ/k) I_R,n ∇²φ − Δ (D_xx ∂_xx + D_yy ∂_yy + 2 D_xy ∂_xy) I_R,n

      unknowns ``[∇²φ, D_xx, D_yy, D_xy]``; φ by the inverse Laplacian.  It assumes no attenuation:
      a sample that absorbs a few per cent is read as lensing (φ then wrong; D and orientation not).
    * ``"attenuating"`` — single-material object (Pavlov et al. 2021, arXiv:2105.10693; popcorn
      ``MISTII_2``; the isotropic analogue is Alloo 2022, methods.md §1.11)::

          I_S,n / I_R,n = G1 + (G_xx ∂_xx + G_yy ∂_yy + 2 G_xy ∂_xy) I_R,n / I_R,n ,  G_ij = Δ D_ij I_ob

      unknowns ``[G1, G_xx, G_yy, G_xy]``; then ``G = G1 − (∂_xx G_xx + ∂_yy G_yy + 2∂_xy G_xy)`` is
      the single-material TIE image, ``I_ob`` from G by the Pavlov/Paganin filter (methods.md §1.9),
      ``φ = (γ/2) ln I_ob`` and ``D_ij = G_ij/(Δ I_ob)``.  Needs γ = δ/β.

    The 4×4 normal matrices are inverted once per reference (float64).

    Parameters
    ----------
    reference : array (P, H, W)
    geometry : Geometry
    model : {"phase-object", "attenuating"}
    gamma : float, optional
        δ/β of the sample material; required for ``model="attenuating"``.
    alpha : float
        Tikhonov weight relative to the equilibrated normal matrix (default 1e-3).
    epsilon_per_m2 : float, optional
        Inverse-Laplacian ε (m⁻², phase-object model) or ``"auto"`` (default), as :class:`MISTRetriever`.
    border_px, block_rows : int
        As :class:`MISTRetriever`.
    blur_calibration : bool
        As :class:`MISTRetriever` (applied to the tensor's eigenvalues).

    Outputs: ``phase`` (rad), ``diffusion`` (trace/2 = isotropic-equivalent D, m),
    ``diffusion_tensor`` (3, H, W) = D_xx, D_yy, D_xy (m), ``residual``; ``transmission`` (I_ob)
    for ``"attenuating"``.
    """

    name: ClassVar[str] = "mist-directional"
    summary: ClassVar[str] = "directional MIST: the diffusion tensor (Pavlov 2020 Eq. 9-10)"
    outputs: ClassVar[tuple[str, ...]] = ("phase", "transmission", "diffusion", "diffusion_tensor", "residual")
    min_positions: ClassVar[int] = 4

    def __init__(
        self,
        reference,
        geometry: Geometry,
        *,
        model: str = "phase-object",
        gamma: float | None = None,
        alpha: float = 1e-3,
        epsilon_per_m2: float | str | None = None,
        border_px: int = 8,
        block_rows: int | None = None,
        blur_calibration: bool = False,
    ):
        super().__init__(reference, geometry)
        if model not in ("phase-object", "attenuating"):
            raise ParameterError(f"directional MIST model must be 'phase-object' or 'attenuating'; got {model!r}")
        if model == "attenuating" and gamma is None:
            raise ParameterError("directional MIST model 'attenuating' needs gamma = delta/beta of the sample material")
        if gamma is not None and not (float(gamma) > 0 and math.isfinite(float(gamma))):
            raise ParameterError(f"gamma (delta/beta) must be a positive number, got {gamma!r}")
        if not (float(alpha) >= 0 and math.isfinite(float(alpha))):
            raise ParameterError(f"alpha must be finite and >= 0, got {alpha!r}")
        epsilon_per_m2 = _check_epsilon(epsilon_per_m2)
        ref = self.reference
        P, H, W = ref.shape
        if min(H, W) < 4:
            raise InputError(f"mist-directional: images must be at least 4x4 pixels, got {(H, W)}")
        self.model = model
        self.gamma = None if gamma is None else float(gamma)
        dxx, dyy, dxy = hessian(ref, 1.0)  # px⁻²
        if model == "phase-object":
            # columns of [g, cxx, cyy, cxy]: g = (Δ/k)∇²φ, c_ij = Δ D_ij / p²   (b = I_R − I_S)
            dxx *= -1
            dyy *= -1
            dxy *= -2
            cols = [ref, dxx, dyy, dxy]
            self._inv_ref = None
            self.outputs = ("phase", "diffusion", "diffusion_tensor", "residual")
        else:
            # columns of [G1, cxx, cyy, cxy]: 1, ∂_xxI_R/I_R, ∂_yyI_R/I_R, 2∂_xyI_R/I_R (px⁻²);
            # c_ij = Δ D_ij I_ob / p²   (b = I_S/I_R)
            inv_ref = (1.0 / _safe_positive(ref)).astype(np.float32)
            dxx *= inv_ref
            dyy *= inv_ref
            dxy *= inv_ref
            dxy *= 2
            xp = B.get_xp(ref)
            cols = [xp.ones_like(ref), dxx, dyy, dxy]
            self._inv_ref = inv_ref
            self.outputs = ("phase", "transmission", "diffusion", "diffusion_tensor", "residual")
        self.alpha = float(alpha)
        self._lsq = PixelLSQ(cols, self.alpha, block_rows)
        self.epsilon_per_m2 = "auto" if epsilon_per_m2 is None else epsilon_per_m2
        self.border_px = _check_border_px(border_px, *self.reference.shape[-2:])
        self._p = geometry.pixel_size_m
        self._delta = geometry.sample_detector_distance_m
        self._k = geometry.wavenumber_per_m
        self.parameters = {
            "model": "phase-object-directional" if model == "phase-object" else "attenuating-directional",
            "alpha": self.alpha,
            "epsilon_per_m2": self.epsilon_per_m2,
            "epsilon_rule": _EPS_RULE if self.epsilon_per_m2 == "auto" else "fixed",
            "gamma": self.gamma,
            "border_px": self.border_px,
            "n_positions": P,
            "sample_detector_distance_m": self._delta,
        }
        self._ilap = (inverse_laplacian_filter((H, W), self._p, self.epsilon_per_m2, B.get_xp(ref))
                      if model == "phase-object" and self.epsilon_per_m2 != "auto" else None)
        self.last_epsilon_per_m2 = None
        self._diffusion_only = False
        self._calib = None
        self.blur_calibration = bool(blur_calibration)
        if self.blur_calibration:
            kw = dict(model=model, gamma=gamma, alpha=alpha, epsilon_per_m2=epsilon_per_m2, border_px=border_px,
                      blur_calibration=False)
            self._calib = _blur_calibration_curve(lambda sub: DirectionalMISTRetriever(sub, geometry, **kw), ref, geometry)
            self.parameters["blur_calibration"] = {
                "true_diffusion_m": [float(v) for v in self._calib[0]],
                "first_order_estimate_m": [float(v) for v in self._calib[1]],
            }
        else:
            self.parameters["blur_calibration"] = None

    def _retrieve(self, sample) -> dict[str, Any]:
        xp = B.get_xp(sample)
        ref = self.reference
        P, H, W = ref.shape
        lsq = self._lsq
        x_all = xp.empty((4, H, W), dtype=np.float32)
        res = xp.empty((H, W), dtype=np.float32)
        for y0 in range(0, H, lsq.rows):
            y1 = min(H, y0 + lsq.rows)
            if self._inv_ref is None:
                b = ref[:, y0:y1] - sample[:, y0:y1]  # Pavlov 2020 Eq. (10) left side
            else:
                b = sample[:, y0:y1] * self._inv_ref[:, y0:y1]  # I_S,n/I_R,n (single material)
            x, res[y0:y1] = lsq.solve_block(b, y0, y1, sample[:, y0:y1])
            x_all[:, y0:y1] = x
        if self._inv_ref is None:
            out = self._phase_object(x_all, res)
            if not self._diffusion_only:
                # model check (issue 14), as MISTRetriever._model_check
                w = attenuation_warning(xp.mean(ref, axis=0, dtype=np.float64), sample, model="phase-object",
                                        fix="use --param model=attenuating gamma=<delta/beta>, or --method tie "
                                            "--param gamma=<delta/beta>")
                if w:
                    out["warnings"] = [w]
            return out
        return self._attenuating(x_all, res)

    def _phase_object(self, x_all, res):
        xp = B.get_xp(x_all)
        lap_phi = x_all[0] * np.float32(self._k / self._delta)
        tensor = x_all[1:] * np.float32(self._p**2 / self._delta)  # D_ij = c_ij p²/Δ  [m]
        tensor = finite(tensor)
        if self._diffusion_only:
            return {"diffusion": 0.5 * (tensor[0] + tensor[1])}
        tensor = finite(_calibrate_tensor(tensor, self._calib))
        phase, self.last_epsilon_per_m2 = _phase_from_laplacian(finite(lap_phi), self.geometry, self.epsilon_per_m2,
                                                                self.border_px, self._ilap)
        return {
            "phase": finite(phase),
            "diffusion": finite(0.5 * (tensor[0] + tensor[1])),
            "diffusion_tensor": xp.ascontiguousarray(tensor),
            "residual": finite(res),
        }

    def _attenuating(self, x_all, res):
        xp = B.get_xp(x_all)
        c = finite(x_all[1:])  # c_ij = Δ D_ij I_ob / p²
        scale = np.float32(self._p**2 / self._delta)
        if self._diffusion_only:  # calibration on the reference: I_ob = 1
            return {"diffusion": 0.5 * (c[0] + c[1]) * scale}
        # G = G1 − (∂_xx c_xx + ∂_yy c_yy + 2∂_xy c_xy) (px derivatives; Pavlov 2021 / methods.md §1.12)
        hxx, hyy, hxy = hessian(c, 1.0)  # of each of c_xx, c_yy, c_xy: use ∂_xx c_xx, ∂_yy c_yy, ∂_xy c_xy
        gmap = finite(x_all[0]) - (hxx[0] + hyy[1] + 2 * hxy[2])
        iob = single_material_tie(gmap, self.geometry, self.gamma)  # Pavlov PRA 2020 filter (methods.md §1.9)
        iob = xp.maximum(finite(iob, 1.0), np.float32(1e-6))
        tensor = finite(c * scale / iob)  # D_ij = c_ij p² / (Δ I_ob)
        tensor = finite(_calibrate_tensor(tensor, self._calib))
        phase = np.float32(self.gamma / 2) * xp.log(iob)  # φ = (γ/2) ln I_ob (single material)
        return {
            "phase": finite(phase),
            "transmission": finite(iob, 1.0),
            "diffusion": finite(0.5 * (tensor[0] + tensor[1])),
            "diffusion_tensor": xp.ascontiguousarray(tensor),
            "residual": finite(res),
        }


def mist_directional(*, reference, sample, geometry: Geometry, **params) -> dict[str, Any]:
    """Directional MIST (tensor D), see :class:`DirectionalMISTRetriever`.

    ``model="phase-object"`` (default) or ``"attenuating"`` (single material, needs ``gamma``).
    Returns ``phase``, ``diffusion``, ``diffusion_tensor`` (3, H, W) = D_xx, D_yy, D_xy
    (m) and ``residual``; ``transmission`` for ``"attenuating"``.
    """
    ref, smp = _check_pair(reference, sample, 4, "mist-directional")
    return DirectionalMISTRetriever(ref, geometry, **params)(smp)
