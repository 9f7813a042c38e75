"""The ``depot`` command: serve, migrate, check, export-schema."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from core import migrate as migrations
from core import tracing, users
from core.db import create_sessionmaker
from core.errors import DepotError
from core.logging import configure_logging
from core.metrics import MULTIPROC_DIR
from core.models import Role
from core.probes import describe, probe_database, probe_redis, probe_smtp, probe_storage
from core.settings import Settings, SettingsError, load_settings
from core.time import utcnow
from workers.resources import open_resources

T = TypeVar("T")

LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
METRICS_PORT = click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on this port (every interface); off when not given.",
)


# A request line and headers fit in 16 KiB (nginx's default header buffers
# hold 4 x 8 KiB); a browser's rarely pass 4 KiB.
MAX_HEADER_BYTES = 16 * 1024
# How long a stopping worker waits, past its grace period, for an interrupted
# job to reach its next progress point.
STOP_MARGIN_S = 15
# See `_serve_processes`.
WORKER_HEALTHCHECK_S = 30


def _settings(**overrides: object) -> Settings:
    """Load the settings, or print one line per bad value and exit with status 2."""
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        click.echo("Depot's configuration is invalid:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


def _start_tracing(service: str) -> None:
    """Traces as ``OTEL_TRACES_EXPORTER`` asks (off by default), before any client opens."""
    try:
        tracing.configure_tracing(service)
    except tracing.TracingConfigError as exc:
        click.echo(f"Depot's configuration is invalid: {exc}", err=True)
        sys.exit(2)


def _with_engine(settings: Settings, action: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """``action(engine)`` on a fresh event loop, the clients opened and closed around it."""

    async def run() -> T:
        async with open_resources(settings) as resources:
            return await action(resources.engine)

    return asyncio.run(run())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Depot: a GraphQL backend for files and the work done on them.

    Configuration comes from DEPOT_* environment variables and .env;
    see the README for the full table.
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--reload", is_flag=True, help="Restart when the code changes (development).")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Processes serving the port (needs DEPOT_REDIS_URL when more than one).",
)
@click.option("--log-level", type=LOG_LEVELS, help="Overrides DEPOT_LOG_LEVEL.")
def serve(host: str, port: int, reload: bool, workers: int, log_level: str | None) -> None:
    """Serve the API, with GraphiQL at /graphql."""
    # Imported here, not at the top: `depot worker`, `depot scheduler` and
    # `depot migrate` need neither the server nor GraphQL, and each would pay
    # for importing them (strawberry and graphql-core are a fifth of the modules).
    import uvicorn

    from api.httpprotocol import DepotHTTPProtocol
    from api.persisted import ManifestError, load_manifest
    from api.wsprotocol import DepotWebSocketProtocol

    if log_level:
        # Also read by the reloader's and the workers' processes, which load their own settings.
        os.environ["DEPOT_LOG_LEVEL"] = log_level.upper()
    settings = _settings()
    configure_logging(settings.log_level, json=settings.json_logs)
    _start_tracing("depot-api")
    if workers > 1 and settings.redis_url is None:
        click.echo(
            "depot serve --workers needs DEPOT_REDIS_URL: without Redis, jobs run in the "
            "serving process's threads and events travel through its memory, which other "
            "processes cannot reach. Set DEPOT_REDIS_URL and run `depot worker`, or serve "
            "with one process.",
            err=True,
        )
        sys.exit(2)
    if workers > 1 and reload:
        click.echo("depot serve: --reload serves one process; drop --workers.", err=True)
        sys.exit(2)
    if settings.is_production:
        # The lifespan refuses too, but as a traceback; say it in one line first.
        try:
            _with_engine(settings, migrations.ensure_current)
        except migrations.SchemaBehind as exc:
            click.echo(f"Depot cannot start: {exc}", err=True)
            sys.exit(1)
    if settings.trusted_documents is not None:
        # create_app would refuse it too, as a traceback.
        try:
            load_manifest(settings.trusted_documents)
        except ManifestError as exc:
            click.echo(f"Depot cannot start: {exc}", err=True)
            sys.exit(1)
    # uvicorn stops gracefully on SIGTERM, then raises the signal again so the
    # process dies of it (status 143); a graceful stop should exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    options: dict[str, object] = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
        # Forwarded headers only from the proxies named; uvicorn would trust loopback.
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": settings.trusted_proxies or None,
        # Events are a few hundred bytes: compression would cost each socket
        # ~40 KiB of zlib state for nothing.
        "ws_per_message_deflate": False,
        # uvicorn's own protocol, holding less per idle socket (api.wsprotocol).
        "ws": DepotWebSocketProtocol,
        # httptools reads headers without any bound; h11 refuses (400) a request
        # whose line and headers pass this size, which also bounds their count.
        # Its protocol here hands bodies over without h11's copies (api.httpprotocol).
        "http": DepotHTTPProtocol,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }
    if reload:
        uvicorn.run("api.app:create_app_from_env", factory=True, reload=True, **options)  # type: ignore[arg-type]
    elif workers > 1:
        # Once, before the workers start: each would otherwise migrate at once in development.
        _prepare_schema(settings)
        _serve_processes(workers, options)
    else:
        from api.app import create_draining_app

        app = functools.partial(create_draining_app, settings)
        config = uvicorn.Config(app, factory=True, **options)  # type: ignore[arg-type]
        uvicorn.Server(config).run()


def _serve_processes(workers: int, options: dict[str, object]) -> None:
    """uvicorn's ``workers`` processes on one socket, sharing their metrics.

    Each process loads its settings from the environment
    (``create_draining_app_from_env``) and drains on the SIGTERM uvicorn forwards.
    prometheus-client's multiprocess mode needs a directory of their own for
    the values they write, chosen before they start (the library reads it at
    import): a fresh one here, removed when they have stopped. A worker that
    dies is replaced by uvicorn; its live gauges are dropped at the next
    scrape (``core.metrics``).
    """
    import uvicorn

    directory = tempfile.mkdtemp(prefix="depot-metrics-")
    os.environ[MULTIPROC_DIR] = directory
    click.echo(
        f"Depot serving with {workers} processes; metrics shared under {directory}", err=True
    )
    try:
        uvicorn.run(
            # Each process drains on the SIGTERM the supervisor forwards (api/drain.py).
            "api.app:create_draining_app_from_env",
            factory=True,
            workers=workers,
            # How long a process may leave the supervisor's ping unanswered before it
            # is replaced. A new one answers only once it has imported Depot (its
            # `__main__` is this script), which takes over uvicorn's default 5 s
            # on a busy machine: every process would be killed before it served.
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
            **options,  # type: ignore[arg-type]
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _prepare_schema(settings: Settings) -> None:
    """Migrate in development; in production refuse, in one line, a database behind the code."""
    try:
        _with_engine(
            settings,
            lambda engine: migrations.prepare_schema(engine, production=settings.is_production),
        )
    except migrations.SchemaBehind as exc:
        click.echo(f"Depot cannot start: {exc}", err=True)
        sys.exit(1)


def _wait_for_stop() -> None:
    """Block until SIGTERM or SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stop.set())
    while not stop.wait(1):
        pass


