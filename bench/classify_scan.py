"""Benchmark: whole-scan classification (mltasks.smear_classification) per device, against
its two floors measured in the same run.

A synthetic scan is registered in a bench study with its planted leukocytes as the detector's
proposals, and a finished run is made of one or more fold models (seeded random weights: the
speed of a ResNeXt-50 32x4d does not depend on what it learnt) at the protocol's 400 px. Then,
for each device asked for, best of ``--repeats``:

- the project: ``classify_spots`` — every leukocyte's patch cut from the scan as the study cuts
  patches, resized, batched on the device (patches of the next batch read by a thread pool
  while the models classify this one), the fold models averaged;
- floor 1, reading: the same patches cut and resized in one thread, no model;
- floor 2, the network: the same number of images as one random uint8 batch after another,
  already in memory, through the same models on the device.

The project can be no faster than the slower floor; on a CPU the network sets the pace, on a
GPU the reading does. Peak RSS of the process is printed beside.

    .venv/bin/python bench/classify_scan.py [--size 8000] [--cells 120] [--folds 1]
        [--image-size 400] [--devices cpu,cuda] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import resource
import time

import benchenv

DB_NAME = "bench_classify_scan"


def make_world(folder, args):
    """The scan with its planted cells proposed, and a done run of seeded random fold models."""
    import torch
    from django.contrib.auth import get_user_model
    from django.core.files.storage import default_storage

    from annotator import annotation
    from annotator.detection import DETECTOR_VERSION
    from annotator.models import DetectionJob, Membership, ProposedCell
    from datasets import splits, versions
    from mltasks import run_config, training
    from mltasks.models import FoldModel, ScanClassification, TrainingRun
    from mltasks.resnext import resnext50_32x4d

    user, _ = get_user_model().objects.get_or_create(username="bench-examiner")
    study, scan, manifest = benchenv.register_scan(
        folder, size=args.size, cells=args.cells, seed=2027, user=user
    )
    Membership.objects.get_or_create(study=study, user=user, role=Membership.Role.ADMIN)
    gold = annotation.gold_round_for(study, user)
    planted = manifest["cells"]
    for spot in planted[:20]:  # a data set needs labels; the run's classes come from them
        cell = annotation.create_cell(study, scan, spot["x"], spot["y"], user)
        annotation.set_label(cell, gold, user, node=spot["code"])
    job = DetectionJob.objects.create(
        scan=scan, detector_version=DETECTOR_VERSION, status="done", created_by=user
    )
    ProposedCell.objects.bulk_create(
        ProposedCell(
            scan=scan, job=job, detector_version=DETECTOR_VERSION, x=s["x"], y=s["y"], confidence=1
        )
        for s in planted[20:]
    )
    dataset, _ = versions.make_dataset(study, "bench", user)
    split, _ = splits.make_split(dataset, "holdout", user, seed=0)
    config = run_config.load_config({"image_size": args.image_size})
    run = TrainingRun.objects.create(split=split, config=config, status="done", created_by=user)
    for fold in range(args.folds):
        torch.manual_seed(fold)
        model = resnext50_32x4d(num_classes=len(dataset.classes))
        name = f"training/run-{run.pk}/fold-{fold}.pt"
        data = training.state_dict_bytes(model.state_dict(), dataset.classes, config)
        default_storage.save(name, io.BytesIO(data))
        FoldModel.objects.create(
            run=run, fold=str(fold), weights=name, sha256="0" * 64, classes=dataset.classes
        )
    return ScanClassification.objects.create(run=run, scan=scan, created_by=user)


def best(repeats: int, work) -> float:
    """The fastest of `repeats` timed calls, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(job, device_name: str, repeats: int) -> dict:
    import numpy as np

    from annotator import patches
    from mltasks import inference
    from mltasks.smear_classification import batch_size_for, classify_spots
    from mltasks.smear_counts import leukocytes

    run, scan = job.run, job.scan
    study = run.split.dataset.study
    spots = leukocytes(scan, study)
    size = run.config["image_size"]
    device = inference.pick_device(device_name)
    models = inference.load_models(run, device)
    batch = batch_size_for(device)

    def read_only() -> None:
        for spot in spots:
            geometry = patches.geometry_at(study, scan, spot.x, spot.y)
            inference.resized_pixels(patches.patch_image(scan, geometry), size)

    noise = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

    def network_only() -> None:
        for start in range(0, len(spots), batch):
            inference.ensemble_probabilities(models, noise[: min(batch, len(spots) - start)])
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()

    def project() -> None:
        classify_spots(job, spots, device, lambda: False, lambda done, total: None)

    network_only()  # warm-up: kernels chosen, weights in place
    figures = {
        "read": best(repeats, read_only),
        "network": best(repeats, network_only),
        "project": best(repeats, project),
    }
    return {"device": str(device), "cells": len(spots), "batch": batch, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--cells", type=int, default=120)
    parser.add_argument("--folds", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=400)
    parser.add_argument("--devices", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--redis-db", type=int, default=14)
    args = parser.parse_args()
    with benchenv.django_in_process(DB_NAME, args.redis_db) as folder:
        job = make_world(folder, args)
        print(
            f"{args.size} x {args.size} px scan, {args.folds} fold model(s) at "
            f"{args.image_size} px, best of {args.repeats}"
        )
        for device in args.devices.split(","):
            got = measure(job, device, args.repeats)
            n = got["cells"]
            floor = max(got["read"], got["network"])
            print(
                f"{got['device']}: {n} cells, batch {got['batch']}: project "
                f"{n / got['project']:.1f} cells/s ({got['project']:.2f} s); reading alone "
                f"{n / got['read']:.1f} cells/s, network alone {n / got['network']:.1f} cells/s;"
                f" project at {floor / got['project']:.2f} x the slower floor"
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
