"""Importing a panel's ratings made elsewhere: a CSV `item,rater,label`, one row per rating,
stored as a panel of blinded rounds (one per rater) that `annotator.panels` reads like any other.

`item` is a cell's external id (a patch-only cell, made when new), `rater` a user name (a user
who cannot log in, made when new), `label` a leaf code of the study's taxonomy, `UNC` for
"cannot classify", or empty: the rater had the item but gave no answer (queued, unanswered).

The whole file is read and checked before anything is written, and the writes are one
transaction: a malformed line stops the import with its line number and nothing is stored.
Re-importing the same file changes nothing; a changed label is changed (with its history), a
new rating added. A label stored earlier that the file no longer gives (its row gone or its
label emptied) is left as it was and counted as "not in the file": an import adds and corrects
answers, it never deletes one.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction

from core.errors import DomainError, check_field

from .annotation import bulk_import_labels
from .models import Cell, Label, Panel, Round, RoundItem, Study, TaxonNode, Taxonomy
from .panel_agreement import CANNOT_CLASSIFY
from .rounds import can_log_in, derived_name, examiner, queue_cells
from .taxonomy import (
    DEFAULT_TAXONOMY_FILE,
    NAME_PATTERN,
    SHIPPED_DIR,
    TaxonTree,
    latest_version,
    load_taxonomy_file,
    read_taxonomy_file,
)

HEADER = ("item", "rater", "label")
DEFAULT_PANEL = "imported"
ITEM_LENGTH = Cell._meta.get_field("external_id").max_length


class RatingImportError(DomainError):
    """The ratings cannot be imported; the message names the line (or the option) at fault."""


@dataclass(frozen=True)
class Rating:
    line: int
    item: str
    rater: str
    label: str | None  # a leaf code, CANNOT_CLASSIFY, or None (queued, not answered)


@dataclass(frozen=True)
class ImportResult:
    """What an import did; `not_in_file` counts the stored labels the file no longer gives
    (left as they were)."""

    study: Study
    panel: Panel
    study_created: bool
    panel_created: bool
    ratings: int
    items: int
    raters: int
    cells_created: int
    raters_created: int
    rounds_created: int
    queued: int
    created: int
    changed: int
    unchanged: int
    unrated: int
    not_in_file: int
    design_changed: bool

    @property
    def changed_anything(self) -> bool:
        return bool(
            self.study_created
            or self.panel_created
            or self.cells_created
            or self.raters_created
            or self.rounds_created
            or self.queued
            or self.created
            or self.changed
            or self.design_changed
        )


def _read_text(source: str | Path) -> tuple[str, str]:
    """The CSV text and the name to cite it by: a Path is a file, a str the CSV itself."""
    if not isinstance(source, Path):
        return source, "ratings"
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise RatingImportError(f"Cannot read {source}: {exc.strerror or exc}") from None
    try:
        # utf-8-sig: a byte-order mark, as spreadsheet programs write, is not part of line 1.
        return data.decode("utf-8-sig"), source.name
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RatingImportError(
            f"{source.name}, line {line}: not UTF-8 text (byte {data[exc.start]:#04x}); save "
            "the file as UTF-8."
        ) from None


def _check_rater_name(name: str, where: str) -> None:
    try:
        check_field(get_user_model(), "username", name, "Rater name")
    except DomainError as exc:
        raise RatingImportError(f"{where}: {exc}") from None


def read_ratings(source: str | Path, nodes: dict[str, TaxonNode]) -> tuple[list[Rating], str]:
    """Parse and check every row against the taxonomy's nodes (by code); the first problem
    stops it, naming the line. Returns the ratings and the source's name."""
    text, name = _read_text(source)
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise RatingImportError(f"{name}, line {line}: a NUL character is no part of a CSV.")
    # newline="": the csv module finds the line ends itself (\n, \r\n, \r), so its line
    # numbers are the editor's, and a quoted field may hold a line break.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    ratings: list[Rating] = []
    seen: dict[tuple[str, str], int] = {}
    checked_raters: set[str] = set()
    try:
        header = next(reader, None)
        if header is None or tuple(field.strip().lower() for field in header) != HEADER:
            shown = ",".join(header or [])[:80]
            raise RatingImportError(
                f"{name}, line 1: the header must be {','.join(HEADER)}, found {shown!r}."
            )
        for row in reader:
            number = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            ratings.append(_rating(row, number, name, nodes, seen, checked_raters))
    except csv.Error as exc:
        raise RatingImportError(f"{name}, line {reader.line_num}: not valid CSV ({exc}).") from None
    if not ratings:
        raise RatingImportError(f"{name} holds no ratings, only the header.")
    return ratings, name


