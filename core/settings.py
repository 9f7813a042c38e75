"""Settings, read once at start from ``DEPOT_*`` environment variables and ``.env``.

Every value is validated when :func:`load_settings` runs, so a bad value stops
Depot at start with a message naming the variable, never halfway through a
request.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "DEPOT_"
SECRET_KEY_FILE = "secret_key"  # noqa: S105 - a file name, not a secret
MIN_SECRET_LENGTH = 32
_GENERATE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"  # noqa: S105

_REDIS_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def normalize_database_url(url: str) -> str:
    """Point a PostgreSQL or SQLite URL at the async driver Depot uses.

    >>> normalize_database_url("postgres://u:p@db/depot")
    'postgresql+asyncpg://u:p@db/depot'
    """
    scheme, sep, rest = url.partition("://")
    driver = _DRIVERS.get(scheme.lower())
    if not sep or driver is None:
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}: use postgresql://user:password"
            "@host/database or sqlite:///path/to/file.db"
        )
    return f"{driver}://{rest}"


# Development aids, each on by default in development and off in production,
# where they only help an attacker map the API: clients there build against
# the published `schema.graphql`.
DEVELOPMENT_AIDS = ("graphiql", "graphql_introspection", "graphql_suggestions")
# Off in production for the same reason of safety, on in development for convenience:
# a webhook receiver on the developer's own machine or network, and uploads by
# accounts whose address nobody verified.
DEVELOPMENT_ONLY = (*DEVELOPMENT_AIDS, "webhook_allow_private_networks", "unverified_may_upload")


def _is_weak(secret: str) -> bool:
    return len(secret) < MIN_SECRET_LENGTH or len(set(secret)) < 10


class Settings(BaseSettings):
    """Depot's configuration; each field is the variable ``DEPOT_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    environment: Literal["development", "production"] = Field(
        default="development",
        description="`development` applies migrations at start and generates a "
        "secret; `production` refuses to start on a weak secret or an "
        "unmigrated database.",
    )
    var_dir: Path = Field(
        default=Path("var"),
        description="Directory for the embedded database, local storage and the "
        "generated development secret.",
    )
    database_url: str = Field(
        default="",
        description="`postgresql://user:password@host/db` or `sqlite:///path.db`. "
        "Empty means a SQLite file `<var_dir>/depot.db`.",
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        le=200,
        description="PostgreSQL connections kept open per process.",
    )
    database_max_overflow: int = Field(
        default=10,
        ge=0,
        le=200,
        description="Extra PostgreSQL connections allowed under load.",
    )
    sqlite_busy_timeout_ms: int = Field(
        default=5000,
        ge=1,
        le=600_000,
        description="How long a SQLite write waits for another writer before its request is "
        "tried again (twice more), then answered `SERVICE_UNAVAILABLE`.",
    )
    redis_url: str | None = Field(
        default=None,
        description="`redis://host:6379/0`. Unset means everything runs in-process.",
    )
    redis_prefix: str = Field(
        default="depot",
        description="Starts the name of everything Depot keeps in Redis (job queue, "
        "maintenance lock, event streams), so installations sharing one Redis stay "
        "apart. Letters, digits, `.`, `_` and `-`.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description=f"Signs tokens and links; at least {MIN_SECRET_LENGTH} random "
        "characters. Generated under `var_dir` in development; required in "
        "production.",
    )
    public_base_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("http://localhost:8000"),
        description="The URL clients reach Depot at; used to build links. Left unset in "
        "development, links lead to the host each request reached instead.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated browser origins allowed to call the API (HTTP and WebSocket).",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated addresses or networks (`10.0.0.0/8`) of the reverse "
        "proxies in front of Depot, whose `X-Forwarded-For` and `X-Forwarded-Proto` are "
        "believed. Empty: nobody's, so a client cannot pose as another address.",
    )
    access_token_minutes: int = Field(
        default=15, ge=1, le=1440, description="How long an access token (JWT) is valid."
    )
    refresh_token_days: int = Field(
        default=30,
        ge=1,
        le=365,
        description="How long an unused session lasts; each refresh extends it.",
    )
    personal_token_default_days: int = Field(
        default=90,
        ge=1,
        le=3660,
        description="How long a personal access token lasts when its owner gives no lifetime.",
    )
    personal_token_max_days: int = Field(
        default=366,
        ge=1,
        le=3660,
        description="The longest lifetime a personal access token may have; none lasts forever.",
    )
    personal_tokens_per_user: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="Live personal access tokens one user may hold; more is `CONFLICT`.",
    )
    password_hash_memory_kib: int = Field(
        default=65536,
        ge=19456,
        description="Argon2id memory cost in KiB (OWASP minimum 19456).",
    )
    password_hash_iterations: int = Field(
        default=3, ge=2, le=20, description="Argon2id time cost (OWASP minimum 2)."
    )
    login_limit_per_account_and_address: str = Field(
        default="10/15minutes",
        description="Failed sign-ins allowed for one account from one client address "
        "(`limits` notation); past it that address waits, others do not.",
    )
    login_limit_per_address: str = Field(
        default="50/15minutes",
        description="Failed sign-ins allowed per client address, whatever the accounts.",
    )
    login_slowdown_per_account: str = Field(
        default="5/15minutes",
        description="Failed sign-ins on one account, from anywhere, after which each "
        "attempt on it waits 0.25 s, doubling with every further failure: slowed "
        "down, never locked, so nobody can lock its owner out.",
    )
    login_max_delay_seconds: float = Field(
        default=10.0,
        ge=0,
        le=60,
        description="The longest an attempt on a slowed-down account waits.",
    )
    register_limit_per_address: str = Field(
        default="50/hour",
        description="Accounts one client address may register (`limits` notation). A person "
        "makes one; 50 an hour leaves room for a workshop or an office signing up together "
        "behind one address, while each registration costs a password hash and a row.",
    )
    upload_limit_per_user: str = Field(
        default="600/minute",
        description="Uploads (`uploadFile`, `createUpload`, `createMultipartUpload`, tus "
        "creations) one user may start. A client "
        "sending a folder of small files, a few at a time, makes about 5 a second: this is "
        "twice that. The quota bounds the bytes; this bounds the requests and rows.",
    )
    upload_limit_per_address: str = Field(
        default="1200/minute",
        description="Uploads from one client address, whoever signs them: two such users.",
    )
    job_limit_per_user: str = Field(
        default="600/minute",
        description="Jobs (`startJob`, `retryJob`) one user may start: one per uploaded "
        "file, as fast as uploads may come.",
    )
    job_limit_per_address: str = Field(
        default="1200/minute",
        description="Jobs started from one client address, whoever signs them: two such users.",
    )
    access_token_limit_per_user: str = Field(
        default="20/hour",
        description="Personal access tokens one user may create: a person makes one per "
        "script, a few a year; 20 an hour allows setting up many at once.",
    )
    access_token_limit_per_address: str = Field(
        default="60/hour",
        description="Personal access tokens created from one client address.",
    )
    refresh_failure_limit_per_address: str = Field(
        default="20/15minutes",
        description="Refused `refreshSession` calls, and `logout`s with an unknown refresh "
        "token, per client address. A client fails one now and then (two tabs racing, a "
        "stale token); 20 stops guessing, which costs a query each.",
    )
    password_failure_limit_per_user: str = Field(
        default="5/15minutes",
        description="Wrong current passwords in `changePassword` per user; each costs a full "
        "password hash. A person mistypes it two or three times.",
    )
    password_failure_limit_per_address: str = Field(
        default="20/15minutes",
        description="Wrong current passwords in `changePassword` per client address, "
        "whatever the users.",
    )
    product_name: str = Field(
        default="Depot",
        min_length=1,
        max_length=100,
        description="The product's name in the mails Depot sends (subjects, greetings, footers).",
    )
    frontend_url: AnyHttpUrl | None = Field(
        default=None,
        description="Where the frontend's pages live: mails link to `<frontend_url>/reset-password"
        "?token=…` and `/verify-email?token=…`, screens the frontend owns. Unset, those links "
        "start with `DEPOT_PUBLIC_BASE_URL`.",
    )
    smtp_url: SecretStr | None = Field(
        default=None,
        description="The mail server: `smtp://user:password@host:587` (STARTTLS, required when "
        "a user is given) or `smtps://…:465` (TLS from the first byte). Unset, development "
        "writes each mail to `DEPOT_MAIL_OUTBOX_DIR` and production switches the mail "
        "features off (`FEATURE_DISABLED`) rather than lose mail silently.",
    )
    mail_from: str = Field(
        default="",
        max_length=320,
        description="The `From` of Depot's mails, such as `Depot <noreply@example.com>`. Empty "
        "means `<product name> <noreply@<host of DEPOT_PUBLIC_BASE_URL>>`.",
    )
    mail_outbox_dir: Path | None = Field(
        default=None,
        description="Where development writes mails as `.eml` files when no SMTP server is "
        "set, so a reset or verification link can be followed with nothing installed. "
        "Unset means `<var_dir>/outbox`.",
    )
    password_reset_minutes: int = Field(
        default=30,
        ge=5,
        le=24 * 60,
        description="How long a password-reset link works. OWASP's advice is short-lived: half "
        "an hour covers reading the mail, not leaving it lying in an inbox for days.",
    )
    email_verification_hours: int = Field(
        default=48,
        ge=1,
        le=30 * 24,
        description="How long a link verifying an address (a new account's, or a changed one) "
        "works: two days allow for a weekend-delayed inbox.",
    )
    password_reset_limit_per_account: str = Field(
        default="3/hour",
        description="Reset mails `requestPasswordReset` and `sendPasswordReset` may send to one "
        "address (counted whether or not it has an account): enough for a lost mail or two, "
        "too few to flood an inbox.",
    )
    password_reset_limit_per_address: str = Field(
        default="30/hour",
        description="`requestPasswordReset` calls from one client address, whatever the "
        "addresses asked for.",
    )
    verification_mail_limit_per_user: str = Field(
        default="5/hour",
        description="Verification mails (`resendVerification`, `changeEmail`) one user may ask "
        "for: a mistyped address or a lost mail, not a flood.",
    )
    verification_mail_limit_per_address: str = Field(
        default="30/hour",
        description="Verification mails asked for from one client address, whoever signs them.",
    )
    email_verification: bool = Field(
        default=True,
        description="Mail each new account a link that verifies its address (and hold "
        "unverified accounts back as `DEPOT_UNVERIFIED_MAY_UPLOAD` says). Off, for an "
        "installation whose accounts an admin vouches for, nobody is asked to verify.",
    )
    unverified_may_upload: bool = Field(
        default=True,
        description="Whether an account whose address is not verified may upload files and "
        "start jobs (it may always sign in and read). Default: yes in development, no in "
        "production, where an unverified account costs storage for an address nobody "
        "answers for. Without mail (no SMTP in production) nobody could verify, so the rule "
        "is not applied.",
    )
    notification_delay_seconds: float = Field(
        default=60,
        ge=0.1,
        le=3600,
        description="How long a notification (job finished or failed) waits for a live "
        "subscription of its user to show it; only one nobody saw is mailed. A minute "
        "covers a tab that was open, without holding the news back long.",
    )
    notification_batch_seconds: float = Field(
        default=300,
        ge=0.1,
        le=24 * 3600,
        description="At most one notification mail per user in this long; what happens "
        "meanwhile waits for the next, which tells all of it. Five minutes turns a batch of "
        "a hundred jobs into one mail.",
    )
    default_quota_bytes: int = Field(
        default=10 * 1024**3, ge=0, description="Storage quota of a new account."
    )
    storage_url: str = Field(
        default="",
        description="Where file bytes live: `file:///path`, "
        "`s3://bucket?endpoint_url=…&region=…` or `memory://` (tests). "
        "Empty means `file://<var_dir>/storage`.",
    )
    max_upload_bytes: int = Field(
        default=5 * 1024**3, ge=0, description="Largest file one upload may create."
    )
    max_request_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest GraphQL JSON body, and largest `operations` or `map` field of a "
        "multipart upload; past it the request is refused (413) without reading the rest. "
        "1 MiB is some 40 times the longest document the token limit admits: only a client "
        "sending files inside JSON (use uploads) or a flood meets it.",
    )
    max_upload_files: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Most files one multipart request may carry (413 past it); a client "
        "uploading more sends several requests.",
    )
    body_timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="A request body (JSON, multipart or direct-upload PUT) that stops arriving "
        "for this long is refused with 408 and what came of it discarded. No working "
        "network goes silent this long mid-body; header timeouts are the reverse proxy's.",
    )
    drain_delay_seconds: float = Field(
        default=0,
        ge=0,
        le=300,
        description="After SIGTERM, `depot serve` answers `/readyz` with 503 at once but keeps "
        "serving for this long before it stops taking connections, so a load balancer takes it "
        "out of rotation first. 0 stops at once, right for one process on a laptop; behind a "
        "balancer set a little more than its probe period (the Kubernetes manifests set 5).",
    )
    shutdown_grace_seconds: float = Field(
        default=10,
        gt=0,
        le=3600,
        description="Once `depot serve` stops taking connections, how long requests in flight "
        "have to finish before they are cut; WebSockets are closed at once with code 1012 and "
        "their clients resume elsewhere. Keep delay plus grace under the orchestrator's own "
        "(Kubernetes: `terminationGracePeriodSeconds`, 30 by default).",
    )
    gzip_min_bytes: int = Field(
        default=1400,
        ge=0,
        description="GraphQL responses at least this large are gzip-compressed for clients "
        "that send `Accept-Encoding: gzip` (0 turns it off); downloads and WebSockets never "
        "are. A smaller answer fits one TCP segment (about 1,400 bytes) anyway, so "
        "compressing it would cost CPU and save no round trip.",
    )
    download_url_minutes: int = Field(
        default=15, ge=1, le=7 * 24 * 60, description="How long a download link works."
    )
    upload_url_minutes: int = Field(
        default=60,
        ge=1,
        le=7 * 24 * 60,
        description="How long a direct-upload ticket (`createUpload`) can be used.",
    )
    resumable_upload_hours: int = Field(
        default=24,
        ge=1,
        le=30 * 24,
        description="How long an unfinished resumable (tus) upload keeps its bytes and its "
        "reservation after the last bytes arrived (`Upload-Expires`); then maintenance ends "
        "it. A day lets a laptop that went to sleep resume the next morning.",
    )
    worker_threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Jobs one process runs at once: the API's own worker threads in the "
        "embedded mode, each `depot worker` otherwise.",
    )
    worker_stop_grace_seconds: float = Field(
        default=15,
        ge=0,
        le=3600,
        description="On SIGTERM a worker takes no new job and gives its running ones this "
        "long to finish; one still running then stops at its next progress point and goes "
        "back to the queue (the attempt not counted), for another worker to run at once. "
        "15 fits Kubernetes' default 30 s termination grace period.",
    )
    max_running_jobs_per_user: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Jobs of one user that run at once; the rest wait, queued.",
    )
    job_heartbeat_seconds: float = Field(
        default=5,
        gt=0,
        le=600,
        description="How often a running job tells the database it is alive.",
    )
    job_stale_seconds: float = Field(
        default=60,
        gt=0,
        le=86400,
        description="A running job silent this long lost its worker: its next attempt "
        "starts, or it fails once its kind's attempts are used up.",
    )
    job_resend_after_seconds: float = Field(
        default=300,
        gt=0,
        le=86400,
        description="A job queued this long without starting is handed to the broker again.",
    )
    job_events_retention_seconds: int = Field(
        default=24 * 3600,
        ge=60,
        description="How long a finished job's events can be replayed; its final state "
        "stays in the database.",
    )
    trash_days: float = Field(
        default=30, gt=0, description="Files in the trash longer than this are purged."
    )
    maintenance_interval_seconds: float = Field(
        default=300,
        gt=0,
        le=86400,
        description="How often maintenance runs (trash, tickets, stuck jobs, events, usage).",
    )
    webhook_allow_private_networks: bool = Field(
        default=True,
        description="Let webhooks reach loopback, private, link-local and metadata addresses. "
        "On in development, so a receiver on the developer's machine "
        "works; off in production, where such a URL would let any user probe the internal "
        "network and the cloud's metadata service (SSRF).",
    )
    webhook_timeout_seconds: float = Field(
        default=10,
        gt=0,
        le=60,
        description="How long one delivery may take, connecting included; longer is a "
        "timeout, retried. Standard Webhooks receivers answer at once and work later; 10 s "
        "keeps a slow one from holding a worker thread.",
    )
    webhook_retry_base_seconds: float = Field(
        default=30,
        gt=0,
        description="Wait before the first retry of a failed delivery; each further one "
        "doubles it. 30 s rides out a restart of the receiver.",
    )
    webhook_retry_max_seconds: float = Field(
        default=4 * 3600,
        gt=0,
        description="Longest wait between two attempts (and the most a `Retry-After` can ask). "
        "4 h: about a dozen attempts in a day.",
    )
    webhook_retry_window_seconds: float = Field(
        default=24 * 3600,
        gt=0,
        description="How long after its first attempt a delivery is retried; then it is "
        "marked failed. A day, as Standard Webhooks senders do: a receiver down longer "
        "has an operator who can redeliver.",
    )
    webhook_disable_after_seconds: float = Field(
        default=5 * 24 * 3600,
        gt=0,
        description="A webhook whose deliveries have all failed for this long is disabled and "
        "its owner told (`WEBHOOK_DISABLED` on `myEvents`). Five days: longer than a "
        "weekend's outage, shorter than a month of load on a dead URL.",
    )
    webhook_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often the process that sends deliveries (`depot worker`, or the API "
        "in the embedded mode) looks for due ones: one indexed query each time, and the "
        "longest an event waits before its delivery starts.",
    )
    image_max_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Largest image (width x height) a job opens; larger ones fail as "
        "possible decompression bombs.",
    )
    variant_max_side: int = Field(
        default=2048,
        ge=16,
        le=8192,
        description="Longest side `File.imageUrl` renders: a retina-sized hero image fits, and "
        "a variant never costs more to render than a 2048-pixel thumbnail.",
    )
    variant_render_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Variants `depot serve` renders at once (each in a decoder process of its "
        "own, never on the event loop); more wait. One per core keeps requests for cached "
        "variants answered.",
    )
    derivatives_follow_source: bool = Field(
        default=True,
        description="Trashing, restoring or purging a file does the same to the files made "
        "from it (thumbnails, conversions, transcodes), so none outlives or misrepresents its "
        "source. Off, derivatives stay as they are.",
    )
    media_max_seconds: float = Field(
        default=4 * 3600,
        gt=0,
        description="Longest video or sound a `transcode` job takes on: four hours covers a "
        "film or a recorded meeting, and bounds what one job can make a worker spend.",
    )
    media_max_frames: int = Field(
        default=1_000_000,
        ge=1,
        description="Most video frames a `transcode` decodes: four hours at 60 fps fit, and it "
        "holds when a file's timestamps lie about its length.",
    )
    media_max_video_pixels: int = Field(
        default=7680 * 4320,
        ge=1,
        description="Largest video frame (width x height) a job or a variant decodes: 8K. "
        "Checked on every decoded frame too, since a stream may change size midway.",
    )
    media_max_pdf_pages: int = Field(
        default=5000,
        ge=1,
        description="Most pages a PDF may have to be read: any book or manual fits; a page tree "
        "far larger is more likely made to exhaust the parser.",
    )
    media_max_render_pixels: int = Field(
        default=4096 * 4096,
        ge=1,
        description="Most pixels a PDF page is rendered at; a larger page is rendered smaller, "
        "never refused. 4096 x 4096 is the largest thumbnail of a square page.",
    )
    media_picture_seconds: float = Field(
        default=120,
        gt=0,
        le=3600,
        description="Time a decoder process gets for one picture of a `thumbnails` or "
        "`convert` job (decoding and encoding): a 50-megapixel photo to AVIF takes well "
        "under it; a file that takes longer is cut off and the job fails.",
    )
    media_transcode_seconds: float = Field(
        default=3000,
        gt=0,
        le=86400,
        description="Time a decoder process gets for a `transcode`: under the kind's 3600 s "
        "job limit, so the decoder's own limit, and its message, come first.",
    )
    media_memory_limit_mb: int = Field(
        default=2048,
        ge=16,
        le=1024 * 1024,
        description="Memory (MB) a decoder process may allocate for one file, beyond the "
        "libraries it starts with (`RLIMIT_DATA`): a 50-megapixel photo decoded, resized "
        "and encoded needs about 1 GB; a file that asks for more fails its job instead of "
        "taking the machine's memory.",
    )
    variant_render_seconds: float = Field(
        default=30,
        gt=0,
        le=600,
        description="Time a decoder process gets to render an image variant; a request waits "
        "for it, so it is short. Past it the request is answered 415.",
    )
    archive_max_entries: int = Field(
        default=10_000, ge=1, description="Most entries an archive may have to be extracted."
    )
    archive_max_bytes: int = Field(
        default=10 * 1024**3,
        ge=0,
        description="Most bytes an archive may unpack to in all.",
    )
    archive_max_ratio: int = Field(
        default=200,
        ge=1,
        description="Highest compression ratio of an archive entry (a zip-bomb guard).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level that is logged."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="`auto` is JSON in production and readable text in development.",
    )
    metrics_enabled: bool = Field(
        default=True,
        description="Record Prometheus metrics and serve them at `/metrics`. Off, the request "
        "path skips them (for measuring what they cost) and `/metrics` is a 404.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="When set, `/metrics` answers only `Authorization: Bearer <token>`. Unset, "
        "it is open in development and a 404 in production, where metrics name routes, "
        "job kinds and load.",
    )
    graphiql: bool = Field(
        default=True,
        description="Serve GraphiQL to a browser opening `/graphql`; off, that is a 404. "
        "Default: on in development, off in production.",
    )
    graphql_introspection: bool = Field(
        default=True,
        description="Answer introspection (`__schema`, `__type`); off, such a query is "
        "`GRAPHQL_VALIDATION_FAILED`. Default: on in development, off in production, "
        "where clients build against the published `schema.graphql`.",
    )
    graphql_suggestions: bool = Field(
        default=True,
        description='Add "Did you mean …?" to validation errors, which reveals field '
        "and type names. Default: on in development, off in production.",
    )
    sign_in_cache_seconds: float = Field(
        default=5,
        ge=0,
        le=300,
        description="How long this process answers a signed-in request from its sign-in "
        "cache, without SQL, after it verified the credential (0 turns the cache off). A "
        "sign-out, password change, revoked token, deactivation, role or email change is "
        "exact at once in the process that made it and reaches the others through the event "
        "bus; only an announcement lost in transit leaves another replica honouring the old "
        "credential or account, for at most this long. Changes made straight in the database "
        "are seen after it too. A few seconds spare the database a round trip on nearly "
        "every request of a busy client.",
    )
    ws_auth_recheck_seconds: float = Field(
        default=300,
        gt=0,
        le=3600,
        description="How often an open WebSocket rechecks its credential in the database. "
        "A revocation (sign-out, password change, token revoked, user deactivated) closes "
        "the user's sockets at once through the event bus, so this is only the fallback for "
        "an event lost in transit: at 5 minutes, 500 idle sockets make under 2 rechecks a second.",
    )
    ws_connections_per_user: int = Field(
        default=20,
        ge=1,
        description="Open WebSockets one user may hold on one API replica; more are closed "
        "with 4429. A browser holds one per tab: 20 covers many tabs and devices.",
    )
    ws_connections_per_address: int = Field(
        default=100,
        ge=1,
        description="Open WebSockets one client address may hold on one API replica, signed "
        "in or not; more are closed with 4429. Room for an office behind one address.",
    )
    graphql_ws_legacy: bool = Field(
        default=False,
        description="Also accept the legacy `graphql-ws` WebSocket protocol.",
    )
    graphql_max_depth: int = Field(
        default=10,
        ge=2,
        le=100,
        description="Deepest selection an operation may nest, and deepest chain of fragments. "
        "10, not graphql-armor's 6: a Relay connection takes two levels (`edges { node }`), so "
        "`files → jobs → inputs` with its fields is 7 and the deepest query the tests send is 9. "
        "Introspection fields are not counted (graphql-core's introspection-depth rule bounds "
        "them), so GraphiQL's introspection query passes.",
    )
    graphql_max_tokens: int = Field(
        default=1000,
        ge=100,
        description="Most tokens a GraphQL document may have. graphql-armor's 1,000: the "
        "standard introspection query has about 185 and the largest query the tests send 65; "
        "it also bounds the quadratic overlapping-fields check.",
    )
    graphql_max_aliases: int = Field(
        default=15,
        ge=1,
        description="Most aliases in an operation, counted where fragments are spread. "
        "graphql-armor's 15: aliases exist to ask for one field twice (the tests use 2).",
    )
    graphql_max_directives: int = Field(
        default=20,
        ge=1,
        description="Most directives in an operation, counted where fragments are spread. "
        "20, stricter than graphql-armor's 50: the schema offers only `@skip` and `@include`, "
        "one per conditional field.",
    )
    graphql_max_cost: int = Field(
        default=5000,
        ge=1,
        description="Highest static cost of an operation, refused with `QUERY_TOO_COMPLEX` "
        "before anything runs: 1 per object, 0 per scalar, times `first` for a connection "
        "and 1,000 for `Job.inputs` (an archive's most files). graphql-armor's 5,000: a "
        "job with its inputs and 100 outputs costs 1,203, a page of 100 files with their "
        "owners 301.",
    )
    persisted_queries: bool = Field(
        default=True,
        description="Accept Apollo's automatic persisted queries (`extensions.persistedQuery`): "
        "a known hash stands for its document, so a query can go by `GET` and be cached. Off, "
        "such a request is `PERSISTED_QUERY_NOT_SUPPORTED` and Apollo's link sends full queries.",
    )
    persisted_queries_memory_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=64 * 1024,
        description="Room for persisted queries in memory without Redis; the least recently "
        "used go first. 8 MiB holds thousands of typical 1-4 KiB documents, and a miss only "
        "costs the client one retry with the full query.",
    )
    persisted_queries_ttl_seconds: int = Field(
        default=24 * 3600,
        ge=60,
        le=30 * 24 * 3600,
        description="How long Redis keeps a persisted query after it was registered. A day: "
        "documents change with deploys, and an expired one is registered again by the "
        "client's next retry.",
    )
    trusted_documents: Path | None = Field(
        default=None,
        description="A manifest of trusted documents, as GraphQL Code Generator's client "
        "preset (`persisted-documents.json`) or Apollo's persisted-query manifest writes it; "
        "clients may then send a document's id (`documentId`) instead of its text.",
    )
    trusted_documents_only: bool = Field(
        default=False,
        description="Run only the documents in `DEPOT_TRUSTED_DOCUMENTS` "
        "(`PERSISTED_QUERY_NOT_IN_LIST` for any other), for production once the frontend's "
        "build writes the manifest. Off by default: a manifest must exist first.",
    )

    @model_validator(mode="before")
    @classmethod
    def _development_aids_follow_the_environment(cls, data: object) -> object:
        # Before validation, so a value given (variable, .env, argument) wins and
        # the field keeps a plain bool type. (A default factory reading the
        # environment would add an error of its own whenever another value is bad.)
        if isinstance(data, dict) and data.get("environment") == "production":
            data = dict.fromkeys(DEVELOPMENT_ONLY, False) | data
        return data

    @field_validator("database_url")
    @classmethod
    def _normalize_database_url(cls, value: str) -> str:
        return normalize_database_url(value) if value else value

    @field_validator("secret_key", "metrics_token", "smtp_url", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        # A blank `DEPOT_SECRET_KEY=` line (a copied .env template) means "not
        # set", never "sign with the empty string".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("trusted_documents", "mail_outbox_dir", "frontend_url", mode="before")
    @classmethod
    def _blank_path_is_unset(cls, value: object) -> object:
        # `DEPOT_TRUSTED_DOCUMENTS=` (a ConfigMap's or .env's empty line) means
        # no manifest, never the current directory.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = [proxy.strip() for proxy in value.split(",") if proxy.strip()]
        if isinstance(value, list):
            for proxy in value:
                try:
                    ipaddress.ip_network(str(proxy))
                except ValueError:
                    raise ValueError(
                        f"{proxy!r} is not an address or network; use e.g. 10.0.0.5,10.1.0.0/16"
                    ) from None
        return value

    @field_validator(
        "login_limit_per_account_and_address",
        "login_limit_per_address",
        "register_limit_per_address",
        "upload_limit_per_user",
        "upload_limit_per_address",
        "job_limit_per_user",
        "job_limit_per_address",
        "access_token_limit_per_user",
        "access_token_limit_per_address",
        "refresh_failure_limit_per_address",
        "password_failure_limit_per_user",
        "password_failure_limit_per_address",
        "password_reset_limit_per_account",
        "password_reset_limit_per_address",
        "verification_mail_limit_per_user",
        "verification_mail_limit_per_address",
    )
    @classmethod
    def _check_limit(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError:
            raise ValueError(
                "use limits notation such as 10/15minutes or 5/minute;100/day"
            ) from None
        return value

    @field_validator("login_slowdown_per_account")
    @classmethod
    def _check_slowdown(cls, value: str) -> str:
        try:
            single = len(parse_many(value)) == 1
        except ValueError:
            single = False
        if not single:
            raise ValueError("use one limit in limits notation, such as 5/15minutes")
        return value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("file", "s3", "memory"):
            raise ValueError("use file:///path, s3://bucket?endpoint_url=…&region=… or memory://")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _check_smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = urlsplit(value.get_secret_value())
            if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
                raise ValueError("use smtp://user:password@host:587 or smtps://host:465")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("use redis://host:6379/0, rediss://… or unix://…")
        return value or None

    @field_validator("redis_prefix")
    @classmethod
    def _check_redis_prefix(cls, value: str) -> str:
        if not _REDIS_PREFIX.fullmatch(value):
            raise ValueError(
                "use 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or "
                "digit, such as depot or depot-staging"
            )
        return value

    @model_validator(mode="after")
    def _trusted_documents_only_needs_a_manifest(self) -> Settings:
        if self.trusted_documents_only and self.trusted_documents is None:
            raise ValueError(
                "DEPOT_TRUSTED_DOCUMENTS_ONLY needs DEPOT_TRUSTED_DOCUMENTS: set it to the "
                "manifest your frontend's build writes (persisted-documents.json)"
            )
        return self

    @model_validator(mode="after")
    def _complete(self) -> Settings:
        # The model is frozen; these two defaults depend on other fields, so
        # they are filled in once here, while the object is still private.
        if not self.database_url:
            path = (self.var_dir / "depot.db").as_posix()
            object.__setattr__(self, "database_url", f"sqlite+aiosqlite:///{path}")
        if not self.storage_url:
            root = (self.var_dir / "storage").resolve().as_uri()
            object.__setattr__(self, "storage_url", root)
        if self.secret_key is not None:
            if self.is_production and _is_weak(self.secret_key.get_secret_value()):
                raise ValueError(
                    f"DEPOT_SECRET_KEY is too weak for production: use at least "
                    f"{MIN_SECRET_LENGTH} random characters, e.g. {_GENERATE_SECRET}"
                )
        elif self.is_production:
            raise ValueError(
                f"DEPOT_SECRET_KEY must be set in production; generate one with {_GENERATE_SECRET}"
            )
        else:
            secret = _development_secret(self.var_dir)
            object.__setattr__(self, "secret_key", SecretStr(secret))
        return self

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def mail_enabled(self) -> bool:
        """Whether Depot can send mail: an SMTP server, or development's outbox folder."""
        return self.smtp_url is not None or not self.is_production

    @property
    def verifies_email(self) -> bool:
        """Whether new accounts are mailed a verification link (and may be held back)."""
        return self.email_verification and self.mail_enabled

    @property
    def outbox_dir(self) -> Path:
        """Where development writes mails when no SMTP server is set."""
        return self.mail_outbox_dir or self.var_dir / "outbox"

    @property
    def sender(self) -> str:
        """The ``From`` of Depot's mails."""
        return self.mail_from or f"{self.product_name} <noreply@{self.public_base_url.host}>"

    @property
    def frontend_base(self) -> str:
        """Where the links of reset and verification mails lead, without a trailing slash."""
        return str(self.frontend_url or self.public_base_url).rstrip("/")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def secret(self) -> str:
        """The secret key's value (always set once validation has run)."""
        assert self.secret_key is not None
        return self.secret_key.get_secret_value()

    @property
    def json_logs(self) -> bool:
        if self.log_format == "auto":
            return self.is_production
        return self.log_format == "json"


def _development_secret(var_dir: Path) -> str:
    """Read the development secret from ``var_dir``, creating it on first use."""
    path = var_dir / SECRET_KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    var_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        # O_EXCL: when two processes start at once, one writes and both read it.
        with path.open("x", encoding="utf-8") as handle:
            path.chmod(0o600)
            handle.write(secret)
    except FileExistsError:
        return path.read_text().strip()
    return secret


class SettingsError(Exception):
    """Raised by :func:`load_settings` with one readable line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into one line per variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError([_describe(error) for error in exc.errors()]) from None


def _describe(error: object) -> str:
    assert isinstance(error, dict)
    location = [str(part) for part in error.get("loc", ()) if part != "__root__"]
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not location:
        return message
    return f"{ENV_PREFIX}{location[0].upper()}: {message}"


def env_example() -> str:
    """``.env.example``, generated from :class:`Settings`: every variable, commented out
    at its default, under its description."""
    lines = [
        "# Depot's settings, each at its default. Copy to .env and uncomment what you change.",
        "# Generated from core/settings.py by `make docs`; the README's table says the same.",
    ]
    for name, field in Settings.model_fields.items():
        # A development aid is shown at its development default.
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default)
        lines += ["", f"# {field.description}", f"# {ENV_PREFIX}{name.upper()}={default or ''}"]
    return "\n".join(lines) + "\n"


def settings_table() -> str:
    """The README's configuration table, generated from :class:`Settings`."""
    lines = ["| Variable | Default | Description |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default)
        shown = f"`{default}`" if default not in (None, "") else "—"
        if name in DEVELOPMENT_ONLY:
            shown = f"{shown} (production: `False`)"
        lines.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(lines) + "\n"
