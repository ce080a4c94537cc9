"""Phase from its gradient or its Laplacian — one module used by every method.

* :func:`frankot_chellappa` — least-squares integration of a gradient field
  (Frankot & Chellappa, IEEE PAMI 10, 439 (1988)), with antisymmetric padding
  (Bon et al., Appl. Opt. 51, 5698 (2012)) against boundary artefacts.
* :func:`kottler` — complex-gradient integration (Kottler et al., Opt. Express 15,
  1175 (2007)); identical to FC for curl-free data.
* :func:`inverse_laplacian` — Tikhonov-regularised inverse Laplacian
  (Gureyev & Nugent; MIST, Pavlov et al. 2020, after Eq. 7) with mirror boundaries (a DCT),
  and the rules for its ε (:func:`default_epsilon_per_m2`, :func:`auto_epsilon_per_m2`).
* :func:`zero_border_median` — the contract's background rule for methods that only
  see gradients: the median of the image border is set to 0.

Gradients are in rad/m, Laplacians in rad/m², pixel sizes in m; outputs in rad,
float32, same shape as the input.  Works on NumPy and CuPy arrays.
"""

from __future__ import annotations

import math

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import ParameterError

__all__ = [
    "frankot_chellappa",
    "kottler",
    "inverse_laplacian",
    "inverse_laplacian_filter",
    "apply_inverse_laplacian",
    "default_epsilon_per_m2",
    "auto_epsilon_per_m2",
    "zero_border_median",
    "mirror_pad",
    "antisymmetric_pad",
    "angular_frequency_grid",
]


def angular_frequency_grid(shape, pixel_size_m: float, xp=np, rfft: bool = False):
    """Angular frequencies ``(ky, kx)`` in rad/m, broadcastable to *shape* (float32)."""
    h, w = shape[-2:]
    ky = 2 * np.pi * B.fftfreq(h, pixel_size_m, xp=xp)[:, None]
    kx = 2 * np.pi * (B.rfftfreq(w, pixel_size_m, xp=xp) if rfft else B.fftfreq(w, pixel_size_m, xp=xp))[None, :]
    return ky.astype(np.float32), kx.astype(np.float32)


def mirror_pad(f):
    """Even extension to ``(..., 2H, 2W)``: ``[[f, f→], [f↓, f↓→]]`` (arrows: flips)."""
    xp = B.get_xp(f)
    top = xp.concatenate([f, f[..., ::-1]], axis=-1)
    return xp.concatenate([top, top[..., ::-1, :]], axis=-2)


def antisymmetric_pad(gx, gy):
    """Antisymmetric extension of a gradient field (Bon et al. 2012) to ``(..., 2H, 2W)``.

    ``gx`` is odd under a flip in x and even under a flip in y; ``gy`` the reverse, so
    the padded field stays the gradient of the even extension of the phase.
    """
    xp = B.get_xp(gx, gy)
    gx_top = xp.concatenate([gx, -gx[..., ::-1]], axis=-1)
    gx_p = xp.concatenate([gx_top, gx_top[..., ::-1, :]], axis=-2)
    gy_top = xp.concatenate([gy, gy[..., ::-1]], axis=-1)
    gy_p = xp.concatenate([gy_top, -gy_top[..., ::-1, :]], axis=-2)
    return gx_p, gy_p


def _check_2d(a, name):
    if a.ndim < 2:
        raise ParameterError(f"{name} must have at least 2 dimensions (..., y, x), got shape {a.shape}")


