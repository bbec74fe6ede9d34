"""Frozen data set versions: a label source, filters and a class map -> a hashed manifest.

The manifest is the list of (cell id, patient code, scan id, class) ordered by cell id; its
sha256 is taken over a canonical CSV rendering of it together with the class list, so the same
cells with the same classes give the same hash. A version is never changed; `make_dataset` with
the same name makes the next version (or finds the latest one when nothing differs).

The label source is a round (`gold` or a round's name) or a panel's consensus
(`annotator.panels.consensus_labels`): `majority` (the panel's majority vote) or `adjudicated`
(an adjudication round's labels, the majority elsewhere). A consensus version's rows carry a
fifth column, where each label came from, and its hash covers that column and the source (kind,
panel, adjudication round, tie rule) too; versions made from a round hash as they always did.

A version also records which of its cells the detector placed (a proposed cell someone
accepted, `annotator.screening`) and how many were placed by hand. The hash does not cover that
record and needs not: a cell's placement is fixed when the cell is made and never changes, so
it is a function of the cell id, which the hash covers.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import transaction

from annotator import panels
from annotator.models import Cell, Label, Panel, ProposedCell, Round, Study
from annotator.panel_agreement import CANNOT_CLASSIFY, panel_agreement
from core.errors import DomainError, check_field

from .classmaps import gold_source
from .models import ClassMap, DatasetVersion, ManifestRow

MANIFEST_HEADER = ["cell_id", "patient", "scan", "class"]
ORIGIN_COLUMN = "label_source"
CONSENSUS_SOURCES = (panels.MAJORITY, panels.ADJUDICATED)
HAND, DETECTOR = "hand", "detector"
PLACEMENTS = (HAND, DETECTOR)
# Bootstrap replicates of the agreement a consensus version records: enough for a rough
# interval, few enough to keep making a version quick; the panel's report has the full one.
AGREEMENT_REPLICATES = 200
AGREEMENT_FIELDS = (
    "raters",
    "items",
    "ratings",
    "declined",
    "categories",
    "fleiss_kappa",
    "fleiss_kappa_reason",
    "fleiss_kappa_se",
    "fleiss_kappa_ci",
    "krippendorff_alpha",
    "krippendorff_alpha_ci",
    "bootstrap",
)


def manifest_sha256(
    classes: list[str], manifest: Sequence[Sequence], label_source: Sequence[str] | None = None
) -> str:
    """sha256 of the class list and the manifest as canonical CSV (LF line ends, UTF-8).

    A consensus manifest passes `label_source` (kind, panel, adjudication round, tie rule): it
    is hashed as a line of its own, and the rows' fifth column under a `label_source` header.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["classes", *classes])
    if label_source is None:
        writer.writerow(MANIFEST_HEADER)
    else:
        writer.writerow([ORIGIN_COLUMN, *label_source])
        writer.writerow([*MANIFEST_HEADER, ORIGIN_COLUMN])
    writer.writerows(manifest)
    return hashlib.sha256(out.getvalue().encode("utf-8")).hexdigest()


def hashed_label_source(version: DatasetVersion) -> list[str] | None:
    """What a consensus version's hash covers of its source; None for a round's version."""
    if not version.is_consensus:
        return None
    return [
        version.label_source,
        version.consensus["panel"],
        version.consensus.get("adjudication") or "",
        version.consensus["tie_rule"],
    ]


def version_sha256(version: DatasetVersion) -> str:
    """The hash of a stored version recomputed from what it stores (a check of a citation)."""
    return manifest_sha256(version.classes, version.manifest, hashed_label_source(version))


def resolve_source(study: Study, source: str) -> Round:
    """`gold` (the study's largest gold round) or the name of any round of the study."""
    if source in ("", "gold"):
        return gold_source(study)
    found = study.rounds.filter(name=source).first()
    if found is None:
        raise DomainError(f"No round named {source!r} in study {study.name}.", field="source")
    return found


Row = tuple[int, str, str, str | None, str]  # cell, patient, scan, code (None: cannot), origin


@dataclass
class Labels:
    """What a label source gives before the class map: the rows, how the version names its
    source, and for a consensus its panel, what its hash covers and what it records."""

    rows: list[Row]
    source: str
    label_source: str
    source_round: Round | None = None
    panel: Panel | None = None
    hashed_source: list[str] | None = None
    consensus: dict | None = None


