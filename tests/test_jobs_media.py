"""Thumbnails and conversions of what is not a plain web image: HEIC and AVIF photos,
PDF pages and video frames, through GraphQL.

Every file is made here: HEIC with pillow-heif, AVIF with Pillow, PDFs with
Pillow's PDF writer (one page per colour), videos with PyAV (H.264 in MP4, a
black first second, then colours). Outputs are downloaded through their
``downloadUrl`` and opened with Pillow.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from core.settings import Settings
from tests.conftest import make_settings, serve_app
from tests.media import BLUE, GREEN, RED, avif, heic, nested_forms_pdf, pdf, png_claiming, video
from tests.support import (
    USAGE,
    assert_error,
    bearer,
    follow,
    graphql,
    leftover_objects,
    output_nodes,
    register,
    run_job,
    start_job,
    try_start_job,
    upload_file,
    wait_for_job,
)
from workers.decoders import CHILD_NAME, SERVER_NAME
from workers.scratch import scratch_directory

pytestmark = pytest.mark.anyio

FILE = "query File($id: ID!) { file(id: $id) { path contentType downloadUrl } }"
META = "query M($id: ID!) { file(id: $id) { metadata } }"
IMAGE_URL = "query V($id: ID!) { file(id: $id) { imageUrl(width: 64, fit: CONTAIN, format: PNG) } }"


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test changes (``@pytest.mark.parametrize("overrides", [...])``)."""
    return {}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, overrides: dict[str, Any]) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_url,
        storage_url=(tmp_path / "files").as_uri(),
        **overrides,
    )


async def sign_up(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await register(client))["accessToken"])


async def picture(client: httpx.AsyncClient, headers: dict[str, str], file_id: str) -> Image.Image:
    body = await graphql(client, FILE, {"id": file_id}, headers=headers)
    response = await follow(client, "GET", body["data"]["file"]["downloadUrl"])
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def near(pixel: Any, colour: tuple[int, ...], tolerance: int = 48) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


def centre(image: Image.Image) -> Any:
    return image.convert("RGB").getpixel((image.width // 2, image.height // 2))


# -- photos ---------------------------------------------------------------------------


async def test_a_heic_photo_gets_jpeg_thumbnails(client: httpx.AsyncClient) -> None:
    headers = await sign_up(client)
    source = await upload_file(client, headers, "IMG_0001.HEIC", heic((400, 300), RED))
    assert source["contentType"] in ("image/heic", "image/heif"), source
    job = await run_job(client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [100]}})
    assert job["status"] == "SUCCEEDED", job
    [output] = output_nodes(job)
    assert (output["path"], output["contentType"]) == ("IMG_0001@100.jpg", "image/jpeg")
    assert output["metadata"] == {"width": 100, "height": 75}
    image = await picture(client, headers, output["id"])
    assert (image.format, image.size) == ("JPEG", (100, 75))
    assert near(centre(image), RED)


async def test_avif_in_and_out(client: httpx.AsyncClient) -> None:
    headers = await sign_up(client)
    source = await upload_file(client, headers, "a/sky.avif", avif((64, 32), BLUE))
    assert source["contentType"] == "image/avif", source
    thumbs = await run_job(client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [16]}})
    assert thumbs["status"] == "SUCCEEDED", thumbs
    [thumb] = output_nodes(thumbs)
    assert (thumb["path"], thumb["contentType"]) == ("a/sky@16.avif", "image/avif")
    assert near(centre(await picture(client, headers, thumb["id"])), BLUE)

    photo = await upload_file(client, headers, "b/leaf.heic", heic((40, 40), GREEN))
    job = await run_job(
        client, headers, {"convert": {"fileId": photo["id"], "format": "AVIF", "quality": 70}}
    )
    assert job["status"] == "SUCCEEDED", job
    [converted] = output_nodes(job)
    assert (converted["path"], converted["contentType"]) == ("b/leaf.avif", "image/avif")
    image = await picture(client, headers, converted["id"])
    assert (image.format, image.size) == ("AVIF", (40, 40))
    assert near(centre(image), GREEN)


