"""The schema's enums over the Python enums they stand for, so no enum is mirrored.

``JobStatus``, ``StepStatus``, ``Role`` and the webhooks' two are the models' own; ``JobKind``
has a value per
kind in ``workers/registry.py`` (its name in upper case), so a new kind needs
no edit here. Enums a kind's parameters use are made by ``schema/job_inputs.py``.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import strawberry

from core import models, pipelines
from workers.registry import KINDS

# Aliases, so the models' enums are the schema's types; ``strawberry.enum``
# marks the very class it is given.
JobStatus = models.JobStatus
Role = models.Role
WebhookEventType = models.WebhookEventType
WebhookDeliveryStatus = models.DeliveryStatus
strawberry.enum(JobStatus, description="Where a job is in its life; the last three are final.")
strawberry.enum(Role)
strawberry.enum(WebhookEventType, description="What a webhook can be told of.")
strawberry.enum(
    WebhookDeliveryStatus,
    name="WebhookDeliveryStatus",
    description="How one delivery attempt went; a failed one may have a retry after it.",
)

if TYPE_CHECKING:

    class JobKind(enum.StrEnum):
        """A kind's name; the members are the registry's kinds."""

else:
    JobKind = strawberry.enum(
        enum.StrEnum(
            "JobKind",
            [(name.upper(), name) for name in KINDS] + [(models.PIPELINE.upper(), models.PIPELINE)],
        ),
        description="What a job does; a `PIPELINE` runs other jobs, its steps.",
    )

StepStatus = pipelines.StepStatus
strawberry.enum(
    StepStatus,
    description="Where a pipeline's step is: `PENDING` until what it uses succeeded, "
    "`SKIPPED` when that failed or the pipeline was cancelled; otherwise its job's status.",
)
