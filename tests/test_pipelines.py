"""Pipelines through GraphQL, in-process and with a real ``depot worker`` over Redis.

Steps that feed each other (the issue's example, a diamond), refusals before
anything runs, cancelling and retrying, one event stream for the whole
pipeline, and templates. Images are tiny: the kinds' own work is tested
elsewhere.
"""

from __future__ import annotations

import io
import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from tests.conftest import serve_app
from tests.processes import depot_scheduler, depot_worker, in_background
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
from tests.test_direct_uploads import create_upload, put_bytes, try_create_upload
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
        client = await stack.enter_async_context(serve_app(settings))
        worker_a = await stack.enter_async_context(
            in_background(depot_worker(settings, tmp_path / "worker-a.log"))
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
                by_name(j)["unpack"]["job"] is not None
                and by_name(j)["unpack"]["job"]["outputs"]["totalCount"] >= MADE_BEFORE_KILL
            ),
        )
        await anyio.to_thread.run_sync(worker_a.kill)
        # Maintenance sends the step again once its heartbeat is stale; B takes it over.
        scheduler = await stack.enter_async_context(
            in_background(depot_scheduler(settings, tmp_path / "scheduler.log"))
        )
        await stack.enter_async_context(
            in_background(depot_worker(settings, tmp_path / "worker-b.log"))
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
COMPLETE_WITH_PIPELINE = (
    "mutation C($id: ID!) { completeUpload(id: $id) { id processing { id status } } }"
)


async def test_an_upload_starts_its_pipeline_once_the_file_is_complete(
    jobs_client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(jobs_client)
    steps = [step("webp", {"convert": {"format": "WEBP"}})]
    # Multipart: the pipeline is checked before any byte is stored, then starts on the file.
    operations = {
        "query": UPLOAD_WITH_PIPELINE,
        "variables": {"file": None, "path": "cat.png", "pipeline": {"steps": steps}},
    }
    response = await jobs_client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files={"0": ("cat.png", png(), "image/png")},
        headers={**CSRF_HEADER, **headers},
    )
    body = response.json()
    assert "errors" not in body, body
    uploaded = body["data"]["uploadFile"]
    assert uploaded["processing"]["status"] in ("RUNNING", "SUCCEEDED")
    done = await wait(jobs_client, headers, uploaded["processing"]["id"])
    assert done["status"] == "SUCCEEDED", done
    assert [i["id"] for i in done["inputs"]] == [uploaded["id"]]

    # A direct upload: checked at createUpload against the declared type, started once.
    bad = await try_create_upload(
        jobs_client,
        headers,
        path="notes.txt",
        size=6,
        contentType="text/plain",
        pipeline={"steps": steps},
    )
    assert_error(bad, "BAD_USER_INPUT", field="steps.webp.use")
    data = png(colour=(0, 90, 0))
    ticket = await create_upload(
        jobs_client,
        headers,
        path="dog.png",
        size=len(data),
        contentType="image/png",
        pipeline={"steps": steps},
    )
    assert (await put_bytes(jobs_client, ticket, data)).is_success
    body = await graphql(jobs_client, COMPLETE_WITH_PIPELINE, {"id": ticket["id"]}, headers=headers)
    assert "errors" not in body, body
    completed = body["data"]["completeUpload"]
    # Completing again changes nothing: still one file, one pipeline.
    again = await graphql(
        jobs_client, COMPLETE_WITH_PIPELINE, {"id": ticket["id"]}, headers=headers
    )
    assert_error(again, "CONFLICT")
    done = await wait(jobs_client, headers, completed["processing"]["id"])
    assert done["status"] == "SUCCEEDED", done
    assert [i["id"] for i in done["inputs"]] == [completed["id"]]
    listed = await graphql(
        jobs_client, "{ jobs(filter: {kind: PIPELINE}) { totalCount } }", headers=headers
    )
    assert listed["data"]["jobs"]["totalCount"] == 2, listed


FILE_PROCESSING = "query F($id: ID!) { node(id: $id) { ... on File { processing { id } } } }"


async def test_a_tus_upload_naming_a_template_starts_it_once_complete(
    jobs_client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(jobs_client)
    body = await graphql(
        jobs_client,
        CREATE_TEMPLATE,
        {"input": {"name": "web", "steps": [step("webp", {"convert": {"format": "WEBP"}})]}},
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
    url = httpx.URL(
        (
            await tus_create(
                jobs_client, headers, len(data), filename="cat.png", template=template["id"]
            )
        ).headers["location"]
    ).path
    half = len(data) // 2
    assert (await tus_patch(jobs_client, headers, url, 0, data[:half])).status_code == 204
    assert (await tus_patch(jobs_client, headers, url, half, data[half:])).status_code == 204
    files = await graphql(jobs_client, "{ files { edges { node { id path } } } }", headers=headers)
    [file] = [e["node"] for e in files["data"]["files"]["edges"]]
    found = await graphql(jobs_client, FILE_PROCESSING, {"id": file["id"]}, headers=headers)
    done = await wait(jobs_client, headers, found["data"]["node"]["processing"]["id"])
    assert done["status"] == "SUCCEEDED", done
    assert [i["id"] for i in done["inputs"]] == [file["id"]]
