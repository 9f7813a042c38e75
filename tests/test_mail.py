"""Mail through GraphQL, against a real SMTP server on loopback (aiosmtpd).

Each test reads what the server received — headers, the text and HTML parts,
the link — and follows the link to the end of its flow: password reset,
address verification, email change, admin reset, notifications and their
unsubscribe link. A server that refuses, then drops, the connection shows
the actor trying again until the mail arrives, its token still good.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import event, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import create_engine
from core.models import EmailToken, Role
from core.settings import Settings
from core.time import utcnow
from tests.conftest import make_settings, serve_app
from tests.processes import depot_worker, free_port
from tests.support import (
    CSRF_HEADER,
    PASSWORD,
    assert_error,
    bearer,
    graphql,
    register,
    require_service,
    sign_in,
    start_job,
    subscribe,
    subscriber,
    try_login,
    try_upload_file,
    update_user,
    upload_file,
    wait_for_job,
)
from tests.test_access_tokens import create_token
from tests.test_admin import ADMIN_EMAIL, ADMIN_PASSWORD, create_admin
from tests.test_cli import depot

pytestmark = pytest.mark.anyio

T = TypeVar("T")

NEW_PASSWORD = "a brand new passphrase"
MAIL_TIMEOUT_S = 20
REQUEST_RESET = "mutation Ask($email: String!) { requestPasswordReset(email: $email) }"
RESET = (
    "mutation Reset($token: String!, $password: String!) "
    "{ resetPassword(token: $token, newPassword: $password) { accessToken user { email } } }"
)
VERIFY = "mutation Verify($token: String!) { verifyEmail(token: $token) }"
RESEND = "mutation { resendVerification }"
CHANGE_EMAIL = (
    "mutation Change($email: String!, $password: String!) "
    "{ changeEmail(newEmail: $email, password: $password) }"
)
ME = "query { me { email emailVerified notificationPreferences { jobSucceeded jobFailed } } }"
SEND_RESET = "mutation Send($id: ID!) { sendPasswordReset(userId: $id) }"
TOKEN = re.compile(r"[?&]token=([\w-]+)")


class Inbox:
    """What the SMTP server received; it refuses or drops the next few mails when told."""

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self.drop_next = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        with self._lock:
            if self.drop_next:
                self.drop_next -= 1
                assert server.transport is not None
                server.transport.close()  # mid-transaction, before any answer
                return "421 4.3.2 closing"
            raw = envelope.original_content or envelope.content
            assert isinstance(raw, bytes)
            mail = message_from_bytes(raw, policy=policy.default)
            assert isinstance(mail, EmailMessage)
            self.mails.append(mail)
        return "250 2.0.0 OK"

    def to(self, address: str, about: str = "") -> list[EmailMessage]:
        """The mails to ``address`` so far whose subject has ``about`` in it."""
        with self._lock:
            return [m for m in self.mails if m["To"] == address and about in m["Subject"]]

    async def next(self, address: str, about: str, seen: int = 0) -> EmailMessage:
        """The mail to ``address`` about ``about`` after the first ``seen``, once it arrives
        (two worker threads send mails in either order)."""
        later = await until(lambda: self.to(address, about)[seen:])
        return later[0]


async def until(check: Callable[[], T]) -> T:
    """``check()`` once it is true, polled until ``MAIL_TIMEOUT_S``."""
    with anyio.fail_after(MAIL_TIMEOUT_S):
        while True:
            if found := check():
                return found
            await anyio.sleep(0.02)


@contextmanager
def smtp_server(port: int | None = None) -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = port or free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def inbox(smtp: tuple[Inbox, int]) -> Inbox:
    return smtp[0]


def mail_settings(tmp_path: Path, database_url: str, port: int, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_url,
        smtp_url=f"smtp://127.0.0.1:{port}",
        frontend_url="https://app.example.com/",
        product_name="Acme Files",
        email_verification=True,
        **overrides,
    )


@pytest.fixture
async def client(
    tmp_path: Path, database_url: str, smtp: tuple[Inbox, int], request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    marker = request.node.get_closest_marker("settings")
    overrides = marker.kwargs if marker is not None else {}
    async with serve_app(mail_settings(tmp_path, database_url, smtp[1], **overrides)) as client:
        yield client


def parts(mail: EmailMessage) -> tuple[str, str]:
    """The text and the HTML of a mail."""
    text, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert text is not None, mail
    assert html is not None, mail
    return str(text.get_content()), str(html.get_content())


def token_of(mail: EmailMessage, page: str) -> str:
    """The token of the link to the frontend's ``page``, the same in both parts."""
    text, html = parts(mail)
    link = f"https://app.example.com/{page}?token="
    assert link in text, text
    assert link in html, html
    tokens = {TOKEN.search(part[part.index(link) :]).group(1) for part in (text, html)}  # type: ignore[union-attr]
    assert len(tokens) == 1, tokens
    return tokens.pop()


