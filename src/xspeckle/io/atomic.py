"""Atomic file output: write under a temporary name in the same folder, then rename.

A crash, Ctrl-C or full disk never leaves a half-written file under the final name,
and an existing file is never clobbered unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from xspeckle.errors import OutputError

__all__ = ["atomic_path", "check_output_path"]


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Validate an output path: parent exists and is writable; no clobbering."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputError(f"{p}: output file exists; choose another name or pass --overwrite")
    if p.exists() and p.is_dir():
        raise OutputError(f"{p}: is a directory, expected a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{p}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{p}: folder {parent} is not writable")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to *path*; rename it onto *path* on success.

    On any exception the temporary file is removed and the final name is untouched.
    """
    final = check_output_path(path, overwrite=overwrite)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"{final}: disk full while writing; free space and run again") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OutputError(f"{final}: cannot write ({exc.strerror})") from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
