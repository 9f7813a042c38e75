"""tus 1.0 at /files/tus/, request by request: the protocol's details over HTTP.

Raw requests (httpx) through the app, on local storage and S3 where the
outcome depends on the backend, on SQLite and PostgreSQL. A real client
(tus-js-client) against a real server is ``tests/test_tus_client.py``.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import create_sessionmaker
from core.eventlog import MemoryEventLog
from core.models import ResumableUpload
from core.settings import Settings
from core.time import utcnow
from storage import open_storage
from tests.conftest import make_settings, on_local_and_s3, serve_app
from tests.support import (
    PASSWORD,
    assert_error,
    bearer,
    graphql,
    leftover_objects,
    next_message,
    read_object,
    register,
    subscribe,
    subscriber,
    used_bytes,
)
from tests.test_database_work import statements
from tests.test_metrics import delta, scrape
from workers.maintenance import expire_resumable_uploads, recount_usage

pytestmark = pytest.mark.anyio

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = {"Content-Type": "application/offset+octet-stream"}
MiB = 1024 * 1024
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(range(256)) * 40
UPLOADS = """query Uploads { uploads { totalCount edges { node {
  id path offset length expiresAt createdAt } } } }"""
CANCEL = "mutation Cancel($id: ID!) { cancelUpload(id: $id) }"
FILES = "query Files { files { edges { node { id path size contentType sha256 } } } }"
MY_EVENTS = "subscription { myEvents { type path } }"
METADATA = "query { files { edges { node { sha256 contentType metadata } } } }"


def metadata(**values: str) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items()
    )


def checksum(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, file_storage_url: str) -> Settings:
    """Local storage, or S3 for the tests marked ``on_local_and_s3``."""
    return make_settings(tmp_path, database_url=database_url, storage_url=file_storage_url)


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await register(client))["accessToken"])


async def create(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    length: int,
    *,
    body: bytes | None = None,
    extra: dict[str, str] | None = None,
    **meta: str,
) -> httpx.Response:
    request_headers = {
        **TUS,
        **headers,
        "Upload-Length": str(length),
        "Upload-Metadata": metadata(**(meta or {"filename": "file.bin"})),
        **(extra or {}),
    }
    if body is not None:
        request_headers.update(OFFSET_STREAM)
    return await client.post("/files/tus/", headers=request_headers, content=body)


async def created(
    client: httpx.AsyncClient, headers: dict[str, str], length: int, **meta: str
) -> str:
    """The path of a new upload's URL (its ``Location``)."""
    response = await create(client, headers, length, **meta)
    assert response.status_code == 201, response.text
    return httpx.URL(response.headers["location"]).path


async def patch(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    url: str,
    offset: int,
    data: bytes,
    **extra: str,
) -> httpx.Response:
    return await client.patch(
        url,
        headers={**TUS, **OFFSET_STREAM, **headers, "Upload-Offset": str(offset), **extra},
        content=data,
    )


async def patch_chunked(
    client: httpx.AsyncClient, headers: dict[str, str], url: str, offset: int, data: bytes
) -> httpx.Response:
    """A PATCH whose body streams with ``Transfer-Encoding: chunked``, no ``Content-Length``."""

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    return await client.patch(
        url,
        headers={**TUS, **OFFSET_STREAM, **headers, "Upload-Offset": str(offset)},
        content=pieces(),
    )


async def head(client: httpx.AsyncClient, headers: dict[str, str], url: str) -> httpx.Response:
    return await client.head(url, headers={**TUS, **headers})


