"""Run a scan's classification (mltasks.smear_counts) on a worker: cut the patch of every
leukocyte found on the scan, as the study cuts its patches, and classify them in batches with
the run's fold models averaged, on the worker's device.

Memory is bounded by the batch: the patches of one batch, and of the next being read, are all
that is held besides the models. Reading patches is the slow part on a GPU, so there a small
thread pool reads the next batch while the models classify this one (OpenSlide releases the GIL
while it decodes). The cells are written with the job's end in one transaction; a cancelled, failed
or interrupted job writes none.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from django.db import transaction
from django.utils import timezone

from annotator import patches
from core import leases

from . import inference
from .models import ClassifiedCell, ScanClassification
from .smear_counts import Leukocyte, leukocytes

log = logging.getLogger(__name__)
Status = ScanClassification.Status
CPU_BATCH = 32
CUDA_BATCH = 256
READERS = 4


class ClassificationStopped(Exception):
    """The job was cancelled, lost its lease or its worker is shutting down."""


def batch_size_for(device: torch.device) -> int:
    """Cells per forward pass: a GPU takes many more before it is busy."""
    return CUDA_BATCH if device.type == "cuda" else CPU_BATCH


def classify_spots(job: ScanClassification, spots: list[Leukocyte], device, should_stop, progress):
    """The run's averaged class probabilities of each spot's patch, (N, classes) float32."""
    run = job.run
    study = run.split.dataset.study
    scan = job.scan
    size = run.config["image_size"]
    models = inference.load_models(run, device)
    batch = batch_size_for(device)

    def pixels(spot: Leukocyte) -> np.ndarray:
        geometry = patches.geometry_at(study, scan, spot.x, spot.y)
        return inference.resized_pixels(patches.patch_image(scan, geometry), size)

    out = [np.zeros((0, len(run.split.dataset.classes)), dtype=np.float32)]
    chunks = [spots[start : start + batch] for start in range(0, len(spots), batch)]
    with ThreadPoolExecutor(max_workers=READERS) as readers:
        # On a GPU the pool reads the next batch while the device classifies this one; on a
        # CPU the patches are read in this thread, between batches: reader threads there would
        # only take cores from PyTorch's own threads (reading is about 1 % of the time).
        read = readers.map if device.type == "cuda" else map
        reading = read(pixels, chunks[0]) if chunks else iter(())
        for index in range(len(chunks)):
            images = np.stack(list(reading))
            if index + 1 < len(chunks):
                reading = read(pixels, chunks[index + 1])
            if should_stop():
                raise ClassificationStopped
            out.append(inference.ensemble_probabilities(models, images))
            progress(sum(len(chunk) for chunk in chunks[: index + 1]), len(spots))
    return np.concatenate(out)


def run_classification(job_id: int, device_name: str = "auto") -> ScanClassification | None:
    """Run a queued classification to its end: done (its cells written), failed or cancelled;
    None when the job is gone. Claimed in one statement (core.leases), so a task delivered twice
    classifies once."""
    job = ScanClassification.objects.select_related("run__split__dataset", "scan").filter(pk=job_id)
    job = job.first()
    if job is None:
        return None
    started = time.monotonic()

    def work(lease: leases.Lease, should_stop) -> tuple[list[Leukocyte], np.ndarray]:
        device = inference.pick_device(device_name)  # no CUDA here: the job fails saying so
        lease.mine().update(device=str(device))
        spots = leukocytes(job.scan, job.run.split.dataset.study)
        progress = leases.ThrottledProgress(lease, "cells")
        return spots, classify_spots(job, spots, device, should_stop, progress)

    def publish(lease: leases.Lease, result) -> None:
        _publish(job, lease, *result, time.monotonic() - started)

    leases.work_under_lease(
        ScanClassification,
        job.pk,
        work,
        publish,
        stopped=ClassificationStopped,
        what="classification",
    )
    job.refresh_from_db()
    return job


def _publish(job, lease, spots: list[Leukocyte], probabilities: np.ndarray, seconds: float):
    """Write the cells and end the job done in one transaction, if it is still this worker's."""
    classes = job.run.split.dataset.classes
    rows = [
        ClassifiedCell(
            job=job,
            x=spot.x,
            y=spot.y,
            proposal_id=spot.proposal_id,
            cell_id=spot.cell_id,
            predicted=classes[int(row.argmax())],
            probabilities=[round(float(p), 6) for p in row],
        )
        for spot, row in zip(spots, probabilities, strict=True)
    ]
    with transaction.atomic():
        ClassifiedCell.objects.bulk_create(rows, batch_size=2000)
        ended = lease.finish(
            status=Status.DONE,
            cell_count=len(rows),
            seconds=round(seconds, 3),
            finished_at=timezone.now(),
        )
        if not ended:  # cancelled or taken over meanwhile: nothing written
            transaction.set_rollback(True)


def stopped_message(job: ScanClassification, reason: str) -> str:
    """The sentence of a job stopped because its worker shut down."""
    return leases.stopped_sentence(job, reason, "cells", "count the scan")