async def ask_reset(client: httpx.AsyncClient, email: str = "ada@example.com") -> dict[str, Any]:
    return await graphql(client, REQUEST_RESET, {"email": email})


async def reset(client: httpx.AsyncClient, token: str, password: str = NEW_PASSWORD) -> Any:
    return await graphql(client, RESET, {"token": token, "password": password})


async def reset_token(client: httpx.AsyncClient, inbox: Inbox, seen: int) -> str:
    """Ask for a reset of Ada's password; the token of the mail that comes."""
    assert (await ask_reset(client))["data"] == {"requestPasswordReset": True}
    mail = await inbox.next("ada@example.com", "Reset", seen)
    assert mail["Subject"] == "Reset your Acme Files password"
    return token_of(mail, "reset-password")


# -- password reset -------------------------------------------------------------------


async def test_a_reset_mail_sets_a_new_password_ends_every_session_and_signs_in(
    client: httpx.AsyncClient, inbox: Inbox
) -> None:
    ada = await register(client)
    script = (await create_token(client, bearer(ada["accessToken"])))["token"]
    assert (await ask_reset(client, " Ada@Example.com "))["data"] == {"requestPasswordReset": True}
    mail = await inbox.next("ada@example.com", "Reset")
    assert mail["From"] == "Acme Files <noreply@localhost>"
    assert mail["Subject"] == "Reset your Acme Files password"
    assert mail["Message-ID"]
    assert mail["Date"]
    assert mail.get_content_type() == "multipart/alternative"
    text, html = parts(mail)
    assert "30 minutes" in text
    assert "Acme Files" in html
    token = token_of(mail, "reset-password")
    assert token.startswith("dpw_")

    body = await reset(client, token)
    assert "errors" not in body, body
    payload = body["data"]["resetPassword"]
    assert payload["user"]["email"] == "ada@example.com"
    me = await graphql(client, ME, headers=bearer(payload["accessToken"]))
    assert me["data"]["me"]["emailVerified"] is True  # the mail proved the address
    assert_error(await graphql(client, ME, headers=bearer(ada["accessToken"])), "UNAUTHENTICATED")
    assert_error(await graphql(client, ME, headers=bearer(script)), "UNAUTHENTICATED")
    assert_error(await try_login(client, "ada@example.com", PASSWORD), "UNAUTHENTICATED")
    await sign_in(client, password=NEW_PASSWORD)

    # Used once, it is used up.
    error = assert_error(
        await reset(client, token, "yet another passphrase"), "BAD_USER_INPUT", field="token"
    )
    assert "used already" in error["message"]


async def test_a_newer_reset_mail_replaces_the_older_and_a_bad_password_keeps_the_token(
    client: httpx.AsyncClient, inbox: Inbox
) -> None:
    await register(client)
    first = await reset_token(client, inbox, 0)
    second = await reset_token(client, inbox, 1)
    error = assert_error(await reset(client, first), "BAD_USER_INPUT", field="token")
    assert "newer mail" in error["message"]
    assert_error(await reset(client, second, "short"), "BAD_USER_INPUT", field="newPassword")
    assert "errors" not in await reset(client, second)


async def test_an_expired_reset_token_is_refused(
    client: httpx.AsyncClient, inbox: Inbox, database_url: str, tmp_path: Path
) -> None:
    await register(client)
    token = await reset_token(client, inbox, 0)
    await _expire_tokens(make_settings(tmp_path, database_url=database_url))
    error = assert_error(await reset(client, token), "BAD_USER_INPUT", field="token")
    assert "expired" in error["message"]
    assert_error(await reset(client, "dpw_made-up"), "BAD_USER_INPUT", field="token")


async def _expire_tokens(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(EmailToken).values(expires_at=utcnow() - timedelta(seconds=1))
            )
    finally:
        await engine.dispose()


