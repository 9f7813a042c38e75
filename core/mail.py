"""Mail: composing Depot's messages from templates, and handing them to SMTP or the outbox.

Every mail is a pair of Jinja2 templates shipped in the package,
``core/templates/mail/<name>.txt`` and ``<name>.html``: the text one sets
``subject``; both extend a layout with the product's name and public URL.
:func:`compose` renders them into an :class:`~email.message.EmailMessage`
(plain text, with the HTML as its alternative); :func:`deliver` sends it
through ``DEPOT_SMTP_URL`` (aiosmtplib), or, in development without one,
writes it to ``DEPOT_MAIL_OUTBOX_DIR`` as a ``.eml`` file and logs where.

Nothing here runs inside a request: the actors of :mod:`workers.mail` compose
and deliver, so a slow or absent mail server never holds an answer up.

    message = compose(settings, "password_reset", "ada@example.com", {"link": link})
    await deliver(settings, message)
"""

from __future__ import annotations

import os
import tempfile
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

import aiosmtplib
import anyio
import structlog

from core.errors import FeatureDisabled
from core.settings import Settings
from core.time import utcnow

if TYPE_CHECKING:
    from jinja2 import Environment

logger = structlog.get_logger("depot.mail")

# A mail server that answers nothing this long is as good as down: the actor tries later.
SMTP_TIMEOUT_SECONDS: Final = 30.0

DISABLED: Final = "Mail is switched off: this installation has no mail server (set DEPOT_SMTP_URL)."


@cache
def _templates() -> Environment:
    # Imported at the first mail, not with the module: every `depot worker` and app
    # imports this module, and most never compose a mail (jinja2: ~30 ms of CPU).
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("core", "templates/mail"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def require_mail(settings: Settings) -> None:
    """``FEATURE_DISABLED`` unless mail can go out (SMTP, or development's outbox)."""
    if not settings.mail_enabled:
        raise FeatureDisabled(DISABLED)


def compose(
    settings: Settings,
    template: str,
    to: str,
    values: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    """The mail ``template`` rendered for ``to``: text and HTML, with the product's
    name and public URL, and ``headers`` (such as ``List-Unsubscribe``) added."""
    context = {
        "product": settings.product_name,
        "public_url": str(settings.public_base_url).rstrip("/"),
        **values,
    }
    env = _templates()
    text = env.get_template(f"{template}.txt").make_module(context)
    html = env.get_template(f"{template}.html").render(context)
    message = EmailMessage()
    message["Subject"] = str(text.subject)  # type: ignore[attr-defined]
    message["From"] = settings.sender
    message["To"] = to
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=settings.public_base_url.host)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(str(text))
    message.add_alternative(html, subtype="html")
    return message


async def deliver(settings: Settings, message: EmailMessage) -> None:
    """Send ``message`` through ``DEPOT_SMTP_URL``, or write it to the outbox in development.

    Raises what the mail server or the connection raised (``aiosmtplib``'s
    errors, ``OSError``): the caller tries again later.
    """
    if settings.smtp_url is None:
        require_mail(settings)
        path = await anyio.to_thread.run_sync(_write_eml, settings.outbox_dir, message)
        logger.info(
            "mail written to the outbox (no DEPOT_SMTP_URL)",
            to=message["To"],
            subject=message["Subject"],
            path=str(path),
        )
        return
    await aiosmtplib.send(message, **smtp_options(settings))
    logger.info("mail sent", to=message["To"], subject=message["Subject"])


def smtp_options(settings: Settings) -> dict[str, Any]:
    """aiosmtplib's connection options for ``DEPOT_SMTP_URL``.

    ``smtps://`` is TLS from the first byte (port 465 by default);
    ``smtp://`` upgrades with STARTTLS when the server offers it, and insists
    on it when the URL carries a user, so a password never crosses in clear.
    """
    assert settings.smtp_url is not None
    parts = urlsplit(settings.smtp_url.get_secret_value())
    implicit = parts.scheme == "smtps"
    user = unquote(parts.username) if parts.username else None
    return {
        "hostname": parts.hostname,
        "port": parts.port or (465 if implicit else 587),
        "username": user,
        "password": unquote(parts.password) if parts.password else None,
        "use_tls": implicit,
        "start_tls": None if implicit or user is None else True,
        "timeout": SMTP_TIMEOUT_SECONDS,
    }


async def probe_smtp(settings: Settings, seconds: float) -> None:
    """Connect to the mail server, greet it and leave (``depot check``)."""
    options = smtp_options(settings) | {"timeout": seconds}
    client = aiosmtplib.SMTP(**options)
    await client.connect()
    try:
        await client.noop()
    finally:
        await client.quit()


def _write_eml(directory: Path, message: EmailMessage) -> Path:
    """Write ``message`` whole or not at all: a temporary file renamed into place."""
    directory.mkdir(parents=True, exist_ok=True)
    # Named by time, so a listing reads in the order the mails went out.
    path = directory / f"{utcnow():%Y%m%dT%H%M%S.%f}-{uuid.uuid4().hex[:8]}.eml"
    fd, temporary = tempfile.mkstemp(dir=directory, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(message.as_bytes())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
