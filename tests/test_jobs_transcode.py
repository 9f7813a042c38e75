"""``transcode`` through GraphQL: video to MP4 and WebM, sound to MP3, Opus and AAC,
scaled, probed afterwards, and cancelled mid-file. The sources are encoded here
(``tests.media``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from core.settings import Settings
from tests.conftest import make_settings
from tests.media import video
from tests.support import (
    USAGE,
    assert_error,
    bearer,
    get_job,
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

pytestmark = pytest.mark.anyio

CANCEL = "mutation C($id: ID!) { cancelJob(id: $id) { id status } }"


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test changes (``@pytest.mark.parametrize("overrides", [...])``)."""
    return {}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, overrides: dict[str, Any]) -> Settings:
    # Quick heartbeats: a running job learns of a cancel at its next one.
    return make_settings(
        tmp_path,
        database_url=database_url,
        storage_url=(tmp_path / "files").as_uri(),
        job_heartbeat_seconds=0.2,
        **overrides,
    )


async def sign_up(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await register(client))["accessToken"])


@pytest.mark.parametrize(
    ("media_format", "path", "codecs"),
    [
        ("MP4", "clips/trip.mp4", ("h264", "aac")),
        ("WEBM", "clips/trip.webm", ("vp9", "opus")),
        ("MP3", "clips/trip.mp3", (None, "mp3")),
        ("OPUS", "clips/trip.opus", (None, "opus")),
        ("AAC", "clips/trip.m4a", (None, "aac")),
    ],
)
async def test_transcode_writes_what_the_probe_then_reads(
    client: httpx.AsyncClient, tmp_path: Path, media_format: str, path: str, codecs: tuple[Any, ...]
) -> None:
    headers = await sign_up(client)
    source = await upload_file(
        client, headers, "clips/trip.mov", video(tmp_path / "s.mp4", seconds=2, sound=True)
    )
    params: dict[str, Any] = {"fileId": source["id"], "format": media_format, "quality": "LOW"}
    if codecs[0] is not None:
        params["maxHeight"] = 60
    job = await run_job(client, headers, {"transcode": params})
    assert job["status"] == "SUCCEEDED", job
    [output] = output_nodes(job)
    assert output["path"] == path
    meta = output["metadata"]
    assert (meta.get("videoCodec"), meta.get("audioCodec")) == codecs, meta
    assert 1.5 <= meta["duration"] <= 2.6, meta
    if codecs[0] is not None:
        assert (meta["width"], meta["height"]) == (80, 60), meta


async def test_bad_transcodes_are_refused_or_fail(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    headers = await sign_up(client)
    silent = await upload_file(client, headers, "mute.mp4", video(tmp_path / "m.mp4", seconds=1))
    job = await run_job(client, headers, {"transcode": {"fileId": silent["id"], "format": "MP3"}})
    assert job["status"] == "FAILED", job
    assert "has no sound" in job["error"]
    text = await upload_file(client, headers, "notes.mp4", b"not a video at all\n" * 10)
    job = await run_job(client, headers, {"transcode": {"fileId": text["id"], "format": "MP4"}})
    assert job["status"] == "FAILED", job
    assert job["outputs"]["totalCount"] == 0
    body = await try_start_job(
        client, headers, {"transcode": {"fileId": silent["id"], "format": "MP3", "maxHeight": 100}}
    )
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "maxHeight"}


async def test_a_transcode_is_cancelled_mid_file(
    client: httpx.AsyncClient, tmp_path: Path, settings: Settings
) -> None:
    headers = await sign_up(client)
    long = video(tmp_path / "long.mp4", seconds=120, fps=15, size=(320, 240))
    source = await upload_file(client, headers, "long.mp4", long)
    job = await start_job(
        client, headers, {"transcode": {"fileId": source["id"], "format": "WEBM"}}
    )
    with anyio.fail_after(60):
        while not (state := await get_job(client, headers, job["id"]))["progress"]:
            assert state["status"] in ("QUEUED", "RUNNING"), state
            await anyio.sleep(0.05)
    body = await graphql(client, CANCEL, {"id": job["id"]}, headers=headers)
    assert "errors" not in body, body
    done = await wait_for_job(client, headers, job["id"])
    assert done["status"] == "CANCELLED", done
    assert done["progress"] < 1, done
    assert done["outputs"]["totalCount"] == 0
    assert len(leftover_objects(settings)) == 1, "only the source is stored"


@pytest.mark.parametrize("overrides", [{"media_max_frames": 20, "media_max_video_pixels": 10_000}])
async def test_media_bounds_refuse_at_start_what_the_probe_shows_and_fail_the_rest(
    client: httpx.AsyncClient, tmp_path: Path, settings: Settings
) -> None:
    headers = await sign_up(client)
    wide = await upload_file(
        client, headers, "wide.mp4", video(tmp_path / "w.mp4", seconds=1, size=(160, 120))
    )
    for job_input in (
        {"transcode": {"fileId": wide["id"], "format": "MP4"}},
        {"thumbnails": {"fileId": wide["id"], "sizes": [32]}},
    ):
        error = assert_error(
            await try_start_job(client, headers, job_input), "BAD_USER_INPUT", field="fileId"
        )
        assert "'wide.mp4' is 160x120 pixels a frame" in error["message"], error
        assert "DEPOT_MEDIA_MAX_VIDEO_PIXELS" in error["message"], error
    # 3 s at 10 fps: its probed length and frame rate make 30 frames.
    small = (80, 60)
    long = await upload_file(
        client, headers, "long.mp4", video(tmp_path / "l.mp4", seconds=3, size=small)
    )
    body = await try_start_job(
        client, headers, {"transcode": {"fileId": long["id"], "format": "MP4"}}
    )
    error = assert_error(body, "BAD_USER_INPUT", field="fileId")
    assert "'long.mp4' has 30 frames" in error["message"], error
    assert "DEPOT_MEDIA_MAX_FRAMES" in error["message"], error
    # A live stream's headers tell no length: the decoder counts its frames and stops.
    live = await upload_file(
        client, headers, "live.mkv", video(tmp_path / "l.mkv", seconds=3, size=small, live=True)
    )
    before = await graphql(client, USAGE, headers=headers)
    job = await run_job(client, headers, {"transcode": {"fileId": live["id"], "format": "WEBM"}})
    assert job["status"] == "FAILED", job
    assert "'live.mkv' has 21 frames or more" in job["error"], job
    assert job["outputs"]["totalCount"] == 0
    assert await graphql(client, USAGE, headers=headers) == before
    assert len(leftover_objects(settings)) == 3, "only the sources are stored"
