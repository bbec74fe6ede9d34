"""A real Celery worker for the tests about background work: a subprocess on the tests'
database, Redis and a media folder of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings

from config.celery import app

ROOT = Path(__file__).resolve().parents[1]


def database_url() -> str:
    """The URL of the database the tests run against (pytest-django's test database)."""
    db = settings.DATABASES["default"]
    credentials = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        credentials += ":" + quote(db["PASSWORD"], safe="")
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{credentials}@{host}:{port}/{db['NAME']}"


def purge_queues(queues) -> None:
    """Drop tasks an earlier run may have left in the broker."""
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queues:
            channel.queue_purge(queue)


def start_worker(
    queues, media: Path, extra_env: dict | None = None, name: str = ""
) -> tuple[subprocess.Popen, Path]:
    """Start a worker on `queues` and wait until it is ready; its process and log."""
    label = "-".join(queues) + (f"-{name}" if name else "")
    log = media.parent / f"worker-{label}.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "MEDIA_ROOT": str(media),
        **(extra_env or {}),
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--pool=solo",
                f"--queues={','.join(queues)}",
                f"--hostname=test-{label}-{os.getpid()}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "info",
            ],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while " ready." not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_worker(process)
            pytest.fail(f"The Celery worker did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return process, log


def stop_worker(process: subprocess.Popen) -> None:
    """Stop a worker warmly (SIGTERM), killing it if it does not end within 15 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def celery_worker(queues, media: Path, extra_env: dict | None = None) -> Iterator[Path]:
    """Run a worker on `queues` (their old tasks purged) until the block ends; its log."""
    purge_queues(queues)
    process, log = start_worker(queues, media, extra_env)
    try:
        yield log
    finally:
        stop_worker(process)
