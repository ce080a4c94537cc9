"""Array back-end dispatch: one code path for NumPy (CPU) and CuPy (GPU).

Every numerical kernel in xspeckle takes arrays and asks :func:`get_xp` for their
module, then uses the FFT wrappers below, which call ``scipy.fft`` with worker threads
on the CPU and ``cupyx.scipy.fft`` (cuFFT, plan-cached) on the GPU.  Nothing here
imports CuPy unless a CuPy array or ``device="cuda"`` is actually used.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np
import scipy.fft as _sfft

from xspeckle.errors import MethodUnavailableError

__all__ = [
    "get_xp",
    "is_cupy",
    "asnumpy",
    "to_device",
    "fft_workers",
    "fft2",
    "ifft2",
    "rfft2",
    "irfft2",
    "fftn",
    "ifftn",
    "rfftn",
    "rfft",
    "irfft",
    "dctn",
    "idctn",
    "fftfreq",
    "rfftfreq",
    "cuda_available",
    "available_cores",
    "compile_kernels",
]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: default: transforms (and fused kernels) of fewer elements than this run on ONE thread.  Measured
#: (benchmarks/bench_threads.py, results/threads.md): on 2 cores a 64² complex64 FFT is 2.7x slower with 2
#: workers than with 1, 128² 1.8x, 256² 1.3x (thread hand-off costs more than the work; worse on a
#: loaded machine), while from 1024² up the threads pay.  2**18 = 512².
THREADING_MIN_ELEMENTS = 1 << 18


def fft_workers(size: int | None = None) -> int:
    """Number of CPU threads for ``scipy.fft`` and the fused numba kernels.

    Parameters
    ----------
    size : int, optional
        Elements of the array to transform.  Below :data:`THREADING_MIN_ELEMENTS` the default is 1
        (threads cost more than they save there, see the constant's note); ``None`` = a large array.

    Returns
    -------
    int ≥ 1: env ``XSPECKLE_FFT_WORKERS`` when set (always honoured; the pipeline sets it per worker
    process to its share of the cores), else all available cores, or 1 for small arrays.
    """
    env = os.environ.get("XSPECKLE_FFT_WORKERS")
    if env:
        return max(1, int(env))
    if size is not None and int(size) < THREADING_MIN_ELEMENTS:
        return 1
    return available_cores()


def is_cupy(x: Any) -> bool:
    """True when *x* is a CuPy array (checked without importing CuPy)."""
    return type(x).__module__.split(".")[0] == "cupy"


def get_xp(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if is_cupy(a):
            import cupy

            return cupy
    return np


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError, ...
        return False


def to_device(x: Any, device: str = "cpu") -> Any:
    """Move an array to ``"cpu"`` (NumPy) or ``"cuda"`` (CuPy)."""
    if device == "cpu":
        return asnumpy(x)
    if device == "cuda":
        if not cuda_available():
            raise MethodUnavailableError(
                "--device cuda needs CuPy and a CUDA GPU; install the extra with "
                "'pip install xspeckle[gpu]' or use --device cpu"
            )
        import cupy

        return cupy.asarray(x)
    raise MethodUnavailableError(f"unknown device {device!r}: use 'cpu' or 'cuda'")


def asnumpy(x: Any) -> np.ndarray:
    """Return a NumPy array (copies from the GPU when *x* is a CuPy array)."""
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


def _fftmod(x: Any):
    if is_cupy(x):
        import cupyx.scipy.fft as cufft

        return cufft, {}
    return _sfft, {"workers": fft_workers(getattr(x, "size", None))}


def fft2(x, axes=(-2, -1), overwrite_x: bool = False):
    """Forward 2-D complex FFT over *axes* (complex64 in, complex64 out)."""
    m, kw = _fftmod(x)
    return m.fft2(x, axes=axes, overwrite_x=overwrite_x, **kw)


def ifft2(x, axes=(-2, -1), overwrite_x: bool = False):
    """Inverse 2-D complex FFT over *axes*."""
    m, kw = _fftmod(x)
    return m.ifft2(x, axes=axes, overwrite_x=overwrite_x, **kw)


def rfft2(x, axes=(-2, -1)):
    """Forward 2-D real FFT (float32 in, complex64 out)."""
    m, kw = _fftmod(x)
    return m.rfft2(x, axes=axes, **kw)


def irfft2(x, s, axes=(-2, -1)):
    """Inverse of :func:`rfft2`; *s* is the real output shape over *axes*."""
    m, kw = _fftmod(x)
    return m.irfft2(x, s=s, axes=axes, **kw)


def fftn(x, axes=None, overwrite_x: bool = False):
    """N-D complex FFT."""
    m, kw = _fftmod(x)
    return m.fftn(x, axes=axes, overwrite_x=overwrite_x, **kw)


def ifftn(x, axes=None, overwrite_x: bool = False):
    """N-D inverse complex FFT."""
    m, kw = _fftmod(x)
    return m.ifftn(x, axes=axes, overwrite_x=overwrite_x, **kw)


def rfftn(x, axes=None):
    """N-D real FFT."""
    m, kw = _fftmod(x)
    return m.rfftn(x, axes=axes, **kw)


def rfft(x, n=None, axis: int = -1):
    """1-D real FFT along *axis*, zero-padded or cropped to *n* (float32 in, complex64 out)."""
    m, kw = _fftmod(x)
    return m.rfft(x, n=n, axis=axis, **kw)


def irfft(x, n=None, axis: int = -1):
    """Inverse of :func:`rfft`; *n* is the real output length along *axis*."""
    m, kw = _fftmod(x)
    return m.irfft(x, n=n, axis=axis, **kw)


def dctn(x, type: int = 2, axes=(-2, -1), norm: str = "ortho"):
    """N-D discrete cosine transform over *axes* (a mirror-padded FFT at a quarter of the cost)."""
    m, kw = _fftmod(x)
    return m.dctn(x, type=type, axes=axes, norm=norm, **kw)


def idctn(x, type: int = 2, axes=(-2, -1), norm: str = "ortho"):
    """Inverse of :func:`dctn`."""
    m, kw = _fftmod(x)
    return m.idctn(x, type=type, axes=axes, norm=norm, **kw)


def fftfreq(n: int, d: float = 1.0, xp: ModuleType = np, dtype=np.float32):
    """Sample frequencies (cycles per unit of *d*) as *dtype* on the module *xp*."""
    return xp.asarray(np.fft.fftfreq(n, d), dtype=dtype)


def rfftfreq(n: int, d: float = 1.0, xp: ModuleType = np, dtype=np.float32):
    """Sample frequencies of :func:`rfft2`'s last axis."""
    return xp.asarray(np.fft.rfftfreq(n, d), dtype=dtype)


def compile_kernels(funcs, options=None) -> dict:
    """Compile plain-Python kernels with numba (``nogil``, disk-cached where the cache is writable).

    Parameters
    ----------
    funcs : mapping name -> function
    options : callable(name) -> dict, optional
        Extra ``numba.njit`` options per kernel (e.g. ``fastmath``).

    Returns
    -------
    dict name -> compiled kernel; ``{}`` when numba is not installed (callers then use their NumPy twin).
    """
    try:
        import numba
    except ImportError:
        return {}
    out = {}
    for name, fn in dict(funcs).items():
        kw = {"nogil": True, **(options(name) if options is not None else {})}
        try:
            out[name] = numba.njit(cache=True, **kw)(fn)
        except RuntimeError:  # no writable cache location: compile without the disk cache
            out[name] = numba.njit(**kw)(fn)
    return out
