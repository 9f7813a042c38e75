"""Media files made in the tests themselves: HEIC (pillow-heif), AVIF (Pillow), PDFs
(Pillow's PDF writer, one page per colour) and videos (PyAV: H.264 in MP4)."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import pillow_heif
from PIL import Image

RED, GREEN, BLUE, BLACK = (255, 0, 0), (0, 160, 0), (0, 0, 255), (0, 0, 0)


def heic(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", size, colour)).save(out, quality=90)
    return out.getvalue()


def avif(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "AVIF", quality=90)
    return out.getvalue()


def pdf(*colours: tuple[int, int, int], size: tuple[int, int] = (300, 400)) -> bytes:
    """A PDF with one page per colour, each ``size`` points at 72 dpi."""
    pages = [Image.new("RGB", size, colour) for colour in colours]
    out = io.BytesIO()
    pages[0].save(out, "PDF", resolution=72.0, save_all=True, append_images=pages[1:])
    return out.getvalue()


def video(path: Path, seconds: int = 4, fps: int = 10, size: tuple[int, int] = (160, 120)) -> bytes:
    """An H.264 MP4: black for the first second, then red, green, blue… a second each."""
    colours = [BLACK, RED, GREEN, BLUE]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for index in range(seconds * fps):
            colour = colours[(index // fps) % len(colours)]
            frame = av.VideoFrame.from_image(Image.new("RGB", size, colour))
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()
