"""Benchmark: time from opening a scan to a fully sharp first screen, in headless Chromium, with
the viewer's tuned tile-loading options against OpenSeadragon's defaults.

The app runs as in production on loopback: gunicorn with deploy/gunicorn.conf.py (gthread) on a
free port, a temporary PostgreSQL database, the tile cache in Redis, DEBUG off and the static
files collected (whitenoise serves them). A synthetic scan (`--size`, a pyramidal JPEG TIFF) is
registered in a study whose annotator Debian's Chromium logs in as, once; each measured load then
runs in a new browser context (empty HTTP cache) carrying that session, with the tile cache
emptied first (every Redis key of the run's prefix deleted, so every tile is cold), and opens the
scan's annotation page at `--viewport`.

    tuned      the page as served: annotate.js spreads frontend/static/js/lib/viewer-options.js
               into its OpenSeadragon options.
    defaults   the same page with that module answered by Playwright (`route`) as
               `export const TILE_LOADING = {};`, i.e. OpenSeadragon's own defaults. The tuned
               loads route the module too (passed on to the server untouched), so that both pay
               the same request interception.

The figure is milliseconds from navigation start (the page's performance.timeOrigin) until
OpenSeadragon's TiledImage last reports `fully-loaded-change` with fullyLoaded true, i.e. every
tile the current view needs at its level is drawn; the page is watched until it has stayed fully
loaded for QUIET_MS, so a later change of view (a resize) would count. Also counted per load:
tiles requested (image requests outside /static/) and tiles that failed. The two variants take
turns, `--loads` times each; medians, p95 and the ratio are printed.

    .venv/bin/python bench/viewer.py [--loads 10] [--size 20000] [--viewport 1920x1080]
                                     [--workers 2] [--redis-db 10]

The database (cytomark_bench_viewer), the scan and the run's Redis keys are removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import benchenv

DB_NAME = "cytomark_bench_viewer"
SEED = 2019
HOST = "127.0.0.1"
USERNAME = "bench-viewer"
PASSWORD = secrets.token_urlsafe(16)
QUIET_MS = 750  # fully loaded for this long with no change: the first screen is done
LOAD_TIMEOUT_MS = 60000
OPTIONS_MODULE = "**/js/lib/viewer-options*.js"  # also the hashed name of the production storage
DEFAULTS_MODULE = "export const TILE_LOADING = {};\n"

# Runs in every page before its own scripts. The viewer exists once the deferred and module
# scripts have run (DOMContentLoaded); its image is added later, when the descriptor comes, and
# no tile can load before that, so no fully-loaded change is missed.
WATCH_VIEWER = """
window.__viewerBench = { changes: [], opened: null, tilesLoaded: 0, tilesFailed: 0, options: null };
document.addEventListener("DOMContentLoaded", () => {
  const bench = window.__viewerBench;
  const viewer = OpenSeadragon.getViewer("viewer");
  if (!viewer) return;
  bench.options = {
    maxTilesPerFrame: viewer.maxTilesPerFrame, imageLoaderLimit: viewer.imageLoaderLimit,
    immediateRender: viewer.immediateRender,
  };
  const watch = (item) => item.addHandler("fully-loaded-change", (event) => {
    bench.changes.push({ t: performance.now(), fullyLoaded: event.fullyLoaded });
  });
  for (let i = 0; i < viewer.world.getItemCount(); i++) watch(viewer.world.getItemAt(i));
  viewer.world.addHandler("add-item", (event) => watch(event.item));
  viewer.addOnceHandler("open", () => { bench.opened = performance.now(); });
  viewer.addHandler("tile-loaded", () => bench.tilesLoaded++);
  viewer.addHandler("tile-load-failed", () => bench.tilesFailed++);
});
"""

SETTLED = """quiet => {
  const changes = window.__viewerBench.changes;
  const last = changes[changes.length - 1];
  return !!last && last.fullyLoaded && performance.now() - last.t > quiet;
}"""


@dataclass
class Load:
    variant: str
    opened_ms: float
    sharp_ms: float
    tiles_requested: int
    tiles_failed: int
    options: dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=10, help="page loads per variant")
    parser.add_argument("--size", type=int, default=20000, help="scan width and height, px")
    parser.add_argument("--viewport", default="1920x1080", help="browser window, WxH CSS px")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (x 4 threads)")
    parser.add_argument(
        "--cache",
        choices=["cold", "warm"],
        default="cold",
        help="cold: the tile cache emptied before each load; warm: every tile cached first",
    )
    parser.add_argument("--redis-db", type=int, default=10, help="Redis database of the cache")
    args = parser.parse_args()
    width, height = (int(part) for part in args.viewport.lower().split("x"))

    with (
        tempfile.TemporaryDirectory(prefix="cytomark-bench-viewer-") as folder,
        benchenv.temporary_database(DB_NAME) as db_url,
    ):
        env = benchenv.project_env(
            settings="config.settings.base",
            db_url=db_url,
            folder=Path(folder),
            redis_db=args.redis_db,
            celery_db=args.redis_db,
            ALLOWED_HOSTS=f"{HOST},localhost",
        )
        benchenv.setup_django(env)
        prefix = f"{env['CACHE_KEY_PREFIX']}:*"
        try:
            run_benchmark(Path(folder), args, (width, height), prefix)
        finally:
            benchenv.delete_redis_keys(args.redis_db, prefix)


def run_benchmark(folder: Path, args, viewport: tuple[int, int], prefix: str) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connections
    from django.urls import reverse

    from annotator.models import Membership

    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=benchenv.ROOT,
        env=os.environ.copy(),
        check=True,
    )
    User = get_user_model()
    owner = User.objects.create_user("bench-coordinator")
    started = time.perf_counter()
    study, scan, _ = benchenv.register_scan(
        folder, size=args.size, cells=100, seed=SEED, user=owner
    )
    made_s = time.perf_counter() - started
    annotator = User.objects.create_user(USERNAME, password=PASSWORD)
    Membership.objects.create(study=study, user=annotator, role=Membership.Role.ANNOTATOR)
    page_path = reverse("annotate", args=[study.name, scan.pk])
    connections.close_all()

    server, port = start_gunicorn(args.workers, folder / "gunicorn.log")
    base = f"http://{HOST}:{port}"
    try:
        loads = measure(base, page_path, args, viewport, prefix, folder / "tiles")
    finally:
        benchenv.stop_server(server)

    print(
        f"\nscan {args.size} x {args.size} px (made and registered in {made_s:.1f} s); "
        f"Chromium at {viewport[0]} x {viewport[1]}; gunicorn {args.workers} workers x 4 threads; "
        f"every tile {args.cache}; {args.loads} loads each, taking turns\n"
    )
    print(
        f"{'':10} {'sharp: median':>14} {'p95':>8}   {'of which open -> sharp':>22} {'p95':>8}"
        f" {'tiles requested':>16} {'failed':>7}"
    )
    medians = {}
    for variant in ("defaults", "tuned"):
        mine = [load for load in loads if load.variant == variant]
        times = [load.sharp_ms for load in mine]
        tiling = [load.sharp_ms - load.opened_ms for load in mine]
        medians[variant] = (statistics.median(times), statistics.median(tiling))
        tiles = statistics.median(load.tiles_requested for load in mine)
        print(
            f"{variant:10} {medians[variant][0]:11.0f} ms {benchenv.percentile(times, 95):5.0f} ms"
            f"   {medians[variant][1]:19.0f} ms {benchenv.percentile(tiling, 95):5.0f} ms"
            f" {tiles:16.0f} {sum(load.tiles_failed for load in mine):7d}"
        )
    for index, what in enumerate(("navigation start -> sharp", "viewer open -> sharp")):
        ratio = medians["tuned"][index] / medians["defaults"][index]
        print(f"tuned / defaults, median {what}: {ratio:.2f} ({1 / ratio:.1f} x as fast)")
    tuned = next(load for load in loads if load.variant == "tuned")
    print(f"tuned options as the viewer holds them: {json.dumps(tuned.options)}")


def measure(base: str, page_path: str, args, viewport, prefix: str, tile_dir: Path) -> list[Load]:
    from playwright.sync_api import sync_playwright

    loads: list[Load] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=benchenv.CHROMIUM, args=benchenv.CHROMIUM_FLAGS, headless=True
        )
        try:
            session = log_in(browser, base)
            order = ["defaults", "tuned"]
            if args.cache == "warm":  # every tile either variant asks for, in the cache
                for variant in order:
                    load_once(browser, session, base + page_path, variant, viewport)
            for index in range(args.loads):
                for variant in order if index % 2 == 0 else reversed(order):
                    if args.cache == "cold":  # the tiles made (files) and the shared cache
                        shutil.rmtree(tile_dir / "cache", ignore_errors=True)
                        benchenv.delete_redis_keys(args.redis_db, prefix)
                    load = load_once(browser, session, base + page_path, variant, viewport)
                    loads.append(load)
                    print(
                        f"  {index + 1}/{args.loads} {variant:9} {load.sharp_ms:6.0f} ms "
                        f"{load.tiles_requested:4d} tiles",
                        flush=True,
                    )
        finally:
            browser.close()
    return loads


def log_in(browser, base: str) -> dict:
    """The session of the bench's annotator, logged in through the login page once."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(base + "/login/")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    state = context.storage_state()
    context.close()
    return state


