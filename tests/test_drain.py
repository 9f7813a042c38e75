"""Graceful drain of a real ``depot serve``: SIGTERM makes it unready at once, it
keeps serving for the drain delay, finishes what is in flight, closes WebSockets
with 1012 and exits 0."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from httpx_ws import WebSocketDisconnect

from tests.conftest import make_settings
from tests.processes import depot_serve, free_port, in_background
from tests.support import CSRF_HEADER, ME, UPLOAD_FILE, graphql, signed_in, subscribe, subscriber

pytestmark = pytest.mark.anyio

DELAY_S = 1.5
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


async def test_sigterm_drains_then_closes_websockets_with_1012(tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    settings = make_settings(
        tmp_path, storage_url=(tmp_path / "files").as_uri(), drain_delay_seconds=DELAY_S
    )
    data = bytes(range(256)) * 400
    async with (
        in_background(depot_serve(settings, tmp_path / "serve.log", port)) as api,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):
        token, headers = await signed_in(client)
        assert (await client.get("/readyz")).status_code == 200
        async with subscriber(client, token) as ws:
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

                # Unready at once, alive, and still serving new connections.
                async with httpx.AsyncClient(base_url=base_url, timeout=5) as fresh:
                    ready = await fresh.get("/readyz")
                    assert ready.status_code == 503
                    assert ready.json() == {"status": "draining"}
                    assert (await fresh.get("/healthz")).status_code == 200
                    body = await graphql(fresh, ME, headers=headers)
                    assert body["data"]["me"]["email"] == "ada@example.com", body

                # The subscription is closed as a service restart, after the delay.
                with pytest.raises(WebSocketDisconnect) as closed:
                    await ws.receive_json(timeout=DELAY_S + 10)
                assert closed.value.code == 1012
                assert time.monotonic() - signalled >= DELAY_S * 0.9

        [response] = uploaded
        assert response.status_code == 200, response.text
        file = response.json()["data"]["uploadFile"]
        assert file["size"] == len(data), file
        assert await anyio.to_thread.run_sync(api.process.wait, 15) == 0
        # Gone for good: the listening socket is closed.
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")