@main.command()
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    help="Jobs run at once; overrides DEPOT_WORKER_THREADS.",
)
@click.option("--log-level", type=LOG_LEVELS, help="Overrides DEPOT_LOG_LEVEL.")
@METRICS_PORT
def worker(threads: int | None, log_level: str | None, metrics_port: int | None) -> None:
    """Run jobs from Redis until SIGTERM or SIGINT (needs DEPOT_REDIS_URL).

    A stop takes no new job and gives running ones DEPOT_WORKER_STOP_GRACE_SECONDS
    to finish; one still running then stops at its next progress point and goes
    back to the queue for another worker, the attempt not counted.
    """
    settings = _settings(**({"log_level": log_level} if log_level else {}))
    configure_logging(settings.log_level, json=settings.json_logs)
    if settings.redis_url is None:
        click.echo(
            "depot worker needs DEPOT_REDIS_URL; without Redis, `depot serve` runs jobs itself.",
            err=True,
        )
        sys.exit(2)
    _start_tracing("depot-worker")
    _prepare_schema(settings)
    from workers.broker import Worker
    from workers.lifecycle import worker_jobs

    jobs = worker_jobs(settings)
    running = Worker(jobs.broker, jobs.queue, threads or settings.worker_threads)
    running.start()
    stop_metrics = None
    try:
        if metrics_port is not None:
            from workers.metrics import serve_worker_metrics

            stop_metrics = serve_worker_metrics(jobs, metrics_port)
        click.echo("Depot worker running; stop it with Ctrl-C or SIGTERM.", err=True)
        _wait_for_stop()
    finally:
        if stop_metrics is not None:
            stop_metrics()
        # Time for the grace period and for a job to reach its next progress point.
        running.stop(timeout_ms=int((settings.worker_stop_grace_seconds + STOP_MARGIN_S) * 1000))


