"""Upload throughput and server memory, against a plain file copy on the same disk.

A real ``depot serve`` (uvicorn) runs in a subprocess on a free port, with a
temporary var directory, SQLite and local storage under it. One file of
``--size`` bytes (default 1 GiB) is written once, then sent

* by **direct upload**: ``createUpload`` (with its SHA-256), an HTTP ``PUT``
  streaming the file to the ticket's URL, ``completeUpload`` (which re-reads
  and hashes the stored bytes);
* by **GraphQL multipart**: one ``uploadFile`` request (multipart request
  spec, with the CSRF header), the file streamed as its part;
* by **tus** (``/files/tus/``): one creation with the whole file's SHA-256 in
  ``Upload-Metadata``, then a ``PATCH`` per 8 MiB chunk (``TUS_CHUNK``), each
  waiting for the previous one's ``Upload-Offset``, as tus-js-client with
  ``chunkSize`` does; each chunk's body streamed from the file in 1 MiB blocks.

The baseline, measured in the same run on the same disk: ``shutil.copyfile``
of that file to a new path, then ``fsync``: what writing the same bytes costs
without Depot. Throughputs are reported as ratios to it, next to the server's
CPU seconds per GiB (every thread, and its event loop's alone: the one serial
stage, where received bytes used to be copied). A thread samples the
server's resident memory (``VmRSS`` in ``/proc/<pid>/status``) every 50 ms;
the growth reported is the peak during an upload minus the level just before.

Run from the repository root: ``.venv/bin/python -m bench.uploads [--size 64MiB]``.
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.client import CSRF, REGISTER, Account, data, graphql, multipart, registration
from bench.harness import Process, Stack, cpu_seconds, depot_env, free_port, progress, rss_bytes
from bench.report import GIB, MIB, environment, table, times, verdict

BLOCK = 4 * MIB
SAMPLE_SECONDS = 0.05
# The benchmark account (its password is bench.client's).
EMAIL = "bench@example.com"
TUS_CHUNK = 8 * MIB
TARGETS = {"direct upload": 0.6, "GraphQL multipart": 0.4, "tus, 8 MiB chunks": 0.5}
RSS_LIMIT = 64 * MIB

CREATE_UPLOAD = """mutation CreateUpload($input: CreateUploadInput!) {
  createUpload(input: $input) { id url method headers }
}"""
COMPLETE_UPLOAD = "mutation CompleteUpload($id: ID!) { completeUpload(id: $id) { size sha256 } }"
FILE_AT = """query FileAt($path: String!) {
  files(filter: {pathPrefix: $path}) { edges { node { id path size sha256 } } }
}"""
PURGE_FILE = "mutation PurgeFile($id: ID!) { purgeFile(id: $id) }"
UPLOAD_FILE = """mutation UploadFile($file: Upload!, $path: String) {
  uploadFile(file: $file, path: $path) { size sha256 }
}"""

_SIZE = re.compile(r"(\d+)\s*(|B|KiB|MiB|GiB|K|M|G)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": MIB, "mib": MIB, "g": GIB, "gib": GIB}


def parse_size(text: str) -> int:
    """``1GiB``, ``64MiB``, ``512K`` or a number of bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64MiB or 1GiB)")
    return int(match[1]) * _UNITS[match[2].lower()]


