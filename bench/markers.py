"""Benchmark: the annotation screen with 2,000 markers on a scan, in headless Chromium.

The screen draws markers on one canvas over the viewer. This measures, in one run on one scan:

    frame interval while panning   the scan is panned a little on every animation frame for
                                   `--frames` frames; the intervals between frames (p50, p95)
                                   show whether the screen stays smooth (about 16.7 ms at 60 Hz);
    one full redraw                the time of one synchronous redraw of every marker.

Three set-ups, the first and the last being the baselines:

    no markers                     the viewer alone: the floor;
    2,000 canvas markers           Cytomark's overlay (half of the cells labelled, all in view);
    2,000 OpenSeadragon overlays   the same markers as one DOM element each through
                                   OpenSeadragon's `addOverlay`, the library's own way to mark
                                   points, which the canvas was chosen over.

It runs the app on gunicorn (embedded profile, DEBUG on so that static files are served) over a
throw-away PostgreSQL database (cytomark_bench_markers, dropped afterwards) and drives Debian's
Chromium through Playwright.

    .venv/bin/python bench/markers.py [--cells 2000] [--frames 180] [--size 8000]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchenv

DB_NAME = "cytomark_bench_markers"
PASSWORD = "bench-pass-word-1"

PAN_FRAMES_JS = """
async ([frames, budgetMs]) => {
  const viewer = window.cytomark.viewer;
  const times = [];
  const deadline = performance.now() + budgetMs;
  await new Promise((resolve) => {
    let left = frames;
    function step(now) {
      times.push(now);
      viewer.viewport.panBy(new OpenSeadragon.Point(left % 60 < 30 ? 0.002 : -0.002, 0), true);
      if (--left > 0 && now < deadline) requestAnimationFrame(step); else resolve();
    }
    requestAnimationFrame(step);
  });
  const gaps = [];
  for (let i = 1; i < times.length; i++) gaps.push(times[i] - times[i - 1]);
  return gaps;
}
"""

REDRAW_JS = """
(repeats) => {
  const start = performance.now();
  for (let i = 0; i < repeats; i++) window.cytomark.redraw();
  return (performance.now() - start) / repeats;
}
"""

SWAP_TO_DOM_OVERLAYS_JS = """
() => {
  const {viewer, cells} = window.cytomark;
  window.benchSaved = new Map(cells);
  for (const cell of window.benchSaved.values()) {
    const element = document.createElement("div");
    element.style.cssText = "width:14px;height:14px;border:3px solid #1f77b4;border-radius:50%;";
    viewer.addOverlay({
      element,
      location: viewer.viewport.imageToViewportCoordinates(cell.x, cell.y),
      placement: OpenSeadragon.Placement.CENTER,
    });
  }
  cells.clear();
  window.cytomark.redraw();
  return viewer.currentOverlays.length;
}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_data(folder: Path, cells: int, size: int):
    """An annotator with `cells` cells on one scan, half of them labelled in the gold round."""
    from django.contrib.auth import get_user_model

    from annotator.annotation import gold_round_for
    from annotator.models import Cell, Label, Membership, TaxonNode

    user = get_user_model().objects.create_user("bench-annotator", password=PASSWORD)
    study, scan, _ = benchenv.register_scan(folder, size=size, cells=20, seed=7, user=user)
    Membership.objects.create(study=study, user=user, role=Membership.Role.ANNOTATOR)
    rng = random.Random(2019)
    made = Cell.objects.bulk_create(
        Cell(study=study, scan=scan, x=rng.randrange(size), y=rng.randrange(size), created_by=user)
        for _ in range(cells)
    )
    leaves = list(TaxonNode.objects.filter(taxonomy=study.taxonomy, is_leaf=True))
    round_ = gold_round_for(study, user)
    Label.objects.bulk_create(
        Label(cell=cell, round=round_, node=rng.choice(leaves), rater=user) for cell in made[::2]
    )
    return study, scan


def serve(env: dict[str, str], port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "2",
            "--log-level",
            "warning",
        ],
        cwd=benchenv.ROOT,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    sys.exit("gunicorn did not start")


