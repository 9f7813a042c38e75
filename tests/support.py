"""Helpers shared by the tests: services, GraphQL calls."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import boto3
import httpx
import jwt
import pytest
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from core.db import create_engine, create_sessionmaker
from core.models import File, User
from core.settings import Settings
from storage.local import file_url_path, key_path
from storage.s3 import parse_s3_url

STRONG_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def require_service(env_var: str, what: str) -> str:
    """The URL of a service the test needs: skip without it locally, fail in CI."""
    url = os.environ.get(env_var)
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail(f"{env_var} is not set, but CI must run the {what} tests")
    pytest.skip(f"{what} is not available; set {env_var} to run this test")


async def graphql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST a GraphQL operation and return the decoded response body."""
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def error_codes(body: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in body.get("errors", [])]


PASSWORD = "correct horse battery staple"

_AUTH_FIELDS = "accessToken accessTokenExpiresAt refreshToken user { id email displayName role }"
REGISTER = f"mutation ($input: RegisterInput!) {{ register(input: $input) {{ {_AUTH_FIELDS} }} }}"
LOGIN = f"mutation ($input: LoginInput!) {{ login(input: $input) {{ {_AUTH_FIELDS} }} }}"


async def register(
    client: httpx.AsyncClient,
    email: str = "ada@example.com",
    password: str = PASSWORD,
    display_name: str = "Ada",
) -> dict[str, Any]:
    """Register through GraphQL and return the ``AuthPayload``."""
    body = await try_register(client, email, password, display_name)
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["register"]
    return payload


async def sign_in(
    client: httpx.AsyncClient, email: str = "ada@example.com", password: str = PASSWORD
) -> dict[str, Any]:
    """Sign in through GraphQL and return the ``AuthPayload``."""
    body = await graphql(client, LOGIN, {"input": {"email": email, "password": password}})
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["login"]
    return payload


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- added for the accounts tests ------------------------------------------------

ME = "query Me { me { id email displayName role } }"
REFRESH = (
    "mutation Refresh($token: String!) "
    f"{{ refreshSession(refreshToken: $token) {{ {_AUTH_FIELDS} }} }}"
)


def only_error(body: dict[str, Any]) -> dict[str, Any]:
    """The one error of a response; fails when there is none, or several."""
    errors = body.get("errors", [])
    assert len(errors) == 1, body
    error: dict[str, Any] = errors[0]
    return error


async def me(client: httpx.AsyncClient, token: str | None = None) -> dict[str, Any]:
    """The response to ``me``, sent with ``token`` as bearer (signed out without one)."""
    return await graphql(client, ME, headers=bearer(token) if token else None)


def assert_error(body: dict[str, Any], code: str, **extensions: object) -> dict[str, Any]:
    """The one error of a response, checked to carry exactly these ``extensions``."""
    error = only_error(body)
    assert error["extensions"] == {"code": code, **extensions}, body
    return error


async def try_register(
    client: httpx.AsyncClient,
    email: str = "ada@example.com",
    password: str = PASSWORD,
    display_name: str = "Ada",
) -> dict[str, Any]:
    """The response to ``register``, successful or not (``register`` insists on success)."""
    variables = {"email": email, "password": password, "displayName": display_name}
    return await graphql(client, REGISTER, {"input": variables})


async def try_login(client: httpx.AsyncClient, email: str, password: str) -> dict[str, Any]:
    """The response to ``login``, successful or not (``sign_in`` insists on success)."""
    return await graphql(client, LOGIN, {"input": {"email": email, "password": password}})


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> dict[str, Any]:
    """The response to ``refreshSession``, successful or not."""
    return await graphql(client, REFRESH, {"token": refresh_token})


def resigned(access_token: str, *, key: str = STRONG_SECRET, **changes: object) -> str:
    """``access_token``'s claims with ``changes`` (None drops a claim), signed anew (HS256)."""
    claims = jwt.decode(access_token, options={"verify_signature": False})
    claims.update(changes)
    kept = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(kept, key, algorithm="HS256")


async def stored_user(engine: AsyncEngine, email: str) -> User:
    """The ``user`` row with ``email``, read straight from the database."""
    async with create_sessionmaker(engine)() as session:
        return (await session.exec(select(User).where(User.email == email))).one()


async def update_user(engine: AsyncEngine, email: str, **values: object) -> None:
    """Change the ``user`` row with ``email`` behind the API's back (e.g. ``is_active``)."""
    async with engine.begin() as connection:
        result = await connection.execute(
            update(User).where(col(User.email) == email).values(**values)
        )
    assert result.rowcount == 1, f"no user {email!r}"


def expired(access_token: str) -> str:
    """``access_token`` re-signed to have expired a minute ago, well past the leeway."""
    now = int(time.time())
    return resigned(access_token, exp=now - 60, iat=now - 960)


# -- uploads (GraphQL multipart request spec) -------------------------------------

CSRF_HEADER = {"x-depot-csrf": "1"}
UPLOAD_FILE = (
    "mutation ($file: Upload!, $path: String) "
    "{ uploadFile(file: $file, path: $path) { id path name size contentType sha256 } }"
)