def _kept(found, filters: dict, left_out: Counter) -> list[Row]:
    """The rows the filters keep, from (cell, own patient, scan's patient, scan, code,
    cannot classify, origin) tuples; what they leave out is counted in `left_out`."""
    excluded_patients = set(filters.get("exclude_patients", []))
    scans = set(filters.get("scans") or [])
    kept = []
    for cell, own_patient, scan_patient, scan, code, cannot, origin in found:
        patient = own_patient or scan_patient or ""
        if (scans and scan not in scans) or (patient and patient in excluded_patients):
            left_out["filters"] += 1
            continue
        if cannot and filters.get("exclude_cannot_classify", True):
            left_out["cannot_classify"] += 1
            continue
        kept.append((cell, patient, str(scan or ""), None if cannot else code, origin))
    return kept


def _round_labels(study: Study, source: str, filters: dict) -> Labels:
    round_ = resolve_source(study, source)
    labels = Label.objects.filter(round=round_).order_by("cell_id")
    if filters.get("scans"):
        labels = labels.filter(cell__scan_id__in=filters["scans"])
    found = labels.values_list(
        "cell_id",
        "cell__patient__code",
        "cell__scan__patient__code",
        "cell__scan_id",
        "node__code",
        "cannot_classify",
    )
    rows = _kept(((*row, "") for row in found), filters, Counter())
    if not rows:
        raise DomainError(f"Round {round_.name} has no labels left after the filters.", "source")
    kind = DatasetVersion.LabelSource
    return Labels(
        rows=rows,
        source=round_.name,
        label_source=kind.GOLD if round_.kind == Round.Kind.GOLD else kind.ROUND,
        source_round=round_,
    )


def resolve_panel(study: Study, name: str = "") -> Panel:
    """The study's panel of that name, or its latest panel when no name is given."""
    if name:
        return panels.study_panel(study, name)
    latest = study.panels.order_by("-id").first()
    if latest is None:
        raise DomainError(
            f"Study {study.name} has no panel, so it has no consensus labels.", "panel"
        )
    return latest


def _agreement(table: panels.PanelTable, patients: dict[int, str]) -> dict:
    """The panel's agreement over its answers, bootstrapped over patients when every cell has
    one (cells of one patient are not independent), else over cells."""
    clusters = [patients.get(cell, "") for cell in table.cells]
    found = panel_agreement(
        table.ratings,
        table.raters,
        clusters=clusters if all(clusters) else None,
        replicates=AGREEMENT_REPLICATES,
    ).to_dict()
    return {key: found[key] for key in AGREEMENT_FIELDS}


def _consensus_labels(
    study: Study, source: str, panel_name: str, adjudication_name: str, filters: dict
) -> Labels:
    panel = resolve_panel(study, panel_name)
    adjudication = None
    if adjudication_name:
        if source != panels.ADJUDICATED:
            raise DomainError(
                "An adjudication round goes with the source adjudicated, not majority.",
                "adjudication",
            )
        adjudication = panels.adjudication_round(panel, adjudication_name)
    consensus = panels.consensus_labels(panel, source, adjudication=adjudication)
    facts = {
        pk: (own, of_scan, scan)
        for pk, own, of_scan, scan in Cell.objects.filter(pk__in=consensus.labels).values_list(
            "pk", "patient__code", "scan__patient__code", "scan_id"
        )
    }
    left_out = Counter()
    rows = _kept(
        (
            (
                cell,
                *facts[cell],
                None if code == CANNOT_CLASSIFY else code,
                code == CANNOT_CLASSIFY,
                origin,
            )
            for cell, (code, origin) in consensus.labels.items()
        ),
        filters,
        left_out,
    )
    summary = consensus.summary()
    described = (
        f"majority of panel {panel.name}"
        if source == panels.MAJORITY
        else f"adjudication {summary['adjudication']} of panel {panel.name}"
    )
    if not rows:
        raise DomainError(f"The {described} has no labels left after the filters.", "source")
    patients = {cell: own or of_scan or "" for cell, (own, of_scan, _) in facts.items()}
    left = {
        "no_consensus": consensus.unresolved,
        "pending": consensus.pending,
        "cannot_classify": left_out["cannot_classify"],
        "filters": left_out["filters"],
    }
    source_length = DatasetVersion._meta.get_field("source").max_length
    if len(described) > source_length:  # long names: the round and panel are recorded whole
        described = described[: source_length - 1] + "…"
    return Labels(
        rows=rows,
        source=described,
        label_source=source,
        source_round=consensus.adjudication,
        panel=panel,
        hashed_source=[source, panel.name, summary["adjudication"] or "", summary["tie_rule"]],
        consensus={
            **summary,
            "panel": panel.name,
            "left_out": left,
            "agreement": _agreement(panels.panel_table(panel), patients),
        },
    )


def detector_placed(cells: Sequence[int]) -> set[int]:
    """Those of the cells that the detector placed: a proposed cell accepted became each."""
    return set(
        ProposedCell.objects.filter(
            status=ProposedCell.Status.ACCEPTED, cell_id__in=list(cells)
        ).values_list("cell_id", flat=True)
    )


