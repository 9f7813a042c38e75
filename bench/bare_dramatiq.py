"""The jobs bench's throughput baseline: a bare Dramatiq actor that only counts its messages.

It runs on the same Redis as Depot, in its own broker namespace (its queue
never mixes with Depot's), in a worker process of its own with as many
threads and the same poll interval as ``depot worker``. Its body is one
``INCR``, so what it measures is Dramatiq and Redis alone.

``python -m bench.bare_dramatiq --redis-url URL --threads N`` is that worker
(``bench.jobs`` starts it; ``python -m bench.jobs --bare-worker`` is the same).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Final

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from bench.harness import TIMEOUT_S, Process, cpu_seconds
from workers.broker import POLL_MS

NAMESPACE: Final = "depot-bench-bare"
QUEUE: Final = "noop"
COUNT_KEY: Final = f"{NAMESPACE}:count"
READY: Final = "bare worker ready"


def bare_actor(url: str) -> dramatiq.Actor[[], None]:
    """A Dramatiq actor that only counts its messages, on its own broker and namespace."""
    broker = RedisBroker(url=url, namespace=NAMESPACE)  # type: ignore[no-untyped-call]
    counter = redis.Redis.from_url(url)

    def noop() -> None:
        counter.incr(COUNT_KEY)

    return dramatiq.Actor(
        noop, broker=broker, actor_name="noop", queue_name=QUEUE, priority=0, options={}
    )


def serve_bare_worker(url: str, threads: int) -> None:
    """Run the baseline actor until SIGTERM (in its own process)."""
    actor = bare_actor(url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    # Depot's worker waits as long between looks at an idle Redis.
    worker = dramatiq.Worker(
        actor.broker, queues={QUEUE}, worker_threads=threads, worker_timeout=POLL_MS
    )
    actor.broker.emit_after("process_boot")
    worker.start()
    print(READY, file=sys.stderr, flush=True)
    while not stop.wait(1):
        pass
    worker.stop()
    actor.broker.close()


def bare_run(url: str, total: int) -> float:
    """Seconds from the first ``send`` until the worker has counted ``total`` messages."""
    actor = bare_actor(url)
    counter = redis.Redis.from_url(url)
    try:
        counter.delete(COUNT_KEY)
        started = time.perf_counter()
        for _ in range(total):
            actor.send()
        deadline = time.monotonic() + TIMEOUT_S
        while int(counter.get(COUNT_KEY) or 0) < total:
            if time.monotonic() > deadline:
                raise RuntimeError("the bare worker did not process its messages in time")
            time.sleep(0.001)
        return time.perf_counter() - started
    finally:
        counter.close()
        actor.broker.close()


def bare_throughput(
    workdir: Path, url: str, threads: int, total: int, rounds: int = 2
) -> tuple[float, float]:
    """The fastest of ``rounds`` bare runs, each timed with the bare worker already idle,
    and the worker's CPU seconds per message over all of them."""
    args = ["-m", "bench.bare_dramatiq", "--redis-url", url, "--threads", str(threads)]
    worker = Process("bare worker", args, os.environ, workdir / "bare-worker.log")
    try:
        worker.wait_for_output(READY)
        bare_run(url, min(total, 50))  # warm-up: connections, imports
        before = cpu_seconds(worker.pid)
        fastest = min(bare_run(url, total) for _ in range(rounds))
        return fastest, (cpu_seconds(worker.pid) - before) / (total * rounds)
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--redis-url", required=True, help="the Redis database to use")
    parser.add_argument("--threads", type=int, default=1, help="worker threads (1)")
    args = parser.parse_args(argv)
    serve_bare_worker(args.redis_url, args.threads)


if __name__ == "__main__":
    main()
