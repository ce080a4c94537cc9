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

Both assume a shape for the coherent speckle spectrum, and the blur is not identifiable from the
spectrum's shape alone: a finer diffuser (flatter spectrum) reads as a shorter coherence length
(−20 … −30 % for 0.2–1 µm grains with ``power-gaussian``).  ``model="screen"`` (ours, the default
when the wavelength and the diffuser–detector distance are known) removes the free shape: the
coherent spectrum is that of Fresnel speckle behind a thin Gaussian random phase screen,
:func:`screen_spectrum` — an *absolute* prediction (no free amplitude) from two diffuser parameters,
its phase std σ and correlation length a — times IOTF² and the pixel's sinc², plus a white noise
floor, fitted by the Whittle likelihood to the periodogram binned in radius and angle.  Measured on the independent simulator (4-layer grain
diffusers, 2 % bandwidth, 2× binned grid) and on the presets: within −7 … +0 % on every diffuser
where ``power-gaussian`` read −30 … +4 % (benchmarks/bench_calibration.py).
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
    "screen_spectrum",
    "optics_of",
    "wiener_deconvolve",
    "diffuser_transmission",
    "richardson_lucy",
    "MODELS",
    "DIFFUSER_ESTIMATES",
    "fresnel_transfer_yx",
]

#: calibration models accepted by :func:`calibrate` (``"auto"``: ``"screen"`` when the wavelength and the
#: diffuser–detector distance are given, else ``"power-gaussian"``)
MODELS = ("auto", "screen", "power-gaussian", "paper")

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
    #: ``screen`` only: fitted phase std σ (rad) and correlation length a (m) of the diffuser model
    phase_std_rad: float = float("nan")
    correlation_length_m: float = float("nan")
    #: ``screen`` only: one-line warnings (e.g. two diffuser models fit equally well with different lengths)
    warnings: tuple = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the ``xspeckle calibrate --json`` payload)."""
        d = asdict(self)
        d["frequency_range_cycles_per_px"] = [float(v) for v in self.frequency_range_cycles_per_px]
        d["warnings"] = list(self.warnings)
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


def screen_spectrum(q_per_m, phase_std_rad: float, correlation_length_m: float, wavelength_m: float,
                    distance_m: float) -> np.ndarray:
    """Power spectrum of the intensity a distance z behind a thin Gaussian random phase screen.

    The screen ``t = e^{iφ}``, φ Gaussian with std σ and correlation ``exp(−r²/a²)`` (structure function
    ``D(r) = 2σ²(1 − e^{−r²/a²})``), unit plane-wave illumination, monochromatic, coherent.  The Fresnel
    intensity spectrum is ``Î_z(q) = ∫ t(r − d/2) t*(r + d/2) e^{−2πi q·r} d²r`` with ``d = λ z q``
    (Guigay, Optik 49, 121 (1977)), so its power spectrum per unit area is the Fourier transform over s
    of the four-point moment of ``e^{iφ}``, which for Gaussian φ is (Jakeman & McWhirter, J. Phys. A 10,
    1599 (1977)):

        S_I(q) = ∫ d²s e^{−2πi q·s} [exp(−D(s) − D(d) + ½D(s + d) + ½D(s − d)) − e^{−D(d)}],   q ≠ 0,

    the subtracted term being the s → ∞ limit (the mean intensity's delta at q = 0).  No free amplitude:
    the integral of S_I over q is the speckle contrast².  Evaluated by direct quadrature on an s-grid of
    step ``a/(6 max(1, σ))`` covering the three lobes of the integrand (s ≈ 0, ±d).

    Parameters
    ----------
    q_per_m : array_like
        Spatial frequencies ``|q|`` (cycles/m); the spectrum is isotropic.
    phase_std_rad, correlation_length_m : float
        σ (rad) and a (m) of the screen.
    wavelength_m, distance_m : float
        λ and the screen–detector distance z (m).

    Returns
    -------
    ndarray float64, ``S_I`` in (relative intensity)² per (cycles/m)²; divide by the pixel area for the
    periodogram of a mean-normalised image.
    """
    q = np.atleast_1d(np.asarray(q_per_m, dtype=np.float64))
    sigma, a = float(phase_std_rad), float(correlation_length_m)
    d = wavelength_m * distance_m * q
    h = a / (6.0 * max(1.0, sigma))
    xmax = float(d.max(initial=0.0)) + 6.0 * a
    sx = np.arange(-xmax, xmax + 0.5 * h, h)[:, None]
    sy = np.arange(0.0, 6.0 * a + 0.5 * h, h)[None, :]
    wy = np.full(sy.shape, 2.0)                           # the integrand is even in s_y: half plane, doubled
    wy[0, 0] = 1.0
    sy2 = sy**2
    s2 = 2.0 * sigma**2

    def struct(r2):
        return s2 * (1.0 - np.exp(-r2 / a**2))

    d0 = struct(sx**2 + sy2)
    out = np.empty(q.size)
    for i, (qi, di) in enumerate(zip(q, d)):
        dd = s2 * (1.0 - math.exp(-di**2 / a**2))
        g = np.exp(-d0 - dd + 0.5 * struct((sx + di) ** 2 + sy2) + 0.5 * struct((sx - di) ** 2 + sy2)) - math.exp(-dd)
        out[i] = float((g * wy).sum(axis=1) @ np.cos(2 * np.pi * qi * sx[:, 0])) * h * h
    return out


def _binned_spectrum(ref, n_angles: int = 12, bin_px: float = 1.5):
    """The periodogram averaged in radial × angular bins (12 sectors over [0, π): the anisotropy of the IOTF).

    Returns a dict of per-bin arrays: mean periodogram ``p``, mean u², v² and |k| (cycles/px), the log pixel
    MTF² (sinc² per axis), the number of independent samples ``n`` (bin count / 4: the Hann window correlates
    2 × 2 neighbours), and the white noise floor N₀ from the spectrum's corners (start value).
    """
    ps = _power_spectrum(ref)
    h, w = ps.shape
    kx = np.broadcast_to(np.fft.fftfreq(w)[None, :], ps.shape)
    ky = np.broadcast_to(np.fft.fftfreq(h)[:, None], ps.shape)
    rho = np.sqrt(kx**2 + ky**2)
    n0 = float(np.mean(ps[(np.abs(kx) > 0.45) | (np.abs(ky) > 0.45)]))
    dr = bin_px / min(h, w)
    nr = int(0.5 / dr)
    ir = (rho / dr).astype(np.int64)
    ia = np.minimum((np.mod(np.arctan2(ky, kx), np.pi) / np.pi * n_angles).astype(np.int64), n_angles - 1)
    # the lowest bins carry the window's leakage; beyond 0.45 cycles/px only noise and aliasing
    ok = (rho > 2.5 / min(h, w)) & (ir < nr) & (np.abs(kx) <= 0.45) & (np.abs(ky) <= 0.45)
    key = (ir * n_angles + ia)[ok]
    cnt = np.bincount(key, minlength=nr * n_angles)

    def mean(v):
        return np.bincount(key, weights=v[ok], minlength=nr * n_angles) / np.maximum(cnt, 1)

    use = cnt >= 4
    pix = mean(np.log(np.maximum(np.sinc(kx) ** 2 * np.sinc(ky) ** 2, 1e-300)))   # pixel-area MTF²
    return dict(p=mean(ps)[use], u2=mean(kx**2)[use], v2=mean(ky**2)[use], k=mean(rho)[use], pix=pix[use],
                n=cnt[use] / 4.0, noise_floor=n0)


def _screen_nll(b, pixel_size_m, lam_z, sigma, a, start=None):
    """Whittle negative log-likelihood of the binned periodogram under the screen model at (σ, a), minimised
    over (x_coh/p)², (y_coh/p)² and log N₀; returns ``(nll, [X², Y², log N₀])``.

    Model per bin: ``m = S_I(k)/p² · MTF²_pix · exp(−π(u² X² + v² Y²)) + N₀`` (IOTF² of Eq. 5); a bin mean of
    n exponentially scattered periodogram values gives ``−log L = Σ n (log m + P̄/m)`` (Whittle 1953): every
    bin counts, the noise-dominated ones included, with no log bias and no SNR cut.
    """
    ktab = np.geomspace(b["k"].min(), b["k"].max(), 40)
    st = screen_spectrum(ktab / pixel_size_m, sigma, a, lam_z, 1.0) / pixel_size_m**2
    s = np.exp(np.interp(np.log(b["k"]), np.log(ktab), np.log(np.maximum(st, 1e-300))) + b["pix"])

    def nll(th):
        m = s * np.exp(-math.pi * (b["u2"] * th[0] + b["v2"] * th[1])) + math.exp(th[2])
        return float(np.sum(b["n"] * (np.log(m) + b["p"] / m)))

    ln0 = math.log(max(b["noise_floor"], 1e-300))
    starts = [start] if start is not None else [[v, 1.3 * v, ln0] for v in (5.0, 20.0, 60.0)]
    best = None
    for x0 in starts:
        r = optimize.minimize(nll, x0, method="Nelder-Mead", options=dict(xatol=1e-4, fatol=1e-6, maxiter=2000))
        if best is None or r.fun < best.fun:
            best = r
    return float(best.fun), np.asarray(best.x)


def _fit_screen(ref, pixel_size_m, wavelength_m, distance_m, tie_nll: float = 2.0):
    """Fit (σ, a, x_coh, y_coh) of the screen model (module docstring): a 9 × 9 grid over (σ, a) with the
    lengths and the noise floor profiled out, Nelder–Mead from the three best local minima of the grid, the
    lowest Whittle likelihood wins; a second solution within *tie_nll* with lengths > 5 % apart is reported."""
    b = _binned_spectrum(ref)
    if b["p"].size < 20:
        raise InputError("reference frames too small to calibrate the coherence; give coherence_length_x_m / "
                         "coherence_length_y_m in /geometry")
    lam_z = float(wavelength_m) * float(distance_m)
    fres = math.sqrt(lam_z)
    sg = np.geomspace(0.25, 6.0, 9)                                                         # σ (rad)
    ag = np.geomspace(min(0.3 * pixel_size_m, 0.2 * fres), max(6.0 * pixel_size_m, 3.0 * fres), 9)   # a (m)
    grid = {(i, j): _screen_nll(b, pixel_size_m, lam_z, sv, av) for i, sv in enumerate(sg) for j, av in enumerate(ag)}
    cost = np.array([[grid[(i, j)][0] for j in range(ag.size)] for i in range(sg.size)])
    starts = sorted((cost[i, j], i, j) for i in range(sg.size) for j in range(ag.size)
                    if cost[i, j] <= cost[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].min())
    sols = []
    for _, i, j in starts[:3]:
        inner = grid[(i, j)][1]

        def f(th, inner=inner):
            return _screen_nll(b, pixel_size_m, lam_z, math.exp(th[0]), math.exp(th[1]), start=inner)[0]

        r = optimize.minimize(f, [math.log(sg[i]), math.log(ag[j])], method="Nelder-Mead",
                              options=dict(xatol=2e-3, fatol=1e-3))
        c, th = _screen_nll(b, pixel_size_m, lam_z, math.exp(r.x[0]), math.exp(r.x[1]))
        if th[0] > 0 and th[1] > 0:
            sols.append((c, math.sqrt(th[0]) * pixel_size_m, math.sqrt(th[1]) * pixel_size_m,
                         math.exp(r.x[0]), math.exp(r.x[1]), math.exp(th[2])))
    if not sols:
        raise InputError("coherence fit failed (no diffuser model fits the speckle spectrum); give "
                         "coherence_length_x_m / coherence_length_y_m in /geometry")
    sols.sort()
    c, x, y, sigma, a, n0 = sols[0]
    warn = []
    for c2, x2, y2, *_ in sols[1:]:
        if c2 - c <= tie_nll and max(abs(x2 / x - 1), abs(y2 / y - 1)) > 0.05:
            warn.append(f"coherence calibration ambiguous: {x * 1e6:.2f} x {y * 1e6:.2f} µm or "
                        f"{x2 * 1e6:.2f} x {y2 * 1e6:.2f} µm fit the reference spectrum about equally well; use more "
                        "reference positions or give coherence_length_x_m / _y_m in /geometry")
            break
    k = b["k"]
    return dict(x=x, y=y, exponent=float("nan"), noise_floor=n0, n_points=int(b["p"].size),
                fit_rms=float("nan"), frange=(float(k.min()), float(k.max())), sigma=sigma, a=a,
                warnings=tuple(warn), extra=dict(whittle_nll=c))


#: default tail exponent n of the coherent speckle power spectrum S ∝ ρ^(2n) (see :func:`calibrate`)
DEFAULT_TAIL_EXPONENT = -1.0


def calibrate(reference, pixel_size_m: float, *, model: str = "auto",
              exponent: float | None = DEFAULT_TAIL_EXPONENT, wavelength_m: float | None = None,
              distance_m: float | None = None) -> CoherenceCalibration:
    """Calibrate the horizontal and vertical coherence lengths from reference speckle.

    Parameters
    ----------
    reference : array, ``(P, H, W)`` or ``(H, W)``
        Dark-subtracted, flat-normalised reference speckle (any positive scale).
    pixel_size_m : float
        Detector pixel size in metres.
    model : {"auto", "screen", "power-gaussian", "paper"}
        Estimator, see the module docstring.  ``"auto"`` (default): ``"screen"`` when *wavelength_m* and
        *distance_m* are given, else ``"power-gaussian"``.  ``"paper"`` is the authors' amplitude-spectrum fit.
    exponent : float or None
        ``power-gaussian`` only: tail exponent n of the coherent speckle spectrum ``S ∝ ρ^(2n)``.
        Over the short band that photon noise leaves (≈ 0.13–0.28 cycles/px at 10⁴ photons/px)
        a free n is nearly degenerate with the isotropic part of the Gaussian: on pwf-beads the
        free fit scattered by −22 … +18 % (P = 1) and −9 … +8 % (P = 12).  With n fixed to −1
        (S ∝ ρ⁻² tail) the 18 cases tested per diffuser (128/256/512 px, 3 seeds, P = 1 and 12)
        were within +0 … +4 % for a 2.5 µm-grain diffuser, and −9 … −1 % (P = 1) / −4 … −1 %
        (P = 12) for a 1.75 µm grain, but −20 … −30 % for 0.2–1 µm grains: the tail depends on the diffuser.
        ``None`` fits n freely.
    wavelength_m, distance_m : float, optional
        λ and the diffuser–detector distance (m, L2 for a downstream diffuser): ``screen`` needs them.

    Returns
    -------
    CoherenceCalibration
        ``warnings`` holds one line when two diffuser models fit the spectrum equally well with lengths
        more than 5 % apart (seen with one 256² frame; several reference positions resolve it).
    """
    if model not in MODELS:
        raise ParameterError(f"coherence model {model!r} unknown; choose one of {', '.join(MODELS)}")
    if not (pixel_size_m > 0):
        raise ParameterError(f"pixel_size_m must be positive, got {pixel_size_m!r}")
    have_optics = wavelength_m is not None and distance_m is not None
    if model == "auto":
        model = "screen" if have_optics else "power-gaussian"
    if model == "screen" and not (have_optics and wavelength_m > 0 and distance_m > 0):
        raise ParameterError("coherence model 'screen' needs wavelength_m and distance_m (diffuser to detector), "
                             "both positive; or choose model='power-gaussian'")
    ref = _as_ref_stack(reference)
    if model == "screen":
        fit = _fit_screen(ref, pixel_size_m, wavelength_m, distance_m)
    elif model == "power-gaussian":
        fit = _fit_power_gaussian(ref, pixel_size_m, exponent=exponent)
    else:
        fit = _fit_paper(ref, pixel_size_m)
    return CoherenceCalibration(
        coherence_length_x_m=float(fit["x"]), coherence_length_y_m=float(fit["y"]), model=model,
        pixel_size_m=float(pixel_size_m), exponent=fit["exponent"], noise_floor=fit["noise_floor"],
        n_points=fit["n_points"], fit_rms=fit["fit_rms"], frequency_range_cycles_per_px=tuple(fit["frange"]),
        phase_std_rad=float(fit.get("sigma", float("nan"))), correlation_length_m=float(fit.get("a", float("nan"))),
        warnings=tuple(fit.get("warnings", ())), extra=dict(fit.get("extra", {})))


def optics_of(geometry) -> dict[str, float]:
    """``wavelength_m`` and ``distance_m`` (diffuser to detector) of a Geometry for :func:`calibrate`, or {}
    when the diffuser–detector distance is not known (then ``model="auto"`` falls back to power-gaussian)."""
    l2 = getattr(geometry, "diffuser_detector_distance_m", None)
    if l2 is None:
        return {}
    return dict(wavelength_m=float(geometry.wavelength_m), distance_m=float(l2))


def calibrate_scan(scan, positions: Sequence[int] | None = None, *, model: str = "auto",
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
    g = scan.geometry
    cal = calibrate(ref, g.pixel_size_m, model=model, exponent=exponent, **optics_of(g))
    d = cal.to_dict()
    d["positions"] = list(pos)
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
