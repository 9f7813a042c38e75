"""One contract for every storage backend: the same tests on memory, local and S3.

S3 is a real S3 HTTP endpoint (moto's server, see ``s3_server`` in
conftest); local storage is a real directory. "Nothing left behind" is
checked where each backend could leave something: temporary files in the
directory, pending multipart uploads in the bucket.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aioboto3
import anyio
import httpx
import pytest

from api.files import RouteLinks
from core.content import content_disposition
from core.files import output_prefix, storage_key
from core.links import LinkSigner
from core.settings import Settings
from storage import (
    AppendInterrupted,
    ObjectNotFound,
    PermanentStorageError,
    Storage,
    StorageError,
    TooLarge,
    open_storage,
)
from storage.local import TEMP_PREFIX, LocalStorage, _in_directory
from storage.memory import MemoryStorage
from storage.s3 import S3Storage, parse_s3_url
from tests.conftest import S3Server, make_settings
from tests.support import _s3_client, leftover_objects
from workers.errors import is_transient

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
KEY = "u/0b4bd1f5-5a59-4d43-8d0c-1e3a3c8b7f00/5d7e4f8a-1c2b-4e3f-9a8b-7c6d5e4f3a2b"
DATA = random.Random(20261123).randbytes(  # noqa: S311 - test bytes, not secrets
    20 * MiB + 12345
)
"""Not a multiple of any chunk or part size, so every boundary is crossed unevenly."""


def opened(settings: Settings) -> Storage:
    """``settings``' storage, opened as the app opens it."""
    return open_storage(settings.storage_url)


@dataclass
class Backend:
    name: str
    storage: Storage
    settings: Settings
    root: Path | None = None
    s3: S3Server | None = None

    async def leftovers(self) -> list[str]:
        """Whatever the backend holds besides finished objects: temp files, pending uploads."""
        if self.root is not None:
            return sorted(str(path) for path in self.root.rglob("*") if path.is_file())
        if self.s3 is not None:
            location = parse_s3_url(self.settings.storage_url)
            async with aioboto3.Session().client(
                "s3", endpoint_url=self.s3.endpoint_url, region_name=self.s3.region
            ) as s3:
                uploads = await s3.list_multipart_uploads(Bucket=location.bucket)
            return [upload["Key"] for upload in uploads.get("Uploads", [])]
        return []


@pytest.fixture(params=["memory", "local", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    root: Path | None = None
    s3: S3Server | None = None
    if request.param == "memory":
        url = "memory://"
    elif request.param == "local":
        root = tmp_path / "storage"
        url = root.as_uri()
    else:
        url = request.getfixturevalue("s3_url")
        s3 = request.getfixturevalue("s3_server")
    settings = make_settings(tmp_path, storage_url=url)
    storage = opened(settings)
    try:
        yield Backend(request.param, storage, settings, root, s3)
    finally:
        await storage.aclose()


async def stream(data: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), chunk):
        yield data[offset : offset + chunk]


async def failing_after(data: bytes, error: BaseException) -> AsyncIterator[bytes]:
    async for chunk in stream(data):
        yield chunk
    raise error


async def read(storage: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in storage.open(key, start, end)])


async def assert_missing(storage: Storage, key: str) -> None:
    with pytest.raises(ObjectNotFound):
        await storage.stat(key)
    with pytest.raises(ObjectNotFound):
        await read(storage, key)


async def test_open_storage_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    kinds = {
        "memory://": MemoryStorage,
        (tmp_path / "files").as_uri(): LocalStorage,
        "s3://depot?endpoint_url=http://127.0.0.1:9&region=eu-west-1": S3Storage,
    }
    for url, kind in kinds.items():
        storage = open_storage(url)
        assert isinstance(storage, kind), url
        await storage.aclose()


@pytest.mark.parametrize("url", ["memory://", "file:///nowhere/depot"])
async def test_storage_that_cannot_presign_says_so(url: str) -> None:
    """Local and memory storage presign nothing: clients go through Depot's routes."""
    storage = open_storage(url)
    no_download = await storage.download_url(
        KEY, filename="a.txt", content_type="text/plain", expires_in=timedelta(minutes=1)
    )
    assert no_download is None
    no_upload = await storage.upload_request(
        KEY, size=1, content_type="text/plain", expires_in=timedelta(minutes=1)
    )
    assert no_upload is None
    await storage.aclose()