def frankot_chellappa(grad_x, grad_y, pixel_size_m: float, *, pad: str = "antisymmetric"):
    """Integrate a gradient field (rad/m) to a phase (rad) by Frankot–Chellappa.

    Φ̂ = −i (k_x Ĝ_x + k_y Ĝ_y) / |k|², Φ̂(0) = 0  (FC 1988, with k in rad/m).

    Parameters
    ----------
    grad_x, grad_y : array, shape (..., H, W)
        ∂φ/∂x and ∂φ/∂y in rad/m.
    pixel_size_m : float
        Pixel size in metres.
    pad : {"antisymmetric", "none"}
        Boundary handling; ``"none"`` assumes periodic data.

    Returns
    -------
    phase : float32 array, shape (..., H, W), mean zero on the padded domain.
    """
    xp = B.get_xp(grad_x, grad_y)
    gx = xp.asarray(grad_x, dtype=np.float32)
    gy = xp.asarray(grad_y, dtype=np.float32)
    _check_2d(gx, "grad_x")
    h, w = gx.shape[-2:]
    if pad == "antisymmetric":
        gx, gy = antisymmetric_pad(gx, gy)
    elif pad != "none":
        raise ParameterError(f"pad must be 'antisymmetric' or 'none', got {pad!r}")
    shape = gx.shape[-2:]
    ky, kx = angular_frequency_grid(shape, pixel_size_m, xp=xp, rfft=True)
    k2 = kx * kx + ky * ky
    k2[0, 0] = 1.0
    gxh = B.rfft2(gx)
    gyh = B.rfft2(gy)
    num = kx * gxh
    num += ky * gyh
    num *= (-1j / k2).astype(np.complex64)
    num[..., 0, 0] = 0
    phase = B.irfft2(num, s=shape)
    return xp.ascontiguousarray(phase[..., :h, :w]).astype(np.float32, copy=False)


def kottler(grad_x, grad_y, pixel_size_m: float, *, pad: str = "antisymmetric"):
    """Integrate a gradient field by Kottler's complex method (Opt. Express 15, 1175 (2007)).

    Φ̂ = F(g_x + i g_y) / (i (k_x + i k_y)), Φ̂(0) = 0.  Returns float32 phase in rad.
    """
    xp = B.get_xp(grad_x, grad_y)
    gx = xp.asarray(grad_x, dtype=np.float32)
    gy = xp.asarray(grad_y, dtype=np.float32)
    _check_2d(gx, "grad_x")
    h, w = gx.shape[-2:]
    if pad == "antisymmetric":
        gx, gy = antisymmetric_pad(gx, gy)
    elif pad != "none":
        raise ParameterError(f"pad must be 'antisymmetric' or 'none', got {pad!r}")
    shape = gx.shape[-2:]
    ky, kx = angular_frequency_grid(shape, pixel_size_m, xp=xp)
    den = (1j * (kx + 1j * ky)).astype(np.complex64)
    den[0, 0] = 1.0
    g = (gx + 1j * gy).astype(np.complex64)
    spec = B.fft2(g)
    spec /= den
    spec[..., 0, 0] = 0
    phase = B.ifft2(spec, overwrite_x=True).real
    return xp.ascontiguousarray(phase[..., :h, :w]).astype(np.float32, copy=False)


