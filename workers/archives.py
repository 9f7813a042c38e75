"""What makes an archive safe to unpack, checked on its index before one byte is written.

An archive is refused — with a message naming the problem and the entry —
when it has too many entries, unpacks to too many bytes (the configured
limit, the largest file Depot keeps, or the owner's free quota), compresses
suspiciously well (a zip bomb), or has an entry that could escape the target
folder or is not a plain file: absolute paths, drive letters, backslashes,
``..``, empty names, NUL and other control characters, symbolic and hard
links, devices and FIFOs, and two entries that land on the same path.

:class:`IndexCheck` takes the entries one by one, so a reader can stop at
the first bad one instead of first listing a million entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from core.errors import BadUserInput
from core.paths import normalize_path
from core.settings import Settings
from workers.errors import JobFailed

# An entry (or a whole compressed tar) that unpacks to less than this cannot
# be a bomb whatever its ratio: a small file of zeros compresses 1000:1.
RATIO_FLOOR_BYTES: Final = 1024 * 1024

_DRIVE = re.compile(r"^[A-Za-z]:")


class EntryType(Enum):
    """What an archive entry is; only files are unpacked, folders are skipped."""

    FILE = "a file"
    FOLDER = "a folder"
    SYMLINK = "a symbolic link"
    HARDLINK = "a hard link"
    SPECIAL = "a device, FIFO or socket"


@dataclass(frozen=True)
class Limits:
    """How much one extraction may unpack (from the settings and the owner's free quota)."""

    max_entries: int
    max_bytes: int
    max_ratio: int
    max_file_bytes: int
    free_quota: int

    @classmethod
    def of(cls, settings: Settings, free_quota: int) -> Limits:
        return cls(
            max_entries=settings.archive_max_entries,
            max_bytes=settings.archive_max_bytes,
            max_ratio=settings.archive_max_ratio,
            max_file_bytes=settings.max_upload_bytes,
            free_quota=max(free_quota, 0),
        )


def entry_path(raw: str, archive: str) -> str:
    """``raw``, an entry's name, as a relative Depot path; ``JobFailed`` if it is unsafe.

    ``.`` segments and doubled or trailing slashes (``./a//b/``, as ``tar -C dir .``
    writes them) are dropped; everything that could leave the target folder
    or confuse a path is refused.
    """
    if not raw:
        raise _unsafe(raw, archive, "has an empty name")
    if "\x00" in raw:
        raise _unsafe(raw, archive, "has a NUL character in its name")
    if "\\" in raw:
        raise _unsafe(raw, archive, "has a backslash in its name")
    if raw.startswith("/"):
        raise _unsafe(raw, archive, "has an absolute path")
    if _DRIVE.match(raw):
        raise _unsafe(raw, archive, "starts with a drive letter")
    segments = [segment for segment in raw.split("/") if segment not in ("", ".")]
    if ".." in segments:
        raise _unsafe(raw, archive, "has a `..` segment that could leave the target folder")
    if not segments:
        raise _unsafe(raw, archive, "has an empty name")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise _unsafe(raw, archive, "has a name that is not valid UTF-8") from None
    try:
        return normalize_path("/".join(segments))
    except BadUserInput as exc:
        raise _unsafe(raw, archive, f"has a name Depot cannot use ({exc.message})") from None


def _unsafe(raw: str, archive: str, problem: str) -> JobFailed:
    return JobFailed(f"Entry {raw!r} of {archive!r} {problem}; nothing was extracted.")


class IndexCheck:
    """Checks an archive's entries as they are listed, and the running totals.

    ``add`` raises ``JobFailed`` at the first entry that breaks a rule and
    returns the entry's safe path, or None for a folder. Totals only grow, so
    checking them at each entry stops a reader early: listing a tar.gz bomb
    decompresses no more than the limits allow.
    """

    def __init__(
        self, archive: str, archive_size: int, limits: Limits, *, compressed_whole: bool = False
    ) -> None:
        self.archive = archive
        self.archive_size = archive_size
        self.limits = limits
        # tar.gz and the like: only the total can be compared with the archive's size.
        self.compressed_whole = compressed_whole
        self.entries = 0
        self.total = 0
        self._paths: set[str] = set()

    def add(
        self, raw: str, entry_type: EntryType, size: int, compressed: int | None = None
    ) -> str | None:
        """Check one entry; ``compressed`` is its own compressed size when the format says."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise JobFailed(
                f"{self.archive!r} has more than {self.limits.max_entries} entries "
                "(DEPOT_ARCHIVE_MAX_ENTRIES); nothing was extracted."
            )
        path = entry_path(raw, self.archive)
        if entry_type is EntryType.FOLDER:
            return None
        if entry_type is not EntryType.FILE:
            raise _unsafe(raw, self.archive, f"is {entry_type.value}, which Depot does not extract")
        if path in self._paths:
            raise _unsafe(raw, self.archive, f"is the second entry at {path!r}")
        self._paths.add(path)
        if size < 0:
            raise _unsafe(raw, self.archive, "declares a negative size")
        if size > self.limits.max_file_bytes:
            raise _unsafe(
                raw,
                self.archive,
                f"unpacks to {size} bytes, more than the {self.limits.max_file_bytes} a file "
                "may have (DEPOT_MAX_UPLOAD_BYTES)",
            )
        if compressed is not None and _ratio_over(size, compressed, self.limits.max_ratio):
            raise _unsafe(
                raw,
                self.archive,
                f"is compressed {_ratio(size, compressed)}, more than the "
                f"{self.limits.max_ratio}:1 allowed (DEPOT_ARCHIVE_MAX_RATIO): a possible zip bomb",
            )
        self.total += size
        self._check_total()
        return path

    def _check_total(self) -> None:
        if self.compressed_whole and _ratio_over(
            self.total, self.archive_size, self.limits.max_ratio
        ):
            raise JobFailed(
                f"{self.archive!r} is compressed {_ratio(self.total, self.archive_size)}, more "
                f"than the {self.limits.max_ratio}:1 allowed (DEPOT_ARCHIVE_MAX_RATIO): a "
                "possible archive bomb; nothing was extracted."
            )
        if self.total > self.limits.max_bytes:
            raise JobFailed(
                f"{self.archive!r} unpacks to more than {self.limits.max_bytes} bytes "
                "(DEPOT_ARCHIVE_MAX_BYTES); nothing was extracted."
            )
        if self.total > self.limits.free_quota:
            raise JobFailed(
                f"{self.archive!r} unpacks to more than the {self.limits.free_quota} bytes left "
                "in your storage quota; nothing was extracted."
            )


def _ratio_over(size: int, compressed: int, most: int) -> bool:
    if size < RATIO_FLOOR_BYTES:
        return False
    return compressed <= 0 or size > compressed * most


def _ratio(size: int, compressed: int) -> str:
    return f"{size / compressed:.0f}:1" if compressed > 0 else "from nothing"
