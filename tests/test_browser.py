"""Stock frontend clients, unmodified, against a real ``depot serve``.

A page on another origin (Python's ``http.server`` on another loopback port,
serving what ``e2e/build.mjs`` bundled from ``e2e/src/``) runs Apollo Client
with apollo-upload-client and graphql-ws, urql, Relay, Uppy (AwsS3, and its
Dashboard with the Tus plugin), tus-js-client (cut off, then resumed) and
Apollo's persisted-query link in Debian's headless Chromium, driven by
``e2e/driver.mjs`` through playwright-core; this module asserts on what the
page reports. The uploads run again on S3 storage (moto), where the browser
PUTs to presigned URLs, and Uppy's AwsS3 plugin sends a multipart upload's
parts straight to S3, paused and resumed. The Python ``gql`` client runs here
too.

Without ``/usr/bin/chromium``, Node.js 20 or ``e2e/node_modules`` (``npm ci
--prefix e2e``) the browser tests skip, and fail when ``CI`` is set. A
scenario that fails leaves a screenshot in ``e2e/artifacts/``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from gql import Client, FileVar, GraphQLRequest, gql
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport
from PIL import Image

from tests.conftest import S3Server, make_settings
from tests.processes import (
    DEPOT,
    DepotProcess,
    answers_http,
    free_port,
    settings_env,
    wait_until_ready,
)
from tests.support import PASSWORD, storage_root

E2E = Path(__file__).resolve().parent.parent / "e2e"
ARTIFACTS = E2E / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# playwright-core's and graphql-ws's least (Debian bookworm's own nodejs is 18).
NODE_MAJOR = 20
# Generous for a loaded CI machine: on this 2-core one, shared, a build took 3 s and a
# driver run 5 to 15 s.
BUILD_TIMEOUT_S = 120
DRIVER_TIMEOUT_S = 240
SCENARIO_TIMEOUT_MS = 90_000


@dataclass(frozen=True)
class Api:
    """A running ``depot serve``: its base URL and its log."""

    url: str
    server: DepotProcess

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"


@pytest.fixture(scope="module")
def page_port() -> int:
    """Where the page will be served: known before Depot starts, which must allow its origin."""
    return free_port()


@contextlib.contextmanager
def _serve(
    directory: Path, database: Path, storage_url: str, cors_origins: list[str]
) -> Iterator[Api]:
    """``depot serve`` on a free port with the SQLite file ``database`` and ``storage_url``.

    ``DEPOT_PUBLIC_BASE_URL`` is left unset, as in development, so links
    lead to the address the page reached Depot at, not to localhost:8000.
    """
    settings = make_settings(
        directory,
        database_url=f"sqlite:///{database}",
        storage_url=storage_url,
        cors_origins=cors_origins,
    )
    env = settings_env(settings)
    env.pop("DEPOT_PUBLIC_BASE_URL", None)
    # The S3 test server's credentials, which the s3_server fixture put in the environment.
    env.update({name: value for name, value in os.environ.items() if name.startswith("AWS_")})
    port = free_port()
    log = directory / "depot.log"
    with log.open("ab") as output:
        # In a directory of its own: no developer's .env is read.
        process = subprocess.Popen(
            [str(DEPOT), "serve", "--port", str(port)],
            cwd=directory,
            env=env,
            stdout=output,
            stderr=output,
        )
    server = DepotProcess(process, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(
            process, answers_http(f"{url}/healthz"), "depot serve", output=server.output
        )
        yield Api(url, server)
    finally:
        server.stop()


def _database(directory: Path, request: pytest.FixtureRequest) -> Path:
    """A copy of the session's migrated SQLite database, so ``depot serve`` need not migrate."""
    database = directory / "depot.db"
    shutil.copyfile(request.getfixturevalue("_sqlite_template"), database)
    return database


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, page_port: int
) -> Iterator[Api]:
    """``depot serve`` on local storage for this module's tests, the page's origin allowed.

    One for the module: starting one takes seconds on a busy machine.
    """
    directory = tmp_path_factory.mktemp("browser")
    origins = [f"http://127.0.0.1:{page_port}"]
    with _serve(
        directory, _database(directory, request), storage_root(directory).as_uri(), origins
    ) as running:
        yield running