def make_source(path: Path, size: int) -> str:
    """Write ``size`` incompressible-enough bytes to ``path``; returns their SHA-256."""
    block = bytearray(os.urandom(BLOCK))
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        written = 0
        while written < size:
            # Vary each block a little, so no two blocks are the same.
            block[:8] = written.to_bytes(8, "little")
            chunk = bytes(block[: min(BLOCK, size - written)])
            handle.write(chunk)
            digest.update(chunk)
            written += len(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


def plain_copy(source: Path, target: Path) -> float:
    """Seconds to copy ``source`` to ``target`` and make it durable (the baseline)."""
    started = time.perf_counter()
    shutil.copyfile(source, target)
    with target.open("rb") as handle:
        os.fsync(handle.fileno())
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


class RssSampler:
    """Samples a process's resident memory in a thread; reports the peak since ``reset``."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            current = rss_bytes(self._pid)
            with self._lock:
                self._peak = max(self._peak, current)

    def reset(self) -> int:
        """Start a new peak from the current level, which is returned."""
        current = rss_bytes(self._pid)
        with self._lock:
            self._peak = current
        return current

    @property
    def peak(self) -> int:
        with self._lock:
            return max(self._peak, rss_bytes(self._pid))


@contextmanager
def depot_serve(workdir: Path, size: int) -> Iterator[tuple[str, Process]]:
    """``depot serve`` (its URL and process) on a free port, ready to take requests.

    Its var directory (SQLite, local storage) is ``workdir / "var"``; its log
    is in ``workdir``. Stopped on exit.
    """
    var_dir = workdir / "var"
    port = free_port()
    env = depot_env(
        var_dir,
        var_dir / "storage",
        port,
        DEPOT_MAX_UPLOAD_BYTES=str(size),
        DEPOT_DEFAULT_QUOTA_BYTES=str(4 * size + GIB),
    )
    stack = Stack(workdir, env, port)
    try:
        yield stack.url, stack.start_serve()
    finally:
        stack.stop()


def direct_upload(client: httpx.Client, source: Path, path: str, sha256: str) -> dict[str, Any]:
    """createUpload, PUT the file as a stream, completeUpload."""
    size = source.stat().st_size
    ticket = graphql(
        client, CREATE_UPLOAD, {"input": {"path": path, "size": size, "sha256": sha256}}
    )["createUpload"]
    with source.open("rb") as handle:
        response = client.request(
            ticket["method"],
            ticket["url"],
            content=_blocks(handle),
            headers={**ticket["headers"], "Content-Length": str(size)},
        )
    response.raise_for_status()
    file: dict[str, Any] = graphql(client, COMPLETE_UPLOAD, {"id": ticket["id"]})["completeUpload"]
    return file


def _blocks(handle: Any) -> Iterator[bytes]:
    while block := handle.read(MIB):
        yield block


def _blocks_of(handle: Any, length: int) -> Iterator[bytes]:
    """The next ``length`` bytes of ``handle``, a block at a time.

    Not one ``bytes`` of the whole chunk: httpcore sends a body piece by
    slicing off what the socket took, which copies the rest each time, so
    the client's cost grows with the square of the piece (for 8 MiB chunks,
    0.15 s of client CPU per 128 MiB against 0.09 s in blocks; one 128 MiB
    PATCH took 6 s instead of under 1). tus-js-client streams its chunks too.
    """
    while length > 0:
        block = handle.read(min(MIB, length))
        if not block:
            raise RuntimeError("the source file ended early")
        length -= len(block)
        yield block


def multipart_upload(client: httpx.Client, source: Path, path: str) -> dict[str, Any]:
    """One ``uploadFile`` request; httpx streams the file object as the part's body."""
    with source.open("rb") as handle:
        response = client.post(
            "/graphql",
            data=multipart(UPLOAD_FILE, {"path": path}),
            files={"0": (source.name, handle, "application/octet-stream")},
            headers=CSRF,
        )
    file: dict[str, Any] = data(response)["uploadFile"]
    return file


