"""Pipelines as the kinds see them: checking steps against the kinds, and driving the
orchestrator (:mod:`core.pipelines`) from wherever a step ends.

:func:`check_steps` turns what a client asked for into the steps a pipeline
keeps, refusing before anything runs: a name used twice, a ``use`` naming no
step, a cycle, parameters the kind refuses, and a step whose inputs cannot be
what its kind reads (its ``reads`` against what the used steps ``makes``, and
one file for a kind that takes one). Each refusal is ``BAD_USER_INPUT`` whose
``field`` names the step (``steps.<name>``).

:func:`advance` is the call the API (after a start, cancel or retry) and
maintenance make: the orchestrator decides in a transaction of its own, then
:func:`release` sends and announces what it started. A worker ending a step
decides in the step's finishing transaction and calls :func:`release` after
its commit (``workers.lifecycle``).
"""

from __future__ import annotations

import fnmatch
import re
import typing
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from core import jobs, metrics, pipelines
from core.errors import BadUserInput
from core.eventlog import EventLog
from core.events import JobProgressed, JobStatusChanged, announce
from core.models import PIPELINE, File, JobStatus
from core.pipelines import INPUT, MAX_STEP_INPUTS, Step
from core.settings import Settings
from workers.kind import Kind
from workers.params import FileId, declared, dump, optional_of, typed
from workers.registry import KINDS

logger = structlog.get_logger("depot.jobs")

MAX_STEPS: Final = 32
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class StepRequest:
    """One step as a client gave it: ``values`` are its kind's parameters but the files."""

    name: str
    kind: Kind
    values: dict[str, Any]
    use: list[str] = field(default_factory=lambda: [INPUT])
    accept: str | None = None


def file_param(kind: Kind) -> tuple[str, str, bool] | None:
    """The kind's one file parameter: (field, stored key, takes a list); None if not one."""
    found = []
    for param in declared(kind.params):
        hint = optional_of(param.type) or param.type
        if hint is FileId:
            found.append((param.name, param.key, False))
        elif typing.get_origin(hint) is list and typing.get_args(hint) == (FileId,):
            found.append((param.name, param.key, True))
    return found[0] if len(found) == 1 else None


def _refuse(step: str, message: str, detail: str | None = None) -> BadUserInput:
    where = f"steps.{step}" + (f".{detail}" if detail else "")
    return BadUserInput(f"Step {step!r}: {message}", field=where)


def _order(requests: Sequence[StepRequest]) -> list[StepRequest]:
    """The steps with each after those it uses (the given order where free); refuses cycles."""
    by_name = {request.name: request for request in requests}
    placed: list[StepRequest] = []
    done: set[str] = set()
    waiting = list(requests)
    while waiting:
        ready = [r for r in waiting if all(u == INPUT or u in done for u in r.use)]
        if not ready:
            names = sorted(r.name for r in waiting)
            raise _refuse(
                names[0],
                f"the steps {', '.join(map(repr, names))} use each other in a cycle "
                "(or use a step of that cycle).",
                "use",
            )
        for request in ready:
            placed.append(request)
            done.add(request.name)
        waiting = [r for r in waiting if r.name not in done]
    assert len(placed) == len(by_name)
    return placed


def _compatible(made: str, reads: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(made, r) or fnmatch.fnmatch(r, made) for r in reads)


