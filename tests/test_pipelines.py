"""Pipelines through GraphQL, in-process and with a real ``depot worker`` over Redis.

Steps that feed each other (the issue's example, a diamond), refusals before
anything runs, cancelling and retrying, one event stream for the whole
pipeline, and templates. Images are tiny: the kinds' own work is tested
elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from core.db import create_engine, create_sessionmaker
from core.direct_uploads import complete_ticket
from core.settings import Settings
from schema.ids import decode_id_of
from storage import open_storage
from tests.conftest import make_settings, serve_app
from tests.media import BLUE, GREEN, RED, pdf
from tests.processes import depot_scheduler, depot_worker, start_together
from tests.support import (
    CSRF_HEADER,
    FINAL_STATUSES,
    JOB_TIMEOUT_S,
    assert_error,
    collect_job_events,
    graphql,
    many_entries_zip,
    next_message,
    signed_in,
    subscribe,
    subscriber,
    try_start_job,
    upload_file,
)
from tests.test_direct_uploads import put_bytes, try_create_upload
from tests.test_jobs_faults import ENTRIES, MADE_BEFORE_KILL, fault_settings, private_redis
from tests.test_tus import create as tus_create
from tests.test_tus import patch as tus_patch

# A pipeline's steps with their jobs' inputs and outputs cost more than the default allows.
pytestmark = [pytest.mark.anyio, pytest.mark.settings(graphql_max_cost=200_000)]

PIPELINE_FIELDS = """
  id kind status progress error attempts
  inputs { id path }
  steps {
    name kind use status progress
    job {
      id kind status attempts step createdAt startedAt finishedAt error
      pipeline { id }
      inputs { id path }
      outputs(first: 100) { totalCount edges { node { id path contentType } } }
    }
  }