def _check_filters(study: Study, filters: dict) -> dict:
    known = {"exclude_cannot_classify", "scans", "exclude_patients", "placed_by"}
    unknown = sorted(set(filters) - known)
    if unknown:
        raise DomainError(f"Unknown filter(s) {', '.join(unknown)}; known: {sorted(known)}.")
    scans = filters.get("scans") or []
    if scans:
        missing = sorted(set(scans) - set(study.scans.values_list("pk", flat=True)))
        if missing:
            raise DomainError(f"Scan(s) {missing} are not in study {study.name}.", "filters")
    placed_by = filters.get("placed_by") or ""
    if placed_by and placed_by not in PLACEMENTS:
        raise DomainError(
            f"placed_by is {HAND} or {DETECTOR} (or left out for both), not {placed_by!r}.",
            "placed_by",
        )
    checked = {
        "exclude_cannot_classify": bool(filters.get("exclude_cannot_classify", True)),
        "scans": sorted(scans),
        "exclude_patients": sorted(filters.get("exclude_patients") or []),
    }
    # Recorded only where given, so that versions made without it record what they always did.
    return {**checked, "placed_by": placed_by} if placed_by else checked


def _placed_as_asked(labels: Labels, placed_by: str, detector: set[int]) -> None:
    """Keep the rows of cells placed `placed_by` (all where it is ""); a consensus counts
    those left out with the other filters'."""
    if not placed_by:
        return
    kept = [row for row in labels.rows if (row[0] in detector) == (placed_by == DETECTOR)]
    if not kept:
        raise DomainError(f"No cell placed by {placed_by} is left after the filters.", "placed_by")
    if labels.consensus is not None:
        labels.consensus["left_out"]["filters"] += len(labels.rows) - len(kept)
    labels.rows = kept


@transaction.atomic
def make_dataset(
    study: Study,
    name: str,
    user,
    *,
    source: str = "gold",
    panel: str = "",
    adjudication: str = "",
    class_map: ClassMap | None = None,
    filters: dict | None = None,
    notes: str = "",
) -> tuple[DatasetVersion, bool]:
    """Freeze the labels of `source` under `class_map` as the next version of `name`.

    `source` is `gold`, a round's name, or `majority` / `adjudicated` of `panel` (its name;
    the study's latest panel when not given), `adjudicated` from the `adjudication` round of
    that name (the panel's latest when not given). `filters` may name `scans`,
    `exclude_patients`, `exclude_cannot_classify` (default true) and `placed_by` (`hand` or
    `detector`: only the cells placed so). Returns (version, created); when the
    manifest, classes and class map equal the latest version's, that version is returned and
    nothing is stored.
    """
    if not name:
        raise DomainError("A data set needs a name.", field="name")
    check_field(DatasetVersion, "name", name, "Data set name")
    if class_map is not None and class_map.study_id != study.pk:
        raise DomainError(f"Class map {class_map} belongs to another study.", field="classmap")
    filters = _check_filters(study, filters or {})
    if source in CONSENSUS_SOURCES:
        labels = _consensus_labels(study, source, panel, adjudication, filters)
    elif panel or adjudication:
        raise DomainError(
            f"A panel goes with the source majority or adjudicated, not {source!r}.", "panel"
        )
    else:
        labels = _round_labels(study, source, filters)
    detector = detector_placed([row[0] for row in labels.rows])
    _placed_as_asked(labels, filters.get("placed_by", ""), detector)
    rows = labels.rows
    class_of = class_map.class_of() if class_map else None
    classes = (
        [c["code"] for c in class_map.classes]
        if class_map
        else sorted({code for _, _, _, code, _ in rows if code})
    )
    manifest: list[ManifestRow] = []
    unmapped = Counter()
    origins: list[str] = []
    for cell, patient, scan, code, origin in rows:
        klass = "cannot-classify" if code is None else (class_of or {}).get(code, code)
        if code is not None and class_of is not None and code not in class_of:
            unmapped[code] += 1
            continue
        manifest.append(ManifestRow(cell, patient, scan, klass))
        origins.append(origin)
    if unmapped:
        listed = ", ".join(f"{code} ({n})" for code, n in sorted(unmapped.items()))
        raise DomainError(
            f"Labels with nodes that class map {class_map} does not cover: {listed}.", "classmap"
        )
    if not filters["exclude_cannot_classify"]:
        classes = [*classes, "cannot-classify"]
    counts = Counter(row.class_name for row in manifest)
    stored = [list(row) for row in manifest]
    if labels.hashed_source is not None:
        stored = [[*row, origin] for row, origin in zip(stored, origins, strict=True)]
    sha = manifest_sha256(classes, stored, labels.hashed_source)
    latest = (
        DatasetVersion.objects.select_for_update()
        .filter(study=study, name=name)
        .order_by("-version")
        .first()
    )
    if latest and latest.sha256 == sha and latest.class_map_id == (class_map and class_map.pk):
        return latest, False
    detector_cells = [row.cell for row in manifest if row.cell in detector]
    made = DatasetVersion.objects.create(
        study=study,
        name=name,
        version=(latest.version + 1) if latest else 1,
        source=labels.source,
        source_round=labels.source_round,
        label_source=labels.label_source,
        panel=labels.panel,
        consensus=labels.consensus or {},
        class_map=class_map,
        filters=filters,
        classes=classes,
        manifest=stored,
        counts={klass: counts.get(klass, 0) for klass in classes},
        detector_cells=detector_cells,
        placement=placement_counts(len(manifest), len(detector_cells)),
        sha256=sha,
        notes=notes,
        created_by=user,
    )
    return made, True