@pytest.mark.settings(password_reset_limit_per_account="2/hour")
async def test_resets_are_rate_limited_per_account_whether_or_not_it_exists(
    client: httpx.AsyncClient,
) -> None:
    for email in ("ada@example.com", "nobody@example.com"):
        for _ in range(2):
            assert (await ask_reset(client, email))["data"] == {"requestPasswordReset": True}
        error = assert_error(
            await ask_reset(client, email), "RATE_LIMITED", retryAfter=pytest.approx(3600, abs=5)
        )
        assert "password reset mails" in error["message"]


async def test_an_unknown_address_gets_the_same_answer_the_same_work_and_no_mail(
    client: httpx.AsyncClient, inbox: Inbox, log_stream: io.StringIO
) -> None:
    await register(client)
    # The request does the same either way: no statement at all on its thread
    # (the lookup is the actor's, on the worker's), one message handed on.
    main = threading.get_ident()
    counts = []
    for email in ("ada@example.com", "nobody@example.com"):
        with _statement_threads() as threads:
            body = await ask_reset(client, email)
        assert body == {"data": {"requestPasswordReset": True}}
        counts.append(threads.count(main))
    assert counts == [0, 0]
    await inbox.next("ada@example.com", "Reset")
    await ask_reset(client)  # a later mail to Ada: the unknown one had its turn before
    await inbox.next("ada@example.com", "Reset", 1)
    assert inbox.to("nobody@example.com") == []
    # The actor had the unknown address's message too, and found nobody.
    assert "password reset asked for an address without an active account" in log_stream.getvalue()


@contextmanager
def _statement_threads() -> Iterator[list[int]]:
    """The thread of each SQL statement any engine of this process runs meanwhile."""
    threads: list[int] = []

    def record(*_args: object) -> None:
        threads.append(threading.get_ident())

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield threads
    finally:
        event.remove(Engine, "before_cursor_execute", record)


