"""GraphiQL works with no internet: Depot serves the page and every file it loads.

Checked over HTTP: the committed files match their manifest, the page names
no other origin and carries a strict CSP, and each file it references answers
with the right type, long-lived caching and the bytes its ``integrity=``
promises. Then once in headless Chromium: GraphiQL renders, runs a query and
a subscription signed in from the headers pane, with no CSP violation and no
request leaving Depot's origin. That check needs ``node``, ``chromium`` on
PATH and playwright-core in ``e2e/node_modules`` (``npm ci --prefix e2e``):
without them it skips, and fails when ``CI`` is set; a failure leaves a
screenshot in ``e2e/artifacts/``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.graphiql import ASSETS, GraphiQL
from core.settings import Settings
from tests.conftest import make_settings, serve_app
from tests.processes import depot_serve, free_port
from tests.support import PASSWORD

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
PLAYWRIGHT = ROOT / "e2e" / "node_modules" / "playwright-core"
# Where a failed browser check leaves its screenshot (gitignored; CI keeps it).
ARTIFACTS = ROOT / "e2e" / "artifacts"
API_DOCS = ROOT / "docs" / "api.md"
# playwright-core's least.
NODE_MAJOR = 20
BROWSER_ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"
# Files beside the served ones that the page does not load.
NOT_SERVED = {"manifest.json", "LICENSES.txt"}
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def _sri(data: bytes) -> str:
    # Computed here, not with api.graphiql's helper: the test checks that one too.
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def _manifest() -> dict[str, dict[str, str]]:
    files: dict[str, dict[str, str]] = json.loads((ASSETS / "manifest.json").read_text())["files"]
    return files


class _References(HTMLParser):
    """Every URL-bearing attribute of a page, with its element's other attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if any(name in attributes for name in ("src", "href", "action", "srcset")):
            self.found.append((tag, attributes))


def _loaded(html: str) -> list[tuple[str, str]]:
    """The (URL, integrity) of each script and stylesheet a page loads."""
    parser = _References()
    parser.feed(html)
    return [
        (attributes.get("src") or attributes.get("href") or "", attributes.get("integrity") or "")
        for tag, attributes in parser.found
        if tag == "script" or attributes.get("rel") == "stylesheet"
    ]


def _policy(header: str) -> dict[str, list[str]]:
    directives = (d.split() for d in header.split(";") if d.strip())
    return {name: values for name, *values in directives}


@pytest.fixture
def database_url(_sqlite_template: Path, tmp_path: Path) -> str:
    # The page does not touch the database: SQLite alone is enough here.
    path = tmp_path / "depot.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


async def _page(client: httpx.AsyncClient) -> httpx.Response:
    response = await client.get("/graphql", headers={"accept": BROWSER_ACCEPT})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    return response


# -- the committed files ----------------------------------------------------------


def test_committed_files_match_the_manifest() -> None:
    manifest = _manifest()
    on_disk = {p.name for p in ASSETS.iterdir()} - NOT_SERVED
    assert on_disk == set(manifest), "api/static/graphiql/ and manifest.json list other files"
    for name, entry in manifest.items():
        assert _sri((ASSETS / name).read_bytes()) == entry["integrity"], (
            f"{name} does not match manifest.json: run `make graphiql` (or "
            "`python scripts/vendor_graphiql.py --rehash` after editing Depot's own files)"
        )
        if not name.startswith("depot-"):
            # Vendored: pinned to one version of an npm package, whose licence is kept.
            package = entry["package"]
            assert "@" in package.lstrip("@"), f"{name} names no pinned version"
            assert f"== {package} ==" in (ASSETS / "LICENSES.txt").read_text()
            version = package.rsplit("@", 1)[1]
            assert version in API_DOCS.read_text(), f"docs/api.md does not name {package}"


def test_a_changed_file_stops_the_start(tmp_path: Path) -> None:
    copy = tmp_path / "graphiql"
    shutil.copytree(ASSETS, copy)
    script = copy / "depot-graphiql.js"
    script.write_text(script.read_text() + "\n// changed\n")
    with pytest.raises(RuntimeError, match=r"depot-graphiql\.js does not match its hash"):
        GraphiQL.load(copy)


