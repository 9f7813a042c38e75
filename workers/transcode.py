"""``transcode``: a video or audio file re-encoded for the web, with progress and cancel.

| format | container | video | audio |
| --- | --- | --- | --- |
| ``MP4`` | MP4 | H.264 (libx264) | AAC (FFmpeg's encoder) |
| ``WEBM`` | WebM | VP9 (libvpx) | Opus (libopus) |
| ``MP3`` | MP3 | — | MP3 (LAME) |
| ``OPUS`` | Ogg | — | Opus |
| ``AAC`` | M4A | — | AAC |

Every encoder comes with PyAV's wheel (FFmpeg's libraries); nothing is
installed on the system. ``clips/a.mov`` to MP4 becomes ``clips/a.mp4`` (the
same path again: ``clips/a (transcoded).mp4``). ``maxHeight`` scales a video
down (never up), keeping its aspect; ``quality`` picks a preset. Progress
follows the source's timeline, and a cancel kills the encoder at its next
report (four a second). The work runs in a decoder process of its own
(:mod:`workers.decoders`) within ``DEPOT_MEDIA_TRANSCODE_SECONDS``. A source
longer than ``DEPOT_MEDIA_MAX_SECONDS``, of more frames than
``DEPOT_MEDIA_MAX_FRAMES`` or with frames of more than
``DEPOT_MEDIA_MAX_VIDEO_PIXELS`` is refused at start when its probed metadata
says so, and fails as soon as decoding shows it otherwise. The output
gets the probe's metadata (duration, size, codecs) as any upload does.
"""

from __future__ import annotations

import enum
import functools
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Final

from core.errors import BadUserInput
from core.models import File
from core.settings import Settings
from workers.context import JobContext
from workers.decoders import run_isolated
from workers.errors import JobFailed
from workers.images import chunks_of, ensure_paths_free, stem_of
from workers.kind import Kind
from workers.media_limits import MediaLimits, known_excess
from workers.params import Doc, FileId, load
from workers.scratch import scratch_directory


class MediaFormat(enum.StrEnum):
    """What a transcode writes."""

    MP4 = "mp4"
    WEBM = "webm"
    MP3 = "mp3"
    OPUS = "opus"
    AAC = "aac"


