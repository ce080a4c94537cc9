"""File input/output: scan, retrieval and volume files (``interfaces.md``) and importers.

* :mod:`xspeckle.io.scan` — :class:`Scan` (lazy reader), :func:`write_scan`, :func:`save_scan`
* :mod:`xspeckle.io.results` — retrieval and volume files (whole arrays), readers
* :mod:`xspeckle.io.partial` — :class:`RetrievalWriter`, the resumable angle-by-angle writer
* :mod:`xspeckle.io.tiff` — TIFF/EDF/npy frame stacks + YAML/JSON sidecar -> scan
* :mod:`xspeckle.io.nexus` — NeXus NXtomo and DXchange readers
* :mod:`xspeckle.io.edf` — EDF frames via fabio (extra ``xspeckle[edf]``)
* :mod:`xspeckle.io.atomic` — atomic output (temporary name, then rename)
"""

from xspeckle.io.atomic import atomic_path, check_output_path
from xspeckle.io.nexus import detect_format, import_hdf5, open_any, read_dxchange, read_nxtomo
from xspeckle.io.partial import RetrievalWriter
from xspeckle.io.results import (
    Retrieval,
    Volume,
    open_retrieval,
    open_volume,
    write_retrieval,
    write_volume,
)
from xspeckle.io.scan import FrameScan, Scan, open_h5, open_scan, parse_positions, save_scan, write_scan
from xspeckle.io.tiff import import_sidecar, read_sidecar

__all__ = [
    "Scan", "FrameScan", "open_scan", "write_scan", "save_scan", "open_h5", "parse_positions",
    "write_retrieval", "write_volume", "open_retrieval", "open_volume", "Retrieval", "Volume", "RetrievalWriter",
    "read_sidecar", "import_sidecar", "read_nxtomo", "read_dxchange", "open_any", "detect_format", "import_hdf5",
    "atomic_path", "check_output_path",
]
