"""What a file's bytes are (SHA-256 and content type, learnt as they stream past),
and the name it is downloaded under.

The content type comes from the bytes themselves (magic numbers, via
``filetype``), never from what the client claims: a claim is only a hint for
plain text, which has no magic number.
"""

from __future__ import annotations

import codecs
import hashlib
import re
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from urllib.parse import quote

import filetype

# filetype looks at no more than the first 261 bytes.
HEAD_BYTES = 261
OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain"
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f\"\\/]")


def sniff(head: bytes) -> str:
    """The content type of a file that starts with ``head``."""
    kind = filetype.guess(head)
    if kind is not None:
        return str(kind.mime)
    if not head:
        return OCTET_STREAM
    try:
        # Text if it decodes as UTF-8; a sample that fills the head may end
        # inside a multi-byte character, so it is not decoded as final.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < HEAD_BYTES)
    except UnicodeDecodeError:
        return OCTET_STREAM
    return OCTET_STREAM if b"\x00" in head else TEXT


class Fingerprint:
    """Wraps a byte stream, hashing it and keeping its head as it passes through.

    ``Fingerprint.tapped(chunks)`` leaves the hashing to whoever stores the bytes:
    give :meth:`tap` to ``Storage.put``, and local storage hashes each block in the
    thread trip that writes it, off the event loop. Reading :attr:`sha256` before
    every byte that passed was tapped is a bug, and raises.
    """

    def __init__(self, chunks: AsyncIterable[bytes], *, hash_here: bool = True) -> None:
        self._chunks = chunks
        self._sha256 = hashlib.sha256()
        self._hash_here = hash_here
        self._head = b""
        self._hashed = 0
        self.size = 0

    @classmethod
    def tapped(cls, chunks: AsyncIterable[bytes]) -> Fingerprint:
        """A fingerprint whose bytes are hashed by :meth:`tap`, not as they pass."""
        return cls(chunks, hash_here=False)

    def tap(self, parts: Sequence[bytes]) -> None:
        """Hash ``parts``, the next bytes in order (``storage.base.Tap``; any thread,
        one call at a time)."""
        for part in parts:
            self._sha256.update(part)
            self._hashed += len(part)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            if self._hash_here:
                self._sha256.update(chunk)
                self._hashed += len(chunk)
            if len(self._head) < HEAD_BYTES:
                self._head += chunk[: HEAD_BYTES - len(self._head)]
            self.size += len(chunk)
            yield chunk

    @property
    def sha256(self) -> str:
        if self._hashed != self.size:
            raise RuntimeError(
                f"{self.size} bytes passed but {self._hashed} were hashed: give "
                "Fingerprint.tapped's tap to Storage.put"
            )
        return self._sha256.hexdigest()

    @property
    def content_type(self) -> str:
        return sniff(self._head)


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII ``filename`` and the full name as RFC 5987 ``filename*``.

    Quotes, backslashes, path separators and control characters are dropped,
    so the name can neither break out of the header nor pick a directory.
    """
    safe = _HEADER_UNSAFE.sub("", unicodedata.normalize("NFC", name)).strip(" .") or "download"
    ascii_name = (
        unicodedata.normalize("NFKD", safe).encode("ascii", "ignore").decode().strip(" .")
        or "download"
    )
    encoded = quote(safe, safe="")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"