def inverse_laplacian(laplacian, pixel_size_m: float, *, epsilon_per_m2: float = 0.0, pad: str = "mirror"):
    """Tikhonov-regularised inverse Laplacian: ∇⁻²f ≈ −F⁻¹[F(f) / (|k|² + ε)].

    (Gureyev & Nugent; Pavlov et al. 2020, text after Eq. 7; methods.md §1.14.)  The one inverse
    Laplacian of xspeckle (MIST's phase from ∇²φ uses it through :func:`inverse_laplacian_filter`).

    Parameters
    ----------
    laplacian : array, shape (..., H, W)
        ∇²φ in rad/m².
    pixel_size_m : float
        Pixel size in metres.
    epsilon_per_m2 : float
        Tikhonov ε in m⁻² (|k| in rad/m).  0 means unregularised, with k = 0 set to 0.
        A useful scale is ε ≈ (2π / L)² for the largest length L to keep.
    pad : {"mirror", "none"}
        ``"mirror"``: even (mirror) boundaries — the DFT of the 2H×2W even extension is a DCT-II,
        so it is evaluated as ``φ = −IDCT[DCT(f)/(k_y² + k_x² + ε)]``, ``k_j = πj/(N p)``, at about a
        quarter of the FFT work of the padded transform; ``"none"``: periodic, by an FFT.

    Returns
    -------
    phase : float32, shape (..., H, W), in rad.
    """
    xp = B.get_xp(laplacian)
    f = xp.asarray(laplacian, dtype=np.float32)
    _check_2d(f, "laplacian")
    if not (epsilon_per_m2 >= 0 and np.isfinite(epsilon_per_m2)):
        raise ParameterError(f"epsilon_per_m2 must be finite and >= 0, got {epsilon_per_m2!r}")
    if pad == "mirror":
        return apply_inverse_laplacian(f, inverse_laplacian_filter(f.shape[-2:], pixel_size_m, epsilon_per_m2, xp))
    if pad != "none":
        raise ParameterError(f"pad must be 'mirror' or 'none', got {pad!r}")
    shape = f.shape[-2:]
    ky, kx = angular_frequency_grid(shape, pixel_size_m, xp=xp, rfft=True)
    den = kx * kx + ky * ky + np.float32(epsilon_per_m2)
    if epsilon_per_m2 == 0:
        den[0, 0] = np.inf
    spec = B.rfft2(f)
    spec *= (-1.0 / den).astype(np.float32)
    out = B.irfft2(spec, s=shape)
    return xp.ascontiguousarray(out).astype(np.float32, copy=False)


def inverse_laplacian_filter(shape, pixel_size_m: float, epsilon_per_m2: float, xp=np):
    """DCT-domain factor ``−1/(k_y² + k_x² + ε)`` (float32 (H, W); 0 at k = 0 when ε = 0) of
    :func:`inverse_laplacian` (mirror), ``k_j = πj/(N p)`` rad/m (Gureyev & Nugent; Pavlov 2020 after
    Eq. 7).  Depends on the shape only: retrievers compute it once."""
    h, w = shape[-2:]
    ky = xp.asarray(np.pi * np.arange(h) / (h * pixel_size_m), dtype=np.float32)[:, None]
    kx = xp.asarray(np.pi * np.arange(w) / (w * pixel_size_m), dtype=np.float32)[None, :]
    den = ky * ky + (kx * kx + np.float32(epsilon_per_m2))  # one (H, W) allocation, updated in place
    if epsilon_per_m2 == 0:
        den[0, 0] = np.inf
    return xp.divide(np.float32(-1.0), den, out=den)


def apply_inverse_laplacian(f, filt):
    """``IDCT[DCT(f)·filt]`` (float32), *filt* from :func:`inverse_laplacian_filter`."""
    spec = B.dctn(f)
    spec *= filt
    return B.idctn(spec).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- choice of ε
def default_epsilon_per_m2(shape, pixel_size_m: float) -> float:
    """Default Tikhonov ε (m⁻²) of the inverse Laplacian for an image of *shape*.

    ε = 0.1·k_min² with k_min = 2π/(2·max(H, W)·p) the lowest non-zero angular
    frequency of the 2H×2W mirror pad (methods.md §1.14): it only damps the very
    lowest frequencies (lengths beyond ~3× the field of view), so the phase of objects
    inside the field is kept, while the k → 0 noise amplification is bounded.
    """
    h, w = shape[-2:]
    kmin = 2 * math.pi / (2 * max(h, w) * pixel_size_m)
    return 0.1 * kmin * kmin


#: ε grid of the risk rule, in units of k_min² = (π/(N p))² (the lowest non-zero DCT frequency squared)
_EPS_GRID_KMIN2 = np.concatenate([[0.0], np.logspace(-4, 1, 26)])
#: upper bound of the auto ε (units of k_min²), chosen by measurement (benchmarks/results/mist.md)
_EPS_AUTO_MAX_KMIN2 = 0.03


