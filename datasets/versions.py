"""Frozen data set versions: a label source, filters and a class map -> a hashed manifest.

The manifest is the list of (cell id, patient code, scan id, class) ordered by cell id; its
sha256 is taken over a canonical CSV rendering of it together with the class list, so the same
cells with the same classes give the same hash. A version is never changed; `make_dataset` with
the same name makes the next version (or finds the latest one when nothing differs).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import transaction

from annotator.models import Label, Round, Study
from core.errors import DomainError, check_field

from .classmaps import gold_source
from .models import ClassMap, DatasetVersion, ManifestRow

MANIFEST_HEADER = ["cell_id", "patient", "scan", "class"]


def manifest_sha256(classes: list[str], manifest: Sequence[Sequence]) -> str:
    """sha256 of the class list and the manifest as canonical CSV (LF line ends, UTF-8)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["classes", *classes])
    writer.writerow(MANIFEST_HEADER)
    writer.writerows(manifest)
    return hashlib.sha256(out.getvalue().encode("utf-8")).hexdigest()


def resolve_source(study: Study, source: str) -> Round:
    """`gold` (the study's largest gold round) or the name of any round of the study."""
    if source in ("", "gold"):
        return gold_source(study)
    found = study.rounds.filter(name=source).first()
    if found is None:
        raise DomainError(f"No round named {source!r} in study {study.name}.", field="source")
    return found


def _rows(round_: Round, filters: dict) -> list[tuple[int, str, str, str | None]]:
    labels = Label.objects.filter(round=round_).order_by("cell_id")
    if filters.get("scans"):
        labels = labels.filter(cell__scan_id__in=filters["scans"])
    rows = labels.values_list(
        "cell_id",
        "cell__patient__code",
        "cell__scan__patient__code",
        "cell__scan_id",
        "node__code",
        "cannot_classify",
    )
    excluded_patients = set(filters.get("exclude_patients", []))
    kept = []
    for cell, own_patient, scan_patient, scan, code, cannot in rows:
        patient = own_patient or scan_patient or ""
        if patient and patient in excluded_patients:
            continue
        if cannot and filters.get("exclude_cannot_classify", True):
            continue
        kept.append((cell, patient, str(scan or ""), None if cannot else code))
    return kept


def _check_filters(study: Study, filters: dict) -> dict:
    known = {"exclude_cannot_classify", "scans", "exclude_patients"}
    unknown = sorted(set(filters) - known)
    if unknown:
        raise DomainError(f"Unknown filter(s) {', '.join(unknown)}; known: {sorted(known)}.")
    scans = filters.get("scans") or []
    if scans:
        missing = sorted(set(scans) - set(study.scans.values_list("pk", flat=True)))
        if missing:
            raise DomainError(f"Scan(s) {missing} are not in study {study.name}.", "filters")
    return {
        "exclude_cannot_classify": bool(filters.get("exclude_cannot_classify", True)),
        "scans": sorted(scans),
        "exclude_patients": sorted(filters.get("exclude_patients") or []),
    }


