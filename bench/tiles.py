"""Benchmark: Deep Zoom tiles through the project's tile endpoint, against a plain OpenSlide loop.

The project's figure is what a viewer gets from
`GET /api/v1/scans/<id>/tiles/scan_files/<level>/<col>_<row>.jpeg`: Django's test client, logged
in (session) as an annotator of the study, drives the whole request in this process (middleware,
session and user lookup, the permission query, the tile cache, encoding on a miss). Settings are
`config.settings.base` with DEBUG off, a temporary PostgreSQL database and the tile cache in Redis
as in production; the in-process (locmem) tile cache of the embedded profile is measured too.

    cold   the tiles' cache entries deleted and the open slides closed first, so every request
           encodes its tile (and the first one opens the slide);
    warm   the same tiles again, each answered from the cache;
    304    the same tiles with If-None-Match, as a browser revalidates: no cache lookup at all.

The synthetic scan is stored as 256 px JPEG tiles, so the project serves it in its own tile grid
(256 px, no overlap: see annotator/tile_passthrough.py), tiles inside a stored level as the
stored bytes and the rest rendered. The sample is drawn from that grid, and the same number of
tiles from the same Deep Zoom levels of the 254/1 grid for the baseline.

The baseline is the least any server must do to make the viewer's tiles without passthrough: a
plain loop that opens the same file, builds
`openslide.deepzoom.DeepZoomGenerator(slide, 254, 1, limit_bounds=False)`, calls `get_tile` and
encodes JPEG at quality 80, with no HTTP, no database and no cache; its first tile pays for
opening the slide, as the cold passes' do. Beside it, `render_tile cold` is the project's tile
function alone (no HTTP, no cache, slides closed first): the passthrough itself.

Every answer is checked against a DeepZoomGenerator in the project's geometry: a rendered tile
must be the bytes that loop encodes, a passed-through tile must decode to the pixels its
`get_tile` gives (mean absolute difference at most 0.5 per channel). All runs alternate within
one process, on one synthetic scan; each figure is the best of `--repeats` rounds (by tiles/s),
and the ratios are those of the rates.

`--profile` then times each step of one tile request alone (session row, user row, permission
query, cache get, the plain get_tile + encode) and prints cProfile's view of a cold and a warm
pass, to show where the endpoint's time goes.

    .venv/bin/python bench/tiles.py [--size 20000] [--tiles 400] [--levels 4] [--repeats 3]
                                    [--profile]

The scan, the database (cytomark_bench_tiles) and the tiles' Redis keys are removed afterwards.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import benchenv

DB_NAME = "cytomark_bench_tiles"
SEED = 2019
WARM_GOAL = 10.0  # warm tiles at least this many times the plain loop's rate
COLD_GOAL = 3.0  # cold tiles (passthrough scan) at least this many times the plain loop's rate
PIXEL_TOLERANCE = 0.5  # mean absolute difference per channel for a passed-through tile

Tile = tuple[int, int, int]  # level, col, row


@dataclass
class Run:
    method: str
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.seconds

    @property
    def p50(self) -> float:
        return benchenv.percentile(self.latencies_ms, 50)

    @property
    def p95(self) -> float:
        return benchenv.percentile(self.latencies_ms, 95)


def sample_tiles(path: Path, levels: int, count: int, size: int, overlap: int) -> list[Tile]:
    """A fixed random sample of the tiles of the ``levels`` highest Deep Zoom levels of the
    scan's ``size``/``overlap`` grid."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    with openslide.open_slide(str(path)) as slide:
        deep_zoom = DeepZoomGenerator(slide, size, overlap, limit_bounds=False)
        top = deep_zoom.level_count - 1
        every = [
            (level, col, row)
            for level in range(top - levels + 1, top + 1)
            for col in range(deep_zoom.level_tiles[level][0])
            for row in range(deep_zoom.level_tiles[level][1])
        ]
    chosen = random.Random(SEED).sample(every, min(count, len(every)))
    return sorted(chosen)


@dataclass
class Expected:
    """What a tile of the project's geometry must be: the loop's bytes, or (passed through)
    a JPEG that decodes to the loop's pixels."""

    encoded: bytes
    pixels: bytes