def check_steps(
    requests: Sequence[StepRequest], inputs: Sequence[str] | None, settings: Settings
) -> list[Step]:
    """The steps as a pipeline keeps them, in an order where each follows what it uses.

    ``inputs``: the content types of the pipeline's files; None when they are
    not known yet (a template is checked when saved as if given one file of
    any type, and again when it starts).
    """
    if not 1 <= len(requests) <= MAX_STEPS:
        raise BadUserInput(f"A pipeline has 1 to {MAX_STEPS} steps.", field="steps")
    names: set[str] = set()
    for request in requests:
        if not _NAME.fullmatch(request.name):
            raise BadUserInput(
                f"Step name {request.name!r}: 1 to 64 letters, digits, '_' or '-'.",
                field=f"steps.{request.name}",
            )
        if request.name in names:
            raise _refuse(request.name, "two steps have this name.")
        names.add(request.name)
    for request in requests:
        if not request.use:
            raise _refuse(request.name, f"`use` names at least one step, or {INPUT!r}.", "use")
        for used in request.use:
            if used != INPUT and used not in names:
                raise _refuse(request.name, f"`use` names {used!r}, which is no step.", "use")
            if used == request.name:
                raise _refuse(request.name, "a step cannot use itself.", "use")
    # What each step's outputs may be (content-type patterns), and how many (None: unknown).
    input_types = list(inputs) if inputs is not None else ["*/*"]
    made: dict[str, tuple[list[str], int | None]] = {
        INPUT: (input_types, len(inputs) if inputs is not None else 1)
    }
    steps = []
    read = 0  # files the steps read in all, as far as the counts are known before running
    for request in _order(requests):
        kind = request.kind
        files = file_param(kind)
        if files is None:
            raise _refuse(request.name, f"a {kind.name} job cannot be a step.", "run")
        name, key, many = files
        placeholders = [FileId(uuid.uuid4()) for _ in range(1)]
        try:
            given = kind.params(
                **request.values, **{name: placeholders if many else placeholders[0]}
            )
            params = dump(kind.check(given, settings))
        except BadUserInput as exc:
            raise _refuse(request.name, exc.message, f"run.{exc.field or kind.name}") from None
        params.pop(key, None)
        types: list[str] = []
        count: int | None = 0
        for used in dict.fromkeys(request.use):
            used_types, used_count = made[used]
            if request.accept is not None:
                if not _compatible(request.accept, used_types):
                    raise _refuse(
                        request.name, f"{used!r} makes no file that `accept` takes.", "accept"
                    )
                used_types, used_count = [request.accept], None
            # The pipeline's own files are each read; a step's patterns say what it may make.
            readable = (
                all(_compatible(t, kind.reads) for t in used_types)
                if used == INPUT and inputs is not None and request.accept is None
                else any(_compatible(t, kind.reads) for t in used_types)
            )
            if not readable:
                raise _refuse(
                    request.name,
                    f"a {kind.name} job reads {', '.join(kind.reads)}, and {used!r} makes "
                    f"{', '.join(used_types)}.",
                    "use",
                )
            types.extend(used_types)
            count = None if count is None or used_count is None else count + used_count
        if not many and count is not None and count != 1:
            raise _refuse(
                request.name,
                f"a {kind.name} job reads one file, and its `use` makes {count}.",
                "use",
            )
        read += count or 0
        if read > MAX_STEP_INPUTS:
            # Refused now rather than failed at run time, where the count is known.
            raise _refuse(
                request.name,
                f"the steps up to this one read {read} files; a pipeline's steps read "
                f"at most {MAX_STEP_INPUTS} in all.",
                "use",
            )
        made_types = list(kind.makes) if kind.makes is not None else types
        made_count = count if kind.makes is None else (1 if kind.makes_one else None)
        made[request.name] = (made_types, made_count)
        steps.append(
            Step(
                name=request.name,
                kind=kind.name,
                params=params,
                use=list(dict.fromkeys(request.use)),
                files=key,
                many=many,
                passes=kind.makes is None,
                accept=request.accept,
                weight=kind.weight,
                max_attempts=kind.max_attempts,
            )
        )
    return steps


# ----------------------------------------------------------------- driving the orchestrator

Sessions = Callable[[], AbstractAsyncContextManager[AsyncSession]]
Send = Callable[[uuid.UUID, str], Awaitable[None]]
"""Hands a job's message to the broker (``workers.broker.Jobs.send``)."""


ADVANCE_TRIES: Final = 5
"""How many times an advance on its own is decided again after losing a race
(:func:`core.pipelines.advance`'s ``IntegrityError``) before it gives up to maintenance."""


