"""Direct uploads: createUpload, the signed PUT route, completeUpload, and what they refuse.

Storage is a local directory (bytes PUT to Depot's signed route, through the
app); the tests whose outcome depends on the backend run on S3 too, where the
bytes go over the network to the presigned S3 URL, as a browser's would.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import jwt
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from core.models import Upload
from core.settings import Settings
from core.time import utcnow
from tests.conftest import make_settings, on_local_and_s3
from tests.support import (
    assert_error,
    bearer,
    follow,
    graphql,
    leftover_objects,
    read_object,
    register,
    used_bytes,
    write_object,
)

pytestmark = pytest.mark.anyio

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + b"\x00" * 100
CREATE_UPLOAD = """
mutation CreateUpload($input: CreateUploadInput!) {
  createUpload(input: $input) { id url method headers expiresAt }
}"""
COMPLETE_UPLOAD = """
mutation CompleteUpload($id: ID!) {
  completeUpload(id: $id) { id path name size contentType sha256 downloadUrl }
}"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def signed_in(client: httpx.AsyncClient, email: str = "ada@example.com") -> dict[str, str]:
    return bearer((await register(client, email=email))["accessToken"])


async def try_create_upload(
    client: httpx.AsyncClient, headers: dict[str, str], **fields: object
) -> dict[str, Any]:
    return await graphql(client, CREATE_UPLOAD, {"input": fields}, headers=headers)


async def create_upload(
    client: httpx.AsyncClient, headers: dict[str, str], **fields: object
) -> dict[str, Any]:
    body = await try_create_upload(client, headers, **fields)
    assert "errors" not in body, body
    ticket: dict[str, Any] = body["data"]["createUpload"]
    return ticket


async def put_bytes(
    client: httpx.AsyncClient, ticket: dict[str, Any], data: bytes
) -> httpx.Response:
    """Send ``data`` the way the ticket says (method, URL, headers), wherever it points."""
    headers = {**ticket["headers"], "Content-Length": str(len(data))}
    return await follow(client, ticket["method"], ticket["url"], content=data, headers=headers)


async def try_complete_upload(
    client: httpx.AsyncClient, headers: dict[str, str], ticket_id: str
) -> dict[str, Any]:
    return await graphql(client, COMPLETE_UPLOAD, {"id": ticket_id}, headers=headers)


async def direct_upload(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    path: str,
    data: bytes,
    *,
    content_type: str | None = None,
    with_sha256: bool = True,
) -> dict[str, Any]:
    """createUpload, PUT, completeUpload: the ``File`` (no errors allowed)."""
    fields: dict[str, object] = {"path": path, "size": len(data)}
    if content_type is not None:
        fields["contentType"] = content_type
    if with_sha256:
        fields["sha256"] = sha256(data)
    ticket = await create_upload(client, headers, **fields)
    response = await put_bytes(client, ticket, data)
    assert response.is_success, response.text
    body = await try_complete_upload(client, headers, ticket["id"])
    assert "errors" not in body, body
    file: dict[str, Any] = body["data"]["completeUpload"]
    return file


def is_presigned(ticket: dict[str, Any]) -> bool:
    """Whether the ticket's bytes go straight to S3 (rather than to Depot's signed route)."""
    return "X-Amz-Signature" in httpx.URL(ticket["url"]).params


def ticket_key(ticket: dict[str, Any]) -> str:
    """The storage key a ticket's bytes go to: in the S3 URL's path, or the link's claims."""
    url = httpx.URL(ticket["url"])
    if is_presigned(ticket):
        return url.path.split("/", 2)[2]  # path-style: /<bucket>/<key>
    key = jwt.decode(url.path.rpartition("/")[2], options={"verify_signature": False})["key"]
    assert isinstance(key, str)
    return key


@pytest.fixture
def settings(tmp_path: Path, database_url: str, file_storage_url: str) -> Settings:
    """Local storage, or S3 for the tests marked ``on_local_and_s3``."""
    return make_settings(tmp_path, database_url=database_url, storage_url=file_storage_url)


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> dict[str, str]:
    return await signed_in(client)


