"""Media decoders run in a process of their own, one per task, under a time limit.

Hostile media is the norm: a decoder (libheif, libavif, PDFium, FFmpeg) fed a
crafted file may crash, loop or take minutes. :func:`run_isolated` runs one
task — decode, resize, encode into files on disk — in a fresh child process
and waits for it on the event loop:

- it answers what the task returned, or raises :class:`JobFailed` with the
  task's own message;
- past its limit (a setting, named in the message) the child is killed and
  the task fails: ``Reading 'a.pdf' took longer than 60 s, the limit
  (DEPOT_MEDIA_PICTURE_SECONDS).``; the clock starts when the child does, so
  the decoder server's first start is never counted against the file;
- a child that dies (a segfault, ``os._exit``, the kernel's OOM killer) fails
  the task with its signal or exit status; the caller's process never notices
  more than that;
- a task given ``progress`` reports through it (``transcode``): the parent
  awaits each report, so a cancelled job raises ``JobCancelled`` there, and the
  child is killed at once. A cancelled caller (a job's time limit, a closed
  request) kills it too.

How: the first task starts a **decoder server**, one single-threaded process
(``spawn``) that imports the decoding libraries once (:data:`PRELOAD`). For
each task it forks a small monitor, which forks the child that runs the task,
waits for it and reports how it ended. Forking a process that holds the
libraries already costs a few milliseconds (``bench/media.py`` measures it),
where a spawned interpreter importing PyAV and PDFium takes about a second,
and so would multiprocessing's fork server: it re-imports the parent's main
module in every child (``depot``'s, that is the whole API: 1.2 s measured).
A process per task rather than a pool that reuses them, because a crash
then costs that one task (a broken ``ProcessPoolExecutor`` fails every task it
holds) and no heap a hostile file corrupted meets the next file. How many
run at once is bounded by the callers: a worker's threads, and
``DEPOT_VARIANT_RENDER_CONCURRENCY`` in the API.

Nothing outlives its parent: the server exits when its parent's end of their
pipe closes, and a child exits when the caller's end of its own pipe does (a
thread in it waits for that).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any, Final, TypeVar

import anyio
import av
import structlog
from PIL import Image

from workers.errors import JobFailed

logger = structlog.get_logger("depot.decoders")

T = TypeVar("T")
Progress = Callable[[float, str], Awaitable[None]]

# What the decoder server imports once, so that no child imports a decoding library
# itself: the modules whose functions run in a child.
PRELOAD: Final = (
    "workers.visuals",
    "workers.thumbnails",
    "workers.convert",
    "workers.transcode",
    "workers.variants",
)
# Decoders opened once in the server (their one-time set-up shared by every child).
WARM_DECODERS: Final = ("h264", "hevc", "vp9", "av1", "mpeg4", "aac", "mp3", "opus")
# How long a child may take to start (the server's first start imports PRELOAD).
START_SECONDS: Final = 120.0


class _Server:
    """This process's decoder server: started with the first task, again if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._requests: Connection | None = None

    def submit(self, task: Any, reports: bool, theirs: Connection) -> None:
        """Hand the server a task and the child's end of its pipe. Blocking (a first
        start takes seconds): call it off the event loop."""
        with self._lock:
            for attempt in (1, 2):
                requests = self._running()
                try:
                    requests.send((task, reports))
                    send_handle(requests, theirs.fileno(), 0)
                    return
                except OSError:
                    if attempt == 2:
                        raise
                    self._process = None  # it died: start another

    def _running(self) -> Connection:
        if self._process is None or not self._process.is_alive() or self._requests is None:
            if self._requests is not None:
                self._requests.close()
            ours, theirs = multiprocessing.Pipe(duplex=True)
            process = multiprocessing.get_context("spawn").Process(
                target=_serve, args=(theirs,), daemon=True, name="depot-decoders"
            )
            process.start()
            theirs.close()
            self._process, self._requests = process, ours
        return self._requests


_server = _Server()