"""
START = (
    "mutation Start($input: JobInput!, $key: String) "
    f"{{ startJob(input: $input, idempotencyKey: $key) {{ {PIPELINE_FIELDS} }} }}"
)
GET = f"query Job($id: ID!) {{ job(id: $id) {{ {PIPELINE_FIELDS} }} }}"
CANCEL = f"mutation C($id: ID!) {{ cancelJob(id: $id) {{ {PIPELINE_FIELDS} }} }}"
RETRY = f"mutation R($id: ID!) {{ retryJob(id: $id) {{ {PIPELINE_FIELDS} }} }}"
EVENTS = (
    "subscription Events($id: ID!, $after: String) "
    "{ jobEvents(jobId: $id, after: $after) { cursor jobId step status progress } }"
)
MOVE = "mutation M($id: ID!, $path: String!) { moveFile(id: $id, path: $path) { id path } }"


def png(size: tuple[int, int] = (24, 16), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def step(name: str, run: dict[str, Any], *use: str) -> dict[str, Any]:
    return {"name": name, "run": run, **({"use": list(use)} if use else {})}


def pipeline(file_ids: list[str], *steps: dict[str, Any]) -> dict[str, Any]:
    return {"pipeline": {"fileIds": file_ids, "steps": list(steps)}}


async def start(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    job_input: dict[str, Any],
    key: str | None = None,
) -> dict[str, Any]:
    body = await graphql(client, START, {"input": job_input, "key": key}, headers=headers)
    assert "errors" not in body, body
    job: dict[str, Any] = body["data"]["startJob"]
    return job


async def get(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    body = await graphql(client, GET, {"id": job_id}, headers=headers)
    assert "errors" not in body, body
    job: dict[str, Any] = body["data"]["job"]
    return job


async def wait(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: str, *, until: Any = None
) -> dict[str, Any]:
    """Poll the pipeline until ``until(job)`` (by default: a final status)."""
    done = until or (lambda job: job["status"] in FINAL_STATUSES)
    with anyio.fail_after(JOB_TIMEOUT_S):
        while True:
            job = await get(client, headers, job_id)
            if done(job):
                return job
            await anyio.sleep(0.05)


def by_name(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in job["steps"]}


def outputs(step_: dict[str, Any]) -> list[dict[str, Any]]:
    return [edge["node"] for edge in step_["job"]["outputs"]["edges"]]


# -- running -------------------------------------------------------------------------


async def test_the_issues_example_verify_convert_thumbnails_archive(
    jobs_client: httpx.AsyncClient,
) -> None:
    token, headers = await signed_in(jobs_client)
    file = await upload_file(jobs_client, headers, "photos/cat.png", png())
    job = await start(
        jobs_client,
        headers,
        pipeline(
            [file["id"]],
            step("verify", {"verify": {}}),
            step("webp", {"convert": {"format": "WEBP"}}, "verify"),
            step("thumbs", {"thumbnails": {"sizes": [8, 12]}}, "webp"),
            step("zip", {"archive": {"path": "photos/thumbs"}}, "thumbs"),
        ),
    )
    assert job["kind"] == "PIPELINE"
    assert job["status"] == "RUNNING"
    assert [i["id"] for i in job["inputs"]] == [file["id"]]
    assert [s["name"] for s in job["steps"]] == ["verify", "webp", "thumbs", "zip"]
    assert by_name(job)["zip"]["status"] == "PENDING"
    assert by_name(job)["zip"]["job"] is None

    done = await wait(jobs_client, headers, job["id"])
    assert done["status"] == "SUCCEEDED", done
    assert done["progress"] == 1.0
    steps = by_name(done)
    assert {s["status"] for s in steps.values()} == {"SUCCEEDED"}
    # verify makes no file: the step using it reads what it read.
    assert [i["id"] for i in steps["webp"]["job"]["inputs"]] == [file["id"]]
    [webp] = outputs(steps["webp"])
    assert webp["contentType"] == "image/webp"
    assert [i["id"] for i in steps["thumbs"]["job"]["inputs"]] == [webp["id"]]
    thumbs = outputs(steps["thumbs"])
    assert len(thumbs) == 2
    assert sorted(i["id"] for i in steps["zip"]["job"]["inputs"]) == sorted(t["id"] for t in thumbs)
    [archive] = outputs(steps["zip"])
    assert archive["path"] == "photos/thumbs.zip"
    # Each step's job says which pipeline and step it belongs to.
    for name, each in steps.items():
        assert each["job"]["step"] == name
        assert each["job"]["pipeline"] == {"id": job["id"]}

    # One stream for the whole pipeline: every step's events, then the pipeline's end.
    async with subscriber(jobs_client, token) as ws:
        events = await collect_job_events(ws, "1", job["id"], query=EVENTS)
    assert events[-1]["jobId"] == job["id"]
    assert events[-1]["status"] == "SUCCEEDED"
    assert events[-1]["step"] is None
    finals = [(e["step"], e["status"]) for e in events if e["status"] == "SUCCEEDED" and e["step"]]
    assert finals == [
        ("verify", "SUCCEEDED"),
        ("webp", "SUCCEEDED"),
        ("thumbs", "SUCCEEDED"),
        ("zip", "SUCCEEDED"),
    ]
    for e in events:
        if e["step"] is not None:
            assert e["jobId"] == steps[e["step"]]["job"]["id"]
    cursors = [tuple(map(int, e["cursor"].split("-"))) for e in events]
    assert cursors == sorted(set(cursors)), "one cursor order, no duplicates"


async def test_a_diamond_runs_both_branches_and_joins_them(jobs_client: httpx.AsyncClient) -> None:
    _, headers = await signed_in(jobs_client)
    file = await upload_file(jobs_client, headers, "cat.png", png())
    job = await start(
        jobs_client,
        headers,
        pipeline(
            [file["id"]],
            step("join", {"archive": {"path": "both.zip"}}, "small", "jpeg"),
            step("small", {"thumbnails": {"sizes": [8]}}, "webp"),
            step("jpeg", {"convert": {"format": "JPEG"}}, "webp"),
            step("webp", {"convert": {"format": "WEBP"}}),
        ),
    )
    # Steps are kept in an order where each follows what it uses.
    assert [s["name"] for s in job["steps"]] == ["webp", "small", "jpeg", "join"]
    done = await wait(jobs_client, headers, job["id"])
    assert done["status"] == "SUCCEEDED", done
    steps = by_name(done)
    small, jpeg = steps["small"]["job"], steps["jpeg"]["job"]
    # Both branches were started by the same step's end, neither waiting for the other.
    assert small["createdAt"] < jpeg["finishedAt"]
    assert jpeg["createdAt"] < small["finishedAt"]
    joined = [i["id"] for i in steps["join"]["job"]["inputs"]]
    assert joined == [o["id"] for o in outputs(steps["small"]) + outputs(steps["jpeg"])]


async def test_the_same_idempotency_key_starts_one_pipeline(jobs_client: httpx.AsyncClient) -> None:
    _, headers = await signed_in(jobs_client)
    file = await upload_file(jobs_client, headers, "cat.png", png())
    given = pipeline([file["id"]], step("v", {"verify": {}}))
    first = await start(jobs_client, headers, given, key="k-1")
    again = await start(jobs_client, headers, given, key="k-1")
    assert again["id"] == first["id"]
    done = await wait(jobs_client, headers, first["id"])
    assert done["status"] == "SUCCEEDED"
    assert done["steps"][0]["job"]["attempts"] == 1


# -- refused before anything runs ----------------------------------------------------


@pytest.mark.parametrize("jobs_mode", ["inprocess"], indirect=True)
async def test_bad_pipelines_are_refused_naming_the_step(jobs_client: httpx.AsyncClient) -> None:
    _, headers = await signed_in(jobs_client)
    image = await upload_file(jobs_client, headers, "cat.png", png())
    other = await upload_file(jobs_client, headers, "dog.png", png(colour=(0, 0, 200)))
    text = await upload_file(jobs_client, headers, "notes.txt", b"hello\n")
    cases = [
        (pipeline([image["id"]], step("a", {"verify": {}}, "nope")), "steps.a.use"),
        (
            pipeline([image["id"]], step("a", {"verify": {}}), step("a", {"verify": {}})),
            "steps.a",
        ),
        (
            pipeline(
                [image["id"]],
                step("a", {"verify": {}}, "b"),
                step("b", {"verify": {}}, "a"),
                step("c", {"verify": {}}),
            ),
            "steps.a.use",
        ),
        (
            pipeline(
                [image["id"]],
                step("zip", {"archive": {"path": "x.zip"}}),
                step("webp", {"convert": {"format": "WEBP"}}, "zip"),
            ),
            "steps.webp.use",
        ),
        (pipeline([text["id"]], step("webp", {"convert": {"format": "WEBP"}})), "steps.webp.use"),
        (
            pipeline([image["id"], other["id"]], step("webp", {"convert": {"format": "WEBP"}})),
            "steps.webp.use",
        ),
        (
            pipeline([image["id"]], step("t", {"thumbnails": {"sizes": [0]}})),
            "steps.t.run.sizes",
        ),
    ]
    for given, field in cases:
        body = await try_start_job(jobs_client, headers, given)
        assert_error(body, "BAD_USER_INPUT", field=field)
    jobs = await graphql(jobs_client, "{ jobs { totalCount } }", headers=headers)
    assert jobs["data"]["jobs"]["totalCount"] == 0, "nothing ran"


# -- cancel and retry ----------------------------------------------------------------


async def test_cancelling_mid_pipeline_cancels_the_running_step_and_skips_the_rest(
    jobs_client: httpx.AsyncClient,
) -> None:
    token, headers = await signed_in(jobs_client)
    archive = await upload_file(jobs_client, headers, "many.zip", many_entries_zip(300))
    job = await start(
        jobs_client,
        headers,
        pipeline(
            [archive["id"]],
            step("unpack", {"extract": {"path": "out"}}),
            step("zip", {"archive": {"path": "again.zip"}}, "unpack"),
        ),
    )
    await wait(
        jobs_client, headers, job["id"], until=lambda j: by_name(j)["unpack"]["status"] == "RUNNING"
    )
    body = await graphql(jobs_client, CANCEL, {"id": job["id"]}, headers=headers)
    assert "errors" not in body, body
    done = await wait(jobs_client, headers, job["id"])
    assert done["status"] == "CANCELLED", done
    steps = by_name(done)
    assert steps["unpack"]["status"] in ("CANCELLED", "SUCCEEDED")
    assert steps["zip"]["status"] == "SKIPPED"
    assert steps["zip"]["job"] is None
    async with subscriber(jobs_client, token) as ws:
        events = await collect_job_events(ws, "1", job["id"], query=EVENTS)
    assert [e["status"] for e in events if e["step"] is None and e["status"] in FINAL_STATUSES] == [
        "CANCELLED"
    ]


async def test_retry_checks_the_steps_inputs_against_the_media_limits_again(
    jobs_client: httpx.AsyncClient, jobs_settings: Settings
) -> None:
    _, headers = await signed_in(jobs_client)
    thick = await upload_file(jobs_client, headers, "thick.pdf", pdf(RED, GREEN, BLUE))
    job = await start(
        jobs_client,
        headers,
        pipeline([thick["id"]], step("thumbs", {"thumbnails": {"sizes": [8], "page": 9}})),
    )
    failed = await wait(jobs_client, headers, job["id"])
    assert failed["status"] == "FAILED", failed
    # The same database and storage, served with a lower page limit (a new deployment).
    lower = jobs_settings.model_copy(update={"media_max_pdf_pages": 2})
    async with serve_app(lower) as stricter:
        body = await graphql(stricter, RETRY, {"id": job["id"]}, headers=headers)
        error = assert_error(body, "BAD_USER_INPUT", field="fileId")
        assert "'thick.pdf' has 3 pages" in error["message"], error
        assert "DEPOT_MEDIA_MAX_PDF_PAGES" in error["message"], error
        still = await get(stricter, headers, job["id"])
        assert still["status"] == "FAILED", "refused: not run again"
        assert by_name(still)["thumbs"]["job"]["status"] == "FAILED", "its step not queued"
    # Under the limits it started with, it runs again.
    body = await graphql(jobs_client, RETRY, {"id": job["id"]}, headers=headers)
    assert "errors" not in body, body
    assert body["data"]["retryJob"]["status"] == "RUNNING", body


async def test_retry_after_a_failed_middle_step_keeps_the_first_steps_outputs(
    jobs_client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(jobs_client)
    file = await upload_file(jobs_client, headers, "cat.png", png())
    # "back" writes cat.png again from cat.webp: a taken path, until the upload moves.
    job = await start(
        jobs_client,
        headers,
        pipeline(
            [file["id"]],
            step("webp", {"convert": {"format": "WEBP"}}),
            step("back", {"convert": {"format": "PNG"}}, "webp"),
            step("thumbs", {"thumbnails": {"sizes": [8]}}, "back"),
        ),
    )
    failed = await wait(jobs_client, headers, job["id"])
    assert failed["status"] == "FAILED", failed
    assert "back" in failed["error"]
    steps = by_name(failed)
    assert [steps[n]["status"] for n in ("webp", "back", "thumbs")] == [
        "SUCCEEDED",
        "FAILED",
        "SKIPPED",
    ]
    first = steps["webp"]["job"]
    body = await graphql(jobs_client, MOVE, {"id": file["id"], "path": "orig.png"}, headers=headers)
    assert "errors" not in body, body

    body = await graphql(jobs_client, RETRY, {"id": job["id"]}, headers=headers)
    assert "errors" not in body, body
    assert body["data"]["retryJob"]["status"] == "RUNNING"
    done = await wait(jobs_client, headers, job["id"])
    assert done["status"] == "SUCCEEDED", done
    steps = by_name(done)
    kept = steps["webp"]["job"]
    assert (kept["id"], kept["attempts"]) == (first["id"], first["attempts"])
    assert outputs(steps["webp"]) == outputs({"job": first})
    assert steps["back"]["job"]["attempts"] == 2
    assert [o["path"] for o in outputs(steps["back"])] == ["cat.png"]
    assert steps["thumbs"]["status"] == "SUCCEEDED"


# -- the stream ----------------------------------------------------------------------


async def test_a_reconnecting_subscriber_sees_every_event_once(
    jobs_client: httpx.AsyncClient,
) -> None:
    token, headers = await signed_in(jobs_client)
    file = await upload_file(jobs_client, headers, "cat.png", png())
    job = await start(
        jobs_client,
        headers,
        pipeline(
            [file["id"]],
            step("webp", {"convert": {"format": "WEBP"}}),
            step("thumbs", {"thumbnails": {"sizes": [8]}}, "webp"),
        ),
    )
    seen: list[dict[str, Any]] = []
    async with subscriber(jobs_client, token) as ws:
        await subscribe(ws, "1", EVENTS, {"id": job["id"], "after": None})
        while len(seen) < 2:
            message = await next_message(ws)
            assert message["type"] == "next", message
            seen.append(message["payload"]["data"]["jobEvents"])
    async with subscriber(jobs_client, token) as ws:
        rest = await collect_job_events(ws, "1", job["id"], after=seen[-1]["cursor"], query=EVENTS)
    # A late subscriber, after the end, gets the whole pipeline.
    await wait(jobs_client, headers, job["id"])
    async with subscriber(jobs_client, token) as ws:
        everything = await collect_job_events(ws, "1", job["id"], query=EVENTS)
    assert [e["cursor"] for e in seen + rest] == [e["cursor"] for e in everything]
    assert {e["step"] for e in everything} == {None, "webp", "thumbs"}
    assert everything[-1]["status"] == "SUCCEEDED"
    assert everything[-1]["jobId"] == job["id"]


# -- templates -----------------------------------------------------------------------

TEMPLATE_FIELDS = "id name steps createdAt updatedAt"
CREATE_TEMPLATE = (
    "mutation T($input: PipelineTemplateInput!) "
    f"{{ createPipelineTemplate(input: $input) {{ {TEMPLATE_FIELDS} }} }}"
)
UPDATE_TEMPLATE = (
    "mutation U($id: ID!, $input: UpdatePipelineTemplateInput!) "
    f"{{ updatePipelineTemplate(id: $id, input: $input) {{ {TEMPLATE_FIELDS} }} }}"
)
DELETE_TEMPLATE = "mutation D($id: ID!) { deletePipelineTemplate(id: $id) }"
TEMPLATES = f"{{ pipelineTemplates {{ totalCount edges {{ node {{ {TEMPLATE_FIELDS} }} }} }} }}"


async def test_templates_are_checked_when_saved_and_start_pipelines(
    jobs_client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(jobs_client)
    steps = [
        step("webp", {"convert": {"format": "WEBP"}}),
        step("thumbs", {"thumbnails": {"sizes": [8]}}, "webp"),
    ]
    bad = [
        step("zip", {"archive": {"path": "a.zip"}}),
        step("webp", {"convert": {"format": "WEBP"}}, "zip"),
    ]
    body = await graphql(
        jobs_client, CREATE_TEMPLATE, {"input": {"name": "web", "steps": bad}}, headers=headers
    )
    assert_error(body, "BAD_USER_INPUT", field="steps.webp.use")
    body = await graphql(
        jobs_client, CREATE_TEMPLATE, {"input": {"name": "web", "steps": steps}}, headers=headers
    )
    assert "errors" not in body, body
    template = body["data"]["createPipelineTemplate"]
    again = await graphql(
        jobs_client, CREATE_TEMPLATE, {"input": {"name": "web", "steps": steps}}, headers=headers
    )
    assert_error(again, "CONFLICT")
    body = await graphql(
        jobs_client,
        UPDATE_TEMPLATE,
        {"id": template["id"], "input": {"name": "for the web"}},
        headers=headers,
    )
    assert body["data"]["updatePipelineTemplate"]["name"] == "for the web"
    listed = await graphql(jobs_client, TEMPLATES, headers=headers)
    assert [e["node"]["id"] for e in listed["data"]["pipelineTemplates"]["edges"]] == [
        template["id"]
    ]
    # Someone else's template does not exist for them.
    _, other = await signed_in(jobs_client, "eve@example.com")
    body = await graphql(jobs_client, DELETE_TEMPLATE, {"id": template["id"]}, headers=other)
    assert_error(body, "NOT_FOUND")

    file = await upload_file(jobs_client, headers, "cat.png", png())
    job = await start(
        jobs_client, headers, {"template": {"templateId": template["id"], "fileIds": [file["id"]]}}
    )
    assert [s["name"] for s in job["steps"]] == ["webp", "thumbs"]
    done = await wait(jobs_client, headers, job["id"])
    assert done["status"] == "SUCCEEDED", done
    # Checked again against the files it starts on: a text file is no image.
    text = await upload_file(jobs_client, headers, "notes.txt", b"hello\n")
    body = await try_start_job(
        jobs_client, headers, {"template": {"templateId": template["id"], "fileIds": [text["id"]]}}
    )
    assert_error(body, "BAD_USER_INPUT", field="steps.webp.use")
    body = await graphql(jobs_client, DELETE_TEMPLATE, {"id": template["id"]}, headers=headers)
    assert body["data"]["deletePipelineTemplate"] == template["id"]
    listed = await graphql(jobs_client, TEMPLATES, headers=headers)
    assert listed["data"]["pipelineTemplates"]["totalCount"] == 0


# -- a worker killed mid-step ---------------------------------------------------------


@pytest.mark.redis
async def test_a_worker_killed_mid_step_still_ends_the_pipeline_once(
    tmp_path: Path, database_url: str
) -> None:
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(private_redis(tmp_path))
        settings = fault_settings(tmp_path, database_url, redis.url, graphql_max_cost=200_000)
        client, worker_a = await start_together(
            stack, serve_app(settings), depot_worker(settings, tmp_path / "worker-a.log")
        )
        token, headers = await signed_in(client)
        archive = await upload_file(client, headers, "many.zip", many_entries_zip(ENTRIES))
        job = await start(
            client,
            headers,
            pipeline(
                [archive["id"]],
                step("unpack", {"extract": {"path": "out"}}),
                step("zip", {"archive": {"path": "again.zip"}}, "unpack"),
            ),
        )
        await wait(
            client,
            headers,
            job["id"],
            until=lambda j: (
                # Stored, not yet rows: a step's outputs are written when it succeeds.
                by_name(j)["unpack"]["job"] is not None
                and by_name(j)["unpack"]["progress"] >= MADE_BEFORE_KILL / ENTRIES
            ),
        )
        await anyio.to_thread.run_sync(worker_a.kill)
        # Maintenance sends the step again once its heartbeat is stale; B takes it over.
        scheduler, _ = await start_together(
            stack,
            depot_scheduler(settings, tmp_path / "scheduler.log"),
            depot_worker(settings, tmp_path / "worker-b.log"),
        )
        await wait(
            client, headers, job["id"], until=lambda j: by_name(j)["unpack"]["job"]["attempts"] == 2
        )
        # As in test_jobs_faults: no more resends racing B's attempt on a loaded machine.
        await anyio.to_thread.run_sync(scheduler.stop)
        done = await wait(client, headers, job["id"])
        assert done["status"] == "SUCCEEDED", done
        steps = by_name(done)
        assert steps["unpack"]["job"]["attempts"] == 2
        assert steps["unpack"]["job"]["outputs"]["totalCount"] == ENTRIES
        assert len(steps["zip"]["job"]["inputs"]) == ENTRIES
        async with subscriber(client, token) as ws:
            events = await collect_job_events(ws, "1", job["id"], query=EVENTS)
        own = [e["status"] for e in events if e["step"] is None and e["status"] in FINAL_STATUSES]
        assert own == ["SUCCEEDED"]
        zipped = [
            e["status"] for e in events if e["step"] == "zip" and e["status"] in FINAL_STATUSES
        ]
        assert zipped == ["SUCCEEDED"], "the step after the killed one started once"


# -- process on upload ---------------------------------------------------------------

UPLOAD_WITH_PIPELINE = (
    "mutation U($file: Upload!, $path: String, $pipeline: UploadPipelineInput) "
    "{ uploadFile(file: $file, path: $path, pipeline: $pipeline) "
    "{ id processing { id status } } }"
)
CREATE_WITH_PIPELINE = (
    "mutation T($input: CreateUploadInput!) "
    "{ createUpload(input: $input) { id url method headers processing { id status message } } }"
)
COMPLETE_WITH_PIPELINE = (
    "mutation C($id: ID!) { completeUpload(id: $id) { id processing { id status } } }"
)
UPLOAD_EVENTS = (
    "subscription Events($id: ID!, $after: String) { jobEvents(jobId: $id, after: $after) "
    "{ cursor jobId step status upload { receivedBytes totalBytes } } }"
)
PIPELINE_COUNT = "{ jobs(filter: {kind: PIPELINE}) { totalCount } }"
WEBP = [step("webp", {"convert": {"format": "WEBP"}})]


async def pipelines_of(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    body = await graphql(client, PIPELINE_COUNT, headers=headers)
    count: int = body["data"]["jobs"]["totalCount"]
    return count


async def ticket_with_pipeline(
    client: httpx.AsyncClient, headers: dict[str, str], path: str, data: bytes, **extra: str
) -> dict[str, Any]:
    fields = {"path": path, "size": len(data), "contentType": "image/png", **extra}
    body = await graphql(
        client,
        CREATE_WITH_PIPELINE,
        {"input": {**fields, "pipeline": {"steps": WEBP}}},
        headers=headers,
    )
    assert "errors" not in body, body
    ticket: dict[str, Any] = body["data"]["createUpload"]
    return ticket


def uploading(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """The upload's progress events, as (received, total)."""
    return [
        (int(e["upload"]["receivedBytes"]), int(e["upload"]["totalBytes"]))
        for e in events
        if e["upload"] is not None
    ]