def measure(page, frames: int) -> tuple[float, float, float, int]:
    """Frame interval p50/p95 while panning (stopping after a minute), redraw time, frames seen."""
    page.evaluate(PAN_FRAMES_JS, [30, 10_000])  # warm-up
    gaps = page.evaluate(PAN_FRAMES_JS, [frames, 60_000])
    redraw = page.evaluate(REDRAW_JS, 20)
    return benchenv.percentile(gaps, 50), benchenv.percentile(gaps, 95), redraw, len(gaps) + 1


def run(args) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="cytomark-bench-markers-") as tmp:
        folder = Path(tmp)
        with benchenv.temporary_database(DB_NAME) as db_url:
            env = benchenv.project_env(
                settings="config.settings.base",
                db_url=db_url,
                folder=folder,
                redis_db=args.redis_db,
                celery_db=args.redis_db,
                DEBUG="True",
            )
            benchenv.require_empty_redis_db(args.redis_db, "--redis-db")
            benchenv.setup_django(env)
            print("making the scan and the cells ...", file=sys.stderr, flush=True)
            study, scan = make_data(folder, args.cells, args.size)
            print("starting gunicorn and Chromium ...", file=sys.stderr, flush=True)
            port = free_port()
            server = serve({**os.environ, **env}, port)
            rows = []
            try:
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(
                        executable_path=benchenv.CHROMIUM, args=benchenv.CHROMIUM_FLAGS
                    )
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    base = f"http://127.0.0.1:{port}"
                    page.goto(base + "/login/")
                    page.fill("input[name=username]", "bench-annotator")
                    page.fill("input[name=password]", PASSWORD)
                    page.click("button[type=submit]")
                    page.wait_for_url(base + "/")
                    page.goto(f"{base}/studies/{study.name}/scans/{scan.pk}/")
                    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=60000)
                    page.wait_for_function(
                        "window.cytomark.viewer.world.getItemAt(0).getFullyLoaded()",
                        timeout=60000,
                    )
                    shown = page.evaluate("window.cytomark.cells.size")
                    assert shown == args.cells, f"the page shows {shown} cells, not {args.cells}"
                    rows.append(("2,000 canvas markers (Cytomark)", *measure(page, args.frames)))
                    page.evaluate(
                        "() => { window.benchSaved = new Map(window.cytomark.cells);"
                        " window.cytomark.cells.clear(); }"
                    )
                    rows.append(("no markers (floor)", *measure(page, args.frames)))
                    page.evaluate(
                        "() => window.benchSaved.forEach((c, k) => window.cytomark.cells.set(k, c))"
                    )
                    overlays = page.evaluate(SWAP_TO_DOM_OVERLAYS_JS)
                    assert overlays == args.cells
                    rows.append(("2,000 OpenSeadragon overlays", *measure(page, args.frames)))
                    browser.close()
            finally:
                server.terminate()
                server.wait(timeout=30)
                benchenv.delete_redis_keys(args.redis_db, "*")

    print(
        f"\n{args.cells} markers on a {args.size} x {args.size} px scan, all in view; "
        f"{args.frames} animation frames of panning in headless Chromium (no GPU)\n"
    )
    print(
        f"{'set-up':34} {'frame p50 ms':>13} {'frame p95 ms':>13} {'redraw ms':>10} {'frames':>7}"
    )
    for name, p50, p95, redraw, seen in rows:
        redraw_text = f"{redraw:10.2f}" if "overlays" not in name else f"{'-':>10}"
        print(f"{name:34} {p50:13.1f} {p95:13.1f} {redraw_text} {seen:7d}")
    ours, floor, dom = rows[0], rows[1], rows[2]
    print(
        f"\np95 frame interval: canvas markers {ours[2] / floor[2]:.2f} x the floor, "
        f"OpenSeadragon overlays {dom[2] / floor[2]:.2f} x the floor"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=180)
    parser.add_argument("--size", type=int, default=8000, help="scan side in pixels")
    parser.add_argument("--redis-db", type=int, default=12)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
