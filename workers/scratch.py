"""Jobs' temporary directories, and the ones a killed worker left behind.

A job that needs files on disk (a spooled source, a decoder's outputs), and the
API rendering an image variant (``api.variants``), makes
them in a :func:`scratch_directory`, ``$TMPDIR/depot-job-<what>-<random>``,
removed when the block ends. A process that is SIGKILLed (or meets the OOM
killer) never reaches that end, and its directories, a source's copy among
them, would stay for good. So each process holds a lock (``flock``) on every
directory it is using: the kernel lets go of it when the process dies, however
it dies. :func:`remove_abandoned`, run when a worker starts, removes the
directories nobody holds: no live process's, whatever its pid or its host's
other workers.

    with scratch_directory("thumbnails") as scratch:
        ...  # scratch / "0.jpg"
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

PREFIX: Final = "depot-job-"
# A directory younger than this is left alone: made an instant ago, its maker may not
# hold its lock yet.
MIN_AGE_SECONDS: Final = 60.0


@contextlib.contextmanager
def scratch_directory(what: str) -> Iterator[Path]:
    """A new, empty directory for one job's files, locked by this process until the block
    ends; then removed with everything in it."""
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{what}-"))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)  # and with it the lock, once nothing is left to find


def remove_abandoned(directory: Path | None = None) -> int:
    """Remove the scratch directories in ``directory`` (default: ``$TMPDIR``) that no
    live process holds; how many. Blocking (a directory may hold a large file)."""
    root = directory or Path(tempfile.gettempdir())
    removed = 0
    for path in root.glob(f"{PREFIX}*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue  # not a directory, not ours to open, or gone meanwhile
        try:
            found = os.fstat(fd)
            if found.st_uid != os.getuid() or time.time() - found.st_mtime < MIN_AGE_SECONDS:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process is using it
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    return removed
