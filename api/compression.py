"""gzip for the GraphQL endpoint's answers, from ``DEPOT_GZIP_MIN_BYTES`` on.

Only on ``/graphql``'s HTTP answers (:class:`api.graphql.GraphQLView` calls
:func:`gzipped` on each): byte routes (downloads, ranges, uploads) keep
their bytes as stored, and WebSocket frames are never compressed.

Why not Starlette's ``GZipMiddleware``: every answer of the view is one
``Response`` whose body is already whole, so compressing it is one call on
those bytes. The middleware wrapped every request's ``send`` and parsed its
headers and the answer's whatever the size, and made a ``GzipFile`` and a
zlib stream per request from a client that accepts gzip (all of them, for
browsers), small answers included: about a tenth of a ``{ __typename }``.
Here an answer under the threshold costs one length check and one header
lookup.
"""

from __future__ import annotations

import gzip
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

# zlib's default: on JSON, 9 costs about twice the CPU for a few percent less.
LEVEL: Final = 6


def gzipped(response: Response, request: Request, min_bytes: int) -> Response:
    """``response`` with its body gzip-compressed, if it is ``min_bytes`` or larger
    (0: never), the client accepts gzip and the body is not encoded already."""
    body = getattr(response, "body", None)  # a streamed answer has none: left as it is
    if not min_bytes or not isinstance(body, bytes) or len(body) < min_bytes:
        return response
    headers = response.headers
    if "content-encoding" in headers or "gzip" not in request.headers.get("accept-encoding", ""):
        return response
    # mtime 0: the same answer compresses to the same bytes.
    response.body = gzip.compress(body, compresslevel=LEVEL, mtime=0)
    headers["content-encoding"] = "gzip"
    headers["content-length"] = str(len(response.body))
    vary = headers.get("vary")
    headers["vary"] = f"{vary}, Accept-Encoding" if vary else "Accept-Encoding"
    return response
