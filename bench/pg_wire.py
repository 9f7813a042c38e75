"""SQL round trips counted on the wire: a TCP proxy in front of PostgreSQL.

Counting in SQLAlchemy's events would miss what the driver sends by itself
(``BEGIN``, the pool's pre-ping, type introspection); counting on the server
needs superuser rights and its log. The proxy sees every message a client
sends and counts the ones it then waits on the server for, one round trip
each: a simple ``Query`` (``'Q'``) or the ``Sync`` (``'S'``) closing an
extended-protocol batch (parse/bind/execute). Each is labelled with its SQL:
the query text, or the text of the prepared statement the batch bound. ::

    proxy = WireCounter("127.0.0.1", 5432)
    port = await proxy.start()  # point the client at 127.0.0.1:<port>
    mark = len(proxy.trips)
    ...                         # the work to count
    statements = proxy.trips[mark:]

Plain-text connections only: an encrypted one cannot be read, so the proxy
answers ``N`` to a client asking for TLS (PostgreSQL's own "not here").
"""

from __future__ import annotations

import asyncio
import struct
from contextlib import suppress
from typing import Final

SSL_REQUEST: Final = 80877103
GSSENC_REQUEST: Final = 80877104
# Words that open and close transactions, and the pool's pre-ping (an empty statement).
BOOKKEEPING: Final = frozenset({"BEGIN", "COMMIT", "ROLLBACK", "", ";"})


def verb(sql: str) -> str:
    """The statement's first word, upper case (``""`` for an empty one)."""
    words = sql.strip().split(None, 1)
    return words[0].upper().rstrip(";") if words else ""


def is_bookkeeping(sql: str) -> bool:
    """``BEGIN``/``COMMIT``/``ROLLBACK`` or an empty ping: no work of the request's own."""
    return verb(sql) in BOOKKEEPING


def _cstrings(payload: bytes, count: int) -> list[str]:
    parts = payload.split(b"\0", count)
    return [part.decode("utf-8", "replace") for part in parts[:count]]


class WireCounter:
    """A PostgreSQL proxy that records every round trip its clients make, in order."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.trips: list[str] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on a free port of 127.0.0.1; that port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            server, to_server = await asyncio.open_connection(*self.upstream)
        except OSError:
            to_client.close()
            return
        back = asyncio.create_task(self._pipe(server, to_client))
        try:
            await self._client_to_server(client, to_client, to_server)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            to_server.close()
            back.cancel()
            with suppress(asyncio.CancelledError, OSError):
                await back
            to_client.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with suppress(OSError):
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        sink.close()

    async def _client_to_server(
        self,
        client: asyncio.StreamReader,
        to_client: asyncio.StreamWriter,
        to_server: asyncio.StreamWriter,
    ) -> None:
        # Untyped start-up messages first: a TLS or GSS request, then the start-up itself.
        while True:
            header = await client.readexactly(8)
            length, code = struct.unpack("!ii", header)
            rest = await client.readexactly(length - 8)
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                to_client.write(b"N")
                await to_client.drain()
                continue
            to_server.write(header + rest)
            break
        prepared: dict[str, str] = {}
        pending = ""
        while True:
            header = await client.readexactly(5)
            kind, length = header[:1], struct.unpack("!i", header[1:])[0]
            payload = await client.readexactly(length - 4)
            if kind == b"Q":
                self.trips.append(_cstrings(payload, 1)[0])
            elif kind == b"P":
                name, sql = _cstrings(payload, 2)
                prepared[name] = sql
                pending = sql
            elif kind == b"B":
                _portal, name = _cstrings(payload, 2)
                pending = prepared.get(name, pending)
            elif kind == b"S":
                self.trips.append(pending)
                pending = ""
            to_server.write(header + payload)
            await to_server.drain()
