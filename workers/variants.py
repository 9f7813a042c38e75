"""Image variants: a file's picture at a size, fitted, in a format (``File.imageUrl``).

The API renders a variant on its first request (``api/variants.py``) with
:func:`render`, in a decoder process (:mod:`workers.decoders`), a bounded
number at once, within ``DEPOT_VARIANT_RENDER_SECONDS``, and keeps it as a file
derived from its source; later requests are served from it. The picture is
what ``thumbnails`` reads (:func:`workers.visuals.decode_visual`): an image,
a PDF's first page, a video's poster frame, under the same limits.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from workers.images import EXTENSIONS, ImageFormat, encode
from workers.media_limits import MediaLimits
from workers.visuals import decode_visual


class ImageFit(enum.StrEnum):
    """How a picture meets the box `width` x `height`."""

    COVER = "cover"  # fills the box, cropped to it, centred
    CONTAIN = "contain"  # fits inside the box, whole, aspect kept
    FILL = "fill"  # stretched to the box


@dataclass(frozen=True)
class VariantSpec:
    """What a variant link asks for; a missing side follows the picture's aspect."""

    width: int | None
    height: int | None
    fit: ImageFit
    format: ImageFormat
    quality: int | None

    def claims(self) -> dict[str, str | int]:
        """What a variant link carries of this spec (:meth:`from_claims` reads it back)."""
        claims: dict[str, str | int] = {"fit": self.fit.value, "fmt": self.format.value}
        for name, value in (("w", self.width), ("h", self.height), ("q", self.quality)):
            if value is not None:
                claims[name] = value
        return claims

    @classmethod
    def from_claims(cls, claims: Mapping[str, object]) -> VariantSpec | None:
        """The spec a verified link carries; None if it is not one."""

        def number(name: str) -> int | None:
            value = claims.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        try:
            return cls(
                width=number("w"),
                height=number("h"),
                fit=ImageFit(str(claims.get("fit"))),
                format=ImageFormat(str(claims.get("fmt"))),
                quality=number("q"),
            )
        except ValueError:
            return None

    @property
    def name(self) -> str:
        """The variant's file name, unique for what it asks for: ``256x-contain-q80.webp``."""
        sides = f"{self.width or ''}x{self.height or ''}"
        quality = f"-q{self.quality}" if self.quality is not None else ""
        return f"{sides}-{self.fit}{quality}.{EXTENSIONS[self.format]}"


def render(
    source: Path, name: str, limits: MediaLimits, spec: VariantSpec, out: Path
) -> tuple[int, int]:
    """Write the variant of the file at ``source`` to ``out``; returns its size.

    Never enlarged: a box beyond the picture keeps its size. Runs in a decoder
    process (``workers.decoders``).
    """
    box = max(spec.width or 0, spec.height or 0)
    picture = decode_visual(source, name, limits, fit=box)
    image = fitted(picture.image, spec)
    encode(image, spec.format, out, quality=spec.quality, icc=picture.icc_profile)
    return image.size


def fitted(image: Image.Image, spec: VariantSpec) -> Image.Image:
    """``image`` in the box ``spec`` asks for, per its fit."""
    width, height = image.size
    box_width = spec.width or round(width * (spec.height or height) / height)
    box_height = spec.height or round(height * (spec.width or width) / width)
    # Never larger than the picture itself.
    scale = min(1.0, width / box_width, height / box_height)
    box = (max(1, round(box_width * scale)), max(1, round(box_height * scale)))
    if spec.fit is ImageFit.COVER:
        return ImageOps.fit(image, box, Image.Resampling.LANCZOS)
    if spec.fit is ImageFit.FILL:
        return image.resize(box, Image.Resampling.LANCZOS)
    return ImageOps.contain(image, box, Image.Resampling.LANCZOS)
