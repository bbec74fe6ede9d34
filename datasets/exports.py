"""Exports of a split: one zip in storage, written by a background task, visible only whole.

    imagefolder   fold_K/CLASS/CELL.png (K: 0..k-1, or train/validation/test) + manifest.csv
                  + dataset.json
    csv           manifest.csv (its patch column empty: no image inside) + dataset.json
    json          dataset.json: taxonomy version, class map, data set and split with their
                  hashes, strategy, parameters, seed, counts per fold and class

The zip is written to a hidden partial file beside its final name and renamed into place when
whole (on an object store: uploaded in one request from a local temporary file), and the export
row names the file only after that; a failed export is marked failed with its error and leaves
no file. `datasets.torch.ExportDataset` reads imagefolder exports.

manifest.csv has a row per cell in MANIFEST_COLUMNS: the cell's id here and its external id (the
original image's path in an imported data set), the patient code, the scan's id and original
file name, the class, the fold (or holdout role) and the patch's path inside the export ("" where
the export holds no image), and who placed the cell (`placed_by`: `hand`, or `detector` for a
proposed cell someone accepted), so that its rows join the files a data scientist already has. A
version made from a panel's consensus adds a last column, `label_source`: where each row's label
came from (`majority` or `adjudicated`). Readers find the columns by name
(`datasets.torch.ExportDataset` does), so exports written before `placed_by` still read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from annotator.models import Cell
from core import failures, leases
from core.errors import DomainError

from .models import Export, Split
from .splits import Sample, patch_names, split_samples
from .versions import placed_by_of

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "cell_id",
    "external_id",
    "patient",
    "scan",
    "scan_file",
    "class",
    "fold",
    "patch",
    "placed_by",
]
ORIGIN_COLUMN = "label_source"
PROGRESS_EVERY = 50


def fold_folder(fold) -> str:
    return f"fold_{fold}"


def describe(split: Split) -> dict:
    """dataset.json: what is needed to reproduce and cite the export."""
    dataset = split.dataset
    class_map = dataset.class_map
    taxonomy = dataset.study.taxonomy
    return {
        "format": "cytomark-export-1",
        "study": dataset.study.name,
        "taxonomy": {
            "name": taxonomy.name,
            "version": taxonomy.version,
            "sha256": taxonomy.source_sha256,
        },
        "class_map": (
            {
                "name": class_map.name,
                "version": class_map.version,
                "collapsed": class_map.collapsed,
                "classes": class_map.classes,
            }
            if class_map
            else None
        ),
        "classes": dataset.classes,
        "dataset": {
            "name": dataset.name,
            "version": dataset.version,
            "sha256": dataset.sha256,
            "source": dataset.source,
            "label_source": dataset.label_source,
            "panel": dataset.panel.name if dataset.panel else None,
            "consensus": dataset.consensus or None,
            "filters": dataset.filters,
            "cells": len(dataset.manifest),
            "counts": dataset.counts,
            "placement": dataset.placement or None,
        },
        "split": {
            "id": split.pk,
            "strategy": split.strategy,
            **split.params,
            "seed": split.seed,
            "sha256": split.sha256,
            "fold_counts": split.fold_counts,
            "warnings": split.warnings,
            "patient_check": split.patient_check,
        },
    }


def cell_origins(split: Split) -> dict[int, tuple[str, str]]:
    """Each cell of the split's study with its external id and its scan's original file name
    ("" where it has none), in one query."""
    found = Cell.objects.filter(study=split.dataset.study_id).values_list(
        "pk", "external_id", "scan__original_name"
    )
    return {pk: (external_id, scan_file or "") for pk, external_id, scan_file in found}


def label_origins(split: Split) -> dict[int, str] | None:
    """Where each cell's label came from, for a version made from a panel's consensus; None
    for a version made from a round (its manifest.csv has no `label_source` column)."""
    return split.dataset.origin_of() if split.dataset.is_consensus else None


def manifest_rows(
    samples: Iterable[Sample],
    origins: dict[int, tuple[str, str]],
    inside: dict[int, str],
    placed_by: dict[int, str],
    label_sources: dict[int, str] | None = None,
) -> list[list]:
    """The rows of manifest.csv in MANIFEST_COLUMNS: `origins` as `cell_origins` gives them,
    `inside` each cell's patch path inside the export (absent: the export holds no image),
    `placed_by` as `datasets.versions.placed_by_of` gives it, and with `label_sources` (as
    `label_origins` gives them) each label's origin last."""
    rows = []
    for sample in samples:
        external_id, scan_file = origins.get(sample.cell, ("", ""))
        row = [
            sample.cell,
            external_id,
            sample.patient,
            sample.scan,
            scan_file,
            sample.class_name,
            sample.fold,
            inside.get(sample.cell, ""),
            placed_by[sample.cell],
        ]
        if label_sources is not None:
            row.append(label_sources.get(sample.cell, ""))
        rows.append(row)
    return rows


