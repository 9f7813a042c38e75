"""``api.httpprotocol``: request bodies handed over uncopied, on a real uvicorn on loopback.

A tiny ASGI app reads each body and answers its length and SHA-256, so a byte
miscounted, lost, duplicated or reordered on the way shows; raw sockets send
what clients send (bodies in pieces, a pipelined request after a body, a
``100 Continue`` wait, chunked bodies, a client that goes away). The internals
the protocol reads are pinned at the end: an h11 or uvicorn upgrade that moves
one fails here, by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import h11
import pytest
import uvicorn
from h11._readers import ContentLengthReader
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import RequestResponseCycle

from api.cli import MAX_HEADER_BYTES
from api.httpprotocol import DepotHTTPProtocol
from tests.processes import free_port

TIMEOUT_S = 10


class Echo:
    """Answers each request with its body's length, SHA-256 and how it ended."""

    def __init__(self) -> None:
        self.endings: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        digest = hashlib.sha256()
        length = 0
        ending = "complete"
        if scope["path"] == "/early":
            ending = "unread"  # answered before a byte of the body is read
        else:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    ending = "disconnect"
                    break
                assert isinstance(message["body"], bytes)
                digest.update(message["body"])
                length += len(message["body"])
                if not message.get("more_body", False):
                    break
        self.endings.append(ending)
        if ending == "disconnect":
            return
        body = json.dumps({"length": length, "sha256": digest.hexdigest()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def echo() -> Echo:
    return Echo()


@pytest.fixture(scope="module")
def port(echo: Echo) -> Iterator[int]:
    """uvicorn with Depot's protocol and header bound, as ``depot serve`` runs it."""
    number = free_port()
    config = uvicorn.Config(
        echo,
        host="127.0.0.1",
        port=number,
        http=DepotHTTPProtocol,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield number
    server.should_exit = True
    thread.join(TIMEOUT_S)


def _head(length: int | None, path: str = "/", *extra: bytes) -> bytes:
    lines = [b"POST %s HTTP/1.1" % path.encode(), b"Host: depot", *extra]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class Answers:
    """HTTP/1.1 responses read off a socket, one at a time (each with a Content-Length)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def next(self) -> tuple[int, bytes]:
        while True:
            while b"\r\n\r\n" not in self._buffer:
                self._receive()
            head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != 100:
                break
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self._buffer) < length:
            self._receive()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return status, body

    def _receive(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise AssertionError("the server closed the connection")
        self._buffer += chunk


def _expected(body: bytes) -> dict[str, Any]:
    return {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def _send_in_pieces(sock: socket.socket, data: bytes, piece: int) -> None:
    for start in range(0, len(data), piece):
        sock.sendall(data[start : start + piece])


@pytest.mark.parametrize("piece", [1, 1000, 65536, 1024 * 1024])
def test_a_body_sent_in_pieces_arrives_whole_and_the_connection_goes_on(
    port: int, piece: int
) -> None:
    size = 20_000 if piece == 1 else 6 * 1024 * 1024 + 7
    body = os.urandom(size)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        answers = Answers(sock)
        sock.sendall(_head(len(body)))
        _send_in_pieces(sock, body, piece)
        status, answer = answers.next()
        assert (status, json.loads(answer)) == (200, _expected(body))
        # The same connection carries the next request.
        sock.sendall(_head(3) + b"abc")
        assert json.loads(answers.next()[1]) == _expected(b"abc")


def test_a_request_pipelined_behind_a_body_is_parsed_after_it(port: int) -> None:
    first, second = os.urandom(3 * 1024 * 1024), os.urandom(1000)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        answers = Answers(sock)
        sock.sendall(_head(len(first)) + first[:1000])
        time.sleep(0.05)  # the head's request is under way: the rest goes the fast way
        sock.sendall(first[1000:] + _head(len(second)) + second)
        assert json.loads(answers.next()[1]) == _expected(first)
        assert json.loads(answers.next()[1]) == _expected(second)


def test_bytes_past_the_declared_length_are_the_next_request(port: int) -> None:
    body = os.urandom(100_000)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        answers = Answers(sock)
        sock.sendall(_head(len(body)))
        time.sleep(0.05)
        sock.sendall(body + b"NOT HTTP\r\n\r\n")
        assert json.loads(answers.next()[1]) == _expected(body)
        assert answers.next()[0] == 400  # h11 parsed the rest as a request line


def test_a_client_waiting_for_100_continue_gets_it_then_sends(port: int) -> None:
    body = os.urandom(2 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(_head(len(body), "/", b"Expect: 100-continue"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
        sock.sendall(body)
        assert json.loads(Answers(sock).next()[1]) == _expected(body)


def test_a_chunked_body_is_h11s_as_before(port: int) -> None:
    pieces = [os.urandom(n) for n in (10, 300_000, 1)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(_head(None, "/", b"Transfer-Encoding: chunked") + chunked)
        assert json.loads(Answers(sock).next()[1]) == _expected(b"".join(pieces))


def test_a_client_that_goes_away_mid_body_is_a_disconnect(port: int, echo: Echo) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(_head(10 * 1024 * 1024) + os.urandom(1024 * 1024))
        time.sleep(0.1)
    deadline = time.monotonic() + TIMEOUT_S
    while not echo.endings or echo.endings[-1] != "disconnect":
        assert time.monotonic() < deadline, echo.endings
        time.sleep(0.02)


def test_a_body_sent_after_the_answer_is_dropped_and_the_connection_goes_on(port: int) -> None:
    body = os.urandom(2 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        answers = Answers(sock)
        sock.sendall(_head(len(body), "/early"))
        assert json.loads(answers.next()[1]) == _expected(b"")
        _send_in_pieces(sock, body, 65536)
        sock.sendall(_head(2) + b"ok")
        assert json.loads(answers.next()[1]) == _expected(b"ok")


def test_the_internals_the_protocol_reads_are_there() -> None:
    """h11's and uvicorn's private names that ``api.httpprotocol`` relies on."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(_head(5) + b"ab")
    assert isinstance(connection.next_event(), h11.Request)
    reader = connection._reader
    assert type(reader) is ContentLengthReader
    assert reader._remaining == 5
    assert connection.their_state is h11.SEND_BODY
    assert bytes(connection._receive_buffer) == b"ab"
    assert connection.client_is_waiting_for_100_continue is False
    # A reader told it has nothing left ends the message.
    connection.next_event()  # the buffered "ab"
    reader._remaining = 0
    assert isinstance(connection.next_event(), h11.EndOfMessage)
    # uvicorn's cycle: a body buffer it hands over as bytes(...), and its event.
    fields = RequestResponseCycle.__init__.__code__.co_names
    assert {"body", "more_body", "message_event"} <= set(fields)
    chunk = os.urandom(300_000)
    assert bytes(chunk) is chunk  # receive()'s bytes(cycle.body): no copy for bytes
