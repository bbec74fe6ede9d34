"""QuPath interoperability: one scan's cells as GeoJSON points, and QuPath's points back as cells.

QuPath reads and writes GeoJSON in level-0 pixel coordinates, origin at the top left. A cell
becomes a `Point` annotation at `[x, y]` whose classification is its label's node code (coloured
as the node), QuPath's built-in `Ignore*` class for "cannot classify", and no classification when
the cell has no label in the round. Cytomark's own ids, and who placed the cell (`placed_by`:
`hand` or `detector`), travel in the `cytomark` property, for people, never read back: positions,
not ids, identify cells on import.

On import, every feature is checked before anything is written; problems are reported all
together with the feature's place in the file (`features[3]`, counted from 0 as in the JSON
array), and then nothing is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, Q

from annotator import annotation
from annotator.access import ANNOTATING_ROLES, require_role
from annotator.models import Cell, Label, Round, Scan, Study, TaxonNode
from annotator.taxonomy import taxon_tree
from core.errors import DomainError

from .versions import DETECTOR, HAND, detector_placed

IGNORE_CLASS = "Ignore*"  # QuPath's built-in class for objects to leave out
IGNORE_COLOUR = [180, 180, 180]  # the colour QuPath gives it


class GeoJsonProblems(DomainError):
    """A GeoJSON file that cannot be imported; `problems` lists every reason found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"{len(problems)} problem(s) in the GeoJSON (nothing was imported): "
            + "; ".join(problems),
            field="file",
        )


@dataclass
class ImportSummary:
    features: int = 0
    cells_created: int = 0
    cells_reused: int = 0  # a cell of the study was at that pixel of the scan already
    labels_created: int = 0
    labels_changed: int = 0
    labels_unchanged: int = 0
    without_class: int = 0

    @property
    def changed_anything(self) -> bool:
        return bool(self.cells_created or self.labels_created or self.labels_changed)


def _check_scope(study: Study, scan: Scan, round_: Round) -> None:
    if not study.scans.filter(pk=scan.pk).exists():
        raise DomainError(f"Scan {scan.pk} is not part of study {study.name}.", field="scan")
    if round_.study_id != study.pk:
        raise DomainError(
            f"Round {round_} belongs to another study than {study.name}.", field="round"
        )


def _rgb(colour: str) -> list[int] | None:
    if not colour:
        return None
    return [int(colour[i : i + 2], 16) for i in (1, 3, 5)]


def _feature(cell: Cell, label: Label | None, placed_by: str) -> dict:
    properties: dict = {"objectType": "annotation", "isLocked": False}
    if label is not None and label.cannot_classify:
        properties["classification"] = {"name": IGNORE_CLASS, "color": IGNORE_COLOUR}
    elif label is not None:
        classification: dict = {"name": label.node.code}
        colour = _rgb(label.node.colour)
        if colour is not None:
            classification["color"] = colour
        properties["classification"] = classification
    properties["cytomark"] = {
        "cell": cell.pk,
        "node": label.node.code if label is not None and label.node else None,
        "cannot_classify": bool(label and label.cannot_classify),
        "placed_by": placed_by,
    }
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [cell.x, cell.y]},
        "properties": properties,
    }


def scan_cells_geojson(study: Study, scan: Scan, round_: Round) -> dict:
    """Every cell of the study on the scan as a QuPath point, classified by its label in the
    round (see the module doc)."""
    _check_scope(study, scan, round_)
    cells = Cell.objects.filter(study=study, scan=scan).order_by("id")
    labels = {
        label.cell_id: label
        for label in Label.objects.filter(round=round_, cell__in=cells).select_related("node")
    }
    detector = detector_placed([cell.pk for cell in cells])
    return {
        "type": "FeatureCollection",
        "features": [
            _feature(cell, labels.get(cell.pk), DETECTOR if cell.pk in detector else HAND)
            for cell in cells
        ],
    }


def default_export_round(study: Study, scan: Scan) -> Round | None:
    """The gold round with the most labels on the scan (the earliest on a tie); None if no gold
    round has any."""
    return (
        Round.objects.filter(study=study, kind=Round.Kind.GOLD)
        .annotate(on_scan=Count("labels", filter=Q(labels__cell__scan=scan)))
        .filter(on_scan__gt=0)
        .order_by("-on_scan", "id")
        .first()
    )


class _ClassMatcher:
    """QuPath class name -> node: exact code, code ignoring case, an alias, the node's name."""

    def __init__(self, study: Study):
        self.taxonomy = study.taxonomy
        self.tree = taxon_tree(study.taxonomy_id)
        keys = [
            lambda node: [node.code],
            lambda node: [node.code.casefold()],
            lambda node: [alias.casefold() for alias in node.aliases],
            lambda node: [node.name.casefold()],
        ]
        self.tiers: list[dict[str, list[TaxonNode]]] = []
        for key in keys:
            tier: dict[str, list[TaxonNode]] = {}
            for node in self.tree.preorder:
                for value in set(key(node)):
                    tier.setdefault(value, []).append(node)
            self.tiers.append(tier)

    def match(self, name: str) -> TaxonNode:
        """The node the name means; ValueError saying why when there is none or no single one."""
        wanted = name.strip()
        lookups = [wanted] + [wanted.casefold()] * (len(self.tiers) - 1)
        for tier, lookup in zip(self.tiers, lookups, strict=True):
            found = tier.get(lookup, [])
            if len(found) > 1:
                codes = ", ".join(sorted(node.code for node in found))
                raise ValueError(f"class {name!r} is ambiguous: it matches {codes}")
            if found:
                node = found[0]
                if not node.is_leaf:
                    leaves = ", ".join(child.code for child in self.tree.children(node.code))
                    raise ValueError(
                        f"class {name!r} names {node.code}, which is not a leaf of the "
                        f"taxonomy (use one of its children: {leaves})"
                    )
                return node
        raise ValueError(
            f"unknown class {name!r} (not a code, alias or name of a node of {self.taxonomy})"
        )