def placement_counts(cells: int, by_detector: int) -> dict[str, int]:
    """The summary a version records: how many of its cells were placed by hand and how many
    by the detector."""
    return {HAND: cells - by_detector, DETECTOR: by_detector}


def placed_by_of(version: DatasetVersion) -> dict[int, str]:
    """Cell -> `hand` or `detector`, for each cell of the version's manifest."""
    detector = set(version.detector_cells)
    return {row[0]: DETECTOR if row[0] in detector else HAND for row in version.manifest}


def placement_line(version: DatasetVersion) -> str:
    """Who placed the version's cells, in words ("" for a version that did not record it)."""
    if not version.placement:
        return ""
    return (
        f"placed by hand {version.placement[HAND]}, by the detector {version.placement[DETECTOR]}"
    )


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
    relabelled: list[tuple[int, str, str, str]]  # (cell, class in a, class in b, origin in b)
    class_map_changed: bool
    classes_added: list[str]
    classes_removed: list[str]
    label_sources: tuple[str, str]

    @property
    def label_source_changed(self) -> bool:
        return self.label_sources[0] != self.label_sources[1]

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "removed": self.removed,
            "relabelled": [
                {
                    "cell": cell,
                    "from": before,
                    "to": after,
                    **({"origin": origin} if origin else {}),
                }
                for cell, before, after, origin in self.relabelled
            ],
            "class_map_changed": self.class_map_changed,
            "classes_added": self.classes_added,
            "classes_removed": self.classes_removed,
            "label_source_changed": self.label_source_changed,
            "label_sources": {"from": self.label_sources[0], "to": self.label_sources[1]},
            "summary": {
                "added": len(self.added),
                "removed": len(self.removed),
                "relabelled": len(self.relabelled),
            },
        }


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def consensus_line(version: DatasetVersion) -> str:
    """A consensus version's source, what it left out and its panel's agreement, in a line."""
    record = version.consensus
    left = record["left_out"]
    agreement = record["agreement"]
    return (
        f"labels: {version.source} ({record['by_origin']}); left out: "
        f"{left['no_consensus']} without a majority, {left['pending']} pending adjudication, "
        f"{left['cannot_classify']} cannot classify, {left['filters']} by the filters; "
        f"panel agreement over {agreement['items']} cells, {len(agreement['raters'])} raters: "
        f"Fleiss' kappa {_figure(agreement['fleiss_kappa'])}, "
        f"Krippendorff's alpha {_figure(agreement['krippendorff_alpha'])}"
    )


def describe_source(version: DatasetVersion) -> str:
    """The version's label source in words: its kind and what it was made from."""
    return f"{version.label_source}: {version.source}"


def diff_versions(a: DatasetVersion, b: DatasetVersion) -> VersionDiff:
    """What changed from `a` to `b`: cells added, removed, relabelled (with where b's label
    came from, for a consensus version), the class map and the label source."""
    left = {row.cell: row.class_name for row in a.rows()}
    right = {row.cell: row.class_name for row in b.rows()}
    origin = b.origin_of()
    return VersionDiff(
        added=sorted(right.keys() - left.keys()),
        removed=sorted(left.keys() - right.keys()),
        relabelled=[
            (cell, left[cell], right[cell], origin[cell])
            for cell in sorted(left.keys() & right.keys())
            if left[cell] != right[cell]
        ],
        class_map_changed=a.class_map_id != b.class_map_id,
        classes_added=[c for c in b.classes if c not in a.classes],
        classes_removed=[c for c in a.classes if c not in b.classes],
        label_sources=(describe_source(a), describe_source(b)),
    )
