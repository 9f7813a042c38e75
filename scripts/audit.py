"""Check every locked package against known vulnerabilities: `make audit`, and CI.

    python scripts/audit.py requirements/dev.txt [--require-feed]

Runs pip-audit on the lock file itself (hashed, so pip-audit resolves
nothing and installs nothing) and fails on any known vulnerability, naming
the fixed versions. pip-audit asks PyPI's JSON API about each release; a
package that API does not answer for is skipped, not failed. Where it
answers for none (a mirror or proxy that serves only the package index),
nothing was audited: this says so loudly and exits 0, or 1 with
``--require-feed``, so that a machine with the feed can insist on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PIP_AUDIT = Path(sys.executable).parent / "pip-audit"


def main(lock: str, *, require_feed: bool) -> int:
    run = subprocess.run(  # noqa: S603 - our own tool on our own lock file
        [
            str(PIP_AUDIT),
            *("--requirement", lock),
            "--require-hashes",
            "--disable-pip",
            *("--format", "json"),
            *("--progress-spinner", "off"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(run.stdout)
    except ValueError:
        print(f"pip-audit failed (exit {run.returncode}):\n{run.stderr}", file=sys.stderr)
        return 2
    dependencies = report["dependencies"]
    skipped = [dep for dep in dependencies if "skip_reason" in dep]
    audited = [dep for dep in dependencies if "skip_reason" not in dep]
    vulnerable = [dep for dep in audited if dep["vulns"]]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixed = ", ".join(vuln["fix_versions"]) or "no fixed release yet"
            print(f"✗ {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixed})")
    print(
        f"{lock}: {len(audited)} packages audited, {len(vulnerable)} vulnerable, "
        f"{len(skipped)} skipped"
    )
    if vulnerable:
        print("Raise the pins (`make lock LOCK_ARGS='--upgrade-package NAME'`) and test.")
        return 1
    if skipped and not audited:
        print(
            "NOTHING WAS AUDITED: PyPI's vulnerability data did not answer for any package "
            f"({skipped[0]['skip_reason']}). The index this machine reaches serves packages "
            "but not the per-release JSON API pip-audit reads.",
            file=sys.stderr,
        )
        return 1 if require_feed else 0
    for dep in skipped:
        print(f"• skipped {dep['name']}: {dep['skip_reason']}")
    return 0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    require_feed = "--require-feed" in arguments
    (lock,) = [argument for argument in arguments if argument != "--require-feed"]
    sys.exit(main(lock, require_feed=require_feed))
