"""The schema's public surface: the checked-in SDL snapshot, and opaque global ids."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from core.errors import BadUserInput
from schema import export_sdl
from schema.ids import decode_id, decode_id_of, encode_id

SDL_SNAPSHOT = Path(__file__).resolve().parent.parent / "schema.graphql"


def test_checked_in_sdl_matches_the_schema() -> None:
    # Like httpx's __all__ test: the API cannot change without the snapshot changing too.
    assert SDL_SNAPSHOT.read_text(encoding="utf-8") == export_sdl(), (
        "schema.graphql is out of date; run `make schema` and commit the result"
    )


@pytest.mark.parametrize("type_name", ["User", "File", "Job"])
def test_global_id_round_trips(type_name: str) -> None:
    key = uuid.uuid4()
    assert decode_id(encode_id(type_name, key)) == (type_name, key)


def test_global_id_is_opaque() -> None:
    key = uuid.uuid4()
    global_id = encode_id("User", key)
    for visible in (key.hex, str(key), "User"):
        assert visible not in global_id
    # URL-safe without escaping: no padding, no '+' or '/'.
    assert global_id.replace("-", "").replace("_", "").isalnum()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    "garbage",
    [
        "garbage",
        "",
        "!!!!",
        encode_id("User", uuid.UUID(int=0))[:-4],
        _b64(b"User:not-a-uuid"),
        _b64(b"\xff\xfe:" + uuid.UUID(int=0).hex.encode()),
    ],
    ids=["word", "empty", "not-base64", "truncated", "not-a-uuid", "not-utf8"],
)
def test_decoding_garbage_is_bad_user_input(garbage: str) -> None:
    with pytest.raises(BadUserInput) as raised:
        decode_id(garbage, field="fileId")
    assert raised.value.field == "fileId"
    assert raised.value.extensions() == {"code": "BAD_USER_INPUT", "field": "fileId"}


def test_an_id_of_another_type_is_bad_user_input() -> None:
    job_id = encode_id("Job", uuid.uuid4())
    with pytest.raises(BadUserInput, match="is not the id of a File"):
        decode_id_of("File", job_id, field="fileId")