@transaction.atomic
def make_dataset(
    study: Study,
    name: str,
    user,
    *,
    source: str = "gold",
    class_map: ClassMap | None = None,
    filters: dict | None = None,
    notes: str = "",
) -> tuple[DatasetVersion, bool]:
    """Freeze the labels of `source` under `class_map` as the next version of `name`.

    Returns (version, created); when the manifest, classes and class map equal the latest
    version's, that version is returned and nothing is stored.
    """
    if not name:
        raise DomainError("A data set needs a name.", field="name")
    check_field(DatasetVersion, "name", name, "Data set name")
    if class_map is not None and class_map.study_id != study.pk:
        raise DomainError(f"Class map {class_map} belongs to another study.", field="classmap")
    round_ = resolve_source(study, source)
    filters = _check_filters(study, filters or {})
    rows = _rows(round_, filters)
    if not rows:
        raise DomainError(f"Round {round_.name} has no labels left after the filters.", "source")
    class_of = class_map.class_of() if class_map else None
    classes = (
        [c["code"] for c in class_map.classes]
        if class_map
        else sorted({code for *_, code in rows if code})
    )
    manifest: list[ManifestRow] = []
    unmapped = Counter()
    for cell, patient, scan, code in rows:
        klass = "cannot-classify" if code is None else (class_of or {}).get(code, code)
        if code is not None and class_of is not None and code not in class_of:
            unmapped[code] += 1
            continue
        manifest.append(ManifestRow(cell, patient, scan, klass))
    if unmapped:
        listed = ", ".join(f"{code} ({n})" for code, n in sorted(unmapped.items()))
        raise DomainError(
            f"Labels with nodes that class map {class_map} does not cover: {listed}.", "classmap"
        )
    if not filters["exclude_cannot_classify"]:
        classes = [*classes, "cannot-classify"]
    counts = Counter(row.class_name for row in manifest)
    sha = manifest_sha256(classes, manifest)
    latest = (
        DatasetVersion.objects.select_for_update()
        .filter(study=study, name=name)
        .order_by("-version")
        .first()
    )
    if latest and latest.sha256 == sha and latest.class_map_id == (class_map and class_map.pk):
        return latest, False
    made = DatasetVersion.objects.create(
        study=study,
        name=name,
        version=(latest.version + 1) if latest else 1,
        source=round_.name,
        source_round=round_,
        class_map=class_map,
        filters=filters,
        classes=classes,
        manifest=[list(row) for row in manifest],
        counts={klass: counts.get(klass, 0) for klass in classes},
        sha256=sha,
        notes=notes,
        created_by=user,
    )
    return made, True


def find_dataset(reference: str, study: Study | None = None) -> DatasetVersion:
    """A version by id, by `NAME` (its latest version) or by `NAME@VERSION`."""
    versions = DatasetVersion.objects.all()
    if study is not None:
        versions = versions.filter(study=study)
    if reference.isdigit() and len(reference) < 12:
        found = versions.filter(pk=int(reference)).first()
        if found:
            return found
    name, _, version = reference.partition("@")
    versions = versions.filter(name=name)
    if version:
        if not version.isdigit() or len(version) > 9:
            raise DomainError(f"Version {version!r} of data set {name} is not a number.")
        versions = versions.filter(version=int(version))
    found = versions.order_by("-version").first()
    if found is None:
        raise DomainError(f"No data set {reference!r}.", field="dataset")
    if (
        study is None
        and DatasetVersion.objects.filter(name=name).values("study").distinct().count() > 1
    ):
        raise DomainError(f"Several studies have a data set {name!r}; name the study.", "dataset")
    return found


@dataclass
class VersionDiff:
    added: list[int]
    removed: list[int]
    relabelled: list[tuple[int, str, str]]  # (cell, class in a, class in b)
    class_map_changed: bool
    classes_added: list[str]
    classes_removed: list[str]

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "removed": self.removed,
            "relabelled": [
                {"cell": cell, "from": before, "to": after}
                for cell, before, after in self.relabelled
            ],
            "class_map_changed": self.class_map_changed,
            "classes_added": self.classes_added,
            "classes_removed": self.classes_removed,
            "summary": {
                "added": len(self.added),
                "removed": len(self.removed),
                "relabelled": len(self.relabelled),
            },
        }


def diff_versions(a: DatasetVersion, b: DatasetVersion) -> VersionDiff:
    """What changed from `a` to `b`: cells added, removed, relabelled, and the class map."""
    left = {row.cell: row.class_name for row in a.rows()}
    right = {row.cell: row.class_name for row in b.rows()}
    return VersionDiff(
        added=sorted(right.keys() - left.keys()),
        removed=sorted(left.keys() - right.keys()),
        relabelled=[
            (cell, left[cell], right[cell])
            for cell in sorted(left.keys() & right.keys())
            if left[cell] != right[cell]
        ],
        class_map_changed=a.class_map_id != b.class_map_id,
        classes_added=[c for c in b.classes if c not in a.classes],
        classes_removed=[c for c in a.classes if c not in b.classes],
    )
