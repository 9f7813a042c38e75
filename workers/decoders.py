"""Media decoders run in a process of their own, under a time and a memory limit.

Hostile media is the norm: a decoder (libheif, libavif, PDFium, FFmpeg) fed a
crafted file may crash, loop, eat memory or take minutes. :func:`run_isolated`
runs one task — decode, resize, encode into files on disk — in a decoder
process and waits for it on the event loop:

- it answers what the task returned, or raises :class:`JobFailed` with the
  task's own message;
- past its limit (a setting, named in the message) the process is killed and
  the task fails: ``Reading 'a.pdf' took longer than 60 s, the limit
  (DEPOT_MEDIA_PICTURE_SECONDS).``; the clock starts when the process takes the
  task, so the decoder server's first start is never counted against the file;
- the process may allocate ``memory_mb`` beyond what it holds when it starts
  (``RLIMIT_DATA``: heap and private mappings, ``DEPOT_MEDIA_MEMORY_LIMIT_MB``);
  a decoder that asks for more gets ``MemoryError`` and the task fails saying so;
- a process that dies (a segfault, ``os._exit``, a ``SIGKILL``, the kernel's
  OOM killer) fails the task with its signal or exit status; the caller's
  process never notices more than that;
- a task given ``progress`` reports through it (``transcode``): the caller
  awaits each report, so a cancelled job raises ``JobCancelled`` there, and the
  process is killed at once. A cancelled caller (a job's time limit, a closed
  request) kills it too.

How: the first task starts a **decoder server**, one single-threaded process
(``spawn``) that imports the decoding libraries once (:data:`PRELOAD`) and
forks **warm children** from that template, one kept ready ahead of need.
Each child takes one task at a time from the server and answers its caller
directly over the caller's own pipe. A child that succeeded takes the next
task, up to :data:`TASKS_PER_CHILD`; one whose task failed, crashed, ran out
of time or memory, or was cancelled is gone, and a new one is forked. Why
reuse at all: a fresh process pays for every buffer its decoder touches as new
memory (page faults), which for a 1080p frame was most of the job's cost
(``bench/media.py``); a child that just succeeded has them at hand. Why only
after a success: a file that made a decoder fail may have left its heap in a
state no next file should meet; a file that decoded cleanly is a file like
any other. A crash or a kill costs that one task, never another one, nor the
server: the server, not the child, tells the caller how its child ended.
Not multiprocessing's fork server: it re-imports the parent's main module in
every child (``depot``'s, that is the whole API: 1.2 s measured); nor a
``ProcessPoolExecutor``: a crash breaks it and fails every task it holds. How
many run at once is bounded by the callers: a worker's threads, and
``DEPOT_VARIANT_RENDER_CONCURRENCY`` in the API.

Nothing outlives its parent: the server exits when its parent's end of their
pipe closes; a child is killed when the server dies (``PR_SET_PDEATHSIG``),
and by the server when its caller's end of the task's pipe closes. ``ps``
shows them as ``depot-decoders`` (the server) and ``depot-decoder``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any, Final, TypeVar

import anyio
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
# Tasks one child runs, all of them successful, before a fresh one replaces it: bounds
# what a heap can drift (fragmentation, a library's caches) over a long life.
TASKS_PER_CHILD: Final = 100
# Idle children kept: one is forked ahead of every task; more are kept after a burst.
MAX_IDLE: Final = 2
# prctl(2): the signal a process gets when its parent dies; a process's name (``comm``).
_PR_SET_PDEATHSIG: Final = 1
_PR_SET_NAME: Final = 15
# What ``ps``, ``top`` and /proc/<pid>/comm call the server and its children.
SERVER_NAME: Final = "depot-decoders"
CHILD_NAME: Final = "depot-decoder"
# glibc's mallopt(3) parameters, and what the server sets them to (its children inherit
# them): allocations up to MMAP_THRESHOLD come from the heap, and up to TRIM_THRESHOLD of
# freed heap is kept rather than handed back to the kernel. See `_keep_freed_memory`.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 32 * 1024 * 1024
TRIM_THRESHOLD: Final = 128 * 1024 * 1024


class _Server:
    """This process's decoder server: started with the first task, again if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._requests: Connection | None = None

    def submit(self, task: Any, reports: bool, memory_mb: int, theirs: Connection) -> None:
        """Hand the server a task and the child's end of its pipe. Blocking (a first
        start takes seconds): call it off the event loop."""
        with self._lock:
            for attempt in (1, 2):
                requests = self._running()
                try:
                    requests.send((task, reports, memory_mb))
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
    memory_mb: int,
    progress: Progress | None = None,
) -> T:
    """``task()`` — or ``task(report)`` when ``progress`` is given — in a decoder process.

    ``task`` must pickle (a module-level function, or a ``functools.partial`` of
    one over plain values) and so must what it returns. ``name`` is the file
    as its owner knows it; ``seconds`` the limit, from the setting ``setting``;
    ``memory_mb`` what the task may allocate (``DEPOT_MEDIA_MEMORY_LIMIT_MB``).
    """
    ours, theirs = multiprocessing.Pipe(duplex=True)
    pid: int | None = None
    ended = timed_out = False
    try:
        try:
            await anyio.to_thread.run_sync(
                _server.submit, task, progress is not None, memory_mb, theirs
            )
        finally:
            theirs.close()  # the server's copy is the only other end: its EOF means it died
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
        if kind == "memory":
            raise JobFailed(
                f"Reading {name!r} needed more than the {memory_mb} MB of memory a decoder "
                "may use (DEPOT_MEDIA_MEMORY_LIMIT_MB)."
            )
        if kind == "failed":
            raise JobFailed(value)
        if kind == "error":
            raise RuntimeError(f"a decoder raised, reading {name!r}:\n{value}")
        result: T = value
        return result
    finally:
        if pid is not None and not ended and not _answered(ours):
            # Still on our task (the server reaps it only once it is dead): stop it now.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        ours.close()


