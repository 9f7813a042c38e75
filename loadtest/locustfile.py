"""A Depot user as Locust plays it: point it at any base URL.

    locust -f loadtest/locustfile.py --host http://localhost:8000

Each simulated user registers an account of its own once, then visits again
and again: it signs in, pages through its files, uploads a small image
(multipart) and a large file (a direct upload: ``createUpload``, the bytes
with the ticket's method to its URL, ``completeUpload``), starts a
thumbnails job and follows its events over the WebSocket until the job
ends, downloads a file through its ``downloadUrl``, and signs out. Any
GraphQL error, an unexpected status or a job that does not succeed is a
failure. loadtest/README.md says how to run it against compose or a cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import struct
import time
import zlib
from typing import Any
from urllib.parse import urlsplit

import gevent
import locust.stats
import websocket
from locust import HttpUser, SequentialTaskSet, between, task
from locust.exception import InterruptTaskSet

LARGE_UPLOAD_BYTES = int(os.environ.get("LOADTEST_LARGE_UPLOAD_MIB", "8")) * 1024 * 1024
"""Size of each visit's direct upload; the multipart one is a few KiB."""
JOB_TIMEOUT_S = float(os.environ.get("LOADTEST_JOB_TIMEOUT_SECONDS", "120"))
"""How long a job may take, queued and running, before it counts as failed."""
WAIT_SECONDS = tuple(float(x) for x in os.environ.get("LOADTEST_WAIT_SECONDS", "0.5-2").split("-"))
"""How long a user pauses between two steps, at least and at most."""
VISITS = int(os.environ.get("LOADTEST_VISITS", "0"))
"""With a positive number the run ends once every user has made that many whole
visits (a smoke test that every step works); 0 runs until ``--run-time``."""
PAGE_SIZE = 10
PAGES = 3

_LARGE = secrets.token_bytes(LARGE_UPLOAD_BYTES)
"""One random blob, made once: every large upload sends it (the paths differ)."""

SIGN_IN = """mutation SignIn($input: LoginInput!) {
  login(input: $input) { accessToken refreshToken user { id } } }"""
REGISTER = """mutation Register($input: RegisterInput!) {
  register(input: $input) { accessToken refreshToken user { id } } }"""
FILES = """query Files($first: Int!, $after: String) {
  files(first: $first, after: $after, orderBy: {field: CREATED_AT, direction: DESC}) {
    totalCount pageInfo { hasNextPage endCursor }
    edges { node { id path size contentType } } } }"""
UPLOAD = """mutation Upload($file: Upload!, $path: String!) {
  uploadFile(file: $file, path: $path) { id size } }"""
CREATE_UPLOAD = """mutation CreateUpload($input: CreateUploadInput!) {
  createUpload(input: $input) { id url method headers } }"""
COMPLETE_UPLOAD = """mutation CompleteUpload($id: ID!) { completeUpload(id: $id) { id size } }"""
START_JOB = """mutation Thumbnails($fileId: ID!) {
  startJob(input: {thumbnails: {fileId: $fileId, sizes: [32]}}) { id status } }"""
JOB_EVENTS = """subscription Events($id: ID!) {
  jobEvents(jobId: $id) { cursor status progress message } }"""
DOWNLOAD_URL = """query DownloadUrl($id: ID!) { file(id: $id) { downloadUrl size } }"""
SIGN_OUT = """mutation SignOut($token: String!) { logout(refreshToken: $token) }"""

FINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}

_VISITS: dict[str, int] = {}
"""Whole visits (sign-out included) each user of this run has made, by email."""


def png(width: int = 64, height: int = 64) -> bytes:
    """A small, valid RGB PNG of random colours, so a thumbnails job has work to do."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + secrets.token_bytes(width * 3) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class Visit(SequentialTaskSet):
    """One visit, step by step; the user waits between steps as a person would."""

    access_token = ""
    refresh_token = ""
    image_id = ""
    large_id = ""

    def graphql(self, name: str, query: str, **variables: Any) -> dict[str, Any]:
        """POST one operation; any GraphQL error fails the request (and the visit)."""
        headers = {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}
        with self.client.post(
            "/graphql",
            json={"query": query, "variables": variables},
            headers=headers,
            name=name,
            catch_response=True,
        ) as response:
            return _data(response)

    @task
    def sign_in(self) -> None:
        payload = self.graphql(
            "login",
            SIGN_IN,
            input={"email": self.user.email, "password": self.user.password},
        )["login"]
        self.access_token, self.refresh_token = payload["accessToken"], payload["refreshToken"]

    @task
    def page_through_files(self) -> None:
        after = None
        for _ in range(PAGES):
            files = self.graphql("files", FILES, first=PAGE_SIZE, after=after)["files"]
            if not files["pageInfo"]["hasNextPage"]:
                break
            after = files["pageInfo"]["endCursor"]

    @task
    def upload_small_image(self) -> None:
        path = f"photos/{secrets.token_hex(8)}.png"
        operations = {"query": UPLOAD, "variables": {"file": None, "path": path}}
        with self.client.post(
            "/graphql",
            data={
                "operations": json.dumps(operations),
                "map": json.dumps({"0": ["variables.file"]}),
            },
            files={"0": ("photo.png", png(), "image/png")},
            headers={"Authorization": f"Bearer {self.access_token}", "x-depot-csrf": "1"},
            name="uploadFile (multipart)",
            catch_response=True,
        ) as response:
            self.image_id = _data(response)["uploadFile"]["id"]

    @task
    def upload_large_file(self) -> None:
        ticket = self.graphql(
            "createUpload",
            CREATE_UPLOAD,
            input={"path": f"uploads/{secrets.token_hex(8)}.bin", "size": len(_LARGE)},
        )["createUpload"]
        with self.client.request(
            ticket["method"],
            ticket["url"],
            data=_LARGE,
            headers=ticket["headers"],
            name="direct upload (bytes)",
            catch_response=True,
        ) as response:
            if response.status_code not in (200, 204):
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                raise InterruptTaskSet
        completed = self.graphql("completeUpload", COMPLETE_UPLOAD, id=ticket["id"])
        self.large_id = completed["completeUpload"]["id"]

    @task
    def start_a_job_and_follow_it(self) -> None:
        job = self.graphql("startJob", START_JOB, fileId=self.image_id)["startJob"]
        self.user.follow_job(job["id"], self.access_token)

    @task
    def download(self) -> None:
        for file_id in (self.image_id, self.large_id):
            file = self.graphql("downloadUrl", DOWNLOAD_URL, id=file_id)["file"]
            received = 0
            with self.client.get(
                file["downloadUrl"], name="download", stream=True, catch_response=True
            ) as response:
                for block in response.iter_content(64 * 1024):
                    received += len(block)
                if response.status_code != 200 or received != file["size"]:
                    response.failure(f"status {response.status_code}, {received} bytes")

    @task
    def sign_out(self) -> None:
        self.graphql("logout", SIGN_OUT, token=self.refresh_token)
        self.access_token = self.refresh_token = ""
        self.user.visit_made()


def _data(response: Any) -> dict[str, Any]:
    """The ``data`` of a GraphQL answer; otherwise a failure, and the visit starts over."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or body.get("errors"):
        response.failure(f"status {response.status_code}: {response.text[:300]}")
        raise InterruptTaskSet
    data: dict[str, Any] = body["data"]
    return data


