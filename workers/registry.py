"""Every job kind Depot runs, by name: adding a kind is one line here.

The order is the schema's: ``JobInput``'s fields and ``JobKind``'s values
follow it.
"""

from __future__ import annotations

from workers import archive, convert, extract, thumbnails, transcode, verify
from workers.kind import Kind

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        thumbnails.KIND,
        convert.KIND,
        transcode.KIND,
        archive.KIND,
        extract.KIND,
        verify.KIND,
    )
}
