"""``archive``: a zip of several files, written to storage as it is made.

The zip is never whole anywhere: each input is read from storage chunk by
chunk, compressed in a worker thread by :mod:`zipfile` into a sink that
cannot seek (so zipfile writes each entry's sizes and CRC in a data
descriptor after its bytes), and what the sink collected is handed on to
storage at once. The generator pulls one chunk at a time, so there is no
queue to fill and nothing to hang: an error or a cancellation on either side
simply stops it. At most a chunk and its compressed form are held at a time.

- The zip's path gets ``.zip`` appended unless it already ends in it.
- Entries are named after the inputs' names; when two names clash (ignoring
  case, as most desktops do) the later one becomes ``name (2).ext``, then
  ``(3)`` … — never a name another input already has.
- Content that is already compressed (most images, audio, video, archives)
  is stored; the rest is deflated at the default level.
- Entries of 2 GiB and more get ZIP64 headers; zipfile writes the ZIP64 end
  records itself when the entry count or the offsets need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import zipfile
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import IO, Annotated, Final

import anyio

from core.models import File
from core.settings import Settings
from workers import params
from workers.context import JobContext
from workers.errors import JobFailed
from workers.kind import Kind
from workers.params import Doc, FileId

MAX_FILES: Final = 1000
# zipfile itself switches at 1/1.05 of ZIP64_LIMIT; saying so outright is clearer.
FORCE_ZIP64_AT: Final = 2**31 - 2**26

_STORED_TYPES: Final = frozenset(
    {
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-7z-compressed",
        "application/x-rar-compressed",
        "application/vnd.rar",
        "application/zstd",
        "application/x-brotli",
        "application/epub+zip",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/vnd.oasis.opendocument.presentation",
    }
)
# Media types under image/, audio/ and video/ that are not compressed already.
_RAW_MEDIA: Final = frozenset(
    {
        "image/bmp",
        "image/svg+xml",
        "image/tiff",
        "image/x-icon",
        "image/vnd.adobe.photoshop",
        "audio/x-wav",
        "audio/wav",
        "audio/x-aiff",
    }
)


@dataclass(frozen=True)
class Params:
    """A zip of several files."""

    file_ids: list[FileId]
    path: Annotated[str, Doc("Where the zip goes.")]


def check(given: Params, settings: Settings) -> Params:
    params.distinct_files(given.file_ids, "fileIds", most=MAX_FILES)
    path = params.path(given.path, "path")
    if not path.lower().endswith(".zip"):
        # Normalised again: the suffix may take the path over its length limit.
        path = params.path(f"{path}.zip", "path")
    return dataclasses.replace(given, path=path)


def entry_names(names: list[str]) -> list[str]:
    """``names`` made unique (ignoring case): a later clash becomes ``name (2).ext``.

    >>> entry_names(["a.txt", "A.txt", "a (2).txt", "b"])
    ['a.txt', 'A (3).txt', 'a (2).txt', 'b']
    """
    wanted = {name.casefold() for name in names}
    taken: set[str] = set()
    unique = []
    for name in names:
        stem, dot, suffix = name.rpartition(".")
        if not stem:  # no dot, or a dotfile such as ".env"
            stem, dot, suffix = name, "", ""
        candidate, number = name, 1
        while candidate.casefold() in taken or (
            candidate != name and candidate.casefold() in wanted
        ):
            number += 1
            candidate = f"{stem} ({number}){dot}{suffix}"
        taken.add(candidate.casefold())
        unique.append(candidate)
    return unique


def compression_for(content_type: str) -> int:
    """``ZIP_STORED`` for content that deflate would not shrink, ``ZIP_DEFLATED`` otherwise."""
    if content_type in _STORED_TYPES:
        return zipfile.ZIP_STORED
    media = content_type.partition("/")[0]
    if media in ("image", "audio", "video") and content_type not in _RAW_MEDIA:
        return zipfile.ZIP_STORED
    return zipfile.ZIP_DEFLATED


class _Sink:
    """Where zipfile writes: collects bytes until they are taken; it cannot seek or tell."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self.discarding = False

    def write(self, data: bytes, /) -> int:
        if not self.discarding:
            self._pieces.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._pieces = b"".join(self._pieces), []
        return data


def _zip_info(file: File, name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=file.created_at.timetuple()[:6])
    info.compress_type = compression_for(file.content_type)
    info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
    info.file_size = file.size  # lets zipfile pick ZIP64 headers up front
    return info


async def zip_stream(ctx: JobContext, files: list[File]) -> AsyncIterator[bytes]:
    """The zip of ``files``, in the chunks it is written in; progress by bytes read."""
    total = sum(file.size for file in files) or 1
    done = 0
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", allowZip64=True)
    entry: IO[bytes] | None = None
    try:
        for file, name in zip(files, entry_names([f.name for f in files]), strict=True):
            await ctx.progress(done / total, f"Packing {file.name}")
            force = file.size >= FORCE_ZIP64_AT
            entry = writer = await anyio.to_thread.run_sync(
                partial(archive.open, _zip_info(file, name), "w", force_zip64=force)
            )
            read = 0
            chunks = ctx.read(file)
            try:
                async for chunk in chunks:
                    await anyio.to_thread.run_sync(writer.write, chunk)
                    read += len(chunk)
                    done += len(chunk)
                    if data := sink.take():
                        yield data
                    await ctx.progress(done / total, f"Packing {file.name}")
            finally:
                # Let storage close its download now, not when the generator is collected.
                if isinstance(chunks, AsyncGenerator):
                    await chunks.aclose()
            if read != file.size:
                raise JobFailed(
                    f"The bytes of {file.path!r} in storage are not the {file.size} bytes "
                    "it was stored with; verify the file."
                )
            await anyio.to_thread.run_sync(writer.close)
            entry = None
            if data := sink.take():
                yield data
        await anyio.to_thread.run_sync(archive.close)
        yield sink.take()
    finally:
        # A zip left open would finish itself when collected, and complain.
        sink.discarding = True
        _abandon(archive, entry)


def _abandon(archive: zipfile.ZipFile, entry: IO[bytes] | None) -> None:
    with contextlib.suppress(ValueError, RuntimeError, OSError, zlib.error):
        if entry is not None:
            entry.close()
        archive.close()


async def run(ctx: JobContext) -> None:
    files = await ctx.inputs()
    path = params.load(Params, ctx.params).path
    await ctx.progress(0.0, f"Packing {len(files)} files into {path}")
    await ctx.create_output(path, zip_stream(ctx, files), meta={"entries": len(files)})


KIND = Kind(
    name="archive",
    params=Params,
    run=run,
    check=check,
    # Up to 1,000 files of up to DEPOT_MAX_UPLOAD_BYTES each: bytes, not CPU, set the pace.
    time_limit_seconds=4 * 3600,
    max_attempts=3,
    makes=("application/zip",),
    makes_one=True,
)
