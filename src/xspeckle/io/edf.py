"""EDF (ESRF Data Format) frames via fabio (optional extra ``xspeckle[edf]``).

Only reading is supported: :func:`read_edf` loads all frames of a file, and
:class:`EDFFile` reads them lazily one at a time.  EDF files can be listed in a TIFF
import sidecar (:mod:`xspeckle.io.tiff`) exactly like TIFFs: the reader is chosen by
the file extension.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xspeckle.errors import MethodUnavailableError, ScanFormatError

__all__ = ["EDFFile", "read_edf", "require_fabio"]


def require_fabio():
    """Import and return :mod:`fabio`, or raise :class:`MethodUnavailableError` saying how to install it."""
    try:
        import fabio
    except ImportError:
        raise MethodUnavailableError(
            "reading EDF files needs the fabio package; install it with: pip install 'xspeckle[edf]'"
        ) from None
    return fabio


class EDFFile:
    """Lazy access to the frames of one EDF file.

    Parameters
    ----------
    path : path-like

    Attributes
    ----------
    n_frames : int
    shape : (n_frames, H, W)
    """

    def __init__(self, path: str | os.PathLike):
        fabio = require_fabio()
        self.path = Path(path)
        if not self.path.is_file():
            raise ScanFormatError(f"{self.path}: no such file")
        try:
            self._img = fabio.open(str(self.path))
        except Exception as exc:  # fabio raises many types for bad files
            raise ScanFormatError(f"{self.path}: not a readable EDF file ({type(exc).__name__}: {exc})") from None
        first = np.asarray(self._img.data)
        if first.ndim != 2:
            raise ScanFormatError(f"{self.path}: EDF frame has shape {first.shape}; expected a 2-D image")
        self.n_frames = int(getattr(self._img, "nframes", 1) or 1)
        self.shape = (self.n_frames,) + first.shape
        self.dtype = first.dtype

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if not 0 <= i < self.n_frames:
            raise IndexError(i)
        try:
            if i == 0 or self.n_frames == 1:
                return np.asarray(self._img.data) if i == 0 else np.asarray(self._img.getframe(i).data)
            return np.asarray(self._img.getframe(i).data)
        except Exception as exc:
            raise ScanFormatError(f"{self.path}: cannot read EDF frame {i} ({exc})") from None

    def close(self) -> None:
        close = getattr(self._img, "close", None)
        if close is not None:
            close()


def read_edf(path: str | os.PathLike) -> np.ndarray:
    """Read every frame of an EDF file: ``(N, H, W)`` in the stored dtype."""
    f = EDFFile(path)
    try:
        return np.stack([f[i] for i in range(len(f))])
    finally:
        f.close()
