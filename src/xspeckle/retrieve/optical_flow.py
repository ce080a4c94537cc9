"""Optical-flow (geometric-flow) speckle tracking (Paganin, Labriet, Brun & Morgan, PRA 98, 053813 (2018)).

Conservation of the speckle intensity under the flow ``u`` (methods.md §1.4):

    I_S − I_R = −∇·(I_R u)      ⇒ (I_R u curl-free)    I_R u = ∇ ∇⁻² (I_R − I_S)·(−1)

so, with the numpy-sign FFT (derivative ↔ ``i k``, ``∇⁻²`` ↔ ``−1/|k|²``),

    u_x(r) = Re F⁻¹[ i k_x B(k)/|k|² · F(I_S/A − I_R) ](r) / I_R(r)        (methods.md §1.4)

and likewise ``u_y``; the k = 0 term is zeroed.  ``A = G_σ∗median_n(I_S) / G_σ∗median_n(I_R)`` removes
the (slowly varying) absorption (optional: off by default, the method assumes a phase object) and is
reported as ``transmission``; ``B = 1 − exp(−|k|²ℓ²/2)`` is an
optional high-pass against low-frequency artefacts (``highpass_px = ℓ``; off by default).  The
difference is mirror-padded to 2H×2W (no wrap-around; methods.md §1.4 pitfall "periodic boundaries").
With several positions the per-position flows ``g_n = I_R,n u`` are combined per pixel by least
squares, ``u = Σ g_n I_R,n / Σ I_R,n²``, or by the median of ``g_n/I_R,n`` (popcorn's choice, default).

Valid only for a weak, slowly varying phase (small u); divide by ``I_R`` pixelwise (methods.md §1.4).
Sign: ``I_S(r) = I_R(r − u)`` gives **+u** (design.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError
from xspeckle.geometry import Geometry
from xspeckle.retrieve.base import Retriever, as_stack
from xspeckle.retrieve.integrate import angular_frequency_grid, mirror_pad
from xspeckle.retrieve.mist_common import attenuation_warning
from xspeckle.retrieve.tracking import phase_from_displacement

__all__ = ["optical_flow", "OpticalFlowRetriever"]


def _gaussian_blur(img, sigma_px: float):
    """Gaussian blur (σ in px) by FFT on the mirror-padded image; float32 (H, W)."""
    xp = B.get_xp(img)
    if sigma_px <= 0:
        return img
    h, w = img.shape[-2:]
    p = mirror_pad(img)
    ky, kx = angular_frequency_grid(p.shape, 1.0, xp=xp, rfft=True)
    g = xp.exp(-0.5 * np.float32(sigma_px) ** 2 * (kx * kx + ky * ky)).astype(np.float32)
    out = B.irfft2(B.rfft2(p) * g, s=p.shape[-2:])
    return xp.ascontiguousarray(out[..., :h, :w]).astype(np.float32, copy=False)


def _flow_filters(shape, highpass_px, xp):
    """``i k_x B/|k|²`` and ``i k_y B/|k|²`` (rad/px) on the rfft grid of the 2H×2W padded image."""
    ky, kx = angular_frequency_grid((2 * shape[0], 2 * shape[1]), 1.0, xp=xp, rfft=True)
    k2 = kx * kx + ky * ky
    k2[0, 0] = 1.0
    b = xp.ones_like(k2) if not highpass_px else 1 - xp.exp(-0.5 * np.float32(highpass_px) ** 2 * k2)
    fx = (1j * kx * b / k2).astype(np.complex64)
    fy = (1j * ky * b / k2).astype(np.complex64)
    fx[0, 0] = 0
    fy[0, 0] = 0
    return fx, fy


def _check(highpass_px, absorption_sigma_px, combine):
    if highpass_px is not None and (not np.isfinite(highpass_px) or highpass_px < 0):
        raise ParameterError(f"of: highpass_px must be >= 0 px or None, got {highpass_px!r}")
    if not np.isfinite(absorption_sigma_px) or absorption_sigma_px < 0:
        raise ParameterError(f"of: absorption_sigma_px must be >= 0 px, got {absorption_sigma_px!r}")
    if combine not in ("lstsq", "median"):
        raise ParameterError(f"of: combine must be 'lstsq' or 'median', got {combine!r}")


def optical_flow(*, reference, sample, highpass_px: float | None = None, absorption_sigma_px: float = 0.0,
                 combine: str = "median", _filters=None, _ref_blur=None) -> dict[str, Any]:
    """Single-exposure (or multi-position) geometric-flow speckle tracking (Paganin et al. 2018).

    Parameters
    ----------
    reference, sample : array (N, H, W) or (H, W)
        Flat-normalised speckle images; N = 1 is the single-exposure method.
    highpass_px : float, optional
        Length ℓ (px) of the high-pass ``B = 1 − exp(−|k|²ℓ²/2)``; ``None`` = no high-pass.
    absorption_sigma_px : float
        σ (px) of the Gaussian that smooths the median images in the absorption estimate A;
        0 (default) = no absorption correction (A = 1, a phase object).  Note: the flow signal is
        mostly the smooth intensity change ``−I_R ∇·u``, which a smoothed absorption estimate also
        captures, so σ must be much larger than the features (measured: σ = 8 px removed 90 % of
        a 25 px feature's flow).
    combine : {"median", "lstsq"}
        How positions are combined: per-pixel median of ``g_n/I_R,n`` (default, popcorn) or least
        squares ``Σ g_n I_R,n / Σ I_R,n²`` (measured ≈ 5 % lower amplitude).

    Returns
    -------
    dict: ``displacement`` (2, H, W) px (x, y) = +u, ``transmission`` (H, W) = A.
    """
    _check(highpass_px, absorption_sigma_px, combine)
    ref = as_stack(reference, "reference")
    sam = as_stack(sample, "sample")
    if ref.shape != sam.shape:
        raise InputError(f"of: sample {tuple(sam.shape)} does not match reference {tuple(ref.shape)}")
    xp = B.get_xp(sam)
    N, H, W = sam.shape
    fx, fy = _filters if _filters is not None else _flow_filters((H, W), highpass_px, xp)
    if absorption_sigma_px > 0:
        rb = _ref_blur if _ref_blur is not None else _gaussian_blur(xp.median(ref, axis=0), absorption_sigma_px)
        sb = _gaussian_blur(xp.median(sam, axis=0), absorption_sigma_px)
        A = sb / xp.where(xp.abs(rb) > 1e-6, rb, 1.0)
    else:
        A = xp.ones((H, W), dtype=np.float32)
    Asafe = xp.where(xp.abs(A) > 1e-6, A, 1.0)
    diff = sam / Asafe - ref  # I_S/A − I_R (methods.md §1.4)
    spec = B.rfft2(mirror_pad(diff))
    gx = B.irfft2(spec * fx, s=(2 * H, 2 * W))[:, :H, :W]  # g = I_R u = ∇∇⁻²(I_S/A − I_R)·(−1)·(−1)
    gy = B.irfft2(spec * fy, s=(2 * H, 2 * W))[:, :H, :W]
    if combine == "lstsq":
        den = xp.sum(ref * ref, axis=0)
        den = xp.where(den > 1e-12, den, 1.0)
        ux = xp.sum(gx * ref, axis=0) / den
        uy = xp.sum(gy * ref, axis=0) / den
    else:
        rs = xp.where(xp.abs(ref) > 1e-6, ref, 1.0)
        ux = xp.median(gx / rs, axis=0)
        uy = xp.median(gy / rs, axis=0)
    return {
        "displacement": xp.stack([ux, uy]).astype(np.float32),
        "transmission": A.astype(np.float32),
    }


class OpticalFlowRetriever(Retriever):
    """Optical-flow speckle tracking (Paganin et al. 2018) as a :class:`~xspeckle.retrieve.base.Retriever`.

    Parameters
    ----------
    reference : array (P, H, W), P ≥ 1
    geometry : Geometry
    highpass_px : float, optional
        High-pass length ℓ in px (default None: off).
    absorption_sigma_px : float
        Smoothing σ of the absorption estimate (default 0: off, phase object; see :func:`optical_flow`).
    combine : {"median", "lstsq"}
    integrator : {"fc", "kottler"}

    Outputs: ``phase`` (rad), ``transmission`` (smooth absorption A), ``displacement`` (2, H, W) px = +u,
    ``residual`` (RMS over positions of ``I_S/A − I_R(r − u)`` to first order, relative to mean I_R).
    """

    name = "of"
    summary = "geometric-flow optical-flow speckle tracking (Paganin et al. 2018)"
    outputs = ("phase", "transmission", "displacement", "residual")
    min_positions = 1

    def __init__(self, reference, geometry: Geometry, *, highpass_px: float | None = None,
                 absorption_sigma_px: float = 0.0, combine: str = "median", integrator: str = "fc"):
        super().__init__(reference, geometry)
        _check(highpass_px, absorption_sigma_px, combine)
        if integrator not in ("fc", "kottler"):
            raise ParameterError(f"of: integrator must be 'fc' or 'kottler', got {integrator!r}")
        xp = B.get_xp(self.reference)
        H, W = self.reference.shape[-2:]
        self._filters = _flow_filters((H, W), highpass_px, xp)
        self._ref_blur = (
            _gaussian_blur(xp.median(self.reference, axis=0), absorption_sigma_px) if absorption_sigma_px > 0 else None
        )
        from xspeckle.retrieve.derivatives import gradient

        self._grad = gradient(self.reference)  # (d/dy, d/dx) px⁻¹, for the residual
        self._ref_mean = xp.mean(self.reference, axis=0, dtype=np.float64)  # for the attenuation check
        self.highpass_px = highpass_px
        self.absorption_sigma_px = float(absorption_sigma_px)
        self.combine = combine
        self.integrator = integrator
        self.parameters = {
            "highpass_px": highpass_px,
            "absorption_sigma_px": self.absorption_sigma_px,
            "combine": combine,
            "integrator": integrator,
            "margin_px": 0,
            "sign": "+u (I_S(r) = T I_R(r - u))",
        }

    def _retrieve(self, sample) -> dict[str, Any]:
        xp = B.get_xp(sample)
        r = optical_flow(reference=self.reference, sample=sample, highpass_px=self.highpass_px,
                         absorption_sigma_px=self.absorption_sigma_px, combine=self.combine,
                         _filters=self._filters, _ref_blur=self._ref_blur)
        u = r["displacement"]
        A = r["transmission"]
        gy, gx = self._grad
        model = self.reference - u[0] * gx - u[1] * gy  # I_R(r − u) to first order
        mis = sample / xp.where(xp.abs(A) > 1e-6, A, 1.0) - model
        mean_r = xp.mean(self.reference, axis=0)
        residual = xp.sqrt(xp.mean(mis * mis, axis=0)) / xp.where(xp.abs(mean_r) > 1e-6, mean_r, 1.0)
        phase = phase_from_displacement(u[0], u[1], self.geometry, integrator=self.integrator)
        out = {"phase": phase, "transmission": A, "displacement": u, "residual": residual.astype(np.float32)}
        if self.absorption_sigma_px == 0:
            # model check (issue 14): the flow equation assumes a phase object; attenuation is read as flow
            w = attenuation_warning(self._ref_mean, sample, model="optical-flow (phase-object)",
                                    fix="use --method tie --param gamma=<delta/beta>, or --method mist "
                                        "--param model=attenuating gamma=<delta/beta>")
            if w:
                out["warnings"] = [w]
        return out