def _rating(
    row: list[str],
    number: int,
    name: str,
    nodes: dict[str, TaxonNode],
    seen: dict[tuple[str, str], int],
    checked_raters: set[str],
) -> Rating:
    where = f"{name}, line {number}"
    if len(row) != len(HEADER):
        raise RatingImportError(
            f"{where}: expected 3 fields (item, rater, label), found {len(row)}."
        )
    item, rater, label = (field.strip() for field in row)
    if not item:
        raise RatingImportError(f"{where}: the item is empty.")
    if len(item) > ITEM_LENGTH:
        raise RatingImportError(f"{where}: the item is longer than {ITEM_LENGTH} characters.")
    if not rater:
        raise RatingImportError(f"{where}: the rater is empty.")
    if rater not in checked_raters:
        _check_rater_name(rater, where)
        checked_raters.add(rater)
    if (item, rater) in seen:
        raise RatingImportError(
            f"{where}: {rater} rated {item!r} already on line {seen[item, rater]}."
        )
    seen[item, rater] = number
    if not label or label == CANNOT_CLASSIFY:
        return Rating(number, item, rater, label or None)
    node = nodes.get(label)
    if node is None:
        raise RatingImportError(
            f"{where}: unknown label {label[:40]!r} (a leaf code of the study's taxonomy, "
            f"{CANNOT_CLASSIFY} for cannot classify, or empty for not rated)."
        )
    if not node.is_leaf:
        leaves = ", ".join(leaf.code for leaf in TaxonTree(nodes.values()).leaves_under(label))
        raise RatingImportError(
            f"{where}: {label} is not a leaf of the taxonomy; give one of its leaves ({leaves})."
        )
    return Rating(number, item, rater, label)


def named_taxonomy(name: str | None) -> Taxonomy:
    """The latest version of the named taxonomy (the default, aml-18, when None), loading the
    shipped file of that name when none is loaded yet."""
    if name is None:
        return latest_version(read_taxonomy_file(DEFAULT_TAXONOMY_FILE).name) or (
            load_taxonomy_file(DEFAULT_TAXONOMY_FILE).taxonomy
        )
    found = latest_version(name)
    if found is not None:
        return found
    shipped = SHIPPED_DIR / f"{name}.yaml"
    if NAME_PATTERN.match(name) and shipped.is_file():
        return load_taxonomy_file(shipped).taxonomy
    loaded = sorted(set(Taxonomy.objects.values_list("name", flat=True)))
    offered = sorted({*loaded, *(path.stem for path in SHIPPED_DIR.glob("*.yaml"))})
    raise RatingImportError(
        f"Unknown taxonomy {name[:64]!r} (known: {', '.join(offered)}); load it first with "
        "manage.py load_taxonomy FILE.",
        "taxonomy",
    )


def _study(name: str, taxonomy: str | None) -> tuple[Study, bool]:
    study = Study.objects.filter(name=name).select_related("taxonomy").first()
    if study is not None:
        if taxonomy is not None and study.taxonomy.name != taxonomy:
            raise RatingImportError(
                f"Study {name} uses taxonomy {study.taxonomy}, not {taxonomy[:64]}; leave out "
                "--taxonomy or import into another study.",
                "taxonomy",
            )
        return study, False
    check_field(Study, "name", name, "Study name")
    study = Study.objects.create(
        name=name,
        title=name,
        taxonomy=named_taxonomy(taxonomy),
        description="Made by importing panel ratings (manage.py import_ratings).",
    )
    return study, True


def _panel(study: Study, name: str, source: str) -> tuple[Panel, bool]:
    check_field(Panel, "name", name, "Panel name")
    panel = study.panels.filter(name=name).first()
    if panel is None:
        return Panel.objects.create(study=study, name=name, design={"imported_from": source}), True
    if "imported_from" not in panel.design:
        raise RatingImportError(
            f"Panel {name} of study {study.name} was made in Cytomark, not imported; import "
            "into another panel (--panel).",
            "panel",
        )
    return panel, False