class DepotUser(HttpUser):
    """A person using a Depot frontend: an account of its own, visit after visit."""

    tasks = [Visit]  # noqa: RUF012 - Locust's own attribute, read once per user class
    wait_time = between(*WAIT_SECONDS)

    email = ""
    password = ""

    def on_start(self) -> None:
        self.email = f"load-{secrets.token_hex(8)}@example.com"
        self.password = secrets.token_urlsafe(18)
        _VISITS[self.email] = 0
        # A failure is reported; the visits then fail to sign in, visibly.
        with (
            contextlib.suppress(InterruptTaskSet),
            self.client.post(
                "/graphql",
                json={
                    "query": REGISTER,
                    "variables": {
                        "input": {
                            "email": self.email,
                            "password": self.password,
                            "displayName": "Load test",
                        }
                    },
                },
                name="register",
                catch_response=True,
            ) as response,
        ):
            _data(response)

    def visit_made(self) -> None:
        """Count a whole visit; with ``LOADTEST_VISITS``, end the run once every user
        has made that many (visits still in progress are cut short, unreported)."""
        _VISITS[self.email] += 1
        runner = self.environment.runner
        if (
            VISITS
            and runner is not None
            and len(_VISITS) >= runner.target_user_count
            and min(_VISITS.values()) >= VISITS
        ):
            # From a greenlet of its own: quitting stops every user, this one too. Not at
            # once: Locust writes --csv files every CSV_STATS_INTERVAL_SEC and not again
            # when it quits, so a quit right after this visit's last request left that
            # request out of the stats file.
            gevent.spawn_later(locust.stats.CSV_STATS_INTERVAL_SEC + 0.5, runner.quit)

    def follow_job(self, job_id: str, token: str) -> None:
        """Subscribe to ``jobEvents`` over graphql-transport-ws until the job ends.

        Reported as one WebSocket "request" whose time runs from the
        subscription to the final event: what a person watching it waits.
        """
        base = urlsplit(self.host)
        url = f"{'wss' if base.scheme == 'https' else 'ws'}://{base.netloc}{base.path.rstrip('/')}/graphql"
        started = time.perf_counter()
        events = 0
        failure: Exception | None = None
        try:
            # No Origin header: this is not a browser, as Depot's origin check knows.
            connection = websocket.create_connection(
                url,
                subprotocols=["graphql-transport-ws"],
                timeout=JOB_TIMEOUT_S,
                suppress_origin=True,
            )
            try:
                connection.send(
                    json.dumps(
                        {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
                    )
                )
                if json.loads(connection.recv())["type"] != "connection_ack":
                    raise RuntimeError("no connection_ack")
                connection.send(
                    json.dumps(
                        {
                            "id": "1",
                            "type": "subscribe",
                            "payload": {"query": JOB_EVENTS, "variables": {"id": job_id}},
                        }
                    )
                )
                status = ""
                deadline = started + JOB_TIMEOUT_S
                while time.perf_counter() < deadline:
                    message = json.loads(connection.recv())
                    if message["type"] == "ping":
                        connection.send(json.dumps({"type": "pong"}))
                    elif message["type"] == "next":
                        if message["payload"].get("errors"):
                            raise RuntimeError(f"errors: {message['payload']['errors']}")
                        events += 1
                        status = message["payload"]["data"]["jobEvents"]["status"]
                    elif message["type"] == "complete":
                        break
                    elif message["type"] == "error":
                        raise RuntimeError(f"error: {message['payload']}")
                else:
                    raise TimeoutError(f"job {job_id} did not end within {JOB_TIMEOUT_S} s")
                if status != "SUCCEEDED":
                    raise RuntimeError(f"job {job_id} ended {status or 'without an event'}")
            finally:
                connection.close()
        except Exception as exc:  # noqa: BLE001 - every failure is reported to Locust
            failure = exc
        self.environment.events.request.fire(
            request_type="WS",
            name="jobEvents (until final)",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=events,
            exception=failure,
            context={},
        )
        if failure is not None:
            raise InterruptTaskSet
