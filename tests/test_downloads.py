"""Download links: Depot's signed route (headers, ranges, conditional requests, refused
links) on memory and local storage; on S3 the same link, redirecting to a short
presigned URL fetched from S3 itself; and the host links lead to.
"""

from __future__ import annotations

from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import jwt
import pytest

from api.files import RouteLinks
from core import migrate
from core.db import create_engine
from core.links import LinkSigner, Purpose
from core.settings import Settings
from core.time import utcnow
from tests.conftest import S3Server, make_settings, serve_app
from tests.support import STRONG_SECRET, graphql
from tests.test_direct_uploads import create_upload, direct_upload, signed_in

pytestmark = pytest.mark.anyio

DATA = bytes(range(256)) * 1024 + b"tail"  # 256 KiB and a bit: several storage blocks


@pytest.fixture(params=["memory", "local"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Settings:
    """Every download test runs against memory and local storage."""
    if request.param == "local":
        storage_url = (tmp_path / "storage").resolve().as_uri()
    else:
        storage_url = "memory://"
    return make_settings(tmp_path, database_url=database_url, storage_url=storage_url)


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> dict[str, str]:
    return await signed_in(client)


@pytest.fixture
async def file(client: httpx.AsyncClient, ada: dict[str, str]) -> dict[str, Any]:
    return await direct_upload(client, ada, "reports/data.bin", DATA)


def claims_of(url: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(url.rpartition("/")[2], options={"verify_signature": False})
    return claims


def signed(settings: Settings, purpose: Purpose, **claims: Any) -> str:
    """A link of ours, signed with the app's secret, with exactly these claims."""
    links = RouteLinks(LinkSigner(STRONG_SECRET), str(settings.public_base_url))
    expires_at = claims.pop("expires_at", utcnow() + timedelta(minutes=5))
    return links.url(purpose, expires_at, **claims)


async def test_a_download_streams_the_file_with_safe_headers(
    client: httpx.AsyncClient, file: dict[str, Any]
) -> None:
    response = await client.get(file["downloadUrl"])
    assert response.status_code == 200
    assert response.content == DATA
    headers = response.headers
    assert headers["content-length"] == str(len(DATA))
    assert headers["content-type"] == "application/octet-stream"
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"].startswith('"')
    assert headers["etag"].endswith('"')
    assert parsedate_to_datetime(headers["last-modified"]) <= utcnow()
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"].startswith("private")
    assert headers["content-disposition"] == (
        "attachment; filename=\"data.bin\"; filename*=UTF-8''data.bin"
    )
    head = await client.head(file["downloadUrl"])
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(DATA))
    assert head.headers["etag"] == headers["etag"]


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=100-", 100, len(DATA)),
        ("bytes=-4", len(DATA) - 4, len(DATA)),
        ("bytes=-999999999", 0, len(DATA)),
        ("bytes=200000-999999999", 200000, len(DATA)),
        ("bytes=70000-200000", 70000, 200001),
    ],
)
async def test_a_single_range_gets_206(
    client: httpx.AsyncClient, file: dict[str, Any], range_header: str, start: int, end: int
) -> None:
    response = await client.get(file["downloadUrl"], headers={"Range": range_header})
    assert response.status_code == 206
    assert response.content == DATA[start:end]
    assert response.headers["content-length"] == str(end - start)
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(DATA)}"


