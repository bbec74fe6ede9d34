"""Benchmark: the leukocyte detector on synthetic scans, against the I/O floor.

The detector's defaults were tuned on synthetic scans of seeds 7 to 13 (seeds 7-10 at
5000 x 5000 px with 25 times the usual distractors, 11-13 at 8000 x 8000 px with 150
leukocytes); this benchmark makes scans of a series no tuning used (``scan_seed(2026, i)``),
runs ``annotator.detection.detect_leukocytes`` on each and prints, against the planted ground
truth: recall and precision (a proposal matches a planted leukocyte within 5 µm of its
centre, one to one, nearest first), the share of distractors with a proposal within 5 µm, and
the seconds per scan scaled by area to a 20,000 x 20,000 px scan. The baseline, measured in the
same run on the same scans, reads every tile of the scan at the working resolution and does
nothing else: the least a detector reading the scan can cost. Both run in a fresh process per
scan (the baseline first), so the peak RSS printed is the detector's, not the generator's.

    .venv/bin/python bench/detect.py [--scans 3] [--size 8000] [--cells 150] [--seed 2026]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotator.detection import (
    DEFAULT_SETTINGS,
    detect_leukocytes,
    read_working_tiles,
    working_grid,
)
from annotator.detection_check import matched_pairs
from annotator.synthetic import make_synthetic_scan, scan_seed

MATCH_UM = 5.0
FULL_SCAN_PX = 20000 * 20000


def near_any(points: list[tuple[int, int]], spots: list[tuple[int, int]], radius: float) -> int:
    """How many ``spots`` have at least one of ``points`` within ``radius``."""
    if not points or not spots:
        return 0
    a, b = np.asarray(points, float), np.asarray(spots, float)
    distance = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    return int((distance.min(axis=0) <= radius).sum())


def read_every_tile(path: Path) -> None:
    """The baseline: read and decode every working-resolution tile, as the detector does."""
    with openslide.OpenSlide(path) as slide:
        grid = working_grid(slide, path.name)
        for _ in read_working_tiles(slide, grid, path.name, DEFAULT_SETTINGS):
            pass


def measure(path: Path) -> dict:
    """In this process: the baseline's and the detector's seconds, the proposals, peak RSS."""
    started = time.perf_counter()
    read_every_tile(path)
    floor = time.perf_counter() - started
    started = time.perf_counter()
    proposals = detect_leukocytes(path)
    spent = time.perf_counter() - started
    return {
        "floor_s": floor,
        "detect_s": spent,
        "points": [(p.x, p.y) for p in proposals],
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which, unlike ``ru_maxrss``, starts afresh
    at exec and so leaves out the parent that forked us (the generator's large buffers)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_in_child(path: Path) -> dict:
    """``measure`` in a fresh Python process, so that nothing of the generator is counted."""
    child = subprocess.run(
        [sys.executable, __file__, "--measure", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout)


def evaluate(manifest: dict, points: list[tuple[int, int]]) -> dict:
    """Counts for one scan: planted, proposed, matched, distractors and those hit."""
    radius = MATCH_UM / manifest["mpp"]
    planted = [(c["x"], c["y"]) for c in manifest["cells"]]
    distractors = [(d["x"], d["y"]) for d in manifest["distractors"]]
    return {
        "planted": len(planted),
        "proposed": len(points),
        "matched": matched_pairs(points, planted, radius),
        "distractors": len(distractors),
        "distractors_hit": near_any(points, distractors, radius),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=3, help="synthetic scans to make")
    parser.add_argument("--size", type=int, default=8000, help="scan width and height, px")
    parser.add_argument("--cells", type=int, default=150, help="leukocytes per scan")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the held-out series")
    parser.add_argument("--dir", default=None, help="folder for the temporary scans")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return

    totals = {"planted": 0, "proposed": 0, "matched": 0, "distractors": 0, "distractors_hit": 0}
    detect_s, floor_s, pixels, peak_mb = 0.0, 0.0, 0, 0.0
    with tempfile.TemporaryDirectory(prefix="cytomark-bench-detect-", dir=args.dir) as folder:
        for index in range(args.scans):
            path = Path(folder) / f"scan_{index}.tiff"
            seed = scan_seed(args.seed, index)
            manifest = make_synthetic_scan(
                path, width=args.size, height=args.size, cells=args.cells, seed=seed
            )
            measured = measure_in_child(path)
            spent, floor = measured["detect_s"], measured["floor_s"]
            counts = evaluate(manifest, [tuple(point) for point in measured["points"]])
            for key in totals:
                totals[key] += counts[key]
            detect_s, floor_s, pixels = detect_s + spent, floor_s + floor, pixels + args.size**2
            peak_mb = max(peak_mb, measured["peak_rss_mb"])
            print(
                f"scan {index} (seed {seed}, stain {manifest['style']['stain']}): "
                f"{counts['matched']}/{counts['planted']} found, {counts['proposed']} proposed, "
                f"{counts['distractors_hit']}/{counts['distractors']} distractors hit, "
                f"detect {spent:.2f} s, read floor {floor:.2f} s"
            )
            path.unlink()

    recall = totals["matched"] / max(totals["planted"], 1)
    precision = totals["matched"] / max(totals["proposed"], 1)
    hit_rate = totals["distractors_hit"] / max(totals["distractors"], 1)
    per_full = FULL_SCAN_PX / pixels
    print(f"{args.scans} scans of {args.size} x {args.size} px, {args.cells} leukocytes each")
    print(f"recall {recall:.3f}  precision {precision:.3f}  (match within {MATCH_UM:g} µm)")
    print(f"distractors with a proposal within {MATCH_UM:g} µm: {hit_rate:.3f}")
    print(
        f"per 20,000 x 20,000 px scan: detector {detect_s * per_full:.1f} s, "
        f"baseline (read every working tile) {floor_s * per_full:.1f} s, "
        f"ratio x{detect_s / max(floor_s, 1e-9):.1f}"
    )
    print(
        f"peak RSS of the detecting process {peak_mb:.0f} MB; "
        f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