@pytest.fixture(scope="module")
def s3_api(
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    page_port: int,
    s3_server: S3Server,
) -> Iterator[Api]:
    """``depot serve`` on a fresh bucket whose CORS rule lets the page PUT to it.

    moto applies a bucket's CORS rules to preflights, as S3 does: without
    this rule the page's PUT to a presigned URL would fail its preflight.
    """
    directory = tmp_path_factory.mktemp("browser-s3")
    bucket = f"depot-e2e-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=s3_server.region)
    try:
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_cors(
            Bucket=bucket, CORSConfiguration=bucket_cors([f"http://127.0.0.1:{page_port}"])
        )
    finally:
        s3.close()
    origins = [f"http://127.0.0.1:{page_port}"]
    with _serve(
        directory, _database(directory, request), s3_server.storage_url(bucket), origins
    ) as running:
        yield running


def bucket_cors(origins: list[str]) -> dict[str, Any]:
    """The bucket CORS rule docs/api.md gives for browsers uploading straight to S3."""
    return {
        "CORSRules": [
            {
                "AllowedOrigins": origins,
                "AllowedMethods": ["PUT", "GET", "HEAD"],
                "AllowedHeaders": ["Content-Type"],
                "ExposeHeaders": ["ETag"],
                "MaxAgeSeconds": 600,
            }
        ]
    }


def _node_major(node: str) -> int:
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return int(version.stdout.strip().lstrip("v").split(".")[0] or 0)


@pytest.fixture(scope="module")
def node() -> str:
    """``node``'s path, once everything the browser test needs is here (skip or fail if not).

    Asked for before ``api``, so a machine without them skips without starting Depot.
    """
    node = shutil.which("node")
    missing = [
        *([] if node and _node_major(node) >= NODE_MAJOR else [f"Node.js {NODE_MAJOR} or newer"]),
        *([] if CHROMIUM.exists() else [f"{CHROMIUM} (Debian's chromium package)"]),
        *(
            []
            if (E2E / "node_modules" / "playwright-core").is_dir()
            else ["e2e/node_modules (run `npm ci --prefix e2e`)"]
        ),
    ]
    if missing:
        message = "the browser tests need " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{message}, and CI must run them")
        pytest.skip(message)
    assert node is not None
    return node


@contextlib.contextmanager
def static_server(directory: Path, port: int) -> Iterator[str]:
    """The built page served by Python's http.server on loopback ``port``: another origin."""
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_ready(process, answers_http(url), "the page's static server")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _scenario_failure(name: str, result: dict[str, Any], report: dict[str, Any], api: Api) -> str:
    return "\n".join(
        [
            f"scenario {name} failed: {result.get('error')}",
            f"GraphQL errors: {json.dumps(result.get('details'))}",
            f"screenshot: {result.get('screenshot')}",
            f"console errors: {report['console']}",
            f"failed requests: {report['failedRequests']}",
            "depot's log ends:",
            api.server.output()[-3000:],
        ]
    )


