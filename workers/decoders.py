"""Media decoders run in a process of their own, one per task, under a time limit.

Hostile media is the norm: a decoder (libheif, libavif, PDFium, FFmpeg) fed a
crafted file may crash, loop or take minutes. :func:`run_isolated` runs one
task — decode, resize, encode into files on disk — in a fresh child process
and waits for it on the event loop:

- it answers what the task returned, or raises :class:`JobFailed` with the
  task's own message;
- past its limit (a setting, named in the message) the child is killed and
  the task fails: ``Reading 'a.pdf' took longer than 60 s
  (DEPOT_MEDIA_PICTURE_SECONDS)``; the clock starts when the child does, so
  a fork server's first start is never counted against the file;
- a child that dies (a segfault, ``os._exit``, the kernel's OOM killer) fails
  the task with its signal or exit status; the caller's process never notices
  more than that;
- a task given ``progress`` reports through it (``transcode``): the parent
  awaits each report, so a cancelled job raises ``JobCancelled`` there, and the
  child is killed at once. A cancelled caller (a job's time limit, a closed
  request) kills it too.

Why a process per task rather than a pool that reuses them: processes come
from a fork server that imported the decoding libraries once, so each starts
in about 15 ms (measured by ``bench/media.py``: next to a 12-megapixel JPEG's
thumbnail, under 5 %), and no state a hostile file left in a decoder's heap
reaches the next file. A crash costs that one process, never a pool's other
tasks (a broken ``ProcessPoolExecutor`` fails every task it holds). How many
run at once is bounded by the callers: a worker's threads, and
``DEPOT_VARIANT_RENDER_CONCURRENCY`` in the API.

A child whose parent dies exits too (a thread in it waits for its end of the
pipe to close), so no decoder outlives the worker that started it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.context import ForkServerContext
from typing import Any, Final, TypeVar

import anyio
import structlog

from workers.errors import JobFailed

logger = structlog.get_logger("depot.decoders")

T = TypeVar("T")
Progress = Callable[[float, str], Awaitable[None]]
Report = Callable[[float, str], None]

# What the fork server imports once, so that no child imports the decoding libraries
# itself (about a second each): the modules whose functions run in a child.
PRELOAD: Final = (
    "workers.visuals",
    "workers.thumbnails",
    "workers.convert",
    "workers.transcode",
    "workers.variants",
)
# How long a child may take to start (the fork server's first start imports PRELOAD).
START_SECONDS: Final = 120.0
# How long a killed child is waited for.
REAP_SECONDS: Final = 5.0

_lock = threading.Lock()
_context: ForkServerContext | None = None


def _fork_server() -> ForkServerContext:
    """The fork server context, its preload set before it first starts."""
    global _context
    with _lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(PRELOAD))
            _context = context
        return _context


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
    context = _fork_server()
    ours, theirs = context.Pipe(duplex=True)
    child = context.Process(
        target=_child, args=(theirs, task, progress is not None), daemon=True, name="depot-decoder"
    )
    try:
        # Off the loop: the fork server's first start imports the libraries.
        await anyio.to_thread.run_sync(child.start)
        theirs.close()  # ours must be the only other end, or a dead child's EOF never comes
        with anyio.fail_after(START_SECONDS):
            await _receive(ours, child, name)  # "started"
        with anyio.move_on_after(seconds) as timer:
            while True:
                kind, value = await _receive(ours, child, name)
                if kind == "progress" and progress is not None:
                    await progress(*value)
                    continue
                break
        if timer.cancelled_caught:
            raise JobFailed(
                f"Reading {name!r} took longer than {seconds:g} s, the limit ({setting})."
            )
        if kind == "failed":
            raise JobFailed(value)
        if kind == "error":
            raise RuntimeError(f"a decoder raised, reading {name!r}:\n{value}")
        result: T = value
        return result
    finally:
        ours.close()
        if child.is_alive():
            child.kill()
        await anyio.to_thread.run_sync(child.join, REAP_SECONDS)


async def _receive(
    conn: multiprocessing.connection.Connection, child: Any, name: str
) -> tuple[str, Any]:
    """The child's next message; ``JobFailed`` saying how it died if it is gone."""
    while not conn.poll():
        await anyio.wait_readable(conn.fileno())
    try:
        message: tuple[str, Any] = conn.recv()
    except (EOFError, OSError):
        await anyio.to_thread.run_sync(child.join, REAP_SECONDS)
        raise JobFailed(
            f"The decoder reading {name!r} stopped ({_how(child.exitcode)}): "
            "the file is damaged or made to harm."
        ) from None
    return message


def _how(exitcode: int | None) -> str:
    if exitcode is None:
        return "it closed its pipe"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


# ----------------------------------------------------------------- the child side


def _child(conn: multiprocessing.connection.Connection, task: Any, reports: bool) -> None:
    threading.Thread(target=_exit_with_parent, args=(conn,), daemon=True).start()
    conn.send(("started", None))

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


def _exit_with_parent(conn: multiprocessing.connection.Connection) -> None:
    """Wait for the parent's end to close (it never writes), then leave at once."""
    with contextlib.suppress(EOFError, OSError):
        conn.recv()
    os._exit(70)
