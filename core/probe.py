"""What a file is, from its headers: the ``metadata`` every upload gets on arrival.

As the bytes stream past on their way to storage, :class:`Sample` keeps the
first and the last :data:`SAMPLE_BYTES` of them (never the whole file: at
most twice that, whatever its size). :func:`probe` then reads that sample as
a sparse file, through the same libraries the jobs use, and answers only what
the headers say, without decoding a pixel or a frame:

- images: ``width``, ``height`` (as stored), ``orientation`` (EXIF, when not
  upright) and ``animated``;
- PDFs: ``pageCount``, ``pageWidth`` and ``pageHeight`` of the first page in
  points, ``encrypted``;
- video and audio: ``duration`` (seconds), ``width``, ``height``,
  ``videoCodec``, ``frameRate``, ``audioCodec``, ``bitRate``.

A file the probe cannot make sense of from its sample (another kind, damaged,
or one whose index lies in the middle of a large file) simply gets no such
fields. The libraries read hostile input here: they are given only the
sample, never asked to decode, and any error they raise means "nothing".
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Final

import pillow_heif
import structlog
from PIL import Image

logger = structlog.get_logger("depot.probe")

# How much of each end of a file is kept for the probe: image and video
# headers sit at the start, a PDF's cross-reference table and an MP4's index
# (when not "fast start") at the end.
SAMPLE_BYTES: Final = 1024 * 1024
PDF: Final = "application/pdf"
EXIF_ORIENTATION: Final = 0x0112

# The image formats Depot reads, here and in the jobs (workers.images). TIFF is
# left out on purpose: its many codecs are a large attack surface for little use.
IMAGE_FORMATS: Final = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "HEIF", "AVIF")
# HEIF/HEIC through pillow-heif, registered with Pillow once per process (its
# plugin registry is process-wide; registering only adds a format).
pillow_heif.register_heif_opener()


class Sample:
    """Wraps a byte stream, keeping its first and last ``keep`` bytes as they pass.

    The tail is a queue of the latest chunks: each chunk costs O(1), whatever
    the file's size.
    """

    def __init__(self, chunks: AsyncIterable[bytes], keep: int = SAMPLE_BYTES) -> None:
        self._chunks = chunks
        self._keep = keep
        self.head = bytearray()
        self._recent: deque[bytes] = deque()
        self._recent_bytes = 0
        self.size = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            if len(self.head) < self._keep:
                self.head += chunk[: self._keep - len(self.head)]
            self._recent.append(chunk)
            self._recent_bytes += len(chunk)
            while self._recent_bytes - len(self._recent[0]) >= self._keep:
                self._recent_bytes -= len(self._recent.popleft())
            self.size += len(chunk)
            yield chunk

    @classmethod
    def of_ends(cls, head: bytes, tail: bytes, size: int, keep: int = SAMPLE_BYTES) -> Sample:
        """The sample of a ``size``-byte file read back by its two ends, for bytes that
        did not pass in one stream (a resumable upload's, over many requests)."""
        sample = cls(_no_chunks(), keep)
        sample.head = bytearray(head[:keep])
        sample._recent = deque([tail[-keep:]])
        sample._recent_bytes = len(sample._recent[0])
        sample.size = size
        return sample

    @property
    def tail(self) -> bytes:
        """The last ``keep`` bytes (or fewer, for a smaller file)."""
        return b"".join(self._recent)[-self._keep :]


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing


class _Sparse(io.RawIOBase):
    """A read-only, seekable file of ``size`` bytes of which only the head and tail are known.

    Reading anywhere else raises ``OSError``: the library reading it gives up,
    and the probe answers nothing for that field.
    """

    def __init__(self, sample: Sample) -> None:
        self._head = bytes(sample.head)
        self._tail = sample.tail
        self._size = sample.size
        self._tail_start = self._size - len(self._tail)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        start = self._position
        end = min(start + len(buffer), self._size)
        if start >= end:
            return 0
        if end <= len(self._head):
            data = self._head[start:end]
        elif start >= self._tail_start:
            data = self._tail[start - self._tail_start : end - self._tail_start]
        elif start < len(self._head):
            data = self._head[start:]  # a short read up to what is known
        else:
            raise OSError("this part of the file was not kept for the probe")
        buffer[: len(data)] = data
        self._position = start + len(data)
        return len(data)


def probe(sample: Sample, content_type: str) -> dict[str, Any]:
    """The header fields for a file of ``content_type`` whose bytes went through ``sample``.

    Blocking (the libraries parse in C): run it in a worker thread.
    """
    reader = _probe_for(content_type)
    if reader is None or sample.size == 0:
        return {}
    try:
        found = reader(_Sparse(sample))
    except Exception as exc:  # noqa: BLE001 - hostile input: any failure means "nothing known"
        logger.debug("probe found nothing", content_type=content_type, reason=repr(exc))
        return {}
    return {key: value for key, value in found.items() if value is not None}


def _probe_for(content_type: str) -> Any:
    if content_type.startswith("image/"):
        return _image
    if content_type == PDF:
        return _pdf
    if content_type.startswith(("video/", "audio/")):
        return _media
    return None


def _image(file: _Sparse) -> dict[str, Any]:
    with Image.open(io.BufferedReader(file), formats=IMAGE_FORMATS) as image:
        width, height = image.size
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        return {
            "width": width,
            "height": height,
            "orientation": orientation if orientation != 1 else None,
            "animated": bool(getattr(image, "is_animated", False)),
        }


def _pdf(file: _Sparse) -> dict[str, Any]:
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(io.BufferedReader(file))
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            return {"encrypted": True}
        raise
    try:
        found: dict[str, Any] = {"pageCount": len(document), "encrypted": False}
        if len(document):
            # By index, never by loading the page: loading parses its whole content
            # stream, and a 2 KB file of nested forms takes minutes to parse.
            width, height = document.get_page_size(0)
            found["pageWidth"], found["pageHeight"] = round(width, 2), round(height, 2)
        return found
    finally:
        document.close()


def _media(file: _Sparse) -> dict[str, Any]:
    import av

    with av.open(io.BufferedReader(file), mode="r") as container:
        found: dict[str, Any] = {
            "duration": round(container.duration / av.time_base, 3) if container.duration else None,
            "bitRate": container.bit_rate or None,
        }
        if container.streams.video:
            video = container.streams.video[0]
            found["width"] = video.codec_context.width or None
            found["height"] = video.codec_context.height or None
            found["videoCodec"] = video.codec_context.codec.canonical_name
            rate = video.average_rate or video.guessed_rate
            found["frameRate"] = round(float(rate), 3) if rate else None
        if container.streams.audio:
            found["audioCodec"] = container.streams.audio[0].codec_context.codec.canonical_name
        return found
