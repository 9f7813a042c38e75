"""The unsubscribe link of notification mails: it works without signing in.

``GET`` shows a page with one button, since mail scanners follow links
and must not unsubscribe anybody; its ``POST`` — or a mail client's RFC 8058
one-click ``POST`` (``List-Unsubscribe-Post``) — turns every notification
mail of the link's user off. The token is a signed link
(:mod:`core.links`, purpose ``unsubscribe``) naming the user.
"""

from __future__ import annotations

import html
import uuid

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from core import notifications
from core.links import LinkExpired, LinkInvalid, LinkSigner
from core.settings import Settings

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 36em; margin: 2em auto;">
<h1>{title}</h1>{body}</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status)


def _user_of(settings: Settings, token: str) -> uuid.UUID | None:
    try:
        claims = LinkSigner(settings.secret).verify("unsubscribe", token)
        return uuid.UUID(str(claims["key"]))
    except (LinkInvalid, LinkExpired, ValueError):
        return None


async def unsubscribe(request: Request) -> HTMLResponse:
    settings: Settings = request.state.settings
    product = settings.product_name
    user_id = _user_of(settings, request.path_params["token"])
    if user_id is None:
        return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 404)
    if request.method == "GET":
        return _page(
            f"Stop {product} notification mails?",
            '<form method="post"><button type="submit">Stop these mails</button></form>'
            "<p>You can turn them on again in your settings.</p>",
        )
    async with request.state.sessionmaker() as db:
        await notifications.unsubscribe(db, user_id)
        await db.commit()
    return _page("Unsubscribed", f"<p>{html.escape(product)} sends you no more notifications.</p>")


ROUTES = [
    Route(notifications.UNSUBSCRIBE_PATH + "{token}", unsubscribe, methods=["GET", "POST"]),
]