def _answered(conn: Connection) -> bool:
    """Whether the child already sent its answer (and so may be on another caller's task,
    which a kill would fail): what is left in the pipe, read without waiting."""
    with contextlib.suppress(EOFError, OSError):
        while conn.poll():
            if conn.recv()[0] not in ("started", "progress"):
                return True
    return False


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


@dataclass
class _Child:
    """A warm child as the server sees it: its pid, its end of their pipe, its task."""

    pid: int
    control: Connection
    # The caller's pipe of the task it runs (the server's copy), or None when idle.
    caller: Connection | None = None


def _serve(requests: Connection) -> None:
    """The decoder server's loop: hand each task to a warm child, tell callers of deaths."""
    _prctl(_PR_SET_NAME, SERVER_NAME.encode())
    _keep_freed_memory()
    for module in PRELOAD:
        __import__(module)
    _warm()
    # What is loaded now is never collected: a child's collections skip it instead of
    # touching (and so copying) every page of the heap it shares with the server.
    gc.freeze()
    children = _Children(requests)
    children.spare()
    while True:
        ready = multiprocessing.connection.wait(children.waiting())
        # Children first: one that said it is done is no longer its caller's, whose
        # pipe may be closing right after the answer.
        for child in children.all():
            if child.control in ready:
                children.heard(child)
        for child in children.busy():
            if child.caller is not None and child.caller in ready:
                # The caller never writes: readable means its end closed (it gave up).
                os.kill(child.pid, signal.SIGKILL)  # reaped when its pipe's EOF comes
                child.caller.close()
                child.caller = None
        if requests in ready:
            children.spare()
            try:
                task, reports, memory_mb = requests.recv()
                fd = recv_handle(requests)
            except (EOFError, OSError):
                os._exit(0)  # the parent is gone; its children follow (PDEATHSIG)
            with contextlib.closing(Connection(fd)) as caller:
                children.hand(caller, (task, reports, memory_mb))
            children.spare()  # the next task's child, forked before it comes
        children.reap_leaving()


class _Children:
    """The server's warm children: idle, busy (each with its caller's pipe), leaving."""

    def __init__(self, requests: Connection) -> None:
        self._requests = requests
        self._idle: list[_Child] = []
        self._busy: dict[int, _Child] = {}
        self._leaving: list[int] = []

    def all(self) -> list[_Child]:
        return [*self._idle, *self._busy.values()]

    def busy(self) -> list[_Child]:
        return list(self._busy.values())

    def waiting(self) -> list[Any]:
        """What the server waits on: the requests, every child, every busy caller."""
        callers = [c.caller for c in self._busy.values() if c.caller is not None]
        return [self._requests, *(c.control for c in self.all()), *callers]

    def spare(self) -> None:
        """Make sure one idle child is ready."""
        if not self._idle:
            self._idle.append(self._fork())

    def _fork(self) -> _Child:
        theirs, ours = multiprocessing.Pipe(duplex=True)
        pid = os.fork()
        if pid == 0:
            # Only its own pipe: no other child's, no caller's, not the server's.
            for child in self.all():
                child.control.close()
                if child.caller is not None:
                    child.caller.close()
            self._requests.close()
            ours.close()
            _child(theirs)
        theirs.close()
        return _Child(pid, ours)

    def hand(self, caller: Connection, task: tuple[Any, bool, int]) -> None:
        """Give an idle child the task and the caller's pipe (a child that died idle is
        replaced, and the next one tried)."""
        while True:
            child = self._idle.pop() if self._idle else self._fork()
            try:
                child.control.send(task)
                send_handle(child.control, caller.fileno(), child.pid)
            except OSError:
                child.control.close()
                _reap(child.pid)
                continue
            child.caller = Connection(os.dup(caller.fileno()))
            self._busy[child.pid] = child
            return

    def heard(self, child: _Child) -> None:
        """A child spoke: it is done with its task (ready for another, or leaving), or its
        pipe closed: it ended, and if it was on a task, the caller hears how."""
        try:
            keep: bool = child.control.recv()
        except (EOFError, OSError):
            code = _reap(child.pid)
            if child.caller is not None:
                with contextlib.suppress(OSError):
                    child.caller.send(("exit", code))
            self._forget(child)
            child.control.close()
            return
        self._forget(child)
        if keep and len(self._idle) < MAX_IDLE:
            self._idle.append(child)
            return
        # Leaving: it may still be sending its answer, so it is closed, not killed; its
        # next receive ends it.
        child.control.close()
        self._leaving.append(child.pid)

    def _forget(self, child: _Child) -> None:
        if child.caller is not None:
            child.caller.close()
            child.caller = None
        self._busy.pop(child.pid, None)
        with contextlib.suppress(ValueError):
            self._idle.remove(child)

    def reap_leaving(self) -> None:
        """Collect the children that left (a zombie meanwhile costs nothing)."""
        for pid in list(self._leaving):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            self._leaving.remove(pid)