def test_storage_errors_say_whether_to_try_again() -> None:
    """Outages are worth another attempt; a missing object or too many bytes never are."""
    assert StorageError("S3 unreachable").transient
    assert not ObjectNotFound(KEY).transient
    assert not TooLarge("more than 1 bytes").transient
    assert issubclass(ObjectNotFound, PermanentStorageError)
    assert issubclass(TooLarge, PermanentStorageError)
    assert issubclass(PermanentStorageError, StorageError)
    # A job attempt asks the error's family, not a list of leaves.
    assert is_transient(StorageError("S3 unreachable"))
    assert not is_transient(ObjectNotFound(KEY))
    assert not is_transient(TooLarge("more than 1 bytes"))


async def test_the_default_is_a_directory_under_var(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, storage_url="")
    storage = opened(settings)
    assert isinstance(storage, LocalStorage)
    await storage.put("u/a/b", stream(b"hello"))
    await storage.aclose()
    assert (tmp_path / "var" / "storage" / "u" / "a" / "b").read_bytes() == b"hello"


async def test_a_large_stream_round_trips_exactly(backend: Backend) -> None:
    assert await backend.storage.put(KEY, stream(DATA)) == len(DATA)
    assert await read(backend.storage, KEY) == DATA
    assert (await backend.storage.stat(KEY)).size == len(DATA)
    assert await backend.leftovers() == backend_files(backend, KEY)


async def test_a_tap_sees_every_byte_stored_in_order(backend: Backend) -> None:
    """What ``Fingerprint.tapped`` relies on: the tap has hashed all of it by the time
    ``put`` returns (local storage taps in its writer thread, blocks in flight)."""
    seen = hashlib.sha256()
    sizes: list[int] = []

    def tap(parts: Sequence[bytes]) -> None:
        for part in parts:
            seen.update(part)
            sizes.append(len(part))

    await backend.storage.put(KEY, stream(DATA, chunk=300_001), tap=tap)
    assert seen.hexdigest() == hashlib.sha256(DATA).hexdigest()
    assert sum(sizes) == len(DATA)
    assert await read(backend.storage, KEY) == DATA


def backend_files(backend: Backend, *keys: str) -> list[str]:
    """What ``leftovers`` reports once ``keys`` are stored: their files, for local storage."""
    if backend.root is None:
        return []
    return sorted(str(backend.root / key) for key in keys)


async def test_big_chunks_and_an_empty_object_round_trip(backend: Backend) -> None:
    await backend.storage.put(KEY, stream(DATA, chunk=9 * MiB + 1))
    assert await read(backend.storage, KEY) == DATA
    await backend.storage.put("u/empty/object", stream(b""))
    assert await read(backend.storage, "u/empty/object") == b""
    assert (await backend.storage.stat("u/empty/object")).size == 0


async def test_ranged_reads(backend: Backend) -> None:
    data = DATA[: 3 * MiB + 7]
    await backend.storage.put(KEY, stream(data))
    assert await read(backend.storage, KEY, 1000) == data[1000:]
    assert await read(backend.storage, KEY, 5, 2 * MiB + 3) == data[5 : 2 * MiB + 3]
    assert await read(backend.storage, KEY, 0, 1) == data[:1]
    assert await read(backend.storage, KEY, len(data) - 1) == data[-1:]
    assert await read(backend.storage, KEY, 10, 10) == b""
    assert await read(backend.storage, KEY, len(data)) == b""
    assert await read(backend.storage, KEY, 100, len(data) + 100) == data[100:]


async def test_stat_describes_the_object(backend: Backend) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    await backend.storage.put(KEY, stream(b"first version"))
    first = await backend.storage.stat(KEY)
    assert first.size == len(b"first version")
    assert first.etag
    assert first.modified_at.tzinfo is not None
    assert before <= first.modified_at <= datetime.now(UTC) + timedelta(seconds=5)

    await backend.storage.put(KEY, stream(b"second, longer version"))
    second = await backend.storage.stat(KEY)
    assert second.size == len(b"second, longer version")
    assert second.etag != first.etag


