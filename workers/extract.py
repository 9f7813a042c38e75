"""``extract``: a zip, tar, tar.gz, tar.bz2 or tar.xz unpacked into files under a folder.

The format is told by the bytes, never by the name. The archive is spooled
to a temporary file (both formats need to seek), and its whole index is
checked (:mod:`workers.archives`) before anything is written. Then each file
entry streams into a new file at ``<path>/<entry path>``, read chunk by chunk
in worker threads; an entry that yields more or fewer bytes than its header
declared, or fails its CRC, fails the job, and the job's partial outputs are
removed with it. Folder entries create nothing: Depot's folders are only
path prefixes.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Annotated, Final, TypeVar

import anyio

from core.errors import BadUserInput
from core.files import first_taken_path
from core.quota import free_bytes
from core.settings import Settings
from workers import params
from workers.archives import EntryType, IndexCheck, Limits
from workers.context import JobContext
from workers.errors import JobFailed
from workers.kind import Kind
from workers.params import Doc, FileId

CHUNK: Final = 1024 * 1024
# What the libraries raise for bytes that are not a well-formed archive.
_UNREADABLE = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    ValueError,
    NotImplementedError,
)
_ZIP_METHODS: Final = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)

T = TypeVar("T")


@dataclass(frozen=True)
class Params:
    """A zip, tar or tar.gz unpacked into files."""

    file_id: FileId
    path: Annotated[str, Doc("The folder the entries go under.")]


def check(given: Params, settings: Settings) -> Params:
    return dataclasses.replace(given, path=params.path(given.path, "path"))


@dataclass(frozen=True)
class Member:
    """A file entry that passed the checks: its safe path, declared size and the library's own."""

    path: str
    size: int
    ref: zipfile.ZipInfo | tarfile.TarInfo


class Archive:
    """An open, checked archive: its file entries, and a way to read each."""

    def __init__(self, name: str, kind: str, handle: zipfile.ZipFile | tarfile.TarFile) -> None:
        self.name = name
        self.kind = kind
        self.handle = handle
        self.members: list[Member] = []

    def unreadable(self, exc: BaseException, entry: str | None = None) -> JobFailed:
        return unreadable(self.name, self.kind, exc, entry)

    def open(self, member: Member) -> IO[bytes]:
        if isinstance(self.handle, zipfile.ZipFile):
            assert isinstance(member.ref, zipfile.ZipInfo)
            return self.handle.open(member.ref)
        assert isinstance(member.ref, tarfile.TarInfo)
        stream = self.handle.extractfile(member.ref)
        assert stream is not None  # members are regular files
        return stream

    def close(self) -> None:
        self.handle.close()


def unreadable(name: str, kind: str, exc: BaseException, entry: str | None = None) -> JobFailed:
    """The failure for bytes that are not a well-formed archive of ``kind``."""
    where = f" (entry {entry!r})" if entry is not None else ""
    reason = str(exc) or type(exc).__name__
    return JobFailed(f"{name!r} is not a readable {kind} archive{where}: {reason}.")


def open_archive(local: Path, name: str, limits: Limits) -> Archive:
    """Open and check the archive spooled at ``local`` (blocking: run it in a thread)."""
    size = local.stat().st_size
    with local.open("rb") as probe:
        head = probe.read(4)
    if zipfile.is_zipfile(local) or head in (b"PK\x03\x04", b"PK\x05\x06"):
        return _open_zip(local, name, size, limits)
    try:
        handle = tarfile.open(local, "r:*")  # noqa: SIM115 - closed by Archive.close
    except _UNREADABLE as exc:
        # tarfile lists what each decompressor said: one line is worth showing, a list is not.
        reason = "" if "\n" in str(exc) else f": {exc}"
        raise JobFailed(
            f"{name!r} is not a readable zip or tar archive (zip, tar, tar.gz, tar.bz2 and "
            f"tar.xz can be extracted){reason}."
        ) from None
    archive = Archive(name, "tar", handle)
    try:
        _index_tar(archive, size, limits)
    except BaseException:
        handle.close()
        raise
    return archive


def _open_zip(local: Path, name: str, size: int, limits: Limits) -> Archive:
    with local.open("rb") as raw:
        declared = _zip_entry_count(raw)
    if declared is not None and declared > limits.max_entries:
        # Said before zipfile reads a central directory of millions of entries.
        raise JobFailed(
            f"{name!r} has {declared} entries, more than {limits.max_entries} "
            "(DEPOT_ARCHIVE_MAX_ENTRIES); nothing was extracted."
        )
    try:
        archive = Archive(name, "zip", zipfile.ZipFile(local))
    except _UNREADABLE as exc:
        raise unreadable(name, "zip", exc) from None
    try:
        _index_zip(archive, size, limits)
    except BaseException:
        archive.close()
        raise
    return archive


def _zip_entry_count(raw: IO[bytes]) -> int | None:
    """The entry count the zip's end record declares (ZIP64 included), if it can be found."""
    end = raw.seek(0, os.SEEK_END)
    tail_start = max(0, end - (65536 + 22))
    raw.seek(tail_start)
    tail = raw.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        return None
    count: int = struct.unpack_from("<H", tail, at + 10)[0]
    locator = at - 20
    if count == 0xFFFF and locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        (record,) = struct.unpack_from("<Q", tail, locator + 8)
        raw.seek(record)
        zip64 = raw.read(56)
        if len(zip64) == 56 and zip64[:4] == b"PK\x06\x06":
            count = struct.unpack_from("<Q", zip64, 32)[0]
    return count