@pytest.mark.parametrize("file_storage_url", ["memory", "local", "s3"], indirect=True)
async def test_direct_upload_checks_and_creates_the_file(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    ticket = await create_upload(
        client,
        ada,
        path="/pictures/café.png",
        size=len(PNG),
        contentType="application/octet-stream",
        sha256=sha256(PNG),
    )
    assert ticket["method"] == "PUT"
    assert ticket["headers"]["Content-Length"] == str(len(PNG))
    assert await used_bytes(client, ada) == len(PNG), "reserved at creation"
    assert (await put_bytes(client, ticket, PNG)).is_success
    # Sending the same bytes again before completing is harmless.
    assert (await put_bytes(client, ticket, PNG)).is_success
    body = await try_complete_upload(client, ada, ticket["id"])
    assert "errors" not in body, body
    file = body["data"]["completeUpload"]
    assert file["path"] == "pictures/café.png"
    assert file["name"] == "café.png"
    assert file["size"] == len(PNG)
    assert file["contentType"] == "image/png", "sniffed, not the declared type"
    assert file["sha256"] == sha256(PNG)
    assert await used_bytes(client, ada) == len(PNG)
    download = await follow(client, "GET", file["downloadUrl"])
    assert download.status_code == 200
    assert download.content == PNG
    assert download.headers["content-type"] == "image/png"
    disposition = download.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="cafe.png"; ')
    assert unquote(disposition.partition("filename*=UTF-8''")[2]) == "café.png"
    # Completing again (a retry whose answer was lost) answers the same file, once.
    again = await try_complete_upload(client, ada, ticket["id"])
    assert again["data"]["completeUpload"]["id"] == file["id"], again
    assert await used_bytes(client, ada) == len(PNG)


@pytest.mark.parametrize("file_storage_url", ["memory", "local", "s3"], indirect=True)
async def test_the_upload_link_never_reaches_the_file(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    ticket = await create_upload(client, ada, path="f.png", size=len(PNG), sha256=sha256(PNG))
    assert (await put_bytes(client, ticket, PNG)).is_success
    body = await try_complete_upload(client, ada, ticket["id"])
    assert "errors" not in body, body
    file = body["data"]["completeUpload"]

    again = await put_bytes(client, ticket, b"x" * len(PNG))

    # Depot's own route knows the ticket ended. A presigned S3 URL works until
    # it expires, but the file's bytes were moved to a key of the file's own.
    if settings.storage_url.startswith("s3://"):
        assert again.is_success
    else:
        assert again.status_code == 410
    assert (await follow(client, "GET", file["downloadUrl"])).content == PNG


@on_local_and_s3
async def test_text_keeps_its_declared_text_type(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    csv = b"name,size\nada,1\n"
    file = await direct_upload(client, ada, "t.csv", csv, content_type="text/csv; charset=utf-8")
    assert file["contentType"] == "text/csv"
    other = await direct_upload(client, ada, "t.bin", csv, content_type="image/png")
    assert other["contentType"] == "text/plain", "a false claim is not believed"


@on_local_and_s3
async def test_an_empty_file_and_no_sha256(client: httpx.AsyncClient, ada: dict[str, str]) -> None:
    file = await direct_upload(client, ada, "empty", b"", with_sha256=False)
    assert file["size"] == 0
    assert file["sha256"] == sha256(b"")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"path": "a/../b", "size": 1}, "path"),
        ({"path": "", "size": 1}, "path"),
        ({"path": "a\x00b", "size": 1}, "path"),
        ({"path": "ok", "size": -1}, "size"),
        ({"path": "ok", "size": 5 * 1024**3 + 1}, "size"),
        ({"path": "ok", "size": 1, "sha256": "A" * 64}, "sha256"),
        ({"path": "ok", "size": 1, "sha256": "abc"}, "sha256"),
        ({"path": "ok", "size": 1, "contentType": "text/html\r\nX-Evil: 1"}, "contentType"),
    ],
)
async def test_create_upload_refuses_bad_input(
    client: httpx.AsyncClient, ada: dict[str, str], fields: dict[str, object], field: str
) -> None:
    error = assert_error(
        await try_create_upload(client, ada, **fields), "BAD_USER_INPUT", field=field
    )
    assert error["message"]
    assert await used_bytes(client, ada) == 0, "nothing reserved"


