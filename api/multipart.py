"""GraphQL multipart requests (the multipart request spec), parsed as they stream in.

Strawberry's own support reads the whole form before executing anything; a
5 GB upload would sit in temporary files first. Here the body is parsed by a
background task while the operation runs: ``operations`` and ``map`` come
first, execution starts as soon as they are in, and each file part flows to
the resolver reading it as it arrives.

Which part goes where, without deadlocks whatever the order of parts and
resolvers: when the parser reaches file part *j* it waits until *j*'s reader
starts iterating (then streams straight to it, with backpressure), or until
another reader is waiting for the parser — reading a part further on, or in
``complete()`` — (then spools *j* to a temporary file, on disk beyond 1 MiB, for
later). Once the operation has finished, the parser is cancelled: nobody will
read what is left.

Bounds, each refused as soon as it is passed: ``operations`` and ``map`` may
have ``DEPOT_MAX_REQUEST_BYTES`` each and the request ``DEPOT_MAX_UPLOAD_FILES``
files (413); a body silent for ``DEPOT_BODY_TIMEOUT_SECONDS`` is refused with
408 (``api.bodies``). A spooled part is paid for before it is written: its
bytes are reserved on the signed-in user's quota (``core.quota``, one
conditional UPDATE, so parallel requests of one user cannot together spool
more than the quota) and may not pass ``DEPOT_MAX_UPLOAD_BYTES``. When its
reader starts, the reservation is handed back and ``core.uploads`` reserves
the same bytes again as it stores them; what nobody read is released when
the request ends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from tempfile import SpooledTemporaryFile
from typing import IO, Any, Literal

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.bodies import BodyRefused, body_chunks
from core import quota
from core.errors import (
    BadRequest,
    DepotError,
    PayloadTooLarge,
    QuotaExceeded,
    RequestTimeout,
    Unauthenticated,
)
from core.settings import Settings

logger = structlog.get_logger("depot.multipart")

# Headers a browser cannot send cross-site without a CORS preflight: their
# presence proves the request is not a forged form post. Apollo Server's two
# (Apollo's iOS and Kotlin clients send `X-Apollo-Operation-Name` on their
# own), and Depot's own.
CSRF_HEADERS = ("x-depot-csrf", "apollo-require-preflight", "x-apollo-operation-name")
# The content types a cross-site form (or a "simple" fetch) may send without a preflight.
SIMPLE_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
CSRF_ADVICE = (
    "Multipart requests must carry the header `x-depot-csrf: 1` "
    "(or `Apollo-Require-Preflight: true`, or `X-Apollo-Operation-Name`) "
    "to prove they are not a cross-site form post."
)
SPOOL_IN_MEMORY = 1024 * 1024
READ_CHUNK = 256 * 1024
# Chunks in flight between the parser and a streaming reader.
STREAM_BUFFER = 4
# Quota is reserved for a spooled part this much ahead of its bytes (or just
# what they need, near the end of the quota): one UPDATE per MiB spooled.
SPOOL_RESERVE_STEP = 1024 * 1024
_ERRORS: dict[int, type[BadRequest]] = {408: RequestTimeout, 413: PayloadTooLarge}


def has_csrf_header(headers: Mapping[str, str]) -> bool:
    """Whether a browser must have asked (by a CORS preflight) before sending this request.

    Apollo Server's rule: a content type a form cannot send (anything but the
    three simple ones), or a non-empty one of ``CSRF_HEADERS``. A multipart
    upload's content type is a simple one, so uploads need the header.
    """
    content_type = headers.get("content-type")
    if content_type is not None:
        essence = content_type.partition(";")[0].strip().lower()
        if essence not in SIMPLE_CONTENT_TYPES:
            return True
    return any(headers.get(name) for name in CSRF_HEADERS)


class Refused(Exception):
    """The multipart request cannot be executed at all (a 400 answer, or ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


Mode = Literal["stream", "spool", "discard"]


class IncomingPart:
    """One file of the request, as ``core.uploads.IncomingFile``: readable once."""

    def __init__(self, uploads: MultipartUploads, field: str) -> None:
        self.field = field
        self.filename: str | None = None
        self.content_type: str | None = None
        self.mode: Mode | None = None  # None until the parser reaches the part
        self.ended = False
        self.error: DepotError | None = None
        self.iterating = False
        self.spool: IO[bytes] | None = None
        self.spooled = 0
        self.reserved = 0  # quota held for the spool
        self._uploads = uploads
        send, receive = anyio.create_memory_object_stream[bytes](STREAM_BUFFER)
        self.send: MemoryObjectSendStream[bytes] = send
        self.receive: MemoryObjectReceiveStream[bytes] = receive

    def __repr__(self) -> str:
        return f"<IncomingPart {self.field!r} {self.filename!r}>"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.iterating:
            raise BadRequest(f"File {self.field!r} can be read only once.")
        uploads = self._uploads
        self.iterating = True
        uploads.notify()
        try:
            await uploads.wait_for(lambda: self.mode is not None or uploads.done)
            if self.mode == "stream":
                async for chunk in self.receive:
                    yield chunk
            elif self.mode == "spool":
                await uploads.wait_for(lambda: self.ended or self.error is not None)
                # The reader pays for what it stores: hand the spool's reservation back.
                await uploads.release(self)
                if self.error is None and self.spool is not None:
                    async for chunk in self._read_spool(self.spool):
                        yield chunk
            self._check()
        finally:
            # A reader that stops early must not leave the parser blocked on it.
            self.receive.close()

    async def _read_spool(self, spool: IO[bytes]) -> AsyncIterator[bytes]:
        spool.seek(0)
        on_disk = self.spooled > SPOOL_IN_MEMORY
        while True:
            if on_disk:
                chunk = await anyio.to_thread.run_sync(spool.read, READ_CHUNK)
            else:
                chunk = spool.read(READ_CHUNK)
            if not chunk:
                return
            yield chunk

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if not self.ended:
            raise self._uploads.error or BadRequest(f"File {self.field!r} did not arrive whole.")

    async def complete(self) -> None:
        uploads = self._uploads
        await uploads.wait_for(lambda: uploads.done)
        if uploads.error is not None:
            raise uploads.error
        self._check()


class MultipartUploads:
    """The state of one multipart request: its operations, its files, its parser."""

    def __init__(self, request: Request, settings: Settings) -> None:
        self.request = request
        self.settings = settings
        self.parts: dict[str, IncomingPart] = {}
        self.done = False
        self.error: DepotError | None = None
        # The HTTP status of a failure that is the transport's (408, 413), else None.
        self.status: int | None = None
        # Whose quota pays for spooled parts: set once the request is signed in.
        self.owner_id: uuid.UUID | None = None
        self._operations: Any = None
        self._refusal: Refused | None = None
        self._ready = anyio.Event()
        self._changed = anyio.Event()
        self._readers_waiting = 0
        # Parser state for the part being read.
        self._index = -1
        self._headers: dict[str, str] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._field = bytearray()
        self._current: IncomingPart | None = None
        self._mode: Mode | Literal["field"] = "discard"
        self._ended = False
        self._problems: list[str] = []

    # -- coordination ---------------------------------------------------------

    def notify(self) -> None:
        """Wake everyone waiting for a change of state."""
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate`` holds, counting as a reader the parser may not wait for."""
        if predicate():
            return
        self._readers_waiting += 1
        self.notify()
        try:
            while not predicate():
                await self._changed.wait()
        finally:
            self._readers_waiting -= 1

    async def operations(self) -> Any:
        """``operations`` with every mapped path holding its incoming file."""
        await self._ready.wait()
        if self._refusal is not None:
            raise self._refusal
        return self._operations

    async def aclose(self) -> None:
        """Free spools, streams and their quota once the request is answered."""
        with anyio.CancelScope(shield=True):
            for part in self.parts.values():
                part.send.close()
                part.receive.close()
                if part.spool is not None:
                    part.spool.close()
                await self.release(part)

    async def release(self, part: IncomingPart) -> None:
        """Give back the quota held for ``part``'s spool."""
        if part.reserved and self.owner_id is not None:
            with anyio.CancelScope(shield=True):
                async with self.request.state.sessionmaker() as db:
                    await quota.release(db, self.owner_id, part.reserved)
                    await db.commit()
        part.reserved = 0

    async def _pay_for_spool(self, part: IncomingPart) -> None:
        """Reserve quota for ``part.spooled`` bytes, or refuse them before they are written."""
        limit = self.settings.max_upload_bytes
        if part.spooled > limit:
            raise QuotaExceeded(
                f"A file may have at most {limit} bytes (DEPOT_MAX_UPLOAD_BYTES); "
                "this one has more."
            )
        if part.spooled <= part.reserved:
            return
        if self.owner_id is None:
            raise Unauthenticated("Sign in to upload files.")
        needed = part.spooled - part.reserved
        async with self.request.state.sessionmaker() as db:
            try:
                await quota.reserve(db, self.owner_id, max(needed, SPOOL_RESERVE_STEP))
                part.reserved += max(needed, SPOOL_RESERVE_STEP)
            except QuotaExceeded:
                await quota.reserve(db, self.owner_id, needed)
                part.reserved += needed

    # -- parsing --------------------------------------------------------------

    async def parse(self) -> None:
        """Read the whole body, feeding readers; never raises (errors go to readers)."""
        try:
            await self._parse()
        except (Refused, BodyRefused) as exc:
            self._fail(exc.message, exc.status)
        except DepotError as exc:
            self._fail(str(exc), error=exc)
        except ClientDisconnect:
            self._fail("The client disconnected before the whole request arrived.")
        except MultipartParseError as exc:
            self._fail(f"The multipart body is malformed: {exc}.")
        except Exception:
            logger.exception("multipart parsing failed")
            self._fail("The multipart body could not be read.")

    def _fail(self, message: str, status: int = 400, *, error: DepotError | None = None) -> None:
        if error is None:
            error = _ERRORS.get(status, BadRequest)(message)
        if status != 400:
            self.status = status
        if not self._ready.is_set():
            self._refusal = Refused(message, status)
            self._ready.set()
        self.error = error
        for part in self.parts.values():
            if not part.ended:
                part.error = error
            part.send.close()
        self.done = True
        self.notify()

    async def _parse(self) -> None:
        _, params = parse_options_header(self.request.headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if not boundary:
            raise Refused("A multipart/form-data request needs a boundary.")
        events: list[tuple[str, bytes]] = []

        def data_callback(kind: str) -> Callable[[bytes, int, int], None]:
            def received(data: bytes, start: int, end: int) -> None:
                # A chunk that is all part data (most of a file's) goes on as it
                # came from the socket: slicing copied every byte of every file.
                whole = start == 0 and end == len(data)
                events.append((kind, data if whole else data[start:end]))

            return received

        def notice(kind: str) -> Callable[[], None]:
            return lambda: events.append((kind, b""))

        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": notice("part_begin"),
                "on_header_field": data_callback("header_field"),
                "on_header_value": data_callback("header_value"),
                "on_header_end": notice("header_end"),
                "on_headers_finished": notice("headers_finished"),
                "on_part_data": data_callback("part_data"),
                "on_part_end": notice("part_end"),
                "on_end": notice("end"),
            },
        )
        silence_s = self.settings.body_timeout_seconds
        async for chunk in body_chunks(self.request, silence_s=silence_s):
            if not chunk:
                continue
            parser.write(chunk)
            for kind, data in events:
                await self._handle(kind, data)
            events.clear()
        if not self._ended:
            raise Refused("The multipart body ended before its closing boundary.")
        self._finish()

    async def _handle(self, kind: str, data: bytes) -> None:
        if kind == "part_data":
            await self._data(data)
        elif kind == "part_begin":
            self._index += 1
            self._headers = {}
            files = self.settings.max_upload_files
            if self._index >= 2 + files:
                raise Refused(
                    f"A multipart request may carry at most {files} files "
                    "(DEPOT_MAX_UPLOAD_FILES); send the rest in another request.",
                    413,
                )
        elif kind == "header_field":
            self._header_field += data
        elif kind == "header_value":
            self._header_value += data
        elif kind == "header_end":
            name = self._header_field.decode("latin-1").lower()
            self._headers[name] = self._header_value.decode("latin-1")
            self._header_field.clear()
            self._header_value.clear()
        elif kind == "headers_finished":
            await self._begin_part()
        elif kind == "part_end":
            self._end_part()
        elif kind == "end":
            self._ended = True

    async def _begin_part(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", ""))
        name = options.get(b"name", b"").decode()
        filename = options.get(b"filename")
        expected = ("operations", "map")
        if self._index < len(expected):
            if name != expected[self._index]:
                raise Refused(
                    "A multipart request starts with the `operations` field, then `map`, "
                    f"then the files; part {self._index + 1} is {name!r}."
                )
            self._mode = "field"
            self._field.clear()
            return
        part = self.parts.get(name)
        if part is None:
            self._problems.append(f"part {name!r} is not in `map`")
            self._mode = "discard"
            return
        if part.mode is not None:
            self._problems.append(f"part {name!r} was sent twice")
            self._mode = "discard"
            return
        part.filename = filename.decode(errors="replace") if filename is not None else None
        part.content_type = self._headers.get("content-type")
        self._current = part
        await self._route(part)

    async def _route(self, part: IncomingPart) -> None:
        """Stream to a reader who is there; spool if another reader waits for the parser."""
        while not part.iterating and not self._readers_waiting:
            await self._changed.wait()
        if part.iterating:
            part.mode = self._mode = "stream"
        else:
            part.mode = self._mode = "spool"
            part.spool = SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed in close()
        self.notify()

    async def _data(self, data: bytes) -> None:
        if self._mode == "field":
            self._field += data
            limit = self.settings.max_request_bytes
            if len(self._field) > limit:
                raise Refused(
                    f"The `operations` and `map` fields may have at most {limit} bytes each "
                    "(DEPOT_MAX_REQUEST_BYTES).",
                    413,
                )
        elif self._mode == "stream":
            assert self._current is not None
            try:
                await self._current.send.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                # The reader stopped reading: the rest of the part is not wanted.
                self._mode = "discard"
        elif self._mode == "spool":
            part = self._current
            assert part is not None
            assert part.spool is not None
            part.spooled += len(data)
            await self._pay_for_spool(part)
            if part.spooled > SPOOL_IN_MEMORY:
                # On disk by now: keep blocking writes off the event loop.
                await anyio.to_thread.run_sync(part.spool.write, data)
            else:
                part.spool.write(data)

    def _end_part(self) -> None:
        if self._mode == "field":
            if self._index == 0:
                self._operations = _parse_json(bytes(self._field), "operations")
            else:
                file_map = _parse_json(bytes(self._field), "map")
                _substitute(self, self._operations, file_map)
                self._ready.set()
        elif self._current is not None:
            self._current.ended = True
            self._current.send.close()
            self._current = None
            self.notify()
        self._mode = "discard"

    def _finish(self) -> None:
        if self._index < 1:
            raise Refused("A multipart request needs the `operations` and `map` fields.")
        missing = [name for name, part in self.parts.items() if part.mode is None]
        problems = [f"map entry {name!r} has no file part" for name in missing]
        problems += self._problems
        if problems:
            self._fail("The multipart request is inconsistent: " + "; ".join(problems) + ".")
            return
        self.done = True
        self.notify()


def _parse_json(raw: bytes, field: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise Refused(f"The `{field}` field must be JSON.") from None


def _substitute(uploads: MultipartUploads, operations: Any, file_map: Any) -> None:
    """Put an incoming file at each path that ``map`` names; refuse a path that is not there."""
    if not isinstance(operations, dict | list):
        raise Refused("The `operations` field must be a JSON object (or a list of them).")
    if not isinstance(file_map, dict) or not all(
        isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)
        for paths in file_map.values()
    ):
        raise Refused('The `map` field must be a JSON object like {"0": ["variables.file"]}.')
    files = uploads.settings.max_upload_files
    if len(file_map) > files:
        raise Refused(
            f"A multipart request may carry at most {files} files (DEPOT_MAX_UPLOAD_FILES); "
            f"this `map` names {len(file_map)}.",
            413,
        )
    for name, paths in file_map.items():
        # Registered at once, so that close() frees it even if a later path is refused.
        part = uploads.parts[name] = IncomingPart(uploads, name)
        for path in paths:
            *steps, last = path.split(".")
            try:
                target = operations
                for step in steps:
                    target = target[int(step)] if isinstance(target, list) else target[step]
                if isinstance(target, list):
                    target[int(last)] = part
                elif isinstance(target, dict) and last in target:
                    target[last] = part
                else:
                    raise KeyError(last)
            except (KeyError, IndexError, ValueError, TypeError):
                raise Refused(
                    f"`map` entry {name!r} names {path!r}, which is not in `operations`."
                ) from None