def _reap(pid: int) -> int:
    """Wait for a child whose pipe closed (killing it, should it live on); its exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _keep_freed_memory() -> None:
    """Let a warm child keep the memory its last task freed, for its next task.

    With glibc's defaults a child gave its frame buffers back to the kernel
    after every task (trimmed, or unmapped for being large), and its next task
    paid for them again as page faults: a 1080p frame's thumbnail took 4,570
    minor faults and ~10 ms more CPU in a child than in a process that had
    decoded one before (``bench/README.md``, "media.py"), a 5 s transcode
    12,400 faults. Fixed thresholds (32 MiB, the largest glibc's own dynamic
    threshold reaches; 128 MiB kept free at most) bring both to a few dozen.
    What is kept stays in the child's ``VmData``, which ``RLIMIT_DATA`` counts,
    but a task reuses it before asking for more, so each may still allocate its
    ``memory_mb``. Elsewhere (not Linux, or a libc without ``mallopt``) nothing
    changes.
    """
    if sys.platform != "linux":
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def _warm() -> None:
    """What the libraries do once per process on first use, done here for every child:
    Pillow imports its format plugins (115 ms, measured); FFmpeg's decoders fill
    their static tables when first opened. PyAV is imported here, in the decoder
    server, so the processes that start it do not load it."""
    import av

    Image.init()
    for codec in WARM_DECODERS:
        with contextlib.suppress(Exception):  # a codec this build lacks
            av.CodecContext.create(codec, "r").open()


# ----------------------------------------------------------------- a child


def _child(control: Connection) -> None:
    """A warm child's life: tasks from the server, one at a time, each answered to its
    caller; it leaves after a task that did not succeed, or after TASKS_PER_CHILD."""
    _prctl(_PR_SET_NAME, CHILD_NAME.encode())
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() == 1:
        os._exit(0)  # the server died before the line above
    base = _data_bytes()
    for done in range(1, TASKS_PER_CHILD + 1):
        try:
            task, reports, memory_mb = control.recv()
            caller = Connection(recv_handle(control))
        except (EOFError, OSError):
            os._exit(0)
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = base + memory_mb * 1024 * 1024
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        answer = _run(caller, task, reports)
        if answer[0] != "done" or done == TASKS_PER_CHILD:
            # The answer, then the end: the server tells the caller nothing it can miss.
            with contextlib.suppress(OSError):
                caller.send(answer)
            os._exit(0)
        with contextlib.suppress(OSError):
            # Before the answer: once the caller has it, it closes its pipe, and the
            # server must know by then that this child is no longer on that task.
            control.send(True)
        with contextlib.suppress(OSError):
            caller.send(answer)
        caller.close()
        del answer, task
    os._exit(0)


def _run(caller: Connection, task: Any, reports: bool) -> tuple[str, Any]:
    """Run the task; what to tell its caller of how it went."""
    try:
        caller.send(("started", os.getpid()))

        def report(fraction: float, message: str) -> None:
            caller.send(("progress", (fraction, message)))

        result = task(report) if reports else task()
    except JobFailed as failed:
        return ("failed", str(failed))
    except MemoryError:
        return ("memory", None)
    except BaseException:  # noqa: BLE001 - a bug, told to the caller to log
        return ("error", traceback.format_exc())
    return ("done", result)


def _prctl(option: int, value: int | bytes) -> None:
    """prctl(2) where there is one (Linux); elsewhere nothing."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(option, value)


def _data_bytes() -> int:
    """What this process holds under ``RLIMIT_DATA`` (``VmData``), in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0
