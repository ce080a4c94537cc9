"""Exception classes of xspeckle.

Every error a *user* can cause (bad file, bad parameter, wrong units) derives from
:class:`InputError`.  The command line turns an :class:`InputError` into one line on
stderr and exit status 2; the Python API raises it unchanged, so notebooks see the
same message.  Anything else is a bug and is allowed to show a traceback.
"""

from __future__ import annotations

__all__ = [
    "XSpeckleError",
    "InputError",
    "GeometryError",
    "ScanFormatError",
    "OutputError",
    "MethodUnavailableError",
    "ParameterError",
]


class XSpeckleError(Exception):
    """Base class of every exception raised on purpose by xspeckle."""


class InputError(XSpeckleError, ValueError):
    """A user mistake: the message says what is wrong and how to fix it (exit status 2)."""


class GeometryError(InputError):
    """Implausible or missing geometry (energy, pixel size, distances)."""


class ScanFormatError(InputError):
    """A scan, retrieval or volume file that does not follow ``interfaces.md``."""


class OutputError(InputError):
    """The output path exists, is not writable, or the disk is full."""


class MethodUnavailableError(InputError):
    """The requested method (or optional back-end such as CuPy or Dask) is not available."""


class ParameterError(InputError):
    """A method parameter outside its valid range."""
