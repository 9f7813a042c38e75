"""An idle worker sleeps until a job comes, and a job sent to it starts at once.

Over Redis every command is watched with ``MONITOR`` on a ``redis-server`` of
the test's own: the fetches of a quiet worker, the ring of ``startJob``, and the
fetch it wakes. In the embedded mode the OS counts how often the consumer
threads wake (``voluntary_ctxt_switches``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import dramatiq
import httpx
import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.worker import ConsumerThread, Worker

from tests.conftest import make_settings, serve_app
from tests.processes import depot_worker, in_background, redis_server, start_together
from tests.support import JOB_TIMEOUT_S, run_job, signed_in, storage_root, upload_file
from workers.broker import queue_name
from workers.doorbell import IDLE_WAIT_MS, DoorbellRedisBroker, doorbell_key

pytestmark = pytest.mark.anyio

QUEUE = queue_name("depot")
# Each quiet stretch outlasts the doorbell's wait, so an idle consumer's own look
# at Redis (its heartbeat) falls in it too.
QUIET_S = 1.5 * IDLE_WAIT_MS / 1000
# From the ring to the fetch it wakes: a thread's wake-up on a loaded machine, far
# under the wait that a lost ring would cost.
WAKE_S = 0.25 * IDLE_WAIT_MS / 1000
_STOP = "doorbell-test-monitor-stop"


class _Commands:
    """Every command Redis runs while the block lasts (``MONITOR``): time and words."""

    def __init__(self, url: str) -> None:
        self.seen: list[tuple[float, list[str]]] = []
        self._url = url
        self._client = redis.Redis.from_url(url, decode_responses=True)
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while True:
            command: dict[str, Any] = self._monitor.next_command()
            words = str(command["command"]).split()
            if words[:2] == ["ECHO", _STOP]:
                return
            self.seen.append((float(command["time"]), words))

    def stop(self) -> None:
        with redis.Redis.from_url(self._url) as other:
            other.echo(_STOP)
        self._thread.join(10)
        self._monitor.__exit__(None, None, None)
        self._client.close()

    def scripts(self, command: str, queue: str, since: float = 0.0) -> list[float]:
        """When Dramatiq's script ran ``command`` (``EVALSHA ... <command> <time> <queue>``)."""
        return [
            at
            for at, words in self.seen
            if at >= since and words[0] == "EVALSHA" and words[4:7:2] == [command, queue]
        ]

    def fetches(self, queue: str, since: float = 0.0) -> list[float]:
        """When a consumer looked for messages on ``queue``."""
        return self.scripts("fetch", queue, since)

    def rings(self, queue: str) -> list[float]:
        key = doorbell_key("dramatiq", queue)
        return [at for at, words in self.seen if words[:2] == ["LPUSH", key]]


@asynccontextmanager
async def _watching(url: str) -> AsyncIterator[_Commands]:
    commands = await anyio.to_thread.run_sync(_Commands, url)
    try:
        yield commands
    finally:
        await anyio.to_thread.run_sync(commands.stop)


@pytest.mark.redis
async def test_an_idle_worker_waits_for_the_doorbell_and_a_job_rings_it(
    tmp_path: Path, database_url: str
) -> None:
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(in_background(redis_server(tmp_path / "redis")))
        settings = make_settings(
            tmp_path,
            database_url=database_url,
            redis_url=server.url,
            storage_url=storage_root(tmp_path).as_uri(),
        )
        client, _ = await start_together(
            stack, serve_app(settings), depot_worker(settings, tmp_path / "worker.log")
        )
        _, headers = await signed_in(client)
        file = await upload_file(client, headers, "a.bin", b"abc")
        # Warm: every thread of the worker started, nothing left in its hands.
        job = await run_job(client, headers, {"verify": {"fileId": file["id"]}})
        assert job["status"] == "SUCCEEDED"

        for _ in range(2):
            async with _watching(server.url) as commands:
                await anyio.sleep(QUIET_S)
                quiet = commands.fetches(QUEUE) + commands.fetches(f"{QUEUE}.DQ")
                job = await run_job(client, headers, {"verify": {"fileId": file["id"]}})
            assert job["status"] == "SUCCEEDED"
            # Two consumers (the queue and its delayed messages): about one look each
            # per wait, where Dramatiq's poll made some 200 a second.
            assert 1 <= len(quiet) <= 2 * 2 * QUIET_S / (IDLE_WAIT_MS / 1000), quiet
            (ring,) = commands.rings(QUEUE)
            woken = commands.fetches(QUEUE, since=ring)
            assert woken, "the ring woke no fetch"
            assert woken[0] - ring < WAKE_S, (ring, woken)

        # A sender that does not ring (an older release; or the ring lost with a
        # Redis restart): its message waits for the end of the worker's wait, no more.
        # An actor the worker does not know is dead-lettered once taken.
        async with _watching(server.url) as commands:
            await anyio.to_thread.run_sync(_send_without_ring, server.url)
            with anyio.fail_after(JOB_TIMEOUT_S):
                while True:
                    if await anyio.to_thread.run_sync(_dead_letters, server.url):
                        break
                    await anyio.sleep(0.05)
        (sent,) = commands.scripts("enqueue", QUEUE)
        taken = commands.fetches(QUEUE, since=sent)
        assert taken[0] - sent < IDLE_WAIT_MS / 1000 + WAKE_S, (sent, taken)