async def test_a_refused_then_dropped_mail_is_tried_again_until_it_arrives(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()  # nobody listens yet: the connection is refused
    async with serve_app(mail_settings(tmp_path, database_url, port)) as client:
        await register(client)
        assert (await ask_reset(client))["data"] == {"requestPasswordReset": True}
        await anyio.sleep(0.3)
        with smtp_server(port) as (inbox, _):
            inbox.drop_next = 1  # the next try loses its connection mid-mail
            mails = await until(lambda: inbox.to("ada@example.com", "Reset"))
            assert inbox.drop_next == 0
            assert len(mails) == 1
            assert "errors" not in await reset(client, token_of(mails[0], "reset-password"))


async def test_without_smtp_development_writes_the_mail_to_the_outbox(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url=database_url, email_verification=True)
    outbox = settings.outbox_dir
    async with serve_app(settings) as client:
        await register(client)
        await ask_reset(client)
        files = await until(lambda: len(found := sorted(outbox.glob("*.eml"))) >= 2 and found)
        mails = [message_from_bytes(f.read_bytes(), policy=policy.default) for f in files]
        [mail] = [m for m in mails if "Reset" in m["Subject"]]
        assert isinstance(mail, EmailMessage)
        text, _ = parts(mail)
        token = TOKEN.search(text).group(1)  # type: ignore[union-attr]
        assert "http://localhost:8000/reset-password?token=" in text
        assert "errors" not in await reset(client, token)
        assert not list(settings.outbox_dir.glob("*.part"))


async def test_without_smtp_production_switches_mail_off(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(
        tmp_path, database_url=database_url, environment="production", email_verification=True
    )
    async with serve_app(settings) as client:
        ada = await register(client)
        assert_error(await ask_reset(client), "FEATURE_DISABLED")
        assert_error(
            await graphql(client, RESEND, headers=bearer(ada["accessToken"])), "FEATURE_DISABLED"
        )
        # Nobody could verify: uploads stay open to unverified accounts.
        await upload_file(client, bearer(ada["accessToken"]) | CSRF_HEADER, "a.txt", b"a")
    assert not settings.outbox_dir.exists()


# -- verification and email change ------------------------------------------------------


@pytest.mark.settings(unverified_may_upload=False)
async def test_registering_mails_a_link_that_verifies_the_address_and_opens_uploads(
    client: httpx.AsyncClient, inbox: Inbox
) -> None:
    ada = await register(client)
    headers = bearer(ada["accessToken"])
    assert (await graphql(client, ME, headers=headers))["data"]["me"]["emailVerified"] is False
    assert_error(
        await try_upload_file(client, headers | CSRF_HEADER, "a.txt", b"a"), "EMAIL_NOT_VERIFIED"
    )
    mail = await inbox.next("ada@example.com", "Confirm")
    assert mail["Subject"] == "Confirm your address for Acme Files"
    assert "Welcome" in parts(mail)[0]
    assert (await graphql(client, RESEND, headers=headers))["data"] == {"resendVerification": True}
    fresh = await inbox.next("ada@example.com", "Confirm", 1)
    assert_error(
        await graphql(client, VERIFY, {"token": token_of(mail, "verify-email")}),
        "BAD_USER_INPUT",
        field="token",
    )
    body = await graphql(client, VERIFY, {"token": token_of(fresh, "verify-email")})
    assert body == {"data": {"verifyEmail": True}}
    assert (await graphql(client, ME, headers=headers))["data"]["me"]["emailVerified"] is True
    await upload_file(client, headers | CSRF_HEADER, "a.txt", b"a")
    assert (await graphql(client, RESEND, headers=headers))["data"] == {"resendVerification": False}


async def test_changing_the_email_verifies_the_new_address_first_and_tells_the_old(
    client: httpx.AsyncClient, inbox: Inbox
) -> None:
    ada = await register(client)
    await register(client, email="bob@example.com", display_name="Bob")
    headers = bearer(ada["accessToken"])
    change = {"email": "ada@new.example.com", "password": PASSWORD}
    assert_error(
        await graphql(
            client, CHANGE_EMAIL, change | {"password": "wrong password!"}, headers=headers
        ),
        "UNAUTHENTICATED",
    )
    assert_error(
        await graphql(client, CHANGE_EMAIL, change | {"email": "Bob@example.com"}, headers=headers),
        "CONFLICT",
    )
    assert (await graphql(client, CHANGE_EMAIL, change, headers=headers))["data"] == {
        "changeEmail": True
    }
    mail = await inbox.next("ada@new.example.com", "Confirm")
    assert "from now on" in parts(mail)[0]
    # Not changed until verified.
    assert (await graphql(client, ME, headers=headers))["data"]["me"]["email"] == "ada@example.com"
    assert (await graphql(client, VERIFY, {"token": token_of(mail, "verify-email")}))["data"] == {
        "verifyEmail": True
    }
    me = (await graphql(client, ME, headers=headers))["data"]["me"]
    assert me["email"] == "ada@new.example.com"
    assert me["emailVerified"] is True
    notice = await inbox.next("ada@example.com", "changed")
    assert notice["Subject"] == "Your Acme Files address was changed"
    assert "ada@new.example.com" in parts(notice)[0]
    await sign_in(client, email="ada@new.example.com")


async def test_an_admin_sends_a_user_a_reset_link(
    client: httpx.AsyncClient, inbox: Inbox, engine: AsyncEngine
) -> None:
    admin = await register(client, email="root@example.com", display_name="Root")
    await update_user(engine, "root@example.com", role=Role.ADMIN)
    ada = await register(client)
    assert_error(
        await graphql(
            client, SEND_RESET, {"id": ada["user"]["id"]}, headers=bearer(ada["accessToken"])
        ),
        "FORBIDDEN",
    )
    body = await graphql(
        client, SEND_RESET, {"id": ada["user"]["id"]}, headers=bearer(admin["accessToken"])
    )
    assert body == {"data": {"sendPasswordReset": True}}
    mail = await inbox.next("ada@example.com", "Reset")
    assert "errors" not in await reset(client, token_of(mail, "reset-password"))


# -- in Redis job mode, with a `depot worker` process ------------------------------------


@pytest.mark.redis
async def test_a_worker_process_sends_the_reset_mail(
    tmp_path: Path, database_url: str, inbox: Inbox, smtp: tuple[Inbox, int]
) -> None:
    redis_url = require_service("DEPOT_TEST_REDIS_URL", "Redis")
    settings = mail_settings(
        tmp_path,
        database_url,
        smtp[1],
        redis_url=redis_url,
        storage_url=(tmp_path / "s").as_uri(),
        # Redis keeps the per-account counters from one test (and run) to the next.
        password_reset_limit_per_account="1000000/hour",
    )
    with depot_worker(settings, tmp_path / "worker.log"):
        async with serve_app(settings) as client:
            await register(client)
            token = await reset_token(client, inbox, 0)
            assert "errors" not in await reset(client, token)


# -- notifications ------------------------------------------------------------------


@pytest.mark.settings(notification_delay_seconds=0.4, notification_batch_seconds=0.4)
async def test_a_job_nobody_watched_is_mailed_one_watched_is_not_and_unsubscribe_works(
    client: httpx.AsyncClient, inbox: Inbox
) -> None:
    ada = await register(client)
    headers = bearer(ada["accessToken"])
    file = await upload_file(client, headers | CSRF_HEADER, "a.txt", b"hello")

    # Watched: the final event reaches a live subscription, so no mail.
    async with subscriber(client, ada["accessToken"]) as ws:
        await subscribe(ws, "1", "subscription { myEvents { type status } }", {})
        job = await start_job(client, headers, {"verify": {"fileId": file["id"]}})
        with anyio.fail_after(30):
            while True:
                message = await ws.receive_json()
                if message["payload"]["data"]["myEvents"]["status"] == "SUCCEEDED":
                    break
        await anyio.sleep(0.1)  # the delivery's DELETE
    # Not watched: mailed once its delay is up.
    job = await start_job(client, headers, {"verify": {"fileId": file["id"]}})
    await wait_for_job(client, headers, job["id"])
    mail = await inbox.next("ada@example.com", "job")
    text, html = parts(mail)
    assert text.count("Your verify job finished.") == 1, text
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = str(mail["List-Unsubscribe"]).strip("<>")
    assert link in text
    assert link in html
    await anyio.sleep(1.2)  # nothing else is due
    assert len(inbox.to("ada@example.com", "job")) == 1

    # The unsubscribe link works signed out: GET asks, POST does it.
    path = link.removeprefix("http://localhost:8000")
    page = await client.get(path)
    assert page.status_code == 200
    assert "<form" in page.text
    assert (await client.post(path)).status_code == 200
    prefs = (await graphql(client, ME, headers=headers))["data"]["me"]["notificationPreferences"]
    assert prefs == {"jobSucceeded": False, "jobFailed": False}
    assert (await client.post(path[:-3] + "abc")).status_code == 404
    job = await start_job(client, headers, {"verify": {"fileId": file["id"]}})
    await wait_for_job(client, headers, job["id"])
    await anyio.sleep(1.2)
    assert len(inbox.to("ada@example.com", "job")) == 1


# -- depot check -----------------------------------------------------------------------


def test_check_reaches_the_mail_server(smtp: tuple[Inbox, int]) -> None:
    reached = depot("check", env={"DEPOT_SMTP_URL": f"smtp://127.0.0.1:{smtp[1]}"})
    assert reached.exit_code == 0, reached.output
    assert "✓ mail server reachable" in reached.stdout
    closed = depot("check", env={"DEPOT_SMTP_URL": f"smtps://u:secret@127.0.0.1:{free_port()}"})
    assert closed.exit_code == 1, closed.output
    assert "✗ mail server unreachable" in closed.stderr
    assert "secret" not in closed.output


PREFERENCES = (
    "mutation Prefs($input: NotificationPreferencesInput!) "
    "{ setNotificationPreferences(input: $input) { jobSucceeded jobFailed storageNearlyFull } }"
)


@pytest.mark.settings(
    notification_delay_seconds=0.4, notification_batch_seconds=0.4, maintenance_interval_seconds=0.3
)
async def test_storage_nearly_full_is_mailed_once_as_the_preferences_say(
    client: httpx.AsyncClient, inbox: Inbox, engine: AsyncEngine
) -> None:
    ada = await register(client)
    headers = bearer(ada["accessToken"])
    body = await graphql(client, PREFERENCES, {"input": {"jobSucceeded": False}}, headers=headers)
    assert body["data"]["setNotificationPreferences"] == {
        "jobSucceeded": False,
        "jobFailed": True,
        "storageNearlyFull": True,
    }
    await update_user(engine, "ada@example.com", quota_bytes=100)
    await upload_file(client, headers | CSRF_HEADER, "a.bin", b"x" * 95)
    mail = await inbox.next("ada@example.com", "storage")
    assert "Your storage is 95 % full (95 of 100 bytes)." in parts(mail)[0]
    await anyio.sleep(1.2)  # still full, but told once
    assert len(inbox.to("ada@example.com", "storage")) == 1


async def test_an_admin_made_by_the_cli_counts_as_verified(
    client: httpx.AsyncClient, tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url=database_url)
    result = await create_admin(settings, ADMIN_EMAIL)
    assert result.exit_code == 0, result.output
    token = (await sign_in(client, ADMIN_EMAIL, ADMIN_PASSWORD))["accessToken"]
    assert (await graphql(client, ME, headers=bearer(token)))["data"]["me"]["emailVerified"] is True
