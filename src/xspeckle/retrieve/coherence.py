"""Coherence calibration and diffuser estimate from the reference speckle (PWF, Lee et al. 2026).

Partial spatial coherence blurs the detected speckle intensity with the intensity point
spread function (IPSF, Lee et al. Eq. 4), i.e. multiplies its spectrum by the intensity
optical transfer function ``IOTF(u, v) = exp[-π/2 (u² x_coh² + v² y_coh²)]`` (Eq. 5).
This module

* evaluates :func:`iotf`, :func:`ipsf` and the sample transfer function :func:`stf` (Eq. 14);
* calibrates ``x_coh`` and ``y_coh`` from a reference stack (:func:`calibrate`,
  :func:`calibrate_scan`, used by ``xspeckle calibrate``);
* estimates the diffuser transmission ``t`` by Wiener deconvolution of the reference
  with the IOTF, square root, zero phase, back-propagation by L2 (pwf.md §5,
  :func:`diffuser_transmission`), or (``estimate="phase-only"``, ours) by Richardson–Lucy
  deconvolution and Gerchberg–Saxton phase retrieval with a constant-modulus diffuser.

Estimator choice (pwf.md §5, measured in ``tests/test_coherence.py`` and the report)
-------------------------------------------------------------------------------------
The authors fit a pure Gaussian ``a·exp(-½(π κ c)²)`` to the row-averaged *amplitude*
spectrum (``speckleGrainSizeFitXY``, ``x_coh = √π c p``).  That model assumes the coherent
speckle itself has a flat (or Gaussian) spectrum.  Near-field speckle behind a phase
diffuser has almost no low-frequency content: by the transport-of-intensity equation
``I ≈ 1 − (L2/k) ∇²φ_d`` its power spectrum rises like ``ρ⁴`` before the IOTF cuts it,
so the pure-Gaussian tail fit is biased.  The default estimator (``model="power-gaussian"``)
therefore fits the TAIL (beyond 1.5 × the spectral peak, up to where the signal falls to 5 ×
the photon-noise floor) of the 2-D, noise-floor-subtracted power spectrum with

    P(u, v) = A · ρ^(2n) · exp[-π (u² x_coh² + v² y_coh²)] + N₀          (IOTF² of Eq. 5)

by weighted linear least squares on ``log(P − N₀)`` in ``(log A, x_coh², y_coh²)`` with the tail
exponent n fixed (default −1, see :func:`calibrate` for the numbers behind this choice).
``model="paper"`` reproduces the authors' 1-D amplitude-spectrum fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any, Sequence

import numpy as np
import scipy.fft as sfft
from scipy import optimize

from xspeckle import backend as B
from xspeckle.errors import InputError, ParameterError
from xspeckle.optics import fresnel_transfer

__all__ = [
    "CoherenceCalibration",
    "iotf",
    "ipsf",
    "stf",
    "calibrate",
    "calibrate_scan",
    "wiener_deconvolve",
    "diffuser_transmission",
    "richardson_lucy",
    "MODELS",
    "DIFFUSER_ESTIMATES",
    "fresnel_transfer_yx",
]

#: calibration models accepted by :func:`calibrate`
MODELS = ("power-gaussian", "paper")

#: diffuser-field estimates of :func:`diffuser_transmission`: ``"zero-phase"`` the paper's (pwf.md §5),
#: ``"phase-only"`` ours (Richardson–Lucy + Gerchberg–Saxton, constant modulus at the diffuser)
DIFFUSER_ESTIMATES = ("zero-phase", "phase-only")


# --------------------------------------------------------------------------- transfer functions
def iotf(shape, pixel_size_m: float, coherence_length_x_m: float, coherence_length_y_m: float,
         xp: ModuleType = np, rfft: bool = False):
    """Intensity optical transfer function (Lee et al. 2026, Eq. 5), float32.

    ``IOTF(u, v) = exp[-π/2 (u² x_coh² + v² y_coh²)]`` with u, v in cycles/m.

    Parameters
    ----------
    shape : tuple
        ``(..., H, W)``; only the last two entries are used.
    pixel_size_m : float or (float, float)
        Grid pixel in metres, or ``(p_y, p_x)``.
    coherence_length_x_m, coherence_length_y_m : float
        Detector-plane coherence lengths in metres.
    rfft : bool
        Return the half spectrum ``(H, W//2 + 1)`` matching :func:`xspeckle.backend.rfft2`.

    Returns
    -------
    array, float32, ``(H, W)`` or ``(H, W//2+1)``, numpy-FFT frequency order.
    """
    v, u = _grid(shape, pixel_size_m, xp, rfft)
    arg = -0.5 * math.pi * ((u * coherence_length_x_m) ** 2 + (v * coherence_length_y_m) ** 2)
    return xp.exp(arg).astype(np.float32)


def stf(shape, pixel_size_m: float, coherence_length_x_m: float, coherence_length_y_m: float,
        gamma: float = 1.0, xp: ModuleType = np, rfft: bool = False):
    """Sample transfer function ``exp[-πγ(u² x_coh² + v² y_coh²)]`` (Lee et al. 2026, Eq. 14), float32.

    The PWF regularisation window is ``Γ² = 1 − STF`` (Eq. 15).  Same arguments as :func:`iotf`
    plus the oversampling ratio *gamma* (dimensionless, paper default 1).
    """
    v, u = _grid(shape, pixel_size_m, xp, rfft)
    arg = -math.pi * gamma * ((u * coherence_length_x_m) ** 2 + (v * coherence_length_y_m) ** 2)
    return xp.exp(arg).astype(np.float32)


def ipsf(shape, pixel_size_m: float, coherence_length_x_m: float, coherence_length_y_m: float,
         xp: ModuleType = np, centered: bool = True):
    """Intensity point spread function (Lee et al. 2026, Eq. 4) sampled on the pixel grid, float32.

    ``IPSF(x, y) = 2/(x_coh y_coh) exp[-2π(x²/x_coh² + y²/y_coh²)]`` in m⁻², multiplied by the
    pixel area so that the returned samples sum to ≈ 1 (a discrete convolution kernel).

    Parameters
    ----------
    centered : bool
        Origin at ``(H//2, W//2)`` (for display) if True, else at ``(0, 0)`` with wrap-around
        (numpy-FFT order, so that ``ifft2(fft2(img) * fft2(kernel))`` blurs *img*).
    """
    h, w = shape[-2:]
    y = (np.arange(h) - (h // 2 if centered else 0)).astype(np.float64)
    x = (np.arange(w) - (w // 2 if centered else 0)).astype(np.float64)
    if not centered:
        y = np.where(y > h / 2, y - h, y)
        x = np.where(x > w / 2, x - w, x)
    y = y[:, None] * pixel_size_m
    x = x[None, :] * pixel_size_m
    k = 2.0 / (coherence_length_x_m * coherence_length_y_m) * np.exp(
        -2 * np.pi * (x**2 / coherence_length_x_m**2 + y**2 / coherence_length_y_m**2))
    return xp.asarray(k * pixel_size_m**2, dtype=np.float32)


def _grid(shape, pixel_size_m, xp, rfft):
    """``(v, u)`` in cycles/m; *pixel_size_m* is a float or ``(p_y, p_x)`` for a resampled grid."""
    h, w = shape[-2:]
    py, px = (pixel_size_m, pixel_size_m) if np.isscalar(pixel_size_m) else pixel_size_m
    v = B.fftfreq(h, py, xp=xp, dtype=np.float64)[:, None]
    if rfft:
        u = B.rfftfreq(w, px, xp=xp, dtype=np.float64)[None, :]
    else:
        u = B.fftfreq(w, px, xp=xp, dtype=np.float64)[None, :]
    return v, u


def fresnel_transfer_yx(shape, pixel_size_m, wavelength_m: float, distance_m: float, xp: ModuleType = np):
    """Fresnel transfer ``exp(−iπλz(u²+v²))`` (optics.py convention) for a float or ``(p_y, p_x)`` pixel."""
    if np.isscalar(pixel_size_m):
        return fresnel_transfer(shape, pixel_size_m, wavelength_m, distance_m, xp=xp)
    v, u = _grid(shape, pixel_size_m, xp, False)
    return xp.exp(-1j * np.pi * wavelength_m * distance_m * (u * u + v * v)).astype(np.complex64)


# --------------------------------------------------------------------------- calibration
@dataclass
class CoherenceCalibration:
    """Result of :func:`calibrate`.

    Attributes
    ----------
    coherence_length_x_m, coherence_length_y_m : float
        Detector-plane coherence lengths (m) of Eq. 5.
    model : str
        Estimator used (see :data:`MODELS`).
    pixel_size_m : float
    exponent : float
        Fitted low-frequency power-law exponent ``n`` of the speckle spectrum (``power-gaussian``;
        NaN for ``paper``).
    noise_floor : float
        Power-spectrum noise floor ``N₀`` (per pixel, normalised intensity²) removed before the fit.
    n_points : int
        Number of spectral samples used in the fit.
    fit_rms : float
        RMS residual of the fit (natural log units for ``power-gaussian``, relative for ``paper``).
    frequency_range_cycles_per_px : tuple of float
        Smallest and largest radial frequency used (cycles/pixel).
    """

    coherence_length_x_m: float
    coherence_length_y_m: float
    model: str
    pixel_size_m: float
    exponent: float = float("nan")
    noise_floor: float = float("nan")
    n_points: int = 0
    fit_rms: float = float("nan")
    frequency_range_cycles_per_px: tuple = (float("nan"), float("nan"))
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the ``xspeckle calibrate --json`` payload)."""
        d = asdict(self)
        d["frequency_range_cycles_per_px"] = [float(v) for v in self.frequency_range_cycles_per_px]
        for k, v in list(d.items()):
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d


def _as_ref_stack(reference):
    a = np.asarray(B.asnumpy(reference), dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"reference must be (P, H, W) or (H, W), got shape {a.shape}")
    if min(a.shape[-2:]) < 32:
        raise InputError(f"reference frames of {a.shape[-2:]} px are too small to calibrate the coherence (need >= 32 x 32)")
    if not np.all(np.isfinite(a)):
        raise InputError("reference contains NaN or inf; normalise it with xspeckle.preprocess.normalise first")
    return a


def _hann2(h, w):
    return (np.hanning(h)[:, None] * np.hanning(w)[None, :])


def _power_spectrum(ref: np.ndarray):
    """Mean periodogram ``(H, W)`` of the mean-normalised, Hann-windowed frames (float64, fftshift-free)."""
    p, h, w = ref.shape
    win = _hann2(h, w)
    wnorm = float((win**2).mean())
    acc = np.zeros((h, w))
    for frame in ref:
        f = frame / frame.mean() - 1.0
        f = (f - f.mean()) * win
        acc += np.abs(B.fft2(f)) ** 2
    return acc / (p * h * w * wnorm)


def _fit_power_gaussian(ref, pixel_size_m, snr_min=5.0, tail_start=1.5, r_max=0.45, exponent=None):
    """Power-law × Gaussian fit of the 2-D power-spectrum TAIL (module docstring).

    Fit band: radial frequencies from ``tail_start`` × the peak of the radially averaged spectrum
    (the coherent speckle spectrum still rises below it) to where the radial average falls to
    ``snr_min`` × the noise floor.
    """
    ps = _power_spectrum(ref)
    h, w = ps.shape
    # 3x3 box average of the periodogram: reduces its exponential scatter (std 100 % per bin)
    ps_s = np.fft.ifftshift(_box3(np.fft.fftshift(ps)))
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    rho = np.sqrt(kx**2 + ky**2)
    # noise floor N0 (white photon noise): median beyond 0.45 cycles/px on either axis, where
    # the IOTF² of any usable set-up is negligible (pwf.md §5 "corners")
    corner = (np.abs(kx) > 0.45) | (np.abs(ky) > 0.45)
    n0 = float(np.mean(ps_s[corner]))
    sig = ps_s - n0
    # radial profile (bins of 1/min(H, W) cycles/px) -> fit band
    dr = 1.0 / min(h, w)
    ib = np.minimum((rho / dr).astype(int), int(0.5 / dr))
    cnt = np.bincount(ib.ravel())
    prof = np.bincount(ib.ravel(), weights=sig.ravel()) / np.maximum(cnt, 1)
    r_axis = (np.arange(prof.size) + 0.5) * dr
    low = r_axis > 0.02
    i_peak = int(np.argmax(np.where(low, prof, -np.inf)))
    r_lo = tail_start * r_axis[i_peak]
    above = (prof > snr_min * max(n0, 1e-300)) & (r_axis > r_lo)
    below = np.nonzero(~above & (r_axis > r_lo))[0]
    r_hi = r_axis[below[0]] if below.size else 0.45
    r_hi = min(r_hi, r_max)
    use = (rho > r_lo) & (rho < min(r_hi, 0.45)) & (sig > 0.5 * snr_min * max(n0, 1e-300))
    if use.sum() < 20:
        raise InputError("reference speckle has too little contrast above the noise to calibrate the coherence; "
                         "give coherence_length_x_m / coherence_length_y_m in /geometry")
    lu = np.broadcast_to(kx**2, ps.shape)[use]
    lv = np.broadcast_to(ky**2, ps.shape)[use]
    lr = np.log(rho[use] ** 2)
    # log(P − N0) = log A + n·log ρ² − π(u² x_c² + v² y_c²)  (IOTF² of Eq. 5; u, v in cycles/px)
    A = np.stack([np.ones_like(lu), lr, -math.pi * lu, -math.pi * lv], axis=1)
    b = np.log(sig[use])
    if exponent is not None:                 # fixed tail exponent: move n·log ρ² to the data side
        b = b - exponent * lr
        A = A[:, [0, 2, 3]]
    # std of log(P_s − N0) ≈ (sig + N0)/(3·sig) for a 3x3-averaged periodogram -> WLS weights
    wts = np.clip(sig[use] / (sig[use] + n0), 1e-3, 1)
    coef, *_ = np.linalg.lstsq(A * wts[:, None], b * wts, rcond=None)
    res = A @ coef - b
    if exponent is not None:
        coef = np.array([coef[0], exponent, coef[1], coef[2]])
    cx2, cy2 = coef[2], coef[3]
    if cx2 <= 0 or cy2 <= 0:
        raise InputError("coherence fit failed (the speckle spectrum does not roll off); give "
                         "coherence_length_x_m / coherence_length_y_m in /geometry")
    return dict(x=math.sqrt(cx2) * pixel_size_m, y=math.sqrt(cy2) * pixel_size_m, exponent=float(coef[1]),
                noise_floor=n0, n_points=int(use.sum()), fit_rms=float(np.sqrt(np.mean(res**2))),
                frange=(float(r_lo), float(min(r_hi, 0.45))))


def _box3(a):
    out = a.copy()
    out[1:-1, 1:-1] = sum(a[1 + dy:a.shape[0] - 1 + dy, 1 + dx:a.shape[1] - 1 + dx]
                          for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
    return out


def _fit_paper(ref, pixel_size_m):
    """The authors' 1-D amplitude-spectrum Gaussian fit (pwf.md §5, ``speckleGrainSizeFitXY``)."""
    out = {}
    rms = []
    npts = 0
    for axis, name in ((2, "x"), (1, "y")):
        n = ref.shape[axis]
        f = ref / ref.mean(axis=axis, keepdims=True)          # each row (column) by its mean
        amp = np.abs(sfft.fft(f, axis=axis, workers=B.fft_workers()))
        prof = amp.mean(axis=(0, 1)) if axis == 2 else amp.mean(axis=(0, 2))
        prof = np.fft.fftshift(prof)
        k = np.fft.fftshift(np.fft.fftfreq(n))
        c = n // 2
        prof[c - 1:c + 2] = 0.0                               # DC ± 1 bin removed
        prof = prof - 0.5 * (prof[0] + prof[-1])              # Nyquist-edge baseline
        imax = int(np.argmax(prof))
        lo, hi = min(imax, 2 * c - imax), max(imax, 2 * c - imax)
        valid = np.ones(n, bool)
        valid[lo:hi + 1] = False                              # central peak region excluded
        kk, yy = k[valid], prof[valid]

        def model(kv, a, cc):
            return a * np.exp(-0.5 * (np.pi * kv * cc) ** 2)  # a·exp(-½(πκc)²)

        (a, cc), _ = optimize.curve_fit(model, kk, yy, p0=[prof.max(), 4.0], maxfev=5000)
        out[name] = math.sqrt(math.pi) * abs(cc) * pixel_size_m   # x_coh = √π c p (pwf.md §5)
        rms.append(float(np.sqrt(np.mean((model(kk, a, cc) - yy) ** 2)) / max(prof.max(), 1e-30)))
        npts += int(valid.sum())
    return dict(x=out["x"], y=out["y"], exponent=float("nan"), noise_floor=float("nan"), n_points=npts,
                fit_rms=float(np.mean(rms)), frange=(0.0, 0.5))


#: default tail exponent n of the coherent speckle power spectrum S ∝ ρ^(2n) (see :func:`calibrate`)
DEFAULT_TAIL_EXPONENT = -1.0


def calibrate(reference, pixel_size_m: float, *, model: str = "power-gaussian",
              exponent: float | None = DEFAULT_TAIL_EXPONENT) -> CoherenceCalibration:
    """Calibrate the horizontal and vertical coherence lengths from reference speckle.

    Parameters
    ----------
    reference : array, ``(P, H, W)`` or ``(H, W)``
        Dark-subtracted, flat-normalised reference speckle (any positive scale).
    pixel_size_m : float
        Detector pixel size in metres.
    model : {"power-gaussian", "paper"}
        Estimator, see the module docstring.  ``"paper"`` is the authors' amplitude-spectrum fit.
    exponent : float or None
        ``power-gaussian`` only: tail exponent n of the coherent speckle spectrum ``S ∝ ρ^(2n)``.
        Over the short band that photon noise leaves (≈ 0.13–0.28 cycles/px at 10⁴ photons/px)
        a free n is nearly degenerate with the isotropic part of the Gaussian: on pwf-beads the
        free fit scattered by −22 … +18 % (P = 1) and −9 … +8 % (P = 12).  With n fixed to −1
        (S ∝ ρ⁻² tail) the 18 cases tested per diffuser (128/256/512 px, 3 seeds, P = 1 and 12)
        were within +0 … +4 % for a 2.5 µm-grain diffuser, and −9 … −1 % (P = 1) / −4 … −1 %
        (P = 12) for a 1.75 µm grain.  The blur is NOT identifiable from the spectrum alone when the
        coherent speckle spectrum is unknown (its tail depends on the diffuser); give measured
        coherence lengths in /geometry when they are known.  ``None`` fits n freely (on the
        1.75 µm-grain diffuser it was unbiased within 1 % at ≥ 10⁶ photons/px, where the band is wide).

    Returns
    -------
    CoherenceCalibration
    """
    if model not in MODELS:
        raise ParameterError(f"coherence model {model!r} unknown; choose one of {', '.join(MODELS)}")
    if not (pixel_size_m > 0):
        raise ParameterError(f"pixel_size_m must be positive, got {pixel_size_m!r}")
    ref = _as_ref_stack(reference)
    if model == "power-gaussian":
        fit = _fit_power_gaussian(ref, pixel_size_m, exponent=exponent)
    else:
        fit = _fit_paper(ref, pixel_size_m)
    return CoherenceCalibration(
        coherence_length_x_m=float(fit["x"]), coherence_length_y_m=float(fit["y"]), model=model,
        pixel_size_m=float(pixel_size_m), exponent=fit["exponent"], noise_floor=fit["noise_floor"],
        n_points=fit["n_points"], fit_rms=fit["fit_rms"], frequency_range_cycles_per_px=tuple(fit["frange"]))


def calibrate_scan(scan, positions: Sequence[int] | None = None, *, model: str = "power-gaussian",
                   exponent: float | None = DEFAULT_TAIL_EXPONENT) -> dict[str, Any]:
    """Calibrate the coherence lengths of an open :class:`xspeckle.io.scan.Scan` (``xspeckle calibrate``).

    The reference is normalised with ``preprocess.normalise(scan.reference(positions), flat, dark)``.

    Returns
    -------
    dict
        JSON-able; contains ``coherence_length_x_m`` and ``coherence_length_y_m`` (m), the model and fit
        diagnostics, ``positions`` used and, when the geometry already has them, the stored values
        under ``geometry_coherence_length_x_m`` / ``_y_m``.
    """
    from xspeckle.preprocess import normalise

    pos = scan.positions(positions)
    ref = normalise(scan.reference(pos), flat=scan.flat(), dark=scan.dark())
    cal = calibrate(ref, scan.geometry.pixel_size_m, model=model, exponent=exponent)
    d = cal.to_dict()
    d["positions"] = list(pos)
    g = scan.geometry
    if g.coherence_length_x_m is not None:
        d["geometry_coherence_length_x_m"] = g.coherence_length_x_m
    if g.coherence_length_y_m is not None:
        d["geometry_coherence_length_y_m"] = g.coherence_length_y_m
    return d


# --------------------------------------------------------------------------- diffuser estimate
def wiener_deconvolve(image, transfer, *, nsr=None):
    """Wiener deconvolution ``F⁻¹{F{img}·H/(H² + NSR)}`` of real images ``(..., H, W)`` (pwf.md §5 step 4).

    Parameters
    ----------
    image : array ``(..., H, W)`` float
    transfer : array ``(H, W)`` real (e.g. :func:`iotf`), full spectrum
    nsr : array ``(..., H, W)`` or float, optional
        Noise-to-signal ratio per frequency.  ``None``: estimated from the spectrum corners
        (frequencies outside the Nyquist circle, inside the Nyquist square): with μ_n, σ_n the mean
        and standard deviation of |F{img}|² there, ``NSR = σ_n/(|F{img}|² − μ_n)``, ∞ where negative.

    Returns
    -------
    float32 array ``(..., H, W)``
    """
    xp = B.get_xp(image)
    img = xp.asarray(image, dtype=np.float32)
    spec = B.fft2(img.astype(np.complex64))
    if nsr is None:
        nsr = _nsr_from_corners(spec)
    filt = transfer / (transfer * transfer + nsr)
    spec *= filt.astype(np.complex64)
    return B.ifft2(spec, overwrite_x=True).real.astype(np.float32)


def _nsr_from_corners(spec):
    """Per-frequency NSR from the spectrum corners (pwf.md §5 steps 2–3; authors' code)."""
    xp = B.get_xp(spec)
    h, w = spec.shape[-2:]
    ky = B.fftfreq(h, 1.0, xp=xp)[:, None]
    kx = B.fftfreq(w, 1.0, xp=xp)[None, :]
    corner = (kx * kx + ky * ky > 0.25) & (xp.abs(kx) < 0.5) & (xp.abs(ky) < 0.5)
    s = (spec.real**2 + spec.imag**2).astype(np.float32)
    vals = s[..., corner]
    mu = vals.mean(axis=-1)[..., None, None]
    sd = vals.std(axis=-1)[..., None, None]
    den = s - mu
    pos = den > 0
    nsr = xp.where(pos, sd / xp.where(pos, den, 1.0), np.float32(np.inf))
    return nsr.astype(np.float32)


def richardson_lucy(image, transfer, *, iterations: int, start=None):
    """Non-negative deconvolution of a blurred intensity by Richardson–Lucy iterations.

    ``I ← I · H ⋆ (img / (H ⊛ I))`` (Richardson, JOSA 62, 55 (1972), Eq. 10; Lucy, AJ 79, 745 (1974)),
    with ``H`` the real, even transfer function (so correlation and convolution coincide).  Keeps
    ``I ≥ 0`` and, for a unit-DC ``H``, the mean of the image.

    Parameters
    ----------
    image : array ``(..., H, W)`` float, blurred intensity (> 0)
    transfer : array ``(H, W)`` real, full spectrum, ``transfer[0, 0] = 1`` (e.g. :func:`iotf`)
    iterations : int
    start : array ``(..., H, W)``, optional
        First estimate (clipped to ≥ 1e-3 × the mean of *image*); default *image*.

    Returns
    -------
    float32 array ``(..., H, W)``
    """
    xp = B.get_xp(image)
    img = xp.asarray(image, dtype=np.float32)
    h = xp.asarray(transfer, dtype=np.float32)
    floor = np.float32(1e-3) * img.mean(axis=(-2, -1), keepdims=True)
    est = xp.maximum(xp.asarray(img if start is None else start, dtype=np.float32), floor)
    hr = h[..., : h.shape[-1] // 2 + 1]                     # real, even: its rfft half
    shape = img.shape[-2:]

    def blur(a):
        spec = B.rfft2(a)
        spec *= hr
        return B.irfft2(spec, s=shape)

    for _ in range(int(iterations)):
        est = est * blur(img / xp.maximum(blur(est), floor))
    return est.astype(np.float32)


def diffuser_transmission(reference, *, pixel_size_m: float, wavelength_m: float, l2_m: float,
                          coherence_length_x_m: float, coherence_length_y_m: float, nsr=None,
                          estimate: str = "zero-phase", rl_iterations: int = 100, gs_iterations: int = 50):
    """Estimate the diffuser exit field ``t`` from a normalised reference.

    ``estimate="zero-phase"`` (the paper, pwf.md §5 "Diffuser field"): Wiener-deconvolve the reference
    with the IOTF (Eq. 5), take the square root (negative values clipped to 0), set the detector-plane
    phase to zero, back-propagate by L2 (Fresnel transfer ``exp(+iπλL2ρ²)``, the adjoint of the forward
    propagation).

    ``estimate="phase-only"`` (ours): the detector amplitude is ``sqrt`` of a Richardson–Lucy
    deconvolution of the reference (:func:`richardson_lucy`, started from the Wiener estimate,
    *rl_iterations*), and the detector phase is retrieved by Gerchberg–Saxton error reduction
    (Gerchberg & Saxton, Optik 35, 237 (1972); Fienup, Appl. Opt. 21, 2758 (1982)) between that
    amplitude and a constant modulus at the diffuser (sandpaper is a nearly pure phase object:
    β/δ ≈ 0.01–0.02), *gs_iterations* round trips from zero phase.  The zero-phase field reproduces the
    reference but not how the diffuser answers a distorted wavefront; on tomo-beads this estimate
    halves PWF's model error at the true projection (benchmarks/bench_pwf_bias.py) and brings the
    tomogram's δ from +3.2 % to −0.4 % (bench_tomo_e2e.py).

    Parameters
    ----------
    reference : array ``(..., H, W)`` float32
        Reference speckle normalised to mean ≈ 1, already padded / resampled to the PWF grid.
    pixel_size_m : float or (float, float)
        Grid pixel (m), or ``(p_y, p_x)`` for an anisotropically resampled grid.
    wavelength_m, l2_m : float
        Wavelength and diffuser–detector distance (m).
    coherence_length_x_m, coherence_length_y_m : float
        Detector-plane coherence lengths (m).
    estimate : {"zero-phase", "phase-only"}
    rl_iterations, gs_iterations : int
        ``"phase-only"`` only.

    Returns
    -------
    complex64 array ``(..., H, W)``: the field just after the diffuser.
    """
    if estimate not in DIFFUSER_ESTIMATES:
        raise ParameterError(f"diffuser estimate {estimate!r} unknown; choose one of {', '.join(DIFFUSER_ESTIMATES)}")
    for name, v in (("rl_iterations", rl_iterations), ("gs_iterations", gs_iterations)):
        if int(v) != v or v < 0:
            raise ParameterError(f"diffuser estimate: {name} must be a whole number >= 0, got {v!r}")
    xp = B.get_xp(reference)
    ref = xp.asarray(reference, dtype=np.float32)
    h = iotf(ref.shape, pixel_size_m, coherence_length_x_m, coherence_length_y_m, xp=xp)
    icoh = wiener_deconvolve(ref, h, nsr=nsr)
    q = xp.conj(fresnel_transfer_yx(ref.shape[-2:], pixel_size_m, wavelength_m, l2_m, xp=xp))   # P_{-L2}
    if estimate == "zero-phase":
        amp = xp.sqrt(xp.maximum(icoh, np.float32(0.0))).astype(np.complex64)
        spec = B.fft2(amp)
        spec *= q
        return B.ifft2(spec, overwrite_x=True).astype(np.complex64)
    amp = xp.sqrt(richardson_lucy(ref, h, iterations=int(rl_iterations), start=icoh))
    field_d = amp.astype(np.complex64)                                   # detector plane, zero phase to start
    qf = xp.conj(q)                                                      # P_{+L2}
    for _ in range(int(gs_iterations)):
        spec = B.fft2(field_d)
        spec *= q
        t = B.ifft2(spec, overwrite_x=True)                              # back to the diffuser
        mod = xp.abs(t)
        t *= mod.mean(axis=(-2, -1), keepdims=True) / xp.maximum(mod, np.float32(1e-12))   # constant modulus
        spec = B.fft2(t, overwrite_x=True)
        spec *= qf
        field_d = B.ifft2(spec, overwrite_x=True)                       # forward to the detector
        field_d *= amp / xp.maximum(xp.abs(field_d), np.float32(1e-12))  # measured amplitude, phase kept
    spec = B.fft2(field_d)
    spec *= q
    return B.ifft2(spec, overwrite_x=True).astype(np.complex64)
