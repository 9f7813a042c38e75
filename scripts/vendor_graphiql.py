"""Refresh GraphiQL's vendored assets from npm and write their integrity manifest.

    make graphiql                                      # fetch the pins below from npm
    .venv/bin/python scripts/vendor_graphiql.py --rehash  # after editing depot-graphiql.*

Depot serves GraphiQL itself (``api/graphiql.py``) so the page works without
internet and under a CSP that names no other origin. The files it serves live
in ``api/static/graphiql/``, inside the Python package, so the wheel and the
Docker image carry them. This script is the one way they change: it runs
``npm pack`` for each pinned package into a temporary directory (npm checks
each tarball against the registry's own integrity hash), copies out the few
files the page loads, keeps their licences, and writes ``manifest.json`` with
every served file's SHA-384 in SRI form. The page's ``integrity=`` attributes
come from that manifest, and ``tests/test_graphiql.py`` checks the committed
files against it.

To move to another version, change its pin below and run ``make graphiql``.
The UMD builds are used because they need no bundler: GraphiQL 4 is the last
major that ships one (GraphiQL 5 is ESM only), built against React 18's UMD
globals (React 19 has no UMD build).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from api.graphiql import ASSETS, sri  # the one definition of both

MANIFEST = ASSETS / "manifest.json"
LICENSES = ASSETS / "LICENSES.txt"

# package -> (pinned version, {path in the package: name served by Depot})
PINS: dict[str, tuple[str, dict[str, str]]] = {
    "react": ("18.3.1", {"umd/react.production.min.js": "react.production.min.js"}),
    "react-dom": ("18.3.1", {"umd/react-dom.production.min.js": "react-dom.production.min.js"}),
    "graphiql": (
        "4.1.2",
        {"graphiql.min.js": "graphiql.min.js", "graphiql.min.css": "graphiql.min.css"},
    ),
    "@graphiql/plugin-explorer": (
        "4.0.6",
        {"dist/index.umd.js": "plugin-explorer.umd.js", "dist/style.css": "plugin-explorer.css"},
    ),
}
# Depot's own files beside them (the page's script and layout), hashed the same way.
OWN = ("depot-graphiql.js", "depot-graphiql.css")


def _pack(spec: str, into: Path) -> tuple[Path, str]:
    """``npm pack`` one package version; the tarball and npm's integrity for it."""
    out = subprocess.run(  # noqa: S603 - npm on our own pins
        ["npm", "pack", spec, "--json", "--pack-destination", str(into)],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (info,) = json.loads(out)
    return into / info["filename"], info["integrity"]


def _license(tar: tarfile.TarFile, spec: str) -> str:
    """The package's LICENSE text, or its package.json licence when it ships no file."""
    names = tar.getnames()
    if "package/LICENSE" in names:
        member = tar.extractfile("package/LICENSE")
        assert member is not None
        text = member.read().decode().strip()
    else:
        member = tar.extractfile("package/package.json")
        assert member is not None
        declared = json.loads(member.read())["license"]
        text = f"{declared} (declared in package.json; the package ships no LICENSE file)"
    return f"== {spec} ==\n\n{text}\n"


def fetch(previous: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Copy the pinned files out of their npm tarballs; their provenance by served name."""
    sources: dict[str, dict[str, str]] = {}
    licenses: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, (version, files) in PINS.items():
            tarball, tarball_integrity = _pack(f"{package}@{version}", Path(tmp))
            with tarfile.open(tarball) as tar:
                for inner, served in files.items():
                    member = tar.extractfile(f"package/{inner}")
                    assert member is not None, f"{package}@{version} has no {inner}"
                    (ASSETS / served).write_bytes(member.read())
                    sources[served] = {
                        "package": f"{package}@{version}",
                        "path": inner,
                        "tarball": tarball_integrity,
                    }
                licenses.append(_license(tar, f"{package}@{version}"))
    for stale in set(previous) - set(sources) - set(OWN):
        (ASSETS / stale).unlink(missing_ok=True)
    LICENSES.write_text("\n".join(licenses))
    return sources


def write_manifest(sources: dict[str, dict[str, str]]) -> None:
    """Hash every served file into ``manifest.json``."""
    files: dict[str, dict[str, str]] = {}
    for name in sorted([*sources, *OWN]):
        files[name] = {"integrity": sri((ASSETS / name).read_bytes()), **sources.get(name, {})}
    manifest = {
        "about": "Written by scripts/vendor_graphiql.py (make graphiql); do not edit by hand.",
        "files": files,
    }
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rehash", action="store_true", help="re-hash the files in place; fetch nothing"
    )
    args = parser.parse_args()
    previous: dict[str, dict[str, str]] = {}
    if MANIFEST.exists():
        previous = json.loads(MANIFEST.read_text())["files"]
    if args.rehash:
        sources = {
            name: {k: v for k, v in entry.items() if k != "integrity"}
            for name, entry in previous.items()
            if name not in OWN
        }
    else:
        if shutil.which("npm") is None:
            print("npm is needed to fetch GraphiQL (Debian: apt-get install npm)", file=sys.stderr)
            return 1
        sources = fetch(previous)
    write_manifest(sources)
    for name, entry in json.loads(MANIFEST.read_text())["files"].items():
        print(f"{entry['integrity']}  {name}  {entry.get('package', '(Depot)')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