async def test_copy_is_independent_of_its_source(backend: Backend) -> None:
    target = "u/other/copy"
    await backend.storage.put(KEY, stream(DATA[: 2 * MiB]))
    await backend.storage.copy(KEY, target)
    await backend.storage.put(KEY, stream(b"changed"))
    assert await read(backend.storage, target) == DATA[: 2 * MiB]
    assert await read(backend.storage, KEY) == b"changed"
    with pytest.raises(ObjectNotFound):
        await backend.storage.copy("u/no/such", "u/other/never")
    await assert_missing(backend.storage, "u/other/never")
    assert await backend.leftovers() == backend_files(backend, KEY, target)


async def test_move_gives_the_object_a_new_key(backend: Backend) -> None:
    target = "u/other/moved"
    await backend.storage.put(KEY, stream(DATA[: 2 * MiB]))
    etag = (await backend.storage.stat(KEY)).etag
    await backend.storage.move(KEY, target)
    await assert_missing(backend.storage, KEY)
    assert await read(backend.storage, target) == DATA[: 2 * MiB]
    # The same bytes keep their ETag: how completeUpload knows nothing changed.
    assert (await backend.storage.stat(target)).etag == etag
    with pytest.raises(ObjectNotFound):
        await backend.storage.move(KEY, "u/other/never")
    await assert_missing(backend.storage, "u/other/never")
    assert await backend.leftovers() == backend_files(backend, target)


async def test_delete_twice(backend: Backend) -> None:
    await backend.storage.put(KEY, stream(b"bytes"))
    await backend.storage.delete(KEY)
    await assert_missing(backend.storage, KEY)
    await backend.storage.delete(KEY)
    await backend.storage.delete("u/never/existed")


async def test_missing_keys_are_not_found_even_for_empty_ranges(backend: Backend) -> None:
    await assert_missing(backend.storage, KEY)
    with pytest.raises(ObjectNotFound):
        await read(backend.storage, KEY, 5, 5)


async def test_a_stream_that_fails_midway_leaves_nothing(backend: Backend) -> None:
    with pytest.raises(RuntimeError, match="client went away"):
        await backend.storage.put(
            KEY, failing_after(DATA[: 12 * MiB], RuntimeError("client went away"))
        )
    await assert_missing(backend.storage, KEY)
    assert await backend.leftovers() == []


async def test_a_failed_overwrite_keeps_the_old_object(backend: Backend) -> None:
    await backend.storage.put(KEY, stream(b"old bytes"))
    with pytest.raises(RuntimeError):
        await backend.storage.put(KEY, failing_after(DATA[: 9 * MiB], RuntimeError("boom")))
    assert await read(backend.storage, KEY) == b"old bytes"
    assert await backend.leftovers() == backend_files(backend, KEY)


async def test_max_size(backend: Backend) -> None:
    with pytest.raises(TooLarge):
        await backend.storage.put(KEY, stream(DATA[: 12 * MiB]), max_size=10 * MiB)
    await assert_missing(backend.storage, KEY)
    assert await backend.leftovers() == []
    assert await backend.storage.put(KEY, stream(DATA[:1000]), max_size=1000) == 1000


async def test_cancellation_midway_leaves_nothing(backend: Backend) -> None:
    halfway = anyio.Event()

    async def hanging() -> AsyncIterator[bytes]:
        async for chunk in stream(DATA[: 12 * MiB]):
            yield chunk
        halfway.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(backend.storage.put, KEY, hanging())
        await halfway.wait()
        group.cancel_scope.cancel()
    await assert_missing(backend.storage, KEY)
    assert await backend.leftovers() == []


PREFIX = "u/a/j/b/"
UNDER = ["u/a/j/b/1", "u/a/j/b/2", "u/a/j/b/deeper/3"]
BESIDE = ["u/a/j/bc/1", "u/a/x", "u/a/j/c/1"]
"""Keys that share the prefix's characters (``u/a/j/b`` + ``c``) but not its "directory"."""


