"""Users' file paths: validated and normalised, never used to build a storage key."""

from __future__ import annotations

import unicodedata

from core.errors import BadUserInput
from core.text import has_invisible_controls

MAX_PATH_BYTES = 1024


def normalize_path(path: str, *, field: str = "path") -> str:
    """``path`` in NFC, ``/``-separated, without a leading or trailing ``/``.

    Refuses (``BAD_USER_INPUT`` naming ``field``) empty, ``.`` and ``..``
    segments, control characters (NUL included), bidirectional controls (a
    right-to-left override makes ``exe.pdf`` of ``fdp.exe`` in a listing, an
    archive entry or a download's name) and more than 1,024 UTF-8 bytes.
    """
    path = unicodedata.normalize("NFC", path).strip("/")
    if not path:
        raise BadUserInput("A path needs at least one name.", field=field)
    if len(path.encode()) > MAX_PATH_BYTES:
        raise BadUserInput(f"A path may have at most {MAX_PATH_BYTES} bytes.", field=field)
    if has_invisible_controls(path):
        raise BadUserInput(
            "A path may not contain control characters or bidirectional controls.", field=field
        )
    if "\\" in path:
        raise BadUserInput("Separate path segments with `/`, not `\\`.", field=field)
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise BadUserInput(
                f"A path may not have empty, `.` or `..` segments: {path!r}.", field=field
            )
        if segment != segment.strip():
            raise BadUserInput("Path segments may not begin or end with spaces.", field=field)
    return path


def file_name(path: str) -> str:
    """The last segment of a normalised path."""
    return path.rpartition("/")[2]
