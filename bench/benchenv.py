"""What the HTTP benchmarks share: a throw-away PostgreSQL database, the environment that points
the project at it, a synthetic scan registered in a study, and percentiles.

Nothing here is a benchmark; `bench/tiles.py`, `bench/labels.py` and `bench/web_process.py`
import it. Every database,
folder and Redis key it makes is named after the benchmark and removed when the run ends.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The server that gets the temporary database; the database named in it is only used to connect.
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
STUDY = "bench"


def database_url(name: str) -> str:
    parts = urlsplit(PG_ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin_execute(statement: sql.Composable) -> None:
    connection = psycopg2.connect(PG_ADMIN_URL)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def _drop(name: str) -> None:
    _admin_execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def temporary_database(name: str) -> Iterator[str]:
    """A fresh, empty database for one run (a leftover of an interrupted run is replaced)."""
    _drop(name)
    _admin_execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(name)
    finally:
        if "django" in sys.modules:
            from django.db import connections

            connections.close_all()
        _drop(name)


def project_env(
    *, settings: str, db_url: str, folder: Path, redis_db: int, celery_db: int, **extra: str
) -> dict[str, str]:
    """Environment for the project, this process and any server it starts: the bench database,
    Redis databases of the benchmark's own, and every file under ``folder``."""
    env = {
        "DJANGO_SETTINGS_MODULE": settings,
        "DATABASE_URL": db_url,
        "REDIS_URL": f"{REDIS_SERVER}/{redis_db}",
        "CACHE_KEY_PREFIX": f"cytomark-bench-{os.getpid()}",
        "CELERY_BROKER_URL": f"{REDIS_SERVER}/{celery_db}",
        "CELERY_RESULT_BACKEND": f"{REDIS_SERVER}/{celery_db}",
        "DEBUG": "False",
        "VAR_DIR": str(folder / "var"),
        "MEDIA_ROOT": str(folder / "media"),
        "SCAN_CACHE_DIR": str(folder / "scan-cache"),
        "TILE_DIR": str(folder / "tiles"),
        "SCAN_IMPORT_ROOTS": str(folder / "import"),
        "LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


def setup_django(env: dict[str, str]) -> None:
    """Migrate the bench database (as `manage.py migrate`) and set Django up in this process."""
    os.environ.update(env)
    # STATIC_ROOT: WhiteNoise warns about a missing one; the benchmarks serve no static files.
    (Path(env["VAR_DIR"]) / "static").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env=os.environ.copy(),
        check=True,
    )
    import django

    django.setup()


@contextlib.contextmanager
def django_in_process(db_name: str, redis_db: int) -> Iterator[Path]:
    """Django set up in this process on a fresh bench database and a temporary folder for
    files (both removed afterwards); yields the folder."""
    with (
        tempfile.TemporaryDirectory(prefix=f"{db_name}-") as folder,
        temporary_database(db_name) as db_url,
    ):
        env = project_env(
            settings="config.settings.base",
            db_url=db_url,
            folder=Path(folder),
            redis_db=redis_db,
            celery_db=redis_db,
        )
        setup_django(env)
        yield Path(folder)


def redis_db_keys(db: int) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(f"{REDIS_SERVER}/{db}")
    try:
        return client.keys("*")
    finally:
        client.close()


def require_empty_redis_db(db: int, option: str) -> None:
    """Refuse to start in a Redis database someone else uses: the run deletes what it leaves."""
    keys = redis_db_keys(db)
    if keys:
        sys.exit(
            f"Redis database {db} holds {len(keys)} keys already; choose another with {option}."
        )


def delete_redis_keys(db: int, pattern: str) -> int:
    """Delete the keys matching ``pattern`` in Redis database ``db``; returns how many."""
    import redis

    client = redis.Redis.from_url(f"{REDIS_SERVER}/{db}")
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()


def register_scan(folder: Path, *, size: int, cells: int, seed: int, user):
    """A synthetic scan made in the import root and registered in the bench study."""
    from annotator.models import Study
    from annotator.scans import ingest_scan
    from annotator.synthetic import make_synthetic_scan
    from annotator.taxonomy import latest_version, load_shipped_taxonomies

    load_shipped_taxonomies()
    study, _ = Study.objects.get_or_create(
        name=STUDY, defaults={"title": "Benchmark", "taxonomy": latest_version("aml-18")}
    )
    import_root = folder / "import"
    import_root.mkdir(parents=True, exist_ok=True)
    path = import_root / f"bench-{size}.tiff"
    manifest = make_synthetic_scan(path, width=size, height=size, cells=cells, seed=seed)
    scan = ingest_scan(path, study=study, patient_code="BENCH-01", user=user).scan
    return study, scan, manifest


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now, for a server the benchmark starts."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def stop_server(server: subprocess.Popen) -> None:
    """Stop a server the benchmark started (gunicorn: SIGTERM, its workers finish), killing it
    if it takes longer than 30 s."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# Debian's Chromium as the browser benches start it (the flags the project's guide asks for).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
