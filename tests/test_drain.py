"""Graceful drain of a real ``depot serve``, of one process and of ``--workers 2``:
SIGTERM makes it unready at once, it keeps serving for the drain delay,
finishes what is in flight, closes WebSockets with 1012 and exits 0."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx
import pytest
from httpx_ws import WebSocketDisconnect

from tests.conftest import make_settings
from tests.processes import free_port
from tests.support import (
    CSRF_HEADER,
    ME,
    UPLOAD_FILE,
    graphql,
    require_service,
    signed_in,
    subscribe,
)
from tests.test_serve_workers import open_sockets_on_each, serve_processes

pytestmark = pytest.mark.anyio

DELAY_S = 1.5
MAX_SOCKETS = 60
SUPERVISOR_TICK_S = 0.5
NO_REUSE = httpx.Limits(max_keepalive_connections=0)
MY_EVENTS = "subscription { myEvents { cursor type } }"
BOUNDARY = "drain-test-boundary"


async def _slow_multipart(data: bytes, pieces: int, pause_s: float) -> AsyncIterator[bytes]:
    """An ``uploadFile`` request body that takes ``pieces * pause_s`` to arrive."""
    operations = {"query": UPLOAD_FILE, "variables": {"file": None, "path": "slow.bin"}}
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="operations"\r\n\r\n'
        f"{json.dumps(operations)}\r\n"
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="map"\r\n\r\n'
        '{"0": ["variables.file"]}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="0"; filename="slow.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    yield head.encode()
    size = len(data) // pieces
    for i in range(pieces):
        await anyio.sleep(pause_s)
        yield data[i * size : (i + 1) * size if i < pieces - 1 else len(data)]
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.redis)])
async def test_sigterm_drains_then_closes_websockets_with_1012(
    tmp_path: Path, processes: int
) -> None:
    """One process, and each of ``--workers 2`` (uvicorn's supervisor forwards the signal)."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    overrides: dict[str, object] = {}
    if processes > 1:
        overrides = {
            "redis_url": require_service("DEPOT_TEST_REDIS_URL", "Redis"),
            "ws_connections_per_user": MAX_SOCKETS,
        }
    settings = make_settings(
        tmp_path,
        storage_url=(tmp_path / "files").as_uri(),
        drain_delay_seconds=DELAY_S,
        **overrides,
    )
    data = bytes(range(256)) * 400
    async with (
        serve_processes(settings, tmp_path / "serve.log", port, processes) as api,
        # Fresh connections, so each may reach any of the processes.
        httpx.AsyncClient(base_url=base_url, timeout=30, limits=NO_REUSE) as client,
        AsyncExitStack() as sockets_stack,
    ):
        token, headers = await signed_in(client)
        assert (await client.get("/readyz")).status_code == 200
        # A subscriber on every serving process.
        sockets, _ = await open_sockets_on_each(client, token, api, port, processes, sockets_stack)
        for ws in sockets:
            await subscribe(ws, "1", MY_EVENTS, {})
        uploaded: list[httpx.Response] = []

        async def upload_across_the_stop() -> None:
            # Starts before SIGTERM, still arriving when the server stops taking
            # connections at DELAY_S: it must be answered in full all the same.
            uploaded.append(
                await client.post(
                    "/graphql",
                    content=_slow_multipart(data, pieces=10, pause_s=(DELAY_S + 1) / 10),
                    headers={
                        **headers,
                        **CSRF_HEADER,
                        "content-type": f"multipart/form-data; boundary={BOUNDARY}",
                    },
                )
            )

        async with anyio.create_task_group() as group:
            group.start_soon(upload_across_the_stop)
            await anyio.sleep(0.1)
            api.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            # Unready at once, whichever process answers (uvicorn's supervisor looks
            # at its signals every 0.5 s before it forwards them), alive, and still
            # serving new connections.
            ready = await client.get("/readyz")
            with anyio.fail_after(0 if processes == 1 else SUPERVISOR_TICK_S + 1):
                while ready.status_code == 200:
                    await anyio.sleep(0.05)
                    ready = await client.get("/readyz")
            for _ in range(3 * processes):
                assert ready.status_code == 503
                assert ready.json() == {"status": "draining"}
                ready = await client.get("/readyz")
            assert (await client.get("/healthz")).status_code == 200
            body = await graphql(client, ME, headers=headers)
            assert body["data"]["me"]["email"] == "ada@example.com", body

            # Every subscription is closed as a service restart, after the delay.
            for ws in sockets:
                with pytest.raises(WebSocketDisconnect) as closed:
                    await ws.receive_json(timeout=DELAY_S + 10)
                assert closed.value.code == 1012
            assert time.monotonic() - signalled >= DELAY_S * 0.9

        await sockets_stack.aclose()  # each socket closed by the server already
        [response] = uploaded
        assert response.status_code == 200, response.text
        file = response.json()["data"]["uploadFile"]
        assert file["size"] == len(data), file
        assert await anyio.to_thread.run_sync(api.process.wait, 15) == 0
        # Gone for good: the listening socket is closed.
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")