@main.command()
@click.option("--log-level", type=LOG_LEVELS, help="Overrides DEPOT_LOG_LEVEL.")
@METRICS_PORT
def scheduler(log_level: str | None, metrics_port: int | None) -> None:
    """Run periodic maintenance until SIGTERM or SIGINT.

    Purges old trash, expires unused upload tickets, sends stuck jobs again,
    prunes old job events and recounts usage every
    DEPOT_MAINTENANCE_INTERVAL_SECONDS. With Redis, only one scheduler at a
    time does the work.
    """
    settings = _settings(**({"log_level": log_level} if log_level else {}))
    configure_logging(settings.log_level, json=settings.json_logs)
    if settings.redis_url is None:
        click.echo(
            "depot scheduler needs DEPOT_REDIS_URL; without Redis, `depot serve` runs "
            "maintenance itself.",
            err=True,
        )
        sys.exit(2)
    _start_tracing("depot-scheduler")
    _prepare_schema(settings)
    from workers.scheduler import serve as serve_scheduler

    asyncio.run(serve_scheduler(settings, metrics_port=metrics_port))


@main.group()
def migrate() -> None:
    """Apply and inspect database migrations."""


@migrate.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Upgrade the database to REVISION (default: the latest)."""
    settings = _settings()
    _with_engine(settings, lambda engine: migrations.upgrade(engine, revision))
    click.echo(f"Database upgraded to {revision}.")


@migrate.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Downgrade the database to REVISION (e.g. -1, or base for an empty schema)."""
    settings = _settings()
    _with_engine(settings, lambda engine: migrations.downgrade(engine, revision))
    click.echo(f"Database downgraded to {revision}.")


@migrate.command()
def current() -> None:
    """Print the database's revision and whether it is the latest."""
    settings = _settings()
    revision = _with_engine(settings, migrations.current_revision)
    head = migrations.head_revision()
    state = "latest" if revision == head else f"behind; latest is {head}"
    click.echo(f"{revision or 'base (empty)'} ({state})")


@migrate.command()
def history() -> None:
    """List every migration, newest first."""
    for line in migrations.history():
        click.echo(line)


@migrate.command()
@click.option("-m", "--message", required=True, help="What the migration changes.")
@click.option("--autogenerate", is_flag=True, help="Diff the models against the database.")
def revision(message: str, autogenerate: bool) -> None:
    """Write a new migration file (for Depot's developers)."""
    settings = _settings()
    _with_engine(
        settings,
        lambda engine: migrations.revision(engine, message, autogenerate=autogenerate),
    )


