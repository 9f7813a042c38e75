"""Graceful drain: what each process of ``depot serve`` does between SIGTERM and its exit.

A replica that is told to stop (a rolling update, a scale-down) should lose
no request and strand no client:

1. At once, ``/readyz`` answers 503, so the load balancer stops sending new
   clients here. Everything else is still served, new connections included,
   for ``DEPOT_DRAIN_DELAY_SECONDS``: a balancer notices only at its next
   probe, and until then it still routes here.
2. Then uvicorn's graceful shutdown: the listening socket closes, requests in
   flight finish within ``DEPOT_SHUTDOWN_GRACE_SECONDS``, and every open
   WebSocket is closed with code 1012 ("service restart"), on which clients
   reconnect (to another replica) and resume their subscriptions from their
   cursors.
3. The lifespan closes the clients.

SIGINT (Ctrl-C), or a second SIGTERM during the delay, skips what is left of
the delay.

With ``--workers N`` uvicorn's supervisor forwards its SIGTERM to each
process it started, and each drains as above on its own: they share the port,
so all of them answer 503 on ``/readyz`` from the first instant, and each
finishes its own requests and closes its own sockets.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

SignalHandler = Callable[[int, FrameType | None], object]


class Drain:
    """Whether this process is going away, for ``/readyz`` to say so."""

    def __init__(self) -> None:
        self._since: float | None = None

    @property
    def draining(self) -> bool:
        return self._since is not None

    def begin(self) -> None:
        if self._since is None:
            self._since = time.monotonic()

    def take_over_signals(self, delay_seconds: float) -> None:
        """Put the drain in front of the uvicorn server that is starting this process's app.

        Called from the app factory (``api.app.create_draining_app``): uvicorn
        calls it on its event loop once its server has taken SIGTERM and
        SIGINT, in the single process of ``depot serve`` and in each of
        ``--workers N`` alike, so this is the one place both are reached
        from (the supervisor builds its processes' servers itself, with no
        hook for a server class of ours). Costs nothing per request.

        Raises ``RuntimeError`` when called anywhere else: a drain that
        silently did nothing would be found only in production.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            stop = signal.getsignal(signum)
            server = getattr(stop, "__self__", None)
            if not callable(stop) or not isinstance(server, uvicorn.Server):
                raise RuntimeError(
                    f"api.drain: {signal.Signals(signum).name} is not handled by a uvicorn server "
                    "here; build the app through uvicorn's factory call (factory=True), not before"
                )
            handler = functools.partial(self._on_signal, stop, loop, delay_seconds)
            signal.signal(signum, handler)

    def _on_signal(
        self,
        stop: SignalHandler,
        loop: asyncio.AbstractEventLoop,
        delay_seconds: float,
        sig: int,
        frame: FrameType | None,
    ) -> None:
        # A signal handler: it may only schedule work on the loop, thread-safely.
        delay = sig == signal.SIGTERM and not self.draining and delay_seconds > 0
        self.begin()
        if delay:
            loop.call_soon_threadsafe(loop.call_later, delay_seconds, stop, sig, frame)
        else:
            stop(sig, frame)
