"""Benchmark: peak resident memory of a training run against the size of its decoded patches.

The patches stream from storage (`mltasks.pipeline`), so a run holds a few decoded batches, the
network, its optimiser and one pass's activations, not its split's patches. This prints, for two
split sizes, each run's peak RSS beside what every patch decoded would take (cells x size x size
x 3 bytes: what runs held before the pipeline streamed) and beside `mltasks.memory`'s estimate
(the figure a run is refused by, `TRAINING_MAX_MEMORY_GB`), and checks that the peak does not
grow with the cells, `oversample_to` or `max_epochs`.

Each split is the demo study's (`seed_demo`: 3 synthetic scans, gold labels of every planted
cell, `--cells` per scan), frozen into a data set with the proposed class map and a 5-fold
stratified split in a throw-away PostgreSQL database. Each run is `runs.start_run` +
`runs.execute` (decoding, oversampling, training, validation, test predictions, report with
saliency maps) in a fresh Python process, so that peaks do not mix; its peak is that process's
`ru_maxrss`. The runs use the default config except what keeps them short on a CPU: one fold,
two epochs of a few steps, then more images per class and more epochs (the peak must not move).

    .venv/bin/python bench/train_memory.py [--cells 100 400] [--image-size 400] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchenv import ROOT, django_in_process

GB = 1024**3
REDIS_DB = 13


def runs_to_measure(image_size: int, threads: int) -> list[tuple[str, dict]]:
    """(what it shows, config overrides): a short default run of two epochs (from the second
    on, the best epoch's weights are kept beside the training: the peak is reached there),
    then four times the images per class per epoch, then twice the epochs."""
    short = {
        "image_size": image_size,
        "folds": ["0"],
        "max_epochs": 2,
        "patience": 4,
        "oversample_to": 2,
        "threads": threads,
    }
    return [
        ("default config, 2 epochs, oversample_to 2", short),
        ("oversample_to x 4 (8)", {**short, "oversample_to": 8}),
        ("max_epochs x 2 (4)", {**short, "max_epochs": 4}),
    ]


def child(split_id: int, config: dict) -> None:
    """One run in this process; prints its peak RSS, estimate and time as JSON."""
    import django

    django.setup()
    from datasets.models import Split
    from mltasks import memory, runs, training
    from mltasks.models import TrainingRun

    split = Split.objects.select_related("dataset").get(pk=split_id)
    started = time.perf_counter()
    run = runs.start_run(split, None, config)
    full = run.config
    estimate = memory.estimate(
        len(split.dataset.manifest),
        len(split.dataset.classes),
        full,
        training.pick_device(full).type,
    )
    run = runs.execute(run.pk)
    if run.status != TrainingRun.Status.DONE:
        sys.exit(f"run {run.pk} {run.status}: {run.error}")
    print(
        json.dumps(
            {
                "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "estimate": estimate.total,
                "pass_size": estimate.pass_size,
                "seconds": time.perf_counter() - started,
                "epochs": sum(fold["epochs"] for fold in run.report["folds"]),
            }
        )
    )


def demo_split(cells_per_scan: int, scan_size: int):
    """The demo study with `cells_per_scan` cells on each of its 3 scans, its data set and a
    5-fold stratified split, with every patch cut (so the runs measure training alone)."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import override_settings

    from annotator import patches
    from annotator.demo import seed_demo
    from annotator.models import Cell
    from datasets import classmaps, splits, versions

    # The demo makes its scans in var/synthetic, an import root of the embedded profile.
    roots = [*settings.SCAN_IMPORT_ROOTS, Path(settings.VAR_DIR) / "synthetic"]
    with override_settings(SCAN_IMPORT_ROOTS=roots):
        study, _ = seed_demo(scan_size=scan_size, cells=cells_per_scan)
    admin = get_user_model().objects.get(username="admin")
    class_map, _ = classmaps.save_class_map(study, "demo", classmaps.propose(study), admin)
    version, _ = versions.make_dataset(study, "demo", admin, class_map=class_map)
    split, _ = splits.make_split(version, "stratified-kfold", admin, k=5, seed=0)
    for cell in Cell.objects.filter(study=study).select_related("scan", "study"):
        patches.ensure_patch(cell)
    return split


def measure(split_id: int, config: dict) -> dict:
    found = subprocess.run(
        [sys.executable, __file__, "--child", str(split_id), json.dumps(config)],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode:
        sys.exit(f"a run failed:\n{found.stdout}\n{found.stderr}")
    return json.loads(found.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100, 400], help="per scan")
    parser.add_argument("--image-size", type=int, default=400)
    parser.add_argument("--scan-size", type=int, default=12000, help="synthetic scan side, px")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), json.loads(args.child[1]))
        return
    if len(args.cells) > 1:  # Django holds one database per process: one process per size
        for per_scan in args.cells:
            options = ["--image-size", str(args.image_size), "--scan-size", str(args.scan_size)]
            options += ["--threads", str(args.threads), "--cells", str(per_scan)]
            subprocess.run([sys.executable, __file__, *options], cwd=ROOT, check=True)
        return
    rows = []
    for per_scan in args.cells:
        with django_in_process(f"cytomark_bench_train_memory_{per_scan}", REDIS_DB):
            from django.conf import settings

            split = demo_split(per_scan, args.scan_size)
            cells = len(split.dataset.manifest)
            floor = cells * args.image_size**2 * 3
            for label, config in runs_to_measure(args.image_size, args.threads):
                figures = measure(split.pk, config)
                rows.append((cells, floor, label, figures))
                print(_row(*rows[-1]), flush=True)
            limit = settings.TRAINING_MAX_MEMORY_GB
    print(
        f"\nResNeXt-50 32x4d at {args.image_size} px, batch 32 (default), CPU with "
        f"{args.threads} threads; limit TRAINING_MAX_MEMORY_GB = {limit:g}\n"
    )
    for row in rows:
        print(_row(*row))
    for cells in sorted({row[0] for row in rows}):
        peaks = [row[3]["peak"] for row in rows if row[0] == cells]
        print(
            f"{cells} cells: peak spread over the runs {(max(peaks) - min(peaks)) / GB:.2f} GB "
            f"({max(peaks) / min(peaks) - 1:.1%} of the lowest)"
        )


def _row(cells: int, floor: int, label: str, figures: dict) -> str:
    return (
        f"{cells:5} cells  {label:42} peak RSS {figures['peak'] / GB:5.2f} GB  "
        f"all decoded {floor / GB:5.2f} GB ({figures['peak'] / floor:5.1f} x)  "
        f"estimate {figures['estimate'] / GB:5.2f} GB  pass {figures['pass_size']} images  "
        f"{figures['seconds']:6.0f} s"
    )


if __name__ == "__main__":
    main()