async def put_all(storage: Storage, keys: list[str]) -> None:
    for key in keys:
        await storage.put(key, stream(key.encode()))


async def test_delete_prefix_removes_exactly_the_objects_under_it(backend: Backend) -> None:
    await put_all(backend.storage, UNDER + BESIDE)
    assert await backend.storage.delete_prefix(PREFIX) == len(UNDER)
    for key in UNDER:
        await assert_missing(backend.storage, key)
    for key in BESIDE:
        assert await read(backend.storage, key) == key.encode()
    assert await backend.leftovers() == backend_files(backend, *BESIDE)
    assert await backend.storage.delete_prefix(PREFIX) == 0

    # An object whose key is the prefix without its "/" is not under it.
    assert await backend.storage.delete_prefix("u/a/x/") == 0
    assert await read(backend.storage, "u/a/x") == b"u/a/x"
    if backend.root is not None:
        assert not (backend.root / "u/a/j/b").exists()
        assert (backend.root / "u/a/j").is_dir()  # still holds bc/ and c/


async def test_delete_prefix_of_nothing_is_not_an_error(backend: Backend) -> None:
    assert await backend.storage.delete_prefix("u/nobody/j/nothing/") == 0
    await put_all(backend.storage, BESIDE)
    assert await backend.storage.delete_prefix(PREFIX) == 0
    assert await backend.leftovers() == backend_files(backend, *BESIDE)


async def test_delete_prefix_refuses_what_is_not_a_whole_prefix(backend: Backend) -> None:
    await put_all(backend.storage, UNDER)
    for bad in ["", "u/a/j/b", "u/a/j/b/1", "/", "/u/a/", "u//", "u/../", "u/./a/", "u\\a/"]:
        with pytest.raises(ValueError, match="not a storage prefix"):
            await backend.storage.delete_prefix(bad)
    for key in UNDER:
        assert await read(backend.storage, key) == key.encode()


async def test_delete_prefix_takes_a_jobs_outputs_and_nothing_else(backend: Backend) -> None:
    owner, job, other_job = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    outputs = [storage_key(owner, job) for _ in range(3)]
    kept = [storage_key(owner), storage_key(owner, other_job), storage_key(uuid.uuid4(), job)]
    assert all(key.startswith(f"u/{owner.hex}/j/{job.hex}/") for key in outputs)
    assert not kept[0].startswith(f"u/{owner.hex}/j/")
    await put_all(backend.storage, outputs + kept)
    assert await backend.storage.delete_prefix(output_prefix(owner, job)) == 3
    assert await backend.leftovers() == backend_files(backend, *kept)
    for key in kept:
        assert await read(backend.storage, key) == key.encode()


