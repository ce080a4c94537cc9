"""xspeckle — speckle-based X-ray phase-contrast, dark-field and tomographic imaging.

Pipeline order: :mod:`xspeckle.io` → :mod:`xspeckle.preprocess` → :mod:`xspeckle.retrieve`
→ :mod:`xspeckle.tomo` → :mod:`xspeckle.analysis`; :mod:`xspeckle.simulate` makes
scans with known ground truth.
"""

from xspeckle._version import __version__
from xspeckle.errors import InputError, XSpeckleError
from xspeckle.geometry import Geometry

__all__ = ["__version__", "Geometry", "InputError", "XSpeckleError"]
