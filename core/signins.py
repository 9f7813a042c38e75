"""This process's signed-in users: one credentials watch per user, and the sign-in cache.

A signed-in request used to cost a ``SELECT`` (the session's or token's row
and its user's), and every open WebSocket its own task and its own
subscription to the user's ``credentials:<id>`` stream. Both now go through
one :class:`SignIns` per process (the app's lifespan holds it):

* **The watch.** A user with open sockets or cached sign-ins here has one
  task listening to their ``CredentialsRevoked`` announcements
  (:mod:`core.events`), whatever the number of sockets. An announcement
  drops the user's cached sign-ins and has each of their sockets recheck its
  credential (:func:`core.auth.recheck`), closing those that ended; a rare
  poll (``DEPOT_WS_AUTH_RECHECK_SECONDS``) covers an announcement lost in
  transit, and a socket's access token expiring wakes it too. The task ends
  with the user's last socket and last cached sign-in.
* **The cache.** A verified credential (a session's id, a personal access
  token's hash) maps to the snapshot of its user and credential, for
  ``DEPOT_SIGN_IN_CACHE_SECONDS`` and at most :data:`MAX_ENTRIES` entries.
  A change that ends or alters a credential or the account calls
  :meth:`SignIns.changed`:
  this process drops the user's entries at once, the others when the
  announcement reaches their watch, and the TTL bounds an announcement lost
  on the way (Redis Pub/Sub is best-effort). An entry is only filled while
  the user's watch was already listening before the row was read and no
  revocation came since, so an announcement cannot slip between the read and
  the fill. Embedded (one process), every change is exact at once.

Used on the event loop only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

import structlog
from sqlalchemy import inspect
from sqlalchemy.orm import attributes, make_transient_to_detached
from sqlmodel.ext.asyncio.session import AsyncSession

from core.auth import Presented, Principal, recheck, verify
from core.db import SessionMaker
from core.errors import Unauthenticated
from core.eventlog import EventLog, Listener
from core.events import CredentialsRevoked, announce, credentials_stream
from core.models import User
from core.time import utcnow
from core.tokens import CLOCK_SKEW

logger = structlog.get_logger("depot.auth")

# Cached sign-ins kept at most, oldest dropped first: about 2 KiB each (the
# user's row and the entry), so 20 MiB at most, and one watch per user cached.
MAX_ENTRIES: Final = 10_000
# How long a watch waits for the event bus to listen before its sockets only poll.
LISTEN_PATIENCE_S: Final = 5.0
# A WebSocket close reason may have at most 123 bytes.
_MAX_CLOSE_REASON: Final = 123

_USER_COLUMNS: Final = tuple(attr.key for attr in inspect(User).column_attrs)
_USER_ID: Final = _USER_COLUMNS.index("id")
_NEW_USER: Final = inspect(User).class_manager.new_instance

Close = Callable[[int, str], Awaitable[None]]


def _snapshot(user: User) -> dict[str, Any]:
    return {key: getattr(user, key) for key in _USER_COLUMNS}


def _user_from(values: dict[str, Any]) -> User:
    """A detached ``User`` with ``values``, as a query would have left it after ``expunge``.

    Each request gets its own (a resolver may ``db.add`` it); built the way the
    ORM loads a row, which costs about 15 µs against ``User(**values)``'s 90.
    """
    user: User = _NEW_USER()
    attributes.instance_state(user)
    user.__dict__.update(values)
    make_transient_to_detached(user)
    return user


@dataclass(frozen=True, slots=True)
class DetachedPrincipal:
    """A principal as a long-lived connection holds it: the user's columns, not an ORM row.

    A WebSocket keeps its sign-in for as long as it is open, and an ORM ``User``
    (its instance state, SQLModel's fields-set, its ``__dict__``) is about
    1.5 KiB of it; the columns' values are a tuple here. :meth:`principal`
    builds a fresh :class:`~core.auth.Principal` for each use, as a cached
    sign-in does (about 15 µs).
    """

    values: tuple[Any, ...]
    session_id: uuid.UUID | None
    access_token_id: uuid.UUID | None
    expires_at: datetime | None
    personal_token_expires_at: datetime | None

    @classmethod
    def of(cls, principal: Principal) -> DetachedPrincipal:
        user = principal.user
        return cls(
            tuple(getattr(user, key) for key in _USER_COLUMNS),
            principal.session_id,
            principal.access_token_id,
            principal.expires_at,
            principal.personal_token_expires_at,
        )

    @property
    def user_id(self) -> uuid.UUID:
        user_id: uuid.UUID = self.values[_USER_ID]
        return user_id

    def principal(self) -> Principal:
        return Principal(
            _user_from(dict(zip(_USER_COLUMNS, self.values, strict=True))),
            session_id=self.session_id,
            access_token_id=self.access_token_id,
            expires_at=self.expires_at,
            personal_token_expires_at=self.personal_token_expires_at,
        )


@dataclass(slots=True)
class _Entry:
    principal: Principal
    user: dict[str, Any]
    # time.monotonic() past which the entry is not used.
    until: float


@dataclass(eq=False, slots=True)
class SocketWatch:
    """One socket in its user's watch (:meth:`SignIns.watching`)."""

    principal: DetachedPrincipal
    close: Close


@dataclass(eq=False, slots=True)
class _Watch:
    """One user's listener, its sockets here and its cached sign-ins' keys.

    One per user with a socket here: slots, not a ``__dict__`` (about 0.5 KiB).
    """

    user_id: uuid.UUID
    # A dict as an ordered set: empty, 64 bytes against a set's 216 (most users
    # here have sockets and no cached sign-in, or the reverse).
    sockets: dict[SocketWatch, None] = field(default_factory=dict)
    keys: dict[str, None] = field(default_factory=dict)
    # time.monotonic() when the listener started listening (None: not yet, or never).
    listening_since: float | None = None
    # time.monotonic() of the last revocation heard or made here.
    revoked_at: float = float("-inf")
    # time.monotonic() until which a sign-in wants the watch kept without sockets.
    wanted_until: float = float("-inf")
    # Set (`_wake`) to have the watch look again now; `recheck` to have its sockets
    # rechecked. `waiter` is what the watch waits on meanwhile: a future, not an
    # asyncio.Event, whose wait() would need a task of its own (about 2 KiB a user).
    woken: bool = False
    waiter: asyncio.Future[None] | None = None
    recheck: bool = False
    task: asyncio.Task[None] | None = None


def _wake(watch: _Watch) -> None:
    """Have ``watch`` look again now (its sockets, its entries, its nearest expiry)."""
    watch.woken = True
    if watch.waiter is not None:
        _resolve(watch.waiter)


def _waiter(
    watch: _Watch, listener: Listener | None, seconds: float
) -> asyncio.Future[None] | None:
    """What ``watch`` waits on for up to ``seconds``; None when there is news already.

    One future for all three kinds of news: the mailbox's own, which
    :func:`_wake` and the caller's timer resolve too. ``asyncio.wait`` over
    ``Event.wait()`` and ``Mailbox.get()`` would wrap each in a task, two per
    user for as long as the user is idle (3 KiB).
    """
    if seconds <= 0 or watch.woken or (listener is not None and not listener.queue.empty()):
        return None
    loop = asyncio.get_running_loop()
    watch.waiter = listener.queue.ready() if listener is not None else loop.create_future()
    return watch.waiter


def _heard(listener: Listener | None) -> bool:
    """Whether a revocation (or a lost-event warning) came; the mailbox emptied."""
    heard = False
    while listener is not None and not listener.queue.empty():
        listener.queue.get_nowait()  # several revocations at once need one recheck
        heard = True
    return heard


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class SignIns:
    """This process's credentials watches and sign-in cache (see the module's docstring)."""

    def __init__(
        self,
        events: EventLog,
        sessionmaker: SessionMaker,
        *,
        cache_seconds: float,
        recheck_seconds: float,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._events = events
        self._sessionmaker = sessionmaker
        self._ttl = cache_seconds
        self._recheck_s = recheck_seconds
        self._max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._watches: dict[uuid.UUID, _Watch] = {}

    # -- the cache -------------------------------------------------------------

    async def sign_in(
        self,
        credential: Presented,
        db: Callable[[], AbstractAsyncContextManager[AsyncSession]] | None = None,
    ) -> Principal:
        """The principal behind ``credential``: cached, else read in a session of ``db``
        (default: a session of its own) and cached for the next request.

        Every signed-in request goes through here, GraphQL's (``api.context``) and
        the byte routes' (``api.tus``): a stream of requests with one credential
        pays one read, not one each. Raises ``Unauthenticated`` as
        :func:`core.auth.verify` does.
        """
        expires_at = credential.claims.expires_at if credential.claims is not None else None
        principal = self.get(credential.key, expires_at)
        if principal is not None:
            return principal
        started = self.now()
        async with (db or self._sessionmaker)() as session:
            principal = await verify(session, credential)
            # Out of the session: a later block's rollback would expire it, and an
            # expired row cannot load itself again in async code.
            session.expunge(principal.user)
        self.put(credential.key, principal, started)
        return principal

    @staticmethod
    def now() -> float:
        """The clock :meth:`put` compares with: read it before reading the credential's row."""
        return time.monotonic()

    def get(self, key: str, expires_at: datetime | None = None) -> Principal | None:
        """The cached principal of the credential ``key``, or None (a dict lookup).

        ``expires_at`` is the presented access token's own expiry: tokens of one
        session share its entry.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.until <= time.monotonic():
            self._drop(key)
            return None
        principal = entry.principal
        return replace(principal, user=_user_from(entry.user), expires_at=expires_at)

    def put(self, key: str, principal: Principal, started: float) -> None:
        """Remember a principal verified from rows read after ``started`` (:meth:`now`).

        Skipped unless the user's watch listened since before ``started`` and
        heard no revocation since: the first request of a user here starts
        the watch and is not cached; the next is.
        """
        if self._ttl <= 0:
            return
        watch = self._watch(principal.user.id)
        # A user signing in keeps the watch up two TTLs: their next sign-in is cached, and
        # the one after their entry lapses is cached again without waiting for a new watch.
        watch.wanted_until = time.monotonic() + 2 * self._ttl
        if (
            watch.listening_since is None
            or watch.listening_since > started
            or watch.revoked_at >= started
        ):
            return
        until = time.monotonic() + self._ttl
        lapses = principal.personal_token_expires_at
        if lapses is not None:
            until = min(until, time.monotonic() + (lapses - utcnow()).total_seconds())
        self._drop(key)
        stored = replace(principal, expires_at=None)
        self._entries[key] = _Entry(stored, _snapshot(principal.user), until)
        watch.keys[key] = None
        while len(self._entries) > self._max_entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            watch = self._watches.get(entry.principal.user.id)
            if watch is not None:
                watch.keys.pop(key, None)

    def forget(self, user_id: uuid.UUID) -> None:
        """Drop ``user_id``'s cached sign-ins here, and refuse fills begun before now."""
        watch = self._watches.get(user_id)
        if watch is None:
            return
        watch.revoked_at = time.monotonic()
        for key in list(watch.keys):
            self._drop(key)

    async def changed(self, user_id: uuid.UUID) -> None:
        """After a committed change to ``user_id``'s credentials or account: tell everyone.

        This process forgets the user's sign-ins at once and rechecks their
        sockets; the announcement (best-effort) tells every other process.
        """
        self.forget(user_id)
        watch = self._watches.get(user_id)
        if watch is not None and watch.sockets:
            watch.recheck = True
            _wake(watch)
        await announce(self._events, CredentialsRevoked.of(user_id), owner_id=user_id)

    # -- the watch -------------------------------------------------------------

    def watching(self, principal: DetachedPrincipal, close: Close) -> SocketWatch:
        """Watch a signed-in socket's credential until :meth:`unwatch`.

        ``close(4403, reason)`` is called once the credential has ended (a
        revoked session or token, a deactivated user, an expired access token).
        """
        socket = SocketWatch(principal, close)
        watch = self._watch(principal.user_id)
        watch.sockets[socket] = None
        _wake(watch)  # its expiry may be the nearest
        return socket

    def unwatch(self, socket: SocketWatch) -> None:
        watch = self._watches.get(socket.principal.user_id)
        if watch is not None:
            watch.sockets.pop(socket, None)
            _wake(watch)

    def _watch(self, user_id: uuid.UUID) -> _Watch:
        watch = self._watches.get(user_id)
        if watch is None:
            watch = _Watch(user_id)
            self._watches[user_id] = watch
            watch.task = asyncio.create_task(self._run(watch), name="depot-credentials-watch")
        return watch

    async def _run(self, watch: _Watch) -> None:
        """The watch's task: until the user has no socket and no cached sign-in here.

        One coroutine awaiting one future while idle: every further frame, task
        or context manager would be held per user for as long as they have a
        socket here.
        """
        # Entered and left by hand, not through an AsyncExitStack (its deque alone 0.8 KiB).
        listening = self._events.listen(credentials_stream(watch.user_id))
        try:
            listener = await self._listen(listening)
            if listener is not None:
                watch.listening_since = time.monotonic()
            next_poll = time.monotonic() + self._recheck_s
            while True:
                now = time.monotonic()
                for key in [key for key in watch.keys if self._entries[key].until <= now]:
                    self._drop(key)
                if not watch.sockets and not watch.keys and watch.wanted_until <= now:
                    # Gone before any await, so that no socket or entry joins a watch that ends.
                    del self._watches[watch.user_id]
                    return
                # Without sockets, the watch ends once its entries have lapsed and nobody wants it.
                lapses = float("inf")
                if not watch.sockets:
                    lapses = max([self._entries[key].until for key in watch.keys], default=now)
                    lapses = max(lapses, watch.wanted_until)
                # Just past the soonest expiry, so that the recheck finds the token expired.
                wait = min(next_poll - now, self._to_expiry(watch) + 0.05, lapses - now)
                waiter = _waiter(watch, listener, wait)
                if waiter is not None:
                    timer = asyncio.get_running_loop().call_later(wait, _resolve, waiter)
                    try:
                        await waiter
                    finally:
                        timer.cancel()
                        watch.waiter = None
                watch.woken = False
                if _heard(listener):
                    self.forget(watch.user_id)
                    watch.recheck = True
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + self._recheck_s
                    watch.recheck = True
                if watch.recheck or self._to_expiry(watch) <= 0:
                    watch.recheck = False
                    await self._recheck(watch)
        finally:
            await listening.__aexit__(None, None, None)
            watch.listening_since = None
            if self._watches.get(watch.user_id) is watch:  # cancelled, or a bug
                del self._watches[watch.user_id]
            for key in list(watch.keys):
                self._drop(key)

    @staticmethod
    async def _listen(listening: AbstractAsyncContextManager[Listener]) -> Listener | None:
        """Listen to the user's revocations; None (poll only) if the bus does not answer in time."""
        try:
            async with asyncio.timeout(LISTEN_PATIENCE_S):
                return await listening.__aenter__()
        except Exception:
            logger.warning("not listening for revocations; sockets poll", exc_info=True)
            return None

    @staticmethod
    def _to_expiry(watch: _Watch) -> float:
        """Seconds until the soonest of the sockets' access tokens has expired, leeway included."""
        now = utcnow()
        return min(
            (
                (socket.principal.expires_at + CLOCK_SKEW - now).total_seconds()
                for socket in watch.sockets
                if socket.principal.expires_at is not None
            ),
            default=float("inf"),
        )

    async def _recheck(self, watch: _Watch) -> None:
        """Close the user's sockets whose credential has ended.

        A database that cannot be reached keeps them open: a failed recheck is
        not a refusal.
        """
        for socket in list(watch.sockets):
            try:
                async with self._sessionmaker() as db:
                    await recheck(db, socket.principal.principal())
            except Unauthenticated as exc:
                watch.sockets.pop(socket, None)
                reason = f"Forbidden: {exc}".encode()[:_MAX_CLOSE_REASON]
                try:
                    await socket.close(4403, reason.decode(errors="ignore"))
                except Exception:  # gone already; the others are still watched
                    logger.info("websocket closed before its credential ended", exc_info=True)
            except Exception:
                logger.warning("websocket credential recheck failed", exc_info=True)

    async def aclose(self) -> None:
        """Stop every watch (the app is shutting down)."""
        for watch in list(self._watches.values()):
            if watch.task is not None:
                watch.task.cancel()
                with suppress(asyncio.CancelledError):
                    await watch.task
        self._watches.clear()
        self._entries.clear()