# -- PDFs -------------------------------------------------------------------------------


async def test_a_pdf_page_becomes_a_thumbnail(client: httpx.AsyncClient) -> None:
    headers = await sign_up(client)
    source = await upload_file(client, headers, "docs/report.pdf", pdf(RED, BLUE, GREEN))
    assert source["contentType"] == "application/pdf"
    first = await run_job(client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [200]}})
    assert first["status"] == "SUCCEEDED", first
    [output] = output_nodes(first)
    assert (output["path"], output["contentType"]) == ("docs/report@200.jpg", "image/jpeg")
    # A 300x400 pt page, longest side 200.
    assert output["metadata"] == {"width": 150, "height": 200}
    assert near(centre(await picture(client, headers, output["id"])), RED)

    second = await run_job(
        client,
        headers,
        {"thumbnails": {"fileId": source["id"], "sizes": [64], "page": 2, "format": "PNG"}},
    )
    assert second["status"] == "SUCCEEDED", second
    [page_two] = output_nodes(second)
    assert near(centre(await picture(client, headers, page_two["id"])), BLUE)


async def test_a_missing_page_or_a_broken_pdf_fails_the_job(client: httpx.AsyncClient) -> None:
    headers = await sign_up(client)
    source = await upload_file(client, headers, "one.pdf", pdf(RED))
    job = await run_job(
        client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [64], "page": 3}}
    )
    assert job["status"] == "FAILED", job
    assert "has 1 page(s); there is no page 3" in job["error"]
    # PDFium rebuilds a cross-reference table that points at nonsense: the page is there.
    repaired = await upload_file(client, headers, "repaired.pdf", broken_xref_pdf(repairable=True))
    job = await run_job(client, headers, {"thumbnails": {"fileId": repaired["id"], "sizes": [32]}})
    assert job["status"] == "SUCCEEDED", job
    assert near(centre(await picture(client, headers, output_nodes(job)[0]["id"])), RED)
    broken = await upload_file(client, headers, "broken.pdf", pdf(RED)[:200])
    job = await run_job(client, headers, {"thumbnails": {"fileId": broken["id"], "sizes": [64]}})
    assert job["status"] == "FAILED", job
    assert "not a PDF Depot can read" in job["error"]
    assert job["outputs"]["totalCount"] == 0
    body = await try_start_job(
        client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [64], "page": 0}}
    )
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "page"}


# -- videos -------------------------------------------------------------------------------


async def test_a_video_poster_avoids_the_black_first_frame(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    headers = await sign_up(client)
    # 10 s: black for 1 s, so a tenth of the way in (1.0 s) is the first red frame.
    data = video(tmp_path / "clip.mp4", seconds=10)
    source = await upload_file(client, headers, "clips/holiday.mp4", data)
    assert source["contentType"] == "video/mp4"
    job = await run_job(client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [80]}})
    assert job["status"] == "SUCCEEDED", job
    [poster] = output_nodes(job)
    assert (poster["path"], poster["contentType"]) == ("clips/holiday@80.jpg", "image/jpeg")
    assert poster["metadata"] == {"width": 80, "height": 60}
    assert near(centre(await picture(client, headers, poster["id"])), RED)

    at = await run_job(
        client,
        headers,
        {"thumbnails": {"fileId": source["id"], "sizes": [40], "atSeconds": 2.5, "format": "PNG"}},
    )
    assert at["status"] == "SUCCEEDED", at
    [frame] = output_nodes(at)
    assert near(centre(await picture(client, headers, frame["id"])), GREEN)

    late = await run_job(
        client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [40], "atSeconds": 60}}
    )
    assert late["status"] == "FAILED", late
    assert "there is nothing at 60" in late["error"]


# -- hostile media ----------------------------------------------------------------------


def broken_xref_pdf(*, repairable: bool = False) -> bytes:
    """A PDF whose cross-reference table points at nonsense offsets; unless ``repairable``,
    its objects are mangled too, so that PDFium cannot rebuild the table by scanning."""
    data = pdf(RED, BLUE)
    start = data.rindex(b"startxref")
    body = data[:start] if repairable else data[:start].replace(b" obj", b" ojb")
    return body + b"startxref\n999999999\n%%EOF\n"


