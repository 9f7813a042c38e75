"""Security headers on every HTTP response, set in one place.

Every response says not to sniff its type, not to be framed and not to leak
the URL as a referrer; a response to a request that carried credentials is
never stored by a cache; HSTS is sent when Depot is reached over https.
Headers a route set itself (a download's ``Cache-Control``) are kept.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A year, as browsers' preload lists ask.
HSTS = "max-age=31536000; includeSubDomains"


class SecurityHeadersMiddleware:
    """Adds the security headers to each HTTP response that lacks them."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        headers = {
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            # Pages that set their own policy (GraphiQL) keep it.
            "Content-Security-Policy": "frame-ancestors 'none'",
        }
        if https:
            headers["Strict-Transport-Security"] = HSTS
        self._headers = list(headers.items())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        credentialed = "authorization" in Headers(scope=scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self._headers:
                    headers.setdefault(name, value)
                if credentialed:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