async def try_upload_file(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    path: str | None,
    data: bytes,
    *,
    filename: str = "upload.bin",
    content_type: str = "application/octet-stream",
) -> dict[str, Any]:
    """The response body to ``uploadFile``, sent as a spec multipart request, successful or not."""
    operations = {"query": UPLOAD_FILE, "variables": {"file": None, "path": path}}
    response = await client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files={"0": (filename, data, content_type)},
        headers={**CSRF_HEADER, **headers},
    )
    body: dict[str, Any] = response.json()
    return body


async def upload_file(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    path: str | None,
    data: bytes,
    *,
    filename: str = "upload.bin",
    content_type: str = "application/octet-stream",
) -> dict[str, Any]:
    """Upload ``data`` through ``uploadFile`` and return the ``File`` (no errors allowed)."""
    body = await try_upload_file(
        client, headers, path, data, filename=filename, content_type=content_type
    )
    assert "errors" not in body, body
    file: dict[str, Any] = body["data"]["uploadFile"]
    return file


# -- files ----------------------------------------------------------------------------

USAGE = "query { me { usage { usedBytes quotaBytes fileCount } } }"


def storage_root(tmp_path: Path) -> Path:
    """Where tests that use local storage put it (``storage_url=storage_root(...).as_uri()``)."""
    return tmp_path / "objects"


def stored_objects(root: Path) -> list[Path]:
    """Every file under a local storage root, temporary ones included."""
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


async def used_bytes(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    """The signed-in user's ``usage.usedBytes``, through GraphQL."""
    body = await graphql(client, USAGE, headers=headers)
    assert "errors" not in body, body
    return int(body["data"]["me"]["usage"]["usedBytes"])


async def file_rows(settings: Settings) -> int:
    """How many ``file`` rows the database holds, read behind the API's back."""
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as db:
            return (await db.exec(select(func.count()).select_from(File))).one()
    finally:
        await engine.dispose()


async def assert_nothing_left(
    client: httpx.AsyncClient, headers: dict[str, str], settings: Settings
) -> None:
    """No usage, no file row and no object (nor a temporary one) left by a failed upload."""
    assert await used_bytes(client, headers) == 0
    assert await file_rows(settings) == 0
    assert leftover_objects(settings) == []


# -- what storage holds, seen from outside Depot ---------------------------------------


def leftover_objects(settings: Settings) -> list[str]:
    """Everything ``settings``' storage holds, looked at behind Depot's back.

    Local: every file under the directory, temporary ones included. S3: every
    object in the bucket and every multipart upload still pending, which S3
    bills but never shows as an object. Memory storage lives inside the app,
    so it cannot be looked at from here.
    """
    scheme = urlsplit(settings.storage_url).scheme
    if scheme == "file":
        root = file_url_path(settings.storage_url)
        return [path.relative_to(root).as_posix() for path in stored_objects(root)]
    if scheme == "s3":
        location = parse_s3_url(settings.storage_url)
        with _s3_client(settings) as s3:
            keys = [
                item["Key"]
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket)
                for item in page.get("Contents", [])
            ]
            pending = s3.list_multipart_uploads(Bucket=location.bucket).get("Uploads", [])
        return sorted(keys) + [f"{upload['Key']} (pending multipart upload)" for upload in pending]
    raise ValueError(f"cannot look inside {scheme}:// storage from outside the app")


def read_object(settings: Settings, key: str) -> bytes:
    """The bytes storage holds under ``key``, read behind Depot's back."""
    if settings.storage_url.startswith("s3:"):
        with _s3_client(settings) as s3:
            response = s3.get_object(Bucket=parse_s3_url(settings.storage_url).bucket, Key=key)
            data: bytes = response["Body"].read()
            return data
    return key_path(file_url_path(settings.storage_url), key).read_bytes()


