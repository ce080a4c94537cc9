"""backend.fft_workers: thread defaults by array size, env override."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from xspeckle import backend as B


def test_fft_workers_by_size(monkeypatch):
    monkeypatch.delenv("XSPECKLE_FFT_WORKERS", raising=False)
    monkeypatch.setattr(B, "available_cores", lambda: 8)
    assert B.fft_workers() == 8                                     # no size: a large array
    assert B.fft_workers(B.THREADING_MIN_ELEMENTS) == 8
    assert B.fft_workers(B.THREADING_MIN_ELEMENTS - 1) == 1         # small: one thread
    assert B.fft_workers(64 * 64) == 1
    monkeypatch.setenv("XSPECKLE_FFT_WORKERS", "3")                  # the env always wins
    assert B.fft_workers(64 * 64) == 3 and B.fft_workers() == 3


def test_wrappers_pass_the_size_dependent_worker_count(monkeypatch):
    monkeypatch.delenv("XSPECKLE_FFT_WORKERS", raising=False)
    monkeypatch.setattr(B, "available_cores", lambda: 4)
    seen = []
    real = sfft.fft2

    def spy(x, *a, workers=None, **k):
        seen.append(workers)
        return real(x, *a, workers=workers, **k)

    monkeypatch.setattr(B._sfft, "fft2", spy)
    B.fft2(np.zeros((16, 16), np.complex64))
    B.fft2(np.zeros((1, 512, 512), np.complex64))
    assert seen == [1, 4]
