"""Direct multipart uploads to S3: what Uppy's AwsS3 plugin calls, over GraphQL, against moto.

Parts go over the network to the presigned S3 URLs, as a browser's would; the
ETags come from S3's answers. Local storage refuses them (tus is its way).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import Settings
from schema.ids import decode_id_of
from tests.conftest import make_settings, serve_app
from tests.support import (
    assert_error,
    bearer,
    graphql,
    leftover_objects,
    register,
    storage_root,
    used_bytes,
)
from tests.test_metrics import delta, scrape

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
DATA = random.Random(5).randbytes(5 * MiB + 4321)  # noqa: S311 - test bytes
PARTS = [DATA[: 5 * MiB], DATA[5 * MiB :]]
CREATE = """mutation Create($input: CreateUploadInput!) {
  createMultipartUpload(input: $input) { uploadId key upload { id path length expiresAt } }
}"""
SIGN = """mutation Sign($id: ID!, $n: Int!) {
  signUploadPart(id: $id, partNumber: $n) { url method headers expiresAt }
}"""
PARTS_QUERY = "query Parts($id: ID!) { uploadParts(id: $id) { partNumber size etag } }"
COMPLETE = """mutation Complete($id: ID!, $parts: [UploadPartInput!]!) {
  completeMultipartUpload(id: $id, parts: $parts) { path size sha256 contentType }
}"""
CANCEL = "mutation Cancel($id: ID!) { cancelUpload(id: $id) }"
UPLOADS = "{ uploads { edges { node { id path } } } }"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, s3_url: str) -> Settings:
    return make_settings(tmp_path, database_url=database_url, storage_url=s3_url)


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await register(client))["accessToken"])


async def ok(
    client: httpx.AsyncClient, headers: dict[str, str], query: str, **variables: Any
) -> Any:
    body = await graphql(client, query, variables, headers=headers)
    assert "errors" not in body, body
    return next(iter(body["data"].values()))


async def send_parts(
    client: httpx.AsyncClient, ada: dict[str, str], upload_id: str
) -> list[dict[str, Any]]:
    """Sign and PUT each part straight to S3; the parts as completeMultipartUpload takes them."""
    sent = []
    async with httpx.AsyncClient() as s3:
        for number, body in enumerate(PARTS, start=1):
            signed = await ok(client, ada, SIGN, id=upload_id, n=number)
            response = await s3.request(
                signed["method"], signed["url"], content=body, headers=signed["headers"]
            )
            assert response.status_code == 200, response.text
            sent.append({"partNumber": number, "etag": response.headers["etag"]})
    return sent


async def test_parts_sent_straight_to_s3_become_a_file(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    created = await ok(
        client,
        ada,
        CREATE,
        input={
            "path": "big/video.bin",
            "size": len(DATA),
            "sha256": hashlib.sha256(DATA).hexdigest(),
        },
    )
    upload = created["upload"]
    assert (upload["path"], upload["length"]) == ("big/video.bin", len(DATA))
    assert created["uploadId"]
    assert await used_bytes(client, ada) == len(DATA)  # reserved at creation
    assert [node["node"]["id"] for node in (await ok(client, ada, UPLOADS))["edges"]] == [
        upload["id"]
    ]
    parts = await send_parts(client, ada, upload["id"])
    before = await scrape(client)
    listed = await ok(client, ada, PARTS_QUERY, id=upload["id"])
    assert [(p["partNumber"], p["size"], p["etag"]) for p in listed] == [
        (1, len(PARTS[0]), parts[0]["etag"]),
        (2, len(PARTS[1]), parts[1]["etag"]),
    ]
    file = await ok(client, ada, COMPLETE, id=upload["id"], parts=parts)
    assert file == {
        "path": "big/video.bin",
        "size": len(DATA),
        "sha256": hashlib.sha256(DATA).hexdigest(),
        "contentType": "application/octet-stream",
    }
    assert (await ok(client, ada, UPLOADS))["edges"] == []
    assert await used_bytes(client, ada) == len(DATA)
    after = await scrape(client)
    assert delta(after, before, "depot_upload_bytes_total", method="s3-multipart") == len(DATA)
    assert len(leftover_objects(settings)) == 1  # the file; no pending upload


async def test_wrong_parts_leave_the_upload_open_and_a_wrong_size_ends_it(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    created = await ok(client, ada, CREATE, input={"path": "a.bin", "size": len(DATA) + 1})
    upload_id = created["upload"]["id"]
    parts = await send_parts(client, ada, upload_id)
    wrong = [{**parts[0], "etag": '"0123456789abcdef0123456789abcdef"'}, parts[1]]
    error = assert_error(
        await graphql(client, COMPLETE, {"id": upload_id, "parts": wrong}, headers=ada),
        "BAD_USER_INPUT",
        field="parts",
    )
    assert "ETag" in error["message"]
    # Still open: the right ETags assemble, but one byte short of what was declared.
    short = assert_error(
        await graphql(client, COMPLETE, {"id": upload_id, "parts": parts}, headers=ada),
        "BAD_USER_INPUT",
        field="parts",
    )
    assert "discarded" in short["message"]
    assert await used_bytes(client, ada) == 0
    assert leftover_objects(settings) == []


async def test_cancel_upload_aborts_it_on_s3(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    created = await ok(client, ada, CREATE, input={"path": "c.bin", "size": len(DATA)})
    upload_id = created["upload"]["id"]
    await send_parts(client, ada, upload_id)
    assert await ok(client, ada, CANCEL, id=upload_id) == upload_id
    assert await used_bytes(client, ada) == 0
    assert leftover_objects(settings) == []  # no object, no pending multipart upload
    assert_error(await graphql(client, SIGN, {"id": upload_id, "n": 1}, headers=ada), "NOT_FOUND")
    bad = await graphql(client, SIGN, {"id": upload_id, "n": 10_001}, headers=ada)
    assert_error(bad, "BAD_USER_INPUT", field="partNumber")


async def test_tus_does_not_reach_a_multipart_upload(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    created = await ok(client, ada, CREATE, input={"path": "d.bin", "size": 10})
    key = created["upload"]["id"]
    listed = await ok(client, ada, PARTS_QUERY, id=key)
    assert listed == []
    url = f"/files/tus/{decode_id_of('ResumableUpload', key).hex}"
    tus = {"Tus-Resumable": "1.0.0", **ada}
    assert (await client.head(url, headers=tus)).status_code == 404
    patched = await client.patch(
        url,
        headers={**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        content=b"0123456789",
    )
    assert patched.status_code == 404


async def test_local_storage_takes_no_parts(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(
        tmp_path, database_url=database_url, storage_url=storage_root(tmp_path).as_uri()
    )
    async with serve_app(settings) as client:
        headers = bearer((await register(client))["accessToken"])
        body = await graphql(client, CREATE, {"input": {"path": "x", "size": 1}}, headers=headers)
    error = assert_error(body, "BAD_USER_INPUT", field="input")
    assert "tus" in error["message"]
