"""Media files made in the tests themselves: HEIC (pillow-heif), AVIF (Pillow), PDFs
(Pillow's PDF writer, one page per colour) and videos (PyAV: H.264 in MP4)."""

from __future__ import annotations

import array
import io
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


AUDIO_RATE = 44100
AUDIO_FRAME = 1024


def video(
    path: Path,
    seconds: int = 4,
    fps: int = 10,
    size: tuple[int, int] = (160, 120),
    *,
    sound: bool = False,
) -> bytes:
    """An H.264 MP4: black for the first second, then red, green, blue… a second each;
    with ``sound``, an AAC track of a 440 Hz square wave too."""
    colours = [BLACK, RED, GREEN, BLUE]
    with av.open(str(path), "w", format="mp4") as container:
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