def tus_upload(client: httpx.Client, source: Path, path: str, sha256: str) -> dict[str, Any]:
    """Create a tus upload, then PATCH it one ``TUS_CHUNK`` at a time."""
    size = source.stat().st_size
    tus = {"Tus-Resumable": "1.0.0"}
    meta = ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}"
        for key, value in (("path", path), ("sha256", sha256))
    )
    created = client.post(
        "/files/tus/", headers={**tus, "Upload-Length": str(size), "Upload-Metadata": meta}
    )
    created.raise_for_status()
    url = created.headers["location"]
    offset = 0
    with source.open("rb") as handle:
        while offset < size:
            length = min(TUS_CHUNK, size - offset)
            response = client.patch(
                url,
                content=_blocks_of(handle, length),
                headers={
                    **tus,
                    "Upload-Offset": str(offset),
                    "Content-Length": str(length),
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            response.raise_for_status()
            offset = int(response.headers["upload-offset"])
    edges = graphql(client, FILE_AT, {"path": path})["files"]["edges"]
    file: dict[str, Any] = next(edge["node"] for edge in edges if edge["node"]["path"] == path)
    return file


Upload = Callable[[httpx.Client, Path, str, str], dict[str, Any]]
"""An upload of (client, source file, path, its SHA-256), answering the stored File."""


@dataclass
class Method:
    """One way of uploading, and what each round measured of it."""

    label: str
    target: float
    upload: Upload
    seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    cpu_per_gib: list[float] = field(default_factory=list)
    loop_cpu_per_gib: list[float] = field(default_factory=list)
    rss_growth: int = 0
    error: str | None = None


METHODS: tuple[tuple[str, Upload], ...] = (
    ("direct upload", direct_upload),
    (
        "GraphQL multipart",
        lambda client, source, path, _sha256: multipart_upload(client, source, path),
    ),
    ("tus, 8 MiB chunks", tus_upload),
)


def _measure_upload(
    method: Method,
    client: httpx.Client,
    server: Process,
    sampler: RssSampler,
    source: Path,
    path: str,
    sha256: str,
) -> float | None:
    """Seconds of one upload (its CPU and RSS growth recorded), or None once it failed."""
    size = source.stat().st_size
    before = sampler.reset()
    cpu, loop_cpu = cpu_seconds(server.pid), cpu_seconds(server.pid, server.pid)
    started = time.perf_counter()
    try:
        file = method.upload(client, source, path, sha256)
    except (RuntimeError, httpx.HTTPError) as exc:
        method.error = str(exc)[:300]
        return None
    seconds = time.perf_counter() - started
    if file["size"] != size or file["sha256"] != sha256:
        method.error = f"stored {file}, expected size {size}"
        return None
    method.cpu_per_gib.append((cpu_seconds(server.pid) - cpu) * GIB / size)
    method.loop_cpu_per_gib.append((cpu_seconds(server.pid, server.pid) - loop_cpu) * GIB / size)
    method.rss_growth = max(method.rss_growth, sampler.peak - before)
    return seconds


def _round(
    number: int,
    methods: list[Method],
    client: httpx.Client,
    server: Process,
    sampler: RssSampler,
    source: Path,
    sha256: str,
    workdir: Path,
) -> list[float]:
    """Every method next to a copy of its own, the pair's order flipped every round.

    The methods' order turns too, so none always runs after the same one.
    Returns the round's copy times.
    """
    copies = []
    turn = number % len(methods)
    for method in methods[turn:] + methods[:turn]:
        if method.error is not None:
            continue
        path = f"round{number}/{method.label.split()[0].strip(',')}"
        pair: list[float | None] = []
        for side in ("copy", "upload") if number % 2 == 0 else ("upload", "copy"):
            # Whatever the last write left dirty goes to disk first, untimed: an
            # fsync also waits for the file system's journal, and with it for
            # the other side's write-back, which doubled some copies' times.
            os.sync()
            if side == "copy":
                pair.append(plain_copy(source, workdir / "copy.bin"))
            else:
                pair.append(_measure_upload(method, client, server, sampler, source, path, sha256))
        copy, upload = pair if number % 2 == 0 else pair[::-1]
        assert copy is not None
        copies.append(copy)
        if upload is not None:
            method.seconds.append(upload)
            method.ratios.append(copy / upload)
    return copies


def rate(size: int, seconds: float) -> str:
    return f"{size / MIB / seconds:.0f} MiB/s"


def _spread(values: list[float], format_one: Callable[[float], str]) -> str:
    """min / median / max, or the one value."""
    if len(values) == 1:
        return format_one(values[0])
    return " / ".join(
        format_one(value) for value in (min(values), statistics.median(values), max(values))
    )


def report(
    size: int, rounds: int, copies: list[float], methods: list[Method], workdir: Path
) -> str:
    header = [
        "method",
        "median time",
        "throughput",
        "vs copy, min / median / max",
        "target",
        "server CPU per GiB",
        "of it the event loop's",
        "RSS growth",
    ]
    copy = statistics.median(copies)
    rows = [
        header,
        [
            "plain copy + fsync",
            f"{copy:.2f} s",
            rate(size, copy),
            f"{_spread(copies, lambda s: f'{s:.2f}')} s",
            "",
            "",
            "",
            "",
        ],
    ]
    verdicts = []
    for method in methods:
        if method.error is not None or not method.ratios:
            rows.append([method.label, "failed", "", "", f">= {method.target:.2f}", "", "", ""])
            verdicts.append(f"{method.label}: FAILED: {method.error}")
            continue
        seconds = statistics.median(method.seconds)
        ratio = statistics.median(method.ratios)
        rows.append(
            [
                method.label,
                f"{seconds:.2f} s",
                rate(size, seconds),
                _spread(method.ratios, times),
                f">= {method.target:.2f}",
                f"{statistics.median(method.cpu_per_gib):.2f} s",
                f"{statistics.median(method.loop_cpu_per_gib):.2f} s",
                f"{method.rss_growth / MIB:.1f} MiB",
            ]
        )
        ok = ratio >= method.target and method.rss_growth < RSS_LIMIT
        verdicts.append(f"{method.label}: {verdict(ok, 'its targets')} (median ratio)")
    return "\n".join(
        [
            f"Depot uploads: one {size / MIB:.0f} MiB file to local storage under {workdir}, "
            f"depot serve (uvicorn) on 127.0.0.1, SQLite; {rounds} rounds, each upload "
            "next to a copy of its own; load average at the start "
            f"{os.getloadavg()[0]:.2f}",
            environment("httpx"),
            "",
            *table(rows),
            "",
            "targets (median of the rounds' ratios): "
            + ", ".join(f"{method.label} >= {method.target:.1f}x" for method in methods)
            + f" the copy rate; RSS growth < {RSS_LIMIT // MIB} MiB",
            *verdicts,
        ]
    )


def run(size: int, rounds: int, parent: Path | None) -> str:
    with tempfile.TemporaryDirectory(prefix="depot-bench-", dir=parent) as name:
        workdir = Path(name)
        source = workdir / "source.bin"
        progress(f"writing a {size / MIB:.0f} MiB source file…")
        sha256 = make_source(source, size)
        methods = [Method(label, TARGETS[label], upload) for label, upload in METHODS]
        copies: list[float] = []
        with depot_serve(workdir, size) as (url, server):
            timeout = httpx.Timeout(30, read=max(300, size / MIB))
            with httpx.Client(base_url=url, timeout=timeout) as client:
                account = Account.registered(graphql(client, REGISTER, registration(EMAIL)))
                client.headers.update(account.headers)
                # Warm up every path (imports, first connections) with a small file.
                small = workdir / "small.bin"
                small_sha256 = make_source(small, MIB)
                for method in methods:
                    try:
                        method.upload(
                            client, small, f"warm/{method.label.split()[0]}", small_sha256
                        )
                    except (RuntimeError, httpx.HTTPError) as exc:
                        progress(f"{method.label} warm-up failed: {exc}")
                with RssSampler(server.pid) as sampler:
                    for number in range(rounds):
                        progress(f"round {number + 1} of {rounds}…")
                        copies += _round(
                            number, methods, client, server, sampler, source, sha256, workdir
                        )
                        # Each round's files go, so the disk holds at most one round's.
                        _purge_round(client, f"round{number}/")
        return report(size, rounds, copies, methods, workdir)


def _purge_round(client: httpx.Client, prefix: str) -> None:
    """Delete for good every file under ``prefix``, bytes and all."""
    for edge in graphql(client, FILE_AT, {"path": prefix})["files"]["edges"]:
        graphql(client, PURGE_FILE, {"id": edge["node"]["id"]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--size", type=parse_size, default=GIB, help="file size, e.g. 64MiB (default 1GiB)"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="directory on the disk to measure (default: the system's temporary directory)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds, each every upload next to a copy of its own (default 3)",
    )
    args = parser.parse_args(argv)
    if args.size < MIB:
        parser.error("--size must be at least 1MiB")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    print(run(args.size, args.rounds, args.dir))


if __name__ == "__main__":
    main()