def auto_epsilon_per_m2(spectrum, pixel_size_m: float, *, corner: int = 128) -> float:
    """Inverse-Laplacian ε (m⁻²) chosen from the data by minimising an estimate of the phase error.

    For the DCT coefficients f̂(k) of the measured ∇²φ = signal + white noise of variance σ² per
    coefficient, the Tikhonov solution ``φ̂ = −f̂/(k² + ε)`` has the expected squared error
    ``R(ε) = Σ_k |s(k)|² ε²/(k⁴(k² + ε)²) + σ²/(k² + ε)²`` (bias + noise; the classical Tikhonov risk,
    e.g. Vogel, *Computational Methods for Inverse Problems*, SIAM 2002, §7.1 "unbiased predictive risk").
    σ² = the smallest median of |f̂|² over the octave bands [N/16, N/8), …, [N/2, N) of the DCT index
    (the noise floor: the sample's signal only adds power, and the noise of a Laplacian-based estimate
    rises with k), ``|s|² = max(|f̂|² − σ², 0)``.  ε only changes terms with k² ≲ 10⁴ ε,
    so R is summed over the ``corner × corner`` lowest frequencies; the grid is ε ∈ {0} ∪ 10^[−4, 1]·k_min².

    Parameters
    ----------
    spectrum : array (H, W)
        DCT-II (``backend.dctn``) of ∇²φ in rad/m².
    pixel_size_m : float

    Returns
    -------
    float : ε in m⁻² (0 allowed: the k = 0 term is then dropped).
    """
    xp = B.get_xp(spectrum)
    h, w = spectrum.shape[-2:]
    # noise floor: the smallest median power over octave bands (the signal only adds power; the noise of a
    # Laplacian-based estimate rises with k, so the top band alone would overstate it at low k)
    sig2 = np.inf
    for lo in (16, 8, 4, 2):
        band = spectrum[h // lo : 2 * h // lo : 2, w // lo : 2 * w // lo : 2]
        if band.size:
            sig2 = min(sig2, float(xp.median(band.astype(np.float64) ** 2)))
    ch, cw = min(h, corner), min(w, corner)
    f2 = B.asnumpy(spectrum[:ch, :cw]).astype(np.float64) ** 2
    ky = np.pi * np.arange(ch) / (h * pixel_size_m)
    kx = np.pi * np.arange(cw) / (w * pixel_size_m)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    k2[0, 0] = np.inf  # the mean is fixed by the border rule, not by ε
    s2 = np.maximum(f2 - sig2, 0.0)
    kmin2 = (np.pi / (max(h, w) * pixel_size_m)) ** 2
    best, best_r = 0.0, np.inf
    for e in _EPS_GRID_KMIN2[_EPS_GRID_KMIN2 <= _EPS_AUTO_MAX_KMIN2 * (1 + 1e-9)] * kmin2:
        d = k2 + e
        r = float(np.sum(s2 * (e * e) / (k2 * k2 * d * d) + sig2 / (d * d)))
        if r < best_r:
            best, best_r = float(e), r
    return best


def zero_border_median(phase, border_px: int = 8):
    """Subtract the median of the outer *border_px* pixels of each image (contract rule)."""
    xp = B.get_xp(phase)
    p = xp.asarray(phase, dtype=np.float32)
    h, w = p.shape[-2:]
    b = int(max(1, min(border_px, h // 4, w // 4)))
    edges = xp.concatenate(
        [
            p[..., :b, :].reshape(*p.shape[:-2], -1),
            p[..., -b:, :].reshape(*p.shape[:-2], -1),
            p[..., b:-b, :b].reshape(*p.shape[:-2], -1),
            p[..., b:-b, -b:].reshape(*p.shape[:-2], -1),
        ],
        axis=-1,
    )
    med = xp.median(edges, axis=-1)
    return p - med[..., None, None].astype(np.float32)
