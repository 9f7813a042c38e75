"""The jobs bench's Redis database: claimed before the run, left as found after it.

Depot's queue and event channel have fixed names, so a benchmark sharing a
database with, say, a test run would hand its jobs to that run's workers
(which drop them) and wait forever. Hence the refusal in :func:`claim_redis`.

Depot internals used here (the queue, the stream key scheme) are the names
Depot itself writes to Redis; a rename there must be followed here.
"""

from __future__ import annotations

import time
from typing import Final, cast

import redis

from bench import bare_dramatiq
from core.eventlog import stream_key
from core.events import user_stream
from core.settings import Settings
from schema.ids import decode_id
from workers.broker import queue_name
from workers.doorbell import DoorbellRedisBroker

# A Dramatiq worker touches Redis at least this often (heartbeats) while it runs.
IN_USE_WINDOW_MS: Final = 15_000
HEARTBEATS: Final = ("dramatiq:__heartbeats__", f"{bare_dramatiq.NAMESPACE}:__heartbeats__")


def claim_redis(url: str) -> set[bytes]:
    """Refuse a Redis database other Dramatiq workers use; clear a crashed run's leftovers.

    Returns the Dramatiq processes Redis knew before this run (see
    :func:`release_redis`).
    """
    client = redis.Redis.from_url(url)
    try:
        now_ms = int(time.time() * 1000)
        busy = client.zcount(HEARTBEATS[0], now_ms - IN_USE_WINDOW_MS, "+inf")
        known = {member for key in HEARTBEATS for member in _members(client, key)}
    finally:
        client.close()
    if busy:
        raise SystemExit(
            f"{busy} Dramatiq process(es) are using this Redis database. Give the benchmark "
            "a database of its own, e.g. --redis-url redis://127.0.0.1:6379/9"
        )
    flush_queues(url)
    return known


def _members(client: redis.Redis, key: str) -> list[bytes]:
    return cast(list[bytes], client.zrange(key, 0, -1))


def release_redis(url: str, known: set[bytes], user_ids: list[str]) -> None:
    """Leave Redis as the run found it: queues empty, the run's processes and streams gone.

    Stopped Dramatiq processes stay in the heartbeat sets until a worker's
    maintenance drops them; the next run would take them for live ones.
    """
    flush_queues(url)
    client = redis.Redis.from_url(url)
    try:
        for key in HEARTBEATS:
            ours = [member for member in _members(client, key) if member not in known]
            if ours:
                client.zrem(key, *ours)
        # Job streams expire by themselves (the retention is set to a minute).
        streams = [stream_key(user_stream(decode_id(user_id)[1])) for user_id in user_ids]
        client.delete(bare_dramatiq.COUNT_KEY, *streams)
    finally:
        client.close()


def flush_queues(url: str) -> None:
    """Drop the messages left in Depot's queue and the baseline's (their jobs are gone)."""
    # The bench runs Depot with the default Redis prefix.
    depot_queue = queue_name(Settings.model_fields["redis_prefix"].default)
    queues = (("dramatiq", depot_queue), (bare_dramatiq.NAMESPACE, bare_dramatiq.QUEUE))
    for namespace, queue in queues:
        # Its flush empties the queue's doorbell too (workers.doorbell).
        broker = DoorbellRedisBroker(url=url, namespace=namespace, middleware=[])
        try:
            broker.flush(queue)
        finally:
            broker.close()


def describe(url: str) -> str:
    """``Redis 7.2.4 (database 9)``."""
    client = redis.Redis.from_url(url)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    return f"Redis {redis_version} (database {client.get_connection_kwargs().get('db', 0)})"
