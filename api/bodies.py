"""Reading a request body with bounds: no more than a limit, no long silence.

Every route that reads a body reads it through :func:`body_chunks`: the
GraphQL JSON body (bounded by ``DEPOT_MAX_REQUEST_BYTES``), the multipart
stream (its fields bounded in ``api.multipart``) and the direct-upload PUT
(bounded by its ticket). A client that declares or sends more than the limit
is refused at once, without reading the rest; one that stops sending for
``DEPOT_BODY_TIMEOUT_SECONDS`` is refused with 408. Header-read timeouts are
the reverse proxy's (``deploy/nginx.conf``): by the time a route runs, the
headers are in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request


class BodyRefused(Exception):
    """The body cannot be read: ``status`` and ``code`` say why, ``message`` how to fix it."""

    status = 400
    code = "BAD_REQUEST"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BodyTooLarge(BodyRefused):
    """Raised when the declared or received body passes its limit (413)."""

    status = 413
    code = "PAYLOAD_TOO_LARGE"


class BodySilent(BodyRefused):
    """Raised when the client sent nothing for the whole timeout (408)."""

    status = 408
    code = "REQUEST_TIMEOUT"


def too_large(limit: int, what: str = "A GraphQL request body") -> BodyTooLarge:
    """The refusal of a body over ``limit`` bytes, naming the setting."""
    return BodyTooLarge(
        f"{what} may have at most {limit} bytes (DEPOT_MAX_REQUEST_BYTES); send files "
        "as multipart uploads or with createUpload."
    )


def _silent(silence_s: float) -> BodySilent:
    return BodySilent(
        f"The request body stopped arriving for {silence_s:g} s "
        "(DEPOT_BODY_TIMEOUT_SECONDS); nothing of it was kept."
    )


def check_declared_length(request: Request, limit: int | None) -> None:
    """Refuse a ``Content-Length`` over ``limit`` before a byte of the body is read."""
    declared = request.headers.get("content-length", "")
    if limit is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)


async def body_chunks(
    request: Request, *, silence_s: float, limit: int | None = None
) -> AsyncIterator[bytes]:
    """``request.stream()``, refused past ``limit`` bytes or after ``silence_s`` s without one.

    Raises :class:`BodyTooLarge`, :class:`BodySilent`, or Starlette's
    ``ClientDisconnect`` when the client goes away.
    """
    check_declared_length(request, limit)
    received = 0
    chunks = request.stream().__aiter__()
    try:
        while True:
            try:
                # asyncio's own timeout: a timer handle, a few µs; anyio's cancel
                # scope cost ten times that, three times per JSON request.
                async with asyncio.timeout(silence_s):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _silent(silence_s) from None
            received += len(chunk)
            if limit is not None and received > limit:
                raise too_large(limit)
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def read_body(request: Request, *, silence_s: float, limit: int) -> bytes:
    """The whole body, under the same bounds; kept as ``request.body()`` will return it.

    The same rules as :func:`body_chunks`, with one timer moved on at each
    chunk instead of one per chunk: every GraphQL request reads its body here.
    """
    if hasattr(request, "_body"):
        return request._body
    check_declared_length(request, limit)
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    received = 0
    # The ASGI messages themselves, as Starlette's stream() reads them, without its
    # generator: a JSON body is almost always one message, and the timer moves on
    # only when another is to come.
    receive = request.receive
    try:
        async with asyncio.timeout(silence_s) as silence:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    if message["type"] == "http.disconnect":
                        request._is_disconnected = True
                        raise ClientDisconnect()
                    continue
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
                silence.reschedule(loop.time() + silence_s)
    except TimeoutError:
        raise _silent(silence_s) from None
    request._stream_consumed = True
    body = b"".join(chunks)
    # Starlette's own cache: later request.body() calls return these bytes.
    request._body = body
    return body
