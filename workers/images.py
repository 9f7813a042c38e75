"""What the image kinds share: opening untrusted images safely, and encoding their outputs.

Opening, as ``thumbnails`` and ``convert`` do it (in a decoder process,
:mod:`workers.decoders`):

- only the formats in :data:`READ_FORMATS` are tried — PNG, JPEG, WebP, GIF,
  BMP, HEIF/HEIC (phone photos, through pillow-heif's bundled libheif) and
  AVIF (Pillow's own, bundled libavif). TIFF is left out on purpose: its
  many codecs (libtiff) are a large attack surface for little use in a web
  product;
- the header's width times height is checked against
  ``settings.image_max_pixels`` before a single pixel is decoded. Pillow's own
  decompression-bomb check (its process-wide ``MAX_IMAGE_PIXELS``, left as it
  is so one app's settings never leak into another's) stays an outer bound, and
  its warning is an error here too;
- anything that is not one of those formats, is truncated or corrupt, or is
  too large fails the job at once with :class:`JobFailed` (never retried);
- EXIF orientation is applied, and the pixels are brought to one of L, LA,
  RGB or RGBA (palettes, 1-bit, 16-bit grey and CMYK included), so resizing
  and encoding need not care where an image came from. Animated GIF and WebP
  images give their first frame.

Outputs are encoded to a temporary file (in the decoder process), then streamed
to storage in chunks by the job:
never a whole output in memory. They carry no EXIF (no location leaks into a
thumbnail), but keep the source's ICC colour profile.
"""

from __future__ import annotations

import enum
import struct
import warnings
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import anyio
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from core.files import first_taken_path, path_taken
from core.models import File
from core.probe import IMAGE_FORMATS
from workers.context import JobContext
from workers.errors import JobFailed


