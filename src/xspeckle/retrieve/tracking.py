"""Shared helpers of the speckle-tracking family (LCS, UMPA, XST/XSVT, optical flow).

* window sums — separable weighted sliding sums (box or Hamming windows, UMPA/XST),
* shifted views — the reference sampled at ``r − s`` for an integer shift ``s``,
* sub-pixel peak refinement on a 3×3 neighbourhood of a cost map (methods.md §1.1),
* filling the uncomputable border from the nearest valid pixel (retrieve/base.py rule),
* warping a stack by a per-pixel displacement (iterated LCS),
* gradient → phase (``∇φ = k·p·u/d``, design.md; methods.md §0 and §1.14), and the retriever
  outputs of the window-matching methods (:func:`maps_with_phase`).

Sign convention (design.md): the displacement ``u`` (px, x then y) is the speckle
shift reference → sample, ``I_S(r) ≈ T·I_R(r − u)``.  Everything here works on NumPy
and CuPy arrays (``xp = backend.get_xp``); float32 in and out.
"""

from __future__ import annotations

import numpy as np

from xspeckle import backend as B
from xspeckle.errors import ParameterError
from xspeckle.geometry import Geometry

__all__ = [
    "hamming_window",
    "box_window",
    "window_sum",
    "shifted",
    "shift_grid",
    "subpixel_quadratic",
    "fill_border",
    "warp",
    "spline_coefficients",
    "refine_esm",
    "fine_gradient",
    "argmin_subpixel",
    "propagation_distance_m",
    "phase_from_displacement",
    "maps_with_phase",
    "row_chunks",
]


# --------------------------------------------------------------------------- windows
def hamming_window(half: int) -> np.ndarray:
    """1-D Hamming window of length ``2*half+1`` normalised so that the 2-D outer product sums to 1.

    UMPA (Zdora et al. PRL 2017; methods.md §1.3) weights its window by the outer
    product of two Hamming windows.  ``half = 0`` gives the single weight 1.
    """
    n = 2 * int(half) + 1
    if n == 1:
        return np.ones(1, dtype=np.float64)
    w = np.hamming(n)  # end weights 0.08 > 0 (UMPA: outer product of np.hamming(2Nw+1))
    return w / w.sum()


def box_window(half: int) -> np.ndarray:
    """1-D box window of length ``2*half+1`` with unit weights (sums, not means)."""
    return np.ones(2 * int(half) + 1, dtype=np.float64)


def window_sum(a, w1d, *, pad: str = "edge"):
    """Separable weighted sliding sum ``Σ_ij w_i w_j a[..., y+i, x+j]`` with "same" output size.

    Parameters
    ----------
    a : array, shape (..., H, W)
        Input (float32).
    w1d : 1-D NumPy array of odd length ``2h+1``
        Weights along each axis (outer product in 2-D).
    pad : {"edge", "reflect", "constant"}
        How the image is extended by ``h`` pixels before summing.

    Returns
    -------
    float32 array, shape (..., H, W).
    """
    xp = B.get_xp(a)
    n = len(w1d)
    h = n // 2
    if h == 0:
        return a * np.float32(w1d[0])
    padw = [(0, 0)] * (a.ndim - 2) + [(h, h), (h, h)]
    p = xp.pad(a, padw, mode=pad)
    H, W = a.shape[-2:]
    # along y
    ty = p[..., 0:H, :] * np.float32(w1d[0])
    for i in range(1, n):
        ty += p[..., i : i + H, :] * np.float32(w1d[i])
    out = ty[..., :, 0:W] * np.float32(w1d[0])
    for j in range(1, n):
        out += ty[..., :, j : j + W] * np.float32(w1d[j])
    return out


# --------------------------------------------------------------------------- shifts
def shift_grid(max_shift: int):
    """Integer candidate shifts ``[(dx, dy), ...]`` over ``[-s, s]²`` (row-major in dy then dx)."""
    s = int(max_shift)
    return [(dx, dy) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]


def shifted(padded, pad: int, dx: int, dy: int, H: int, W: int):
    """View of ``I(r − (dx, dy))`` from an array edge-padded by *pad* px on both image axes.

    ``padded[..., pad + y − dy, pad + x − dx]`` for every ``(y, x)`` of the ``H×W`` image.
    """
    y0 = pad - dy
    x0 = pad - dx
    return padded[..., y0 : y0 + H, x0 : x0 + W]