def manifest_csv(rows: Iterable[list], *, with_label_source: bool = False) -> bytes:
    """manifest.csv: MANIFEST_COLUMNS (and `label_source`), then the rows `manifest_rows`
    gives."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*MANIFEST_COLUMNS, ORIGIN_COLUMN] if with_label_source else MANIFEST_COLUMNS)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def image_name(sample: Sample) -> str:
    """Where an imagefolder export holds the sample's patch."""
    return f"{fold_folder(sample.fold)}/{sample.class_name}/{sample.cell}.png"


def patch_png(name: str) -> bytes:
    """The stored patch as PNG bytes: PNG files as they are, other formats re-encoded."""
    with default_storage.open(name, "rb") as handle:
        data = handle.read()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "PNG", compress_level=3)
    return buffer.getvalue()


class _HashingWriter:
    """A write-only stream that hashes what passes through it on the way to a file.

    It does not tell its position, so zipfile writes in streaming mode (sizes in data
    descriptors, no seeking back): the bytes hashed are exactly the file's, in one pass.
    """

    def __init__(self, handle):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def tell(self) -> int:
        raise OSError("not seekable")

    def flush(self) -> None:
        self.handle.flush()


def write_zip(
    export: Export, target: Path, progress: Callable[[int, int], None]
) -> tuple[int, str]:
    """Write the export's zip to a local file; returns its size and sha256."""
    with target.open("wb") as handle:
        stream = _HashingWriter(handle)
        _write_members(export, stream, progress)
    return stream.size, stream.digest.hexdigest()


def _write_members(export: Export, stream, progress) -> None:
    split = export.split
    described = json.dumps(describe(split), indent=2).encode("utf-8")
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        if export.format == Export.Format.JSON:
            archive.writestr("dataset.json", described)
            progress(1, 1)
            return
        origins = cell_origins(split)
        sources = label_origins(split)
        placed_by = placed_by_of(split.dataset)
        consensus = sources is not None
        if export.format != Export.Format.IMAGEFOLDER:
            # A csv export holds no image: no patch is cut for it.
            rows = manifest_rows(split_samples(split, {}), origins, {}, placed_by, sources)
            archive.writestr("manifest.csv", manifest_csv(rows, with_label_source=consensus))
            archive.writestr("dataset.json", described)
            progress(1, 1)
            return
        needed_by = "an imagefolder export (csv and json exports work without)"
        samples = split_samples(split, patch_names(split, needed_by=needed_by))
        inside = {}
        for done, sample in enumerate(samples, start=1):
            name = image_name(sample)
            # PNG is compressed already: store it as it is.
            archive.writestr(name, patch_png(sample.patch), compress_type=zipfile.ZIP_STORED)
            inside[sample.cell] = name
            if done % PROGRESS_EVERY == 0 or done == len(samples):
                progress(done, len(samples))
        rows = manifest_rows(samples, origins, inside, placed_by, sources)
        archive.writestr("manifest.csv", manifest_csv(rows, with_label_source=consensus))
        archive.writestr("dataset.json", described)


def _local_target(name: str) -> Path | None:
    """The file system path of a storage name, or None for object stores."""
    try:
        return Path(default_storage.path(name))
    except NotImplementedError:
        return None


