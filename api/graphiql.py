"""GraphiQL, served by Depot itself: no CDN, so it loads offline and under a strict CSP.

Strawberry's own GraphiQL page pulls its scripts and styles from a CDN, so
without internet it never leaves "Loading…", and its CSP would have to trust
that CDN. Instead the files live in ``api/static/graphiql/`` inside the
package (pinned, refreshed from npm by ``scripts/vendor_graphiql.py``, which
writes their SHA-384s to ``manifest.json``), and:

* the page (``GraphQLView.render_graphql_ide``) names each file by a path
  holding its hash, ``/graphiql/<hash>/<name>``, with ``integrity=`` from
  the manifest, and carries a CSP that allows only this origin (and its
  WebSocket, for subscriptions): no inline script at all, and the one
  inline style GraphiQL adds only by the page's nonce;
* ``/graphiql/<hash>/<name>`` answers the file with a year's immutable
  caching and an ETag; a hash that is not the file's current one is a 404,
  so an old URL can never be cached with new bytes.

Everything is read and checked against the manifest once per process, when
the first app is built (about 1.7 MB and some 9 ms of hashing); a file
request costs a dictionary look-up, the page some 45 µs (a nonce, its CSP
and its HTML formatted).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

ASSETS = Path(__file__).parent / "static" / "graphiql"
PREFIX = "/graphiql"
# The URL changes whenever the bytes do, so a browser may keep them for good.
CACHE_FOREVER = "public, max-age=31536000, immutable"

# In the order the page loads them: GraphiQL's UMD build needs the React
# globals, the explorer plugin needs GraphiQL's, and Depot's script needs all.
STYLES = ("graphiql.min.css", "plugin-explorer.css", "depot-graphiql.css")
SCRIPTS = (
    "react.production.min.js",
    "react-dom.production.min.js",
    "graphiql.min.js",
    "plugin-explorer.umd.js",
    "depot-graphiql.js",
)
_MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

# GraphiQL's stylesheet carries its fonts and a few images as data: URLs; its
# dialogs add one <style> element, admitted by the page's nonce.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src {connect}; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# A Host header fit to go into the policy: a name or an IP literal, and a port.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def sri(data: bytes) -> str:
    """The Subresource Integrity value of ``data``, as the manifest and the page hold it."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


@dataclass(frozen=True)
class Asset:
    """One served file, its bytes in memory."""

    name: str
    body: bytes
    integrity: str

    @property
    def digest(self) -> str:
        """A short hex form of the hash, for the URL."""
        return base64.b64decode(self.integrity.removeprefix("sha384-"))[:8].hex()

    @property
    def path(self) -> str:
        return f"{PREFIX}/{self.digest}/{self.name}"

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[Path(self.name).suffix]


def content_security_policy(request: Request, nonce: str) -> str:
    """The page's CSP: this origin only, plus its WebSocket for subscriptions.

    No inline script at all; an inline style only with ``nonce``, which the
    page hands to GraphiQL (``depot-graphiql.js``) for the one it adds.

    ``'self'`` covers ``ws:``/``wss:`` only in CSP Level 3 browsers, so the
    WebSocket origin is named as well, from the ``Host`` the browser used;
    both schemes, since behind a TLS-terminating proxy the page may be
    https while Depot sees http.
    """
    host = request.headers.get("host", "")
    connect = "'self'"
    if _HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return _POLICY.format(connect=connect, nonce=nonce)


class GraphiQL:
    """The GraphiQL page and the files it loads, read once from the package."""

    def __init__(self, assets: Mapping[str, Asset]) -> None:
        self.assets = assets

    @classmethod
    def load(cls, directory: Path = ASSETS) -> GraphiQL:
        """The page and files in ``directory``, each checked against its hash.

        A file that does not match would be refused by the browser (the page
        names its hash), leaving GraphiQL blank: fail at start-up instead.
        """
        return cls(_read_checked(directory))

    @property
    def routes(self) -> list[Route]:
        return [Route(PREFIX + "/{digest}/{name}", self.asset, methods=["GET"])]

    def page(self, request: Request) -> Response:
        """The page with a fresh style nonce, never stored: a new release's hashes show at once."""
        nonce = secrets.token_urlsafe(16)
        headers = {
            "Content-Security-Policy": content_security_policy(request, nonce),
            "Cache-Control": "no-store",
        }
        return HTMLResponse(_page(self.assets, nonce), headers=headers)

    async def asset(self, request: Request) -> Response:
        """One file by its hashed path (GET and HEAD); 304 when the client has it."""
        asset = self.assets.get(request.path_params["name"])
        if asset is None or request.path_params["digest"] != asset.digest:
            return Response("Not Found", status_code=404, media_type="text/plain")
        headers = {"Cache-Control": CACHE_FOREVER, "ETag": f'"{asset.digest}"'}
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)


@functools.cache
def _read_checked(directory: Path) -> Mapping[str, Asset]:
    """Every file ``directory``'s manifest lists, checked; read once per process.

    Once, not per app: the files do not change under a running process, and
    the test suite builds hundreds of apps (each read is ~1.7 MB and ~9 ms).
    """
    manifest = json.loads((directory / "manifest.json").read_text())
    assets: dict[str, Asset] = {}
    for name, entry in manifest["files"].items():
        body = (directory / name).read_bytes()
        if sri(body) != entry["integrity"]:
            raise RuntimeError(
                f"{directory / name} does not match its hash in manifest.json: restore it "
                "(git checkout), refresh the assets (make graphiql), or, after editing "
                "Depot's own depot-graphiql.* files, run "
                "python scripts/vendor_graphiql.py --rehash"
            )
        assets[name] = Asset(name, body, entry["integrity"])
    missing = {*STYLES, *SCRIPTS} - set(assets)
    if missing:
        raise RuntimeError(f"manifest.json in {directory} lists no {sorted(missing)}")
    return MappingProxyType(assets)


def _page(assets: Mapping[str, Asset], nonce: str) -> str:
    links = "\n".join(
        f'    <link rel="stylesheet" href="{assets[n].path}" integrity="{assets[n].integrity}">'
        for n in STYLES
    )
    # Only Depot's own script carries the nonce: it passes it on for styles.
    scripts = "\n".join(
        f'    <script src="{assets[n].path}" integrity="{assets[n].integrity}"'
        + (f' nonce="{nonce}"' if n == SCRIPTS[-1] else "")
        + "></script>"
        for n in SCRIPTS
    )
    return f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Depot · GraphiQL</title>
    <link rel="icon" href="data:,">
{links}
  </head>
  <body>
    <div id="graphiql">Loading…</div>
{scripts}
  </body>
</html>
"""
