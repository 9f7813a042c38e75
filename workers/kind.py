"""What every job kind declares: how it checks its parameters, how it runs, its limits."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.models import JobKind

if TYPE_CHECKING:
    from core.settings import Settings
    from workers.context import JobContext


@dataclass(frozen=True)
class Kind:
    """One kind of job.

    ``check`` turns the client's parameters into the stored ones, raising
    ``BadUserInput`` for a bad value, and names the files the job reads
    (``inputs``); ``run`` does the work. An attempt longer than
    ``time_limit_seconds`` fails; one that meets a transient error is tried
    again, up to ``max_attempts`` in all.
    """

    name: JobKind
    check: Callable[[dict[str, Any], Settings], dict[str, Any]]
    inputs: Callable[[dict[str, Any]], list[uuid.UUID]]
    run: Callable[[JobContext], Awaitable[None]]
    time_limit_seconds: float = 600
    max_attempts: int = 3