async def files(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    body = await graphql(client, FILES, headers=headers)
    assert "errors" not in body, body
    return [edge["node"] for edge in body["data"]["files"]["edges"]]


async def uploads(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    body = await graphql(client, UPLOADS, headers=headers)
    assert "errors" not in body, body
    return [edge["node"] for edge in body["data"]["uploads"]["edges"]]


async def test_options_say_what_the_server_speaks(client: httpx.AsyncClient) -> None:
    response = await client.options("/files/tus/")
    assert response.status_code == 204
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["tus-version"] == "1.0.0"
    assert set(response.headers["tus-extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "termination",
        "expiration",
        "checksum",
    }
    assert response.headers["tus-max-size"] == str(5 * 1024**3)
    assert "sha256" in response.headers["tus-checksum-algorithm"].split(",")


@on_local_and_s3
async def test_an_upload_in_uneven_pieces_becomes_a_file(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    data = PNG + bytes(9 * MiB)  # crosses S3's part size with pieces below its minimum
    meta = {
        "path": "photos/cat.png",
        "filetype": "image/jpeg",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    url = await created(client, ada, len(data), **meta)
    assert url.startswith("/files/tus/")
    assert await used_bytes(client, ada) == len(data)  # reserved at creation
    described = await head(client, ada, url)
    assert described.status_code == 200
    assert described.headers["upload-offset"] == "0"
    assert described.headers["upload-length"] == str(len(data))
    assert described.headers["cache-control"] == "no-store"
    assert described.headers["upload-metadata"] == metadata(**meta)  # as sent
    offset = 0
    for size in (1000, 3 * MiB, 5 * MiB, len(data)):
        piece = data[offset : offset + size]
        response = await patch(
            client, ada, url, offset, piece, **{"Upload-Checksum": checksum(piece)}
        )
        assert response.status_code == 204, response.text
        offset += len(piece)
        assert response.headers["upload-offset"] == str(offset)
        assert response.headers["tus-resumable"] == "1.0.0"
        if offset < len(data):
            assert "upload-expires" in response.headers
            assert (await uploads(client, ada))[0]["offset"] == offset
    [file] = await files(client, ada)
    assert file["path"] == "photos/cat.png"
    assert file["size"] == len(data)
    assert file["contentType"] == "image/png"  # sniffed, not the client's claim
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert await uploads(client, ada) == []
    final = await head(client, ada, url)  # the upload is the file now; its record says so
    assert final.status_code == 200
    assert final.headers["upload-offset"] == final.headers["upload-length"] == str(len(data))
    assert await used_bytes(client, ada) == len(data)
    rows = leftover_objects(settings)
    assert len(rows) == 1, rows  # the file's object, no staged piece left
    assert read_object(settings, rows[0]) == data


async def test_finishing_announces_the_file_and_counts_its_bytes(
    client: httpx.AsyncClient,
) -> None:
    payload = await register(client)
    ada = bearer(payload["accessToken"])
    before = await scrape(client)
    async with subscriber(client, payload["accessToken"]) as ws:
        await subscribe(ws, "1", MY_EVENTS, {})
        response = await create(client, ada, 5, body=b"hello", path="notes/hi.txt")
        assert response.status_code == 201, response.text
        message = await next_message(ws)
    after = await scrape(client)
    assert delta(after, before, "depot_upload_bytes_total", method="tus") == 5
    assert message["payload"]["data"]["myEvents"] == {
        "type": "FILE_CREATED",
        "path": "notes/hi.txt",
    }


@on_local_and_s3
async def test_creation_with_upload_and_an_empty_file(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    response = await create(client, ada, 10, body=b"first", filename="a.txt")
    assert response.status_code == 201, response.text
    assert response.headers["upload-offset"] == "5"
    assert "upload-expires" in response.headers
    url = httpx.URL(response.headers["location"]).path
    assert (await patch(client, ada, url, 5, b"-last")).headers["upload-offset"] == "10"
    refused = await create(
        client, ada, 4, body=b"abcd", filename="b.txt", extra={"Upload-Checksum": checksum(b"x")}
    )
    assert refused.status_code == 460
    # The upload exists all the same, at offset 0: the client can resume it.
    again = httpx.URL(refused.headers["location"]).path
    assert (await patch(client, ada, again, 0, b"abcd")).status_code == 204
    empty = await create(client, ada, 0, filename="empty.txt")
    assert empty.status_code == 201, empty.text
    found = {file["path"]: file for file in await files(client, ada)}
    assert found["a.txt"]["size"] == 10
    assert found["b.txt"]["size"] == 4
    assert found["a.txt"]["contentType"] == "text/plain"
    assert found["empty.txt"]["size"] == 0


async def test_what_uppy_sends_names_the_file(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    # Uppy's Tus plugin: name, type, filename, filetype, and relativePath "null".
    response = await create(
        client,
        ada,
        3,
        body=b"a,b",
        name="table.csv",
        type="text/csv",
        filename="table.csv",
        filetype="text/csv",
        relativePath="null",
    )
    assert response.status_code == 201, response.text
    [file] = await files(client, ada)
    assert (file["path"], file["contentType"]) == ("table.csv", "text/csv")


async def test_protocol_refusals(client: httpx.AsyncClient, ada: dict[str, str]) -> None:
    url = await created(client, ada, 10)
    no_version = await client.patch(
        url, headers={**OFFSET_STREAM, **ada, "Upload-Offset": "0"}, content=b"x"
    )
    assert no_version.status_code == 412
    assert no_version.headers["tus-version"] == "1.0.0"
    assert (
        await client.patch(url, headers={**TUS, **ada, "Upload-Offset": "0"})
    ).status_code == 415
    wrong_offset = await patch(client, ada, url, 3, b"abc")
    assert wrong_offset.status_code == 409
    assert wrong_offset.json()["code"] == "CONFLICT"
    missing_offset = await client.patch(url, headers={**TUS, **OFFSET_STREAM, **ada}, content=b"x")
    assert missing_offset.status_code == 400
    assert (await patch(client, ada, url, 0, b"x" * 11)).status_code == 413
    assert (await create(client, ada, 6 * 1024**3)).status_code == 413
    assert (await create(client, ada, 1, extra={"Upload-Defer-Length": "1"})).status_code == 400
    no_length = await client.post("/files/tus/", headers={**TUS, **ada})
    assert no_length.status_code == 400
    nameless = await create(client, ada, 1, filetype="text/plain")
    assert nameless.status_code == 400
    assert "Upload-Metadata" in nameless.json()["error"]
    bad_path = await create(client, ada, 1, path="../etc/passwd")
    assert (bad_path.status_code, bad_path.json()["code"]) == (400, "BAD_USER_INPUT")
    garbled = await client.post(
        "/files/tus/",
        headers={**TUS, **ada, "Upload-Length": "1", "Upload-Metadata": "filename !!!"},
    )
    assert garbled.status_code == 400
    assert (await head(client, ada, "/files/tus/not-an-id")).status_code == 404
    assert (await head(client, ada, url)).headers["upload-offset"] == "0"  # nothing moved


async def test_a_checksum_mismatch_keeps_nothing_of_the_request(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    url = await created(client, ada, 8)
    assert (
        await patch(client, ada, url, 0, b"abcd", **{"Upload-Checksum": checksum(b"abcd", "sha1")})
    ).status_code == 204
    mismatch = await patch(client, ada, url, 4, b"efgh", **{"Upload-Checksum": checksum(b"EFGH")})
    assert mismatch.status_code == 460
    assert (await head(client, ada, url)).headers["upload-offset"] == "4"
    unknown = await patch(client, ada, url, 4, b"efgh", **{"Upload-Checksum": "crc32 AAAA"})
    assert unknown.status_code == 400
    assert (await patch(client, ada, url, 4, b"efgh")).status_code == 204
    [file] = await files(client, ada)
    assert file["sha256"] == hashlib.sha256(b"abcdefgh").hexdigest()


@on_local_and_s3
async def test_a_file_that_is_not_the_declared_sha256_is_discarded(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    url = await created(
        client, ada, 4, filename="x.bin", sha256=hashlib.sha256(b"good").hexdigest()
    )
    response = await patch(client, ada, url, 0, b"evil")
    assert response.status_code == 460
    assert "SHA-256" in response.json()["error"]
    assert await files(client, ada) == []
    assert await used_bytes(client, ada) == 0
    assert leftover_objects(settings) == []


async def test_the_path_taken_meanwhile_ends_the_upload(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    first = await created(client, ada, 2, filename="same.txt")
    second = await created(client, ada, 2, filename="same.txt")
    assert (await patch(client, ada, first, 0, b"ab")).status_code == 204
    taken = await patch(client, ada, second, 0, b"cd")
    assert (taken.status_code, taken.json()["code"]) == (409, "CONFLICT")
    assert await used_bytes(client, ada) == 2
    assert len(leftover_objects(settings)) == 1
    assert (await create(client, ada, 1, filename="same.txt")).status_code == 409


async def test_quota_is_reserved_at_creation(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    body = await graphql(client, "{ me { usage { quotaBytes } } }", headers=ada)
    quota = int(body["data"]["me"]["usage"]["quotaBytes"])
    # Over two uploads (one may not pass DEPOT_MAX_UPLOAD_BYTES), all but 10 bytes.
    first = await created(client, ada, quota // 2)
    await created(client, ada, quota - quota // 2 - 10)
    over = await create(client, ada, 11)
    assert (over.status_code, over.json()["code"]) == (413, "QUOTA_EXCEEDED")
    assert (await client.delete(first, headers={**TUS, **ada})).status_code == 204
    assert await used_bytes(client, ada) == quota - quota // 2 - 10
    assert (await create(client, ada, 11)).status_code == 201


@on_local_and_s3
async def test_termination_and_cancel_upload_give_everything_back(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    by_tus = await created(client, ada, 20 * MiB, filename="a.bin")
    by_graphql = await created(client, ada, 20 * MiB, filename="b.bin")
    for url in (by_tus, by_graphql):
        assert (await patch(client, ada, url, 0, bytes(9 * MiB + 3))).status_code == 204
    listed = await uploads(client, ada)
    assert [(u["path"], u["offset"], u["length"]) for u in listed] == [
        ("a.bin", 9 * MiB + 3, 20 * MiB),
        ("b.bin", 9 * MiB + 3, 20 * MiB),
    ]
    assert (await client.delete(by_tus, headers={**TUS, **ada})).status_code == 204
    assert (await client.delete(by_tus, headers={**TUS, **ada})).status_code == 404
    body = await graphql(client, CANCEL, {"id": listed[1]["id"]}, headers=ada)
    assert body == {"data": {"cancelUpload": listed[1]["id"]}}
    assert_error(await graphql(client, CANCEL, {"id": listed[1]["id"]}, headers=ada), "NOT_FOUND")
    assert await uploads(client, ada) == []
    assert await used_bytes(client, ada) == 0
    assert leftover_objects(settings) == []


async def test_method_override_for_clients_without_patch(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    url = await created(client, ada, 2, filename="o.txt")
    response = await client.post(
        url,
        headers={
            **TUS,
            **OFFSET_STREAM,
            **ada,
            "Upload-Offset": "0",
            "X-HTTP-Method-Override": "PATCH",
        },
        content=b"ok",
    )
    assert response.status_code == 204, response.text
    assert [file["path"] for file in await files(client, ada)] == ["o.txt"]


async def test_only_the_owner_reaches_an_upload(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    url = await created(client, ada, 4)
    bob = bearer((await register(client, email="bob@example.com"))["accessToken"])
    assert (await head(client, bob, url)).status_code == 404
    assert (await patch(client, bob, url, 0, b"abcd")).status_code == 404
    assert (await client.delete(url, headers={**TUS, **bob})).status_code == 404
    [upload] = await uploads(client, ada)
    assert_error(await graphql(client, CANCEL, {"id": upload["id"]}, headers=bob), "NOT_FOUND")
    assert (await uploads(client, bob)) == []
    signed_out = await head(client, {}, url)
    assert signed_out.status_code == 401
    assert signed_out.headers["www-authenticate"] == "Bearer"
    assert (await head(client, bearer("not-a-token"), url)).status_code == 401


async def test_a_patch_after_sign_out_is_refused(client: httpx.AsyncClient) -> None:
    """A PATCH's session check rides on its lease's UPDATE (``core.auth.defer``): a
    session ended meanwhile is refused as a sign-in would refuse it, not as a wrong
    offset, and nothing is appended; so is a retried PATCH of a completed upload."""
    payload = await register(client)
    ada = bearer(payload["accessToken"])
    url = await created(client, ada, 8)
    done = await created(client, ada, 4, filename="done.bin")
    assert (await patch(client, ada, url, 0, b"abcd")).status_code == 204
    assert (await patch(client, ada, done, 0, b"abcd")).status_code == 204
    bob = bearer((await register(client, email="bob@example.com"))["accessToken"])
    assert (await patch(client, bob, url, 4, b"efgh")).status_code == 404  # not bob's
    logout = "mutation Out($token: String!) { logout(refreshToken: $token) }"
    body = await graphql(client, logout, {"token": payload["refreshToken"]}, headers=ada)
    assert "errors" not in body, body
    # At the upload's offset, at another, and the completed upload's last PATCH again.
    for target, offset, data in ((url, 4, b"efgh"), (url, 0, b"abcd"), (done, 0, b"abcd")):
        refused = await patch(client, ada, target, offset, data)
        assert refused.status_code == 401, refused.text
        assert refused.json()["code"] == "UNAUTHENTICATED"
    assert (await patch(client, bearer("not-a-token"), url, 4, b"efgh")).status_code == 401
    again = bearer((await signed_in_again(client))["accessToken"])
    assert (await head(client, again, url)).headers["upload-offset"] == "4"


async def signed_in_again(client: httpx.AsyncClient) -> dict[str, Any]:
    login = "mutation In($input: LoginInput!) { login(input: $input) { accessToken } }"
    body = await graphql(
        client, login, {"input": {"email": "ada@example.com", "password": PASSWORD}}
    )
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["login"]
    return result


async def test_a_personal_access_token_uploads_too(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    body = await graphql(
        client, 'mutation { createAccessToken(name: "cli") { token } }', headers=ada
    )
    token = bearer(body["data"]["createAccessToken"]["token"])
    response = await create(client, token, 3, body=b"pat", filename="pat.txt")
    assert response.status_code == 201, response.text
    assert [file["path"] for file in await files(client, ada)] == ["pat.txt"]


async def test_a_personal_access_token_patches_through_the_sign_in_cache(
    tmp_path: Path, database_url: str
) -> None:
    """A stream of PATCHes signed by one personal access token reads its credential
    once, not once per PATCH (``core.signins``, as GraphQL does); revoking the token
    still refuses the next PATCH at once."""
    settings = make_settings(tmp_path, database_url=database_url, sign_in_cache_seconds=60)
    async with serve_app(settings) as client:
        ada = bearer((await register(client))["accessToken"])
        body = await graphql(
            client,
            'mutation { createAccessToken(name: "cli") { token accessToken { id } } }',
            headers=ada,
        )
        created_token = body["data"]["createAccessToken"]
        token = bearer(created_token["token"])
        url = await created(client, token, 40, filename="pat.bin")
        counted = []
        for offset in range(0, 30, 10):
            with statements() as seen:
                answer = await patch(client, token, url, offset, bytes(10))
            assert answer.status_code == 204, answer.text
            counted.append(seen)
        # The first PATCH (or the creation) starts the user's watch; the later ones
        # are signed in from the cache: the lease's two UPDATEs, nothing read.
        last = counted[-1]
        assert not any('"credential"' in sql or "FROM credential" in sql for sql in last), last
        assert [sql.split()[0] for sql in last if sql.split()[0] != "COMMIT"] == [
            "UPDATE",
            "UPDATE",
        ], last
        revoke = "mutation Revoke($id: ID!) { revokeAccessToken(id: $id) { id } }"
        revoked = await graphql(
            client, revoke, {"id": created_token["accessToken"]["id"]}, headers=ada
        )
        assert "errors" not in revoked, revoked
        refused = await patch(client, token, url, 30, bytes(10))
        assert refused.status_code == 401, refused.text
        assert (await head(client, ada, url)).headers["upload-offset"] == "30"


async def test_expired_uploads_are_gone_and_maintenance_gives_their_bytes_back(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings, engine: AsyncEngine
) -> None:
    url = await created(client, ada, 100, filename="late.bin")
    assert (await patch(client, ada, url, 0, b"x" * 40)).status_code == 204
    expires = (await head(client, ada, url)).headers["upload-expires"]
    assert expires.endswith("GMT")
    async with engine.begin() as connection:
        await connection.execute(
            update(ResumableUpload).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert (await head(client, ada, url)).status_code == 410
    assert (await patch(client, ada, url, 40, b"y")).status_code == 410
    assert await uploads(client, ada) == []
    assert await used_bytes(client, ada) == 100  # until maintenance ends it
    storage = open_storage(settings.storage_url)
    try:
        ended = await expire_resumable_uploads(
            create_sessionmaker(engine), storage, MemoryEventLog(), settings, utcnow()
        )
    finally:
        await storage.aclose()
    assert ended == 1
    assert await used_bytes(client, ada) == 0
    assert leftover_objects(settings) == []
    assert (await head(client, ada, url)).status_code == 404


async def test_a_restarted_server_goes_on_and_hashes_what_it_did_not_see(
    tmp_path: Path, database_url: str, file_storage_url: str
) -> None:
    """The hash state lives in the process that received the bytes: a new process
    (a restart, another replica) takes the upload on and reads the file back to hash it."""
    settings = make_settings(tmp_path, database_url=database_url, storage_url=file_storage_url)
    data = bytes(range(256)) * 4096
    async with serve_app(settings) as first:
        ada = bearer((await register(first))["accessToken"])
        url = await created(first, ada, len(data), filename="resumed.bin")
        assert (await patch(first, ada, url, 0, data[:300_000])).status_code == 204
    async with serve_app(settings) as second:
        described = await head(second, ada, url)
        assert described.headers["upload-offset"] == "300000"
        assert (await patch(second, ada, url, 300_000, data[300_000:])).status_code == 204
        [file] = await files(second, ada)
    assert file["sha256"] == hashlib.sha256(data).hexdigest()


async def test_cors_lets_a_page_speak_tus(tmp_path: Path, database_url: str) -> None:
    origin = "https://app.example.com"
    settings = make_settings(tmp_path, database_url=database_url, cors_origins=[origin])
    async with serve_app(settings) as client:
        for method in ("POST", "HEAD", "PATCH", "DELETE"):
            preflight = await client.options(
                "/files/tus/abc",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": (
                        "authorization,tus-resumable,upload-offset,upload-length,"
                        "upload-metadata,upload-checksum,content-type,x-http-method-override"
                    ),
                },
            )
            assert preflight.status_code == 200, (method, preflight.text)
            assert method in preflight.headers["access-control-allow-methods"]
            allowed = preflight.headers["access-control-allow-headers"].lower()
            assert "upload-offset" in allowed
            assert "tus-resumable" in allowed
        answer = await client.options("/files/tus/", headers={"Origin": origin})
        exposed = {
            h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")
        }
        assert exposed >= {
            "location",
            "upload-offset",
            "upload-length",
            "upload-expires",
            "upload-metadata",
            "tus-resumable",
            "tus-version",
            "tus-extension",
            "tus-max-size",
        }


async def test_a_second_request_meanwhile_is_told_the_upload_is_busy(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    url = await created(client, ada, 5, filename="busy.txt")
    sent_first = anyio.Event()
    gate = anyio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"abc"
        sent_first.set()
        await gate.wait()
        yield b"de"

    answers: dict[str, httpx.Response] = {}

    async def first() -> None:
        answers["first"] = await client.patch(
            url, headers={**TUS, **OFFSET_STREAM, **ada, "Upload-Offset": "0"}, content=slow()
        )

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await sent_first.wait()
        second = await patch(client, ada, url, 0, b"xy")
        gate.set()
    assert (second.status_code, second.json()["code"]) == (423, "CONFLICT")
    assert answers["first"].status_code == 204
    assert answers["first"].headers["upload-offset"] == "5"


@on_local_and_s3
@pytest.mark.parametrize("restart", [False, True], ids=["hash-kept", "hash-lost"])
async def test_an_image_gets_its_metadata_on_arrival(
    tmp_path: Path, database_url: str, file_storage_url: str, restart: bool
) -> None:
    """The probe reads the finished file's two ends back, whichever process finishes it."""
    settings = make_settings(tmp_path, database_url=database_url, storage_url=file_storage_url)
    image = io.BytesIO()
    Image.effect_noise((300, 200), 64).convert("RGB").save(image, "PNG")
    data = image.getvalue()
    half = len(data) // 2
    async with serve_app(settings) as client:
        ada = bearer((await register(client))["accessToken"])
        url = await created(client, ada, len(data), path="photos/noise.png")
        assert (await patch(client, ada, url, 0, data[:half])).status_code == 204
        if not restart:
            assert (await patch(client, ada, url, half, data[half:])).status_code == 204
            body = await graphql(client, METADATA, headers=ada)
    if restart:
        async with serve_app(settings) as client:
            assert (await patch(client, ada, url, half, data[half:])).status_code == 204
            body = await graphql(client, METADATA, headers=ada)
    [file] = [edge["node"] for edge in body["data"]["files"]["edges"]]
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert file["contentType"] == "image/png"
    assert (file["metadata"]["width"], file["metadata"]["height"]) == (300, 200)


async def test_creations_count_against_the_upload_limit(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url=database_url, upload_limit_per_user="2/minute")
    async with serve_app(settings) as client:
        ada = bearer((await register(client))["accessToken"])
        url = await created(client, ada, 4, filename="one.bin")
        # PATCHes are bytes of an upload already counted, not uploads.
        for offset in range(4):
            assert (await patch(client, ada, url, offset, b"x")).status_code == 204
        assert (await create(client, ada, 1, filename="two.bin")).status_code == 201
        refused = await create(client, ada, 1, filename="three.bin")
    assert (refused.status_code, refused.json()["code"]) == (429, "RATE_LIMITED")
    assert int(refused.headers["retry-after"]) > 0


@on_local_and_s3
async def test_a_patch_retried_after_completion_is_answered_again(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings, engine: AsyncEngine
) -> None:
    """The last PATCH's answer lost, tus-js-client sends it again: it is told the
    final offset (not 404), no second file is made, nothing is reserved twice, and
    the completed upload's record goes at its expiry without taking the file's bytes."""
    data = bytes(range(256)) * 40
    url = await created(client, ada, len(data), filename="retried.bin")
    assert (await patch(client, ada, url, 0, data[:6000])).status_code == 204
    last = await patch(client, ada, url, 6000, data[6000:])
    assert last.status_code == 204, last.text
    again = await patch(client, ada, url, 6000, data[6000:])
    assert again.status_code == 204, again.text
    assert again.headers["upload-offset"] == str(len(data))
    assert again.headers["upload-expires"] == last.headers["upload-expires"]
    described = await head(client, ada, url)
    assert described.status_code == 200
    assert described.headers["upload-offset"] == str(len(data))
    # Sent again chunked (no Content-Length, as a client streaming its source does):
    # read to its end, then answered alike.
    streamed = await patch_chunked(client, ada, url, 6000, data[6000:])
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 204, streamed.text
    assert streamed.headers["upload-offset"] == str(len(data))
    for start, end in ((6000, len(data) - 1), (6000, len(data)), (0, 6000)):
        short_or_long = data[start:end] + (b"x" if end == len(data) else b"")
        wrong = await patch_chunked(client, ada, url, start, short_or_long)
        assert wrong.status_code == 409, (start, end, wrong.text)
    # Bytes that would not end where the upload did: tus's offset mismatch.
    wrong = await patch(client, ada, url, 0, data[:6000])
    assert wrong.status_code == 409
    assert wrong.json()["code"] == "CONFLICT"
    assert (await patch(client, ada, url, len(data), b"more")).status_code == 409
    # The record is no unfinished upload: not listed, not cancelled, not counted.
    assert await uploads(client, ada) == []
    assert (await client.delete(url, headers={**TUS, **ada})).status_code == 404
    [file] = await files(client, ada)
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert await used_bytes(client, ada) == len(data)
    suspects: dict[Any, tuple[int, int]] = {}
    sessionmaker = create_sessionmaker(engine)
    assert [await recount_usage(sessionmaker, suspects) for _ in range(2)] == [0, 0]
    assert suspects == {}
    # At its expiry only the record goes: the file keeps its bytes.
    async with engine.begin() as connection:
        await connection.execute(
            update(ResumableUpload).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert (await head(client, ada, url)).status_code == 410
    storage = open_storage(settings.storage_url)
    try:
        ended = await expire_resumable_uploads(
            sessionmaker, storage, MemoryEventLog(), settings, utcnow()
        )
    finally:
        await storage.aclose()
    assert ended == 0  # nothing unfinished ended
    assert (await head(client, ada, url)).status_code == 404
    assert await used_bytes(client, ada) == len(data)
    [key] = leftover_objects(settings)
    assert read_object(settings, key) == data
