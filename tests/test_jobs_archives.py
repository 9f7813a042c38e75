"""The ``archive`` and ``extract`` jobs through GraphQL, on archives made here with zipfile/tarfile.

Files live in a local directory (S3 too for the tests marked ``on_local_and_s3``),
so a failed job can be checked to leave no object behind. Every bad archive
must fail with a message that names the problem, create no file and leave
the owner's usage as it was.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from core.settings import Settings
from tests.conftest import make_settings, on_local_and_s3, serve_app
from tests.support import (
    assert_error,
    bearer,
    follow,
    graphql,
    leftover_objects,
    output_nodes,
    register,
    run_job,
    try_start_job,
    update_user,
    upload_file,
    used_bytes,
)

pytestmark = pytest.mark.anyio

FILES = "query { files(first: 100) { edges { node { id path size sha256 producedBy { id } } } } }"
DOWNLOAD = "query Download($id: ID!) { file(id: $id) { downloadUrl } }"
MiB = 1024 * 1024


@pytest.fixture
def settings(tmp_path: Path, database_url: str, file_storage_url: str) -> Settings:
    """Local storage, or S3 for the tests marked ``on_local_and_s3``."""
    return make_settings(tmp_path, database_url=database_url, storage_url=file_storage_url)


# -- archives made at test time --------------------------------------------------------


def zip_of(
    entries: dict[str, bytes], *, method: int = zipfile.ZIP_DEFLATED, folders: tuple[str, ...] = ()
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for folder in folders:
            archive.mkdir(folder)
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_with_symlink() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ok.txt", b"fine")
        link = zipfile.ZipInfo("passwd")
        link.create_system = 3  # Unix, so the mode bits mean what they say
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, b"/etc/passwd")
    return buffer.getvalue()


def tar_of(
    entries: dict[str, bytes],
    *,
    mode: str = "w",
    folders: tuple[str, ...] = (),
    links: dict[str, tuple[bytes, str]] | None = None,
) -> bytes:
    """A tar (``mode`` "w:gz" etc. to compress it); ``links`` maps names to (type, target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            archive.addfile(info)
    return buffer.getvalue()


def corrupt_crc(archive: bytes, data: bytes) -> bytes:
    """``archive`` (a stored zip holding ``data``) with one byte of ``data`` changed."""
    at = archive.index(data) + len(data) // 2
    return archive[:at] + bytes([archive[at] ^ 0xFF]) + archive[at + 1 :]


def with_declared_size(archive: bytes, size: int) -> bytes:
    """``archive`` (a zip of one entry) with its central directory declaring ``size`` bytes."""
    at = archive.index(b"PK\x01\x02") + 24  # the uncompressed size field
    return archive[:at] + size.to_bytes(4, "little") + archive[at + 4 :]


# -- helpers ---------------------------------------------------------------------------


async def _user(client: httpx.AsyncClient, email: str = "ada@example.com") -> dict[str, str]:
    return bearer((await register(client, email=email))["accessToken"])


async def _files(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    body = await graphql(client, FILES, headers=headers)
    assert "errors" not in body, body
    return {edge["node"]["path"]: edge["node"] for edge in body["data"]["files"]["edges"]}


async def _download(client: httpx.AsyncClient, headers: dict[str, str], file_id: str) -> bytes:
    body = await graphql(client, DOWNLOAD, {"id": file_id}, headers=headers)
    assert "errors" not in body, body
    response = await follow(client, "GET", body["data"]["file"]["downloadUrl"])
    assert response.status_code == 200, response.text
    return response.content


async def _extract(
    client: httpx.AsyncClient, headers: dict[str, str], data: bytes, *, name: str = "upload"
) -> dict[str, Any]:
    """Upload ``data`` under ``name`` (no telling suffix) and extract it into ``out``."""
    upload = await upload_file(client, headers, name, data)
    return await run_job(client, headers, {"extract": {"fileId": upload["id"], "path": "out"}})


async def _assert_refused(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    settings: Settings,
    data: bytes,
    *fragments: str,
) -> None:
    """Extracting ``data`` fails with every fragment in its error, leaving nothing behind."""
    upload = await upload_file(client, headers, "upload", data)
    usage = await used_bytes(client, headers)
    objects = leftover_objects(settings)
    job = await run_job(client, headers, {"extract": {"fileId": upload["id"], "path": "out"}})
    assert job["status"] == "FAILED", job
    assert job["attempts"] == 1, job  # bad input is never tried again
    for fragment in fragments:
        assert fragment in job["error"], job["error"]
    assert output_nodes(job) == []
    assert list(await _files(client, headers)) == ["upload"]
    assert await used_bytes(client, headers) == usage
    assert leftover_objects(settings) == objects


# -- archive ---------------------------------------------------------------------------


@on_local_and_s3
async def test_archive_streams_a_zip_of_the_files(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = await _user(client)
    contents = {
        "notes/readme.txt": b"Depot " * 20_000,
        "photos/cat.png": b"\x89PNG\r\n\x1a\n" + os.urandom(300_000),
        "empty.bin": b"",
    }
    uploads = [await upload_file(client, headers, path, data) for path, data in contents.items()]
    usage = await used_bytes(client, headers)
    job = await run_job(
        client,
        headers,
        {"archive": {"fileIds": [upload["id"] for upload in uploads], "path": "backups/all"}},
    )
    assert job["status"] == "SUCCEEDED", job
    [output] = output_nodes(job)
    assert output["path"] == "backups/all.zip"
    assert output["contentType"] == "application/zip"
    assert output["metadata"] == {"entries": 3}
    data = await _download(client, headers, output["id"])
    assert output["size"] == len(data)
    assert output["sha256"] == hashlib.sha256(data).hexdigest()
    assert await used_bytes(client, headers) == usage + len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [info.filename for info in infos] == ["readme.txt", "cat.png", "empty.bin"]
        for info, payload in zip(infos, contents.values(), strict=True):
            assert archive.read(info) == payload
            # Sizes and CRC after the bytes: the zip was written without seeking back.
            assert info.flag_bits & 0x08
        methods = {info.filename: info.compress_type for info in infos}
    assert methods["readme.txt"] == zipfile.ZIP_DEFLATED
    assert methods["cat.png"] == zipfile.ZIP_STORED
    produced = await _files(client, headers)
    assert produced["backups/all.zip"]["producedBy"] == {"id": job["id"]}


async def test_archive_renames_inputs_that_share_a_name(client: httpx.AsyncClient) -> None:
    headers = await _user(client)
    first = await upload_file(client, headers, "2024/report.txt", b"first")
    second = await upload_file(client, headers, "2025/Report.txt", b"second")
    third = await upload_file(client, headers, "misc/report (2).txt", b"third")
    job = await run_job(
        client,
        headers,
        {"archive": {"fileIds": [first["id"], second["id"], third["id"]], "path": "r.ZIP"}},
    )
    assert job["status"] == "SUCCEEDED", job
    [output] = output_nodes(job)
    assert output["path"] == "r.ZIP"
    with zipfile.ZipFile(io.BytesIO(await _download(client, headers, output["id"]))) as archive:
        assert {name: archive.read(name) for name in archive.namelist()} == {
            "report.txt": b"first",
            "Report (3).txt": b"second",
            "report (2).txt": b"third",
        }


async def test_archive_parameters_are_checked(client: httpx.AsyncClient) -> None:
    headers = await _user(client)
    upload = await upload_file(client, headers, "a.txt", b"a")
    none = await try_start_job(client, headers, {"archive": {"fileIds": [], "path": "a.zip"}})
    assert_error(none, "BAD_USER_INPUT", field="fileIds")
    twice = [upload["id"], upload["id"]]
    repeated = await try_start_job(client, headers, {"archive": {"fileIds": twice, "path": "z"}})
    assert_error(repeated, "BAD_USER_INPUT", field="fileIds")
    escaping = await try_start_job(
        client, headers, {"archive": {"fileIds": [upload["id"]], "path": "../a.zip"}}
    )
    assert_error(escaping, "BAD_USER_INPUT", field="path")
    bad_folder = await try_start_job(
        client, headers, {"extract": {"fileId": upload["id"], "path": "a//b"}}
    )
    assert_error(bad_folder, "BAD_USER_INPUT", field="path")


async def test_an_archive_over_quota_fails_and_leaves_nothing(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    headers = await _user(client)
    uploads = [await upload_file(client, headers, f"{n}.bin", os.urandom(100_000)) for n in "ab"]
    usage = await used_bytes(client, headers)
    objects = leftover_objects(settings)
    await update_user(engine, "ada@example.com", quota_bytes=usage + 50_000)
    ids = [upload["id"] for upload in uploads]
    job = await run_job(client, headers, {"archive": {"fileIds": ids, "path": "both.zip"}})
    assert job["status"] == "FAILED", job
    assert "quota" in job["error"], job["error"]
    assert output_nodes(job) == []
    assert sorted(await _files(client, headers)) == ["a.bin", "b.bin"]
    assert await used_bytes(client, headers) == usage
    assert leftover_objects(settings) == objects


async def test_an_archive_over_quota_stops_as_it_writes_not_at_its_end(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    headers = await _user(client)
    # 12 MiB that deflate cannot shrink, and 1 MiB of quota free: the zip's bytes are
    # held to the quota each 8 MiB (QUOTA_CHECK_BYTES), not only once all are stored.
    uploads = [
        await upload_file(client, headers, f"{n}.bin", os.urandom(4 * 1024 * 1024)) for n in "abc"
    ]
    usage = await used_bytes(client, headers)
    objects = leftover_objects(settings)
    await update_user(engine, "ada@example.com", quota_bytes=usage + 1024 * 1024)
    ids = [upload["id"] for upload in uploads]
    job = await run_job(client, headers, {"archive": {"fileIds": ids, "path": "all.zip"}})
    assert job["status"] == "FAILED", job
    assert f"{1024 * 1024} bytes are free, and it had made" in job["error"], job["error"]
    assert output_nodes(job) == []
    assert await used_bytes(client, headers) == usage
    assert leftover_objects(settings) == objects


# -- extract ---------------------------------------------------------------------------

EXTRACTED = {
    "docs/readme.txt": b"read me\n" * 1000,
    "docs/deep/data.bin": os.urandom(200_000),
    "top.txt": b"",
}


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: zip_of(EXTRACTED, folders=("docs",)), id="zip"),
        pytest.param(lambda: zip_of(EXTRACTED, method=zipfile.ZIP_STORED), id="zip-stored"),
        pytest.param(lambda: tar_of(EXTRACTED, folders=("docs",)), id="tar"),
        pytest.param(lambda: tar_of(EXTRACTED, mode="w:gz"), id="tar.gz"),
        pytest.param(lambda: tar_of(EXTRACTED, mode="w:xz"), id="tar.xz"),
    ],
)
async def test_extract_unpacks_each_file_under_the_path(
    client: httpx.AsyncClient, make: Any
) -> None:
    headers = await _user(client)
    usage = await used_bytes(client, headers)
    data = make()
    job = await _extract(client, headers, data)
    assert job["status"] == "SUCCEEDED", job
    expected = {f"out/{path}": payload for path, payload in EXTRACTED.items()}
    outputs = {node["path"]: node for node in output_nodes(job)}
    assert sorted(outputs) == sorted(expected)
    for path, payload in expected.items():
        assert outputs[path]["size"] == len(payload)
        assert outputs[path]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert (
        await _download(client, headers, outputs["out/docs/readme.txt"]["id"])
        == (EXTRACTED["docs/readme.txt"])
    )
    files = await _files(client, headers)
    assert files["out/top.txt"]["producedBy"] == {"id": job["id"]}
    unpacked = sum(len(payload) for payload in EXTRACTED.values())
    assert await used_bytes(client, headers) == usage + len(data) + unpacked


@on_local_and_s3
async def test_extract_on_each_storage(client: httpx.AsyncClient) -> None:
    headers = await _user(client)
    job = await _extract(client, headers, tar_of({"a/b.txt": b"bee"}, mode="w:bz2"))
    assert job["status"] == "SUCCEEDED", job
    [output] = output_nodes(job)
    assert output["path"] == "out/a/b.txt"
    assert await _download(client, headers, output["id"]) == b"bee"


async def test_extract_refuses_to_overwrite_a_file(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = await _user(client)
    await upload_file(client, headers, "out/b.txt", b"mine")
    upload = await upload_file(client, headers, "upload", zip_of({"a.txt": b"a", "b.txt": b"b"}))
    usage = await used_bytes(client, headers)
    job = await run_job(client, headers, {"extract": {"fileId": upload["id"], "path": "out"}})
    assert job["status"] == "FAILED", job
    assert "A file already exists at 'out/b.txt'" in job["error"]
    assert sorted(await _files(client, headers)) == ["out/b.txt", "upload"]
    assert await used_bytes(client, headers) == usage


# -- bad archives at the default limits ------------------------------------------------

BOMB_BYTES = 20 * MiB  # of zeros: deflates about 1000:1


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        pytest.param(
            lambda: zip_of({"small.txt": b"hi", "zeros.bin": bytes(BOMB_BYTES)}),
            ("'zeros.bin'", "DEPOT_ARCHIVE_MAX_RATIO", "zip bomb"),
            id="zip-bomb",
        ),
        pytest.param(
            lambda: tar_of({"zeros.bin": bytes(BOMB_BYTES)}, mode="w:gz"),
            ("DEPOT_ARCHIVE_MAX_RATIO", "bomb"),
            id="tar.gz-bomb",
        ),
        pytest.param(
            lambda: zip_of({"fine.txt": b"ok", "../evil.txt": b"evil"}),
            ("'../evil.txt'", "`..`"),
            id="zip-slip-dotdot",
        ),
        pytest.param(
            lambda: zip_of({"/etc/passwd": b"root"}), ("'/etc/passwd'", "absolute"), id="zip-abs"
        ),
        pytest.param(
            lambda: zip_of({"C:/boot.ini": b"x"}), ("'C:/boot.ini'", "drive letter"), id="drive"
        ),
        pytest.param(lambda: zip_of({"a\\..\\b.txt": b"x"}), ("backslash",), id="zip-backslash"),
        pytest.param(
            lambda: tar_of({"../../evil.txt": b"evil"}), ("'../../evil.txt'", "`..`"), id="tar-slip"
        ),
        pytest.param(
            lambda: tar_of({"/etc/cron.d/x": b"x"}), ("'/etc/cron.d/x'", "absolute"), id="tar-abs"
        ),
        pytest.param(zip_with_symlink, ("'passwd'", "symbolic link"), id="zip-symlink"),
        pytest.param(
            lambda: tar_of({"a.txt": b"a"}, links={"passwd": (tarfile.SYMTYPE, "/etc/passwd")}),
            ("'passwd'", "symbolic link"),
            id="tar-symlink",
        ),
        pytest.param(
            lambda: tar_of({"a.txt": b"a"}, links={"b.txt": (tarfile.LNKTYPE, "/etc/shadow")}),
            ("'b.txt'", "hard link"),
            id="tar-hardlink",
        ),
        pytest.param(
            lambda: tar_of({}, links={"fifo": (tarfile.FIFOTYPE, "")}),
            ("'fifo'", "FIFO"),
            id="tar-fifo",
        ),
        pytest.param(
            lambda: zip_of({"a/b.txt": b"1", "a//b.txt": b"2"}),
            ("'a//b.txt'", "second entry at 'a/b.txt'"),
            id="duplicate",
        ),
        pytest.param(
            lambda: tar_of({"a.bin": os.urandom(100_000)}, mode="w:gz")[:50_000],
            ("is not a readable tar archive",),
            id="tar.gz-cut",
        ),
        pytest.param(
            lambda: tar_of({"a.bin": os.urandom(100_000)})[:50_000],
            ("is not a readable tar archive", "'a.bin'"),
            id="tar-cut",
        ),
        pytest.param(
            lambda: corrupt_crc(
                zip_of({"a.bin": b"A" * 5000}, method=zipfile.ZIP_STORED), b"A" * 5000
            ),
            ("is not a readable zip archive", "'a.bin'", "CRC"),
            id="zip-crc",
        ),
        pytest.param(
            lambda: with_declared_size(
                zip_of({"a.bin": b"a" * 5000}, method=zipfile.ZIP_STORED), 6000
            ),
            ("'a.bin'", "ends after 5000 of 6000 bytes"),
            id="zip-short-entry",
        ),
        pytest.param(
            lambda: b"just some text, not an archive\n" * 10,
            ("not a readable zip or tar archive",),
            id="not-an-archive",
        ),
    ],
)
async def test_a_bad_archive_fails_and_writes_nothing(
    client: httpx.AsyncClient, settings: Settings, make: Any, fragments: tuple[str, ...]
) -> None:
    headers = await _user(client)
    await _assert_refused(client, headers, settings, make(), *fragments)


async def test_a_zip_cut_in_half_is_not_readable(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = await _user(client)
    whole = zip_of({"a.bin": os.urandom(50_000), "b.bin": os.urandom(50_000)})
    await _assert_refused(
        client, headers, settings, whole[: len(whole) // 2], "is not a readable zip archive"
    )


async def test_a_failure_midway_removes_the_files_already_extracted(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # The index is fine, so "good.txt" is written before the bad CRC of "bad.bin" shows.
    archive = zip_of({"good.txt": b"good", "bad.bin": b"B" * 5000}, method=zipfile.ZIP_STORED)
    headers = await _user(client)
    await _assert_refused(
        client, headers, settings, corrupt_crc(archive, b"B" * 5000), "'bad.bin'", "CRC"
    )


async def test_an_archive_larger_than_the_free_quota_is_refused_early(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    headers = await _user(client)
    data = zip_of({"a.bin": os.urandom(60_000), "b.bin": os.urandom(60_000)})
    await update_user(engine, "ada@example.com", quota_bytes=len(data) + 100_000)
    await _assert_refused(client, headers, settings, data, "storage quota")


# -- bad archives at lowered limits ----------------------------------------------------


@pytest.fixture
async def strict_client(
    tmp_path: Path, database_url: str, file_storage_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    """An app with small archive limits: 3 entries, 1 MiB unpacked, 5:1 compression."""
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        storage_url=file_storage_url,
        archive_max_entries=3,
        archive_max_bytes=3 * MiB,
        archive_max_ratio=5,
    )
    async with serve_app(settings) as client:
        yield client, settings


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        pytest.param(
            lambda: zip_of({"z.bin": b"\x00\x01" * MiB}),
            ("'z.bin'", "DEPOT_ARCHIVE_MAX_RATIO"),
            id="ratio",
        ),
        pytest.param(
            lambda: tar_of({"z.bin": b"\x00\x01" * MiB}, mode="w:gz"),
            ("DEPOT_ARCHIVE_MAX_RATIO",),
            id="tar.gz-ratio",
        ),
        pytest.param(
            lambda: zip_of({"a.bin": os.urandom(2 * MiB), "b.bin": os.urandom(2 * MiB)}),
            ("DEPOT_ARCHIVE_MAX_BYTES",),
            id="bytes",
        ),
        pytest.param(
            lambda: zip_of({f"{n}.txt": b"n" for n in range(4)}),
            ("4 entries", "DEPOT_ARCHIVE_MAX_ENTRIES"),
            id="entries",
        ),
        pytest.param(
            lambda: tar_of({f"{n}.txt": b"n" for n in range(4)}),
            ("more than 3 entries", "DEPOT_ARCHIVE_MAX_ENTRIES"),
            id="tar-entries",
        ),
    ],
)
async def test_the_archive_limits_come_from_the_settings(
    strict_client: tuple[httpx.AsyncClient, Settings], make: Any, fragments: tuple[str, ...]
) -> None:
    client, settings = strict_client
    headers = await _user(client)
    await _assert_refused(client, headers, settings, make(), *fragments)


async def test_an_archive_within_the_lowered_limits_is_extracted(
    strict_client: tuple[httpx.AsyncClient, Settings],
) -> None:
    client, _ = strict_client
    headers = await _user(client)
    # Highly compressible but under the 1 MiB below which no ratio is held against it.
    job = await _extract(client, headers, zip_of({"a.txt": bytes(500_000), "b.txt": b"b"}))
    assert job["status"] == "SUCCEEDED", job
    assert sorted(node["path"] for node in output_nodes(job)) == ["out/a.txt", "out/b.txt"]
