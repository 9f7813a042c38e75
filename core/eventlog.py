"""The event log: ordered, replayable streams of entries, delivered live.

What an entry says, and which stream it goes to, is :mod:`core.events`; this
module only carries JSON payloads. Each entry gets a cursor,
``<milliseconds>-<sequence>`` like a Redis Streams id; cursors order the
entries of one stream. :func:`follow` gives a subscriber every entry after a
cursor and then the live ones, with no gap and no duplicate, whatever happens
between the two.

Two backends share that contract. :class:`MemoryEventLog` serves the embedded
mode: the API and its in-process workers run on different threads, so it is
thread-safe. :class:`RedisEventLog` keeps streams in Redis Streams (``XADD``
and ``PUBLISH`` in one script); each process holds one Pub/Sub connection and
fans events out to its own subscribers, so a subscriber on any replica sees
events written by any worker. When that connection drops, subscribers re-read
their streams from their last cursor once it is back.

The log is transport, not the truth: a job's final state is in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = structlog.get_logger("depot.events")

# Events a slow subscriber may fall behind before it re-reads the log instead.
LISTENER_BACKLOG: Final = 256
PAGE: Final = 500

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    """One event as the log holds it: its cursor and its JSON payload."""

    cursor: str
    data: dict[str, Any]

    @property
    def key(self) -> tuple[int, int]:
        return parse_cursor(self.cursor)


class BadCursor(ValueError):
    """A cursor that no stream ever handed out."""


def parse_cursor(cursor: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` as a comparable pair, or :class:`BadCursor`."""
    ms, sep, seq = cursor.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or len(cursor) > 41:
        raise BadCursor(f"{cursor!r} is not an event cursor.")
    return int(ms), int(seq)


class _Resync:
    """Tells a listener that events may have been missed: re-read the log."""


RESYNC: Final = _Resync()


class Mailbox(Generic[T]):
    """A queue with one reader: the part of :class:`asyncio.Queue` a listener uses.

    Every idle subscription holds one (and a signed-in socket one more, for
    revocations), so its size is the size of a socket: an ``asyncio.Queue``
    is four deques and an Event, about 3.3 KiB empty; this is a list and, while
    its reader waits, one future (about 0.2 KiB). ``api.wsprotocol`` keeps a
    socket's ASGI events in one too. ``maxsize`` 0 bounds nothing, as for
    ``asyncio.Queue``. Used on one event loop only, by one reader at a time.
    """

    __slots__ = ("_items", "_maxsize", "_waiter")

    def __init__(self, maxsize: int = 0) -> None:
        self._items: list[T] = []
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: T) -> None:
        if self._maxsize and len(self._items) >= self._maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        # A few items, and usually one: a shift costs nothing.
        return self._items.pop(0)

    def ready(self) -> asyncio.Future[None]:
        """A future done once the mailbox holds an item, for ``asyncio.wait`` beside others.

        The reader's own (no task: a coroutine given to ``asyncio.wait`` is one).
        """
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
            if self._items:
                self._waiter.set_result(None)
        return self._waiter

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Listener:
    """One live subscription to a stream, read on the event loop that opened it.

    Events may be delivered from any thread. A listener that falls
    ``LISTENER_BACKLOG`` events behind drops them and is told to re-read the
    log, so a stalled client costs bounded memory and loses nothing.
    """

    __slots__ = ("_loop", "queue")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.queue: Mailbox[Entry | _Resync] = Mailbox(LISTENER_BACKLOG)

    def deliver(self, item: Entry | _Resync) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
            self._loop.call_soon_threadsafe(self._put, item)

    def _put(self, item: Entry | _Resync) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESYNC)