def write_object(settings: Settings, key: str, data: bytes) -> None:
    """Put ``data`` under ``key`` behind Depot's back (a client that ignores the rules)."""
    if settings.storage_url.startswith("s3:"):
        with _s3_client(settings) as s3:
            s3.put_object(Bucket=parse_s3_url(settings.storage_url).bucket, Key=key, Body=data)
        return
    path = key_path(file_url_path(settings.storage_url), key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def delete_object(settings: Settings, key: str) -> None:
    """Remove ``key`` from storage behind Depot's back (bytes lost outside its control)."""
    if settings.storage_url.startswith("s3:"):
        with _s3_client(settings) as s3:
            s3.delete_object(Bucket=parse_s3_url(settings.storage_url).bucket, Key=key)
        return
    key_path(file_url_path(settings.storage_url), key).unlink()


@contextmanager
def _s3_client(settings: Settings) -> Iterator[Any]:
    """A plain boto3 client for the bucket's endpoint (credentials from ``s3_server``'s env)."""
    location = parse_s3_url(settings.storage_url)
    s3 = boto3.client("s3", endpoint_url=location.endpoint_url, region_name=location.region)
    try:
        yield s3
    finally:
        s3.close()


async def follow(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """Send a request to a link Depot handed out, wherever it points.

    Depot's own routes are reached through ``client`` (the app in-process); a
    presigned S3 URL (a direct upload's, or where a download link redirects)
    goes over the network to S3 itself, as a browser's would.
    """
    if "X-Amz-Signature" not in httpx.URL(url).params:
        response = await client.request(method, url, **kwargs)
        if response.status_code != 307:
            return response
        url = response.headers["location"]
    async with httpx.AsyncClient() as http:
        return await http.request(method, url, **kwargs)


# -- jobs -------------------------------------------------------------------------------

JOB_FIELDS = """
  id kind status progress message error attempts params createdAt startedAt finishedAt
  inputs { id path }
  outputs(first: 100) { totalCount edges { node { id path size contentType sha256 metadata } } }
"""
START_JOB = (
    "mutation Start($input: JobInput!, $key: String) "
    f"{{ startJob(input: $input, idempotencyKey: $key) {{ {JOB_FIELDS} }} }}"
)
JOB = f"query Job($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}"
FINAL_STATUSES = ("SUCCEEDED", "FAILED", "CANCELLED")
# Long enough for a slow CI machine running jobs beside the suite.
JOB_TIMEOUT_S = 60


async def try_start_job(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    job_input: dict[str, Any],
    *,
    key: str | None = None,
) -> dict[str, Any]:
    """The response body to ``startJob``, successful or not."""
    return await graphql(client, START_JOB, {"input": job_input, "key": key}, headers=headers)


async def start_job(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    job_input: dict[str, Any],
    *,
    key: str | None = None,
) -> dict[str, Any]:
    """Start a job (no errors allowed); the ``Job`` as ``startJob`` returned it."""
    body = await try_start_job(client, headers, job_input, key=key)
    assert "errors" not in body, body
    job: dict[str, Any] = body["data"]["startJob"]
    return job


async def get_job(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: str
) -> dict[str, Any]:
    body = await graphql(client, JOB, {"id": job_id}, headers=headers)
    assert "errors" not in body, body
    job: dict[str, Any] = body["data"]["job"]
    return job


async def wait_for_job(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    job_id: str,
    *,
    statuses: tuple[str, ...] = FINAL_STATUSES,
    seconds: float = JOB_TIMEOUT_S,
) -> dict[str, Any]:
    """Poll ``job(id)`` until its status is one of ``statuses``; the job then."""
    with anyio.fail_after(seconds):
        while True:
            job = await get_job(client, headers, job_id)
            if job["status"] in statuses:
                return job
            await anyio.sleep(0.05)


async def run_job(
    client: httpx.AsyncClient, headers: dict[str, str], job_input: dict[str, Any]
) -> dict[str, Any]:
    """Start a job and wait for its final status; the job then."""
    job = await start_job(client, headers, job_input)
    return await wait_for_job(client, headers, job["id"])


async def signed_in(
    client: httpx.AsyncClient, email: str = "ada@example.com"
) -> tuple[str, dict[str, str]]:
    """A new user's access token, and the headers that send it."""
    token = str((await register(client, email=email))["accessToken"])
    return token, bearer(token)


def many_entries_zip(count: int) -> bytes:
    """A zip of ``count`` small text entries: extracting it is a job that takes a while."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(count):
            archive.writestr(f"entry-{i:05}.txt", f"entry {i}\n" * 20)
    return buffer.getvalue()


def output_nodes(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [edge["node"] for edge in job["outputs"]["edges"]]


# -- subscriptions ----------------------------------------------------------------------

JOB_EVENTS = (
    "subscription Events($id: ID!, $after: String) "
    "{ jobEvents(jobId: $id, after: $after) { cursor jobId status progress message at } }"
)
WS_TIMEOUT_S = 30


@asynccontextmanager
async def subscriber(client: httpx.AsyncClient, token: str) -> AsyncIterator[AsyncWebSocketSession]:
    """A graphql-transport-ws socket signed in with ``token``."""
    async with aconnect_ws("/graphql", client, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send_json({"type": "connection_init", "payload": bearer(token)})
        assert await ws.receive_json(timeout=WS_TIMEOUT_S) == {"type": "connection_ack"}
        yield ws


async def subscribe(
    ws: AsyncWebSocketSession, id_: str, query: str, variables: dict[str, Any]
) -> None:
    await ws.send_json(
        {"type": "subscribe", "id": id_, "payload": {"query": query, "variables": variables}}
    )


async def next_message(ws: AsyncWebSocketSession, seconds: float = WS_TIMEOUT_S) -> dict[str, Any]:
    message: dict[str, Any] = await ws.receive_json(timeout=seconds)
    return message


async def collect_job_events(
    ws: AsyncWebSocketSession,
    id_: str,
    job_id: str,
    *,
    after: str | None = None,
    query: str = JOB_EVENTS,
) -> list[dict[str, Any]]:
    """Subscribe to ``jobEvents`` (``query``) and gather every event until the server
    completes it."""
    await subscribe(ws, id_, query, {"id": job_id, "after": after})
    events = []
    while True:
        message = await next_message(ws)
        assert message.get("id") == id_, message
        if message["type"] == "complete":
            return events
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        events.append(message["payload"]["data"]["jobEvents"])