async def test_an_upload_starts_its_pipeline_once_the_file_is_complete(
    jobs_client: httpx.AsyncClient,
) -> None:
    token, headers = await signed_in(jobs_client)
    # Multipart: the pipeline is checked before any byte is stored, then queued with the file.
    operations = {
        "query": UPLOAD_WITH_PIPELINE,
        "variables": {"file": None, "path": "cat.png", "pipeline": {"steps": WEBP}},
    }
    data = png()
    response = await jobs_client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files={"0": ("cat.png", data, "image/png")},
        headers={**CSRF_HEADER, **headers},
    )
    body = response.json()
    assert "errors" not in body, body
    uploaded = body["data"]["uploadFile"]
    assert uploaded["processing"]["status"] in ("RUNNING", "SUCCEEDED")
    done = await wait(jobs_client, headers, uploaded["processing"]["id"])
    assert done["status"] == "SUCCEEDED", done
    assert [i["id"] for i in done["inputs"]] == [uploaded["id"]]
    async with subscriber(jobs_client, token) as ws:
        events = await collect_job_events(
            ws, "1", uploaded["processing"]["id"], query=UPLOAD_EVENTS
        )
    # Its stream starts with the upload, complete (the bytes came in this one request).
    assert events[0]["upload"] == {"receivedBytes": len(data), "totalBytes": len(data)}
    assert events[-1]["status"] == "SUCCEEDED"

    # A direct upload: checked at createUpload against the declared type.
    bad = await try_create_upload(
        jobs_client,
        headers,
        path="notes.txt",
        size=6,
        contentType="text/plain",
        pipeline={"steps": WEBP},
    )
    assert_error(bad, "BAD_USER_INPUT", field="steps.webp.use")
    assert await pipelines_of(jobs_client, headers) == 1


