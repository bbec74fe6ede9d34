"""Benchmark: start-up time and resident memory of one gunicorn web worker, against a bare
Django project under the same gunicorn.

Each server is started as in production (`gunicorn -c deploy/gunicorn.conf.py`: gthread, 4
threads) with one worker (`WEB_CONCURRENCY=1`) on a free port. Start-up is the wall time from
spawning gunicorn to the first 200 answer of `GET /health/` (the worker imports the project,
and its first request imports the URLconf, so every view module and what it imports); the
worker's memory is its VmRSS (/proc/PID/status) right after that answer. The worker's memory
map tells which heavy libraries it loaded (torch, matplotlib, scikit-learn, SciPy).

    Cytomark   `config.wsgi:application` of a checkout on the embedded defaults (SQLite and media
               in a temporary VAR_DIR, in-process cache, DEBUG on as `make run` has it); its
               /health/ runs `SELECT 1` and a cache round trip.
    baseline   a bare Django project written by this script into a temporary folder: the same
               Django, settings of a few lines (no apps), one view at /health/ doing the same
               `SELECT 1` on SQLite and a round trip through the in-process cache.

Every server is started `--repeats` times, the servers taking turns, and the medians are
printed with each checkout's figures as multiples of the baseline's. `--checkout` names the
project trees to measure (default: this one), e.g. the commit before a change beside it:

    git worktree add /tmp/before 6671aca
    .venv/bin/python bench/web_process.py --checkout /tmp/before --checkout . [--repeats 7]

Every checkout runs with this interpreter (the same virtual environment) and its own
`config` package (gunicorn serves from the checkout's folder).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import benchenv

ROOT = benchenv.ROOT
HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 120
POLL_SECONDS = 0.01
MB = 1024**2
# Shared objects whose presence in the worker's memory map shows the library was imported.
LIBRARIES = {
    "torch": "libtorch",
    "matplotlib": "matplotlib/ft2font",
    "scikit-learn": "sklearn/",
    "scipy": "scipy/",
}
# Settings that would point a server away from its embedded defaults.
PROJECT_VARIABLES = ("DATABASE_URL", "REDIS_URL", "CACHE_KEY_PREFIX", "STORAGE_BACKEND", "DEBUG")

BARE_SETTINGS = """\
SECRET_KEY = "bench-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "bare.urls"
INSTALLED_APPS = []
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "{db}"}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
USE_TZ = True
"""

BARE_URLS = """\
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse
from django.urls import path


