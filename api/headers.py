"""Security headers on every HTTP response, set in one place.

Every response says not to sniff its type, not to be framed and not to leak
the URL as a referrer; a response to a request that carried credentials is
never stored by a cache; HSTS is sent when Depot is reached over https.
Headers a route set itself (a download's ``Cache-Control``) are kept.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A year, as browsers' preload lists ask.
HSTS = "max-age=31536000; includeSubDomains"
_NO_STORE = (b"cache-control", b"no-store")


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
        # Raw, as ASGI sends them: one pass over a response's own headers adds
        # the missing ones (no Headers object per request or response).
        self._headers = [(name.lower().encode(), value.encode()) for name, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        credentialed = any(name == b"authorization" for name, _ in scope["headers"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(item for item in self._headers if item[0] not in present)
                if credentialed and b"cache-control" not in present:
                    headers.append(_NO_STORE)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
