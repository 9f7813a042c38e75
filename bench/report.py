"""How every bench prints its figures: aligned tables, milliseconds, ratios, verdicts.

One place, so that the three reports read alike and a figure is formatted the
same way wherever it appears.
"""

from __future__ import annotations

import os
import platform
import statistics
from importlib.metadata import version
from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB


def table(rows: list[list[str]], indent: str = "") -> list[str]:
    """Rows as aligned text: the first column to the left, the others to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent
        + "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def ms(seconds: float) -> str:
    """``0.0123`` as ``12.3 ms``."""
    return f"{seconds * 1000:.1f} ms"


def times(ratio: float) -> str:
    """A ratio to a baseline, as ``0.42x``."""
    return f"{ratio:.2f}x"


def percentile(samples: list[float], p: int) -> float:
    """The ``p``-th percentile (1..99), interpolated between samples."""
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def verdict(ok: bool, what: str = "its target") -> str:
    return f"meets {what}" if ok else f"MISSES {what}"


def environment(*distributions: str) -> str:
    """The line that says what ran: Python, the packages that matter, the machine."""
    packages = "".join(f", {name} {version(name)}" for name in distributions)
    return (
        f"Python {platform.python_version()}{packages}, {platform.machine()}, {os.cpu_count()} CPUs"
    )
