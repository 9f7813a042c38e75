"""One contract for every event log: the same tests on memory and on Redis Streams.

Each Redis test writes under a prefix of its own, so tests never read each
other's streams, and removes its keys afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from redis.asyncio import Redis

from core.eventlog import (
    DEFAULT_PREFIX,
    LISTENER_BACKLOG,
    PAGE,
    BadCursor,
    Entry,
    EventLog,
    MemoryEventLog,
    RedisEventLog,
    follow,
    parse_cursor,
    stream_key,
)
from tests.support import require_service

pytestmark = pytest.mark.anyio

STREAM = "job:contract"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def log(request: pytest.FixtureRequest) -> AsyncIterator[EventLog]:
    if request.param == "memory":
        memory = MemoryEventLog()
        yield memory
        await memory.aclose()
        return
    redis = Redis.from_url(require_service("DEPOT_TEST_REDIS_URL", "Redis"))
    prefix = f"test-{uuid.uuid4().hex}"
    events = RedisEventLog(redis, prefix=prefix)
    try:
        yield events
    finally:
        await events.aclose()
        keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def _append(log: EventLog, count: int, stream: str = STREAM) -> list[Entry]:
    return [await log.append(stream, {"n": n}) for n in range(count)]


def _numbers(entries: list[Entry]) -> list[int]:
    return [entry.data["n"] for entry in entries]


async def test_entries_read_back_in_order_with_growing_cursors(log: EventLog) -> None:
    appended = await _append(log, 5)
    read = await log.read(STREAM, None)
    assert read == appended
    assert _numbers(read) == [0, 1, 2, 3, 4]
    keys = [parse_cursor(entry.cursor) for entry in read]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    # A stream nobody wrote to is empty, not an error; streams keep apart.
    assert await log.read("job:nobody", None) == []
    await log.append("user:other", {"n": 99})
    assert _numbers(await log.read(STREAM, None)) == [0, 1, 2, 3, 4]


async def test_reading_after_a_cursor_gives_only_what_came_later(log: EventLog) -> None:
    appended = await _append(log, 4)
    assert _numbers(await log.read(STREAM, appended[1].cursor)) == [2, 3]
    assert await log.read(STREAM, appended[-1].cursor) == []
    assert _numbers(await log.read(STREAM, appended[0].cursor, limit=2)) == [1, 2]
    # A cursor older than the stream reads it all.
    assert _numbers(await log.read(STREAM, "0-0")) == [0, 1, 2, 3]


async def test_a_long_stream_is_read_page_by_page(log: EventLog) -> None:
    await _append(log, PAGE + 7)
    first = await log.read(STREAM, None)
    assert _numbers(first) == list(range(PAGE))
    rest = await log.read(STREAM, first[-1].cursor)
    assert _numbers(rest) == list(range(PAGE, PAGE + 7))


async def test_last_is_the_newest_cursor(log: EventLog) -> None:
    assert await log.last(STREAM) is None
    appended = await _append(log, 3)
    assert await log.last(STREAM) == appended[-1].cursor


async def test_an_expired_stream_is_forgotten(log: EventLog) -> None:
    await _append(log, 2)
    await _append(log, 1, stream="job:kept")
    await log.expire(STREAM, 1)
    assert _numbers(await log.read(STREAM, None)) == [0, 1], "not before its time"
    with anyio.fail_after(5):  # Redis may take a moment past the second
        while True:
            if not await log.read(STREAM, None):
                break
            await anyio.sleep(0.05)
    assert await log.last(STREAM) is None
    await log.prune()
    assert _numbers(await log.read("job:kept", None)) == [0]


async def test_append_all_tells_each_stream_live_then_expires_the_first(log: EventLog) -> None:
    async with log.listen(STREAM) as first, log.listen("user:all") as other:
        await log.append_all(
            [(STREAM, None), ("job:pipeline", None), ("user:all", 1)], {"n": 7}, expire_first=1
        )
        with anyio.fail_after(5):
            heard = [await first.queue.get(), await other.queue.get()]
    assert [entry.data["n"] for entry in heard if isinstance(entry, Entry)] == [7, 7]
    for stream in (STREAM, "job:pipeline", "user:all"):
        assert _numbers(await log.read(stream, None)) == [7]
    with anyio.fail_after(5):  # only the first stream goes after its second
        while True:
            if not await log.read(STREAM, None):
                break
            await anyio.sleep(0.05)
    assert _numbers(await log.read("job:pipeline", None)) == [7]
    for n in range(300):
        await log.append_all([("user:all", 50)], {"n": n})
    assert 50 <= len(await log.read("user:all", None, limit=300)) <= 150, "trimmed to about 50"


async def test_max_len_keeps_about_the_newest_entries(log: EventLog) -> None:
    appended = [await log.append(STREAM, {"n": n}, max_len=50) for n in range(300)]
    kept = await log.read(STREAM, None, limit=300)
    # "About": Redis trims whole stream nodes (100 entries by default) at a time.
    assert 50 <= len(kept) <= 150
    assert kept == appended[-len(kept) :]


async def test_a_listener_hears_its_stream_only(log: EventLog) -> None:
    async with log.listen(STREAM) as listener:
        await log.append("job:other", {"n": -1})
        appended = await log.append(STREAM, {"n": 0})
        with anyio.fail_after(5):
            heard = await listener.queue.get()
    assert heard == appended
    assert listener.queue.empty()


async def test_a_follower_past_its_backlog_rereads_the_log_and_misses_nothing(
    log: EventLog,
) -> None:
    events = aiter(follow(log, STREAM))
    first = await log.append(STREAM, {"n": 0})
    with anyio.fail_after(5):
        assert await anext(events) == first
        # It waits on its listener now; more arrive than the listener keeps.
        count = LISTENER_BACKLOG + 20
        await _append(log, count)
        await anyio.sleep(0.2)  # delivered (Redis: published) while nobody reads
        seen = [await anext(events) for _ in range(count)]
    assert _numbers(seen) == list(range(count))
    await events.aclose()  # type: ignore[attr-defined]


async def test_follow_replays_then_streams_with_no_gap_and_no_duplicate(log: EventLog) -> None:
    before = await _append(log, 3)
    seen: list[Entry] = []
    started = anyio.Event()

    async def subscribe() -> None:
        async for entry in follow(log, STREAM, before[0].cursor):
            seen.append(entry)
            started.set()
            if len(seen) == 2 + 20:
                return

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(subscribe)
            await started.wait()
            # Written while the subscriber replays and after: each arrives once.
            for n in range(20):
                await log.append(STREAM, {"n": 100 + n})
    assert _numbers(seen) == [1, 2, *range(100, 120)]
    assert seen[:2] == before[1:]
    assert seen == await log.read(STREAM, before[0].cursor)


async def test_a_bad_cursor_is_refused(log: EventLog) -> None:
    await _append(log, 1)
    for cursor in ("", "12", "a-1", "1-b", "-1", "1-", "9" * 40 + "-1"):
        with pytest.raises(BadCursor):
            await log.read(STREAM, cursor)
        with pytest.raises(BadCursor):
            await anext(aiter(follow(log, STREAM, cursor)))


def test_redis_keys_carry_the_installation_prefix() -> None:
    assert stream_key("user:1") == "depot:events:user:1"
    assert stream_key("user:1", "other") == "other:events:user:1"
    assert DEFAULT_PREFIX == "depot"


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(require_service("DEPOT_TEST_REDIS_URL", "Redis"))
    yield client
    await client.aclose()


@pytest.mark.redis
async def test_two_installations_share_one_redis_apart(redis: Redis) -> None:
    prefixes = [f"test-{uuid.uuid4().hex}" for _ in range(2)]
    ours, theirs = (RedisEventLog(redis, prefix=prefix) for prefix in prefixes)
    try:
        async with ours.listen(STREAM) as listener:
            await theirs.append(STREAM, {"n": 1})
            mine = await ours.append(STREAM, {"n": 2})
            with anyio.fail_after(5):
                assert await listener.queue.get() == mine
            assert listener.queue.empty()
        assert await ours.read(STREAM, None) == [mine]
        assert await redis.exists(stream_key(STREAM, prefixes[0]))
    finally:
        await ours.aclose()
        await redis.delete(*(stream_key(STREAM, prefix) for prefix in prefixes))


@pytest.mark.redis
async def test_the_default_names_are_depots_own(redis: Redis) -> None:
    stream = f"job:{uuid.uuid4()}"
    log = RedisEventLog(redis)
    try:
        async with redis.pubsub() as pubsub:
            await pubsub.subscribe("depot:events")
            await log.append(stream, {"n": 1})
            with anyio.fail_after(5):
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None and message["data"].startswith(stream.encode()):
                        break
        assert await redis.xlen(f"depot:events:{stream}") == 1
    finally:
        await redis.delete(f"depot:events:{stream}")
