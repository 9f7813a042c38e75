"""Every bound on what a media decoder reads, and the one message for each.

A bound is checked twice, with the same words: when a job starts, on the
metadata the probe gave its file on arrival (:func:`known_excess`, so the
client gets ``BAD_USER_INPUT`` and no job is queued), and by the decoder as
it reads (``JobFailed``), for what the headers did not tell or told wrong —
a video whose timestamps lie about its length, a frame larger than its
stream said. Each message names the setting that raises the bound.

:class:`MediaLimits` holds plain values, so it travels to a decoder's own
process (:mod:`workers.decoders`) as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.models import File
from core.settings import Settings

PDF = "application/pdf"


@dataclass(frozen=True)
class MediaLimits:
    """The bounds of one decoder run, from the settings of the same names."""

    image_pixels: int  # DEPOT_IMAGE_MAX_PIXELS
    render_pixels: int  # DEPOT_MEDIA_MAX_RENDER_PIXELS: a PDF page is rendered smaller
    pdf_pages: int  # DEPOT_MEDIA_MAX_PDF_PAGES
    video_pixels: int  # DEPOT_MEDIA_MAX_VIDEO_PIXELS, of each frame
    seconds: float  # DEPOT_MEDIA_MAX_SECONDS, of what a transcode reads
    frames: int  # DEPOT_MEDIA_MAX_FRAMES, that a transcode decodes

    @classmethod
    def of(cls, settings: Settings) -> MediaLimits:
        return cls(
            image_pixels=settings.image_max_pixels,
            render_pixels=settings.media_max_render_pixels,
            pdf_pages=settings.media_max_pdf_pages,
            video_pixels=settings.media_max_video_pixels,
            seconds=settings.media_max_seconds,
            frames=settings.media_max_frames,
        )

    def image(self, name: str, width: int, height: int) -> str | None:
        if width * height <= self.image_pixels:
            return None
        return (
            f"{name!r} is {width}x{height} pixels, more than the {self.image_pixels} pixels an "
            "image may have (DEPOT_IMAGE_MAX_PIXELS)."
        )

    def pages(self, name: str, count: int) -> str | None:
        if count <= self.pdf_pages:
            return None
        return (
            f"{name!r} has {count} pages, more than the {self.pdf_pages} a PDF may have "
            "(DEPOT_MEDIA_MAX_PDF_PAGES)."
        )

    def frame(self, name: str, width: int, height: int) -> str | None:
        if width * height <= self.video_pixels:
            return None
        return (
            f"{name!r} is {width}x{height} pixels a frame, more than the {self.video_pixels} "
            "a video frame may have (DEPOT_MEDIA_MAX_VIDEO_PIXELS)."
        )

    def duration(self, name: str, seconds: float) -> str | None:
        if seconds <= self.seconds:
            return None
        return (
            f"{name!r} lasts {seconds:.0f} s or more, more than the {self.seconds:g} s a file "
            "may have to be transcoded (DEPOT_MEDIA_MAX_SECONDS)."
        )

    def frame_count(self, name: str, count: float) -> str | None:
        if count <= self.frames:
            return None
        return (
            f"{name!r} has {count:.0f} frames or more, more than the {self.frames} a transcode "
            "decodes (DEPOT_MEDIA_MAX_FRAMES)."
        )


def known_excess(file: File, limits: MediaLimits, *, timeline: bool = False) -> str | None:
    """Why ``file`` is beyond a bound, as far as its probed metadata shows; else None.

    ``timeline``: the work reads the whole of a video or sound (``transcode``),
    so its length and frame count matter too. Costs a few dict lookups.
    """
    meta: dict[str, Any] = file.meta or {}
    name, kind = file.path, file.content_type

    def number(key: str) -> float | None:
        value = meta.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    width, height = int(number("width") or 0), int(number("height") or 0)
    if kind.startswith("image/"):
        return limits.image(name, width, height)
    if kind == PDF and (count := number("pageCount")) is not None:
        return limits.pages(name, int(count))
    if not kind.startswith(("video/", "audio/")):
        return None
    if excess := limits.frame(name, width, height):
        return excess
    if not timeline or (seconds := number("duration")) is None:
        return None
    if excess := limits.duration(name, seconds):
        return excess
    rate = number("frameRate")
    return limits.frame_count(name, seconds * rate) if rate is not None else None