def plain_loop(
    path: Path, tiles: list[Tile], size: int = 254, overlap: int = 1, keep_pixels: bool = False
) -> tuple[Run, dict[Tile, Expected]]:
    """The baseline: open the slide, then get_tile and encode each tile; nothing else."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    made: dict[Tile, Expected] = {}
    latencies = []
    started = last = time.perf_counter()
    slide = openslide.open_slide(str(path))
    deep_zoom = DeepZoomGenerator(slide, size, overlap, limit_bounds=False)
    for level, col, row in tiles:
        image = deep_zoom.get_tile(level, (col, row))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        made[(level, col, row)] = Expected(
            buffer.getvalue(), image.tobytes() if keep_pixels else b""
        )
        now = time.perf_counter()
        latencies.append((now - last) * 1000)
        last = now
    seconds = time.perf_counter() - started
    slide.close()
    return Run(f"plain DeepZoomGenerator loop {size}/{overlap}", seconds, latencies), made


def passed_through(answer: bytes, expected: Expected) -> bool | None:
    """True for a passed-through tile, False for the loop's own bytes, None for a wrong tile."""
    import numpy as np
    from PIL import Image

    if answer == expected.encoded:
        return False
    try:
        with Image.open(io.BytesIO(answer)) as image:
            pixels = np.frombuffer(image.convert("RGB").tobytes(), dtype=np.uint8)
    except OSError:
        return None
    want = np.frombuffer(expected.pixels, dtype=np.uint8)
    if pixels.shape != want.shape:
        return None
    mean = np.abs(pixels.astype(np.int16) - want.astype(np.int16)).mean()
    return True if mean <= PIXEL_TOLERANCE else None


def count_wrong(answers: dict[Tile, bytes], expected: dict[Tile, Expected]) -> tuple[int, int]:
    """How many answers are wrong, and how many were passed through."""
    verdicts = [passed_through(answers[tile], expected[tile]) for tile in expected]
    return sum(v is None for v in verdicts), sum(v is True for v in verdicts)


def render_pass(scan, tiles: list[Tile], expected: dict[Tile, Expected]) -> tuple[Run, int]:
    """The project's `render_tile` alone, slides closed first: no HTTP, no cache."""
    from annotator import tiles as project_tiles

    project_tiles.slide_handles.clear()
    answers = {}
    latencies = []
    started = last = time.perf_counter()
    for tile in tiles:
        answers[tile] = project_tiles.render_tile(scan, *tile)
        now = time.perf_counter()
        latencies.append((now - last) * 1000)
        last = now
    run = Run("render_tile cold (no HTTP)", time.perf_counter() - started, latencies)
    return run, count_wrong(answers, expected)[0]


def endpoint_pass(
    method: str, client, scan, tiles: list[Tile], expected: dict[Tile, Expected], revalidate: bool
) -> tuple[Run, int]:
    """Every tile through the endpoint; returns the run and how many answers were wrong."""
    from annotator import tiles as project_tiles

    headers = {}
    answers = {}
    wrong = 0
    latencies = []
    started = time.perf_counter()
    for level, col, row in tiles:
        url = f"/api/v1/scans/{scan.pk}/tiles/scan_files/{level}/{col}_{row}.jpeg"
        if revalidate:
            headers = {"If-None-Match": project_tiles.tile_etag(scan, level, col, row)}
        before = time.perf_counter()
        response = client.get(url, headers=headers)
        latencies.append((time.perf_counter() - before) * 1000)
        if revalidate:
            wrong += response.status_code != 304
        elif response.status_code != 200:
            wrong += 1
        else:
            answers[(level, col, row)] = response.content
    run = Run(method, time.perf_counter() - started, latencies)
    if not revalidate:
        wrong += count_wrong(answers, {t: e for t, e in expected.items() if t in answers})[0]
    return run, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="scan width and height, px")
    parser.add_argument("--tiles", type=int, default=400, help="tiles in the fixed sample")
    parser.add_argument("--levels", type=int, default=4, help="highest Deep Zoom levels sampled")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best of each counts")
    parser.add_argument("--redis-db", type=int, default=10, help="Redis database of the tile cache")
    parser.add_argument("--profile", action="store_true", help="cProfile a cold and a warm pass")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="cytomark-bench-tiles-") as folder,
        benchenv.temporary_database(DB_NAME) as db_url,
    ):
        env = benchenv.project_env(
            settings="config.settings.base",
            db_url=db_url,
            folder=Path(folder),
            redis_db=args.redis_db,
            celery_db=args.redis_db,
            ALLOWED_HOSTS="testserver,localhost,127.0.0.1",
        )
        benchenv.setup_django(env)
        try:
            run_benchmark(Path(folder), args)
        finally:
            benchenv.delete_redis_keys(args.redis_db, f"{env['CACHE_KEY_PREFIX']}:*")