def _write_and_publish(export: Export, name: str, progress) -> tuple[str, int, str]:
    """Write the zip where it will live and publish it whole: on local disk a hidden partial
    file beside the target renamed into place (no copy of a large export); on an object store
    a local temporary file uploaded in one request. Returns (storage name, size, sha256)."""
    target = _local_target(name)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
        os.close(handle)
        partial = Path(partial_name)
        try:
            size, digest = write_zip(export, partial, progress)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return name, size, digest
    with tempfile.TemporaryDirectory(prefix=f"cytomark-export-{export.pk}-") as folder:
        local = Path(folder) / "export.zip"
        size, digest = write_zip(export, local, progress)
        with local.open("rb") as handle:
            return default_storage.save(name, File(handle)), size, digest


def request_export(split: Split, export_format: str, user) -> Export:
    """A queued export row; the caller starts the task once it is committed."""
    if export_format not in Export.Format.values:
        known = ", ".join(Export.Format.values)
        raise DomainError(f"Unknown format {export_format!r}; use {known}.", field="format")
    return Export.objects.create(split=split, format=export_format, created_by=user)


def export_name(export: Export, attempt: int) -> str:
    """Where an attempt writes the zip: its own name after the first, so that an attempt that
    lost its lease never removes what a later one published."""
    suffix = "" if attempt <= 1 else f"-attempt{attempt}"
    return f"exports/{export.split.sha256[:16]}/{export.format}-{export.pk}{suffix}.zip"


def remove_partials(export: Export) -> None:
    """Delete the files attempts of the export left behind: partial zips, and zips written but
    never published; the published zip stays."""
    stem = f"{export.format}-{export.pk}"
    leases.remove_files(
        f"exports/{export.split.sha256[:16]}",
        lambda name: name.lstrip(".").startswith((f"{stem}.", f"{stem}-")),
        keep=export.file,
    )
    for folder in Path(tempfile.gettempdir()).glob(f"cytomark-export-{export.pk}-*"):
        shutil.rmtree(folder, ignore_errors=True)


def cancel_export(export: Export) -> Export:
    """End a queued, running or orphaned export at once (cancelled); a worker writing it stops
    at its next progress step, and its partial zip is removed."""
    if not leases.cancel(
        Export, export.pk, Export.Status.CANCELLED, error="Cancelled by its user."
    ):
        export.refresh_from_db()
        raise DomainError(f"Export {export.pk} has ended ({export.status}); nothing to cancel.")
    export.refresh_from_db()
    return export


def stopped_message(export: Export, reason: str) -> str:
    """The sentence of an export stopped by its worker's shutdown."""
    written = f" ({export.done} of {export.total} files written)" if export.total else ""
    return f"Stopped because {reason} while it was being written{written}; request it again."


def run_export(export_id: int) -> Export:
    """Build the export's zip and publish it; failures are recorded on the row.

    Claimed in one statement (core.leases): a task delivered twice writes the export once, and
    one delivered again after its worker died writes it from the start.
    """
    export = Export.objects.select_related(
        "split__dataset__study__taxonomy", "split__dataset__panel"
    ).get(pk=export_id)
    owner = leases.new_owner()
    attempt = leases.claim(Export, export.pk, [Export.Status.QUEUED, Export.Status.FAILED], owner)
    if attempt is None:
        export.refresh_from_db()
        return export
    with leases.Lease(Export, export.pk, owner) as lease:

        def progress(done: int, total: int) -> None:
            leases.stop_if_shutting_down()
            if not lease.mine().update(done=done, total=total):
                raise leases.LeaseLost(f"Export {export.pk} is no longer this worker's.")

        name = export_name(export, attempt)
        try:
            stored, size, digest = _write_and_publish(export, name, progress)
        except leases.ShuttingDown as stop:
            leases.end_stopped(leases.kind_of(Export), export.pk, owner, str(stop))
        except Exception as exc:  # recorded for the user in a sentence; the task ends cleanly
            if not isinstance(exc, DomainError | leases.LeaseLost):
                log.exception("Export %s failed", export.pk)
            lease.finish(
                status=Export.Status.FAILED,
                error=failures.describe(exc, "The export")[:2000],
                finished_at=timezone.now(),
            )
        else:
            published = lease.finish(
                status=Export.Status.DONE,
                file=stored,
                size_bytes=size,
                sha256=digest,
                finished_at=timezone.now(),
            )
            if not published:
                default_storage.delete(stored)
    export.refresh_from_db()
    return export