def bad_heic_header() -> bytes:
    """A HEIC's ftyp box followed by garbage where its meta box should be."""
    data = heic((32, 32), RED)
    return data[:32] + bytes(range(256)) * 4


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated.mp4", "not a video Depot can read"),
        ("broken-xref.pdf", "not a PDF Depot can read"),
        ("bad-header.heic", "not an image Depot can read"),
        # Its probe learns nothing (Pillow refuses to open it), so the decoder refuses it.
        ("huge.png", "too large to decode safely"),
    ],
)
async def test_hostile_media_fails_the_job_and_leaves_nothing(
    client: httpx.AsyncClient, tmp_path: Path, settings: Settings, name: str, reason: str
) -> None:
    headers = await sign_up(client)
    data = {
        "truncated.mp4": lambda: video(tmp_path / "t.mp4", seconds=3)[:400],
        "broken-xref.pdf": broken_xref_pdf,
        "bad-header.heic": bad_heic_header,
        "huge.png": lambda: png_claiming(100_000, 100_000),
    }[name]()
    source = await upload_file(client, headers, name, data)
    before = await graphql(client, USAGE, headers=headers)
    job = await run_job(client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [64]}})
    assert job["status"] == "FAILED", job
    assert job["attempts"] == 1, "bad input is never retried"
    assert job["outputs"]["totalCount"] == 0
    assert f"{name!r}" in job["error"], job
    assert reason in job["error"], job
    assert await graphql(client, USAGE, headers=headers) == before, "usage unchanged"
    assert len(leftover_objects(settings)) == 1, "only the source is stored"


