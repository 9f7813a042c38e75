"""Every job kind Depot runs, by name."""

from __future__ import annotations

from core.models import JobKind
from workers import archive, convert, extract, thumbnails, verify
from workers.kind import Kind

KINDS: dict[JobKind, Kind] = {
    kind.name: kind
    for kind in (
        verify.KIND,
        thumbnails.KIND,
        convert.KIND,
        archive.KIND,
        extract.KIND,
    )
}