async def test_delete_prefix_removes_the_directories_it_emptied(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    storage = opened(make_settings(tmp_path, storage_url=root.as_uri()))
    await put_all(storage, UNDER + BESIDE)
    for prefix in [PREFIX, "u/a/j/bc/", "u/a/j/c/"]:
        await storage.delete_prefix(prefix)
    assert sorted(path.relative_to(root).as_posix() for path in root.rglob("*")) == [
        "u",
        "u/a",
        "u/a/x",
    ]
    assert await storage.delete_prefix("u/") == 1
    assert list(root.iterdir()) == []  # the root itself stays
    await storage.put("u/a/j/b/again", stream(b"the directories come back"))
    assert await read(storage, "u/a/j/b/again") == b"the directories come back"
    await storage.aclose()


def dead_writers_temp_file(directory: Path) -> Path:
    """What a ``put`` killed mid-write leaves: a temporary file named as ``put`` names them."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
    os.write(fd, b"half an output")
    os.close(fd)
    return Path(name)


async def test_local_delete_prefix_removes_a_dead_writers_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    storage = opened(make_settings(tmp_path, storage_url=root.as_uri()))
    await put_all(storage, ["u/a/j/b/finished", "u/a/j/bc/1"])
    dead = [dead_writers_temp_file(root / "u/a/j/b"), dead_writers_temp_file(root / "u/a/j/b/d")]
    alive = dead_writers_temp_file(root / "u/a/j/bc")
    only_temp = dead_writers_temp_file(root / "u/a/j/e")

    # Temporary files go, but only objects are counted.
    assert await storage.delete_prefix(PREFIX) == 1
    assert await storage.delete_prefix("u/a/j/e/") == 0
    await storage.aclose()
    assert not any(path.exists() for path in [*dead, only_temp])
    assert sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file()) == sorted(
        [Path("u/a/j/bc/1"), alive.relative_to(root)]
    )


async def test_local_delete_prefix_never_follows_links_out_of_storage(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    outside = tmp_path / "outside"
    (outside / "j/b").mkdir(parents=True)
    precious = outside / "j/b/precious"
    precious.write_bytes(b"not Depot's")
    storage = opened(make_settings(tmp_path, storage_url=root.as_uri()))
    await put_all(storage, ["u/a/j/b/1"])
    (root / "u/a/j/b/dir-link").symlink_to(outside, target_is_directory=True)
    (root / "u/a/j/b/file-link").symlink_to(precious)
    (root / "u/evil").symlink_to(outside, target_is_directory=True)

    await storage.delete_prefix(PREFIX)
    assert not (root / "u/a").exists()
    with pytest.raises(StorageError, match="symbolic link"):
        await storage.delete_prefix("u/evil/j/b/")
    await storage.aclose()
    assert precious.read_bytes() == b"not Depot's"


def test_a_writer_makes_its_directory_again_if_delete_prefix_removed_it(tmp_path: Path) -> None:
    """The race between ``put``'s mkdir and its temp file, with a real rmdir in between."""
    directory = tmp_path / "u/a/j/b"
    removals = []

    def create_after_a_concurrent_delete() -> tuple[int, str]:
        if not removals:
            removals.append(directory)
            directory.rmdir()  # what delete_prefix does to a directory it emptied
        return tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)

    fd, name = _in_directory(directory, create_after_a_concurrent_delete)
    os.close(fd)
    assert removals == [directory]
    assert Path(name).parent == directory
    with pytest.raises(FileNotFoundError):  # a missing source is still reported
        _in_directory(directory, lambda: os.replace(tmp_path / "missing", directory / "x"))


async def test_s3_delete_prefix_aborts_a_dead_writers_multipart_uploads(
    s3_url: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, storage_url=s3_url)
    bucket = parse_s3_url(s3_url).bucket
    with _s3_client(settings) as s3:
        for key in ["u/a/j/b/dying", "u/a/j/b/d/dying", "u/a/j/bc/alive"]:
            upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
            s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"part"
            )
    storage = opened(settings)
    try:
        await put_all(storage, ["u/a/j/b/finished"])
        assert await storage.delete_prefix(PREFIX) == 1
    finally:
        await storage.aclose()
    with _s3_client(settings) as s3:
        assert s3.list_multipart_uploads(Bucket=bucket, Prefix=PREFIX).get("Uploads", []) == []
    assert leftover_objects(settings) == ["u/a/j/bc/alive (pending multipart upload)"]


