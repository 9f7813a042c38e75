"""The picture of any visual file: an image, a page of a PDF, a frame of a video.

``thumbnails`` reads its source through :func:`decode_visual`, which tells
the kind of file from its bytes (never its name) and hands back an upright
:class:`workers.images.Source` in L, LA, RGB or RGBA, as for an image:

- **images** as :func:`workers.images.decode` reads them;
- **PDFs** through pypdfium2 (PDFium, bundled in its wheel): the page asked
  for (the first by default) rendered so its longest side is the largest
  thumbnail asked for, and never more pixels than ``render_pixels`` (smaller,
  not refused); a PDF of more than ``pdf_pages`` pages, an encrypted or a
  damaged one fails;
- **videos** through PyAV (FFmpeg's libraries, bundled in its wheel): the
  frame at the time asked for, by default a tenth of the way in (the first
  frame is often black). The stream's frame size is checked against
  ``video_pixels`` before anything is decoded, and each decoded frame's too.

The bounds are :class:`workers.media_limits.MediaLimits`. Blocking, and fed
hostile bytes: callers run it in a decoder process (:mod:`workers.decoders`).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Final

from PIL import Image

from core.content import HEAD_BYTES, sniff
from workers.errors import JobFailed
from workers.images import Source, decode
from workers.media_limits import MediaLimits

if TYPE_CHECKING:
    import av

# PyAV and PDFium are imported where a decoder uses them, not with this module: every
# process that registers the job kinds imports it (the API, a worker; ~90 ms of CPU for
# both libraries), and decoding runs in decoder processes, warmed by workers.decoders.

PDF: Final = "application/pdf"
# A video's default frame: this share of the way in.
DEFAULT_VIDEO_POSITION: Final = 0.1
# The longest side of a rendered PDF page when no thumbnail size bounds it.
DEFAULT_PAGE_SIDE: Final = 2048
# Frames decoded past the seek point before giving up on reaching the time.
MAX_FRAMES_AFTER_SEEK: Final = 600


def is_visual_document(content_type: str) -> bool:
    """Whether a file of ``content_type`` is a PDF or a video (thumbnails can be made of it)."""
    return content_type == PDF or content_type.startswith("video/")


def decode_visual(
    path: Path,
    name: str,
    limits: MediaLimits,
    *,
    fit: int | None = None,
    page: int | None = None,
    at_seconds: float | None = None,
) -> Source:
    """The picture of the file at ``path`` (shown to the user as ``name``).

    ``fit``: the longest side the caller needs (a PDF page is rendered at it,
    a JPEG may decode at reduced scale). ``page`` (from 1) for a PDF,
    ``at_seconds`` for a video; each is refused for other kinds of file.
    """
    with path.open("rb") as handle:
        kind = sniff(handle.read(HEAD_BYTES))
    if kind == PDF:
        if at_seconds is not None:
            raise JobFailed(f"{name!r} is a PDF: choose a page, not a time.")
        return _pdf_page(path, name, limits, fit or DEFAULT_PAGE_SIDE, page or 1)
    if kind.startswith("video/"):
        if page is not None:
            raise JobFailed(f"{name!r} is a video: choose a time, not a page.")
        return _video_frame(path, name, limits, at_seconds)
    if page is not None or at_seconds is not None:
        raise JobFailed(f"{name!r} is neither a PDF nor a video: it has no page or time.")
    return decode(path, name, limits.image_pixels, fit=fit)


def _pdf_page(path: Path, name: str, limits: MediaLimits, side: int, number: int) -> Source:
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        raise JobFailed(f"{name!r} is not a PDF Depot can read: {exc}.") from None
    try:
        count = len(document)
        if excess := limits.pages(name, count):
            raise JobFailed(excess)
        if not 1 <= number <= count:
            raise JobFailed(f"{name!r} has {count} page(s); there is no page {number}.")
        pdf_page = document[number - 1]
        try:
            width, height = pdf_page.get_size()  # in points, rotation applied
            if width <= 0 or height <= 0:
                raise JobFailed(f"Page {number} of {name!r} has no area.")
            scale = side / max(width, height)
            pixels = width * scale * height * scale
            if pixels > limits.render_pixels:
                scale *= (limits.render_pixels / pixels) ** 0.5
            image = pdf_page.render(scale=scale).to_pil()
        finally:
            pdf_page.close()
    finally:
        document.close()
    rgb = image.convert("RGB")
    return Source(image=rgb, format="PDF", width=rgb.width, height=rgb.height, icc_profile=None)


def _video_frame(path: Path, name: str, limits: MediaLimits, at_seconds: float | None) -> Source:
    import av
    import av.error

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise JobFailed(f"{name!r} has no video stream to take a picture of.")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if excess := limits.frame(name, width, height):
                raise JobFailed(excess)
            duration = _duration(container, stream)
            if at_seconds is not None and duration is not None and at_seconds > duration:
                raise JobFailed(
                    f"{name!r} lasts {duration:.3g} s; there is nothing at {at_seconds} s."
                )
            at = at_seconds if at_seconds is not None else (duration or 0) * DEFAULT_VIDEO_POSITION
            image = _frame_at(container, stream, at, name, limits)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        if isinstance(exc, MemoryError):  # FFmpeg's ENOMEM: the decoder's memory limit
            raise
        raise JobFailed(f"{name!r} is not a video Depot can read: {exc}.") from None
    if image is None:
        raise JobFailed(f"{name!r} has no frame Depot could decode.")
    rgb = image.convert("RGB")
    return Source(image=rgb, format="VIDEO", width=rgb.width, height=rgb.height, icc_profile=None)


def _duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    import av

    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _frame_at(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    at: float,
    name: str,
    limits: MediaLimits,
) -> Image.Image | None:
    """The first frame shown at or after ``at`` seconds (the last one, if the video ends first)."""
    if at > 0 and stream.time_base is not None:
        # To the keyframe at or before ``at``; decoding goes on from there.
        container.seek(int(Fraction(at) / stream.time_base), stream=stream, backward=True)
    last: av.VideoFrame | None = None
    for decoded, frame in enumerate(container.decode(stream)):
        if excess := limits.frame(name, frame.width, frame.height):
            raise JobFailed(excess)
        last = frame
        if frame.time is None or frame.time >= at - 1e-6 or decoded >= MAX_FRAMES_AFTER_SEEK:
            break
    return last.to_image() if last is not None else None  # type: ignore[no-untyped-call]