def health(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    cache.set("health-probe", "ok", 5)
    return JsonResponse({"status": "ok", "cache": cache.get("health-probe")})


urlpatterns = [path("health/", health)]
"""

BARE_WSGI = """\
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bare.settings")
application = get_wsgi_application()
"""


@dataclass(frozen=True)
class Server:
    """What gunicorn serves: a label, the folder it runs in, the app and its environment."""

    label: str
    folder: Path
    app: str
    env: dict[str, str]


@dataclass(frozen=True)
class Start:
    seconds: float
    rss: int
    libraries: tuple[str, ...]


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", "/health/")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _libraries(pid: int) -> tuple[str, ...]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return tuple(name for name, marker in LIBRARIES.items() if marker in maps)


def start_once(server: Server, log: Path) -> Start:
    """Spawn gunicorn with one worker, time it to its first 200 of /health/, read the worker."""
    port = benchenv.free_port(HOST)
    env = {**server.env, "WEB_CONCURRENCY": "1", "GUNICORN_BIND": f"{HOST}:{port}"}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "deploy" / "gunicorn.conf.py"),
        "--access-logfile",
        "/dev/null",
        "--error-logfile",
        str(log),
        server.app,
    ]
    started = time.perf_counter()
    master = subprocess.Popen(command, cwd=server.folder, env=env, stdout=subprocess.DEVNULL)
    try:
        while not _answers(port):
            if master.poll() is not None:
                raise RuntimeError(f"{server.label}: gunicorn exited; see {log}")
            if time.perf_counter() - started > START_TIMEOUT_SECONDS:
                raise RuntimeError(f"{server.label}: no answer in {START_TIMEOUT_SECONDS} s")
            time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - started
        workers = _children(master.pid)
        if len(workers) != 1:
            raise RuntimeError(f"{server.label}: expected one worker, found {workers}")
        return Start(seconds, _rss(workers[0]), _libraries(workers[0]))
    finally:
        benchenv.stop_server(master)


def bare_project(folder: Path) -> Server:
    package = folder / "bare"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    db = str(folder / "bare.sqlite3")
    (package / "settings.py").write_text(BARE_SETTINGS.replace("{db}", db))
    (package / "urls.py").write_text(BARE_URLS)
    (package / "wsgi.py").write_text(BARE_WSGI)
    env = {**_clean_environment(), "DJANGO_SETTINGS_MODULE": "bare.settings"}
    return Server("bare Django project", folder, "bare.wsgi:application", env)


def cytomark(checkout: Path, folder: Path) -> Server:
    env = {
        **_clean_environment(),
        "DJANGO_SETTINGS_MODULE": "config.settings.base",
        "VAR_DIR": str(folder / "var"),
        "LOG_LEVEL": "WARNING",
    }
    (folder / "var" / "static").mkdir(parents=True)  # WhiteNoise warns about a missing one
    loaded = subprocess.run(
        [sys.executable, "-c", "import config; print(config.__file__)"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(loaded).resolve().is_relative_to(checkout.resolve()):
        sys.exit(f"{checkout}: Python imports its config package from {loaded}")
    return Server(f"Cytomark {_describe(checkout)}", checkout, "config.wsgi:application", env)


def _clean_environment() -> dict[str, str]:
    drop = set(PROJECT_VARIABLES)
    return {
        key: value
        for key, value in os.environ.items()
        if key not in drop
        and not key.startswith(("CELERY_", "DJANGO_", "GUNICORN_", "AWS_"))
        and key != "WEB_CONCURRENCY"
    }


def _describe(checkout: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or str(checkout)
    changed = git("status", "--porcelain", "--untracked-files=no")
    return commit + (" + working tree changes" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, action="append", help="default: this one")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    checkouts = args.checkout or [ROOT]
    with tempfile.TemporaryDirectory(prefix="cytomark-bench-web-") as temporary:
        folder = Path(temporary)
        servers = [bare_project(folder / "bare")]
        for index, checkout in enumerate(checkouts):
            servers.append(cytomark(checkout.resolve(), folder / f"cytomark-{index}"))
        starts: dict[str, list[Start]] = {server.label: [] for server in servers}
        for repeat in range(args.repeats):
            for server in servers if repeat % 2 == 0 else reversed(servers):
                start = start_once(server, folder / "gunicorn.log")
                starts[server.label].append(start)
                print(
                    f"  {repeat + 1}/{args.repeats} {server.label:45} {start.seconds:6.2f} s "
                    f"{start.rss / MB:6.0f} MB",
                    flush=True,
                )
    print(
        f"\nOne gunicorn worker (deploy/gunicorn.conf.py, gthread x 4), spawn to the first 200 "
        f"of GET /health/, and its RSS then; medians of {args.repeats}\n"
    )
    baseline = _medians(starts[servers[0].label])
    for server in servers:
        seconds, rss = _medians(starts[server.label])
        libraries = sorted({name for start in starts[server.label] for name in start.libraries})
        ratio = (
            ""
            if server is servers[0]
            else f"  ({seconds / baseline[0]:4.1f} x the time, {rss / baseline[1]:4.1f} x the RSS)"
        )
        print(
            f"{server.label:45} start-up {seconds:5.2f} s  RSS {rss / MB:5.0f} MB{ratio}  "
            f"loads: {', '.join(libraries) or 'none of ' + ', '.join(LIBRARIES)}"
        )


def _medians(starts: list[Start]) -> tuple[float, float]:
    return (
        statistics.median(start.seconds for start in starts),
        statistics.median(start.rss for start in starts),
    )


if __name__ == "__main__":
    main()