def _raters(study: Study, names: list[str], lines: dict[str, int], source: str):
    """The raters by name: login-less users, made when new. A name that belongs to a user who
    can log in is refused: the panel's rounds would make that person a blinded rater of the
    study, and their account would carry answers they never gave."""
    users = get_user_model().objects.filter(username__in=names)
    existing = {user.get_username(): user for user in users}
    for name in names:
        user = existing.get(name)
        if user is not None and can_log_in(user):
            raise RatingImportError(
                f"{source}, line {lines[name]}: {name} is the name of a user who can log in; "
                "imported raters are users who cannot, so rename the rater in the file."
            )
    made = {name: examiner(study, name, name) for name in names}
    return made, len(names) - len(existing)


def _cells(study: Study, items: list[str]) -> tuple[dict[str, int], int]:
    known = dict(
        study.cells.exclude(external_id="")
        .filter(external_id__in=items)
        .values_list("external_id", "pk")
    )
    made = Cell.objects.bulk_create(
        [Cell(study=study, external_id=item) for item in items if item not in known],
        batch_size=2000,
    )
    known.update({cell.external_id: cell.pk for cell in made})
    return known, len(made)


def _answers(own: list[Rating], cells: dict[str, int], nodes: dict[str, TaxonNode]):
    """A rater's answers as `bulk_import_labels` takes them: cell id -> node, None for
    cannot classify; items without a label are no answer."""
    return {
        cells[rating.item]: None if rating.label == CANNOT_CLASSIFY else nodes[rating.label]
        for rating in own
        if rating.label is not None
    }


def import_ratings(
    path_or_text: str | Path,
    study_name: str,
    *,
    taxonomy: str | None = None,
    panel: str = DEFAULT_PANEL,
) -> ImportResult:
    """Import a CSV of ratings (a Path names a file, a str is the CSV itself) as the named
    panel of the study, making the study on the named taxonomy (its latest version; the
    default taxonomy when None) when it does not exist. See the module doc."""
    with transaction.atomic():
        study, study_created = _study(study_name, taxonomy)
        nodes = {node.code: node for node in TaxonNode.objects.filter(taxonomy=study.taxonomy)}
        ratings, source = read_ratings(path_or_text, nodes)
        panel_row, panel_created = _panel(study, panel, source)

        by_rater: dict[str, list[Rating]] = {}
        for rating in ratings:
            by_rater.setdefault(rating.rater, []).append(rating)
        first_line = {name: own[0].line for name, own in by_rater.items()}
        items = list(dict.fromkeys(rating.item for rating in ratings))
        users, raters_created = _raters(study, list(by_rater), first_line, source)
        cells, cells_created = _cells(study, items)

        rounds = {
            r.rater_id: r
            for r in panel_row.rounds.filter(kind=Round.Kind.BLINDED).select_related("rater")
        }
        rounds_created = queued = created = changed = unchanged = 0
        for name, user in users.items():
            round_ = rounds.get(user.pk)
            if round_ is None:
                round_ = Round.objects.create(
                    study=study,
                    rater=user,
                    kind=Round.Kind.BLINDED,
                    panel=panel_row,
                    name=derived_name(study, panel_row.name, name, 1),
                    design={"mode": "imported", "panel": panel_row.name},
                )
                rounds[user.pk] = round_
                rounds_created += 1
            own = by_rater[name]
            queued += queue_cells(round_, [cells[rating.item] for rating in own])
            result = bulk_import_labels(round_, _answers(own, cells, nodes))
            created += result.created
            changed += result.changed
            unchanged += result.unchanged

        given = {
            (users[rating.rater].pk, cells[rating.item])
            for rating in ratings
            if rating.label is not None
        }
        stored = Label.objects.filter(round__in=rounds.values()).values_list(
            "round__rater_id", "cell_id"
        )
        not_in_file = sum(1 for pair in stored if pair not in given)

        design = {
            "imported_from": source,
            "raters": [r.rater.get_username() for r in sorted(rounds.values(), key=lambda r: r.pk)],
            "cells": RoundItem.objects.filter(round__panel=panel_row)
            .values("cell")
            .distinct()
            .count(),
        }
        design_changed = design != panel_row.design and not panel_created
        if design != panel_row.design:
            panel_row.design = design
            panel_row.save(update_fields=["design"])

    return ImportResult(
        study=study,
        panel=panel_row,
        study_created=study_created,
        panel_created=panel_created,
        ratings=len(ratings),
        items=len(items),
        raters=len(users),
        cells_created=cells_created,
        raters_created=raters_created,
        rounds_created=rounds_created,
        queued=queued,
        created=created,
        changed=changed,
        unchanged=unchanged,
        unrated=sum(1 for rating in ratings if rating.label is None),
        not_in_file=not_in_file,
        design_changed=design_changed,
    )