async def test_s3_delete_prefix_pages_and_batches(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More objects than one listing page and one DeleteObjects call hold (2 here, 1000 live)."""
    monkeypatch.setattr("storage.s3.DELETE_BATCH", 2)
    settings = make_settings(tmp_path, storage_url=s3_url)
    under = [f"{PREFIX}{n}" for n in range(7)]
    storage = opened(settings)
    try:
        await put_all(storage, under + BESIDE)
        assert await storage.delete_prefix(PREFIX) == len(under)
    finally:
        await storage.aclose()
    assert leftover_objects(settings) == sorted(BESIDE)


def test_links_to_depot_routes_are_signed_for_one_key(tmp_path: Path) -> None:
    """What local and memory storage cannot presign goes through Depot's routes, whose
    links (``api.files.RouteLinks``) carry the key and what the route needs."""
    settings = make_settings(tmp_path)
    links = LinkSigner(settings.secret)
    route_links = RouteLinks(links, str(settings.public_base_url))
    expires_at = datetime.now(UTC) + timedelta(minutes=5)
    download = route_links.download(
        KEY,
        filename="report.pdf",
        content_type="application/pdf",
        expires_at=expires_at,
        credential="s:00000000-0000-0000-0000-000000000000",
    )
    assert download.startswith("http://localhost:8000/files/download/")
    claims = links.verify("download", download.rsplit("/", 1)[1])
    assert (claims["key"], claims["name"], claims["type"]) == (KEY, "report.pdf", "application/pdf")

    upload = route_links.upload(KEY, size=1234, expires_at=expires_at)
    assert upload.startswith("http://localhost:8000/files/upload/")
    claims = links.verify("upload", upload.rsplit("/", 1)[1])
    assert (claims["key"], claims["size"]) == (KEY, 1234)


async def test_local_storage_refuses_keys_that_leave_its_directory(tmp_path: Path) -> None:
    storage = open_storage((tmp_path / "s").as_uri())
    for key in ["/etc/passwd", "u/../../x", "u//x", "", "u/./x", "u/x/", "..", "u\\..\\x"]:
        with pytest.raises(ValueError, match="not a storage key"):
            await storage.put(key, stream(b"x"))
        with pytest.raises(ValueError, match="not a storage key"):
            await storage.stat(key)
    assert not (tmp_path / "x").exists()


@pytest.fixture
async def s3_storage(s3_url: str, tmp_path: Path) -> AsyncIterator[Storage]:
    storage = opened(make_settings(tmp_path, storage_url=s3_url))
    try:
        yield storage
    finally:
        await storage.aclose()


async def test_s3_download_url_serves_the_bytes_as_a_named_attachment(
    s3_storage: Storage,
) -> None:
    await s3_storage.put(KEY, stream(b"%PDF-1.7 quarterly numbers"))
    name = 'Résumé "final" 2026.pdf'
    url = await s3_storage.download_url(
        KEY, filename=name, content_type="application/pdf", expires_in=timedelta(minutes=5)
    )
    assert url is not None
    assert "X-Amz-Signature" in parse_qs(urlsplit(url).query)
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == b"%PDF-1.7 quarterly numbers"
    assert response.headers["content-type"] == "application/pdf"
    disposition = response.headers["content-disposition"]
    assert disposition == content_disposition(name)
    # Quotes are dropped (they could end the header's own quoting); accents kept in filename*.
    assert disposition.startswith('attachment; filename="Resume final 2026.pdf"; ')
    assert unquote(disposition.partition("filename*=UTF-8''")[2]) == "Résumé final 2026.pdf"


async def test_s3_upload_request_lets_a_client_put_the_bytes(s3_storage: Storage) -> None:
    body = DATA[:300_000]
    ticket = await s3_storage.upload_request(
        KEY, size=len(body), content_type="image/png", expires_in=timedelta(minutes=10)
    )
    assert ticket.method == "PUT"
    assert ticket.headers == {"Content-Type": "image/png", "Content-Length": str(len(body))}
    async with httpx.AsyncClient() as http:
        response = await http.request(
            ticket.method, ticket.url, headers=ticket.headers, content=body
        )
    assert response.status_code == 200, response.text
    assert (await s3_storage.stat(KEY)).size == len(body)
    assert await read(s3_storage, KEY) == body


async def test_s3_presigns_for_the_endpoint_clients_reach(
    s3_server: S3Server, s3_url: str, tmp_path: Path
) -> None:
    """Depot may reach S3 as ``minio:9000`` while clients reach it as ``localhost:9000``."""
    public = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    url = f"{s3_url}&public_endpoint_url={public}"
    storage = opened(make_settings(tmp_path, storage_url=url))
    try:
        await storage.put(KEY, stream(b"through the front door"))
        download = await storage.download_url(
            KEY, filename="a.txt", content_type="text/plain", expires_in=timedelta(minutes=1)
        )
        upload = await storage.upload_request(
            KEY, size=3, content_type="text/plain", expires_in=timedelta(minutes=1)
        )
    finally:
        await storage.aclose()
    assert download is not None
    assert download.startswith(f"{public}/")
    assert upload.url.startswith(f"{public}/")
    async with httpx.AsyncClient() as http:
        response = await http.get(download)
    assert response.content == b"through the front door"


async def test_s3_failures_other_than_not_found_are_storage_errors(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One try each: what the error becomes is the point here, not botocore's
    # retries with backoff (two more, over a second or two).
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    missing_bucket = s3_server.storage_url("no-such-bucket")
    storage = opened(make_settings(tmp_path, storage_url=missing_bucket))
    try:
        with pytest.raises(StorageError) as raised:
            await storage.put(KEY, stream(b"x"))
        assert not isinstance(raised.value, ObjectNotFound)
        assert raised.value.transient
    finally:
        await storage.aclose()

    unreachable = "s3://depot?endpoint_url=http://127.0.0.1:9&region=us-east-1"
    storage = opened(make_settings(tmp_path, storage_url=unreachable))
    try:
        with pytest.raises(StorageError):
            await storage.stat(KEY)
    finally:
        await storage.aclose()


def test_s3_urls_are_parsed_strictly() -> None:
    location = parse_s3_url("s3://depot?endpoint_url=http://minio:9000&region=us-east-1")
    assert (location.bucket, location.endpoint_url, location.region) == (
        "depot",
        "http://minio:9000",
        "us-east-1",
    )
    assert parse_s3_url("s3://depot").endpoint_url is None
    public = parse_s3_url("s3://b?endpoint_url=http://minio:9000&public_endpoint_url=http://h:9000")
    assert public.public_endpoint_url == "http://h:9000"
    for bad in ["s3://", "s3://depot/prefix", "s3://depot?endpoint=http://x", "file:///x"]:
        with pytest.raises(ValueError, match=r"(?i)s3"):
            parse_s3_url(bad)


# -- appended objects (resumable uploads) -------------------------------------------


async def s3_leftover_objects(backend: Backend) -> list[str]:
    """Every object in the bucket (S3 only): staged tails included."""
    if backend.s3 is None:
        return []
    location = parse_s3_url(backend.settings.storage_url)
    async with aioboto3.Session().client(
        "s3", endpoint_url=backend.s3.endpoint_url, region_name=backend.s3.region
    ) as s3:
        listed = await s3.list_objects_v2(Bucket=location.bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


async def test_an_object_appended_in_uneven_pieces_appears_whole_at_the_end(
    backend: Backend,
) -> None:
    storage = backend.storage
    handle = await storage.start_append(KEY)
    offset = 0
    # Pieces smaller than a part, a piece that crosses two part boundaries, a tiny end.
    for size in (1000, 3 * MiB, 17 * MiB, 11345):
        piece = DATA[offset : offset + size]
        offset = await storage.append(
            KEY, handle, offset, stream(piece), max_size=len(DATA) - offset, keep_partial=False
        )
        await assert_missing(storage, KEY)  # nothing visible until finished
    assert offset == len(DATA)
    await storage.finish_append(KEY, handle, offset)
    assert await read(storage, KEY) == DATA
    assert await backend.leftovers() == backend_files(backend, KEY)
    assert await s3_leftover_objects(backend) in ([], [KEY])


async def test_an_interrupted_append_keeps_what_arrived_only_when_asked(backend: Backend) -> None:
    storage = backend.storage
    handle = await storage.start_append(KEY)
    first = await storage.append(
        KEY, handle, 0, stream(DATA[: 2 * MiB]), max_size=len(DATA), keep_partial=False
    )
    # Not kept: the object is as it was, and the next append starts from the same offset.
    with pytest.raises(RuntimeError, match="checksum"):
        await storage.append(
            KEY,
            handle,
            first,
            failing_after(DATA[first : first + 9 * MiB], RuntimeError("checksum")),
            max_size=len(DATA),
            keep_partial=False,
        )
    # Kept: what arrived before the client went away stays, and the append says how much.
    with pytest.raises(AppendInterrupted) as interrupted:
        await storage.append(
            KEY,
            handle,
            first,
            failing_after(DATA[first : first + 7 * MiB], ConnectionError("gone")),
            max_size=len(DATA),
            keep_partial=True,
        )
    kept = interrupted.value.size
    assert isinstance(interrupted.value.__cause__, ConnectionError)
    assert first <= kept <= first + 7 * MiB
    with pytest.raises(TooLarge):
        await storage.append(KEY, handle, kept, stream(DATA[kept:]), max_size=10, keep_partial=True)
    end = await storage.append(
        KEY, handle, kept, stream(DATA[kept:]), max_size=len(DATA), keep_partial=False
    )
    await storage.finish_append(KEY, handle, end)
    assert await read(storage, KEY) == DATA


async def test_an_aborted_append_leaves_nothing(backend: Backend) -> None:
    storage = backend.storage
    handle = await storage.start_append(KEY)
    await storage.append(
        KEY, handle, 0, stream(DATA[: 9 * MiB + 5]), max_size=len(DATA), keep_partial=False
    )
    await storage.abort_append(KEY, handle)
    await storage.abort_append(KEY, handle)  # twice is fine
    await assert_missing(storage, KEY)
    assert await backend.leftovers() == []
    assert await s3_leftover_objects(backend) == []


async def test_an_empty_appended_object(backend: Backend) -> None:
    handle = await backend.storage.start_append(KEY)
    await backend.storage.finish_append(KEY, handle, 0)
    assert await read(backend.storage, KEY) == b""


async def test_a_local_object_is_read_in_place_where_it_lies(tmp_path: Path) -> None:
    # Jobs hand decoders this path instead of a copy (workers.context.JobContext.spool).
    storage = LocalStorage(tmp_path / "files")
    await storage.put(KEY, stream(b"in place"))
    path = storage.local_path(KEY)
    assert path.read_bytes() == b"in place"
    with path.open("rb") as reader:
        await storage.put(KEY, stream(b"replaced"))  # a new file renamed over the key
        await storage.delete(KEY)
        assert reader.read() == b"in place", "an open reader keeps the file it opened"
    with pytest.raises(ValueError, match="not a storage key"):
        storage.local_path("../outside")


async def test_a_local_object_under_a_block_is_stored_in_one_trip_to_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its temporary file is made, written, flushed and renamed by one call in a thread
    (a thumbnail's put was two: the file made, then the rest); one that fails there
    leaves neither the object nor its temporary file."""
    storage = LocalStorage(tmp_path / "files")
    trips: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(function: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(function.__name__)
        return await run_sync(function, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    assert await storage.put(KEY, stream(b"small object", 5)) == 12
    assert len(trips) == 1
    assert await read(storage, KEY) == b"small object"

    def failing(parts: Sequence[bytes]) -> None:
        raise OSError("the tap failed")

    with pytest.raises(OSError, match="the tap failed"):
        await storage.put("u/other", stream(b"never kept"), tap=failing)
    assert [path.name for path in (tmp_path / "files").rglob("*") if path.is_file()] == [
        Path(KEY).name
    ]


async def test_a_cancelled_local_put_waits_for_the_write_in_flight(tmp_path: Path) -> None:
    """The block a worker thread is writing when the put is cancelled is waited for
    before the temporary file's descriptor is closed and the file removed."""
    storage = LocalStorage(tmp_path / "files")
    in_tap = threading.Event()
    release = threading.Event()

    def tap(parts: Sequence[bytes]) -> None:
        in_tap.set()
        release.wait(10)

    ended = anyio.Event()

    async def put() -> None:
        try:
            await storage.put(KEY, stream(DATA[: 4 * MiB]), tap=tap)
        finally:
            ended.set()

    async with anyio.create_task_group() as group:
        group.start_soon(put)
        await anyio.to_thread.run_sync(in_tap.wait, 10)
        group.cancel_scope.cancel()
        with anyio.move_on_after(0.3, shield=True):
            await ended.wait()
        # Still waiting for the write, its temporary file still there.
        assert not ended.is_set()
        assert [path.name[:5] for path in (tmp_path / "files").rglob("*") if path.is_file()] == [
            TEMP_PREFIX
        ]
        release.set()
    assert ended.is_set()
    await assert_missing(storage, KEY)
    assert [path for path in (tmp_path / "files").rglob("*") if path.is_file()] == []