@on_local_and_s3
async def test_tickets_reserve_quota_until_they_end(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    quota = 10 * 1024**3
    half = quota // 2
    first = await create_upload(client, ada, path="a", size=half)
    await create_upload(client, ada, path="b", size=half)
    assert await used_bytes(client, ada) == quota
    assert_error(await try_create_upload(client, ada, path="c", size=1), "QUOTA_EXCEEDED")
    # Nothing was sent for the first ticket: completing it says so and keeps it open.
    error = assert_error(
        await try_complete_upload(client, ada, first["id"]), "BAD_USER_INPUT", field="id"
    )
    assert "No bytes were uploaded" in error["message"]
    assert await used_bytes(client, ada) == quota


async def test_create_upload_refuses_a_taken_path(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    await direct_upload(client, ada, "docs/a.txt", b"one")
    assert_error(await try_create_upload(client, ada, path="/docs/a.txt/", size=3), "CONFLICT")
    assert await used_bytes(client, ada) == 3


@on_local_and_s3
async def test_the_second_of_two_tickets_for_one_path_is_discarded(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    first = await create_upload(client, ada, path="same", size=3)
    second = await create_upload(client, ada, path="same", size=4)
    assert (await put_bytes(client, first, b"one")).is_success
    assert (await put_bytes(client, second, b"four")).is_success
    assert "errors" not in await try_complete_upload(client, ada, first["id"])
    assert_error(await try_complete_upload(client, ada, second["id"]), "CONFLICT")
    assert await used_bytes(client, ada) == 3, "the loser's reservation is released"
    # One object: the winner's, moved to its file's own key; the loser's is deleted.
    [kept] = leftover_objects(settings)
    assert kept not in (ticket_key(first), ticket_key(second))
    if not is_presigned(second):  # S3: see test_the_upload_link_never_reaches_the_file
        assert (await put_bytes(client, second, b"four")).status_code == 410


async def test_put_needs_exactly_the_declared_length(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    ticket = await create_upload(client, ada, path="f", size=10)
    url = ticket["url"]
    short = await client.put(url, content=b"12345")
    assert short.status_code == 400
    assert "10 bytes" in short.json()["error"]
    long = await client.put(url, content=b"x" * 11)
    assert long.status_code == 413

    async def chunks() -> Any:
        yield b"0123456789"

    chunked = await client.put(url, content=chunks())
    assert chunked.status_code == 411
    # A streamed body is fine once it says how long it is.
    streamed = await client.put(url, content=chunks(), headers={"Content-Length": "10"})
    assert streamed.status_code == 204
    assert "errors" not in await try_complete_upload(client, ada, ticket["id"])


async def test_a_body_shorter_than_its_content_length_stores_nothing(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    ticket = await create_upload(client, ada, path="f", size=10)

    async def five() -> Any:
        yield b"12345"

    response = await client.put(ticket["url"], content=five(), headers={"Content-Length": "10"})
    assert response.status_code == 400
    assert "nothing was stored" in response.json()["error"]
    error = assert_error(
        await try_complete_upload(client, ada, ticket["id"]), "BAD_USER_INPUT", field="id"
    )
    assert "No bytes were uploaded" in error["message"]


async def test_put_refuses_tampered_and_download_links(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    ticket = await create_upload(client, ada, path="f", size=3)
    url: str = ticket["url"]
    tampered = url[:-3] + ("A" if url[-3] != "A" else "B") + url[-2:]
    assert (await client.put(tampered, content=b"abc")).status_code == 403
    file = await direct_upload(client, ada, "g", b"abc")
    as_upload = file["downloadUrl"].replace("/files/download/", "/files/upload/")
    response = await client.put(as_upload, content=b"abc")
    assert response.status_code == 403
    assert response.json() == {"error": "This link is not valid."}


@on_local_and_s3
async def test_complete_refuses_bytes_of_another_size(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    """Storage that took other bytes than declared (a misbehaving S3 client, say)."""
    ticket = await create_upload(client, ada, path="f", size=10)
    write_object(settings, ticket_key(ticket), b"seven!!")
    error = assert_error(
        await try_complete_upload(client, ada, ticket["id"]), "BAD_USER_INPUT", field="id"
    )
    assert "7 bytes were uploaded, but 10 were declared" in error["message"]
    assert leftover_objects(settings) == [], "the object is deleted"
    assert await used_bytes(client, ada) == 0, "the reservation is released"
    assert_error(await try_complete_upload(client, ada, ticket["id"]), "CONFLICT")


@on_local_and_s3
async def test_complete_refuses_bytes_with_another_sha256(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    kept = await direct_upload(client, ada, "kept", b"kept")
    ticket = await create_upload(client, ada, path="f", size=5, sha256=sha256(b"hello"))
    assert await used_bytes(client, ada) == 9
    assert (await put_bytes(client, ticket, b"jello")).is_success
    error = assert_error(
        await try_complete_upload(client, ada, ticket["id"]), "BAD_USER_INPUT", field="id"
    )
    assert "SHA-256" in error["message"]
    assert await used_bytes(client, ada) == 4, "usage is back to what it was"
    [key] = leftover_objects(settings)
    assert read_object(settings, key) == b"kept", "only the kept file's object is left"
    assert (await follow(client, "GET", kept["downloadUrl"])).content == b"kept"
    assert_error(await try_complete_upload(client, ada, ticket["id"]), "CONFLICT")
    if not is_presigned(ticket):  # S3: see test_the_upload_link_never_reaches_the_file
        assert (await put_bytes(client, ticket, b"hello")).status_code == 410
    # The path is still free.
    await direct_upload(client, ada, "f", b"hello")


async def test_another_users_ticket_is_not_found(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    ticket = await create_upload(client, ada, path="f", size=3)
    assert (await put_bytes(client, ticket, b"abc")).status_code == 204
    bob = await signed_in(client, "bob@example.com")
    assert_error(await try_complete_upload(client, bob, ticket["id"]), "NOT_FOUND")
    assert_error(
        await try_complete_upload(client, bob, "VXBsb2FkOjAwMDAwMDAw"), "BAD_USER_INPUT", field="id"
    )
    # Ada's ticket is untouched.
    assert "errors" not in await try_complete_upload(client, ada, ticket["id"])


async def test_an_expired_ticket_is_refused_and_released(
    client: httpx.AsyncClient, ada: dict[str, str], engine: AsyncEngine
) -> None:
    ticket = await create_upload(client, ada, path="f", size=3)
    assert (await put_bytes(client, ticket, b"abc")).status_code == 204
    async with engine.begin() as connection:
        await connection.execute(
            update(Upload).where(col(Upload.path) == "f").values(expires_at=utcnow())
        )
    assert (await put_bytes(client, ticket, b"abc")).status_code == 410
    error = assert_error(
        await try_complete_upload(client, ada, ticket["id"]), "BAD_USER_INPUT", field="id"
    )
    assert "expired" in error["message"]
    assert await used_bytes(client, ada) == 0


async def test_a_new_ticket_releases_the_owners_expired_ones(
    client: httpx.AsyncClient, ada: dict[str, str], engine: AsyncEngine, settings: Settings
) -> None:
    abandoned = await create_upload(client, ada, path="abandoned", size=3)
    assert (await put_bytes(client, abandoned, b"abc")).status_code == 204
    async with engine.begin() as connection:
        await connection.execute(
            update(Upload).where(col(Upload.path) == "abandoned").values(expires_at=utcnow())
        )
    await create_upload(client, ada, path="next", size=5)
    assert await used_bytes(client, ada) == 5, "only the new ticket holds quota"
    assert leftover_objects(settings) == [], "the abandoned ticket's bytes are deleted"
    error = assert_error(await try_complete_upload(client, ada, abandoned["id"]), "CONFLICT")
    assert "ended" in error["message"]


async def test_direct_uploads_need_a_signed_in_user(client: httpx.AsyncClient) -> None:
    assert_error(
        await graphql(client, CREATE_UPLOAD, {"input": {"path": "f", "size": 1}}), "UNAUTHENTICATED"
    )


@on_local_and_s3
async def test_a_second_put_replaces_the_first(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    ticket = await create_upload(client, ada, path="f", size=5, sha256=sha256(b"right"))
    assert (await put_bytes(client, ticket, b"wrong")).is_success
    assert (await put_bytes(client, ticket, b"right")).is_success
    body = await try_complete_upload(client, ada, ticket["id"])
    assert "errors" not in body, body
    file = body["data"]["completeUpload"]
    assert (await follow(client, "GET", file["downloadUrl"])).content == b"right"


@on_local_and_s3
async def test_bytes_replaced_after_the_put_are_checked_again(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    """The PUT route's own hash stands only for the object it wrote: the same number
    of other bytes put in its place behind Depot's back are read and refused."""
    ticket = await create_upload(client, ada, path="f", size=5, sha256=sha256(b"right"))
    assert (await put_bytes(client, ticket, b"right")).is_success
    write_object(settings, ticket_key(ticket), b"wrong")
    error = assert_error(
        await try_complete_upload(client, ada, ticket["id"]), "BAD_USER_INPUT", field="id"
    )
    assert "SHA-256" in error["message"]
    assert leftover_objects(settings) == []


async def test_the_put_routes_hash_and_type_are_the_files(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    ticket = await create_upload(client, ada, path="i.png", size=len(png))
    assert (await put_bytes(client, ticket, png)).is_success
    body = await try_complete_upload(client, ada, ticket["id"])
    assert "errors" not in body, body
    file = body["data"]["completeUpload"]
    assert file["sha256"] == sha256(png)
    assert file["contentType"] == "image/png"