async def advance(
    sessions: Sessions, broker: Send, events: EventLog, settings: Settings, pipeline_id: uuid.UUID
) -> None:
    """Advance the pipeline in a transaction of its own, then :func:`release` what it decided.

    For the API (after a start, cancel or retry), maintenance, and a worker
    handed a finished step's message again; a worker ending a step advances
    in the step's own transaction instead (``workers.lifecycle``).
    """
    async with sessions() as db:
        for tries in range(1, ADVANCE_TRIES + 1):
            try:
                advanced = await pipelines.advance(db, pipeline_id)
                await db.commit()
                break
            except IntegrityError:
                # A step started meanwhile, or a file it was to read went: decide again.
                await db.rollback()
                if tries == ADVANCE_TRIES:
                    raise
    await release(sessions, broker, events, settings, advanced)


async def release(
    sessions: Sessions,
    broker: Send,
    events: EventLog,
    settings: Settings,
    advanced: pipelines.Advanced,
) -> None:
    """Once an advance has committed: send and announce the steps it started, and tell of
    the pipeline's progress or end.

    A send that fails leaves the job marked unsent, for maintenance to send.
    """
    for job in advanced.started:
        await announce(events, JobStatusChanged.of(job), owner_id=job.owner_id)
        if job.status is JobStatus.QUEUED:
            await send(sessions, broker, job.id, job.kind)
    changed = advanced.pipeline
    if changed is not None:
        final = changed.status.is_final
        if final:
            metrics.JOBS_FINISHED.labels(PIPELINE, changed.status.value).inc()
        event = JobStatusChanged.of(changed) if final else JobProgressed.of(changed)
        retention = settings.job_events_retention_seconds
        await announce(events, event, owner_id=changed.owner_id, retention_seconds=retention)


async def uploaded(
    sessions: Sessions, broker: Send, events: EventLog, settings: Settings, file: File
) -> None:
    """An upload made ``file`` (or its completion was retried): the pipeline it names, if
    any, hears the last bytes arrive and starts.

    The pipeline was queued with the file, in its transaction; this is the
    first advance, and it is idempotent, so a retried completion starts
    whatever a first one that died after its commit did not (as maintenance
    would, later).
    """
    async with sessions() as db:
        pipeline = await pipelines.of_file(db, file)
    if pipeline is None:
        return
    if pipeline.status is JobStatus.QUEUED:
        done = pipelines.upload_progress(pipeline, file.size, file.size)
        await announce(events, done, owner_id=pipeline.owner_id)
    await advance(sessions, broker, events, settings, pipeline.id)


def news(events: EventLog, settings: Settings) -> pipelines.News:
    """Where the upload functions tell of the pipelines an upload's end ended."""
    return pipelines.News(events, settings.job_events_retention_seconds)


async def send(sessions: Sessions, broker: Send, job_id: uuid.UUID, kind: str) -> bool:
    """Hand a committed job to the broker; if that fails, maintenance sends it later."""
    try:
        await broker(job_id, kind)
    except Exception as exc:  # noqa: BLE001 - the job is safe in the database either way
        logger.warning("job not handed to the broker yet", job_id=str(job_id), error=str(exc))
        async with sessions() as db:
            await jobs.mark_sent(db, [job_id], sent=False)
        return False
    return True


def requests_of(steps: Sequence[Step]) -> list[StepRequest]:
    """Checked steps (a template's) as requests again, to check them against actual files."""
    found = []
    for step in steps:
        kind = KINDS.get(step.kind)
        if kind is None:
            raise _refuse(step.name, f"there is no {step.kind!r} kind of job any more.", "run")
        values = {
            param.name: typed(param.type, step.params[param.key], file_id=uuid.UUID)
            for param in declared(kind.params)
            if param.key in step.params
        }
        found.append(StepRequest(step.name, kind, values, list(step.use), step.accept))
    return found
