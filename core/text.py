"""Checks on text that people show to other people: names and paths."""

from __future__ import annotations

import re

# Control characters and bidirectional controls (marks, embeddings, overrides,
# isolates): invisible, and used to make "invoice\u202efdp.exe" read as a PDF.
_INVISIBLE_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def has_invisible_controls(text: str) -> bool:
    """Whether ``text`` holds a control character or a bidirectional control."""
    return _INVISIBLE_CONTROLS.search(text) is not None
