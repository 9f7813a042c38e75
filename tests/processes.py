"""Depot's own commands as real processes, configured like the app under test."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
import redis

from core.settings import Settings

DEPOT = Path(sys.executable).parent / "depot"
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30

T = TypeVar("T")


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the DEPOT_* variables that recreate them in another process."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    if "PYTHONPATH" in os.environ:
        # A checkout other than the installed one (a git worktree) runs its own code.
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    # S3 credentials come from the AWS chain, not the settings (see storage.s3).
    env.update({name: value for name, value in os.environ.items() if name.startswith("AWS_")})
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = ",".join(value)
        elif isinstance(value, dict):
            value = json.dumps(value)
        env[f"DEPOT_{name.upper()}"] = str(value)
    return env


def wait_until_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    what: str,
    *,
    timeout_s: float = START_TIMEOUT_S,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``ready`` until it holds: the one "start a process and wait until it answers".

    Fails the test, with the process's ``output``, if the process exits first
    or does not answer in time: ``timeout_s``, stretched by the machine's load
    (:func:`_allowed_s`).
    """
    started = time.monotonic()
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{output()}")
        waited = time.monotonic() - started
        if waited > timeout_s and waited > (allowed := _allowed_s(timeout_s)):
            pytest.fail(
                f"{what} did not answer within {allowed:.0f} s ({timeout_s} s at a load "
                f"of {_load_per_core():.1f} per core):\n{output()}"
            )
        time.sleep(0.02)


# How far a start's wait stretches under load: a process that did not answer in this
# many times its time is stuck, not slow.
MOST_STRETCH = 8


def _load_per_core() -> float:
    """The run queue per core over the last minute (1 where the system does not say)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 1.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return load / (cores or 1)


def _allowed_s(timeout_s: float) -> float:
    """``timeout_s`` times the load per core, when above one (up to :data:`MOST_STRETCH`).

    A start is mostly Python importing Depot, ~2.5 s of CPU: at a load of 9 per core
    (other suites beside this one) it gets a ninth of a core and takes nine times
    as long, and a fixed 30 s failed starts that were only slow.
    """
    return timeout_s * min(max(1.0, _load_per_core()), MOST_STRETCH)


def answers_http(url: str, status: int | None = 200) -> Callable[[], bool]:
    """A ``ready`` check: ``url`` answers a GET with ``status`` (``None``: with anything).

    The GET only once the port takes a connection: a refused connect costs
    microseconds of CPU, an ``httpx.get`` ~30 ms (a new client and its TLS
    context each time). Polled every 20 ms through a start of seconds, the GETs
    alone kept a core busy, racing the very process they waited for.
    """
    address = httpx.URL(url)
    port = address.port or (443 if address.scheme == "https" else 80)

    def ready() -> bool:
        try:
            socket.create_connection((address.host, port), timeout=1).close()
        except OSError:
            return False
        try:
            answer = httpx.get(url, timeout=1)
        except httpx.TransportError:
            return False
        return status is None or answer.status_code == status

    return ready


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class DepotProcess:
    """A running ``depot`` command and its combined output."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, start: int = 0) -> None:
        self.process = process
        self.log = log
        # Where this process's output begins in ``log``, which an earlier one may have
        # written to (a shared worker's log holds every start of the session's).
        self.start = start
        # How long ``stop`` waits; ``depot serve --workers`` may need longer.
        self.stop_timeout_s: float = STOP_TIMEOUT_S

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def own_output(self) -> str:
        """What this process wrote, without what came before it in ``log``."""
        with self.log.open("rb") as log:
            log.seek(self.start)
            return log.read().decode("utf-8", errors="replace")

    def wait_for_output(self, text: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until this process has written ``text``: an earlier process's line in the same
        log does not count (a worker started again would be taken as running at once)."""
        wait_until_ready(
            self.process,
            lambda: text in self.own_output(),
            f"depot (for {text!r})",
            timeout_s=timeout_s,
            output=self.output,
        )

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a machine dies."""
        self.process.kill()
        self.process.wait(STOP_TIMEOUT_S)

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed if it does not stop in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"depot did not stop on SIGTERM:\n{self.output()}")
        return self.process.returncode


