"""``depot serve --workers N``: several processes on one port, one set of metrics.

Real processes throughout: ``depot serve --workers 2`` and ``depot worker``
over Redis, driven over HTTP and WebSocket.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, WebSocketNetworkError
from wsproto.utilities import LocalProtocolError

from api.cli import WORKER_HEALTHCHECK_S
from core.settings import Settings
from tests.conftest import make_settings
from tests.processes import (
    DEPOT,
    STOP_TIMEOUT_S,
    DepotProcess,
    depot_serve,
    depot_worker,
    free_port,
    in_background,
    settings_env,
    start_together,
    wait_until_ready,
)
from tests.support import (
    JOB_EVENTS,
    next_message,
    require_service,
    signed_in,
    start_job,
    storage_root,
    subscribe,
    subscriber,
    upload_file,
)
from tests.test_metrics import parse, total

pytestmark = pytest.mark.anyio

WAIT_S = 30
# Each process imports Depot before it answers: on a busy 2-core machine, two at
# once take a while.
START_S = 120
MAX_SOCKETS = 60
MAX_REQUESTS = 600
# What uvicorn logs as each process has run the app's startup.
STARTED = "Application startup complete."
# Fresh connections, so the kernel hands them to whichever process accepts first.
NO_REUSE = httpx.Limits(max_keepalive_connections=0)


def _metrics_directory(server: DepotProcess) -> Path:
    server.wait_for_output("metrics shared under")
    found = re.search(r"metrics shared under (\S+)", server.output())
    assert found is not None, server.output()
    return Path(found[1])


def _serving_pids(directory: Path) -> set[int]:
    """The processes that have counted something (prometheus-client names files by pid)."""
    return {
        int(m[1]) for p in directory.iterdir() if (m := re.fullmatch(r"counter_(\d+)\.db", p.name))
    }


async def _scrapes(
    base_url: str, count: int
) -> list[dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """``count`` scrapes, each on a connection of its own (so any process may answer)."""
    async with httpx.AsyncClient(base_url=base_url, limits=NO_REUSE) as client:
        return [parse((await client.get("/metrics")).text) for _ in range(count)]


def _children(pid: int) -> set[int]:
    """The processes ``pid`` started (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def _sockets_held(pids: set[int], port: int) -> dict[int, int]:
    """How many established TCP connections on ``port`` each process holds (Linux /proc)."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # ESTABLISHED
                    established.add(fields[9])  # the socket's inode
    held = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        inodes = {os.readlink(fd).removeprefix("socket:[").rstrip("]") for fd in fds.iterdir()}
        held[pid] = len(inodes & established)
    return held


@asynccontextmanager
async def _socket(client: httpx.AsyncClient, token: str) -> AsyncIterator[AsyncWebSocketSession]:
    """A signed-in socket whose server may die under it: its closing errors are expected."""
    try:
        async with subscriber(client, token) as ws:
            yield ws
    except* (
        WebSocketNetworkError,
        WebSocketDisconnect,
        LocalProtocolError,
        anyio.ClosedResourceError,
        anyio.BrokenResourceError,
        httpx.TransportError,
    ):
        pass


async def open_sockets_on_each(
    client: httpx.AsyncClient,
    token: str,
    server: DepotProcess,
    port: int,
    processes: int,
    stack: AsyncExitStack,
) -> tuple[list[AsyncWebSocketSession], dict[int, int]]:
    """Signed-in sockets on ``stack``, opened until each of ``server``'s ``processes`` holds
    some, and how many each holds (by pid).

    Whichever process accepts first gets a connection (``client`` must not reuse
    them), so it takes a few rounds.
    """
    pids = _children(server.process.pid) if processes > 1 else {server.process.pid}
    batch = 4 if processes > 1 else 1
    sockets: list[AsyncWebSocketSession] = []
    held: dict[int, int] = {}
    while len(sockets) < MAX_SOCKETS and sum(1 for n in held.values() if n) < processes:
        for _ in range(batch):
            sockets.append(await stack.enter_async_context(_socket(client, token)))
        held = _sockets_held(pids, port)
    assert sum(1 for n in held.values() if n) == processes, f"sockets by process: {held}"
    return sockets, held


@dataclass
class Serving:
    """``depot serve --workers 2`` on a port of its own, and the directory of its metrics."""

    server: DepotProcess
    port: int
    settings: Settings
    metrics: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_url,
        redis_url=require_service("DEPOT_TEST_REDIS_URL", "Redis"),
        storage_url=storage_root(tmp_path).as_uri(),
        job_heartbeat_seconds=0.2,
        # The kill test opens sockets until both processes hold some.
        ws_connections_per_user=MAX_SOCKETS,
    )


@asynccontextmanager
async def _serving(settings: Settings, tmp_path: Path) -> AsyncIterator[Serving]:
    port = free_port()
    async with serve_processes(settings, tmp_path / "serve.log", port, 2) as server:
        yield Serving(server, port, settings, _metrics_directory(server))


@asynccontextmanager
async def serve_processes(
    settings: Settings, log: Path, port: int, processes: int
) -> AsyncIterator[DepotProcess]:
    """``depot serve`` (``--workers processes`` past one), once every process has started.

    The first process to start answers ``/healthz`` alone; one still importing
    Depot would take no connection, and a test that needs each to hold some
    would wait in vain.
    """
    options = ["--workers", str(processes)] if processes > 1 else []
    serve = depot_serve(settings, log, port, options=options, timeout_s=START_S)
    async with in_background(serve) as server:
        # uvicorn's supervisor handles signals between its pings of each process; one
        # killed mid-ping holds it for the whole ping timeout before SIGTERM is seen.
        server.stop_timeout_s = STOP_TIMEOUT_S + WORKER_HEALTHCHECK_S
        await anyio.to_thread.run_sync(
            functools.partial(
                wait_until_ready,
                server.process,
                lambda: server.output().count(STARTED) >= processes,
                f"{processes} processes of depot serve",
                timeout_s=START_S,
                output=server.output,
            )
        )
        yield server


@pytest.mark.redis
async def test_workers_share_the_port_the_metrics_and_the_events(
    tmp_path: Path, database_url: str
) -> None:
    settings = _settings(tmp_path, database_url)
    async with AsyncExitStack() as stack:
        serving, _ = await start_together(
            stack, _serving(settings, tmp_path), depot_worker(settings, tmp_path / "worker.log")
        )
        base_url, directory = serving.base_url, serving.metrics
        requests = 0
        async with httpx.AsyncClient(base_url=base_url, limits=NO_REUSE) as client:
            [before] = await _scrapes(base_url, 1)
            # A connection goes to whichever process accepts first: send until both answered.
            while requests < MAX_REQUESTS and len(_serving_pids(directory)) < 2:
                async with anyio.create_task_group() as group:
                    for _ in range(30):
                        group.start_soon(client.get, "/healthz")
                requests += 30
            assert len(_serving_pids(directory)) == 2, "both processes answered requests"
            # Whichever process answers, it counts every process's requests.
            healthz = {"route": "/healthz", "status": "200"}
            expected = total(before, "depot_http_requests_total", **healthz) + requests
            for series in await _scrapes(base_url, 6):
                assert total(series, "depot_http_requests_total", **healthz) == expected

            # A subscriber on one process hears a job that a `depot worker` runs.
            token, headers = await signed_in(client)
            file = await upload_file(client, headers, "a.txt", b"hello\n")
            async with subscriber(client, token) as ws:
                job = await start_job(client, headers, {"verify": {"fileId": file["id"]}})
                await subscribe(ws, "job", JOB_EVENTS, {"id": job["id"], "after": None})
                statuses = []
                with anyio.fail_after(WAIT_S):
                    while (message := await next_message(ws))["type"] != "complete":
                        statuses.append(message["payload"]["data"]["jobEvents"]["status"])
                assert statuses[-1] == "SUCCEEDED", statuses
            # Read from the database at each scrape, by whichever process answers.
            for series in await _scrapes(base_url, 2):
                assert total(series, "depot_jobs_queued") == 0
                assert total(series, "depot_jobs_running") == 0
    assert not directory.exists(), "depot serve removes the metrics directory it made"


@pytest.mark.redis
# Which database the processes use plays no part in their gauges: one is enough.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_killed_worker_process_leaves_no_live_gauges(
    tmp_path: Path, database_url: str
) -> None:
    async with AsyncExitStack() as stack:
        serving = await stack.enter_async_context(
            _serving(_settings(tmp_path, database_url), tmp_path)
        )
        base_url, directory = serving.base_url, serving.metrics
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=base_url, limits=NO_REUSE)
        )
        token, _ = await signed_in(client)
        # Apart from the test's own stack: closing a dead socket raises, and nested in
        # the stack those errors would bury whatever the test itself raised.
        sockets_stack = AsyncExitStack()
        try:
            sockets, held = await open_sockets_on_each(
                client, token, serving.server, serving.port, 2, sockets_stack
            )
            for series in await _scrapes(base_url, 4):
                assert total(series, "depot_websocket_connections") == len(sockets)
            victim = max(held, key=lambda pid: held[pid])
            os.kill(victim, signal.SIGKILL)
            # uvicorn replaces it; the scrape drops what the dead one held open.
            expected = len(sockets) - held[victim]
            seen: list[float] = []
            deadline = anyio.current_time() + WAIT_S
            while anyio.current_time() < deadline:
                seen = [
                    total(s, "depot_websocket_connections") for s in await _scrapes(base_url, 4)
                ]
                if seen == [expected] * 4:
                    break
                await anyio.sleep(0.2)
            assert seen == [expected] * 4, (held, victim, sorted(os.listdir(directory)))
        finally:
            await sockets_stack.aclose()


def test_workers_are_refused_in_the_embedded_mode(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    completed = subprocess.run(
        [str(DEPOT), "serve", "--port", str(free_port()), "--workers", "2"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert "--workers needs DEPOT_REDIS_URL" in completed.stderr