@pytest.fixture(scope="module")
def page(node: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page, built by e2e/build.mjs (relay-compiler, then esbuild) into a folder."""
    directory = tmp_path_factory.mktemp("page")
    built = subprocess.run(
        [node, str(E2E / "build.mjs"), str(directory)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert built.returncode == 0, f"e2e/build.mjs failed:\n{built.stdout}{built.stderr}"
    return directory


def _drive(
    node: str,
    page: Path,
    page_port: int,
    api: Api,
    storage: str,
    scenarios: list[str] | None = None,
) -> dict[str, Any]:
    """Serve ``page`` on ``page_port``, run the driver against ``api``; its report, all passed.

    Failures' screenshots go to ``e2e/artifacts/<storage>/<scenario>.png``.
    """
    with static_server(page, page_port) as page_url:
        driven = subprocess.run(
            [
                node,
                str(E2E / "driver.mjs"),
                *("--page", page_url, "--api", api.url),
                *("--artifacts", str(ARTIFACTS / storage)),
                *("--timeout-ms", str(SCENARIO_TIMEOUT_MS)),
                *(arg for name in scenarios or [] for arg in ("--scenario", name)),
            ],
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT_S,
            check=False,
        )
    assert driven.returncode == 0, f"driver.mjs failed:\n{driven.stdout}{driven.stderr}"
    report: dict[str, Any] = json.loads(driven.stdout)
    for name, result in report["scenarios"].items():
        assert result["ok"], _scenario_failure(name, result, report, api)
    # The tus scenario cuts its upload off mid-request on purpose: that request may fail,
    # and the resumed upload may meet the cut one's lease not given back yet (423) or its
    # offset moved on since the HEAD (409), which tus-js-client retries, as it should.
    tus = rf"{re.escape(api.url)}/files/tus/[0-9a-f]+"
    cut = re.compile(rf"PATCH {tus}: net::ERR_ABORTED")
    retried = re.compile(rf"Failed to load resource: .* status of (409|423) .* @ {tus}")
    console = [line for line in report["console"] if not retried.fullmatch(line)]
    assert console == [], report["console"]
    # Uppy's Dashboard previews a chosen image through object URLs (blob:) and drops them as
    # it re-renders; such a load aborted in the page never reaches a server.
    in_page = re.compile(r"GET blob:\S+: net::ERR_ABORTED")
    failed = [
        request
        for request in report["failedRequests"]
        if not cut.fullmatch(request) and not in_page.fullmatch(request)
    ]
    assert failed == [], report["failedRequests"]
    return report


def test_stock_browser_clients_from_another_origin(
    node: str, page: Path, page_port: int, api: Api
) -> None:
    # All but "multipart", which needs S3. GraphiQL, on Depot's own origin rather than the
    # page's, is tests/test_graphiql.py's.
    scenarios = ["apollo", "urql", "relay", "uppy", "tus", "persistedQueries"]
    report = _drive(node, page, page_port, api, "local", scenarios)
    access_log = api.server.output()
    assert list(report["scenarios"]) == scenarios
    # The browser preflights its PUT to a direct-upload link: the token stays out of the log.
    assert "method=OPTIONS path=/files/upload/<redacted>" in access_log
    assert "/files/upload/ey" not in access_log
    _check_apollo(report["scenarios"]["apollo"]["report"], api.url, put_status=204)
    _check_urql(report["scenarios"]["urql"]["report"], access_log)
    _check_relay(report["scenarios"]["relay"]["report"])
    _check_uppy(report["scenarios"]["uppy"]["report"])
    _check_tus(report["scenarios"]["tus"]["report"])
    _check_persisted_queries(report["scenarios"]["persistedQueries"]["report"])


def test_browser_uploads_straight_to_s3(node: str, page: Path, page_port: int, s3_api: Api) -> None:
    """On S3 storage a ticket is a presigned S3 PUT and a download a redirect to S3."""
    report = _drive(node, page, page_port, s3_api, "s3", ["apollo", "uppy", "multipart"])
    # S3 answers a PUT with 200 (Depot's own upload route, 204).
    _check_apollo(report["scenarios"]["apollo"]["report"], s3_api.url, put_status=200)
    _check_uppy(report["scenarios"]["uppy"]["report"])
    _check_multipart(report["scenarios"]["multipart"]["report"])


def _check_multipart(multipart: dict[str, Any]) -> None:
    """Uppy's AwsS3 plugin, multipart: paused after part 1, resumed by listing, completed;
    the second upload aborted, its reservation released."""
    assert multipart["signed"] == [
        "create",
        "part 1",
        "list",  # resumed: what S3 holds, through Depot
        "part 2",
        "complete",
        "create",
        "part 1",
        "abort",
    ]
    assert multipart["heldWhilePaused"] == [{"partNumber": 1, "size": 5 * MiB}]
    file = multipart["file"]
    assert (file["path"], file["size"]) == ("multipart/big.bin", multipart["size"])
    assert file["sha256"] == multipart["expectedSha256"]
    assert "/files/download/" in multipart["uploadURL"]
    assert multipart["uploadsLeft"] == 0
    assert int(multipart["usedBytes"]) == multipart["size"]


def _check_apollo(apollo: dict[str, Any], api_url: str, *, put_status: int) -> None:
    """Both uploads kept the bytes; the job's events arrived live; its thumbnails show."""
    for how in ("multipart", "direct"):
        assert apollo[how]["contentType"] == "image/png", apollo[how]
        assert apollo[how]["sha256"] == apollo[how]["expectedSha256"], apollo[how]
    assert apollo["direct"]["putStatus"] == put_status
    statuses = [event["status"] for event in apollo["events"]]
    assert statuses[-1] == "SUCCEEDED", statuses
    assert "RUNNING" in statuses, statuses
    assert apollo["renderedEvents"] == len(statuses)
    assert apollo["events"][-1]["progress"] == 1
    assert apollo["jobStatus"] == "SUCCEEDED"
    # myEvents, open since sign-in, told of both uploads, the job's thumbnails and its end.
    mine = apollo["myEvents"]
    created = sorted(event["path"] for event in mine if event["type"] == "FILE_CREATED")
    assert created == [
        "photos/canvas.png",
        "photos/canvas@128.png",
        "photos/canvas@64.png",
        "photos/direct.png",
    ], mine
    assert {"type": "JOB_STATUS", "status": "SUCCEEDED"}.items() <= mine[-1].items(), mine
    # The 320 x 200 canvas, its longest side made 64 and 128: loaded into <img>.
    sizes = sorted(
        (image["naturalWidth"], image["naturalHeight"]) for image in apollo["thumbnails"]
    )
    assert sizes == [(64, 40), (128, 80)], apollo["thumbnails"]
    # Links lead where the page reached Depot, not to the default public URL.
    assert all(
        image["src"].startswith(f"{api_url}/files/download/") for image in apollo["thumbnails"]
    )


def _check_urql(urql: dict[str, Any], access_log: str) -> None:
    """urql's multipart uploads, pages of two in path order, node(id:), a subscription."""
    assert urql["pages"] == [["notes/a.png", "notes/b.png"], ["notes/c.png"]]
    assert urql["totalCount"] == 3
    for info in urql["pageInfos"]:
        assert info["startCursor"] == info["firstCursor"]
        assert info["endCursor"] == info["lastCursor"]
        assert info["hasPreviousPage"] is False
    assert [info["hasNextPage"] for info in urql["pageInfos"]] == [True, False]
    assert urql["node"] == {**urql["node"], "__typename": "File", "path": "notes/b.png"}
    assert urql["node"]["id"] == urql["uploaded"][1]["id"]
    statuses = [event["status"] for event in urql["jobEvents"]]
    assert statuses[-1] == "SUCCEEDED", statuses
    # urql sends queries as GET (preferGetMethod "within-url-limit"), which Depot answers.
    assert "method=GET path=/graphql" in access_log


def _check_relay(relay: dict[str, Any]) -> None:
    """Relay's connection handler merged the pages fetched through its node(id:) refetch query."""
    assert relay["pages"] == [
        ["relay/a.png", "relay/b.png"],
        ["relay/c.png", "relay/d.png"],
        ["relay/e.png"],
    ]
    assert relay["merged"] == [f"relay/{name}.png" for name in "abcde"]
    assert relay["totalCount"] == 5
    assert "node(id: $id)" in relay["refetchQueryText"]
    assert relay["node"]["__typename"] == "File"
    assert relay["node"]["path"] == "relay/a.png"


def _check_uppy(uppy: dict[str, Any]) -> None:
    """Uppy's AwsS3 plugin PUT each file by a createUpload ticket; completeUpload made Files."""
    assert [file["path"] for file in uppy["files"]] == ["uppy/one.png", "uppy/two.png"]
    assert {file["contentType"] for file in uppy["files"]} == {"image/png"}


MiB = 1024 * 1024


def _check_tus(tus: dict[str, Any]) -> None:
    """tus-js-client resumed from the server's offset after its cut; Uppy's Dashboard sent one.

    The page's chunks are 1 MiB and it aborts once Chromium reports 1.5 MiB
    sent, while the second chunk's request is out: the server kept the first
    chunk and what had arrived of the second (Chromium reports upload progress
    in steps, so often all of it; tests/test_tus_client.py cuts requests at
    exact bytes).
    """
    cut, resumed = tus["cut"], tus["resumed"]
    assert MiB * 1.5 <= cut["cutAt"] <= 2 * MiB, tus
    [pending] = tus["pending"]
    assert (pending["path"], pending["length"]) == ("tus/resume.bin", tus["size"]), pending
    assert MiB <= pending["offset"] <= cut["cutAt"], tus
    assert resumed["previousUploads"] == 1, resumed
    head = resumed["headOffsets"][0]
    assert MiB <= head <= cut["cutAt"], resumed
    # The resumed upload went on from where the server was, not from 0.
    assert resumed["patchOffsets"][0] == head, resumed
    [file] = tus["files"]
    assert file["path"] == "tus/resume.bin"
    assert file["size"] == tus["size"]
    assert file["sha256"] == tus["expectedSha256"]
    dashboard = tus["dashboard"]
    [picked] = dashboard["files"]
    # Uppy names the file by its name (and sends relativePath "null", which is no path).
    assert picked["path"] == "dashboard.png"
    assert picked["contentType"] == "image/png"
    assert (picked["size"], picked["sha256"]) == (dashboard["size"], dashboard["expectedSha256"])


def _check_persisted_queries(persisted: dict[str, Any]) -> None:
    """Apollo's link: hash alone, the document once Depot did not know it, then the hash by GET."""
    assert persisted["me"] == [{"email": persisted["email"], "displayName": "Persisted"}] * 2
    sent = persisted["sent"]
    assert [(request["method"], request["query"], request["errorCodes"]) for request in sent] == [
        # A mutation goes by POST, its hash alone first too; then with its document.
        ("POST", False, ["PERSISTED_QUERY_NOT_FOUND"]),
        ("POST", True, []),
        ("GET", False, ["PERSISTED_QUERY_NOT_FOUND"]),  # the query's hash, unknown yet
        ("POST", True, []),  # sent along, registered (its hash checked)
        ("GET", False, []),  # the hash alone, by GET: what a CDN could cache
    ], sent
    register, query = (
        {sent[0]["sha256Hash"], sent[1]["sha256Hash"]},
        {request["sha256Hash"] for request in sent[2:]},
    )
    assert len(register) == len(query) == 1, sent
    assert all(len(digest) == 64 for digest in register | query), sent
    # Signed in, so never for a shared cache; the not-found answer never cached at all.
    assert sent[2]["cacheControl"] == "private, no-cache, must-revalidate"
    assert sent[4]["cacheControl"] == "no-store"


# -- the Python gql client --------------------------------------------------------------

REGISTER = "mutation ($input: RegisterInput!) { register(input: $input) { accessToken } }"
UPLOAD = (
    "mutation ($file: Upload!, $path: String) { uploadFile(file: $file, path: $path) {"
    " id path contentType } }"
)
ME = "query { me { email usage { fileCount } } }"
START = (
    "mutation ($id: ID!) { startJob(input: { thumbnails: { fileId: $id, sizes: [32] } }) { id } }"
)
JOB_EVENTS = "subscription ($id: ID!) { jobEvents(jobId: $id) { status progress } }"


@pytest.mark.anyio
async def test_python_gql_client_queries_uploads_and_subscribes(api: Api) -> None:
    png = io.BytesIO()
    Image.new("RGB", (48, 48), "teal").save(png, format="PNG")
    png.seek(0)
    # gql sends no CSRF-proof header on its own: Apollo's is one Depot accepts.
    anonymous = HTTPXAsyncTransport(api.graphql_url, headers={"Apollo-Require-Preflight": "true"})
    async with Client(transport=anonymous) as session:
        account = {"email": "gql@example.com", "password": PASSWORD, "displayName": "gql"}
        registered = await session.execute(
            GraphQLRequest(REGISTER, variable_values={"input": account})
        )
        token = registered["register"]["accessToken"]
    headers = {"Authorization": f"Bearer {token}", "Apollo-Require-Preflight": "true"}
    async with Client(transport=HTTPXAsyncTransport(api.graphql_url, headers=headers)) as session:
        file = FileVar(png, filename="square.png", content_type="image/png")
        upload = GraphQLRequest(UPLOAD, variable_values={"file": file, "path": "gql/square.png"})
        uploaded = (await session.execute(upload, upload_files=True))["uploadFile"]
        assert uploaded["path"] == "gql/square.png"
        assert uploaded["contentType"] == "image/png"
        me = (await session.execute(gql(ME)))["me"]
        assert me == {"email": "gql@example.com", "usage": {"fileCount": 1}}
        start = GraphQLRequest(START, variable_values={"id": uploaded["id"]})
        job_id = (await session.execute(start))["startJob"]["id"]

    sockets = WebsocketsTransport(
        url=api.graphql_url.replace("http", "ws", 1),
        init_payload={"Authorization": f"Bearer {token}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    async with Client(transport=sockets) as session:
        events = session.subscribe(GraphQLRequest(JOB_EVENTS, variable_values={"id": job_id}))
        statuses = [event["jobEvents"]["status"] async for event in events]
    assert statuses[-1] == "SUCCEEDED", statuses
