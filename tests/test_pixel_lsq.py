"""retrieve/pixel_lsq.py: the per-pixel least squares shared by MIST and LCS.

Its two storage forms (MIST's equilibrated, packed :class:`PixelLSQ`; LCS's full-inverse
:func:`normal_inverse` / :func:`solve_normal`) solve the same regularised problem
``min_x Σ_n (b_n − Σ_j A[j, n] x_j)² + Σ_j λ_j x_j²`` with ``λ_j = α·mean over pixels of (AᵀA)_jj``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xspeckle.retrieve.derivatives import gradient, laplacian
from xspeckle.retrieve.pixel_lsq import PixelLSQ, normal_inverse, solve_normal


def _columns(q: int, p: int = 7, h: int = 20, w: int = 24):
    rng = np.random.default_rng(5)
    ref = np.stack([ndimage.gaussian_filter(rng.random((h, w)), 1.2) for _ in range(p)]).astype(np.float32)
    ref = ref / ref.mean()
    gy, gx = gradient(ref, 1.0)
    cols = [ref, -laplacian(ref, 1.0), gx, gy][:q]
    b = (0.1 * ref + 0.02 * rng.standard_normal(ref.shape)).astype(np.float32)  # a right-hand side
    return cols, b


@pytest.mark.parametrize("q", [2, 3, 4])
@pytest.mark.parametrize("alpha", [1e-3, 1e-6])
@pytest.mark.parametrize("numba", [True, False])
def test_both_forms_solve_the_same_problem(q, alpha, numba):
    """Same solution (float32 storage: agreement to 1e-4 of the largest |x_j|) and the same misfit ‖b − Ax‖²."""
    cols, b = _columns(q)
    p, h, w = b.shape
    lsq = PixelLSQ(cols, alpha, None)
    x1, res1 = lsq.solve_block(b, 0, h, b)
    A = np.ascontiguousarray(np.stack(cols))
    minv, lam = normal_inverse(A, alpha, numba=numba)
    x2, res2 = solve_normal(A, minv, lam, b, numba=numba)
    for j in range(q):
        scale = float(np.abs(x1[j]).max())
        np.testing.assert_allclose(x2[j], x1[j], rtol=0, atol=1e-4 * scale)
    # residual conventions: PixelLSQ relative to Σ b², solve_normal per position (/K)
    ms1 = res1.astype(np.float64) ** 2 * np.sum(b.astype(np.float64) ** 2, axis=0)
    ms2 = res2.astype(np.float64) ** 2 * p
    np.testing.assert_allclose(ms2, ms1, rtol=2e-3, atol=1e-6 * float(ms1.max()))
    # λ_j = α·mean diag(AᵀA) in both
    np.testing.assert_allclose(lam, [alpha * np.mean(np.sum(c.astype(np.float64) ** 2, axis=0)) for c in cols],
                               rtol=1e-5)
