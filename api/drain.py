"""Graceful drain: what ``depot serve`` does between SIGTERM and its exit.

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
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from types import FrameType

import uvicorn


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


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM first stops being ready, then stops.

    ``drain`` is the one the app's ``/readyz`` reads (``create_app(settings,
    drain=...)``); ``delay_seconds`` is how long it stays up not ready.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain, delay_seconds: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._delay_seconds = delay_seconds
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it may only schedule work on the loop, thread-safely.
        delay = sig == signal.SIGTERM and not self._drain.draining and self._delay_seconds > 0
        self._drain.begin()
        if delay and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_later, sig, frame)
        else:
            super().handle_exit(sig, frame)

    def _stop_later(self, sig: int, frame: FrameType | None) -> None:
        assert self._loop is not None
        self._loop.call_later(self._delay_seconds, super().handle_exit, sig, frame)