class _Fanout:
    """This process's listeners, by stream; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, set[Listener]] = {}

    def add(self, stream: str, listener: Listener) -> None:
        with self._lock:
            self._listeners.setdefault(stream, set()).add(listener)

    def remove(self, stream: str, listener: Listener) -> None:
        with self._lock:
            listeners = self._listeners.get(stream)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[stream]

    def listening(
        self, stream: str, ready: Callable[[], Awaitable[None]] | None = None
    ) -> Listening:
        """A new listener of ``stream`` (on the running loop), once ``ready`` has
        returned, until the ``async with`` block ends."""
        return Listening(self, stream, ready)

    def listened(self, stream: str) -> bool:
        """Whether ``stream`` has a listener here now (a dict lookup: no lock needed)."""
        return stream in self._listeners

    def dispatch(self, stream: str, item: Entry | _Resync) -> None:
        with self._lock:
            listeners = list(self._listeners.get(stream, ()))
        for listener in listeners:
            listener.deliver(item)

    def resync_all(self) -> None:
        with self._lock:
            listeners = [lis for group in self._listeners.values() for lis in group]
        for listener in listeners:
            listener.deliver(RESYNC)


class Listening:
    """:meth:`EventLog.listen`'s context: a listener registered for the block.

    A class, not an ``asynccontextmanager``: every idle subscription (and each
    user's credentials watch) holds one open, and the generator version kept
    two suspended generators, their context managers and their frames for it,
    about 1 KiB a listener.
    """

    __slots__ = ("_fanout", "_listener", "_ready", "_stream")

    def __init__(
        self, fanout: _Fanout, stream: str, ready: Callable[[], Awaitable[None]] | None
    ) -> None:
        self._fanout = fanout
        self._stream = stream
        self._ready = ready
        self._listener: Listener | None = None

    async def __aenter__(self) -> Listener:
        if self._ready is not None:
            await self._ready()
            self._ready = None
        listener = self._listener = Listener()
        self._fanout.add(self._stream, listener)
        return listener

    async def __aexit__(self, *exc_info: object) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            self._fanout.remove(self._stream, listener)


class EventLog(Protocol):
    """Ordered, replayable event streams with live delivery."""

    async def append(
        self, stream: str, data: Mapping[str, Any], *, max_len: int | None = None
    ) -> Entry:
        """Add an event at the end of ``stream`` (trimmed to about ``max_len``)."""
        ...

    async def append_all(
        self,
        streams: Sequence[tuple[str, int | None]],
        data: Mapping[str, Any],
        *,
        expire_first: int | None = None,
    ) -> None:
        """Add one event at the end of each of ``streams`` (``(stream, max_len)``), in
        order, at once; then forget the first stream ``expire_first`` seconds from now."""
        ...

    async def read(self, stream: str, after: str | None, limit: int = PAGE) -> list[Entry]:
        """Up to ``limit`` events after cursor ``after`` (from the start when None)."""
        ...

    async def last(self, stream: str) -> str | None:
        """The cursor of the newest event of ``stream``; None when it has none."""
        ...

    async def expire(self, stream: str, seconds: int) -> None:
        """Forget ``stream`` ``seconds`` from now."""
        ...

    async def prune(self) -> int:
        """Forget the streams whose time is up; returns how many."""
        ...

    def listen(self, stream: str) -> contextlib.AbstractAsyncContextManager[Listener]:
        """Live events of ``stream`` while the context lasts."""
        ...

    async def aclose(self) -> None: ...


async def follow(
    log: EventLog,
    stream: str,
    after: str | None = None,
    *,
    caught_up: Callable[[], Awaitable[dict[str, Any] | None]] | None = None,
) -> AsyncIterator[Entry]:
    """Every event of ``stream`` after ``after``, in order, then each live one.

    The listener is registered before the log is read, so an event written
    in between arrives both ways; cursors drop the second copy. Each time the
    log has been read to its end (at the start, and after a lost connection),
    ``caught_up`` may supply one more event from elsewhere — the database's
    final state of a job whose events are gone; it gets the next cursor.
    """
    last = parse_cursor(after) if after is not None else (-1, -1)
    cursor = after
    async with log.listen(stream) as listener:
        while True:
            while True:
                page = await log.read(stream, cursor)
                for event in page:
                    if event.key > last:
                        last, cursor = event.key, event.cursor
                        yield event
                if len(page) < PAGE:
                    break
            if caught_up is not None:
                data = await caught_up()
                if data is not None:
                    last = (max(last[0], 0), last[1] + 1)
                    cursor = f"{last[0]}-{last[1]}"
                    yield Entry(cursor, data)
            while True:
                item = await listener.queue.get()
                if isinstance(item, _Resync):
                    break
                if item.key > last:
                    last, cursor = item.key, item.cursor
                    yield item


class _Stream:
    __slots__ = ("events", "expires_at", "last")

    def __init__(self) -> None:
        self.events: list[Entry] = []
        self.last = (0, 0)
        self.expires_at: float | None = None


class MemoryEventLog:
    """Streams in this process's memory: the embedded mode's bus."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._fanout = _Fanout()

    def _live(self, stream: str) -> _Stream | None:
        found = self._streams.get(stream)
        if found is not None and found.expires_at is not None and found.expires_at <= self._clock():
            del self._streams[stream]
            return None
        return found

    async def append(
        self, stream: str, data: Mapping[str, Any], *, max_len: int | None = None
    ) -> Entry:
        with self._lock:
            found = self._live(stream)
            if found is None:
                found = self._streams[stream] = _Stream()
            ms = int(self._clock() * 1000)
            key = (ms, 0) if ms > found.last[0] else (found.last[0], found.last[1] + 1)
            found.last = key
            event = Entry(f"{key[0]}-{key[1]}", dict(data))
            found.events.append(event)
            if max_len is not None and len(found.events) > max_len:
                del found.events[: len(found.events) - max_len]
        self._fanout.dispatch(stream, event)
        return event

    async def append_all(
        self,
        streams: Sequence[tuple[str, int | None]],
        data: Mapping[str, Any],
        *,
        expire_first: int | None = None,
    ) -> None:
        for stream, max_len in streams:
            await self.append(stream, data, max_len=max_len)
        if expire_first is not None and streams:
            await self.expire(streams[0][0], expire_first)

    async def read(self, stream: str, after: str | None, limit: int = PAGE) -> list[Entry]:
        last = parse_cursor(after) if after is not None else (-1, -1)
        with self._lock:
            found = self._live(stream)
            events = list(found.events) if found is not None else []
        # Cursors grow along the list: skip what the reader has seen by bisection.
        lo, hi = 0, len(events)
        while lo < hi:
            mid = (lo + hi) // 2
            if events[mid].key <= last:
                lo = mid + 1
            else:
                hi = mid
        return events[lo : lo + limit]

    async def last(self, stream: str) -> str | None:
        with self._lock:
            found = self._live(stream)
            return found.events[-1].cursor if found is not None and found.events else None

    async def expire(self, stream: str, seconds: int) -> None:
        with self._lock:
            found = self._streams.get(stream)
            if found is not None:
                found.expires_at = self._clock() + seconds

    async def prune(self) -> int:
        with self._lock:
            names = list(self._streams)
            return sum(1 for name in names if self._live(name) is None)

    def listen(self, stream: str) -> Listening:
        return self._fanout.listening(stream)

    async def aclose(self) -> None:
        return None


# XADD and PUBLISH as one step: a subscriber never sees an event the log lacks,
# nor misses one the log has (it re-reads the log after reconnecting).
_APPEND = """
local id
if tonumber(ARGV[2]) > 0 then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[1])
else
  id = redis.call('XADD', KEYS[1], '*', 'd', ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4] .. '\\n' .. id .. '\\n' .. ARGV[1])
return id
"""

# _APPEND to each of KEYS, then the first one's EXPIRE, in one round trip: a step's
# status change goes to its stream, its pipeline's and its owner's (one trip, not four).
# ARGV: the payload, the channel, the expiry (0: none), then per key its MAXLEN and name.
_APPEND_ALL = """
for i, key in ipairs(KEYS) do
  local max_len = tonumber(ARGV[2 + 2 * i])
  local id
  if max_len > 0 then
    id = redis.call('XADD', key, 'MAXLEN', '~', max_len, '*', 'd', ARGV[1])
  else
    id = redis.call('XADD', key, '*', 'd', ARGV[1])
  end
  redis.call('PUBLISH', ARGV[2], ARGV[3 + 2 * i] .. '\\n' .. id .. '\\n' .. ARGV[1])
end
if tonumber(ARGV[3]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
"""

# One installation's keys are ``<prefix>:events:<stream>``, its channel ``<prefix>:events``.
DEFAULT_PREFIX: Final = "depot"


def stream_key(stream: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The Redis key that holds ``stream`` for the installation named ``prefix``."""
    return f"{prefix}:events:{stream}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _event(cursor: bytes | str | None, fields: Mapping[Any, Any] | None) -> Entry:
    assert cursor is not None
    assert fields is not None
    return Entry(_text(cursor), json.loads(fields[b"d"]))


class RedisEventLog:
    """Streams in Redis Streams, delivered live through one Pub/Sub connection.

    The Pub/Sub reader starts with the first listener, so a process that only
    writes (a worker) never opens one. ``prefix`` names its keys and channel,
    so that two installations can share one Redis without hearing each other.
    """

    def __init__(
        self, redis: Redis, *, prefix: str = DEFAULT_PREFIX, reconnect_delay: float = 0.5
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._channel = f"{prefix}:events"
        self._append = redis.register_script(_APPEND)
        self._append_all = redis.register_script(_APPEND_ALL)
        self._fanout = _Fanout()
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._reconnect_delay = reconnect_delay

    async def append(
        self, stream: str, data: Mapping[str, Any], *, max_len: int | None = None
    ) -> Entry:
        payload = json.dumps(data, separators=(",", ":"))
        cursor = await self._append(
            keys=[stream_key(stream, self._prefix)],
            args=[payload, max_len or 0, self._channel, stream],
        )
        return Entry(_text(cursor), dict(data))

    async def append_all(
        self,
        streams: Sequence[tuple[str, int | None]],
        data: Mapping[str, Any],
        *,
        expire_first: int | None = None,
    ) -> None:
        payload = json.dumps(data, separators=(",", ":"))
        args: list[str | int] = [payload, self._channel, expire_first or 0]
        for stream, max_len in streams:
            args += [max_len or 0, stream]
        await self._append_all(keys=[stream_key(s, self._prefix) for s, _ in streams], args=args)

    async def read(self, stream: str, after: str | None, limit: int = PAGE) -> list[Entry]:
        if after is not None:
            parse_cursor(after)
        start = "-" if after is None else f"({after}"
        rows = await self._redis.xrange(
            stream_key(stream, self._prefix), min=start, max="+", count=limit
        )
        return [_event(cursor, fields) for cursor, fields in rows or ()]

    async def last(self, stream: str) -> str | None:
        rows = await self._redis.xrevrange(
            stream_key(stream, self._prefix), max="+", min="-", count=1
        )
        return _text(rows[0][0] or b"") if rows else None

    async def expire(self, stream: str, seconds: int) -> None:
        await self._redis.expire(stream_key(stream, self._prefix), seconds)

    async def prune(self) -> int:
        return 0  # Redis forgets expired streams itself

    def listen(self, stream: str) -> Listening:
        return self._fanout.listening(stream, self._subscribe)

    async def _subscribe(self) -> None:
        """Once the Pub/Sub reader listens (started with the first listener)."""
        if self._reader is None or self._reader.done():
            self._subscribed.clear()
            self._reader = asyncio.create_task(self._read_forever(), name="depot-event-reader")
        await self._subscribed.wait()

    async def _read_forever(self) -> None:
        first = True
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    if not first:
                        logger.info("event bus reconnected")
                        self._fanout.resync_all()
                    first = False
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._dispatch(message["data"])
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("event bus connection lost; reconnecting", error=str(exc))
                await asyncio.sleep(self._reconnect_delay)

    def _dispatch(self, raw: bytes | str) -> None:
        # Every process hears every event of the installation: decode only those
        # someone here listens to (a job's progress mostly has no listener).
        stream, cursor, payload = _text(raw).split("\n", 2)
        if self._fanout.listened(stream):
            self._fanout.dispatch(stream, Entry(cursor, json.loads(payload)))

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None


def open_event_log(redis: Redis | None, *, prefix: str = DEFAULT_PREFIX) -> EventLog:
    """Redis Streams when Redis is configured, else this process's memory."""
    return RedisEventLog(redis, prefix=prefix) if redis is not None else MemoryEventLog()