def _zip_type(info: zipfile.ZipInfo) -> EntryType:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return EntryType.SYMLINK
    if info.is_dir() or kind == stat.S_IFDIR:
        return EntryType.FOLDER
    if kind not in (0, stat.S_IFREG):
        return EntryType.SPECIAL
    return EntryType.FILE


def _index_zip(archive: Archive, size: int, limits: Limits) -> None:
    assert isinstance(archive.handle, zipfile.ZipFile)
    check = IndexCheck(archive.name, size, limits)
    for info in archive.handle.infolist():
        entry_type = _zip_type(info)
        path = check.add(info.filename, entry_type, info.file_size, info.compress_size)
        if path is None:
            continue
        if info.flag_bits & 0x1:
            raise JobFailed(
                f"Entry {info.filename!r} of {archive.name!r} is encrypted, which Depot "
                "cannot extract; nothing was extracted."
            )
        if info.compress_type not in _ZIP_METHODS:
            raise JobFailed(
                f"Entry {info.filename!r} of {archive.name!r} uses compression method "
                f"{info.compress_type}, which Depot cannot read; nothing was extracted."
            )
        archive.members.append(Member(path, info.file_size, info))


def _tar_type(member: tarfile.TarInfo) -> EntryType:
    if member.issym():
        return EntryType.SYMLINK
    if member.islnk():
        return EntryType.HARDLINK
    if member.isdir():
        return EntryType.FOLDER
    if member.isfile():
        return EntryType.FILE
    return EntryType.SPECIAL


def _index_tar(archive: Archive, size: int, limits: Limits) -> None:
    handle = archive.handle
    assert isinstance(handle, tarfile.TarFile)
    # A plain tar's bytes are its content; a compressed one is judged on its total.
    compressed = isinstance(handle.fileobj, gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile)
    check = IndexCheck(archive.name, size, limits, compressed_whole=compressed)
    try:
        # One member at a time, so a bad one stops the listing (and the decompression).
        member = handle.next()
        while member is not None:
            path = check.add(member.name, _tar_type(member), member.size)
            if path is not None:
                if not compressed and member.offset_data + member.size > size:
                    raise archive.unreadable(EOFError("it ends in the middle"), member.name)
                archive.members.append(Member(path, member.size, member))
            member = handle.next()
    except _UNREADABLE as exc:
        raise archive.unreadable(exc) from None


async def _thread(archive: Archive, entry: str, call: Callable[[], T]) -> T:
    """``call()`` in a worker thread, a library's complaint about the bytes as ``JobFailed``."""
    try:
        return await anyio.to_thread.run_sync(call)
    except _UNREADABLE as exc:
        raise archive.unreadable(exc, entry) from None


class _Progress:
    def __init__(self, ctx: JobContext, total: int) -> None:
        self.ctx = ctx
        self.total = total or 1
        self.done = 0

    async def add(self, count: int, message: str) -> None:
        self.done += count
        await self.ctx.progress(self.done / self.total, message)


async def entry_chunks(
    archive: Archive, member: Member, progress: _Progress
) -> AsyncIterator[bytes]:
    """``member``'s bytes, counted against what its header declared."""
    raw = member.ref.filename if isinstance(member.ref, zipfile.ZipInfo) else member.ref.name
    stream = await _thread(archive, raw, partial(archive.open, member))
    try:
        count = 0
        while chunk := await _thread(archive, raw, partial(stream.read, CHUNK)):
            count += len(chunk)
            if count > member.size:
                raise JobFailed(
                    f"Entry {raw!r} of {archive.name!r} holds more than the {member.size} bytes "
                    "its header declares; the archive was not extracted."
                )
            await progress.add(len(chunk), f"Extracting {member.path}")
            yield chunk
        if count < member.size:
            raise archive.unreadable(EOFError(f"it ends after {count} of {member.size} bytes"), raw)
    finally:
        stream.close()


async def _ensure_free(ctx: JobContext, paths: list[str]) -> None:
    """``JobFailed`` naming the first target path a live file already has."""
    async with ctx.sessionmaker() as db:
        taken = await first_taken_path(db, ctx.job.owner_id, paths)
    if taken is not None:
        raise JobFailed(f"A file already exists at {taken!r}; nothing was extracted.")


def _target(folder: str, member: Member) -> str:
    try:
        return params.path(f"{folder}/{member.path}", "path")
    except BadUserInput as exc:
        raise JobFailed(f"Cannot extract {member.path!r} under {folder!r}: {exc.message}") from None


async def run(ctx: JobContext) -> None:
    [file] = await ctx.inputs()
    folder = params.load(Params, ctx.params).path
    await ctx.progress(0.0, f"Reading {file.name}")
    async with ctx.spool(file) as local:
        async with ctx.sessionmaker() as db:
            limits = Limits.of(ctx.settings, await free_bytes(db, ctx.job.owner_id))
        await ctx.progress(0.0, f"Checking {file.name}")
        archive = await anyio.to_thread.run_sync(open_archive, local, file.path, limits)
        try:
            targets = [_target(folder, member) for member in archive.members]
            await _ensure_free(ctx, targets)
            progress = _Progress(ctx, sum(member.size for member in archive.members))
            for member, target in zip(archive.members, targets, strict=True):
                await progress.add(0, f"Extracting {member.path}")
                await ctx.create_output(target, entry_chunks(archive, member, progress))
        finally:
            archive.close()


KIND = Kind(
    name="extract",
    params=Params,
    run=run,
    check=check,
    time_limit_seconds=4 * 3600,
    max_attempts=3,
    reads=("application/*",),
)
