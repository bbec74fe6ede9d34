"""The settings profiles: tests refuse SQLite, production refuses an unsafe start and passes
`check --deploy` with no warnings once its variables are set."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_manage(*args, **env) -> subprocess.CompletedProcess:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE"}
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "config.settings.production",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
    "REDIS_URL": "redis://127.0.0.1:6379/14",
    "ALLOWED_HOSTS": "cytomark.example.org",
}


def test_test_settings_refuse_sqlite():
    result = run_manage(
        "check", DJANGO_SETTINGS_MODULE="config.settings.test", DATABASE_URL="sqlite:////tmp/x.db"
    )
    assert result.returncode != 0
    assert "The tests run against PostgreSQL" in result.stderr


def test_production_passes_check_deploy_without_warnings():
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY=secrets.token_urlsafe(64),
        **PRODUCTION,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SECRET_KEY must be set"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY must be set"),
        ({"SECRET_KEY": "django-insecure-" + "a" * 60}, "SECRET_KEY must be set"),
        ({"SECRET_KEY": secrets.token_urlsafe(64), "DEBUG": "true"}, "DEBUG must be off"),
        (
            {"SECRET_KEY": secrets.token_urlsafe(64), "DATABASE_URL": "sqlite:////tmp/p.db"},
            "needs DATABASE_URL=postgres",
        ),
        (
            {"SECRET_KEY": secrets.token_urlsafe(64), "TILE_ACCEL_REDIRECT": "/_tile_files/"},
            "TILE_TOKEN_SECRET must be set",
        ),
    ],
)
def test_production_refuses_an_unsafe_start(env, message):
    result = run_manage("check", **{**PRODUCTION, **env})
    assert result.returncode != 0
    assert message in result.stderr
