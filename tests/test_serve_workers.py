"""``depot serve --workers N``: several processes on one port, one set of metrics.

Real processes throughout: ``depot serve --workers 2`` and ``depot worker``
over Redis, driven over HTTP and WebSocket.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, WebSocketNetworkError
from wsproto.utilities import LocalProtocolError

from core.settings import Settings
from tests.conftest import make_settings
from tests.processes import (
    DEPOT,
    DepotProcess,
    depot_serve,
    depot_worker,
    free_port,
    in_background,
    settings_env,
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
# Fresh connections, so the kernel hands them to whichever process accepts first.
NO_REUSE = httpx.Limits(max_keepalive_connections=0)


def _settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_url,
        redis_url=require_service("DEPOT_TEST_REDIS_URL", "Redis"),
        storage_url=storage_root(tmp_path).as_uri(),
        job_heartbeat_seconds=0.2,
    )


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


async def _alive(ws: AsyncWebSocketSession) -> bool:
    """Whether the socket's server is still there: a dead one's socket ends at once, a
    live one just has nothing to say."""
    try:
        await ws.receive_json(timeout=3)
    except TimeoutError:
        return True
    except (WebSocketDisconnect, WebSocketNetworkError):
        return False
    return True


@asynccontextmanager
async def _socket(client: httpx.AsyncClient, token: str) -> AsyncIterator[AsyncWebSocketSession]:
    """A signed-in socket whose server may die under it: its closing errors are expected."""
    try:
        async with subscriber(client, token) as ws:
            yield ws
    except* (WebSocketNetworkError, WebSocketDisconnect, LocalProtocolError):
        pass


async def _sockets(
    client: httpx.AsyncClient, token: str, count: int, stack: AsyncExitStack
) -> list[AsyncWebSocketSession]:
    return [await stack.enter_async_context(_socket(client, token)) for _ in range(count)]


@pytest.mark.redis
async def test_workers_share_the_port_the_metrics_and_the_events(
    tmp_path: Path, database_url: str
) -> None:
    settings = _settings(tmp_path, database_url)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            in_background(
                depot_serve(
                    settings,
                    tmp_path / "serve.log",
                    port,
                    options=["--workers", "2"],
                    timeout_s=START_S,
                )
            )
        )
        directory = _metrics_directory(server)
        await stack.enter_async_context(
            in_background(depot_worker(settings, tmp_path / "worker.log"))
        )
        requests = 60
        async with httpx.AsyncClient(base_url=base_url, limits=NO_REUSE) as client:
            [before] = await _scrapes(base_url, 1)
            async with anyio.create_task_group() as group:
                for _ in range(requests):
                    group.start_soon(client.get, "/healthz")
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
async def test_a_killed_worker_process_leaves_no_live_gauges(
    tmp_path: Path, database_url: str
) -> None:
    settings = _settings(tmp_path, database_url)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            in_background(
                depot_serve(
                    settings,
                    tmp_path / "serve.log",
                    port,
                    options=["--workers", "2"],
                    timeout_s=START_S,
                )
            )
        )
        directory = _metrics_directory(server)
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=base_url, limits=NO_REUSE)
        )
        token, _ = await signed_in(client)
        sockets = await _sockets(client, token, 12, stack)
        for series in await _scrapes(base_url, 4):
            assert total(series, "depot_websocket_connections") == len(sockets)
        pids = _serving_pids(directory)
        assert len(pids) == 2, "both processes answered"
        os.kill(min(pids), signal.SIGKILL)
        # uvicorn replaces it; the scrape drops what the dead one held open.
        await anyio.sleep(0.5)
        open_now = sum([await _alive(ws) for ws in sockets])
        assert 0 < open_now < len(sockets), "each process held some of the sockets"
        with anyio.fail_after(WAIT_S):
            while True:
                scraped = await _scrapes(base_url, 4)
                if all(total(s, "depot_websocket_connections") == open_now for s in scraped):
                    break
                await anyio.sleep(0.2)


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