def subpixel_quadratic(c, mode: str = "paraboloid", clamp: float = 0.75):
    """Sub-pixel offset of the minimum of a cost sampled on a 3×3 grid around its integer argmin.

    Parameters
    ----------
    c : array, shape (3, 3, ...)
        Costs ``c[iy, ix]`` at offsets ``(ix − 1, iy − 1)``; the centre must be the discrete minimum.
    mode : {"paraboloid", "separable"}
        ``"paraboloid"``: least-squares fit of ``a + bx + cy + dx² + ey² + gxy`` to the 9 values and
        its stationary point (popcorn ``polyfit2d``, algotom ``poly_fit``; methods.md §1.1 (b)).
        ``"separable"``: 3-point parabola along x and y independently.
    clamp : float
        Offsets are clipped to ``[-clamp, clamp]`` px (methods.md §1.1: reject corrections > ~0.5 px).

    Returns
    -------
    (ox, oy) : float32 arrays, shape (...,), offsets in px.
    """
    xp = B.get_xp(c)
    c = c.astype(np.float32, copy=False)
    # 1-D three-point parabola (central row/column): δ = (f₋ − f₊) / (2(f₋ − 2f₀ + f₊)).
    cxm, cx0, cxp = c[1, 0], c[1, 1], c[1, 2]
    cym, cyp = c[0, 1], c[2, 1]
    if mode == "separable":
        dxx = cxm - 2 * cx0 + cxp
        dyy = cym - 2 * cx0 + cyp
        ox = xp.where(dxx > 0, (cxm - cxp) / xp.where(dxx > 0, 2 * dxx, 1), 0)
        oy = xp.where(dyy > 0, (cym - cyp) / xp.where(dyy > 0, 2 * dyy, 1), 0)
    elif mode == "paraboloid":
        # column sums S_x (over y) and row sums S_y (over x) on the 3×3 grid (LS normal equations
        # of the 6-term quadratic decouple on a symmetric grid)
        sx_m = c[0, 0] + c[1, 0] + c[2, 0]
        sx_0 = c[0, 1] + c[1, 1] + c[2, 1]
        sx_p = c[0, 2] + c[1, 2] + c[2, 2]
        sy_m = c[0, 0] + c[0, 1] + c[0, 2]
        sy_0 = c[1, 0] + c[1, 1] + c[1, 2]
        sy_p = c[2, 0] + c[2, 1] + c[2, 2]
        b = (sx_p - sx_m) / 6
        cc = (sy_p - sy_m) / 6
        d = (sx_p + sx_m - 2 * sx_0) / 6
        e = (sy_p + sy_m - 2 * sy_0) / 6
        g = (c[2, 2] - c[2, 0] - c[0, 2] + c[0, 0]) / 4
        # stationary point of the paraboloid: [2d g; g 2e] [x; y] = −[b; c]
        det = 4 * d * e - g * g
        ok = (det > 0) & (d > 0)
        safe = xp.where(ok, det, 1)
        ox = xp.where(ok, (-2 * e * b + g * cc) / safe, 0)
        oy = xp.where(ok, (-2 * d * cc + g * b) / safe, 0)
    else:
        raise ParameterError(f"subpixel must be 'paraboloid', 'separable' or 'none', got {mode!r}")
    ox = xp.clip(ox, -clamp, clamp).astype(np.float32, copy=False)
    oy = xp.clip(oy, -clamp, clamp).astype(np.float32, copy=False)
    return ox, oy