async def test_a_direct_uploads_pipeline_streams_its_bytes_then_its_steps_once(
    jobs_client: httpx.AsyncClient,
) -> None:
    token, headers = await signed_in(jobs_client)
    data = png(colour=(0, 90, 0))
    ticket = await ticket_with_pipeline(jobs_client, headers, "dog.png", data)
    # The pipeline exists from the ticket on, waiting for its file.
    processing = ticket["processing"]
    assert processing["status"] == "QUEUED", ticket
    async with subscriber(jobs_client, token) as ws:
        await subscribe(ws, "1", UPLOAD_EVENTS, {"id": processing["id"], "after": None})
        first = await next_message(ws)
        assert first["payload"]["data"]["jobEvents"]["upload"] == {
            "receivedBytes": 0,
            "totalBytes": len(data),
        }, first
        assert (await put_bytes(jobs_client, ticket, data)).is_success
        body = await graphql(
            jobs_client, COMPLETE_WITH_PIPELINE, {"id": ticket["id"]}, headers=headers
        )
        assert "errors" not in body, body
        completed = body["data"]["completeUpload"]
        assert completed["processing"]["id"] == processing["id"]
        events = [first["payload"]["data"]["jobEvents"]]
        while events[-1]["status"] not in FINAL_STATUSES or events[-1]["step"] is not None:
            message = await next_message(ws)
            assert message["type"] == "next", message
            events.append(message["payload"]["data"]["jobEvents"])
    progress = uploading(events)
    assert progress[0] == (0, len(data)), progress
    assert progress[-1] == (len(data), len(data)), progress
    assert [received for received, _ in progress] == sorted(received for received, _ in progress)
    # Then the steps, then the pipeline's final status; no byte event after a step's.
    last_upload = max(i for i, e in enumerate(events) if e["upload"] is not None)
    assert all(e["step"] is None for e in events[: last_upload + 1])
    assert {e["step"] for e in events[last_upload + 1 :]} == {"webp", None}
    assert events[-1]["status"] == "SUCCEEDED"
    assert events[-1]["jobId"] == processing["id"]

    # A retried completion answers the same file and the same pipeline: no error, no second.
    again = await graphql(
        jobs_client, COMPLETE_WITH_PIPELINE, {"id": ticket["id"]}, headers=headers
    )
    assert "errors" not in again, again
    assert again["data"]["completeUpload"]["id"] == completed["id"]
    assert again["data"]["completeUpload"]["processing"] == {
        "id": processing["id"],
        "status": "SUCCEEDED",
    }
    assert await pipelines_of(jobs_client, headers) == 1