@pytest.mark.parametrize(
    "range_header",
    ["bytes=0-1,5-6", f"bytes={len(DATA)}-", "bytes=-0", "bytes=9-3", "items=0-1", "bytes=x-y"],
)
async def test_an_unsatisfiable_range_gets_416(
    client: httpx.AsyncClient, file: dict[str, Any], range_header: str
) -> None:
    response = await client.get(file["downloadUrl"], headers={"Range": range_header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


async def test_conditional_requests(client: httpx.AsyncClient, file: dict[str, Any]) -> None:
    url = file["downloadUrl"]
    first = await client.get(url)
    etag, last_modified = first.headers["etag"], first.headers["last-modified"]
    unchanged = await client.get(url, headers={"If-None-Match": f'"other", {etag}'})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    assert (await client.get(url, headers={"If-None-Match": '"other"'})).status_code == 200
    since = await client.get(url, headers={"If-Modified-Since": last_modified})
    assert since.status_code == 304
    # If-Range: the range only while the file is the same version, the whole file otherwise.
    same = await client.get(url, headers={"Range": "bytes=0-3", "If-Range": etag})
    assert same.status_code == 206
    assert same.content == DATA[:4]
    changed = await client.get(url, headers={"Range": "bytes=0-3", "If-Range": '"stale"'})
    assert changed.status_code == 200
    assert changed.content == DATA


async def test_a_tampered_link_is_forbidden(
    client: httpx.AsyncClient, file: dict[str, Any]
) -> None:
    url: str = file["downloadUrl"]
    position = len(url) - 10
    tampered = url[:position] + ("A" if url[position] != "A" else "B") + url[position + 1 :]
    response = await client.get(tampered)
    assert response.status_code == 403
    assert response.json() == {"error": "This link is not valid."}
    assert (await client.get("/files/download/not-a-token")).status_code == 403


async def test_a_link_forged_with_another_secret_is_forbidden(
    client: httpx.AsyncClient, file: dict[str, Any], settings: Settings
) -> None:
    claims = claims_of(file["downloadUrl"])
    forger = RouteLinks(LinkSigner("another-secret-" + "x" * 40), str(settings.public_base_url))
    forged = forger.url(
        "download", utcnow() + timedelta(minutes=5), key=claims["key"], name="a", type="text/plain"
    )
    response = await client.get(forged)
    assert response.status_code == 403
    assert response.json() == {"error": "This link is not valid."}


async def test_an_upload_link_is_no_download_link(
    client: httpx.AsyncClient, file: dict[str, Any], settings: Settings
) -> None:
    key = claims_of(file["downloadUrl"])["key"]
    upload_link = signed(settings, "upload", key=key, size=len(DATA))
    as_download = upload_link.replace("/files/upload/", "/files/download/")
    response = await client.get(as_download)
    assert response.status_code == 403
    assert response.json() == {"error": "This link is not valid."}


async def test_an_expired_link_is_gone_whether_or_not_the_file_exists(
    client: httpx.AsyncClient, file: dict[str, Any], settings: Settings
) -> None:
    past = utcnow() - timedelta(minutes=1)
    key = claims_of(file["downloadUrl"])["key"]
    real = await client.get(signed(settings, "download", key=key, expires_at=past))
    missing = await client.get(
        signed(settings, "download", key="u/00/does-not-exist", expires_at=past)
    )
    assert real.status_code == missing.status_code == 410
    assert real.content == missing.content
    assert real.json() == {"error": "This link has expired; ask for a new one."}


async def test_a_link_to_a_missing_object_is_gone_without_detail(
    client: httpx.AsyncClient, file: dict[str, Any], settings: Settings
) -> None:
    expired = await client.get(
        signed(settings, "download", key="u/0/x", expires_at=utcnow() - timedelta(minutes=1))
    )
    missing = await client.get(signed(settings, "download", key="u/0/x", name="a", type="a/b"))
    assert missing.status_code == 410
    assert missing.content == expired.content, "a missing object says no more than expiry"


async def test_filenames_are_made_safe_for_the_header(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    file = await direct_upload(client, ada, 'dir/na"me café ✓.txt', b"hello")
    response = await client.get(file["downloadUrl"])
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=\"name cafe .txt\"; filename*=UTF-8''")
    assert unquote(disposition.partition("UTF-8''")[2]) == "name café ✓.txt"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


async def test_a_link_with_a_hostile_name_claim_cannot_inject_headers(
    client: httpx.AsyncClient, file: dict[str, Any], settings: Settings
) -> None:
    key = claims_of(file["downloadUrl"])["key"]
    link = signed(
        settings,
        "download",
        key=key,
        name='../evil"\r\nSet-Cookie: a=b\x00.html',
        type="text/html\r\nX-Evil: 1",
        cred=claims_of(file["downloadUrl"])["cred"],
    )
    response = await client.get(link)
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert "x-evil" not in response.headers
    assert response.headers["content-type"] == "application/octet-stream"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="evilSet-Cookie: a=b.html"')
    assert "\r" not in disposition
    assert "\n" not in disposition


async def test_on_s3_the_link_is_depots_and_redirects_to_a_short_presigned_url(
    tmp_path: Path, database_url: str, s3_server: S3Server, s3_url: str
) -> None:
    settings = make_settings(
        tmp_path, database_url=database_url, storage_url=s3_url, download_url_minutes=7
    )
    async with serve_app(settings) as client:
        ada = await signed_in(client)
        file = await direct_upload(client, ada, 'dir/na"me café ✓.txt', DATA)
        url: str = file["downloadUrl"]
        # Depot's own link, so every request is checked before S3 is reached...
        assert url.startswith("http://depot.test/files/download/")
        assert claims_of(url)["exp"] - utcnow().timestamp() > 6 * 60
        redirect = await client.get(url)
        head = await client.head(url)
        # ...and a trashed file's link is refused by Depot, with no way round to S3.
        trash = "mutation Trash($id: ID!) { deleteFile(id: $id) { id } }"
        await graphql(client, trash, {"id": file["id"]}, headers=ada)
        trashed = await client.get(url)
    assert redirect.status_code == head.status_code == 307
    assert redirect.headers["cache-control"] == "no-store"
    presigned = redirect.headers["location"]
    assert presigned.startswith(f"{s3_server.endpoint_url}/")
    query = parse_qs(urlsplit(presigned).query)
    assert "X-Amz-Signature" in query
    assert query["X-Amz-Expires"] == ["60"]
    assert trashed.status_code == 410
    assert "location" not in trashed.headers

    async with httpx.AsyncClient() as http:
        response = await http.get(presigned)
        ranged = await http.get(presigned, headers={"Range": "bytes=70000-200000"})
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-type"] == "application/octet-stream"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=\"name cafe .txt\"; filename*=UTF-8''")
    assert unquote(disposition.partition("UTF-8''")[2]) == "name café ✓.txt"
    assert ranged.status_code == 206
    assert ranged.content == DATA[70000:200001]


DOWNLOAD = "query Download($id: ID!) { file(id: $id) { downloadUrl } }"


async def _link_via(client: httpx.AsyncClient, headers: dict[str, str], file_id: str) -> str:
    body = await graphql(client, DOWNLOAD, {"id": file_id}, headers=headers)
    assert "errors" not in body, body
    url: str = body["data"]["file"]["downloadUrl"]
    return url


async def test_in_development_links_lead_to_the_host_the_request_reached(
    client: httpx.AsyncClient, ada: dict[str, str], file: dict[str, Any]
) -> None:
    """A page served from elsewhere gets links it can load, not ``localhost:8000``'s."""
    assert file["downloadUrl"].startswith("http://depot.test/files/download/")
    elsewhere = await _link_via(client, {**ada, "host": "thumbs.example:5173"}, file["id"])
    assert elsewhere.startswith("http://thumbs.example:5173/files/download/")
    ticket = await create_upload(client, {**ada, "host": "thumbs.example:5173"}, path="b", size=1)
    assert ticket["url"].startswith("http://thumbs.example:5173/files/upload/")
    response = await client.get(elsewhere)
    assert response.content == DATA


@pytest.mark.parametrize("environment", ["development", "production"])
async def test_a_configured_public_base_url_is_what_links_lead_to(
    tmp_path: Path, database_url: str, environment: str
) -> None:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        environment=environment,
        public_base_url="https://depot.example.com",
    )
    engine = create_engine(settings)
    try:
        await migrate.upgrade(engine)  # production refuses to start on an unmigrated database
    finally:
        await engine.dispose()
    async with serve_app(settings) as client:
        ada = await signed_in(client)
        file = await direct_upload(client, ada, "a.bin", b"abc")
        elsewhere = await _link_via(client, {**ada, "host": "thumbs.example"}, file["id"])
    assert file["downloadUrl"].startswith("https://depot.example.com/files/download/")
    assert elsewhere.startswith("https://depot.example.com/files/download/")