async def run_isolated(
    task: Callable[..., T],
    *,
    name: str,
    seconds: float,
    setting: str,
    progress: Progress | None = None,
) -> T:
    """``task()`` — or ``task(report)`` when ``progress`` is given — in a child process.

    ``task`` must pickle (a module-level function, or a ``functools.partial`` of
    one over plain values) and so must what it returns. ``name`` is the file
    as its owner knows it; ``seconds`` the limit, from the setting ``setting``.
    """
    ours, theirs = multiprocessing.Pipe(duplex=True)
    pid: int | None = None
    ended = timed_out = False
    try:
        try:
            await anyio.to_thread.run_sync(_server.submit, task, progress is not None, theirs)
        finally:
            theirs.close()  # ours must be the only other end, or a dead child's EOF never comes
        with anyio.fail_after(START_SECONDS):
            kind, value = await _receive(ours, name)
        if kind == "started":
            pid = value
            with anyio.move_on_after(seconds) as timer:
                while True:
                    kind, value = await _receive(ours, name)
                    if kind == "progress" and progress is not None:
                        await progress(*value)
                        continue
                    break
            timed_out = timer.cancelled_caught
        if timed_out:
            raise JobFailed(
                f"Reading {name!r} took longer than {seconds:g} s, the limit ({setting})."
            )
        ended = True
        if kind == "exit":
            raise JobFailed(
                f"The decoder reading {name!r} stopped ({_how(value)}): "
                "the file is damaged or made to harm."
            )
        if kind == "failed":
            raise JobFailed(value)
        if kind == "error":
            raise RuntimeError(f"a decoder raised, reading {name!r}:\n{value}")
        result: T = value
        return result
    finally:
        ours.close()
        if pid is not None and not ended:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _receive(conn: Connection, name: str) -> tuple[str, Any]:
    """The next message about the task; ``JobFailed`` if its pipe closed without one."""
    while not conn.poll():
        await anyio.wait_readable(conn.fileno())
    try:
        message: tuple[str, Any] = conn.recv()
    except (EOFError, OSError):
        raise JobFailed(
            f"The decoder reading {name!r} stopped (its pipe closed): "
            "the file is damaged or made to harm."
        ) from None
    return message


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


# ----------------------------------------------------------------- the server side


def _serve(requests: Connection) -> None:
    """The decoder server's loop: for each task, fork a monitor; exit with the parent."""
    for module in PRELOAD:
        __import__(module)
    _warm()
    # What is loaded now is never collected: a child's collections skip it instead of
    # touching (and so copying) every page of the heap it shares with the server.
    gc.freeze()
    # Monitors are reaped by the kernel; each one resets this for its own child.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        try:
            task, reports = requests.recv()
            fd = recv_handle(requests)
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone
        if os.fork() == 0:
            requests.close()
            _monitor(Connection(fd), task, reports)
        os.close(fd)


def _warm() -> None:
    """What the libraries do once per process on first use, done here for every child:
    Pillow imports its format plugins (115 ms, measured); FFmpeg's decoders fill
    their static tables when first opened."""
    Image.init()
    for codec in WARM_DECODERS:
        with contextlib.suppress(Exception):  # a codec this build lacks
            av.CodecContext.create(codec, "r").open()


def _monitor(conn: Connection, task: Any, reports: bool) -> None:
    """Fork the child that runs ``task``, wait for it, and say how it ended."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        _child(conn, task, reports)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(OSError):
        conn.send(("exit", os.waitstatus_to_exitcode(status)))
    os._exit(0)


def _child(conn: Connection, task: Any, reports: bool) -> None:
    threading.Thread(target=_exit_with_parent, args=(conn,), daemon=True).start()
    conn.send(("started", os.getpid()))

    def report(fraction: float, message: str) -> None:
        conn.send(("progress", (fraction, message)))

    try:
        result = task(report) if reports else task()
    except JobFailed as failed:
        conn.send(("failed", str(failed)))
    except BaseException:  # noqa: BLE001 - a bug, told to the parent to log
        conn.send(("error", traceback.format_exc()))
    else:
        conn.send(("done", result))


def _exit_with_parent(conn: Connection) -> None:
    """Wait for the caller's end to close (it never writes), then leave at once."""
    with contextlib.suppress(EOFError, OSError):
        conn.recv()
    os._exit(70)