async def test_racing_completions_make_one_file_and_one_pipeline(
    jobs_client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(jobs_client)
    data = png(colour=(9, 9, 200))
    ticket = await ticket_with_pipeline(jobs_client, headers, "race.png", data)
    assert (await put_bytes(jobs_client, ticket, data)).is_success
    answers: list[dict[str, Any]] = []

    async def complete() -> None:
        answers.append(
            await graphql(
                jobs_client, COMPLETE_WITH_PIPELINE, {"id": ticket["id"]}, headers=headers
            )
        )

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(complete)
    assert all("errors" not in answer for answer in answers), answers
    files = {answer["data"]["completeUpload"]["id"] for answer in answers}
    processing = {answer["data"]["completeUpload"]["processing"]["id"] for answer in answers}
    assert len(files) == 1, answers
    assert processing == {ticket["processing"]["id"]}, answers
    done = await wait(jobs_client, headers, ticket["processing"]["id"])
    assert done["status"] == "SUCCEEDED", done
    assert [i["id"] for i in done["inputs"]] == list(files)
    assert await pipelines_of(jobs_client, headers) == 1


FILE_PROCESSING = "query F($id: ID!) { node(id: $id) { ... on File { processing { id } } } }"
UPLOADS = "{ uploads { edges { node { id offset processing { id status } } } } }"
CANCEL_UPLOAD = "mutation X($id: ID!) { cancelUpload(id: $id) }"


async def tus_with_template(
    client: httpx.AsyncClient, headers: dict[str, str], template_id: str, data: bytes, name: str
) -> tuple[str, str]:
    """A tus upload naming the template: its URL's path and its pipeline's id."""
    response = await tus_create(client, headers, len(data), filename=name, template=template_id)
    assert response.status_code == 201, response.text
    return httpx.URL(response.headers["location"]).path, response.headers["depot-processing"]


async def test_a_tus_upload_naming_a_template_streams_its_bytes_then_its_steps(
    jobs_client: httpx.AsyncClient,
) -> None:
    token, headers = await signed_in(jobs_client)
    body = await graphql(
        jobs_client,
        CREATE_TEMPLATE,
        {"input": {"name": "web", "steps": WEBP}},
        headers=headers,
    )
    template = body["data"]["createPipelineTemplate"]
    refused = await tus_create(
        jobs_client,
        headers,
        6,
        filename="notes.txt",
        filetype="text/plain",
        template=template["id"],
    )
    assert refused.status_code == 400, refused.text
    data = png()
    url, pipeline_id = await tus_with_template(jobs_client, headers, template["id"], data, "c.png")
    listed = await graphql(jobs_client, UPLOADS, headers=headers)
    [upload] = [e["node"] for e in listed["data"]["uploads"]["edges"]]
    assert upload["processing"] == {"id": pipeline_id, "status": "QUEUED"}
    half = len(data) // 2
    async with subscriber(jobs_client, token) as ws:
        await subscribe(ws, "1", UPLOAD_EVENTS, {"id": pipeline_id, "after": None})
        first = await next_message(ws)
        assert first["payload"]["data"]["jobEvents"]["upload"]["receivedBytes"] == 0
        assert (await tus_patch(jobs_client, headers, url, 0, data[:half])).status_code == 204
        assert (await tus_patch(jobs_client, headers, url, half, data[half:])).status_code == 204
    async with subscriber(jobs_client, token) as ws:
        events = await collect_job_events(ws, "1", pipeline_id, query=UPLOAD_EVENTS)
    assert uploading(events) == [(0, len(data)), (half, len(data)), (len(data), len(data))]
    assert events[-1]["status"] == "SUCCEEDED"
    assert events[-1]["jobId"] == pipeline_id
    files = await graphql(jobs_client, "{ files { edges { node { id path } } } }", headers=headers)
    [file] = [e["node"] for e in files["data"]["files"]["edges"] if e["node"]["path"] == "c.png"]
    found = await graphql(jobs_client, FILE_PROCESSING, {"id": file["id"]}, headers=headers)
    assert found["data"]["node"]["processing"]["id"] == pipeline_id
    done = await get(jobs_client, headers, pipeline_id)
    assert [i["id"] for i in done["inputs"]] == [file["id"]]

    # Cancelling an upload ends its pipeline, and its subscribers hear it.
    url, pipeline_id = await tus_with_template(jobs_client, headers, template["id"], data, "d.png")
    assert (await tus_patch(jobs_client, headers, url, 0, data[:half])).status_code == 204
    async with subscriber(jobs_client, token) as ws:
        await subscribe(ws, "1", UPLOAD_EVENTS, {"id": pipeline_id, "after": None})
        assert (await next_message(ws))["type"] == "next"
        listed = await graphql(jobs_client, UPLOADS, headers=headers)
        [upload] = [e["node"] for e in listed["data"]["uploads"]["edges"]]
        body = await graphql(jobs_client, CANCEL_UPLOAD, {"id": upload["id"]}, headers=headers)
        assert "errors" not in body, body
        while True:
            message = await next_message(ws)
            if message["type"] == "complete":
                break
            last = message["payload"]["data"]["jobEvents"]
    assert last["status"] == "CANCELLED"
    assert last["jobId"] == pipeline_id
    cancelled = await get(jobs_client, headers, pipeline_id)
    assert cancelled["status"] == "CANCELLED", cancelled
    assert {s["status"] for s in cancelled["steps"]} == {"SKIPPED"}
    # With no file it has nothing to run again.
    retried = await graphql(jobs_client, RETRY, {"id": pipeline_id}, headers=headers)
    assert_error(retried, "CONFLICT")


async def test_an_upload_refused_at_completion_fails_its_pipeline(
    jobs_client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(jobs_client)
    data = png(colour=(1, 2, 3))
    ticket = await ticket_with_pipeline(
        jobs_client, headers, "bad.png", data, sha256=hashlib.sha256(b"other").hexdigest()
    )
    assert (await put_bytes(jobs_client, ticket, data)).is_success
    refused = await graphql(
        jobs_client, COMPLETE_WITH_PIPELINE, {"id": ticket["id"]}, headers=headers
    )
    assert_error(refused, "BAD_USER_INPUT", field="id")
    failed = await get(jobs_client, headers, ticket["processing"]["id"])
    assert failed["status"] == "FAILED", failed
    assert "SHA-256" in failed["error"]
    again = await graphql(
        jobs_client, COMPLETE_WITH_PIPELINE, {"id": ticket["id"]}, headers=headers
    )
    assert_error(again, "CONFLICT")


async def test_a_completion_that_died_after_its_commit_is_started_by_maintenance(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        storage_url=(tmp_path / "storage").as_uri(),
        maintenance_interval_seconds=0.2,
        job_resend_after_seconds=0.5,
        graphql_max_cost=200_000,
    )
    async with serve_app(settings) as client:
        _, headers = await signed_in(client)
        data = png(colour=(50, 50, 50))
        ticket = await ticket_with_pipeline(client, headers, "late.png", data)
        assert (await put_bytes(client, ticket, data)).is_success
        me = await graphql(client, "{ me { id } }", headers=headers)
        # The request's commit, and nothing after it: the process died before advancing.
        engine = create_engine(settings)
        storage = open_storage(settings.storage_url)
        try:
            async with create_sessionmaker(engine)() as db:
                _, made = await complete_ticket(
                    db,
                    storage,
                    decode_id_of("User", me["data"]["me"]["id"]),
                    decode_id_of("Upload", ticket["id"]),
                )
        finally:
            await storage.aclose()
            await engine.dispose()
        assert made
        queued = await get(client, headers, ticket["processing"]["id"])
        assert queued["status"] == "QUEUED", queued
        assert [i["path"] for i in queued["inputs"]] == ["late.png"]
        done = await wait(client, headers, ticket["processing"]["id"])
        assert done["status"] == "SUCCEEDED", done


# -- bounds ----------------------------------------------------------------------------


async def upload_many(
    client: httpx.AsyncClient, headers: dict[str, str], count: int, per_request: int = 15
) -> list[str]:
    """``count`` tiny files, ``per_request`` at a time: one spec multipart request of
    aliased ``uploadFile``s each (15 is DEPOT_GRAPHQL_MAX_ALIASES's default)."""
    ids: list[str] = []
    for first in range(0, count, per_request):
        names = [f"f{i}" for i in range(first, min(count, first + per_request))]
        query = "mutation Many({}) {{ {} }}".format(
            ", ".join(f"${name}: Upload!" for name in names),
            " ".join(
                f'{name}: uploadFile(file: ${name}, path: "many/{name}") {{ id }}' for name in names
            ),
        )
        operations = {"query": query, "variables": dict.fromkeys(names)}
        response = await client.post(
            "/graphql",
            data={
                "operations": json.dumps(operations),
                "map": json.dumps({name: [f"variables.{name}"] for name in names}),
            },
            files={name: (name, name.encode(), "text/plain") for name in names},
            headers={**CSRF_HEADER, **headers},
        )
        body = response.json()
        assert "errors" not in body, body
        ids += [body["data"][name]["id"] for name in names]
    return ids


@pytest.mark.parametrize("jobs_mode", ["inprocess"], indirect=True)
async def test_a_pipeline_past_the_step_inputs_bound_is_refused_naming_the_step(
    jobs_client: httpx.AsyncClient,
) -> None:
    """core.pipelines.MAX_STEP_INPUTS (2,000) over all steps: 25 archive steps of the same
    80 files read exactly that many and start; a 26th is refused before anything runs.
    The 80 files: six multipart requests of aliased uploadFiles (``upload_many``)."""
    _, headers = await signed_in(jobs_client)
    ids = await upload_many(jobs_client, headers, 80)
    zips = [step(f"zip{i:02}", {"archive": {"path": f"z{i}.zip"}}) for i in range(26)]
    refused = await try_start_job(jobs_client, headers, pipeline(ids, *zips))
    assert_error(refused, "BAD_USER_INPUT", field="steps.zip25.use")
    assert "2080 files" in refused["errors"][0]["message"]
    jobs = await graphql(jobs_client, "{ jobs { totalCount } }", headers=headers)
    assert jobs["data"]["jobs"]["totalCount"] == 0, "nothing ran"
    at_bound = await try_start_job(jobs_client, headers, pipeline(ids, *zips[:25]))
    assert "errors" not in at_bound, at_bound
    job_id = at_bound["data"]["startJob"]["id"]
    # Accepted is what is checked; the 25 archives need not run.
    body = await graphql(
        jobs_client,
        "mutation C($id: ID!) { cancelJob(id: $id) { id } }",
        {"id": job_id},
        headers=headers,
    )
    assert "errors" not in body, body
    assert (await wait(jobs_client, headers, job_id))["status"] in ("CANCELLED", "SUCCEEDED")