@contextlib.contextmanager
def depot(
    args: list[str],
    settings: Settings,
    log: Path,
    *,
    ready: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[DepotProcess]:
    """Run ``depot <args>`` with ``settings`` (and the variables ``env``, such as
    ``OTEL_*``); stopped with SIGTERM when the block ends."""
    with log.open("ab") as output:
        start = output.tell()
        process = subprocess.Popen(
            [str(DEPOT), *args],
            env={**settings_env(settings), **(env or {})},
            stdout=output,
            stderr=output,
        )
    running = DepotProcess(process, log, start)
    try:
        if ready is not None:
            running.wait_for_output(ready)
        yield running
    finally:
        running.stop()


@contextlib.contextmanager
def depot_worker(
    settings: Settings, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[DepotProcess]:
    """A ``depot worker`` process, once it takes jobs."""
    with depot(["worker"], settings, log, ready="Depot worker running", env=env) as worker:
        yield worker


# -- added for the fault tests ------------------------------------------------------

REDIS_START_TIMEOUT_S = 10


@contextlib.asynccontextmanager
async def in_background(blocking: contextlib.AbstractContextManager[T]) -> AsyncIterator[T]:
    """Enter and leave a blocking context (starting or stopping a process) in a thread.

    The event loop goes on serving meanwhile: an in-process app, its
    subscriptions and its clients do not stall while a process starts or stops.
    Leaving is shielded, so a test that times out still stops its processes.
    """
    value = await anyio.to_thread.run_sync(blocking.__enter__)
    try:
        yield value
    except BaseException:
        with anyio.CancelScope(shield=True):
            if not await anyio.to_thread.run_sync(blocking.__exit__, *sys.exc_info()):
                raise
    else:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(blocking.__exit__, None, None, None)


Starting = contextlib.AbstractContextManager[Any] | contextlib.AbstractAsyncContextManager[Any]


async def start_together(stack: contextlib.AsyncExitStack, *contexts: Starting) -> list[Any]:
    """Enter several contexts that start processes at once, on ``stack``; their values.

    Each blocking one starts in a thread of its own, so two processes import at
    the same time instead of one after the other; the async ones (an in-process
    app) are entered meanwhile in the caller's own task, as the cancel scopes
    of asgi-lifespan and httpx-ws require. Every blocking start runs to its end
    even when another fails, and is on ``stack``, which stops it; leaving runs
    in a thread too (:func:`in_background`).
    """
    values: list[Any] = [None] * len(contexts)
    threads = ThreadPoolExecutor(max(1, len(contexts)), thread_name_prefix="start-together")
    blocking = [
        (index, context, threads.submit(context.__enter__))
        for index, context in enumerate(contexts)
        if not isinstance(context, contextlib.AbstractAsyncContextManager)
    ]
    threads.shutdown(wait=False)
    failures: list[BaseException] = []
    try:
        for index, context in enumerate(contexts):
            if isinstance(context, contextlib.AbstractAsyncContextManager):
                values[index] = await stack.enter_async_context(context)
    finally:
        for index, context, entered in blocking:
            with anyio.CancelScope(shield=True):
                try:
                    values[index] = await anyio.to_thread.run_sync(entered.result)
                except BaseException as exc:  # noqa: BLE001 - raised below, once all started
                    failures.append(exc)
                    continue
            stack.push_async_exit(_leave_in_background(context))
    if failures:
        raise failures[0]
    return values


def _leave_in_background(
    blocking: contextlib.AbstractContextManager[Any],
) -> Callable[..., Coroutine[Any, Any, bool | None]]:
    """An exit callback for ``AsyncExitStack.push_async_exit``: ``blocking``'s
    ``__exit__`` in a thread, shielded, so a test that times out still stops it."""

    async def leave(*exc_info: Any) -> bool | None:
        with anyio.CancelScope(shield=True):
            return await anyio.to_thread.run_sync(blocking.__exit__, *exc_info)

    return leave


@contextlib.contextmanager
def depot_scheduler(settings: Settings, log: Path) -> Iterator[DepotProcess]:
    """A ``depot scheduler`` process, once its maintenance is scheduled."""
    with depot(["scheduler"], settings, log, ready="maintenance scheduled") as scheduler:
        yield scheduler


@contextlib.contextmanager
def depot_serve(
    settings: Settings,
    log: Path,
    port: int,
    env: Mapping[str, str] | None = None,
    *,
    options: Sequence[str] = (),
    timeout_s: float = START_TIMEOUT_S,
) -> Iterator[DepotProcess]:
    """``depot serve`` on ``port`` with more ``options``, once it answers ``/healthz``."""
    with depot(["serve", "--port", str(port), *options], settings, log, env=env) as server:
        healthz = answers_http(f"http://127.0.0.1:{port}/healthz")
        wait_until_ready(
            server.process, healthz, "depot serve", timeout_s=timeout_s, output=server.output
        )
        yield server


class RedisServer:
    """A private ``redis-server`` on a loopback port, without persistence.

    Stopping it loses everything it held, as a Redis restarted without a disk
    does: queued messages, event streams, locks. :meth:`start` brings it back,
    empty, on the same port.
    """

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        log = self.directory / f"redis-{self.port}.log"
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    *("--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                    *("--dir", str(self.directory)),
                ],
                stdout=output,
                stderr=output,
            )
        with redis.Redis.from_url(self.url) as client:

            def answers() -> bool:
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    return False

            wait_until_ready(
                self.process,
                answers,
                "redis-server",
                timeout_s=REDIS_START_TIMEOUT_S,
                output=lambda: log.read_text(errors="replace"),
            )

    def stop(self) -> None:
        """SIGTERM: it exits without saving anything (no persistence is configured)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` of the test's own, stopped when the block ends.

    Tests that stop Redis, or whose workers and schedulers must not meet
    another test's (Dramatiq's queue and the maintenance lock have fixed
    names), use one. Without ``redis-server`` on PATH: skipped, or failed in CI.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not on PATH, but CI must run the Redis fault tests")
        pytest.skip("redis-server is not on PATH; install Redis to run the fault tests")
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(binary, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