def load_once(browser, session: dict, url: str, variant: str, viewport) -> Load:
    context = browser.new_context(
        storage_state=session, viewport={"width": viewport[0], "height": viewport[1]}
    )
    try:
        if variant == "defaults":
            context.route(
                OPTIONS_MODULE,
                lambda route: route.fulfill(
                    body=DEFAULTS_MODULE, content_type="text/javascript; charset=utf-8"
                ),
            )
        else:
            context.route(OPTIONS_MODULE, lambda route: route.continue_())
        context.add_init_script(WATCH_VIEWER)
        tiles = []
        context.on(
            "request",
            lambda request: (
                tiles.append(request.url)
                if request.resource_type == "image" and "/static/" not in request.url
                else None
            ),
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        try:
            page.wait_for_function(SETTLED, arg=QUIET_MS, timeout=LOAD_TIMEOUT_MS, polling=50)
        except Exception as error:
            problem = f"{variant}: the viewer never got fully loaded ({errors})"
            raise RuntimeError(problem) from error
        bench = page.evaluate("window.__viewerBench")
        if errors:
            raise RuntimeError(f"{variant}: script errors on the page: {errors}")
        last_sharp = [change["t"] for change in bench["changes"] if change["fullyLoaded"]][-1]
        opened = bench["opened"] if bench["opened"] is not None else float("nan")
        return Load(variant, opened, last_sharp, len(tiles), bench["tilesFailed"], bench["options"])
    finally:
        context.close()


def start_gunicorn(workers: int, log: Path):
    port = benchenv.free_port(HOST)
    env = {**os.environ, "WEB_CONCURRENCY": str(workers), "GUNICORN_BIND": f"{HOST}:{port}"}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(benchenv.ROOT / "deploy" / "gunicorn.conf.py"),
        "--access-logfile",
        "/dev/null",
        "--error-logfile",
        str(log),
        "config.wsgi:application",
    ]
    server = subprocess.Popen(command, cwd=benchenv.ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health/", timeout=5) as answer:
                if answer.status == 200:
                    return server, port
        except OSError:
            time.sleep(0.2)
    benchenv.stop_server(server)
    raise RuntimeError(f"gunicorn did not answer /health/ within 60 s; see {log}")


if __name__ == "__main__":
    main()
