"""Consumers that sleep until there is work: a doorbell rung by whoever enqueues.

Dramatiq's Redis consumer looks for messages every ``worker_timeout`` (10 ms
here, :data:`workers.broker.POLL_MS`) whether or not any were sent: about a
hundred runs of its fetch script a second per queue while idle, and up to
10 ms before a new message is seen. Here a consumer with nothing in hand
blocks instead (``BLPOP``) on its queue's doorbell, a small Redis list beside
the queue (:func:`doorbell_key`), for at most :data:`IDLE_WAIT_MS`; every
enqueue through :class:`DoorbellRedisBroker` (Depot's own sends, Dramatiq's
move of a delayed message to its queue once due, a consumer's requeue) pushes
one token onto it, which wakes one waiting consumer. While a consumer holds
messages it polls as before, every :data:`workers.broker.POLL_MS`.

A ring that is lost (Redis restarted, a sender of an older release that does
not ring) costs at most :data:`IDLE_WAIT_MS`: the consumer fetches anyway when
its wait ends. A token nobody needed costs one fetch; the list keeps at most
:data:`RINGS_KEPT` of them.

A consumer that polls because its process is working on messages still hears
that process's own enqueues at once (a :class:`threading.Event` per queue, no
Redis command): a worker ending a pipeline's step sends the next step while
it holds the finished one, and its consumer would otherwise see it only at
its next poll, up to ``worker_timeout`` later, on every step.

The fetch script also writes the worker's heartbeat and, by a chance per call
in Dramatiq, runs the maintenance that hands dead workers' messages to live
ones. With far fewer fetches that chance would all but vanish, so here
maintenance is due by time instead (:data:`MAINTENANCE_INTERVAL_MS` per queue),
and a consumer whose prefetch is full (so it does not fetch) still sends a
heartbeat every :data:`IDLE_WAIT_MS` (an empty fetch).

The embedded mode's :class:`DoorbellStubBroker` needs no bell (its consumers
block on the in-memory queue, which a put wakes): it only waits longer than
``worker_timeout`` while idle, and no longer than the next delayed message's
time while it holds some.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from queue import Empty
from typing import Any, Final

import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.brokers.stub import StubBroker, _StubConsumer, _StubMessageProxy
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.errors import ConnectionClosed, QueueNotFound
from dramatiq.message import Message

# The longest a consumer with nothing to do waits before it looks at Redis anyway:
# what a lost ring costs, and how often an idle worker sends its heartbeat.
IDLE_WAIT_MS: Final = 1_000
# How often each queue's maintenance runs in a worker process (it rides on a fetch).
MAINTENANCE_INTERVAL_MS: Final = 1_000
# Tokens a doorbell keeps: enough to wake every idle worker of a large pool.
RINGS_KEPT: Final = 64
# Below this a wait is not worth a blocking command (and BLPOP's 0 means forever).
_SHORTEST_WAIT_MS: Final = 2


def doorbell_key(namespace: str, queue: str) -> str:
    """The Redis list whose tokens announce messages on ``queue``, beside the queue's own
    keys (``dramatiq:depot-jobs.doorbell``; ``dramatiq:depot-jobs.DQ.doorbell`` for its
    delayed messages): what removes a queue's keys by their start removes it too."""
    return f"{namespace}:{queue}.doorbell"


class _HeldEtas:
    """When each delayed message a consumer handed out is due, until it is acked."""

    def __init__(self) -> None:
        self._etas: dict[str, float] = {}

    def hold(self, message: Message[Any] | MessageProxy) -> None:
        eta = message.options.get("eta")
        if isinstance(eta, int | float):
            self._etas[message.message_id] = eta

    def release(self, message: MessageProxy) -> None:
        self._etas.pop(message.message_id, None)

    def count(self) -> int:
        return len(self._etas)

    def until_due_ms(self, longest_ms: int) -> int:
        """Milliseconds until the earliest is due (0 if one is), at most ``longest_ms``."""
        etas = list(self._etas.values())
        if not etas:
            return longest_ms
        return max(0, min(longest_ms, int(min(etas) - current_millis())))


class _ReleasesHeld(Consumer):
    """A consumer's ack and nack, forgetting the message's due time first."""

    _held: _HeldEtas

    def ack(self, message: MessageProxy) -> None:
        self._held.release(message)
        super().ack(message)

    def nack(self, message: MessageProxy) -> None:
        self._held.release(message)
        super().nack(message)


