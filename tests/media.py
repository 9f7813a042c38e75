"""Media files made in the tests themselves: HEIC (pillow-heif), AVIF (Pillow), PDFs
(Pillow's PDF writer, one page per colour; or written by hand, hostile) and videos
(PyAV: H.264 in MP4); and PNG headers claiming any size."""

from __future__ import annotations

import array
import io
import struct
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any

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


def nested_forms_pdf(levels: int, fanout: int = 10) -> bytes:
    """A one-page PDF of a few KB whose page fills itself ``fanout ** levels`` times.

    Each form XObject draws the one below it ``fanout`` times: PDF's
    "billion laughs". PDFium renders every fill (about 25 µs each at a
    thumbnail's size), so 7 levels take minutes: a decoder that must be cut off.
    """
    leaf = b"1 0 0 rg 0 0 300 400 re f"
    bodies = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 400] /Contents 4 0 R "
        b"/Resources << /XObject << /F %d 0 R >> >> >>" % (5 + levels),
        b"<< /Length 5 >>\nstream\n/F Do\nendstream",
        b"<< /Type /XObject /Subtype /Form /BBox [0 0 300 400] /Length %d >>\nstream\n" % len(leaf)
        + leaf
        + b"\nendstream",
    ]
    draw = b"/G Do " * fanout
    for level in range(1, levels + 1):
        bodies.append(
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 300 400] "
            b"/Resources << /XObject << /G %d 0 R >> >> /Length %d >>\nstream\n"
            % (4 + level, len(draw))
            + draw
            + b"\nendstream"
        )
    return _pdf_of(bodies)


def _pdf_of(bodies: list[bytes]) -> bytes:
    """A PDF of these objects (numbered from 1, the first the catalog), with its xref table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(bodies, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(bodies) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(bodies) + 1))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header for a ``width`` x ``height`` RGB image, over 100 bytes of pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(100)))
        + png_chunk(b"IEND", b"")
    )


AUDIO_RATE = 44100
AUDIO_FRAME = 1024


def video(
    path: Path,
    seconds: int = 4,
    fps: int = 10,
    size: tuple[int, int] = (160, 120),
    *,
    sound: bool = False,
    live: bool = False,
) -> bytes:
    """An H.264 MP4: black for the first second, then red, green, blue… a second each;
    with ``sound``, an AAC track of a 440 Hz square wave too. ``live``: Matroska
    written as a live stream instead, whose headers tell no duration."""
    colours = [BLACK, RED, GREEN, BLUE]
    options = {"live": "1"} if live else {}
    with av.open(
        str(path), "w", format="matroska" if live else "mp4", options=options
    ) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        audio = container.add_stream("aac", rate=AUDIO_RATE) if sound else None
        for index in range(seconds * fps):
            colour = colours[(index // fps) % len(colours)]
            frame = av.VideoFrame.from_image(Image.new("RGB", size, colour))
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            _square_wave(container, audio, seconds)
    return path.read_bytes()


def _square_wave(container: Any, audio: Any, seconds: int) -> None:
    period = AUDIO_RATE // 440
    samples = [8000 if (i // (period // 2)) % 2 else -8000 for i in range(AUDIO_FRAME)]
    data = array.array("h", samples).tobytes()
    # FFmpeg's AAC encoder takes planar floats.
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=AUDIO_RATE)
    for index in range(seconds * AUDIO_RATE // AUDIO_FRAME):
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_FRAME)
        frame.planes[0].update(data)
        frame.sample_rate = AUDIO_RATE
        frame.pts = index * AUDIO_FRAME
        frame.time_base = Fraction(1, AUDIO_RATE)
        for out in resampler.resample(frame):
            for packet in audio.encode(out):
                container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)
