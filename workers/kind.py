"""What every job kind declares: its parameters, how it checks and runs them, its limits.

A new kind is one module under ``workers/`` ending in ``KIND = Kind(...)`` and
one entry in ``workers/registry.py``; its GraphQL input, its ``JobKind`` value
and its actor follow from the registry.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.params import input_files

if TYPE_CHECKING:
    from core.models import File
    from core.settings import Settings
    from workers.context import JobContext


def accept(params: Any, settings: Settings) -> Any:
    """The ``check`` of a kind whose declared types say all there is to check."""
    return params


def accept_file(params: Any, file: File, settings: Settings) -> None:
    """The ``check_file`` of a kind that reads any file."""


@dataclass(frozen=True)
class Kind:
    """One kind of job.

    ``name`` is its ``JobInput`` field, its ``JobKind`` value (upper case) and
    what the job row stores. ``params`` is the dataclass of its parameters
    (see :mod:`workers.params`); ``check`` takes them as the client gave them
    and returns them as the job keeps them, raising ``BadUserInput`` for a bad
    value; ``check_file`` looks at each input file as the job starts (its
    probed ``meta`` included), raising ``BadUserInput`` for one the job could
    only fail on; ``run`` does the work. An attempt longer than
    ``time_limit_seconds`` fails; one that meets a transient error is tried
    again, up to ``max_attempts`` in all.

    As a pipeline step (:mod:`workers.pipeline`) a kind also says what it
    reads and makes, so that a pipeline is checked before it runs: ``reads``
    and ``makes`` are content-type patterns (``image/*``); ``makes=None``
    means it makes no files and hands the files it read on to the steps that
    use it (``verify``); ``makes_one``: each job makes exactly one file.
    ``weight`` is its share of a pipeline's progress against other steps.
    """

    name: str
    params: type[Any]
    run: Callable[[JobContext], Awaitable[None]]
    check: Callable[[Any, Settings], Any] = accept
    check_file: Callable[[Any, File, Settings], None] = accept_file
    time_limit_seconds: float = 600
    max_attempts: int = 3
    reads: tuple[str, ...] = ("*/*",)
    makes: tuple[str, ...] | None = ("*/*",)
    makes_one: bool = False
    weight: float = 1.0

    def __post_init__(self) -> None:
        # The job row's column holds 16 characters; GraphQL names need an identifier.
        if not (self.name.isidentifier() and self.name.islower() and len(self.name) <= 16):
            raise ValueError(
                f"A kind's name is a lower-case identifier of up to 16 characters: {self.name!r}"
            )

    def inputs(self, stored: dict[str, Any]) -> list[uuid.UUID]:
        """The files a job of this kind reads, from its stored parameters, in order."""
        return input_files(self.params, stored)