def _send_without_ring(url: str) -> None:
    plain = RedisBroker(url=url)  # type: ignore[no-untyped-call]
    message: Message[Any] = Message(
        queue_name=QUEUE, actor_name="depot.gone", args=(), kwargs={}, options={}
    )
    plain.enqueue(message)
    plain.close()


def _dead_letters(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.zcard(f"dramatiq:{QUEUE}.XQ"))


def _wake_ups(threads: list[threading.Thread]) -> int:
    """How often the OS put these threads to sleep waiting for something (Linux)."""
    total = 0
    for thread in threads:
        with open(f"/proc/self/task/{thread.native_id}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


async def test_the_embedded_worker_sleeps_while_it_has_nothing_to_do(
    client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(client)
    file = await upload_file(client, headers, "a.bin", b"abc")
    assert (await run_job(client, headers, {"verify": {"fileId": file["id"]}}))["status"] == (
        "SUCCEEDED"
    )
    consumers = [t for t in threading.enumerate() if isinstance(t, ConsumerThread)]
    assert len(consumers) == 2, "the queue's and its delayed messages'"
    before = _wake_ups(consumers)
    await anyio.sleep(QUIET_S)
    woke = _wake_ups(consumers) - before
    # Once a wait each, and a little for the GIL; polling every 10 ms was some 150 each.
    assert woke <= len(consumers) * 10 * QUIET_S, woke
    # And a job sent now still runs.
    assert (await run_job(client, headers, {"verify": {"fileId": file["id"]}}))["status"] == (
        "SUCCEEDED"
    )


# A busy consumer's poll, grown long (Dramatiq backs off up to the worker's timeout).
_LONG_POLL_MS = 2_000
_SENDS = 3


def _delays_of_own_sends(url: str) -> list[float]:
    """How long messages a busy process sends itself wait for its consumer: an actor
    that runs a while sends ``_SENDS`` messages, apart, and times when each starts."""
    broker = DoorbellRedisBroker(url=url)
    began = threading.Event()
    delays: list[float] = []

    def second() -> None:
        began.set()

    def first() -> None:
        time.sleep(2 * _LONG_POLL_MS / 1000)  # the consumer's poll grows to its longest
        for _ in range(_SENDS):
            began.clear()
            sent = time.monotonic()
            later.send()
            began.wait(2 * _LONG_POLL_MS / 1000)
            delays.append(time.monotonic() - sent)
            time.sleep(0.75 * _LONG_POLL_MS / 1000)  # the poll grows again

    later = dramatiq.Actor(
        second, broker=broker, actor_name="second", queue_name="own", priority=0, options={}
    )
    opening = dramatiq.Actor(
        first, broker=broker, actor_name="first", queue_name="own", priority=0, options={}
    )
    worker = Worker(broker, worker_threads=2, worker_timeout=_LONG_POLL_MS)
    worker.start()
    try:
        opening.send()
        deadline = time.monotonic() + 60
        while len(delays) < _SENDS and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        broker.client.connection_pool.disconnect()  # RedisBroker.close leaves it open
    return delays


@pytest.mark.redis
async def test_a_busy_worker_takes_the_messages_it_sends_itself_at_once(tmp_path: Path) -> None:
    # A pipeline's next step is sent by the worker ending the step before, whose
    # consumer still holds that step and so polls rather than waits on the doorbell:
    # without a wake of its own, each step would wait up to a poll to start.
    async with in_background(redis_server(tmp_path / "redis")) as server:
        delays = await anyio.to_thread.run_sync(_delays_of_own_sends, server.url)
    assert len(delays) == _SENDS, delays
    assert max(delays) < WAKE_S, delays