@dataclass(frozen=True)
class _Point:
    where: str
    x: int
    y: int
    node: TaxonNode | None
    cannot_classify: bool

    @property
    def classified(self) -> bool:
        return self.node is not None or self.cannot_classify


def _feature_list(data: object) -> list:
    if isinstance(data, list):
        return data
    if (
        isinstance(data, dict)
        and data.get("type") == "FeatureCollection"
        and isinstance(data.get("features"), list)
    ):
        return data["features"]
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise GeoJsonProblems(["expected a FeatureCollection, a Feature or a list of features"])


def _class_name(properties: dict) -> str | None:
    """The classification's name as QuPath writes it (a name, a list of names, or a string)."""
    classification = properties.get("classification")
    if classification is None:
        return None
    if isinstance(classification, str):
        return classification
    if isinstance(classification, dict):
        if isinstance(classification.get("name"), str):
            return classification["name"]
        names = classification.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return ": ".join(names)
    raise ValueError("classification has no name")


def _positions(geometry: object) -> list:
    if not isinstance(geometry, dict):
        raise ValueError("has no geometry")
    kind = geometry.get("type")
    coordinates = geometry.get("coordinates")
    if kind == "Point":
        return [coordinates]
    if kind == "MultiPoint" and isinstance(coordinates, list) and coordinates:
        return coordinates
    if kind == "MultiPoint":
        raise ValueError("MultiPoint has no points")
    raise ValueError(f"geometry {kind} is not a point (only Point and MultiPoint become cells)")


def _pixel(position: object, scan: Scan) -> tuple[int, int]:
    """The level-0 pixel a position lies in; ValueError when it is not a point on the scan."""
    if (
        not isinstance(position, list | tuple)
        or len(position) < 2
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in position[:2]
        )
    ):
        raise ValueError(f"{position!r} is not an [x, y] position")
    x, y = position[0], position[1]
    if not (0 <= x < scan.width and 0 <= y < scan.height):
        raise ValueError(f"point ({x}, {y}) is outside the scan ({scan.width} x {scan.height})")
    return math.floor(x), math.floor(y)


def _read_points(features: list, scan: Scan, matcher: _ClassMatcher) -> list[_Point]:
    """Check every feature; raise GeoJsonProblems listing all problems, else the points."""
    problems: list[str] = []
    points: list[_Point] = []
    seen: dict[tuple[int, int], str] = {}
    for index, feature in enumerate(features):
        where = f"features[{index}]"
        if not isinstance(feature, dict):
            problems.append(f"{where}: not a GeoJSON feature")
            continue
        properties = feature.get("properties") or {}
        node, cannot_classify = None, False
        try:
            if not isinstance(properties, dict):
                raise ValueError("properties is not a JSON object")
            name = _class_name(properties)
            if name == IGNORE_CLASS:
                cannot_classify = True
            elif name is not None:
                node = matcher.match(name)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
        try:
            positions = _positions(feature.get("geometry"))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        for number, position in enumerate(positions):
            at = where if len(positions) == 1 else f"{where}, point {number}"
            try:
                x, y = _pixel(position, scan)
            except ValueError as exc:
                problems.append(f"{at}: {exc}")
                continue
            if (x, y) in seen:
                problems.append(f"{at}: pixel ({x}, {y}) is taken by {seen[(x, y)]} already")
                continue
            seen[(x, y)] = at
            points.append(_Point(at, x, y, node, cannot_classify))
    if problems:
        raise GeoJsonProblems(problems)
    return points


def import_cells_geojson(
    study: Study, scan: Scan, round_: Round, data: object, user
) -> ImportSummary:
    """Make QuPath's points cells of the scan and label them in the user's gold round.

    A point on a pixel where the study has a cell on this scan already reuses that cell, so
    importing the same file twice adds nothing; its label in the round is set to the file's
    class (a changed class is recorded in the label's history). A point without a class leaves
    the label as it is.
    """
    _check_scope(study, scan, round_)
    require_role(user, study, ANNOTATING_ROLES, "import cells")
    if round_.kind != Round.Kind.GOLD or round_.rater_id != user.pk:
        raise DomainError(
            f"Cells are imported into the user's own gold round; round {round_} is a "
            f"{round_.kind} round of {round_.rater.get_username()}.",
            field="round",
        )
    features = _feature_list(data)
    points = _read_points(features, scan, _ClassMatcher(study))
    summary = ImportSummary(features=len(features))
    with transaction.atomic():
        existing = {
            (cell.x, cell.y): cell
            for cell in Cell.objects.filter(study=study, scan=scan).order_by("-id")
        }
        labels = {label.cell_id: label for label in round_.labels.all()}
        for point in points:
            cell = existing.get((point.x, point.y))
            if cell is None:
                cell = annotation.create_cell(study, scan, point.x, point.y, user)
                summary.cells_created += 1
            else:
                summary.cells_reused += 1
            if not point.classified:
                summary.without_class += 1
                continue
            label = labels.get(cell.pk)
            if label is not None and (label.node_id, label.cannot_classify) == (
                point.node.pk if point.node else None,
                point.cannot_classify,
            ):
                summary.labels_unchanged += 1
                continue
            _, created = annotation.set_label(
                cell, round_, user, node=point.node, cannot_classify=point.cannot_classify
            )
            if created:
                summary.labels_created += 1
            else:
                summary.labels_changed += 1
    return summary