class ImageFormat(enum.StrEnum):
    """An image format jobs can write."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"
    AVIF = "avif"


# HEIF/HEIC among them: importing core.probe registers pillow-heif with Pillow.
READ_FORMATS: Final = IMAGE_FORMATS
# Pillow's name for each format an output can have.
WRITE_FORMATS: Final = {
    ImageFormat.PNG: "PNG",
    ImageFormat.JPEG: "JPEG",
    ImageFormat.WEBP: "WEBP",
    ImageFormat.AVIF: "AVIF",
}
EXTENSIONS: Final = {
    ImageFormat.PNG: "png",
    ImageFormat.JPEG: "jpg",
    ImageFormat.WEBP: "webp",
    ImageFormat.AVIF: "avif",
}
LOSSY: Final = (ImageFormat.JPEG, ImageFormat.WEBP, ImageFormat.AVIF)
# Sources whose own format no browser shows everywhere: photos, as JPEG.
_PHOTO_SOURCES: Final = ("HEIF", "PDF", "VIDEO")
# Lossy outputs without a quality asked for.
DEFAULT_QUALITY: Final = 85
STREAM_CHUNK: Final = 1024 * 1024

# What Pillow raises for bytes it cannot make sense of.
_UNREADABLE = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    zlib.error,
)
# Orientations that swap width and height (transposes and quarter turns).
_SWAPPING_ORIENTATIONS: Final = frozenset({5, 6, 7, 8})


@dataclass
class Source:
    """A decoded image, upright, in L, LA, RGB or RGBA.

    ``width`` and ``height`` are the full upright size; ``image`` may be
    smaller when a JPEG was decoded at reduced scale for small thumbnails.
    """

    image: Image.Image
    format: str  # Pillow's name, one of READ_FORMATS; or PDF, or VIDEO (workers.visuals)
    width: int
    height: int
    icc_profile: bytes | None


def default_format(source_format: str) -> ImageFormat:
    """The output format for ``source_format`` when none was asked for: itself; JPEG for
    a HEIC photo, a PDF page or a video frame; else PNG."""
    if source_format in _PHOTO_SOURCES:
        return ImageFormat.JPEG
    name = source_format.lower()
    return ImageFormat(name) if name in WRITE_FORMATS else ImageFormat.PNG


def stem_of(path: str) -> str:
    """``path`` without the extension of its last segment (``a/cat.jpg`` → ``a/cat``)."""
    folder, slash, name = path.rpartition("/")
    base, dot, _ = name.rpartition(".")
    # A leading dot names a hidden file (".cat"), not an extension.
    return f"{folder}{slash}{base if dot and base else name}"


def decode(path: Path, name: str, max_pixels: int, *, fit: int | None = None) -> Source:
    """Open and decode the image at ``path`` (shown to the user as ``name``).

    ``fit`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale as long as both sides
    stay at least that long: thumbnails of a large photo need no more.
    Blocking: run it in a worker thread.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=READ_FORMATS) as opened:
                return _decode(opened, name, max_pixels, fit)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise JobFailed(
            f"{name!r} is too large to decode safely (a possible decompression bomb)."
        ) from None
    except _UNREADABLE as exc:
        raise JobFailed(f"{name!r} is not an image Depot can read: {_reason(exc)}") from None


def _decode(opened: ImageFile.ImageFile, name: str, max_pixels: int, fit: int | None) -> Source:
    width, height = opened.size
    if width * height > max_pixels:
        raise JobFailed(
            f"{name!r} is {width}x{height} pixels, more than the {max_pixels} pixels an image "
            "may have (DEPOT_IMAGE_MAX_PIXELS)."
        )
    source_format = str(opened.format)
    icc_profile = opened.info.get("icc_profile")
    drafted = False
    if fit is not None and source_format == "JPEG":
        # A JPEG's EXIF comes before its pixels: the upright size is known now.
        if opened.getexif().get(ExifTags.Base.Orientation, 1) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        drafted = opened.draft(None, (fit, fit)) is not None
    opened.load()
    upright = ImageOps.exif_transpose(opened)
    if not drafted:
        width, height = upright.size
    return Source(
        image=_normalise_mode(upright),
        format=source_format,
        width=width,
        height=height,
        icc_profile=icc_profile if isinstance(icc_profile, bytes) else None,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "it is not a PNG, JPEG, WebP, GIF, BMP, HEIC or AVIF image."
    detail = str(exc).strip() or type(exc).__name__
    return f"it is damaged or truncated ({detail})."


def _normalise_mode(image: Image.Image) -> Image.Image:
    """``image`` in L, LA, RGB or RGBA: the modes resizing and every output format handle."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I"):
        # 16-bit grey: scale to 8 bits instead of clipping everything above 255 to white.
        return image.convert("I").point(lambda value: value / 256).convert("L")
    if image.has_transparency_data:
        return image.convert("RGBA")
    return image.convert("RGB")


def target_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """The size of a thumbnail whose longest side is ``longest``; never larger than the image."""
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resized(source: Source, size: tuple[int, int]) -> Image.Image:
    """The source's pixels at ``size``. Blocking: run it in a worker thread."""
    if source.image.size == size:
        return source.image
    return source.image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode(
    image: Image.Image,
    output_format: ImageFormat,
    out: Path,
    *,
    quality: int | None,
    icc: bytes | None,
) -> None:
    """Write ``image`` to ``out`` as ``output_format``. Blocking: run it in a worker thread."""
    image = _for_output(image, output_format)
    options: dict[str, object] = {}
    if icc is not None:
        options["icc_profile"] = icc
    if output_format in LOSSY:
        options["quality"] = quality if quality is not None else DEFAULT_QUALITY
    if output_format is ImageFormat.JPEG:
        options["optimize"] = True
    image.save(out, WRITE_FORMATS[output_format], **options)


def _for_output(image: Image.Image, output_format: ImageFormat) -> Image.Image:
    has_alpha = image.mode in ("LA", "RGBA")
    if output_format is ImageFormat.JPEG and has_alpha:
        # JPEG has no transparency: lay the image on white, as a browser shows it.
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.getchannel("A"))
        return background
    if output_format in (ImageFormat.WEBP, ImageFormat.AVIF) and image.mode in ("L", "LA"):
        return image.convert("RGBA" if has_alpha else "RGB")
    return image


async def chunks_of(path: Path) -> AsyncIterator[bytes]:
    """The bytes of the file at ``path``, in chunks, read off the event loop.

    A file of less than one chunk (a thumbnail, a variant) is opened, read and
    closed in one trip to a thread, not four (open, read, the read that finds
    its end, close): under load each trip waits for a core.
    """
    handle, chunk = await anyio.to_thread.run_sync(_open_and_read, path)
    if handle is None:
        if chunk:
            yield chunk
        return
    async with anyio.wrap_file(handle) as opened:
        while chunk:
            yield chunk
            chunk = await opened.read(STREAM_CHUNK)


def _open_and_read(path: Path) -> tuple[BinaryIO | None, bytes]:
    """The file's first chunk, and the file still open if there may be more."""
    handle = path.open("rb")
    try:
        chunk = handle.read(STREAM_CHUNK)
    except BaseException:
        handle.close()
        raise
    if len(chunk) < STREAM_CHUNK:  # a regular file reads short only at its end
        handle.close()
        return None, chunk
    return handle, chunk


async def ensure_paths_free(ctx: JobContext, paths: list[str]) -> None:
    """Fail the job before any work if an output's path is already taken.

    ``create_output`` checks again; this only spares decoding a large image
    for a job that cannot succeed.
    """
    async with ctx.sessionmaker() as db:
        taken = await first_taken_path(db, ctx.job.owner_id, paths)
    if taken is not None:
        raise JobFailed(path_taken(taken).message)


async def store(
    ctx: JobContext, out: Path, path: str, size: tuple[int, int], *, derived_from: File
) -> File:
    """Stream the picture a decoder encoded into ``out`` (in a scratch directory, removed
    with it) to ``path``, a derivative of the file ``derived_from`` of ``size`` pixels."""
    meta = {"width": size[0], "height": size[1]}
    return await ctx.create_output(path, chunks_of(out), meta=meta, derived_from=derived_from)