class MediaQuality(enum.StrEnum):
    """An encoding preset: smaller files, or better pictures and sound."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True)
class _Recipe:
    container: str
    extension: str
    video: str | None
    audio: str
    audio_rate: int


RECIPES: Final = {
    MediaFormat.MP4: _Recipe("mp4", "mp4", "libx264", "aac", 48000),
    MediaFormat.WEBM: _Recipe("webm", "webm", "libvpx-vp9", "libopus", 48000),
    MediaFormat.MP3: _Recipe("mp3", "mp3", None, "libmp3lame", 44100),
    MediaFormat.OPUS: _Recipe("ogg", "opus", None, "libopus", 48000),
    MediaFormat.AAC: _Recipe("ipod", "m4a", None, "aac", 48000),
}
# Constant-quality factors (lower is better) and audio bit rates per preset.
_X264_CRF: Final = {MediaQuality.LOW: 28, MediaQuality.MEDIUM: 23, MediaQuality.HIGH: 18}
_VP9_CRF: Final = {MediaQuality.LOW: 40, MediaQuality.MEDIUM: 33, MediaQuality.HIGH: 26}
_AUDIO_BITS: Final = {
    MediaQuality.LOW: 96_000,
    MediaQuality.MEDIUM: 128_000,
    MediaQuality.HIGH: 192_000,
}
MAX_HEIGHT: Final = 2160
# How often progress is reported while encoding, in seconds of wall time.
PROGRESS_EVERY_S: Final = 0.25


@dataclass(frozen=True)
class Params:
    """A video or audio file in another format."""

    file_id: FileId
    format: MediaFormat
    max_height: Annotated[
        int | None, Doc("Scale a video down to this height (never up). Default: its own.")
    ] = None
    quality: Annotated[MediaQuality, Doc("The encoding preset. Default: MEDIUM.")] = (
        MediaQuality.MEDIUM
    )


def check(params: Params, settings: Settings) -> Params:
    if params.max_height is not None:
        if RECIPES[params.format].video is None:
            raise BadUserInput("maxHeight applies to video formats only.", field="maxHeight")
        if not 16 <= params.max_height <= MAX_HEIGHT:
            raise BadUserInput(f"maxHeight is from 16 to {MAX_HEIGHT}.", field="maxHeight")
    return params


def output_path(source_path: str, media_format: MediaFormat) -> str:
    """``a/clip.mov`` → ``a/clip.mp4``; the same path again → ``a/clip (transcoded).mp4``."""
    stem, extension = stem_of(source_path), RECIPES[media_format].extension
    path = f"{stem}.{extension}"
    return f"{stem} (transcoded).{extension}" if path == source_path else path


async def run(ctx: JobContext) -> None:
    [file] = await ctx.inputs()
    params = load(Params, ctx.params)
    path = output_path(file.path, params.format)
    await ensure_paths_free(ctx, [path])
    await ctx.progress(0.0, f"Reading {file.name}")
    limits = MediaLimits.of(ctx.settings)
    with scratch_directory("transcode") as scratch:
        out = scratch / f"output.{RECIPES[params.format].extension}"
        async with ctx.spool(file) as spooled:
            # Each report is awaited here: a cancel raises JobCancelled and kills the encoder.
            await run_isolated(
                functools.partial(_transcode, spooled, out, file.path, params, limits),
                name=file.path,
                seconds=ctx.settings.media_transcode_seconds,
                setting="DEPOT_MEDIA_TRANSCODE_SECONDS",
                memory_mb=ctx.settings.media_memory_limit_mb,
                progress=ctx.progress,
            )
        await ctx.create_output(path, chunks_of(out), derived_from=file)
    await ctx.progress(1.0, f"Made {path}")


def check_file(params: Params, file: File, settings: Settings) -> None:
    if excess := known_excess(file, MediaLimits.of(settings), timeline=True):
        raise BadUserInput(excess, field="fileId")


def _transcode(
    source: Path, out: Path, name: str, params: Params, limits: MediaLimits, report: Any
) -> None:
    """Decode ``source`` and encode it into ``out``. Runs in a decoder process (hence
    PyAV imported here: the processes that only register this kind never load it)."""
    import av
    import av.error

    recipe = RECIPES[params.format]
    try:
        with av.open(str(source)) as inp:
            video_in = inp.streams.video[0] if inp.streams.video else None
            audio_in = inp.streams.audio[0] if inp.streams.audio else None
            duration = inp.duration / av.time_base if inp.duration else None
            if duration is not None and (excess := limits.duration(name, duration)):
                raise JobFailed(excess)
            if recipe.video is not None and video_in is None:
                raise JobFailed(f"{name!r} has no video to make a {params.format.name} of.")
            if recipe.video is None and audio_in is None:
                raise JobFailed(f"{name!r} has no sound to make a {params.format.name} of.")
            if video_in is not None and recipe.video is not None:
                width, height = video_in.codec_context.width, video_in.codec_context.height
                if excess := limits.frame(name, width, height):
                    raise JobFailed(excess)
            with av.open(str(out), "w", format=recipe.container) as output:
                _Encoder(inp, output, recipe, params, video_in, audio_in, duration, report).run(
                    name, limits
                )
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        if isinstance(exc, MemoryError):  # FFmpeg's ENOMEM: the decoder's memory limit
            raise
        raise JobFailed(f"{name!r} is not a video or sound file Depot can read: {exc}.") from None


class _Encoder:
    """One pass over the source's packets: decode, scale or resample, encode, mux."""

    def __init__(
        self,
        inp: Any,
        output: Any,
        recipe: _Recipe,
        params: Params,
        video_in: Any,
        audio_in: Any,
        duration: float | None,
        report: Any,
    ) -> None:
        self._inp, self._output, self._report = inp, output, report
        self._duration = duration
        self._video_in = video_in if recipe.video is not None else None
        self._audio_in = audio_in
        self._video_out: Any = None
        self._audio_out: Any = None
        self._frames = 0
        self._samples = 0
        self._last_report = 0.0
        if self._video_in is not None and recipe.video is not None:
            self._video_out = self._video_stream(recipe.video, params)
        if audio_in is not None:
            self._audio_out = output.add_stream(recipe.audio, rate=recipe.audio_rate)
            self._audio_out.bit_rate = _AUDIO_BITS[params.quality]
            self._audio_out.layout = "stereo"
            import av  # loaded already by _transcode, the only caller

            self._resampler = av.AudioResampler(
                format=self._audio_out.codec_context.codec.audio_formats[0].name,
                layout="stereo",
                rate=recipe.audio_rate,
            )

    def _video_stream(self, codec: str, params: Params) -> Any:
        source: Any = self._video_in
        width, height = source.codec_context.width, source.codec_context.height
        target = min(height, params.max_height or height)
        # Even sides: 4:2:0 chroma needs them.
        out_height = max(2, target - target % 2)
        out_width = max(2, round(width * out_height / height / 2) * 2)
        self._rate = Fraction(source.average_rate or source.guessed_rate or 30).limit_denominator(
            1001
        )
        stream = self._output.add_stream(codec, rate=self._rate)
        stream.width, stream.height, stream.pix_fmt = out_width, out_height, "yuv420p"
        stream.codec_context.time_base = 1 / self._rate
        if codec == "libx264":
            stream.options = {"crf": str(_X264_CRF[params.quality]), "preset": "veryfast"}
        else:
            stream.options = {
                "crf": str(_VP9_CRF[params.quality]),
                "b": "0",
                "deadline": "realtime",
                "cpu-used": "8",
                "row-mt": "1",
            }
        return stream

    def run(self, name: str, limits: MediaLimits) -> None:
        streams = [s for s in (self._video_in, self._audio_in) if s is not None]
        for packet in self._inp.demux(*streams):
            for frame in packet.decode():
                if packet.stream is self._video_in:
                    # What the headers said may be a lie: each frame is held to the bounds.
                    excess = limits.frame(name, frame.width, frame.height)
                    excess = excess or limits.frame_count(name, self._frames + 1)
                    if excess:
                        raise JobFailed(excess)
                    self._encode_video(frame)
                else:
                    self._encode_audio(frame)
                if excess := limits.duration(name, frame.time or 0.0):
                    raise JobFailed(excess)
                self._progress(frame)
        if self._video_out is not None:
            self._mux(self._video_out, self._video_out.encode(None))
        if self._audio_out is not None:
            for frame in self._resampler.resample(None):
                self._encode_resampled(frame)
            self._mux(self._audio_out, self._audio_out.encode(None))

    def _encode_video(self, frame: Any) -> None:
        out = self._video_out
        scaled = frame.reformat(width=out.width, height=out.height, format="yuv420p")
        scaled.pts, scaled.time_base = self._frames, 1 / self._rate
        self._frames += 1
        self._mux(out, out.encode(scaled))

    def _encode_audio(self, frame: Any) -> None:
        frame.pts = None
        for resampled in self._resampler.resample(frame):
            self._encode_resampled(resampled)

    def _encode_resampled(self, frame: Any) -> None:
        out = self._audio_out
        frame.pts, frame.time_base = self._samples, Fraction(1, out.rate)
        self._samples += frame.samples
        self._mux(out, out.encode(frame))

    def _mux(self, stream: Any, packets: Any) -> None:
        for packet in packets:
            packet.stream = stream
            self._output.mux(packet)

    def _progress(self, frame: Any) -> None:
        now = time.monotonic()
        if now - self._last_report < PROGRESS_EVERY_S:
            return
        self._last_report = now
        at = frame.time or 0.0
        fraction = min(at / self._duration, 0.99) if self._duration else 0.0
        self._report(fraction, f"Encoded {at:.1f} s")


KIND = Kind(
    name="transcode",
    params=Params,
    run=run,
    check=check,
    check_file=check_file,
    time_limit_seconds=3600,
    max_attempts=2,
    reads=("video/*", "audio/*"),
    makes=("video/*", "audio/*"),
    makes_one=True,
    weight=4.0,
)