class DoorbellRedisBroker(RedisBroker):
    """A ``RedisBroker`` that rings a queue's doorbell with every message enqueued, whose
    consumers wait on it, and whose maintenance is due by time (see the module)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)  # type: ignore[no-untyped-call]
        self._local = threading.local()
        self._maintenance_due: dict[str, float] = {}
        self._maintenance_lock = threading.Lock()
        # Set by stop_waiting: the consumers poll from then on.
        self.polling = False
        self._sent: dict[str, threading.Event] = {}
        self._sent_lock = threading.Lock()

    def sent(self, queue: str) -> threading.Event:
        """Set whenever this process enqueues on ``queue``: wakes its polling consumer."""
        with self._sent_lock:
            return self._sent.setdefault(queue, threading.Event())

    def wake_key(self, queue: str) -> str:
        """This process's own list beside ``queue``'s doorbell: what :meth:`stop_waiting`
        rings so that only its consumers wake."""
        return f"{doorbell_key(self.namespace, queue)}.{self.broker_id}"

    def stop_waiting(self) -> None:
        """Make this process's consumers poll from now on, and wake those waiting, so a
        stopping worker's consumers end within ``worker_timeout``, not :data:`IDLE_WAIT_MS`.
        Redis unreachable: they end when their wait does."""
        self.polling = True
        pipeline = self.client.pipeline(transaction=False)
        for queue in self.queues | self.delay_queues:
            pipeline.lpush(self.wake_key(queue), b"1")
            pipeline.pexpire(self.wake_key(queue), 2 * IDLE_WAIT_MS)
        with contextlib.suppress(redis.RedisError):
            pipeline.execute()

    @property
    def consumer_class(self) -> Callable[..., Consumer]:
        return _DoorbellRedisConsumer

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        enqueued: Message[Any] = super().enqueue(message, delay=delay)
        # The message is in Redis: a ring that fails now costs a wait, not a resend.
        with contextlib.suppress(redis.RedisError):
            self.ring(enqueued.queue_name)
        self.sent(enqueued.queue_name).set()
        return enqueued

    def flush(self, queue_name: str) -> None:
        super().flush(queue_name)
        for queue in (queue_name, dq_name(queue_name)):
            self.client.delete(doorbell_key(self.namespace, queue))

    def ring(self, queue: str, tokens: int = 1) -> None:
        """Wake up to ``tokens`` consumers waiting on ``queue`` (one round trip)."""
        key = doorbell_key(self.namespace, queue)
        pipeline = self.client.pipeline(transaction=False)
        pipeline.lpush(key, *[b"1"] * min(tokens, RINGS_KEPT))
        pipeline.ltrim(key, 0, RINGS_KEPT - 1)
        pipeline.execute()

    # Dramatiq decides maintenance per command (``_should_do_maintenance``) without
    # the queue, which the script maintains; the queue comes through a thread-local.
    def _dispatch(self, command: str) -> Callable[..., Any]:
        dispatch: Callable[..., Any] = super()._dispatch(command)  # type: ignore[no-untyped-call]

        def do_dispatch(queue_name: str, *args: Any) -> Any:
            self._local.queue = queue_name
            return dispatch(queue_name, *args)

        return do_dispatch

    def _should_do_maintenance(self, command: str) -> int:
        """1 for a fetch of a queue whose maintenance is due, then due again in
        :data:`MAINTENANCE_INTERVAL_MS` (a sender's enqueues never run it)."""
        if command != "fetch":
            return 0
        queue: str = self._local.queue
        now = time.monotonic()
        with self._maintenance_lock:
            if now < self._maintenance_due.get(queue, 0.0):
                return 0
            self._maintenance_due[queue] = now + MAINTENANCE_INTERVAL_MS / 1000
        return 1


class _DoorbellRedisConsumer(_ReleasesHeld, _RedisConsumer):
    """Dramatiq's Redis consumer, waiting on the doorbell while it holds nothing."""

    broker: DoorbellRedisBroker

    def __init__(self, broker: DoorbellRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self._bells = [doorbell_key(broker.namespace, queue_name), broker.wake_key(queue_name)]
        self._held = _HeldEtas()
        self._last_fetch = 0.0
        self._sent = broker.sent(queue_name)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        messages = list(messages)
        super().requeue(messages)  # type: ignore[no-untyped-call]
        if messages:
            self.broker.ring(self.queue_name, len(messages))

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:  # as Dramatiq's consumer: skip (its issue #266)
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    self._held.hold(message)
                    return MessageProxy(message)
                outstanding: int = self.outstanding_message_count
                self._sent.clear()  # what this process sends from now on ends the next poll
                if outstanding < self.prefetch or self._heartbeat_due():
                    self._last_fetch = time.monotonic()
                    # A full prefetch fetches nothing: the heartbeat (and maintenance) only.
                    self.message_cache = self.broker.do_fetch(
                        self.queue_name, max(0, self.prefetch - outstanding)
                    )
                    if self.message_cache:
                        continue
                # Nothing in hand, or only delayed messages: sleep until a ring or the
                # earliest is due. Messages being worked on: poll, as Dramatiq does.
                idle = outstanding == 0 or self._held.count() >= outstanding
                self._wait(self._held.until_due_ms(IDLE_WAIT_MS) if idle else None)
                return None
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]

    def _heartbeat_due(self) -> bool:
        return time.monotonic() - self._last_fetch >= IDLE_WAIT_MS / 1000

    def _wait(self, wait_ms: int | None) -> None:
        """Block on the doorbell for ``wait_ms``, or (``None``) back off as Dramatiq's
        consumer does, up to ``timeout`` (the worker's poll interval), unless this
        process enqueues on the queue meanwhile."""
        if wait_ms is None or wait_ms < _SHORTEST_WAIT_MS or self.broker.polling:
            self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
            if wait_ms is not None:
                backoff_ms = min(backoff_ms, wait_ms)
            self._sent.wait(backoff_ms / 1000)
            return
        self.misses = 0
        # A socket timeout shorter than the wait (``?socket_timeout=`` in the URL) ends it.
        with contextlib.suppress(redis.TimeoutError):
            self.broker.client.blpop(self._bells, timeout=wait_ms / 1000)


# Put on a stub queue by stop_waiting: wakes its consumer, carries no message.
_WAKE: Final = b""


class DoorbellStubBroker(StubBroker):
    """A ``StubBroker`` whose consumers wait up to :data:`IDLE_WAIT_MS` while idle
    (a put wakes them at once) rather than waking every ``worker_timeout``."""

    polling = False

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 100) -> Consumer:
        try:
            queue = self.queues[queue_name]
        except KeyError:
            raise QueueNotFound(queue_name) from None  # type: ignore[no-untyped-call]
        return _DoorbellStubConsumer(self, queue, queue_name, prefetch, timeout)

    def stop_waiting(self) -> None:
        """As :meth:`DoorbellRedisBroker.stop_waiting`: poll from now on, wake the waiting."""
        self.polling = True
        for queue in self.queues.values():
            queue.put(_WAKE)


class _DoorbellStubConsumer(_ReleasesHeld, _StubConsumer):
    def __init__(
        self, broker: DoorbellStubBroker, queue: Any, queue_name: str, prefetch: int, timeout: int
    ) -> None:
        dead_letters = broker.dead_letters_by_queue[queue_name]
        super().__init__(queue, dead_letters, prefetch, timeout)  # type: ignore[no-untyped-call]
        self._broker = broker
        self._poll_ms = timeout
        self._held = _HeldEtas()

    def __next__(self) -> MessageProxy | None:
        # Dramatiq's, but for the wait and _WAKE: a prefetch slot, then a message
        # (a release or a put ends either wait).
        if self._broker.polling:
            wait_s = self._poll_ms / 1000
        else:
            wait_s = self._held.until_due_ms(IDLE_WAIT_MS) / 1000
        if not self.prefetch_semaphore.acquire(timeout=wait_s):
            return None
        try:
            data = self.queue.get(timeout=wait_s)
        except Empty:
            self.prefetch_semaphore.release()
            return None
        if data == _WAKE:
            self.queue.task_done()
            self.prefetch_semaphore.release()
            return None
        proxy = _StubMessageProxy(Message.decode(data))
        self._held.hold(proxy)
        return proxy
