"""Real Depot processes for the benchmarks: started, waited on until they answer, stopped.

Every bench that needs ``depot serve`` or ``depot worker`` starts it the same
way: a child process of this interpreter, its output in a log file (shown
when it dies), configured only through ``DEPOT_*`` variables, on a free port
of 127.0.0.1. ::

    port = free_port()
    stack = Stack(workdir, depot_env(workdir / "var", workdir / "storage", port), port)
    try:
        serve = stack.start_serve()  # returns once /healthz answers 200
        ...
    finally:
        stack.stop()

Methods block; async benches call them through :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 20.0
# `depot` itself, run by this interpreter (so a virtualenv's or PYTHONPATH's Depot).
DEPOT: Final = ("-c", "from api.cli import main; main()")
WORKER_READY: Final = "Depot worker running"


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def progress(message: str) -> None:
    """A note on stderr, so that stdout carries only the report."""
    print(message, file=sys.stderr, flush=True)


def rss_bytes(pid: int) -> int:
    """The process's resident memory now (``VmRSS`` in ``/proc/<pid>/status``; Linux only)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time (user + system, every thread) the process has used so far (Linux /proc);
    with ``thread``, that thread's alone (``thread=pid``: the main thread, a
    ``depot serve``'s event loop).

    What a request or a job costs, unlike wall-clock rates, hardly depends on
    what else the machine runs: a loaded machine makes each request wait
    longer, not use more CPU (less so than instruction counts, which
    ``perf stat`` cannot read in most VMs and valgrind would take hours for).
    """
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path, encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # utime and stime, the 14th and 15th fields (counted from the pid).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Process:
    """A child process of this interpreter whose combined output goes to a log file.

    The log, not the terminal, so that a bench's report is not interleaved
    with server output; its tail is raised with the error when the process
    dies before it answers.
    """

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as output:
            self.popen = subprocess.Popen(
                [sys.executable, *args], env=dict(env), stdout=output, stderr=output
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def check_alive(self) -> None:
        """Raise, with the end of its output, if the process has exited."""
        if self.popen.poll() is not None:
            tail = self.output()[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def wait_for_output(self, marker: str, timeout_s: float = TIMEOUT_S) -> None:
        """Return once ``marker`` appears in its output (a worker has no port to ask)."""
        deadline = time.monotonic() + timeout_s
        while marker not in self.output():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {marker!r} not seen within {timeout_s:g} s")
            time.sleep(0.05)

    def wait_until_healthy(self, url: str, timeout_s: float = TIMEOUT_S) -> None:
        """Return once ``GET {url}/healthz`` answers 200."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=url, timeout=2) as client:
            while True:
                self.check_alive()
                with suppress(httpx.TransportError):
                    if client.get("/healthz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready within {timeout_s:g} s")
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within 20 s."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Stack:
    """``depot serve`` and ``depot worker``, configured alike, restartable one by one.

    Each start writes a new numbered log in ``workdir``.
    """

    workdir: Path
    env: dict[str, str]
    port: int
    serve: Process | None = None
    worker: Process | None = None
    _runs: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def _log(self, name: str) -> Path:
        self._runs += 1
        return self.workdir / f"{self._runs:02d}-{name}.log"

    def start_serve(self) -> Process:
        """``depot serve`` on ``port``, once it answers its health check."""
        args = [*DEPOT, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.serve = Process("depot serve", args, self.env, self._log("serve"))
        self.serve.wait_until_healthy(self.url)
        return self.serve

    def restart_serve(self) -> Process:
        """A fresh ``depot serve``: memory measured from a clean start."""
        if self.serve is not None:
            self.serve.stop()
        return self.start_serve()

    def start_worker(self) -> Process:
        """``depot worker``, once it says it runs."""
        self.worker = Process("depot worker", [*DEPOT, "worker"], self.env, self._log("worker"))
        self.worker.wait_for_output(WORKER_READY)
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def stop(self) -> None:
        self.stop_worker()
        if self.serve is not None:
            self.serve.stop()
            self.serve = None


# The action limits (core.ratelimit.ActionLimiter) every bench's Depot lifts.
RATE_LIMITS: Final = tuple(
    f"DEPOT_{kind}_LIMIT_PER_{who}"
    for kind, who in (
        ("REGISTER", "ADDRESS"),
        ("UPLOAD", "USER"),
        ("UPLOAD", "ADDRESS"),
        ("JOB", "USER"),
        ("JOB", "ADDRESS"),
        ("ACCESS_TOKEN", "USER"),
        ("ACCESS_TOKEN", "ADDRESS"),
    )
)


def depot_env(var_dir: Path, storage_dir: Path, port: int, **settings: str) -> dict[str, str]:
    """This environment without its ``DEPOT_*``, plus what every bench's Depot shares.

    ``settings`` are further variables by their full names
    (``DEPOT_REDIS_URL=...``). A fresh secret key each run; sign-in at OWASP's
    minimum Argon2id cost, since sign-in speed is not what these measure
    (``bench.login`` sets its costs itself); rate limits and socket caps lifted.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("DEPOT_")}
    env.update(
        DEPOT_ENVIRONMENT="development",
        DEPOT_VAR_DIR=str(var_dir),
        DEPOT_STORAGE_URL=storage_dir.resolve().as_uri(),
        DEPOT_SECRET_KEY=secrets.token_urlsafe(48),
        DEPOT_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        DEPOT_LOG_LEVEL="WARNING",
    )
    env["DEPOT_PASSWORD_HASH_MEMORY_KIB"] = "19456"  # noqa: S105 - a cost, not a secret
    env["DEPOT_PASSWORD_HASH_ITERATIONS"] = "2"  # noqa: S105
    # A bench's one account on one address makes a crowd's load: a person's rate
    # limits and socket caps would stop it. Throughput, not the limits, is measured.
    env.update(dict.fromkeys(RATE_LIMITS, "1000000/minute"))
    env["DEPOT_WS_CONNECTIONS_PER_USER"] = env["DEPOT_WS_CONNECTIONS_PER_ADDRESS"] = "100000"
    env.update(settings)
    return env


@asynccontextmanager
async def throwaway_postgres(server_url: str) -> AsyncIterator[str]:
    """A new, empty database on the server of ``server_url``; dropped afterwards."""
    server = make_url(server_url).set(drivername="postgresql+asyncpg")
    name = f"depot_bench_{secrets.token_hex(6)}"
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
