"""Fourier shell (3-D) and ring (2-D) correlation, resolution criteria, averaging over pairs.

``FSC(kappa) = Re<G1* G2> / sqrt(<|G1|^2> <|G2|^2>)`` over the shell ``|k| = kappa`` (seed 000, Eq. 16).

Criteria
--------
* **1/4** (seed 000, Eqs. 17-18): with ``g_i = s + n_i``, the data are reliable where their correlation with
  the true signal, ``sqrt(S / (S + N))`` (Eq. 17), is at least 1/2; since ``FSC = S / (S + N)`` (Eq. 18), that
  is ``FSC >= 1/4``. It judges *one* tomogram (no full-set extrapolation), as PWF needs (K = 1).
* **1/7 = 0.143** (Rosenthal & Henderson 2003, the seed's Ref. 65): the same argument for the average of both
  halves (noise power halved), the classic cryo-EM threshold.

Resolution is reported as the full period ``1 / kappa_c`` in metres at the first crossing, with ``kappa_c``
linearly interpolated between the two shells around it. Shells have a width of one Fourier pixel
(``1 / (min(shape) * voxel)``), up to the Nyquist frequency.

Memory: spectra are taken with ``rfftn`` and shell sums are accumulated plane by plane in float64; a full
2160 x 2560^2 volume does not fit in RAM (performance.md §2), so use ``crop=`` for a central cube.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from xspeckle import backend
from xspeckle.errors import InputError, ParameterError

__all__ = [
    "THRESHOLD_QUARTER",
    "THRESHOLD_SEVENTH",
    "fsc",
    "frc",
    "fsc_average",
    "fsc_summary",
    "fsc_random_pairs",
    "random_pairs",
    "resolution_crossing",
    "central_crop",
    "fsc_files",
    "fsc_files_random_pairs",
]

#: 1/4 criterion of seed 000 (Eqs. 17-18)
THRESHOLD_QUARTER = 0.25
#: 1/7 criterion of Rosenthal & Henderson (2003)
THRESHOLD_SEVENTH = 1.0 / 7.0


def central_crop(shape: Sequence[int], crop) -> tuple[slice, ...]:
    """Slices of a centred box of size *crop* (int = same on every axis, or a tuple) inside *shape*."""
    if crop is None:
        return tuple(slice(None) for _ in shape)
    c = (int(crop),) * len(shape) if np.isscalar(crop) else tuple(int(v) for v in crop)
    if len(c) != len(shape):
        raise ParameterError(f"fsc: crop {crop!r} does not match a {len(shape)}-D volume")
    out = []
    for n, m in zip(shape, c):
        m = min(max(m, 1), n)
        a = (n - m) // 2
        out.append(slice(a, a + m))
    return tuple(out)


def _shell_sums(a, b, n_shells: int):
    """Shell sums of Re(A* B), |A|^2, |B|^2 and counts (float64), shell = round(|k| / dk)."""
    xp = backend.get_xp(a, b)
    shape = a.shape
    nd = a.ndim
    A = backend.rfftn(xp.asarray(a, dtype=xp.float32))
    B = backend.rfftn(xp.asarray(b, dtype=xp.float32))
    dk = 1.0 / min(shape)  # shell width: one Fourier pixel of the smallest axis (cycles/px)
    # frequencies (cycles/px) of the rfftn axes; the last axis is the half axis
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    # Hermitian weights: the half axis's interior counts twice (k and -k)
    wl = np.full(freqs[-1].size, 2.0)
    wl[0] = 1.0
    if shape[-1] % 2 == 0:
        wl[-1] = 1.0
    k2_tail = None
    if nd >= 2:
        grids = np.meshgrid(*freqs[1:], indexing="ij")
        k2_tail = sum(g * g for g in grids)  # (shape[1], ..., shape[-1]//2+1)
        w_tail = np.broadcast_to(wl, k2_tail.shape)
    sums = np.zeros((4, n_shells))
    planes = range(shape[0]) if nd >= 2 else [None]
    for i in planes:
        if nd >= 2:
            k2 = k2_tail + freqs[0][i] ** 2
            Ai, Bi = A[i], B[i]
            wt = w_tail
        else:
            k2 = freqs[0] ** 2
            Ai, Bi, wt = A, B, wl
        idx = np.rint(np.sqrt(k2) / dk).astype(np.int64).ravel()
        ok = idx < n_shells
        idx = idx[ok]
        wv = np.asarray(wt).ravel()[ok]
        Ar = backend.asnumpy(Ai).ravel()[ok]
        Br = backend.asnumpy(Bi).ravel()[ok]
        sums[0] += np.bincount(idx, wv * (Ar.real.astype(np.float64) * Br.real + Ar.imag.astype(np.float64) * Br.imag), n_shells)
        sums[1] += np.bincount(idx, wv * (np.abs(Ar).astype(np.float64) ** 2), n_shells)
        sums[2] += np.bincount(idx, wv * (np.abs(Br).astype(np.float64) ** 2), n_shells)
        sums[3] += np.bincount(idx, wv, n_shells)
    return sums, dk


def fsc(a, b, *, voxel_size_m: float = 1.0, crop=None) -> dict[str, np.ndarray]:
    """Fourier shell (3-D) or ring (2-D) correlation of two volumes (seed 000, Eq. 16).

    Parameters
    ----------
    a, b : array (Z, Y, X) or (Y, X)
        Two reconstructions of the same object with independent noise (NumPy or CuPy).
    voxel_size_m : float
        Voxel size in metres (frequencies are returned in 1/m).
    crop : int or tuple, optional
        Central box to use (memory).

    Returns
    -------
    dict with ``frequency_per_m`` (n,), ``frequency_per_px`` (n,), ``fsc`` (n,) and ``n_voxels`` (n,) for shells
    0 .. Nyquist (shell 0 is DC).
    """
    if a.shape != b.shape:
        raise InputError(f"fsc: the two volumes have shapes {tuple(a.shape)} and {tuple(b.shape)}; they must match")
    sl = central_crop(a.shape, crop)
    a, b = a[sl], b[sl]
    if min(a.shape) < 4:
        raise InputError(f"fsc: volume {tuple(a.shape)} is too small (need at least 4 voxels per axis)")
    n_shells = min(a.shape) // 2 + 1  # up to Nyquist of the smallest axis
    sums, dk = _shell_sums(a, b, n_shells)
    den = np.sqrt(sums[1] * sums[2])
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(den > 0, sums[0] / den, 0.0)
    f_px = np.arange(n_shells) * dk
    return {
        "frequency_per_px": f_px,
        "frequency_per_m": f_px / float(voxel_size_m),
        "fsc": c,
        "n_voxels": sums[3],
    }


def frc(a, b, *, pixel_size_m: float = 1.0, crop=None) -> dict[str, np.ndarray]:
    """Fourier ring correlation of two 2-D images (:func:`fsc` in 2-D)."""
    if a.ndim != 2:
        raise InputError(f"frc: expected 2-D images, got shape {tuple(a.shape)}")
    return fsc(a, b, voxel_size_m=pixel_size_m, crop=crop)


def resolution_crossing(freq, curve, threshold: float) -> float | None:
    """Frequency where *curve* first falls below *threshold* (linear interpolation; DC shell skipped).

    Returns ``None`` when the curve stays above the threshold up to the last shell.
    """
    f = np.asarray(freq, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    below = np.nonzero(c[1:] < threshold)[0]
    if below.size == 0:
        return None
    i = below[0] + 1
    if i == 1:
        return float(f[1])
    c0, c1 = c[i - 1], c[i]
    t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
    return float(f[i - 1] + t * (f[i] - f[i - 1]))


def fsc_summary(curve: dict, voxel_size_m: float) -> dict[str, Any]:
    """Resolutions of an FSC curve by the 1/4 and 1/7 criteria.

    Parameters
    ----------
    curve : dict
        ``frequency_per_m`` and ``fsc`` (as :func:`fsc` returns).
    voxel_size_m : float

    Returns
    -------
    dict: ``resolution_m`` (1/4), ``resolution_m_1_7`` (1/7) — 1/crossing frequency in m, None where the
    curve never crosses — ``crossing_per_m``, ``crossing_per_m_1_7`` (1/m or None) and
    ``nyquist_resolution_m`` (2 voxels).
    """
    out: dict[str, Any] = {}
    for key, thr in (("resolution_m", THRESHOLD_QUARTER), ("resolution_m_1_7", THRESHOLD_SEVENTH)):
        k = resolution_crossing(curve["frequency_per_m"], curve["fsc"], thr)
        out[key] = None if k is None or k <= 0 else 1.0 / k
        out[key.replace("resolution_m", "crossing_per_m")] = k
    nyq = 0.5 / float(voxel_size_m)
    out["nyquist_resolution_m"] = 1.0 / nyq
    return out


def fsc_average(pairs, *, voxel_size_m: float = 1.0, crop=None) -> dict[str, Any]:
    """Average FSC curves over several pairs of volumes and apply both criteria to the mean curve.

    Parameters
    ----------
    pairs : iterable of (a, b)
        Volume pairs (e.g. 5 random pairs of the 12 PWF tomograms, or 5 random 6/6 splits).

    Returns
    -------
    dict: ``frequency_per_m``, ``fsc`` (mean), ``fsc_std`` (over pairs), ``n_pairs``, ``resolution_m``,
    ``resolution_m_1_7`` (None where the curve never crosses), ``nyquist_resolution_m``.
    """
    curves = []
    freq = None
    for a, b in pairs:
        r = fsc(a, b, voxel_size_m=voxel_size_m, crop=crop)
        freq = r["frequency_per_m"]
        curves.append(r["fsc"])
    if not curves:
        raise InputError("fsc_average: no pair given")
    cs = np.stack(curves)
    out: dict[str, Any] = {"frequency_per_m": freq, "fsc": cs.mean(axis=0), "fsc_std": cs.std(axis=0), "n_pairs": len(curves)}
    out.update(fsc_summary(out, voxel_size_m))
    return out


def _n_distinct(k: int, split: bool) -> int:
    """Number of distinct unordered pairs (or unordered half/half splits, odd volume left out) of k volumes."""
    if not split:
        return k * (k - 1) // 2
    h = k // 2
    # choose the two halves (and, for odd k, the one left out), unordered: k! / (h! h! (k - 2h)!) / 2
    return math.factorial(k) // (math.factorial(h) ** 2 * math.factorial(k - 2 * h)) // 2


def random_pairs(k: int, n_pairs: int = 5, *, split: bool = False, seed: int = 0) -> list:
    """Draw *n_pairs* **distinct** random pairs (or half/half splits) of ``k`` volume indices.

    Seed 000 (Methods, "Fourier shell correlation"): "Five FSC are calculated from different pairs of
    tomograms and averaged" (PWF, K = 12) and, for LCS, "from different random splits" of the K measurements
    into two sets of K/2. "Different" is honoured: no pair (unordered) or split (unordered halves) repeats.

    Returns
    -------
    list of ``(i, j)`` (plain ints) or, with ``split=True``, of ``(half_a, half_b)`` sorted index tuples.
    """
    k, n_pairs = int(k), int(n_pairs)
    if k < 2:
        raise InputError("fsc_random_pairs: need at least two volumes")
    if n_pairs < 1:
        raise ParameterError(f"fsc_random_pairs: n_pairs must be >= 1, got {n_pairs}")
    avail = _n_distinct(k, split)
    if n_pairs > avail:
        what = "half/half splits" if split else "pairs"
        raise ParameterError(
            f"fsc_random_pairs: {k} volumes give only {avail} distinct {what}; use n_pairs <= {avail}"
        )
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n_pairs:  # rejection of repeats; n_pairs <= avail, so this ends
        perm = [int(i) for i in rng.permutation(k)]
        h = k // 2
        a, b = (tuple(sorted(perm[:h])), tuple(sorted(perm[h : 2 * h]))) if split else (perm[0], perm[1])
        key = frozenset((a, b))  # unordered: (a, b) and (b, a) are the same pair / split
        if key not in seen:
            seen.add(key)
            out.append((a, b))
    return out


def fsc_random_pairs(
    volumes, *, n_pairs: int = 5, split: bool = False, seed: int = 0, voxel_size_m: float = 1.0, crop=None
):
    """FSC averaged over distinct random pairs (or random half/half splits) of K independent volumes.

    Parameters
    ----------
    volumes : sequence of arrays (Z, Y, X)
        K reconstructions, e.g. one per diffuser position (K = 12 in seed 000).
    n_pairs : int
        Number of distinct random pairs / splits (5 in seed 000, Methods); see :func:`random_pairs`.
    split : bool
        False: FSC between two distinct volumes drawn at random (PWF protocol). True: split the K volumes at
        random into two halves and compare the half *means* (LCS protocol, 6/6). FBP is linear, so the mean of
        per-measurement tomograms equals the tomogram of the mean data; for a nonlinear retrieval pass the
        per-half reconstructions instead (split=False with two volumes).
    seed : int

    Returns
    -------
    dict as :func:`fsc_average`, plus ``pairs`` (the indices used, JSON-able).
    """
    k = len(volumes)
    draws = random_pairs(k, n_pairs, split=split, seed=seed)

    def gen():
        for a, b in draws:
            if split:
                yield (sum(volumes[i] for i in a) / len(a), sum(volumes[i] for i in b) / len(b))
            else:
                yield volumes[a], volumes[b]

    out = fsc_average(gen(), voxel_size_m=voxel_size_m, crop=crop)
    out["pairs"] = [[list(a), list(b)] if split else [a, b] for a, b in draws]
    return out


def _jsonable_result(r: dict[str, Any], vs: float, dataset: str, shape) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in r.items() if k not in ("frequency_per_m", "fsc", "fsc_std", "n_voxels")}
    out.update(voxel_size_m=float(vs), dataset=dataset, shape=[int(x) for x in shape])
    curve = {"frequency_per_m": [float(x) for x in r["frequency_per_m"]], "fsc": [float(x) for x in r["fsc"]]}
    for k in ("fsc_std", "n_voxels"):
        if k in r:
            curve[k] = [float(x) for x in r[k]]
    out["curve"] = curve
    return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in out.items()}


def fsc_files_random_pairs(
    paths: Sequence[str | os.PathLike], *, dataset: str = "delta", n_pairs: int = 5, split: bool = False,
    seed: int = 0, crop=None,
) -> dict[str, Any]:
    """:func:`fsc_random_pairs` over K volume files (e.g. 12 single-position PWF tomograms); JSON-able dict.

    Only the central ``crop`` box of each file is read. Keys as :func:`fsc_files`, plus ``n_pairs`` and
    ``curve["fsc_std"]``.
    """
    from xspeckle.io.results import open_volume

    vols, vs, shape = [], None, None
    for pth in paths:
        with open_volume(pth) as v:
            if shape is not None and v.shape != shape:
                raise InputError(f"fsc: {v.path} is {v.shape}, the first volume is {shape}; the volumes must match")
            if vs is not None and not np.isclose(v.voxel_size_m, vs, rtol=1e-6):
                raise InputError(f"fsc: {v.path} has voxel size {v.voxel_size_m:g} m, the first has {vs:g} m")
            shape, vs = v.shape, v.voxel_size_m
            vols.append(np.asarray(v.dataset(dataset)[central_crop(v.shape, crop)], dtype=np.float32))
    r = fsc_random_pairs(vols, n_pairs=n_pairs, split=split, seed=seed, voxel_size_m=vs)
    return _jsonable_result(r, vs, dataset, vols[0].shape)


def fsc_files(
    path_a: str | os.PathLike, path_b: str | os.PathLike, *, dataset: str = "delta", crop=None
) -> dict[str, Any]:
    """FSC between the same dataset of two volume files; a JSON-serialisable dict (``xspeckle fsc --json``).

    Parameters
    ----------
    path_a, path_b : path-like
        Volume files (``/volume/<dataset>``, ``voxel_size_m`` on ``/volume``).
    dataset : str
        ``delta``, ``beta`` or ``diffusion``.
    crop : int or tuple, optional
        Central box read from each file (only that part is read).

    Returns
    -------
    dict with ``resolution_m`` (1/4 criterion), ``resolution_m_1_7``, ``crossing_per_m``, ``crossing_per_m_1_7``,
    ``nyquist_resolution_m``, ``voxel_size_m``, ``dataset``, ``shape`` and ``curve`` =
    ``{"frequency_per_m": [...], "fsc": [...], "n_voxels": [...]}`` (plain floats; None where no crossing).
    """
    from xspeckle.io.results import open_volume

    with open_volume(path_a) as va, open_volume(path_b) as vb:
        if va.shape != vb.shape:
            raise InputError(f"fsc: {va.path} is {va.shape} but {vb.path} is {vb.shape}; the volumes must match")
        if not np.isclose(va.voxel_size_m, vb.voxel_size_m, rtol=1e-6):
            raise InputError(
                f"fsc: voxel sizes differ ({va.voxel_size_m:g} m vs {vb.voxel_size_m:g} m); compare like with like"
            )
        sl = central_crop(va.shape, crop)
        a = np.asarray(va.dataset(dataset)[sl], dtype=np.float32)
        b = np.asarray(vb.dataset(dataset)[sl], dtype=np.float32)
        vs = va.voxel_size_m
    r = fsc(a, b, voxel_size_m=vs)
    r.update(fsc_summary(r, vs))
    r.pop("frequency_per_px")
    return _jsonable_result(r, vs, dataset, a.shape)
