"""Direct multipart uploads to S3: what Uppy's AwsS3 plugin calls, over GraphQL, against moto.

Parts go over the network to the presigned S3 URLs, as a browser's would; the
ETags come from S3's answers. Local storage refuses them (tus is its way).
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from core.settings import Settings
from schema.ids import decode_id_of
from tests.conftest import make_settings, serve_app
from tests.support import (
    JOB_TIMEOUT_S,
    assert_error,
    bearer,
    graphql,
    leftover_objects,
    register,
    sign_in,
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


# -- Uppy 6's AwsS3 plugin: one signRequest per S3 request ---------------------------

SIGN_REQUEST = """mutation SignRequest($request: UploadRequestInput!, $file: CreateUploadInput) {
  signUploadRequest(request: $request, file: $file) { url key headers expiresAt }
}"""
FILE_QUERY = "query File($id: ID!) { node(id: $id) { ... on File { path size sha256 } } }"


async def sign(
    client: httpx.AsyncClient, headers: dict[str, str], file: Any = None, **request: Any
) -> dict[str, Any]:
    return dict(await ok(client, headers, SIGN_REQUEST, request=request, file=file))


def tag(xml: str, name: str) -> list[str]:
    return re.findall(rf"<{name}>([^<]*)</{name}>", xml)


async def test_uppy_sign_request_sends_parts_to_s3_and_the_rest_to_depot(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    """What @uppy/aws-s3 6 does with `shouldUseMultipart: true`, request by request."""
    file = {"path": "uppy/big.bin", "size": len(DATA), "contentType": "video/mp4"}
    created = await sign(client, ada, file, method="POST", key="uppy-proposed-key")
    key = created["key"]
    assert key != "uppy-proposed-key"  # Depot's own: the upload's id
    assert created["url"].startswith(str(client.base_url.join("/files/multipart/")))
    assert await used_bytes(client, ada) == len(DATA)  # reserved when signed
    initiated = await client.post(created["url"], headers={"Content-Type": "video/mp4"})
    assert initiated.status_code == 200, initiated.text
    assert initiated.headers["content-type"] == "application/xml"
    [upload_id] = tag(initiated.text, "UploadId")
    assert tag(initiated.text, "Key") == [key]

    async def put_part(number: int) -> str:
        signed = await sign(
            client, ada, method="PUT", key=key, uploadId=upload_id, partNumber=number
        )
        assert not urlsplit(signed["url"]).path.startswith("/files/")  # straight to S3
        async with httpx.AsyncClient() as s3:
            response = await s3.put(signed["url"], content=PARTS[number - 1])
        assert response.status_code == 200, response.text
        return response.headers["etag"].strip('"')  # as Uppy keeps it

    first = await put_part(1)
    listing = await sign(client, ada, method="GET", key=key, uploadId=upload_id)
    listed = await client.get(listing["url"])
    assert listed.status_code == 200, listed.text
    assert tag(listed.text, "PartNumber") == ["1"]
    assert [etag.strip('"') for etag in tag(listed.text, "ETag")] == [first]
    assert tag(listed.text, "Size") == [str(len(PARTS[0]))]
    second = await put_part(2)
    completing = await sign(client, ada, method="POST", key=key, uploadId=upload_id)
    body = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        for n, etag in ((1, first), (2, second))
    )
    completed = await client.post(
        completing["url"],
        content=f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>",
        headers={"Content-Type": "application/xml"},
    )
    assert completed.status_code == 200, completed.text
    [file_id] = tag(completed.text, "Key")
    [location] = tag(completed.text, "Location")
    assert location.startswith(str(client.base_url.join("/files/download/")))
    assert await ok(client, ada, FILE_QUERY, id=file_id) == {
        "path": "uppy/big.bin",
        "size": len(DATA),
        "sha256": hashlib.sha256(DATA).hexdigest(),
    }
    assert (await ok(client, ada, UPLOADS))["edges"] == []
    assert await used_bytes(client, ada) == len(DATA)
    # A completed upload is no more: its links lead nowhere.
    again = await client.get(listing["url"])
    assert again.status_code == 404
    assert tag(again.text, "Code") == ["NOT_FOUND"]
    assert len(leftover_objects(settings)) == 1


async def test_uppy_sign_request_is_the_callers_own_upload_only(
    client: httpx.AsyncClient, ada: dict[str, str], settings: Settings
) -> None:
    bob = bearer((await register(client, "bob@example.com", display_name="Bob"))["accessToken"])
    file = {"path": "mine.bin", "size": len(DATA)}
    created = await sign(client, ada, file, method="POST", key="k")
    key = created["key"]
    initiated = await client.post(created["url"])
    [upload_id] = tag(initiated.text, "UploadId")
    # Bob, knowing Ada's key and upload id, gets nothing signed for them.
    for request in (
        {"method": "PUT", "partNumber": 1},
        {"method": "GET"},
        {"method": "POST"},
        {"method": "DELETE"},
    ):
        variables = {"request": {**request, "key": key, "uploadId": upload_id}}
        body = await graphql(client, SIGN_REQUEST, variables, headers=bob)
        assert_error(body, "NOT_FOUND")
    # Ada's key with another S3 upload id is not her upload either.
    wrong = {"request": {"method": "GET", "key": key, "uploadId": "not-" + upload_id}}
    assert_error(await graphql(client, SIGN_REQUEST, wrong, headers=ada), "NOT_FOUND")
    # What is not a multipart request, or a create without its file, is refused.
    put = {"request": {"method": "PUT", "key": "k", "contentType": "image/png"}}
    error = assert_error(
        await graphql(client, SIGN_REQUEST, put, headers=ada), "BAD_USER_INPUT", field="request"
    )
    assert "shouldUseMultipart" in error["message"]
    bare = {"request": {"method": "POST", "key": "k"}}
    assert_error(
        await graphql(client, SIGN_REQUEST, bare, headers=ada), "BAD_USER_INPUT", field="file"
    )
    # Parts S3 will not assemble are refused in S3's shape, the upload left open.
    completing = await sign(client, ada, method="POST", key=key, uploadId=upload_id)
    bogus = "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>0123</ETag></Part>"
    refused = await client.post(completing["url"], content=bogus + "</CompleteMultipartUpload>")
    assert (refused.status_code, tag(refused.text, "Code")) == (400, ["BAD_USER_INPUT"])
    assert "ETag" in tag(refused.text, "Message")[0]
    empty = await client.post(completing["url"], content="<CompleteMultipartUpload/>")
    assert (empty.status_code, tag(empty.text, "Code")) == (400, ["BAD_USER_INPUT"])
    # A link is for its one request: tampered with, or sent with another method, refused.
    aborting = await sign(client, ada, method="DELETE", key=key, uploadId=upload_id)
    tampered = aborting["url"][:-2] + ("AA" if not aborting["url"].endswith("AA") else "BB")
    refused = await client.delete(tampered)
    assert (refused.status_code, tag(refused.text, "Code")) == (403, ["FORBIDDEN"])
    assert (await client.get(aborting["url"])).status_code == 405
    assert await used_bytes(client, ada) == len(DATA)
    # Aborting releases the reservation and the upload's parts.
    aborted = await client.delete(aborting["url"])
    assert aborted.status_code == 204, aborted.text
    assert await used_bytes(client, ada) == 0
    assert (await ok(client, ada, UPLOADS))["edges"] == []
    assert leftover_objects(settings) == []


async def test_control_links_end_with_the_sign_in_that_signed_them(
    client: httpx.AsyncClient,
) -> None:
    """A control link names its credential, as a download link does: once the user
    signs out (or revokes the personal access token that signed it), every one of
    them is refused, and the upload is left as it was for a new sign-in to finish."""
    payload = await register(client)
    ada = bearer(payload["accessToken"])
    file = {"path": "left-open.bin", "size": len(DATA)}
    created = await sign(client, ada, file, method="POST", key="k")
    key = created["key"]
    initiated = await client.post(created["url"])
    [upload_id] = tag(initiated.text, "UploadId")
    token = await ok(
        client, ada, 'mutation { createAccessToken(name: "cli") { token accessToken { id } } }'
    )
    personal = bearer(token["token"])
    links = {
        (who, method): (await sign(client, headers, method=method, key=key, uploadId=upload_id))[
            "url"
        ]
        for who, headers in (("session", ada), ("token", personal))
        for method in ("GET", "POST", "DELETE")
    }
    listed = await client.get(links["token", "GET"])
    assert listed.status_code == 200, listed.text
    complete = "<CompleteMultipartUpload/>"

    async def refused(who: str) -> None:
        for method in ("GET", "POST", "DELETE"):
            answer = await client.request(
                method, links[who, method], content=complete if method == "POST" else None
            )
            assert (answer.status_code, tag(answer.text, "Code")) == (410, ["EXPIRED"]), (
                who,
                method,
                answer.text,
            )

    revoke = "mutation Revoke($id: ID!) { revokeAccessToken(id: $id) { id } }"
    await ok(client, ada, revoke, id=token["accessToken"]["id"])
    await refused("token")
    assert (await client.get(links["session", "GET"])).status_code == 200
    logout = "mutation Out($token: String!) { logout(refreshToken: $token) }"
    await ok(client, ada, logout, token=payload["refreshToken"])
    await refused("session")
    # Nothing was aborted: the upload and its reservation wait for the next sign-in.
    again = bearer((await sign_in(client))["accessToken"])
    assert [edge["node"]["path"] for edge in (await ok(client, again, UPLOADS))["edges"]] == [
        "left-open.bin"
    ]
    assert await used_bytes(client, again) == len(DATA)
    fresh = await sign(client, again, method="GET", key=key, uploadId=upload_id)
    assert (await client.get(fresh["url"])).status_code == 200


CREATE_WITH_PIPELINE = """mutation Create($input: CreateUploadInput!) {
  createMultipartUpload(input: $input) { upload { id processing { id status message } } }
}"""
COMPLETE_PROCESSING = """mutation Complete($id: ID!, $parts: [UploadPartInput!]!) {
  completeMultipartUpload(id: $id, parts: $parts) { id processing { id } }
}"""
PIPELINE = "query P($id: ID!) { job(id: $id) { status inputs { id } } }"


async def test_a_multipart_uploads_pipeline_waits_for_its_file_then_runs(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    steps = [{"name": "check", "run": {"verify": {}}}]
    created = await ok(
        client,
        ada,
        CREATE_WITH_PIPELINE,
        input={"path": "big/checked.bin", "size": len(DATA), "pipeline": {"steps": steps}},
    )
    processing = created["upload"]["processing"]
    assert processing["status"] == "QUEUED", created
    assert processing["message"] == "Waiting for the upload."
    parts = await send_parts(client, ada, created["upload"]["id"])
    file = await ok(client, ada, COMPLETE_PROCESSING, id=created["upload"]["id"], parts=parts)
    assert file["processing"] == {"id": processing["id"]}
    with anyio.fail_after(JOB_TIMEOUT_S):
        while True:
            job = await ok(client, ada, PIPELINE, id=processing["id"])
            if job["status"] not in ("QUEUED", "RUNNING"):
                break
            await anyio.sleep(0.05)
    assert job == {"status": "SUCCEEDED", "inputs": [{"id": file["id"]}]}
