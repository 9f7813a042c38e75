"""uvicorn's WebSocket protocol, holding less for each socket that waits.

Most of Depot's sockets are idle: a browser tab with a subscription open
for hours. uvicorn's default protocol (``websockets``' sans-I/O one) keeps,
for each, four things only the handshake or a busy socket needs, measured
with tracemalloc in a real ``depot serve`` (``bench/README.md``, part 3):

* an ``asyncio.Queue`` of the ASGI events the app has not received yet:
  four deques and an Event, 3.2 KiB empty; here a
  :class:`core.eventlog.Mailbox` (a list, and a future while the app waits);
* the handshake's parsed request and its response, headers and all
  (about 3.5 KiB), kept after the accept though nothing reads them again
  (the ASGI scope has its own copy of the request's headers). The
  request is also a local of ``websockets``' parser, a generator that runs
  as long as the connection, so dropping uvicorn's reference frees nothing:
  its headers are emptied instead, once uvicorn has read them;
* the ASGI scope's ``headers`` (1.2 KiB), emptied once the handshake's
  answer has gone out: the app reads them before it accepts;
* an ``asyncio.Event`` that says whether the transport takes more bytes
  (0.8 KiB with its deque of waiters); here :class:`_Writable`, which holds
  a list only while the transport is paused.

:func:`api.cli.serve` hands uvicorn this class as its ``ws`` protocol. The
rest is uvicorn's own, so its fixes and its tests still apply.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.http11 import Request

from core.eventlog import Mailbox


class _Writable:
    """What uvicorn uses of ``asyncio.Event`` for its "the transport takes more" flag.

    Set (open) almost always; only a paused transport keeps its waiters.
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        # None while set; the futures of the sends waiting while cleared.
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._waiters is None

    def set(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        if self._waiters is None:
            self._waiters = []

    async def wait(self) -> None:
        if self._waiters is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter


class DepotWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with a smaller idle socket (see the module)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Read by one reader, the app's receive(), as uvicorn's queue is.
        self.queue: Mailbox[ASGIReceiveEvent] = Mailbox()  # type: ignore[assignment]
        self.writable: _Writable = _Writable()  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # Answered, and copied into the ASGI scope: websockets' parser still holds it.
        event.headers.clear()

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if self.handshake_complete and "request" in self.__dict__:
            # Only the handshake reads them: the accept (or refusal) has gone out.
            del self.__dict__["request"]
            self.__dict__.pop("response", None)
            # And the scope's copy of the request's headers (1.2 KiB), in place, so
            # that Starlette's `WebSocket.headers` over the same list lets go too:
            # the app has read them while it built the socket's context and
            # decided to accept; an operation over the socket reads none.
            headers = self.scope["headers"]
            if isinstance(headers, list):
                headers.clear()
