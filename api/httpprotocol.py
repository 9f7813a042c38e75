"""uvicorn's h11 protocol, handing a request body's bytes to the app as they were read.

Depot serves HTTP/1.1 with h11 for its bound on a request's line and headers
(``api.cli.MAX_HEADER_BYTES``; httptools has none). For a body, h11 and
uvicorn copy each chunk the socket gave five times on the event loop before
the app sees it: into h11's receive buffer (``bytearray +=``), twice out of it
(``maybe_extract_at_most`` slices, then ``_extract`` slices again), into the
request cycle's buffer (``bytearray +=``) and out of that (``bytes(...)``). An
upload pays that for every byte: 1 GiB is 5 GiB of ``memmove`` on the one
thread that also parses, schedules and answers everything else.

:class:`DepotHTTPProtocol` takes a ``Content-Length`` body's bytes itself
while h11 has nothing buffered: it counts them off h11's reader, as h11 would,
and hands the chunk the socket gave (a ``bytes`` of its own) to the request
cycle as the next body message, uncopied. Everything else — the request line
and headers with their bound, chunked bodies, a chunk that ends the body
(h11 then sees the end, and parses whatever follows: a pipelined request),
a client waiting for ``100 Continue`` — is h11's as before, so its checks and
uvicorn's handling (flow control, disconnects, keep-alive) still apply.

:func:`api.cli.serve` hands uvicorn this class as its ``http`` protocol.
``tests/test_http_protocol.py`` pins the internals it reads.
"""

from __future__ import annotations

import h11
from h11._readers import ContentLengthReader
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.h11_impl import H11Protocol


class DepotHTTPProtocol(H11Protocol):
    """uvicorn's h11 protocol with uncopied ``Content-Length`` bodies (see the module)."""

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        reader = conn._reader
        if (
            type(reader) is not ContentLengthReader
            or conn.their_state is not h11.SEND_BODY
            or conn._receive_buffer
            or conn.client_is_waiting_for_100_continue
            or self.cycle is None
        ):
            super().data_received(data)
            return
        remaining: int = reader._remaining
        if len(data) < remaining:
            # The common case: all of it body, and more to come.
            self._unset_keepalive_if_required()
            reader._remaining = remaining - len(data)
            self._body(data)
            return
        # This chunk ends the body: the rest is h11's (the end of the message,
        # and whatever follows it on a kept-alive connection).
        self._unset_keepalive_if_required()
        reader._remaining = 0
        if len(data) == remaining:
            self._body(data)
        else:
            self._body(data[:remaining])
            conn.receive_data(data[remaining:])
        self.handle_events()

    def _body(self, chunk: bytes) -> None:
        """What uvicorn does with an ``h11.Data`` event, without its copies."""
        cycle = self.cycle
        if not chunk or self.conn.our_state is h11.DONE:
            return  # answered already: the rest of the body is not wanted
        if cycle.body:
            # Not read yet (a paused socket lets at most one more chunk in).
            cycle.body += chunk
        else:
            # receive() hands over bytes(cycle.body): the same object, for bytes.
            cycle.body = chunk  # type: ignore[assignment]
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()
