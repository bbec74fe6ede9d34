"""Benchmark: one synthetic 20,000 x 20,000 scan with 100 leukocytes, against a plain write.

The generator renders the smear, builds the pyramid and writes JPEG tiles. The baseline only
writes the very same level-0 pixels, already rendered, as one untiled, uncompressed TIFF page
with no pyramid: the least a scan of this size costs to put on disk. Both run in this process,
on the same machine, into a temporary folder that is removed afterwards.

    .venv/bin/python bench/synthetic_scans.py [--size 20000] [--cells 100] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotator.synthetic import Scratch, make_synthetic_scan, render_scan

SEED = 2019


def time_generator(folder: Path, size: int, cells: int, scratch: Scratch) -> tuple[float, int]:
    """Seconds and bytes for the project's generator making one scan from nothing."""
    path = folder / "generated.tiff"
    started = time.perf_counter()
    make_synthetic_scan(path, width=size, height=size, cells=cells, seed=SEED, scratch=scratch)
    return time.perf_counter() - started, path.stat().st_size


def time_plain_write(folder: Path, size: int, cells: int, scratch: Scratch) -> tuple[float, int]:
    """Seconds and bytes for writing the same level-0 pixels untiled and uncompressed."""
    path = folder / "plain.tiff"
    _, image = render_scan(width=size, height=size, cells=cells, seed=SEED, scratch=scratch)
    started = time.perf_counter()
    tifffile.imwrite(path, image, photometric="rgb", metadata=None)
    return time.perf_counter() - started, path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="scan width and height, px")
    parser.add_argument("--cells", type=int, default=100, help="leukocytes per scan")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the best counts")
    parser.add_argument("--dir", default=None, help="folder for the temporary files")
    args = parser.parse_args()

    scratch = Scratch()
    generator_runs, plain_runs = [], []
    with tempfile.TemporaryDirectory(prefix="cytomark-bench-", dir=args.dir) as folder:
        for _ in range(args.repeats):
            generator_runs.append(time_generator(Path(folder), args.size, args.cells, scratch))
            plain_runs.append(time_plain_write(Path(folder), args.size, args.cells, scratch))

    generator_s, generator_bytes = min(generator_runs)
    plain_s, plain_bytes = min(plain_runs)
    print(f"scan: {args.size} x {args.size} px, {args.cells} leukocytes, best of {args.repeats}")
    print(_row("generator (render + pyramid + JPEG tiles)", generator_runs))
    print(_row("baseline (write level 0 raw, no pyramid)", plain_runs))
    print(
        f"generator / baseline: time x{generator_s / plain_s:.2f}, "
        f"size x{generator_bytes / plain_bytes:.3f}"
    )


def _row(label: str, runs: list[tuple[float, int]]) -> str:
    seconds, size = min(runs)
    each = ", ".join(f"{run:.2f}" for run, _ in runs)
    return f"{label:<42} {seconds:6.2f} s {size / 1e6:8.1f} MB   runs: {each} s"


if __name__ == "__main__":
    main()
