"""Temporary files a killed writer left behind, told apart from a live writer's by a file lock.

embedft writes outputs (triplet files, converted model caches) into a hidden temporary beside the
final path and renames it into place, so a crash never leaves half a file under the final name.
A ``kill -9`` still leaves the temporary itself, up to a gigabyte for a converted model. So a
writer holds an exclusive ``flock`` for as long as its temporary exists: on the temporary itself
(``locked_temp_file``) or on a lock file it already holds (the model cache's ``.<name>.lock``).
The kernel drops the lock when the process dies, however it dies. A later run calls
``remove_if_abandoned`` on the temporaries it finds: one whose lock it can take was abandoned and
is removed; one whose lock is held belongs to a run going on right now and is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def flocked(path: Path, *, wait: bool = True, create: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (a file, created if missing, or a directory).

    Yields True once held; with ``wait=False`` yields False at once if another process (or
    another open of the file in this one) holds it.
    """
    flags = os.O_RDONLY | (os.O_CREAT if create and not path.is_dir() else 0)
    fd = os.open(path, flags, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_if_abandoned(temp: Path, lock: Path | None = None) -> bool:
    """Remove ``temp`` (a file or a directory) unless a live process holds ``lock``.

    ``lock`` defaults to ``temp`` itself (see ``locked_temp_file``). Returns whether it was removed.
    """
    try:
        with flocked(lock or temp, wait=False, create=lock is not None) as free:
            if not free:
                return False
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)
            return True
    except FileNotFoundError:  # removed by another run between the check and the lock
        return False


@contextlib.contextmanager
def locked_temp_file(final: Path) -> Iterator[Path]:
    """A new empty file ``.<final name>.<random>.tmp`` beside ``final``, locked during the block.

    Rename it onto ``final`` inside the block; whatever is left under its name at the end (an
    error, or no rename) is removed. ``remove_abandoned_temp_files(final)`` removes a killed
    writer's.
    """
    while True:
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(name))
        except FileNotFoundError:
            same = False
        if same:  # else another run took it for abandoned before the lock: make another
            break
        os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)


def remove_abandoned_temp_files(final: Path) -> list[Path]:
    """Remove the ``locked_temp_file`` temporaries of ``final`` whose writers are gone."""
    pattern = f".{glob.escape(final.name)}.*.tmp"
    return [p for p in final.parent.glob(pattern) if remove_if_abandoned(p)]