@main.command()
def check() -> None:
    """Validate the configuration and reach every configured service.

    Exits non-zero, with one line per problem, if anything is wrong.
    """
    settings = _settings()
    problems = asyncio.run(_check_services(settings))
    if settings.trusted_documents is not None:
        from api.persisted import ManifestError, load_manifest

        try:
            manifest = load_manifest(settings.trusted_documents)
            count = len(manifest.by_id)
            click.echo(f"✓ {count} trusted documents in {settings.trusted_documents}")
        except ManifestError as exc:
            problems.append(str(exc))
    if problems:
        for problem in problems:
            click.echo(f"✗ {problem}", err=True)
        sys.exit(1)
    click.echo("✓ configuration is valid and every service answers")


async def _check_services(settings: Settings) -> list[str]:
    problems: list[str] = []
    async with open_resources(settings) as resources:
        engine = resources.engine
        try:
            await probe_database(engine)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one readable line
            problems.append(f"database unreachable at {engine.url!r}: {describe(exc)}")
        else:
            click.echo(f"✓ database reachable ({engine.url.get_backend_name()})")
            try:
                await migrations.ensure_current(engine)
                click.echo("✓ database schema is at the latest migration")
            except migrations.SchemaBehind as exc:
                if settings.is_production:
                    problems.append(str(exc))
                else:
                    click.echo("• database schema is behind; `depot serve` applies it at start")
        if settings.redis_url and resources.redis is not None:
            try:
                await probe_redis(resources.redis)
                click.echo("✓ redis reachable")
            except Exception as exc:  # noqa: BLE001
                problems.append(
                    f"redis unreachable at {_hide_password(settings.redis_url)}: {describe(exc)}"
                )
        try:
            await probe_storage(resources.storage)
            click.echo(f"✓ storage usable ({urlsplit(settings.storage_url).scheme})")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"storage unusable: {describe(exc)}")
        if settings.smtp_url is not None:
            try:
                await probe_smtp(settings)
                click.echo("✓ mail server reachable")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"mail server unreachable: {describe(exc)}")
        elif settings.is_production:
            click.echo("• no DEPOT_SMTP_URL: mail (resets, verification, notifications) is off")
        else:
            click.echo(f"• no DEPOT_SMTP_URL: mails are written to {settings.outbox_dir}")
    return problems


def _hide_password(url: str) -> str:
    """``url`` with its password masked, as SQLAlchemy shows database URLs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


@main.command("create-admin")
@click.option("--email", required=True, help="The admin's email address.")
@click.option("--display-name", default="Admin", show_default=True)
@click.option(
    "--password",
    envvar="DEPOT_ADMIN_PASSWORD",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Prompted for when not given; scripts can set DEPOT_ADMIN_PASSWORD instead.",
)
def create_admin(email: str, display_name: str, password: str) -> None:
    """Create an admin account, or make an existing account an admin."""
    settings = _settings()

    async def run(engine: AsyncEngine) -> str:
        async with create_sessionmaker(engine)() as db:
            existing = await users.find_by_email(db, users.normalize_email(email))
            if existing is not None:
                existing.role = Role.ADMIN
                users.touch(existing)
                db.add(existing)
                message = f"{existing.email} is now an admin (password unchanged)."
            else:
                user = await users.create_user(
                    db,
                    settings,
                    email=email,
                    password=password,
                    display_name=display_name,
                    role=Role.ADMIN,
                )
                # The operator vouches for the address: no verification mail to wait for.
                user.email_verified_at = utcnow()
                message = f"Admin {user.email} created."
            await db.commit()
            return message

    try:
        click.echo(_with_engine(settings, run))
    except DepotError as exc:
        click.echo(f"✗ {exc.message}", err=True)
        sys.exit(1)


@main.command("export-schema")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file."
)
def export_schema(output: Path | None) -> None:
    """Print the GraphQL schema (SDL), as checked into schema.graphql."""
    from schema import export_sdl

    sdl = export_sdl()
    if output is None:
        click.echo(sdl, nl=False)
    else:
        output.write_text(sdl, encoding="utf-8")
