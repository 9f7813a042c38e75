"""SQLModel entities: users, their sessions and credentials, the tokens mailed to them,
their pending notifications, files, upload tickets, resumable uploads, jobs, and webhooks
with their deliveries."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any, TypeAlias

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    Uuid,
    func,
    text,
)
from sqlmodel import Field, SQLModel

from core.time import UTCDateTime, utcnow


def _enum(kind: type[enum.Enum]) -> Enum:
    # Stored as plain strings (no native enum type), so adding a member is no migration.
    return Enum(kind, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class User(SQLModel, table=True):
    """An account. ``email`` is stored normalised and unique ignoring case."""

    __tablename__ = "user"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(max_length=320)
    display_name: str = Field(max_length=100)
    password_hash: str = Field(max_length=255)
    role: Role = Field(default=Role.USER, sa_type=_enum(Role))
    is_active: bool = Field(default=True)
    quota_bytes: int = Field(sa_type=BigInteger)
    used_bytes: int = Field(default=0, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # When the owner proved they read mail at ``email`` (a verification link).
    email_verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Which notifications go out by mail (core.notifications).
    mail_job_succeeded: bool = Field(default=True)
    mail_job_failed: bool = Field(default=True)
    mail_storage_full: bool = Field(default=True)
    mail_webhook_disabled: bool = Field(default=True)
    # When the last notification mail went out: the next waits a batch interval.
    notified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # When the user was told their storage is nearly full (cleared once it is not).
    storage_warned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# Unique ignoring case on both databases, whatever normalisation a caller forgot.
Index("uq_user_email_lower", func.lower(SQLModel.metadata.tables["user"].c.email), unique=True)


class Session(SQLModel, table=True):
    """A signed-in session: one family of rotating refresh tokens.

    Access tokens name their session (``sid``), so revoking it ends them at once.
    """

    __tablename__ = "session"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("user.id", ondelete="CASCADE")], index=True
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class CredentialKind(enum.StrEnum):
    REFRESH = "refresh"
    PERSONAL = "personal"


class Credential(SQLModel, table=True):
    """A refresh token or a personal access token; only its SHA-256 is stored.

    A refresh token is used once: ``used_at`` marks it rotated, and presenting
    it again revokes its whole session (theft detection).
    """

    __tablename__ = "credential"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("user.id", ondelete="CASCADE")], index=True
    )
    kind: CredentialKind = Field(sa_type=_enum(CredentialKind))
    token_hash: str = Field(max_length=64, unique=True)
    session_id: uuid.UUID | None = Field(
        default=None,
        sa_type=Uuid,
        sa_column_args=[ForeignKey("session.id", ondelete="CASCADE")],
        index=True,
    )
    name: str | None = Field(default=None, max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class TokenPurpose(enum.StrEnum):
    RESET = "reset"  # sets a new password
    VERIFY = "verify"  # proves the address: the account's own, or the one it changes to


class EmailToken(SQLModel, table=True):
    """A single-use token mailed to ``email``; only its SHA-256 is stored.

    It works until ``expires_at``, once (``used_at``), and only while it is its
    user's newest of its purpose: asking again ends the older ones.
    """

    __tablename__ = "email_token"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("user.id", ondelete="CASCADE")], index=True
    )
    purpose: TokenPurpose = Field(sa_type=_enum(TokenPurpose))
    token_hash: str = Field(max_length=64, unique=True)
    # The address the mail went to: a verified email change makes it the account's.
    email: str = Field(max_length=320)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class NotificationKind(enum.StrEnum):
    JOB_SUCCEEDED = "job_succeeded"
    JOB_FAILED = "job_failed"
    STORAGE_FULL = "storage_full"
    WEBHOOK_DISABLED = "webhook_disabled"


class Notification(SQLModel, table=True):
    """Something to tell a user by mail unless a live subscription showed it first.

    Pending only: a row goes when it is mailed, or when a subscription
    delivered the event it stands for (``subject_id``, a job's id).
    """

    __tablename__ = "notification"
    __table_args__ = (Index("ix_notification_user_subject", "user_id", "subject_id"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("user.id", ondelete="CASCADE")]
    )
    kind: NotificationKind = Field(sa_type=_enum(NotificationKind))
    subject_id: uuid.UUID | None = Field(default=None, sa_type=Uuid)
    summary: str = Field(max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class File(SQLModel, table=True):
    """A user's file: the row is the truth, the bytes live in storage under ``storage_key``.

    ``path`` is the user's own name for it (NFC, ``/``-separated), unique among
    the owner's live files; ``storage_key`` is opaque and never derived from it.
    """

    __tablename__ = "file"
    __table_args__ = (
        # Unique among live files only: a trashed file keeps its path.
        Index(
            "uq_file_owner_path_live",
            "owner_id",
            "path",
            unique=True,
            sqlite_where=text("trashed_at IS NULL"),
            postgresql_where=text("trashed_at IS NULL"),
        ),
        Index("ix_file_owner_created", "owner_id", "created_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("user.id", ondelete="CASCADE")]
    )
    path: str = Field(max_length=1024)
    name: str = Field(max_length=1024)
    size: int = Field(sa_type=BigInteger)
    content_type: str = Field(max_length=255)
    sha256: str = Field(max_length=64)
    storage_key: str = Field(max_length=255, unique=True)
    # `metadata` is SQLModel's own attribute, so the column is named apart from it.
    meta: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column("metadata", JSON, nullable=False)
    )
    # No foreign key: SQLite cannot add one to an existing table without
    # rebuilding it; a job's outputs are removed with it by the code that ends it.
    produced_by_job_id: uuid.UUID | None = Field(default=None, sa_type=Uuid, index=True)
    # The file a thumbnail, conversion or transcode was made from (no foreign
    # key, as above): trashing, restoring or purging it takes this one along.
    derived_from_id: uuid.UUID | None = Field(default=None, sa_type=Uuid, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    trashed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Upload(SQLModel, table=True):
    """A direct-upload ticket: its bytes are reserved against the quota until it ends."""

    __tablename__ = "upload"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("user.id", ondelete="CASCADE")], index=True
    )
    path: str = Field(max_length=1024)
    size: int = Field(sa_type=BigInteger)
    content_type: str = Field(max_length=255)
    sha256: str | None = Field(default=None, max_length=64)
    storage_key: str = Field(max_length=255, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # What Depot's own PUT route hashed and sniffed as the bytes streamed in,
    # and the ETag of the object they made: completing the ticket trusts them
    # while the object still has that ETag, instead of reading it all again.
    # (S3's presigned PUTs bypass Depot: those bytes are read at completion.)
    seen_sha256: str | None = Field(default=None, max_length=64)
    seen_content_type: str | None = Field(default=None, max_length=255)
    seen_etag: str | None = Field(default=None, max_length=255)
    seen_meta: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # Tickets from before 0012 only: the checked steps of the pipeline to start once
    # the file is complete. Newer ones name the pipeline itself (``pipeline_id``).
    pipeline: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    # The pipeline (a job waiting for this upload, core.pipelines) to start on the file.
    pipeline_id: uuid.UUID | None = Field(default=None, sa_type=Uuid)
    # The file the ticket made, so that a retried completeUpload answers it again
    # (no foreign key: the file may be purged while the ended ticket is kept).
    file_id: uuid.UUID | None = Field(default=None, sa_type=Uuid)


class UploadKind(enum.StrEnum):
    TUS = "tus"  # bytes through Depot's tus endpoint, appended as they come
    MULTIPART = "multipart"  # parts sent by the client straight to S3


class ResumableUpload(SQLModel, table=True):
    """An unfinished resumable upload: ``length`` bytes reserved, ``offset`` received.

    Through tus (``kind`` TUS), or in parts a client sends straight to S3
    (MULTIPART; ``offset`` stays 0, S3 knows the parts).

    The bytes so far are appended to ``storage_key`` (``Storage.append``, with
    ``storage_handle``); the object becomes the file's own once the last byte
    arrives, and the row goes in the same transaction as the file's comes (a tus
    upload's stays, complete at ``offset == length``, until it expires, so that a
    retried request learns the final offset: ``core.resumable_uploads``).
    ``busy_until`` is the lease of the request appending now, so two requests
    never append at once, on one replica or many.
    """

    __tablename__ = "resumable_upload"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("user.id", ondelete="CASCADE")], index=True
    )
    kind: UploadKind = Field(default=UploadKind.TUS, sa_type=_enum(UploadKind))
    path: str = Field(max_length=1024)
    length: int = Field(sa_type=BigInteger)
    # "offset" is a reserved word in SQL: the column is named apart from it.
    offset: int = Field(default=0, sa_column=Column("received", BigInteger, nullable=False))
    content_type: str = Field(max_length=255)
    sha256: str | None = Field(default=None, max_length=64)
    # The client's Upload-Metadata header as sent, for HEAD to return.
    upload_metadata: str = Field(default="", max_length=4096)
    storage_key: str = Field(max_length=255, unique=True)
    storage_handle: str = Field(default="", max_length=1024)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    busy_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The pipeline (a job waiting for this upload, core.pipelines) to start on the file.
    pipeline_id: uuid.UUID | None = Field(default=None, sa_type=Uuid)


# A job kind's name ("verify", "thumbnails", ...). The kinds are declared in
# workers/registry.py, and the column is a plain string validated there, so
# that a new kind is no migration and no edit here.
JobKind: TypeAlias = str

# The kind of a job of jobs (core/pipelines.py): it has no worker of its own.
PIPELINE: JobKind = "pipeline"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Job(SQLModel, table=True):
    """Work on a user's files, done by a worker: the row is the truth about it.

    ``queued → running → succeeded | failed | cancelled``; a running job whose
    worker stops sending heartbeats is taken over by the next attempt, up to
    its kind's limit. ``params`` are the kind's checked parameters.
    """

    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_owner_created", "owner_id", "created_at", "id"),
        Index("ix_job_status_updated", "status", "updated_at"),
        # The same key from the same user names the same job.
        Index("uq_job_owner_idempotency", "owner_id", "idempotency_key", unique=True),
        # A pipeline's step has at most one job: the guard that starts it once.
        Index("uq_job_pipeline_step", "pipeline_id", "step", unique=True),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("user.id", ondelete="CASCADE")]
    )
    kind: JobKind = Field(max_length=16)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: JobStatus = Field(default=JobStatus.QUEUED, sa_type=_enum(JobStatus))
    progress: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    message: str | None = Field(default=None, max_length=500)
    error: str | None = Field(default=None, max_length=2000)
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    # Attempts allowed before the job fails; a retryJob grants its kind's number again.
    max_attempts: int = Field(default=1, sa_column=Column(Integer, nullable=False))
    idempotency_key: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # When the message was last handed to the broker (re-sent when it looks lost).
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cancel_requested_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The W3C trace context of the request that started (or retried) it: each
    # attempt's span is its child, and its events carry its trace id.
    traceparent: str | None = Field(default=None, max_length=55)
    # A step's job: the pipeline (a job of kind ``pipeline``) and the step's name.
    pipeline_id: uuid.UUID | None = Field(default=None, sa_type=Uuid)
    step: str | None = Field(default=None, max_length=64)
    # A pipeline created with its upload, queued until the upload's file is complete
    # (its input then): nothing advances it meanwhile (core.pipelines).
    awaiting_upload: bool = Field(default=False)


class JobInput(SQLModel, table=True):
    """A file a job reads, in the order the job was given them."""

    __tablename__ = "job_input"

    job_id: uuid.UUID = Field(
        sa_type=Uuid,
        sa_column_args=[ForeignKey("job.id", ondelete="CASCADE")],
        primary_key=True,
    )
    position: int = Field(primary_key=True)
    file_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("file.id", ondelete="CASCADE")], index=True
    )


class WebhookEventType(enum.StrEnum):
    """What a webhook may be told of: a job's final status, a file created or deleted."""

    JOB_SUCCEEDED = "JOB_SUCCEEDED"
    JOB_FAILED = "JOB_FAILED"
    JOB_CANCELLED = "JOB_CANCELLED"
    FILE_CREATED = "FILE_CREATED"
    FILE_DELETED = "FILE_DELETED"