def run_benchmark(folder: Path, args) -> None:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.cache import caches
    from django.test import Client, override_settings

    from annotator import tiles as project_tiles
    from annotator.models import Membership
    from annotator.scans import local_path

    User = get_user_model()
    owner = User.objects.create_user("bench-coordinator")
    started = time.perf_counter()
    study, scan, _ = benchenv.register_scan(
        folder, size=args.size, cells=100, seed=SEED, user=owner
    )
    made_s = time.perf_counter() - started
    annotator = User.objects.create_user("bench-annotator")
    Membership.objects.create(study=study, user=annotator, role=Membership.Role.ANNOTATOR)
    client = Client()
    client.force_login(annotator)

    path = local_path(scan)
    descriptor = ElementTree.fromstring(project_tiles.dzi_descriptor(scan))
    tile_size, overlap = int(descriptor.get("TileSize")), int(descriptor.get("Overlap"))
    tiles = sample_tiles(path, args.levels, args.tiles, tile_size, overlap)
    plain_tiles = sample_tiles(path, args.levels, args.tiles, 254, 1)
    levels = sorted({level for level, _, _ in tiles})
    _, expected = plain_loop(path, tiles, tile_size, overlap, keep_pixels=True)
    wrong_before, through = count_wrong(
        {tile: project_tiles.render_tile(scan, *tile) for tile in tiles}, expected
    )
    print(
        f"scan: {args.size} x {args.size} px (made and registered in {made_s:.1f} s), "
        f"scheme {project_tiles.tile_scheme(scan)}; {len(tiles)} tiles sampled from Deep Zoom "
        f"levels {levels[0]}-{levels[-1]} of its {tile_size}/{overlap} grid, {through} of them "
        f"passed through; as many of the 254/1 grid for the plain loop; "
        f"best of {args.repeats} rounds"
    )

    locmem = {
        **settings.CACHES,
        "bench-locmem": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "bench-tiles",
            "OPTIONS": {"MAX_ENTRIES": 20000},
        },
    }
    keys = [project_tiles.tile_cache_key(scan, *tile) for tile in tiles]
    variants = [("Redis", {}), ("locmem", {"CACHES": locmem, "TILE_CACHE_ALIAS": "bench-locmem"})]

    runs: dict[str, list[Run]] = {}
    wrong: dict[str, int] = {}

    def record(run: Run, errors: int = 0) -> None:
        runs.setdefault(run.method, []).append(run)
        wrong[run.method] = wrong.get(run.method, 0) + errors

    for _ in range(args.repeats):
        baseline, _ = plain_loop(path, plain_tiles)
        record(baseline)
        record(*render_pass(scan, tiles, expected))
        for name, overrides in variants:
            with override_settings(**overrides):
                cache = caches[settings.TILE_CACHE_ALIAS]
                cache.delete_many(keys)
                project_tiles.slide_handles.clear()
                for state in ("cold", "warm"):
                    record(
                        *endpoint_pass(
                            f"endpoint, {name} cache, {state}",
                            client,
                            scan,
                            tiles,
                            expected,
                            revalidate=False,
                        )
                    )
                if name == "Redis":
                    record(
                        *endpoint_pass(
                            "endpoint, 304 revalidation", client, scan, tiles, expected, True
                        )
                    )
                cache.delete_many(keys)

    best = {method: max(found, key=lambda run: run.rate) for method, found in runs.items()}
    plain = best[baseline.method]
    print()
    print(f"{'method':<32} {'tiles/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'vs plain':>9}  rounds")
    for method, run in best.items():
        each = ", ".join(f"{r.rate:.0f}" for r in runs[method])
        print(
            f"{method:<32} {run.rate:9.0f} {run.p50:8.2f} {run.p95:8.2f} "
            f"{run.rate / plain.rate:8.2f}x  {each} tiles/s"
        )
    bad = {method: count for method, count in wrong.items() if count}
    if wrong_before:
        bad["render_tile, before the rounds"] = wrong_before
    print(f"\nanswers differing from DeepZoomGenerator's tiles (or not 304): {bad or 'none'}")

    warm = best["endpoint, Redis cache, warm"]
    cold = best["endpoint, Redis cache, cold"]
    direct = best["render_tile cold (no HTTP)"]
    warm_ratio = warm.rate / plain.rate
    cold_ratio = cold.rate / plain.rate
    print(
        f"goal: warm tiles >= {WARM_GOAL:g}x the plain loop's rate: {warm_ratio:.2f}x -> "
        f"{'met' if warm_ratio >= WARM_GOAL else 'NOT met'}"
    )
    print(
        f"goal: cold tiles >= {COLD_GOAL:g}x the plain loop's rate (passthrough scan): "
        f"endpoint {cold_ratio:.2f}x -> {'met' if cold_ratio >= COLD_GOAL else 'NOT met'}; "
        f"render_tile alone {direct.rate / plain.rate:.2f}x"
    )

    if args.profile:
        breakdown(client, annotator, scan, tiles[-1], path)
        cache = caches[settings.TILE_CACHE_ALIAS]
        cache.delete_many(keys)
        project_tiles.slide_handles.clear()
        for state in ("cold", "warm"):
            profiler = cProfile.Profile()
            profiler.runcall(endpoint_pass, state, client, scan, tiles, expected, False)
            print_profile(f"Redis cache, {state}", profiler)
        cache.delete_many(keys)


