"""Atomic file output: write under a temporary name in the same folder, then rename.

A crash, Ctrl-C or full disk never leaves a half-written file under the final name,
and an existing file is never clobbered unless ``overwrite=True``.

Symbolic links (one rule, ``docs/reliability.md``): an output name that is a symbolic
link, dangling or not, counts as an existing file.  Without ``overwrite`` it is refused;
with ``overwrite`` the file the link points to is replaced (atomically, by a rename in
the target's folder) and the link itself is kept.

The output folder is tested by creating (and removing) a probe file in it, so an
unwritable location (read-only mount, ``/proc``, no permission) is reported before any
computation, not after it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from xspeckle.errors import OutputError

__all__ = ["atomic_path", "check_output_path"]


def _probe_folder(p: Path, parent: Path) -> None:
    """Create and remove a file in *parent*; raise OutputError when that is impossible."""
    probe = parent / f".{p.name}.probe{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:  # a stale probe of a killed run with our pid: the folder is writable
        return
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"{p}: disk full in folder {parent}; free space first") from None
        raise OutputError(f"{p}: cannot create files in folder {parent} ({exc.strerror or exc}); "
                          "choose another output folder") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Validate an output path before any work and return the path to write.

    Parameters
    ----------
    path : path-like
        The output name the user gave.
    overwrite : bool
        Allow replacing an existing file (or the target of a symbolic link).

    Returns
    -------
    Path
        *path*, or, when it is a symbolic link, the file the link points to (the link is kept).

    Raises
    ------
    OutputError
        The output exists (or is a link) without *overwrite*, is a folder, its folder is
        missing, or nothing can be created in its folder.
    """
    p = Path(path)
    if p.is_symlink():
        target = Path(os.path.realpath(p))
        if not overwrite:
            state = "" if target.exists() else " (dangling)"
            raise OutputError(f"{p}: output is a symbolic link{state} to {target}; choose another name, or pass "
                              "--overwrite to replace the file it points to")
        if target.is_dir():
            raise OutputError(f"{p}: is a symbolic link to the folder {target}, expected a file name")
        p = target
    if p.exists() and not overwrite:
        raise OutputError(f"{p}: output file exists; choose another name or pass --overwrite")
    if p.exists() and p.is_dir():
        raise OutputError(f"{p}: is a directory, expected a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{p}: folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise OutputError(f"{p}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{p}: folder {parent} is not writable")
    _probe_folder(p, parent)
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