class Webhook(SQLModel, table=True):
    """A URL of its owner's that Depot tells of their events, signed with ``secret``.

    The secret (``whsec_…``, Standard Webhooks) is stored as it is: Depot signs
    with it, so a hash would not do. ``failing_since`` is the first failed
    attempt since the last success; a webhook failing for too long is
    disabled (``disabled_at``), and enabling it again starts afresh.
    """

    __tablename__ = "webhook"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("user.id", ondelete="CASCADE")], index=True
    )
    url: str = Field(max_length=2048)
    # WebhookEventType values.
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    secret: str = Field(max_length=100)
    enabled: bool = Field(default=True)
    disabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    failing_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # due at ``due_at``, not attempted yet
    SUCCEEDED = "succeeded"  # the receiver answered 2xx
    FAILED = "failed"  # it did not; ``next_retry_at`` says whether another attempt follows


class WebhookDelivery(SQLModel, table=True):
    """One attempt to deliver one event to one webhook.

    A retry is a new row with the same ``message_id`` (the ``webhook-id``
    header, so the receiver can tell it has seen the event) and the next
    ``attempt``; so is a redelivery, which starts at attempt 1. The row is
    written in the same transaction as the change it tells of, so no event is
    lost between the change and its delivery; ``sent_at`` is when its message
    went to the broker (sent again when it looks lost).
    """

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        Index("ix_webhook_delivery_webhook_created", "webhook_id", "created_at", "id"),
        Index("ix_webhook_delivery_status_due", "status", "due_at"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    webhook_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("webhook.id", ondelete="CASCADE")]
    )
    message_id: str = Field(max_length=64)
    event_type: WebhookEventType = Field(sa_type=_enum(WebhookEventType))
    # The body as sent: JSON text, so that every attempt signs the same bytes.
    payload: str = Field(max_length=65536)
    attempt: int = Field(default=1, sa_column=Column(Integer, nullable=False))
    # When the first attempt of this chain was due: retries stop a window after it.
    first_due_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    status: DeliveryStatus = Field(default=DeliveryStatus.PENDING, sa_type=_enum(DeliveryStatus))
    due_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    attempted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    status_code: int | None = Field(default=None)
    duration_ms: int | None = Field(default=None)
    response_excerpt: str | None = Field(default=None, max_length=1024)
    error: str | None = Field(default=None, max_length=500)
    next_retry_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PipelineTemplate(SQLModel, table=True):
    """A user's saved pipeline: named steps, checked when saved, started on given files.

    ``steps`` are the checked steps as ``core.pipelines.Step.to_data`` stores them.
    """

    __tablename__ = "pipeline_template"
    __table_args__ = (Index("uq_pipeline_template_owner_name", "owner_id", "name", unique=True),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(
        sa_type=Uuid, sa_column_args=[ForeignKey("user.id", ondelete="CASCADE")]
    )
    name: str = Field(max_length=100)
    steps: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
