"""``uploadFile``: what an upload stores, and that a refused one leaves nothing behind.

Uploads go through HTTP as GraphQL multipart requests. Storage is a local
directory, and for the tests whose outcome depends on the backend also an S3
bucket (moto's server); "nothing left behind" is checked in storage itself
(files on disk; objects and pending multipart uploads in the bucket), and the
database rows and the user's usage through the API and the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from core.db import create_engine
from core.settings import Settings
from storage.s3 import PART_SIZE
from tests.conftest import make_settings, on_local_and_s3, serve_app
from tests.support import (
    assert_error,
    assert_nothing_left,
    bearer,
    file_rows,
    leftover_objects,
    read_object,
    register,
    storage_root,
    try_upload_file,
    update_user,
    upload_file,
    used_bytes,
)

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


@pytest.fixture
def settings(tmp_path: Path, database_url: str, file_storage_url: str) -> Settings:
    """Local storage (or S3, see ``on_local_and_s3``), so what is stored can be seen."""
    return make_settings(
        tmp_path,
        database_url=database_url,
        storage_url=file_storage_url,
        max_upload_bytes=64 * 1024,
    )


@pytest.fixture
async def auth(client: httpx.AsyncClient) -> dict[str, str]:
    """The headers of a freshly registered user."""
    return bearer((await register(client))["accessToken"])


@pytest.fixture(params=["memory", "local", "s3"])
async def any_storage(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    if request.param == "s3":
        storage_url: str = request.getfixturevalue("s3_url")
    elif request.param == "local":
        storage_url = storage_root(tmp_path).as_uri()
    else:
        storage_url = "memory://"
    settings = make_settings(tmp_path, database_url=database_url, storage_url=storage_url)
    async with serve_app(settings) as client:
        yield client


async def test_upload_stores_the_bytes_and_what_they_are(any_storage: httpx.AsyncClient) -> None:
    client = any_storage
    auth = bearer((await register(client))["accessToken"])

    # The client calls it text; the bytes say PNG.
    file = await upload_file(
        client, auth, "photos/2024/cat.png", PNG, filename="x", content_type="text/plain"
    )

    assert file["path"] == "photos/2024/cat.png"
    assert file["name"] == "cat.png"
    assert file["size"] == len(PNG)
    assert file["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert file["contentType"] == "image/png"
    assert await used_bytes(client, auth) == len(PNG)
    text = await upload_file(client, auth, "notes.txt", "héllo\n".encode())
    assert text["contentType"] == "text/plain"
    assert await used_bytes(client, auth) == len(PNG) + len("héllo\n".encode())


@on_local_and_s3
async def test_upload_writes_one_object_under_depots_own_key(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    await upload_file(client, auth, "cat.png", PNG)

    [key] = leftover_objects(settings)
    assert read_object(settings, key) == PNG
    # The key is Depot's own, not the user's path.
    assert "cat" not in key


async def test_path_defaults_to_the_file_name(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    file = await upload_file(client, auth, None, b"x", filename="report 2024.pdf")

    assert (file["path"], file["name"]) == ("report 2024.pdf", "report 2024.pdf")


@on_local_and_s3
async def test_empty_file_is_a_file(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    file = await upload_file(client, auth, "empty", b"")

    assert file["size"] == 0
    assert file["sha256"] == hashlib.sha256(b"").hexdigest()
    assert file["contentType"] == "application/octet-stream"
    assert await used_bytes(client, auth) == 0
    [key] = leftover_objects(settings)
    assert read_object(settings, key) == b""


@pytest.mark.parametrize(
    "path",
    ["..", "a/../b", "./a", "a\0b", "x" * 5000, "", "/", "invoice\u202efdp.exe", "a\u2067b"],
    ids=["dotdot", "inner-dotdot", "dot", "nul", "5000-chars", "empty", "slash", "rlo", "rli"],
)
async def test_bad_path_is_refused_and_nothing_kept(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    settings: Settings,
    path: str,
) -> None:
    body = await try_upload_file(client, auth, path, b"data")

    assert_error(body, "BAD_USER_INPUT", field="path")
    await assert_nothing_left(client, auth, settings)


async def test_bad_file_name_as_default_path_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    body = await try_upload_file(client, auth, None, b"data", filename="..")

    assert_error(body, "BAD_USER_INPUT", field="path")
    await assert_nothing_left(client, auth, settings)


@on_local_and_s3
async def test_file_over_the_size_limit_is_refused_and_nothing_kept(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    limit = settings.max_upload_bytes

    body = await try_upload_file(client, auth, "big", b"x" * (limit + 1))

    error = assert_error(body, "QUOTA_EXCEEDED")
    assert str(limit) in error["message"]
    assert "DEPOT_MAX_UPLOAD_BYTES" in error["message"]
    await assert_nothing_left(client, auth, settings)
    # Exactly at the limit is fine.
    assert (await upload_file(client, auth, "big", b"x" * limit))["size"] == limit


@on_local_and_s3
async def test_file_over_the_quota_is_refused_and_nothing_kept(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    await _set_quota(settings, 100)

    body = await try_upload_file(client, auth, "big", b"x" * 101)

    error = assert_error(body, "QUOTA_EXCEEDED")
    assert "quota" in error["message"]
    await assert_nothing_left(client, auth, settings)
    await upload_file(client, auth, "first", b"x" * 60)
    assert_error(await try_upload_file(client, auth, "second", b"x" * 41), "QUOTA_EXCEEDED")
    assert await used_bytes(client, auth) == 60
    assert await file_rows(settings) == 1
    assert len(leftover_objects(settings)) == 1
    # What is left still fits.
    await upload_file(client, auth, "third", b"x" * 40)
    assert await used_bytes(client, auth) == 100


async def test_duplicate_path_is_a_conflict(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    await upload_file(client, auth, "a/b.txt", b"first")

    body = await try_upload_file(client, auth, "/a/b.txt/", b"second!")

    assert_error(body, "CONFLICT")
    assert await used_bytes(client, auth) == len(b"first")
    [key] = leftover_objects(settings)
    assert read_object(settings, key) == b"first"


async def test_another_users_path_is_not_a_conflict(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    other = bearer((await register(client, "bob@example.com"))["accessToken"])
    await upload_file(client, auth, "same.txt", b"ada")

    assert (await upload_file(client, other, "same.txt", b"bob"))["path"] == "same.txt"


async def test_signed_out_upload_is_refused(client: httpx.AsyncClient, settings: Settings) -> None:
    body = await try_upload_file(client, {}, "a", b"data")

    assert_error(body, "UNAUTHENTICATED")
    assert await file_rows(settings) == 0
    assert leftover_objects(settings) == []


@on_local_and_s3
async def test_concurrent_uploads_never_exceed_the_quota(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    size, fits, extra = 10_000, 3, 4
    await _set_quota(settings, size * fits)
    results: list[dict[str, Any]] = []

    async def one(index: int) -> None:
        data = index.to_bytes(2, "big") * (size // 2)
        results.append(await try_upload_file(client, auth, f"f{index}", data))

    async with anyio.create_task_group() as tasks:
        for index in range(fits + extra):
            tasks.start_soon(one, index)

    succeeded = [body for body in results if "errors" not in body]
    refused = [body for body in results if "errors" in body]
    assert len(succeeded) == fits, results
    for body in refused:
        assert_error(body, "QUOTA_EXCEEDED")
    assert await used_bytes(client, auth) == size * fits
    assert await file_rows(settings) == fits
    assert len(leftover_objects(settings)) == fits


async def _set_quota(settings: Settings, quota_bytes: int) -> None:
    engine = create_engine(settings)
    try:
        await update_user(engine, "ada@example.com", quota_bytes=quota_bytes)
    finally:
        await engine.dispose()


@on_local_and_s3
async def test_concurrent_uploads_to_one_path_keep_one_file(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    size, racers = 5_000, 5
    results: list[dict[str, Any]] = []

    async def one(index: int) -> None:
        data = index.to_bytes(1, "big") * size
        results.append(await try_upload_file(client, auth, "same/path", data))

    async with anyio.create_task_group() as tasks:
        for index in range(racers):
            tasks.start_soon(one, index)

    assert len([body for body in results if "errors" not in body]) == 1, results
    for body in results:
        if "errors" in body:
            assert_error(body, "CONFLICT")
    assert await used_bytes(client, auth) == size
    assert await file_rows(settings) == 1
    assert len(leftover_objects(settings)) == 1


@on_local_and_s3
async def test_an_upload_refused_after_its_first_part_leaves_no_part_behind(
    tmp_path: Path, database_url: str, file_storage_url: str
) -> None:
    """Past S3's part size the bytes go up as a multipart upload, which must be aborted."""
    limit = PART_SIZE + 1024
    settings = make_settings(
        tmp_path, database_url=database_url, storage_url=file_storage_url, max_upload_bytes=limit
    )
    async with serve_app(settings) as client:
        auth = bearer((await register(client))["accessToken"])

        body = await try_upload_file(client, auth, "big", b"x" * (limit + 1))

        assert_error(body, "QUOTA_EXCEEDED")
        await assert_nothing_left(client, auth, settings)
        # Past one part, the whole file arrives whole.
        data = bytes(range(256)) * (limit // 256)
        file = await upload_file(client, auth, "big", data)
        assert file["sha256"] == hashlib.sha256(data).hexdigest()
        [key] = leftover_objects(settings)
        assert read_object(settings, key) == data