@pytest.mark.parametrize(
    "overrides",
    [{"media_picture_seconds": 1, "variant_render_seconds": 1, "media_max_pdf_pages": 2}],
)
async def test_a_runaway_decoder_is_cut_off_and_its_worker_goes_on(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = await sign_up(client)
    # A few KB that PDFium would spend minutes rendering: the decoder process is killed.
    # Its probe never loads the page (that alone took minutes): the upload is quick.
    with anyio.fail_after(60):
        bomb = await upload_file(client, headers, "laughs.pdf", nested_forms_pdf(levels=7))
    meta = await graphql(client, META, {"id": bomb["id"]}, headers=headers)
    assert meta["data"]["file"]["metadata"]["pageCount"] == 1, meta
    before = await graphql(client, USAGE, headers=headers)
    job = await run_job(client, headers, {"thumbnails": {"fileId": bomb["id"], "sizes": [64]}})
    assert job["status"] == "FAILED", job
    assert job["outputs"]["totalCount"] == 0
    assert "Reading 'laughs.pdf' took longer than 1 s" in job["error"], job
    assert "DEPOT_MEDIA_PICTURE_SECONDS" in job["error"], job
    # A variant of it is cut off the same way, and the API answers.
    url = (await graphql(client, IMAGE_URL, {"id": bomb["id"]}, headers=headers))["data"]["file"]
    response = await follow(client, "GET", url["imageUrl"])
    assert response.status_code == 415, response.text
    assert "DEPOT_VARIANT_RENDER_SECONDS" in response.json()["error"], response.text
    assert await graphql(client, USAGE, headers=headers) == before, "usage unchanged"
    # The probe counted this one's pages: refused at start, no job queued.
    thick = await upload_file(client, headers, "thick.pdf", pdf(RED, GREEN, BLUE))
    body = await try_start_job(
        client, headers, {"thumbnails": {"fileId": thick["id"], "sizes": [64]}}
    )
    error = assert_error(body, "BAD_USER_INPUT", field="fileId")
    assert "'thick.pdf' has 3 pages" in error["message"], error
    assert "DEPOT_MEDIA_MAX_PDF_PAGES" in error["message"], error
    # The same worker (this app's own threads) runs the next job.
    fine = await upload_file(client, headers, "fine.pdf", pdf(GREEN))
    job = await run_job(client, headers, {"thumbnails": {"fileId": fine["id"], "sizes": [64]}})
    assert job["status"] == "SUCCEEDED", job
    assert near(centre(await picture(client, headers, output_nodes(job)[0]["id"])), GREEN)


# -- a decoder that dies, one that wants too much memory ---------------------------------


def _processes() -> dict[int, tuple[str, int, int]]:
    """Every process: pid → (name, parent pid, CPU ticks so far), from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # gone meanwhile
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            found[int(entry)] = (name, int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


async def busy_decoder() -> int:
    """The pid of this process's decoder child that is burning CPU (its task's)."""
    with anyio.fail_after(30):
        while True:
            before = _processes()
            await anyio.sleep(0.2)
            after = _processes()
            # This process's server: another test process on the machine has its own.
            servers = {
                pid
                for pid, (name, ppid, _) in after.items()
                if name == SERVER_NAME and ppid == os.getpid()
            }
            for pid, (name, ppid, ticks) in after.items():
                # 20 ms of CPU in 200 ms: on a task (an idle child uses none).
                if (
                    name == CHILD_NAME
                    and ppid in servers
                    and ticks - before.get(pid, ("", 0, ticks))[2] >= 2
                ):
                    return pid


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the decoder in /proc")
async def test_a_decoder_killed_by_a_signal_fails_only_its_job(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = await sign_up(client)
    # Minutes of PDFium's work: the decoder is still on it when it is killed.
    bomb = await upload_file(client, headers, "laughs.pdf", nested_forms_pdf(levels=7))
    before = await graphql(client, USAGE, headers=headers)
    job = await start_job(client, headers, {"thumbnails": {"fileId": bomb["id"], "sizes": [64]}})
    os.kill(await busy_decoder(), signal.SIGKILL)
    job = await wait_for_job(client, headers, job["id"])
    assert job["status"] == "FAILED", job
    assert job["attempts"] == 1, "a file that kills its decoder is not tried again"
    assert "The decoder reading 'laughs.pdf' stopped (killed by SIGKILL)" in job["error"], job
    assert job["outputs"]["totalCount"] == 0
    assert await graphql(client, USAGE, headers=headers) == before, "usage unchanged"
    assert len(leftover_objects(settings)) == 1, "only the source is stored"
    # The same worker (this app's threads) and decoder server take the next job.
    fine = await upload_file(client, headers, "fine.pdf", pdf(GREEN))
    job = await run_job(client, headers, {"thumbnails": {"fileId": fine["id"], "sizes": [64]}})
    assert job["status"] == "SUCCEEDED", job
    assert near(centre(await picture(client, headers, output_nodes(job)[0]["id"])), GREEN)


def _decoder_faults() -> int:
    """The minor page faults of this process's decoder children so far, from /proc."""
    processes = _processes()
    servers = {
        pid
        for pid, (name, ppid, _) in processes.items()
        if name == SERVER_NAME and ppid == os.getpid()
    }
    faults = 0
    for pid, (name, ppid, _) in processes.items():
        if name == CHILD_NAME and ppid in servers:
            with contextlib.suppress(OSError):  # gone meanwhile
                stat = Path(f"/proc/{pid}/stat").read_text()
                faults += int(stat[stat.rindex(")") + 2 :].split()[7])
    return faults


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts faults in /proc")
async def test_a_warm_decoder_keeps_the_memory_of_its_last_frame(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A reused child decodes the next 1080p frame in the memory the last one freed: with
    glibc's defaults it handed it back and faulted ~4,500 pages in again (18 MB) each time."""
    headers = await sign_up(client)
    data = video(tmp_path / "clip.mp4", seconds=2, size=(1920, 1080))
    source = await upload_file(client, headers, "clip.mp4", data)
    thumbnails = {"fileId": source["id"], "sizes": [64], "format": "PNG"}
    faults = []
    for index in range(3):  # the first warms a child; each one after runs in it
        before = _decoder_faults()
        job = await run_job(client, headers, {"thumbnails": {**thumbnails, "sizes": [64 + index]}})
        assert job["status"] == "SUCCEEDED", job
        faults.append(_decoder_faults() - before)
    assert faults[-1] < 1000, faults


ABANDON = """
import os, signal, sys
from workers.scratch import scratch_directory
with scratch_directory("thumbnails") as scratch:
    (scratch / "input").write_bytes(b"x" * 4096)
    print(scratch, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


async def test_a_starting_worker_removes_what_killed_workers_left_in_tmp(
    client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # this process's $TMPDIR
    # A process SIGKILLed in the middle of a job's work: its directory stays.
    killed = await anyio.run_process(
        [sys.executable, "-c", ABANDON], env={**os.environ, "TMPDIR": str(tmp)}, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    abandoned = Path(killed.stdout.decode().strip())
    with scratch_directory("input") as live:  # a live process's, however old
        long_ago = time.time() - 3600
        for directory in (abandoned, live):
            os.utime(directory, (long_ago, long_ago))
        assert await anyio.Path(abandoned).is_dir()
        headers = await sign_up(client)
        source = await upload_file(client, headers, "red.png", png((32, 32), RED))
        # The app's worker threads start with its first job, and clean up first.
        job = await run_job(client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [8]}})
        assert job["status"] == "SUCCEEDED", job
        assert not await anyio.Path(abandoned).exists(), "the dead process's directory is gone"
        assert sorted(tmp.iterdir()) == [live], "the live one stays; the job left none"
    assert list(tmp.iterdir()) == []


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("overrides", [{"media_memory_limit_mb": 16}])
async def test_a_decoder_past_its_memory_limit_fails_its_job(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = await sign_up(client)
    # 3000 x 3000: a legitimate photo size, 36 MB decoded, a few KB as a PNG.
    source = await upload_file(client, headers, "large.png", png((3000, 3000), RED))
    before = await graphql(client, USAGE, headers=headers)
    job = await run_job(client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [64]}})
    assert job["status"] == "FAILED", job
    assert job["attempts"] == 1, job
    assert "Reading 'large.png' needed more than the 16 MB" in job["error"], job
    assert "DEPOT_MEDIA_MEMORY_LIMIT_MB" in job["error"], job
    assert job["outputs"]["totalCount"] == 0
    assert await graphql(client, USAGE, headers=headers) == before, "usage unchanged"
    # A picture within the limit, next, in the same worker.
    small = await upload_file(client, headers, "small.png", png((64, 64), RED))
    job = await run_job(client, headers, {"thumbnails": {"fileId": small["id"], "sizes": [32]}})
    assert job["status"] == "SUCCEEDED", job


# -- retrying -----------------------------------------------------------------------------


RETRY = "mutation R($id: ID!) { retryJob(id: $id) { id status } }"


async def test_retry_checks_the_inputs_against_the_limits_again(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = await sign_up(client)
    thick = await upload_file(client, headers, "thick.pdf", pdf(RED, GREEN, BLUE))
    job = await run_job(
        client, headers, {"thumbnails": {"fileId": thick["id"], "sizes": [64], "page": 9}}
    )
    assert job["status"] == "FAILED", job
    # The same database and storage, served with a lower page limit (a new deployment).
    lower = settings.model_copy(update={"media_max_pdf_pages": 2})
    async with serve_app(lower) as stricter:
        body = await graphql(stricter, RETRY, {"id": job["id"]}, headers=headers)
        error = assert_error(body, "BAD_USER_INPUT", field="fileId")
        assert "'thick.pdf' has 3 pages" in error["message"], error
        assert "DEPOT_MEDIA_MAX_PDF_PAGES" in error["message"], error
        still = await wait_for_job(stricter, headers, job["id"])
        assert still["status"] == "FAILED", "refused: not queued again"
    # Under the limits it started with, it is queued again.
    body = await graphql(client, RETRY, {"id": job["id"]}, headers=headers)
    assert body["data"]["retryJob"]["status"] == "QUEUED", body
