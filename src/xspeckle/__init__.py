"""xspeckle — speckle-based X-ray phase-contrast, dark-field and tomographic imaging.

Pipeline order: :mod:`xspeckle.io` → :mod:`xspeckle.preprocess` → :mod:`xspeckle.retrieve`
→ :mod:`xspeckle.tomo` → :mod:`xspeckle.analysis`; :mod:`xspeckle.simulate` makes
scans with known ground truth, :mod:`xspeckle.pipeline` runs whole scans, and
:mod:`xspeckle.api` mirrors the command line for notebooks (arrays in, arrays out).
"""

from xspeckle._version import __version__
from xspeckle.errors import InputError, XSpeckleError
from xspeckle.geometry import Geometry

__all__ = ["__version__", "Geometry", "InputError", "XSpeckleError", "Scan", "open_scan", "make_retriever", "api"]


def __getattr__(name):  # lazy: importing xspeckle stays cheap (no h5py/scipy until needed)
    if name in ("Scan", "open_scan"):
        from xspeckle.io import scan as _scan

        return getattr(_scan, name)
    if name == "make_retriever":
        from xspeckle.retrieve import make_retriever

        return make_retriever
    if name == "api":
        import importlib

        return importlib.import_module("xspeckle.api")
    raise AttributeError(f"module 'xspeckle' has no attribute {name!r}")