def test_the_package_ships_the_files() -> None:
    # Package data, so the wheel (and the Docker image installed from it) carry them all.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"].get("api", [])
    for path in ASSETS.iterdir():
        relative = path.relative_to(ROOT / "api").as_posix()
        assert any(fnmatch(relative, p) for p in patterns), f"api/{relative} is no package data"


# -- the page and its files over HTTP ------------------------------------------------


async def test_page_has_a_strict_csp(client: httpx.AsyncClient) -> None:
    first, second = await _page(client), await _page(client)
    policy = _policy(first.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    # Styles from 'self', and the one <style> GraphiQL's dialogs add, by nonce.
    (nonce,) = (v for v in policy["style-src"] if v.startswith("'nonce-"))
    assert policy["style-src"] == ["'self'", nonce]
    assert f'nonce="{nonce[7:-1]}"' in first.text
    assert nonce not in second.headers["content-security-policy"], "the nonce is per page"
    # Its own WebSocket for subscriptions, and nothing else.
    assert policy["connect-src"] == ["'self'", "ws://depot.test", "wss://depot.test"]
    for name, values in policy.items():
        assert not {"'unsafe-inline'", "'unsafe-eval'"} & set(values), name
        outside = [v for v in values if "://" in v and not v.endswith("://depot.test")]
        assert not outside, f"{name} names another origin: {outside}"
        assert not {"*", "http:", "https:", "ws:", "wss:", "data:"} & set(values) or name in (
            "img-src",
            "font-src",
        ), f"{name} allows a whole scheme"
    assert first.headers["cache-control"] == "no-store"


async def test_a_strange_host_header_cannot_widen_the_policy(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/graphql", headers={"accept": BROWSER_ACCEPT, "host": "x; script-src *"}
    )
    policy = _policy(response.headers["content-security-policy"])
    assert policy["script-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]


async def test_page_refers_to_no_other_origin(client: httpx.AsyncClient) -> None:
    page = await _page(client)
    parser = _References()
    parser.feed(page.text)
    for tag, attributes in parser.found:
        url = attributes.get("src") or attributes.get("href") or ""
        assert url.startswith("/graphiql/") or url == "data:,", f"<{tag}> loads {url!r}"
    assert "//" not in page.text.replace("<!doctype html>", ""), "an absolute URL in the page"
    assert "<script>" not in page.text, "an inline script in the page"
    assert "<style" not in page.text, "an inline style in the page"


async def test_every_file_the_page_loads_answers_with_its_hash(
    client: httpx.AsyncClient,
) -> None:
    loaded = _loaded((await _page(client)).text)
    names = {url.rsplit("/", 1)[1] for url, _ in loaded}
    assert names == set(_manifest()), "the page loads every served file, and only those"
    for url, integrity in loaded:
        assert integrity == _manifest()[url.rsplit("/", 1)[1]]["integrity"]
        response = await client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"] == CONTENT_TYPES[Path(url).suffix]
        assert _sri(response.content) == integrity, f"{url} does not match its integrity="
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["x-content-type-options"] == "nosniff"
        again = await client.get(url, headers={"if-none-match": response.headers["etag"]})
        assert again.status_code == 304
        assert again.content == b""


async def test_a_stale_or_unknown_file_is_404(client: httpx.AsyncClient) -> None:
    url, _ = _loaded((await _page(client)).text)[-1]
    _, prefix, digest, name = url.split("/")
    head = await client.head(url)
    assert head.status_code == 200
    assert head.content == b""
    # An old URL must not be cached with new bytes, so a digest that is not current is a 404.
    for wrong in (f"/{prefix}/{'0' * len(digest)}/{name}", f"/{prefix}/{digest}/manifest.json"):
        assert (await client.get(wrong)).status_code == 404, wrong


async def test_without_graphiql_neither_page_nor_files(
    client: httpx.AsyncClient, tmp_path: Path, settings: Settings
) -> None:
    url, _ = _loaded((await _page(client)).text)[-1]
    off = make_settings(tmp_path, database_url=settings.database_url, graphiql=False)
    async with serve_app(off) as off_client:
        page = await off_client.get("/graphql", headers={"accept": BROWSER_ACCEPT})
        assert page.status_code == 404
        assert (await off_client.get(url)).status_code == 404


# -- in a browser ---------------------------------------------------------------------

# Driven by playwright-core from e2e/node_modules against Debian's chromium.
# Prints one JSON object: what happened, for the test to judge.
DRIVER = r"""
const config = JSON.parse(process.argv[2]);
const { chromium } = await import(config.playwright);
const ctx = await chromium.launchPersistentContext(config.profile, {
  executablePath: config.chromium,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const out = { console: [], errors: [], outside: [], sent: [], results: {} };
const page = ctx.pages()[0] ?? (await ctx.newPage());
try {
  // Every request the page makes is seen here; one to another origin is refused.
  await ctx.route("**/*", (route) => {
    const url = route.request().url();
    if (new URL(url).origin === config.origin) return route.continue();
    out.outside.push(url);
    return route.abort();
  });
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}`));
  });
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.errors.push(e.message));
  page.on("websocket", (ws) => {
    if (new URL(ws.url()).host !== new URL(config.origin).host) out.outside.push(ws.url());
    ws.on("framesent", (f) => out.sent.push(JSON.parse(f.payload)));
  });
  await page.goto(config.origin + "/graphql");
  await page.waitForSelector(".graphiql-query-editor .CodeMirror", { timeout: 30000 });
  const result = () => page.innerText(".result-window");
  const run = async (query) => {
    await page.evaluate(([q, headers]) => {
      document.querySelector(".graphiql-query-editor .CodeMirror").CodeMirror.setValue(q);
      document.querySelector(".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror")
        .CodeMirror.setValue(headers);
    }, [query, JSON.stringify({ Authorization: `Bearer ${config.token}` })]);
    // GraphiQL parses the edited query a moment later, and only then knows a
    // subscription for one (sent over the WebSocket, not over HTTP).
    await page.waitForFunction((q) => document.querySelector(".graphiql-query-editor .CodeMirror")
      .CodeMirror.documentAST?.loc?.source?.body === q, query, { timeout: 10000 });
    await page.click(".graphiql-execute-button");
  };
  const shows = (text, timeout = 20000) => page.waitForFunction(
    (t) => document.querySelector(".result-window")?.innerText.includes(t), text, { timeout });

  await run("{ me { email } }");
  await shows(config.email);
  out.results.query = await result();

  await run("subscription { myEvents { type } }");
  for (let i = 0; i < 200 && !out.sent.some((m) => m.type === "subscribe"); i++) {
    await page.waitForTimeout(50);
  }
  // Something for the subscription to tell: a file uploaded and deleted from
  // the page's origin. The server may not follow the events yet when the
  // subscribe message is out (the protocol acknowledges none): repeat until one shows.
  for (let attempt = 1; attempt <= 10; attempt++) {
    await page.evaluate(async ([token, path]) => {
      const auth = { Authorization: `Bearer ${token}` };
      const form = new FormData();
      form.append("operations", JSON.stringify({
        query: "mutation ($f: Upload!, $p: String) { uploadFile(file: $f, path: $p) { id } }",
        variables: { f: null, p: path },
      }));
      form.append("map", JSON.stringify({ 0: ["variables.f"] }));
      form.append("0", new Blob(["hello"]), "hello.txt");
      const upload = await (await fetch("/graphql", { method: "POST", body: form,
        headers: { ...auth, "x-depot-csrf": "1" } })).json();
      const deleted = await (await fetch("/graphql", { method: "POST",
        headers: { ...auth, "content-type": "application/json" },
        body: JSON.stringify({ query: "mutation ($id: ID!) { deleteFile(id: $id) { id } }",
                               variables: { id: upload.data?.uploadFile?.id } }) })).json();
      if (upload.errors || deleted.errors) throw new Error(JSON.stringify([upload, deleted]));
    }, [config.token, `hello-${Date.now()}-${attempt}.txt`]);
    if (await shows("FILE_DELETED", 1000).then(() => true, () => false)) break;
  }
  await shows("FILE_DELETED");
  out.results.subscription = await result();

  // The explorer plugin and a dialog (which adds the nonce'd <style>).
  await page.click('[aria-label="Show GraphiQL Explorer"]');
  await page.waitForSelector(".graphiql-explorer-root", { timeout: 10000 });
  await page.click('[aria-label="Open settings dialog"]');
  await page.waitForSelector('[role="dialog"]', { timeout: 10000 });
  await page.waitForTimeout(300);
  out.violations = await page.evaluate(() => window.__violations);
} catch (e) {
  out.errors.push(`driver: ${e.message}`);
  out.results.failed = await page.innerText("body").catch(() => "");
  await page.screenshot({ path: config.screenshot }).catch(() => {});
} finally {
  await ctx.close();
}
console.log(JSON.stringify(out));
"""


@pytest.fixture
def browser_tools() -> tuple[str, str]:
    """``node`` and ``chromium``, with playwright-core installed: skip without them, fail in CI.

    Asked for before ``served``, so a machine without them skips before starting Depot.
    """
    node, chromium = shutil.which("node"), shutil.which("chromium")
    missing = [
        what
        for what, present in (
            (f"Node.js {NODE_MAJOR} or newer", node and _node_major(node) >= NODE_MAJOR),
            ("chromium (Debian's chromium package)", chromium),
            ("playwright-core (npm ci --prefix e2e)", (PLAYWRIGHT / "index.mjs").exists()),
        )
        if not present
    ]
    if missing:
        message = "GraphiQL's browser check needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message + ", but CI must run it")
        pytest.skip(message)
    assert node is not None
    assert chromium is not None
    return node, chromium


def _node_major(node: str) -> int:
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return int(version.stdout.strip().lstrip("v").split(".")[0] or 0)


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[str]:
    """A real ``depot serve`` on a loopback port (Chromium needs a socket): its origin."""
    settings = make_settings(tmp_path, database_url=database_url)
    port = free_port()
    with depot_serve(settings, tmp_path / "depot.log", port):
        yield f"http://127.0.0.1:{port}"


def test_graphiql_runs_in_chromium_offline(
    browser_tools: tuple[str, str], served: str, tmp_path: Path
) -> None:
    node, chromium = browser_tools
    email = "ada@example.com"
    registered = httpx.post(
        f"{served}/graphql",
        json={
            "query": "mutation ($i: RegisterInput!) { register(input: $i) { accessToken } }",
            "variables": {"i": {"email": email, "password": PASSWORD, "displayName": "Ada"}},
        },
    ).json()
    config = {
        "playwright": (PLAYWRIGHT / "index.mjs").as_uri(),
        "chromium": chromium,
        "profile": str(tmp_path / "profile"),
        "origin": served,
        "token": registered["data"]["register"]["accessToken"],
        "email": email,
        "screenshot": str(ARTIFACTS / "test_graphiql-failure.png"),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = tmp_path / "driver.mjs"
    driver.write_text(DRIVER)
    ran = subprocess.run(
        [node, str(driver), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    out: dict[str, Any] = json.loads(ran.stdout.strip().splitlines()[-1])
    assert not out["errors"], out
    assert out["outside"] == [], "a request left Depot's origin"
    assert out["violations"] == [], "the page broke its own CSP"
    assert not [line for line in out["console"] if "Content Security Policy" in line]
    assert email in out["results"]["query"]
    assert "FILE_DELETED" in out["results"]["subscription"]
    # The headers pane went with the subscription, as its connection_init payload.
    (init,) = [m for m in out["sent"] if m["type"] == "connection_init"]
    assert init["payload"] == {"Authorization": f"Bearer {config['token']}"}