def breakdown(client, user, scan, tile: Tile, path: Path, number: int = 200) -> None:
    """Each step of a tile request timed alone (best of 5 x ``number`` calls), in ms."""
    import logging
    import timeit

    import openslide
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.cache import caches
    from django.test import RequestFactory
    from openslide.deepzoom import DeepZoomGenerator

    from annotator import tiles as project_tiles
    from annotator.api import imagery

    level, col, row = tile
    url = f"/api/v1/scans/{scan.pk}/tiles/scan_files/{level}/{col}_{row}.jpeg"
    etag = project_tiles.tile_etag(scan, level, col, row)
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    request = RequestFactory().get(url)
    request.user = user
    cache = caches[settings.TILE_CACHE_ALIAS]
    key = project_tiles.tile_cache_key(scan, *tile)
    client.get(url)
    # Not a log line for each 404 of the unrouted URL.
    logging.getLogger("django.request").setLevel(logging.ERROR)
    slide = openslide.open_slide(str(path))
    deep_zoom = DeepZoomGenerator(slide, 254, 1, limit_bounds=False)

    def encode() -> bytes:
        buffer = io.BytesIO()
        deep_zoom.get_tile(level, (col, row)).save(buffer, "JPEG", quality=80)
        return buffer.getvalue()

    steps = [
        ("whole request, warm (Redis)", lambda: client.get(url)),
        ("whole request, 304", lambda: client.get(url, headers={"If-None-Match": etag})),
        ("test client + middleware, unrouted URL (404)", lambda: client.get("/bench-none/")),
        ("session row (SessionStore.load)", lambda: SessionStore(session_key).load()),
        ("user row (User.objects.get)", lambda: get_user_model().objects.get(pk=user.pk)),
        (
            "permission query + scan row (_visible_scan)",
            lambda: imagery._visible_scan(request, scan.pk),
        ),
        ("tile cache get (Redis)", lambda: cache.get(key)),
        ("get_tile + JPEG encode (plain loop's work)", encode),
        (
            "render_tile (the project's tile, no cache)",
            lambda: project_tiles.render_tile(scan, *tile),
        ),
    ]
    print(f"\n--- one tile request, step by step (level {level}, best of 5 x {number}) ---")
    for name, step in steps:
        step()
        best = min(timeit.repeat(step, number=number, repeat=5)) / number * 1000
        print(f"{name:<46} {best:7.3f} ms")
    slide.close()


def print_profile(title: str, profiler: cProfile.Profile, lines: int = 30) -> None:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(lines)
    print(f"\n--- cProfile, {title} pass (cumulative) ---")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))


if __name__ == "__main__":
    main()
