"""The one way fedpriv writes a file it must not lose: temporary file, fsync, rename, dir fsync.

A crash at any moment leaves the old file or the new one, never a torn one, and once the call
returns the new file survives a power loss (POSIX: the rename itself is persisted by fsyncing
the directory; skipped where the platform does not support it). Ledgers, DP-SGD plans, the
functional mechanism's release, checkpoints and every results file go through it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically", "write_with"]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_with(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Atomically create ``path`` with ``write(tmp)``, a function that writes a file at ``tmp``.

    For writers that want a path (``DataFrame.to_csv``, ``numpy.savez``): they write to a
    temporary file in the same directory, which is then fsynced and renamed over ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def write_atomically(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Atomically write ``data`` (text as UTF-8, or bytes) to ``path``."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    write_with(path, lambda tmp: tmp.write_bytes(raw))
