"""Settings from ``DEPOT_*`` variables and ``.env``: defaults, normalisation, readable errors.

Each test starts with no ``DEPOT_*`` variable set and in an empty working
directory (the autouse ``_hermetic`` fixture), so ``.env`` is whatever the test
writes there.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from core.settings import SECRET_KEY_FILE, SettingsError, load_settings
from tests.support import STRONG_SECRET


def _problems() -> list[str]:
    """The problem lines :func:`load_settings` reports for the current environment."""
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def _production(monkeypatch: pytest.MonkeyPatch, secret: str | None = STRONG_SECRET) -> None:
    monkeypatch.setenv("DEPOT_ENVIRONMENT", "production")
    if secret is not None:
        monkeypatch.setenv("DEPOT_SECRET_KEY", secret)


# -- the database URL ---------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://depot:pw@db:5432/depot", "postgresql+asyncpg://depot:pw@db:5432/depot"),
        ("postgresql://depot:pw@db/depot", "postgresql+asyncpg://depot:pw@db/depot"),
        ("postgresql+asyncpg://depot@db/depot", "postgresql+asyncpg://depot@db/depot"),
        ("sqlite:///data/depot.db", "sqlite+aiosqlite:///data/depot.db"),
        ("sqlite:////srv/depot.db", "sqlite+aiosqlite:////srv/depot.db"),
        ("sqlite+aiosqlite:///data/depot.db", "sqlite+aiosqlite:///data/depot.db"),
    ],
)
def test_database_url_uses_async_drivers(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    monkeypatch.setenv("DEPOT_DATABASE_URL", given)
    assert load_settings().database_url == expected


@pytest.mark.parametrize(
    "url", ["mysql://depot@db/depot", "postgresql+psycopg2://depot@db/depot", "depot.db"]
)
def test_unsupported_database_url_says_what_to_use(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DEPOT_DATABASE_URL", url)
    [problem] = _problems()
    assert problem.startswith("DEPOT_DATABASE_URL: unsupported database URL scheme")
    assert "postgresql://" in problem
    assert "sqlite:///" in problem


@pytest.mark.parametrize("database_url", [None, ""], ids=["unset", "empty"])
def test_no_database_url_means_sqlite_under_var_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str | None
) -> None:
    if database_url is not None:
        monkeypatch.setenv("DEPOT_DATABASE_URL", database_url)
    monkeypatch.setenv("DEPOT_VAR_DIR", str(tmp_path / "data"))
    settings = load_settings()
    url = make_url(settings.database_url)
    assert url.drivername == "sqlite+aiosqlite"
    assert url.database == str(tmp_path / "data" / "depot.db")
    assert settings.is_sqlite


# -- the secret key -----------------------------------------------------------


def test_development_generates_a_private_secret_once(tmp_path: Path) -> None:
    first = load_settings()
    path = tmp_path / "var" / SECRET_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.secret == path.read_text(encoding="utf-8")
    assert len(first.secret) >= 32
    assert load_settings().secret == first.secret


def test_empty_secret_counts_as_unset_in_development(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A blank `DEPOT_SECRET_KEY=` line (as in a copied .env template) must not
    # leave tokens signed with an empty key.
    monkeypatch.setenv("DEPOT_SECRET_KEY", "")
    secret = load_settings().secret
    assert secret, "the empty DEPOT_SECRET_KEY was taken as the signing key"
    assert secret == (tmp_path / "var" / SECRET_KEY_FILE).read_text(encoding="utf-8")


def test_production_requires_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    _production(monkeypatch, secret=None)
    [problem] = _problems()
    assert "DEPOT_SECRET_KEY must be set in production" in problem
    assert "secrets.token_urlsafe(48)" in problem


@pytest.mark.parametrize("secret", ["short", "ab" * 32])
def test_production_refuses_a_weak_secret(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    _production(monkeypatch, secret)
    [problem] = _problems()
    assert "DEPOT_SECRET_KEY is too weak for production" in problem
    assert "secrets.token_urlsafe(48)" in problem


def test_production_with_a_strong_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _production(monkeypatch)
    settings = load_settings()
    assert settings.is_production
    assert settings.secret == STRONG_SECRET
    assert not (tmp_path / "var" / SECRET_KEY_FILE).exists()


# -- sources: .env and the environment ----------------------------------------


def test_values_come_from_dot_env(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "DEPOT_LOG_LEVEL=DEBUG\nDEPOT_CORS_ORIGINS=https://app.example\n", encoding="utf-8"
    )
    settings = load_settings()
    assert settings.log_level == "DEBUG"
    assert settings.cors_origins == ["https://app.example"]


def test_environment_beats_dot_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DEPOT_LOG_LEVEL=DEBUG\n", encoding="utf-8")
    monkeypatch.setenv("DEPOT_LOG_LEVEL", "ERROR")
    assert load_settings().log_level == "ERROR"


# -- readable errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEPOT_LOG_LEVEL", "LOUD"),
        ("DEPOT_DATABASE_POOL_SIZE", "0"),
        ("DEPOT_DATABASE_POOL_SIZE", "ten"),
        ("DEPOT_ENVIRONMENT", "staging"),
        ("DEPOT_PUBLIC_BASE_URL", "not a url"),
        ("DEPOT_GRAPHIQL", "maybe"),
        ("DEPOT_REDIS_URL", "http://127.0.0.1:6379/0"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    [problem] = _problems()
    assert problem.startswith(f"{variable}: ")
    assert "\n" not in problem


def test_each_bad_value_gets_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOT_LOG_LEVEL", "LOUD")
    monkeypatch.setenv("DEPOT_DATABASE_POOL_SIZE", "0")
    problems = _problems()
    assert len(problems) == 2, problems
    assert sorted(problem.split(":", 1)[0] for problem in problems) == [
        "DEPOT_DATABASE_POOL_SIZE",
        "DEPOT_LOG_LEVEL",
    ]


def test_bad_value_in_dot_env_names_its_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DEPOT_GRAPHQL_MAX_DEPTH=1\n", encoding="utf-8")
    [problem] = _problems()
    assert problem.startswith("DEPOT_GRAPHQL_MAX_DEPTH: ")


# -- individual values --------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [("debug", "DEBUG"), ("Warning", "WARNING")])
def test_log_level_ignores_case(monkeypatch: pytest.MonkeyPatch, given: str, expected: str) -> None:
    monkeypatch.setenv("DEPOT_LOG_LEVEL", given)
    assert load_settings().log_level == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, []),
        ("https://app.example", ["https://app.example"]),
        (
            " https://app.example, http://localhost:5173 ,,",
            ["https://app.example", "http://localhost:5173"],
        ),
    ],
)
def test_cors_origins_are_a_comma_list(
    monkeypatch: pytest.MonkeyPatch, given: str | None, expected: list[str]
) -> None:
    if given is not None:
        monkeypatch.setenv("DEPOT_CORS_ORIGINS", given)
    assert load_settings().cors_origins == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("rediss://:pw@cache:6380/1", "rediss://:pw@cache:6380/1"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("", None),
    ],
)
def test_redis_url(monkeypatch: pytest.MonkeyPatch, given: str, expected: str | None) -> None:
    monkeypatch.setenv("DEPOT_REDIS_URL", given)
    assert load_settings().redis_url == expected


def test_redis_url_scheme_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOT_REDIS_URL", "memcached://cache:11211")
    [problem] = _problems()
    assert problem.startswith("DEPOT_REDIS_URL: ")
    assert "redis://" in problem


def test_redis_names_keep_their_names_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.broker import queue_name
    from workers.scheduler import lock_key

    prefix = load_settings().redis_prefix
    assert (queue_name(prefix), lock_key(prefix)) == ("depot-jobs", "depot:maintenance:lock")
    monkeypatch.setenv("DEPOT_REDIS_PREFIX", "depot-staging")
    prefix = load_settings().redis_prefix
    assert (queue_name(prefix), lock_key(prefix)) == (
        "depot-staging-jobs",
        "depot-staging:maintenance:lock",
    )


@pytest.mark.parametrize("given", ["", "-depot", "de pot", "depot:x", "d" * 65])
def test_redis_prefix_is_checked(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv("DEPOT_REDIS_PREFIX", given)
    [problem] = _problems()
    assert problem.startswith("DEPOT_REDIS_PREFIX: ")
    assert "letters, digits" in problem


@pytest.mark.parametrize(
    ("environment", "log_format", "json_logs"),
    [
        ("development", "auto", False),
        ("production", "auto", True),
        ("development", "json", True),
        ("production", "console", False),
    ],
)
def test_json_logs(
    monkeypatch: pytest.MonkeyPatch, environment: str, log_format: str, json_logs: bool
) -> None:
    monkeypatch.setenv("DEPOT_ENVIRONMENT", environment)
    monkeypatch.setenv("DEPOT_SECRET_KEY", STRONG_SECRET)
    monkeypatch.setenv("DEPOT_LOG_FORMAT", log_format)
    assert load_settings().json_logs is json_logs


def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOT_LOG_LEVEL", "ERROR")
    assert load_settings(log_level="debug").log_level == "DEBUG"