# --------------------------------------------------------------------------- borders
def fill_border(a, margin: int):
    """Replace the outer *margin* px of ``a (..., H, W)`` by the nearest interior pixel (edge fill)."""
    m = int(margin)
    if m <= 0:
        return a
    xp = B.get_xp(a)
    H, W = a.shape[-2:]
    my = min(m, (H - 1) // 2)
    mx = min(m, (W - 1) // 2)
    core = a[..., my : H - my, mx : W - mx]
    padw = [(0, 0)] * (a.ndim - 2) + [(my, my), (mx, mx)]
    return xp.pad(core, padw, mode="edge")


def row_chunks(H: int, chunk_rows: int | None, halo: int):
    """Yield ``(y0, y1, a0, a1)``: output rows ``[y0, y1)`` computed from input rows ``[a0, a1)`` (with halo)."""
    if not chunk_rows or chunk_rows >= H:
        yield 0, H, 0, H
        return
    step = max(1, int(chunk_rows))
    for y0 in range(0, H, step):
        y1 = min(H, y0 + step)
        yield y0, y1, max(0, y0 - halo), min(H, y1 + halo)


# --------------------------------------------------------------------------- warping
def _ndimage(x):
    if B.is_cupy(x):
        from cupyx.scipy import ndimage as ndi
    else:
        from scipy import ndimage as ndi
    return ndi


def spline_coefficients(stack, order: int = 3):
    """Cubic-spline coefficients of each frame of ``stack (P, H, W)`` (for :func:`warp` with ``prefiltered=True``)."""
    ndi = _ndimage(stack)
    xp = B.get_xp(stack)
    out = xp.empty_like(stack)
    for i in range(stack.shape[0]):
        out[i] = ndi.spline_filter(stack[i], order=order, output=np.float32, mode="nearest")
    return out


def warp(stack, ux, uy, *, order: int = 3, prefiltered: bool = False):
    """Return ``I(r − u(r))`` for every frame of ``stack (P, H, W)`` (spline interpolation, edge mode).

    Used by the Gauss–Newton refinement and iterated LCS.  ``ux, uy`` are (H, W) in px.
    NumPy uses ``scipy.ndimage.map_coordinates``; CuPy ``cupyx.scipy.ndimage.map_coordinates``.
    With ``prefiltered=True`` *stack* holds :func:`spline_coefficients` (saves the prefilter).
    """
    xp = B.get_xp(stack)
    ndi = _ndimage(stack)
    H, W = stack.shape[-2:]
    yy = xp.arange(H, dtype=np.float32)[:, None] - uy
    xx = xp.arange(W, dtype=np.float32)[None, :] - ux
    coords = xp.stack([yy, xx])
    out = xp.empty(stack.shape, dtype=np.float32)
    for i in range(stack.shape[0]):
        out[i] = ndi.map_coordinates(stack[i], coords, order=order, mode="nearest", prefilter=not prefiltered)
    return out


def _solve3(m, b):
    """Batched 3×3 symmetric solve by the adjugate (Cramer), float64. m: 6 entries (00,01,02,11,12,22)."""
    from xspeckle.retrieve.pixel_lsq import sym3_adjugate

    xp = B.get_xp(b[0])
    (c00, c01, c02, c11, c12, c22), det = sym3_adjugate(m)
    ok = xp.abs(det) > 1e-30
    inv = xp.where(ok, 1.0 / xp.where(ok, det, 1.0), 0.0)
    x0 = (c00 * b[0] + c01 * b[1] + c02 * b[2]) * inv
    x1 = (c01 * b[0] + c11 * b[1] + c12 * b[2]) * inv
    x2 = (c02 * b[0] + c12 * b[1] + c22 * b[2]) * inv
    return x0, x1, x2, ok


_FD8 = (4.0 / 5.0, -1.0 / 5.0, 4.0 / 105.0, -1.0 / 280.0)


def fine_gradient(a):
    """``(d/dy, d/dx)`` in px⁻¹ by 8th-order central differences (edge-extended), float32.

    Sub-pixel refinement needs the derivative of speckle with content up to ~1 rad/px, where
    the 2-point central difference (``np.gradient``, gain sin(k)/k) underestimates it by 16 % at
    k = 1 rad/px and biases the shift by the same fraction; the 9-point stencil (Fornberg 1988
    weights 4/5, −1/5, 4/105, −1/280) has gain > 0.99 up to k = 1.3 rad/px (0.97 at 1.6).
    """
    xp = B.get_xp(a)
    H, W = a.shape[-2:]
    p = xp.pad(a, [(0, 0)] * (a.ndim - 2) + [(4, 4), (4, 4)], mode="edge")
    gy = xp.zeros(a.shape, dtype=np.float32)
    gx = xp.zeros(a.shape, dtype=np.float32)
    for i, c in enumerate(_FD8, start=1):
        c = np.float32(c)
        gy += c * (p[..., 4 + i : 4 + i + H, 4 : 4 + W] - p[..., 4 - i : 4 - i + H, 4 : 4 + W])
        gx += c * (p[..., 4 : 4 + H, 4 + i : 4 + i + W] - p[..., 4 : 4 + H, 4 - i : 4 - i + W])
    return gy, gx


def _refine_vectors(ref, sam, grx, gry, shx, shy, iux, iuy, ksafe, clamp):
    """:func:`refine_esm` for a 1×1 template with block (= over n) centring, by per-pixel gathers."""
    xp = B.get_xp(sam)
    N, H, W = sam.shape
    yy = xp.clip(xp.arange(H)[:, None] - iuy, 0, H - 1)
    xx = xp.clip(xp.arange(W)[None, :] - iux, 0, W - 1)
    idx = (yy * W + xx).ravel()

    def g(a):  # a(r − s(r)) for every pixel, (N, H·W)
        return xp.take(a.reshape(N, H * W), idx, axis=1)

    kb = (0.5 / ksafe).ravel()
    arr = {
        "r": g(ref),
        "gx": 0.5 * g(grx) + shx.reshape(N, H * W) * kb,  # G = ½(∇I_R(r−s) + ∇I_S/K̂)
        "gy": 0.5 * g(gry) + shy.reshape(N, H * W) * kb,
        "s": sam.reshape(N, H * W),
    }
    arr = {k: v - xp.mean(v, axis=0) for k, v in arr.items()}  # centre over n (ZNCC model)
    Pm = {}
    for a_, b_ in (("r", "r"), ("r", "gx"), ("r", "gy"), ("gx", "gx"), ("gx", "gy"), ("gy", "gy"),
                   ("s", "r"), ("s", "gx"), ("s", "gy"), ("s", "s")):
        Pm[(a_, b_)] = xp.einsum("np,np->p", arr[a_], arr[b_]).astype(np.float64)
    m = [Pm[("r", "r")], -Pm[("r", "gx")], -Pm[("r", "gy")], Pm[("gx", "gx")], Pm[("gx", "gy")], Pm[("gy", "gy")]]
    reg = 1e-9 * (m[0] + m[3] + m[5]) + 1e-30
    m[0] = m[0] + reg
    m[3] = m[3] + reg
    m[5] = m[5] + reg
    rhs = (Pm[("s", "r")], -Pm[("s", "gx")], -Pm[("s", "gy")])
    k, kx, ky, ok = _solve3(m, rhs)
    good = ok & (xp.abs(k) > 1e-12)
    kk = xp.where(good, k, 1.0)
    ddx = xp.clip(xp.where(good, kx / kk, 0.0), -clamp, clamp)
    ddy = xp.clip(xp.where(good, ky / kk, 0.0), -clamp, clamp)
    fit = k * rhs[0] + kx * rhs[1] + ky * rhs[2]
    rho = xp.clip(fit / xp.sqrt(xp.maximum(fit * Pm[("s", "s")], 1e-60)), -1.0, 1.0)
    shape = (H, W)
    ux = (iux.ravel() + ddx).reshape(shape).astype(np.float32)
    uy = (iuy.ravel() + ddy).reshape(shape).astype(np.float32)
    kout = xp.where(good, k, ksafe.ravel()).reshape(shape).astype(np.float32)
    return ux, uy, kout, rho.reshape(shape).astype(np.float32)


def refine_esm(ref, sam, ux, uy, k_hat, w1d, *, centre: str = "frame", max_shift: int | None = None,
               clamp: float = 1.0):
    """Sub-pixel refinement of windowed speckle matching by one symmetric Gauss–Newton step.

    Each pixel's window is compared with the reference at its *integer* shift ``s = round(u)``
    (exact samples, no interpolation) and the fractional remainder δ is solved from the
    linearised window model ``s' ≈ K·(r'_s − δ·G)`` with the symmetric ("efficient second-order",
    Benhimane & Malis, IROS 2004) Jacobian ``G = ½(∇I_R(r − s) + ∇I_S(r)/K̂)``: since
    ``∇I_S = K ∇I_R(r − s − δ)``, the Taylor error of ``I_R(r − s − δ) ≈ I_R(r − s) − δ·G`` is
    O(δ³), so one step is accurate for |δ| ≤ 0.5.  This is the LCS linearisation (Quénot et al.
    2021; methods.md §1.5) applied over a window (LCS-Retrieval's windowed form, methods.md §1.7).
    Centring per frame (``"frame"``) leaves a free offset ``β⟨I_R,n⟩`` per window — UMPA's
    dark-field model (methods.md §1.3); centring over the whole block (``"block"``) is the ZNCC
    model of XST/XSVT (methods.md §1.1–1.2).  Work is done shift by shift on the bounding box of
    the pixels that chose that shift.

    Parameters
    ----------
    ref, sam : arrays (N, H, W) float32
    ux, uy : arrays (H, W), displacement from the integer search (px, +u)
    k_hat : array (H, W), the window amplitude factor K at the integer shift (scales ∇I_S)
    w1d : 1-D weights of odd length (outer product = window; normalised internally)
    centre : {"frame", "block"}
    max_shift : int, optional
        Integer shifts are clipped to ``[-max_shift, max_shift]``.
    clamp : float
        Largest |δ| accepted, px.

    Returns
    -------
    ux, uy : float32 (H, W), refined displacement
    K : float32 (H, W), fitted amplitude factor of the window fluctuations
    rho : float32 (H, W), normalised correlation of the centred window with the fitted model
    """
    if centre not in ("frame", "block"):
        raise ParameterError(f"centre must be 'frame' or 'block', got {centre!r}")
    xp = B.get_xp(sam)
    w = np.asarray(w1d, dtype=np.float64)
    w = w / w.sum()
    h = len(w) // 2
    N, H, W = sam.shape
    iux = xp.rint(ux).astype(np.int64)
    iuy = xp.rint(uy).astype(np.int64)
    if max_shift is not None:
        iux = xp.clip(iux, -max_shift, max_shift)
        iuy = xp.clip(iuy, -max_shift, max_shift)
    smax = int(max(int(xp.max(xp.abs(iux))), int(xp.max(xp.abs(iuy))), 0))
    gry, grx = fine_gradient(ref)
    shy, shx = fine_gradient(sam)
    # per-frame window means (sample-side fixed; reference-side shifted below)
    mean = {"s": window_sum(sam, w), "hx": window_sum(shx, w), "hy": window_sum(shy, w)}
    rmean = {"r": window_sum(ref, w), "gx": window_sum(grx, w), "gy": window_sum(gry, w)}
    P = smax + h + 1
    padw = ((0, 0), (P, P), (P, P))
    rp = {"r": xp.pad(ref, padw, mode="edge"), "gx": xp.pad(grx, padw, mode="edge"),
          "gy": xp.pad(gry, padw, mode="edge")}
    rmp = {k: xp.pad(v, padw, mode="edge") for k, v in rmean.items()}
    ksafe = xp.where(xp.abs(k_hat) > 1e-6, k_hat, 1.0).astype(np.float32)
    out_x = xp.asarray(ux, dtype=np.float32).copy()
    out_y = xp.asarray(uy, dtype=np.float32).copy()
    out_k = ksafe.copy()
    out_rho = xp.zeros((H, W), dtype=np.float32)
    if h == 0 and centre == "block":
        # pure vector matching (XSVT): gather each pixel's reference vector at its own integer shift
        return _refine_vectors(ref, sam, grx, gry, shx, shy, iux, iuy, ksafe, clamp)
    code = (iuy + smax) * (2 * smax + 1) + (iux + smax)
    for c in [int(v) for v in B.asnumpy(xp.unique(code))]:
        dy = c // (2 * smax + 1) - smax
        dx = c % (2 * smax + 1) - smax
        mask = code == c
        rows = xp.nonzero(xp.any(mask, axis=1))[0]
        cols = xp.nonzero(xp.any(mask, axis=0))[0]
        y0 = max(0, int(rows[0]) - h)
        y1 = min(H, int(rows[-1]) + 1 + h)
        x0 = max(0, int(cols[0]) - h)
        x1 = min(W, int(cols[-1]) + 1 + h)
        hh, ww = y1 - y0, x1 - x0

        def sh(a):  # a(r − s) on the box, from an array padded by P
            return a[..., P + y0 - dy : P + y0 - dy + hh, P + x0 - dx : P + x0 - dx + ww]

        kb = 0.5 / ksafe[y0:y1, x0:x1]
        r_s = sh(rp["r"])
        gx = 0.5 * sh(rp["gx"]) + shx[:, y0:y1, x0:x1] * kb  # G = ½(∇I_R(r−s) + ∇I_S/K̂)
        gy = 0.5 * sh(rp["gy"]) + shy[:, y0:y1, x0:x1] * kb
        sb = sam[:, y0:y1, x0:x1]
        arr = {"r": r_s, "gx": gx, "gy": gy, "s": sb}
        mn = {
            "r": sh(rmp["r"]),
            "gx": 0.5 * sh(rmp["gx"]) + mean["hx"][:, y0:y1, x0:x1] * kb,
            "gy": 0.5 * sh(rmp["gy"]) + mean["hy"][:, y0:y1, x0:x1] * kb,
            "s": mean["s"][:, y0:y1, x0:x1],
        }
        Pm = {}
        for a_, b_ in (("r", "r"), ("r", "gx"), ("r", "gy"), ("gx", "gx"), ("gx", "gy"), ("gy", "gy"),
                       ("s", "r"), ("s", "gx"), ("s", "gy"), ("s", "s")):
            tot = window_sum(xp.einsum("nhw,nhw->hw", arr[a_], arr[b_]), w)
            if centre == "frame":
                tot -= xp.einsum("nhw,nhw->hw", mn[a_], mn[b_])
            else:
                tot -= xp.sum(mn[a_], axis=0) * xp.sum(mn[b_], axis=0) / np.float32(N)
            Pm[(a_, b_)] = tot.astype(np.float64)
        # normal equations of x = [K, K·δx, K·δy] with columns [r', −G'x, −G'y]
        m = [Pm[("r", "r")], -Pm[("r", "gx")], -Pm[("r", "gy")], Pm[("gx", "gx")], Pm[("gx", "gy")],
             Pm[("gy", "gy")]]
        reg = 1e-9 * (m[0] + m[3] + m[5]) + 1e-30  # tiny Tikhonov: flat windows stay finite
        m[0] = m[0] + reg
        m[3] = m[3] + reg
        m[5] = m[5] + reg
        rhs = (Pm[("s", "r")], -Pm[("s", "gx")], -Pm[("s", "gy")])
        k, kx, ky, ok = _solve3(m, rhs)
        good = ok & (xp.abs(k) > 1e-12)
        kk = xp.where(good, k, 1.0)
        ddx = xp.clip(xp.where(good, kx / kk, 0.0), -clamp, clamp)
        ddy = xp.clip(xp.where(good, ky / kk, 0.0), -clamp, clamp)
        # correlation of the centred window with the fitted model: (xᵀb)/sqrt(xᵀMx · s's')
        fit = k * rhs[0] + kx * rhs[1] + ky * rhs[2]
        rho = xp.clip(fit / xp.sqrt(xp.maximum(fit * Pm[("s", "s")], 1e-60)), -1.0, 1.0)
        mb = mask[y0:y1, x0:x1]
        sl = (slice(y0, y1), slice(x0, x1))
        out_x[sl] = xp.where(mb, (dx + ddx).astype(np.float32), out_x[sl])
        out_y[sl] = xp.where(mb, (dy + ddy).astype(np.float32), out_y[sl])
        out_k[sl] = xp.where(mb, xp.where(good, k, ksafe[sl]).astype(np.float32), out_k[sl])
        out_rho[sl] = xp.where(mb, rho.astype(np.float32), out_rho[sl])
    return out_x, out_y, out_k, out_rho


# --------------------------------------------------------------------------- phase
def propagation_distance_m(geometry: Geometry) -> float:
    """Distance ``d`` that converts displacement to phase gradient (design.md, pwf.md §7).

    Upstream diffuser: ``d = Δ`` (sample to detector).  Downstream diffuser: ``d = L2``
    (diffuser to detector; the speckle is locked to the diffuser, only tilts move it).
    """
    if geometry.diffuser_position == "downstream":
        return geometry.require_l2()
    return float(geometry.sample_detector_distance_m)


def phase_from_displacement(ux, uy, geometry: Geometry, *, integrator: str = "fc", border_px: int = 8):
    """Integrate a displacement field (px) to a phase (rad) with the background set to 0.

    ``∇φ [rad/m] = k·p·u_px/d`` (design.md; methods.md §0), integrated on the sample-plane
    grid ``p/M`` (methods.md §0, popcorn ``gradientSampling``) by Frankot–Chellappa (``"fc"``)
    or Kottler (``"kottler"``) with antisymmetric padding (methods.md §1.14); then
    :func:`~xspeckle.retrieve.integrate.zero_border_median`.

    Parameters
    ----------
    ux, uy : arrays (..., H, W)
        Displacement in px.
    geometry : Geometry
    integrator : {"fc", "kottler"}
    border_px : int
        Width of the border whose median is set to 0.

    Returns
    -------
    phase : float32 (..., H, W), rad.
    """
    from xspeckle.retrieve import integrate as I

    k = geometry.wavenumber_per_m
    p = geometry.pixel_size_m
    d = propagation_distance_m(geometry)
    s = np.float32(k * p / d)
    gx = ux * s
    gy = uy * s
    p_sample = p / geometry.magnification
    if integrator == "fc":
        phi = I.frankot_chellappa(gx, gy, p_sample)
    elif integrator == "kottler":
        phi = I.kottler(gx, gy, p_sample)
    else:
        raise ParameterError(f"integrator must be 'fc' or 'kottler', got {integrator!r}")
    return I.zero_border_median(phi, border_px)


def maps_with_phase(result: dict, geometry: Geometry, *, integrator: str = "fc") -> dict:
    """The retriever outputs of a window-matching method (UMPA, XST/XSVT) from its plain-function result.

    ``phase`` from ``result["displacement"]`` by :func:`phase_from_displacement`; ``transmission``,
    ``visibility``, ``displacement`` (2, H, W) px = +u and ``residual`` passed through.
    """
    u = result["displacement"]
    phase = phase_from_displacement(u[0], u[1], geometry, integrator=integrator)
    return {
        "phase": phase,
        "transmission": result["transmission"],
        "visibility": result["visibility"],
        "displacement": u,
        "residual": result["residual"],
    }


def argmin_subpixel(cost, max_shift: int, mode: str = "paraboloid"):
    """Integer argmin over a cost volume of candidate shifts, then sub-pixel refinement.

    Parameters
    ----------
    cost : array, shape (K, H, W), K = (2s+1)²
        Cost per candidate shift in the order of :func:`shift_grid` (lower is better).
    max_shift : int
        ``s``.
    mode : {"paraboloid", "separable", "none"}
        Sub-pixel method (:func:`subpixel_quadratic`).

    Returns
    -------
    ux, uy : float32 (H, W), px
    idx : int array (H, W), index of the integer minimum in ``cost``
    cmin : float32 (H, W), the minimum cost
    """
    xp = B.get_xp(cost)
    s = int(max_shift)
    n = 2 * s + 1
    idx = xp.argmin(cost, axis=0)
    cmin = xp.take_along_axis(cost, idx[None], axis=0)[0]
    iy = idx // n
    ix = idx % n
    ux = (ix - s).astype(np.float32)
    uy = (iy - s).astype(np.float32)
    if mode == "none" or s == 0:
        return ux, uy, idx, cmin
    # 3×3 neighbourhood centred on the argmin, kept inside the search grid
    cy = xp.clip(iy, 1, n - 2)
    cx = xp.clip(ix, 1, n - 2)
    nb = xp.empty((3, 3) + idx.shape, dtype=np.float32)
    for a in range(3):
        for b in range(3):
            k = (cy + a - 1) * n + (cx + b - 1)
            nb[a, b] = xp.take_along_axis(cost, k[None], axis=0)[0]
    ox, oy = subpixel_quadratic(nb, mode)
    ux = (cx - s).astype(np.float32) + ox
    uy = (cy - s).astype(np.float32) + oy
    return ux, uy, idx, cmin
