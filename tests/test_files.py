"""Reading and changing files through GraphQL: lookups, listings, move, copy, trash, purge.

Files are stored in a local directory; the tests whose outcome depends on the
backend (copy, purge, a copy that fails in storage) run on S3 too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import anyio
import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from core.eventlog import Entry, MemoryEventLog
from core.models import Role
from core.settings import Settings
from schema.ids import encode_id
from tests.conftest import make_settings, on_local_and_s3
from tests.relay import all_pages, nodes_of
from tests.support import (
    PASSWORD,
    assert_error,
    bearer,
    delete_object,
    follow,
    graphql,
    leftover_objects,
    only_error,
    read_object,
    register,
    sign_in,
    update_user,
    upload_file,
)

pytestmark = pytest.mark.anyio

FILE_FIELDS = "id path name size contentType sha256 trashedAt"
FILE = f"query File($id: ID!) {{ file(id: $id) {{ {FILE_FIELDS} owner {{ email }} }} }}"
NODE = "query Node($id: ID!) { node(id: $id) { id ... on File { path } } }"
FILES = (
    "query Files($first: Int, $after: String, $filter: FileFilter, $orderBy: FileOrder) {"
    " files(first: $first, after: $after, filter: $filter, orderBy: $orderBy) {"
    "  totalCount pageInfo { hasNextPage endCursor }"
    "  edges { cursor node { id path name size contentType } } } }"
)
USAGE = "query Usage { me { usage { usedBytes quotaBytes fileCount } } }"
MOVE = (
    "mutation Move($id: ID!, $path: String!)"
    f" {{ moveFile(id: $id, path: $path) {{ {FILE_FIELDS} }} }}"
)
COPY = (
    "mutation Copy($id: ID!, $path: String!)"
    f" {{ copyFile(id: $id, path: $path) {{ {FILE_FIELDS} }} }}"
)
DELETE = f"mutation Delete($id: ID!) {{ deleteFile(id: $id) {{ {FILE_FIELDS} }} }}"
RESTORE = f"mutation Restore($id: ID!) {{ restoreFile(id: $id) {{ {FILE_FIELDS} }} }}"
PURGE = "mutation Purge($id: ID!) { purgeFile(id: $id) }"

# The first bytes of a PNG: enough for the content type to be sniffed as image/png.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"


async def _user(client: httpx.AsyncClient, email: str = "ada@example.com") -> dict[str, str]:
    auth = await register(client, email=email)
    return bearer(auth["accessToken"])


async def _files(
    client: httpx.AsyncClient, headers: dict[str, str], **variables: Any
) -> dict[str, Any]:
    body = await graphql(client, FILES, variables, headers=headers)
    assert "errors" not in body, body
    connection: dict[str, Any] = body["data"]["files"]
    return connection


def _paths(connection: dict[str, Any]) -> list[str]:
    return [edge["node"]["path"] for edge in connection["edges"]]


async def _usage(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, int]:
    body = await graphql(client, USAGE, headers=headers)
    assert "errors" not in body, body
    usage: dict[str, int] = body["data"]["me"]["usage"]
    return usage


async def _ok(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], headers: dict[str, str]
) -> Any:
    body = await graphql(client, query, variables, headers=headers)
    assert "errors" not in body, body
    return next(iter(body["data"].values()))


def _made_up_id() -> str:
    return encode_id("File", uuid.uuid4())


@pytest.fixture
def settings(tmp_path: Path, database_url: str, file_storage_url: str) -> Settings:
    """Local storage, or S3 for the tests marked ``on_local_and_s3``."""
    return make_settings(tmp_path, database_url=database_url, storage_url=file_storage_url)


# -- finding one file ----------------------------------------------------------------


async def test_a_file_is_found_by_its_owner_only(client: httpx.AsyncClient) -> None:
    ada = await _user(client)
    bob = await _user(client, "bob@example.com")
    uploaded = await upload_file(client, ada, "docs/a.txt", b"hello")

    found = await _ok(client, FILE, {"id": uploaded["id"]}, ada)
    assert found["path"] == "docs/a.txt"
    assert found["sha256"] == uploaded["sha256"]
    assert found["owner"] == {"email": "ada@example.com"}
    assert found["trashedAt"] is None

    foreign = await graphql(client, FILE, {"id": uploaded["id"]}, headers=bob)
    made_up = await graphql(client, FILE, {"id": _made_up_id()}, headers=bob)
    assert_error(foreign, "NOT_FOUND")
    # Nothing tells another user's file from one that never existed.
    assert foreign == made_up


async def test_node_resolves_a_file_for_its_owner_only(client: httpx.AsyncClient) -> None:
    ada = await _user(client)
    bob = await _user(client, "bob@example.com")
    uploaded = await upload_file(client, ada, "a.txt", b"hello")

    assert await _ok(client, NODE, {"id": uploaded["id"]}, ada) == {
        "id": uploaded["id"],
        "path": "a.txt",
    }
    assert await _ok(client, NODE, {"id": uploaded["id"]}, bob) is None
    assert await _ok(client, NODE, {"id": _made_up_id()}, ada) is None


async def test_files_need_a_signed_in_user(client: httpx.AsyncClient) -> None:
    assert_error(await graphql(client, FILES), "UNAUTHENTICATED")
    assert_error(await graphql(client, FILE, {"id": _made_up_id()}), "UNAUTHENTICATED")
    assert_error(await graphql(client, PURGE, {"id": _made_up_id()}), "UNAUTHENTICATED")


async def test_an_id_of_another_type_is_bad_user_input(client: httpx.AsyncClient) -> None:
    ada = await _user(client)
    body = await graphql(client, FILE, {"id": encode_id("User", uuid.uuid4())}, headers=ada)
    assert_error(body, "BAD_USER_INPUT", field="id")


# -- listing -------------------------------------------------------------------------


async def test_no_files_is_an_empty_connection(client: httpx.AsyncClient) -> None:
    ada = await _user(client)
    assert await _files(client, ada) == {
        "totalCount": 0,
        "pageInfo": {"hasNextPage": False, "endCursor": None},
        "edges": [],
    }
    assert await _usage(client, ada) == {
        "usedBytes": 0,
        "quotaBytes": (await _usage(client, ada))["quotaBytes"],
        "fileCount": 0,
    }


# A stable id for the random one: xdist workers must collect the same test names.
@pytest.mark.parametrize(
    "cursor", ["garbage", "", "W10", pytest.param(encode_id("File", uuid.uuid4()), id="file-id")]
)
async def test_a_cursor_that_is_no_cursor_is_bad_user_input(
    client: httpx.AsyncClient, cursor: str
) -> None:
    ada = await _user(client)
    body = await graphql(client, FILES, {"after": cursor}, headers=ada)
    assert_error(body, "BAD_USER_INPUT", field="after")


async def test_a_cursor_from_another_ordering_is_refused(client: httpx.AsyncClient) -> None:
    ada = await _user(client)
    for index in range(2):
        await upload_file(client, ada, f"f{index}", b"x" * (index + 1))
    page = await _files(client, ada, first=1)
    cursor = page["pageInfo"]["endCursor"]
    assert cursor is not None
    for order in (
        {"field": "PATH"},
        {"field": "SIZE"},
        {"field": "CREATED_AT", "direction": "DESC"},
    ):
        body = await graphql(client, FILES, {"after": cursor, "orderBy": order}, headers=ada)
        assert_error(body, "BAD_USER_INPUT", field="after")
    # The ordering it came from takes it.
    assert _paths(await _files(client, ada, after=cursor, orderBy={"field": "CREATED_AT"})) == [
        "f1"
    ]


async def test_pages_cover_every_file_once_in_each_order(client: httpx.AsyncClient) -> None:
    ada = await _user(client)
    # Uploaded out of path order, with repeated sizes so ties must be broken by id.
    uploads = [("f3", 2), ("f0", 1), ("f5", 3), ("f1", 2), ("f6", 1), ("f2", 3), ("f4", 2)]
    for path, size in uploads:
        await upload_file(client, ada, path, bytes([65 + len(path)]) * size + path.encode())
    size_of = {path: size + len(path) for path, size in uploads}

    for field in ("PATH", "CREATED_AT", "SIZE"):
        for direction in ("ASC", "DESC"):
            pages = await all_pages(
                client,
                FILES,
                "files",
                first=2,
                headers=ada,
                variables={"orderBy": {"field": field, "direction": direction}},
            )
            assert len(pages) == 4, (field, direction)
            nodes = nodes_of(pages)
            paths = [node["path"] for node in nodes]
            assert sorted(paths) == sorted(size_of), (field, direction)
            descending = direction == "DESC"
            if field == "PATH":
                assert paths == sorted(paths, reverse=descending)
            elif field == "CREATED_AT":
                in_upload_order = [path for path, _ in uploads]
                assert paths == (in_upload_order[::-1] if descending else in_upload_order)
            else:
                sizes = [node["size"] for node in nodes]
                assert sizes == sorted(sizes, reverse=descending)
                assert sizes == [size_of[path] for path in paths]


async def test_filters_match_literally_and_count(client: httpx.AsyncClient) -> None:
    ada = await _user(client)
    for path in (
        "a/b",
        "a/b/c.txt",
        "a/bc",
        "ab/x",
        "docs/100%_done.txt",
        "docs/100xxdone.txt",
        "docs/Report.TXT",
    ):
        await upload_file(client, ada, path, path.encode())
    await upload_file(client, ada, "img/photo.png", PNG)

    async def matching(**filter: object) -> list[str]:
        connection = await _files(client, ada, filter=filter, orderBy={"field": "PATH"})
        assert connection["totalCount"] == len(connection["edges"])
        return _paths(connection)

    assert await matching(pathPrefix="a/b") == ["a/b", "a/b/c.txt"]
    assert await matching(pathPrefix="/a/b/") == ["a/b", "a/b/c.txt"]
    assert await matching(pathPrefix="a") == ["a/b", "a/b/c.txt", "a/bc"]
    assert await matching(pathPrefix="a_") == []
    assert await matching(pathPrefix="a%") == []
    assert await matching(nameContains="%_") == ["docs/100%_done.txt"]
    assert await matching(nameContains="_") == ["docs/100%_done.txt"]
    assert await matching(nameContains="0%") == ["docs/100%_done.txt"]
    assert await matching(nameContains="report.t") == ["docs/Report.TXT"]
    assert await matching(contentType="image/*") == ["img/photo.png"]
    assert await matching(contentType="image/png") == ["img/photo.png"]
    assert await matching(contentType="image/jpeg") == []
    assert len(await matching(contentType="text/*")) == 7
    assert await matching(pathPrefix="docs", nameContains="done") == [
        "docs/100%_done.txt",
        "docs/100xxdone.txt",
    ]
    # The total counts every match, not just the page.
    page = await _files(client, ada, first=1, filter={"pathPrefix": "docs"})
    assert (page["totalCount"], len(page["edges"])) == (3, 1)


@pytest.mark.parametrize(
    ("filter", "field"),
    [
        ({"contentType": "image"}, "filter.contentType"),
        ({"contentType": "*/*"}, "filter.contentType"),
        ({"pathPrefix": "a/../b"}, "filter.pathPrefix"),
        # Longer than any name: SQLite would fail on the pattern ("too complex").
        ({"nameContains": "%_" * 25_000}, "filter.nameContains"),
    ],
    ids=["family-only", "any-family", "dotdot", "50000-chars"],
)
async def test_a_bad_filter_is_bad_user_input(
    client: httpx.AsyncClient, filter: dict[str, str], field: str
) -> None:
    ada = await _user(client)
    body = await graphql(client, FILES, {"filter": filter}, headers=ada)
    assert_error(body, "BAD_USER_INPUT", field=field)


# -- changes -------------------------------------------------------------------------


async def test_move_renames_unless_the_path_is_taken(client: httpx.AsyncClient) -> None:
    ada = await _user(client)
    first = await upload_file(client, ada, "a.txt", b"one")
    await upload_file(client, ada, "b.txt", b"two")

    moved = await _ok(client, MOVE, {"id": first["id"], "path": "/docs/c.txt"}, ada)
    assert (moved["id"], moved["path"], moved["name"]) == (first["id"], "docs/c.txt", "c.txt")
    assert _paths(await _files(client, ada, orderBy={"field": "PATH"})) == [
        "b.txt",
        "docs/c.txt",
    ]

    taken = await graphql(client, MOVE, {"id": first["id"], "path": "b.txt"}, headers=ada)
    assert_error(taken, "CONFLICT")
    escape = await graphql(client, MOVE, {"id": first["id"], "path": "docs/../x"}, headers=ada)
    assert_error(escape, "BAD_USER_INPUT", field="path")
    assert (await _ok(client, FILE, {"id": first["id"]}, ada))["path"] == "docs/c.txt"
    # Moving to where it already is changes nothing.
    assert (await _ok(client, MOVE, {"id": first["id"], "path": "docs/c.txt"}, ada))[
        "path"
    ] == "docs/c.txt"


async def test_racing_moves_to_one_path_keep_one_file_there(client: httpx.AsyncClient) -> None:
    ada = await _user(client)
    racers = [await upload_file(client, ada, f"racer-{n}.txt", b"x") for n in range(5)]
    answers: list[dict[str, Any]] = []

    async def move(file: dict[str, Any]) -> None:
        variables = {"id": file["id"], "path": "prize"}
        answers.append(await graphql(client, MOVE, variables, headers=ada))

    async with anyio.create_task_group() as tasks:
        for file in racers:
            tasks.start_soon(move, file)

    winners = [body for body in answers if "errors" not in body]
    assert len(winners) == 1, answers
    for body in answers:
        if "errors" in body:
            assert_error(body, "CONFLICT")
    paths = _paths(await _files(client, ada, orderBy={"field": "PATH"}))
    assert paths.count("prize") == 1
    assert len(paths) == len(racers)


@on_local_and_s3
async def test_copy_is_a_new_file_that_counts_against_the_quota(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    ada = await _user(client)
    original = await upload_file(client, ada, "a.txt", b"0123456789")
    before = await _usage(client, ada)

    copied = await _ok(client, COPY, {"id": original["id"], "path": "b.txt"}, ada)
    assert copied["id"] != original["id"]
    assert (copied["path"], copied["size"], copied["sha256"]) == (
        "b.txt",
        10,
        original["sha256"],
    )
    after = await _usage(client, ada)
    assert after["usedBytes"] == before["usedBytes"] + 10
    assert after["fileCount"] == before["fileCount"] + 1
    assert len(leftover_objects(settings)) == 2

    # The copy has its own bytes: purging the original leaves it whole.
    await _ok(client, PURGE, {"id": original["id"]}, ada)
    assert (await _ok(client, FILE, {"id": copied["id"]}, ada))["sha256"] == original["sha256"]
    [key] = leftover_objects(settings)
    assert read_object(settings, key) == b"0123456789"

    taken = await graphql(client, COPY, {"id": copied["id"], "path": "b.txt"}, headers=ada)
    assert_error(taken, "CONFLICT")

    usage = await _usage(client, ada)
    await update_user(engine, "ada@example.com", quota_bytes=usage["usedBytes"] + 9)
    too_big = await graphql(client, COPY, {"id": copied["id"], "path": "c.txt"}, headers=ada)
    assert_error(too_big, "QUOTA_EXCEEDED")
    assert await _usage(client, ada) == {**usage, "quotaBytes": usage["usedBytes"] + 9}
    assert _paths(await _files(client, ada)) == ["b.txt"]

    assert leftover_objects(settings) == [key], "a refused copy stores nothing"

    await update_user(engine, "ada@example.com", quota_bytes=usage["usedBytes"] + 10)
    await _ok(client, COPY, {"id": copied["id"], "path": "c.txt"}, ada)
    assert (await _usage(client, ada))["usedBytes"] == usage["usedBytes"] + 10
    assert len(leftover_objects(settings)) == 2


@on_local_and_s3
async def test_a_failed_copy_gives_its_bytes_back(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    ada = await _user(client)
    original = await upload_file(client, ada, "a.txt", b"0123456789")
    usage = await _usage(client, ada)
    # The bytes vanish behind Depot's back, so storage cannot copy them.
    [key] = leftover_objects(settings)
    delete_object(settings, key)

    failed = await graphql(client, COPY, {"id": original["id"], "path": "b.txt"}, headers=ada)
    assert_error(failed, "INTERNAL_SERVER_ERROR", requestId=ANY)
    assert await _usage(client, ada) == usage
    assert _paths(await _files(client, ada)) == ["a.txt"]
    assert leftover_objects(settings) == []


async def test_deleted_files_go_to_the_trash_and_come_back(client: httpx.AsyncClient) -> None:
    ada = await _user(client)
    uploaded = await upload_file(client, ada, "a.txt", b"first")
    usage = await _usage(client, ada)

    trashed = await _ok(client, DELETE, {"id": uploaded["id"]}, ada)
    assert trashed["trashedAt"] is not None
    assert (await _files(client, ada))["totalCount"] == 0
    assert _paths(await _files(client, ada, filter={"trashed": True})) == ["a.txt"]
    # Trash still holds its bytes, but is no live file.
    after = await _usage(client, ada)
    assert (after["usedBytes"], after["fileCount"]) == (usage["usedBytes"], 0)
    # Still found by id, so it can be restored.
    assert (await _ok(client, FILE, {"id": uploaded["id"]}, ada))["trashedAt"] is not None
    # Moving or copying a trashed file is refused until it is restored.
    moved = await graphql(client, MOVE, {"id": uploaded["id"], "path": "b.txt"}, headers=ada)
    assert_error(moved, "CONFLICT")

    # Its path is free again...
    replacement = await upload_file(client, ada, "a.txt", b"second")
    # ...so it cannot come back there while the new file has it.
    taken = await graphql(client, RESTORE, {"id": uploaded["id"]}, headers=ada)
    assert_error(taken, "CONFLICT")
    assert _paths(await _files(client, ada, filter={"trashed": True})) == ["a.txt"]

    await _ok(client, MOVE, {"id": replacement["id"], "path": "b.txt"}, ada)
    restored = await _ok(client, RESTORE, {"id": uploaded["id"]}, ada)
    assert (restored["path"], restored["trashedAt"]) == ("a.txt", None)
    assert _paths(await _files(client, ada, orderBy={"field": "PATH"})) == ["a.txt", "b.txt"]
    assert (await _files(client, ada, filter={"trashed": True}))["totalCount"] == 0


@on_local_and_s3
async def test_purge_frees_the_bytes_for_good(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    ada = await _user(client)
    bob = await _user(client, "bob@example.com")
    live = await upload_file(client, ada, "live.txt", b"12345")
    binned = await upload_file(client, ada, "binned.txt", b"1234567")
    bobs = await upload_file(client, bob, "bob.txt", b"bob")
    await _ok(client, DELETE, {"id": binned["id"]}, ada)
    assert await _usage(client, ada) == {
        **(await _usage(client, ada)),
        "usedBytes": 12,
        "fileCount": 1,
    }

    assert await _ok(client, PURGE, {"id": binned["id"]}, ada) == binned["id"]
    assert (await _usage(client, ada))["usedBytes"] == 5
    assert (await _files(client, ada, filter={"trashed": True}))["totalCount"] == 0
    assert_error(await graphql(client, FILE, {"id": binned["id"]}, headers=ada), "NOT_FOUND")
    again = await graphql(client, PURGE, {"id": binned["id"]}, headers=ada)
    assert_error(again, "NOT_FOUND")

    assert await _ok(client, PURGE, {"id": live["id"]}, ada) == live["id"]
    assert await _usage(client, ada) == {**(await _usage(client, ada)), "usedBytes": 0}
    assert (await _usage(client, ada))["fileCount"] == 0

    foreign = await graphql(client, PURGE, {"id": bobs["id"]}, headers=ada)
    assert_error(foreign, "NOT_FOUND")
    assert (await _ok(client, FILE, {"id": bobs["id"]}, bob))["path"] == "bob.txt"
    assert (await _usage(client, bob))["usedBytes"] == 3
    # Only Bob's object is left in storage.
    [key] = leftover_objects(settings)
    assert read_object(settings, key) == b"bob"


async def test_a_change_stands_when_the_bus_fails_after_it(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada = await _user(client)
    binned = await upload_file(client, ada, "binned.txt", b"1234567")
    gone = await upload_file(client, ada, "gone.txt", b"12345")

    async def unreachable(*_args: Any, **_kwargs: Any) -> Entry:
        raise RedisConnectionError("the bus is down")

    # On the class: it reaches the app's log, built inside its lifespan.
    monkeypatch.setattr(MemoryEventLog, "append", unreachable)
    with capture_logs() as logs:
        trashed = await _ok(client, DELETE, {"id": binned["id"]}, ada)
        purged = await _ok(client, PURGE, {"id": gone["id"]}, ada)

    # Both changes committed; only their news was lost, and said so once each.
    assert trashed["trashedAt"] is not None
    assert purged == gone["id"]
    assert _paths(await _files(client, ada, filter={"trashed": True})) == ["binned.txt"]
    assert (await _usage(client, ada))["usedBytes"] == 7
    lost = [log for log in logs if log["event"] == "event not announced"]
    assert [(log["log_level"], log["file_id"]) for log in lost] == [
        ("warning", ANY),
        ("warning", ANY),
    ]


# -- download links live only as long as the file and the credential -----------------

DOWNLOAD = "query Download($id: ID!) { file(id: $id) { downloadUrl } }"
GONE = {"error": "This link has expired; ask for a new one."}


async def _link(client: httpx.AsyncClient, headers: dict[str, str], file_id: str) -> str:
    url: str = (await _ok(client, DOWNLOAD, {"id": file_id}, headers))["downloadUrl"]
    return url


async def _serves(client: httpx.AsyncClient, url: str, data: bytes) -> bool:
    """Whether ``url`` serves ``data`` (through S3's redirect when on S3)."""
    response = await follow(client, "GET", url)
    return response.status_code == 200 and response.content == data


async def _assert_gone(client: httpx.AsyncClient, url: str) -> None:
    """410 with the body of any other refusal, from Depot itself: no redirect to S3."""
    response = await client.get(url)
    assert response.status_code == 410, response.headers
    assert response.json() == GONE
    assert "location" not in response.headers


@on_local_and_s3
async def test_a_download_link_dies_in_the_trash_and_lives_again_on_restore(
    client: httpx.AsyncClient,
) -> None:
    ada = await _user(client)
    file = await upload_file(client, ada, "a.txt", b"bytes")
    url = await _link(client, ada, file["id"])
    assert await _serves(client, url, b"bytes")

    await _ok(client, DELETE, {"id": file["id"]}, ada)
    await _assert_gone(client, url)
    await _ok(client, RESTORE, {"id": file["id"]}, ada)
    assert await _serves(client, url, b"bytes"), "not expired, so restored is served again"

    await _ok(client, PURGE, {"id": file["id"]}, ada)
    await _assert_gone(client, url)


@on_local_and_s3
async def test_a_download_link_dies_with_its_owners_account(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    auth = await register(client)
    ada = bearer(auth["accessToken"])
    file = await upload_file(client, ada, "a.txt", b"bytes")
    url = await _link(client, ada, file["id"])
    admin = await _user(client, "admin@example.com")
    await update_user(engine, "admin@example.com", role=Role.ADMIN)

    await _ok(
        client,
        "mutation Off($id: ID!) { setUserActive(id: $id, active: false) { id } }",
        {"id": auth["user"]["id"]},
        admin,
    )
    await _assert_gone(client, url)


@on_local_and_s3
async def test_a_download_link_dies_with_the_session_that_asked_for_it(
    client: httpx.AsyncClient,
) -> None:
    ada = await _user(client)
    laptop = bearer((await sign_in(client))["accessToken"])
    file = await upload_file(client, ada, "a.txt", b"bytes")
    own, laptops = await _link(client, ada, file["id"]), await _link(client, laptop, file["id"])
    assert await _serves(client, laptops, b"bytes")

    await _ok(
        client,
        "mutation ($c: String!, $n: String!)"
        " { changePassword(currentPassword: $c, newPassword: $n) }",
        {"c": PASSWORD, "n": "another long passphrase"},
        ada,
    )
    await _assert_gone(client, laptops)
    assert await _serves(client, own, b"bytes"), "the session that changed it goes on"

    await _ok(client, "mutation { logoutEverywhere }", {}, ada)
    await _assert_gone(client, own)


@on_local_and_s3
async def test_a_download_link_dies_with_the_personal_token_that_asked_for_it(
    client: httpx.AsyncClient,
) -> None:
    ada = await _user(client)
    file = await upload_file(client, ada, "a.txt", b"bytes")
    created = await _ok(
        client,
        'mutation { createAccessToken(name: "script") { token accessToken { id } } }',
        {},
        ada,
    )
    url = await _link(client, bearer(created["token"]), file["id"])
    assert await _serves(client, url, b"bytes")

    await _ok(
        client,
        "mutation Revoke($id: ID!) { revokeAccessToken(id: $id) { id } }",
        {"id": created["accessToken"]["id"]},
        ada,
    )
    await _assert_gone(client, url)


@pytest.mark.parametrize(
    ("mutation", "extra"),
    [
        (MOVE, {"path": "x.txt"}),
        (COPY, {"path": "x.txt"}),
        (DELETE, {}),
        (RESTORE, {}),
        (PURGE, {}),
    ],
    ids=["move", "copy", "delete", "restore", "purge"],
)
async def test_another_users_file_is_not_found_like_a_made_up_one(
    client: httpx.AsyncClient, mutation: str, extra: dict[str, str]
) -> None:
    ada = await _user(client)
    bob = await _user(client, "bob@example.com")
    uploaded = await upload_file(client, ada, "a.txt", b"ada's")
    if mutation is RESTORE:
        await _ok(client, DELETE, {"id": uploaded["id"]}, ada)

    foreign = await graphql(client, mutation, {"id": uploaded["id"], **extra}, headers=bob)
    made_up = await graphql(client, mutation, {"id": _made_up_id(), **extra}, headers=bob)
    assert only_error(foreign)["extensions"] == {"code": "NOT_FOUND"}
    assert foreign == made_up
    found = await _ok(client, FILE, {"id": uploaded["id"]}, ada)
    assert found["path"] == "a.txt"
    assert (await _usage(client, bob))["fileCount"] == 0


async def test_user_files_are_for_their_owner_only(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ada = await _user(client)
    bob = await _user(client, "bob@example.com")
    await update_user(engine, "ada@example.com", role=Role.ADMIN)
    await upload_file(client, bob, "bob.txt", b"bob")
    query = "query UserFiles($id: ID!) { node(id: $id) { ... on User { files { totalCount } } } }"
    me = await graphql(client, "query Me { me { id } }", headers=bob)
    bob_id = me["data"]["me"]["id"]

    assert await _ok(client, query, {"id": bob_id}, bob) == {"files": {"totalCount": 1}}
    # An admin sees the account, not its files.
    assert_error(await graphql(client, query, {"id": bob_id}, headers=ada), "FORBIDDEN")


# -- dataloaders ---------------------------------------------------------------------


@contextmanager
def counting_statements(settings: Settings) -> Iterator[list[str]]:
    """Every SQL statement sent to ``settings``' database while the block runs."""
    database = make_url(settings.database_url).database
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if conn.engine.url.database == database:
            statements.append(statement)

    # On the Engine class: it reaches the app's engine, built inside its lifespan.
    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", count)


OWNERS_OF_FILES = (
    "query Owners { files(first: 50) { edges { node { owner { email usage { fileCount } } } } } }"
)
OWNERS_OF_MY_FILES = (
    "query MyOwners { me { files(first: 50) { edges { node { path owner { email } } } } } }"
)


async def test_statements_do_not_grow_with_the_rows_returned(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    ada = await _user(client)
    await upload_file(client, ada, "f00", b"0")

    async def statements_for(query: str, expected_rows: int) -> int:
        with counting_statements(settings) as statements:
            body = await graphql(client, query, headers=ada)
        assert "errors" not in body, body
        connection = body["data"].get("files") or body["data"]["me"]["files"]
        assert len(connection["edges"]) == expected_rows
        return len(statements)

    one = await statements_for(OWNERS_OF_FILES, 1)
    one_via_me = await statements_for(OWNERS_OF_MY_FILES, 1)
    for index in range(1, 50):
        await upload_file(client, ada, f"f{index:02}", b"0")
    assert await statements_for(OWNERS_OF_FILES, 50) == one
    assert await statements_for(OWNERS_OF_MY_FILES, 50) == one_via_me
    assert one > 0
