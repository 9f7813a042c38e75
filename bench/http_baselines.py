"""The baselines ``bench.http`` compares Depot with: the libraries under it, and no more.

One Starlette app, served by uvicorn with ``depot serve``'s options (one
process, no access log, h11 with the same bound on a request's head), in a
process of its own::

    python -m bench.http_baselines --port 8001
    python -m bench.http_baselines --port 8001 --http httptools   # what h11 costs

uvicorn's default parser is httptools; ``depot serve`` picks h11, which
bounds a request's line and headers (``api.cli.MAX_HEADER_BYTES``), and
costs some 150-200 µs of CPU more per request (a bare ASGI app, wrk, on a
loaded 2-CPU machine). Before the baselines ran h11 too, that was counted
against Depot.

* ``POST /graphql``: a bare Strawberry app (Depot's Strawberry version) with
  ``ParserCache`` and ``ValidationCache``, for ``{ __typename }`` and ``{ hello }``;
* ``POST /json``: raw Starlette, parses the JSON body and answers
  ``{"data": {"__typename": "Query"}}``;
* ``POST /files?owner=<uuid>&first=50``: a hand-written files page over Depot's
  own tables, one asyncpg query, answering the JSON Depot answers to
  ``files(first: N) { totalCount edges { node { id path size contentType owner
  { email } } } }`` (``bench.http`` checks they are equal);
* ``GET /healthz``: 200, for ``bench.harness``'s readiness check.

The files page reads ``BENCH_DATABASE_URL`` (``postgresql://…``); without it
``/files`` answers 503. It encodes with orjson when that is installed, else
with the standard library's json (``/healthz`` says which).
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
import strawberry
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.extensions import ParserCache, ValidationCache

# api.cli.MAX_HEADER_BYTES, not imported: this process loads none of Depot.
HEAD_BYTES: Final = 16 * 1024


def _std_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _encoder() -> tuple[Callable[[Any], bytes], str]:
    """orjson's ``dumps`` if it is installed (the baseline the issue names), else json's."""
    try:
        orjson = importlib.import_module("orjson")
    except ImportError:
        return _std_dumps, "json (standard library: orjson is not installed)"
    return orjson.dumps, f"orjson {orjson.__version__}"


dumps, ENCODER = _encoder()

# The page Depot serves by default: live files, oldest first, id breaking ties.
# The window count is taken before LIMIT, so one round trip gives both.
FILES_PAGE: Final = """
SELECT f.id, f.path, f.size, f.content_type, u.email, count(*) OVER () AS total
FROM file AS f JOIN "user" AS u ON u.id = f.owner_id
WHERE f.owner_id = $1 AND f.trashed_at IS NULL
ORDER BY f.created_at, f.id
LIMIT $2
"""


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "world"


def _global_id(type_name: str, key: uuid.UUID) -> str:
    # Depot's opaque ids, written out again so the baseline owes Depot nothing.
    return base64.urlsafe_b64encode(f"{type_name}:{key.hex}".encode()).decode().rstrip("=")


async def files_page(request: Request) -> Response:
    pool: asyncpg.Pool | None = request.app.state.pool
    if pool is None:
        return Response("BENCH_DATABASE_URL is not set", status_code=503)
    await request.body()  # read like any GraphQL request; what it asks is fixed
    owner = uuid.UUID(request.query_params["owner"])
    first = int(request.query_params.get("first", "50"))
    rows = await pool.fetch(FILES_PAGE, owner, first)
    edges = [
        {
            "node": {
                "id": _global_id("File", row["id"]),
                "path": row["path"],
                "size": row["size"],
                "contentType": row["content_type"],
                "owner": {"email": row["email"]},
            }
        }
        for row in rows
    ]
    total = rows[0]["total"] if rows else 0
    page = {"data": {"files": {"totalCount": total, "edges": edges}}}
    return Response(dumps(page), media_type="application/json")


async def raw_json(request: Request) -> Response:
    await request.json()
    return Response(dumps({"data": {"__typename": "Query"}}), media_type="application/json")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "encoder": ENCODER})


def create_app() -> Starlette:
    """The baselines' app; its lifespan opens the files page's pool, if it has a database."""
    schema = strawberry.Schema(Query, extensions=[ParserCache, ValidationCache])

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        url = os.environ.get("BENCH_DATABASE_URL")
        # Depot's own pool: 10 connections kept, 10 more under load.
        app.state.pool = await asyncpg.create_pool(url, min_size=10, max_size=20) if url else None
        try:
            yield
        finally:
            if app.state.pool is not None:
                await app.state.pool.close()

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            # A sink for the traces of bench.http's traced Depot (OTLP over HTTP).
            Route("/v1/traces", lambda request: Response(), methods=["POST"]),
            Route("/json", raw_json, methods=["POST"]),
            Route("/files", files_page, methods=["POST"]),
            Route("/graphql", GraphQL(schema, graphql_ide=None), methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--http", choices=("h11", "httptools"), default="h11", help="uvicorn's HTTP parser"
    )
    args = parser.parse_args(argv)
    # `depot serve`'s options, so the servers differ only in the app.
    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=args.http,
        h11_max_incomplete_event_size=HEAD_BYTES,
    )


if __name__ == "__main__":
    main()
