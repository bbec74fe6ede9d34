"""Clicking cells and labelling them: every change checked, versioned and kept in the history.

Cells and labels carry a version number that rises with every change; a change that names an
older version than the stored one is refused (optimistic concurrency), so two people working on
one scan never overwrite each other silently. Every change writes one history row
(`LabelChange`), whether one label is set here or an importer sets many at once through
`bulk_import_labels`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from django.db import transaction
from django.db.models import F

from core.errors import ConflictError, DomainError, InUseError, create_or_refuse

from .access import ANNOTATING_ROLES, require_role, visible_rounds
from .models import Cell, Label, LabelChange, Round, Scan, Study, TaxonNode

BULK_BATCH = 2000  # rows per INSERT or UPDATE of a bulk import


def gold_round_for(study: Study, rater) -> Round:
    """The rater's gold round of the study, made on first use."""
    round_, _ = Round.objects.get_or_create(
        study=study,
        rater=rater,
        kind=Round.Kind.GOLD,
        defaults={"name": f"Gold round of {rater.get_username()}", "created_by": rater},
    )
    return round_


def gold_round_for_member(study: Study, user) -> Round:
    """The user's gold round, for a member allowed to annotate in the study."""
    require_role(user, study, ANNOTATING_ROLES, "label cells")
    return gold_round_for(study, user)


def _check_position(scan: Scan, x: int, y: int) -> None:
    if not (0 <= x < scan.width):
        raise DomainError(f"x={x} is outside the scan (0 <= x < {scan.width}).", field="x")
    if not (0 <= y < scan.height):
        raise DomainError(f"y={y} is outside the scan (0 <= y < {scan.height}).", field="y")


def stored_state(obj: Cell | Label | None) -> dict | None:
    """The stored state a stale client should reload, in the form the API serves it."""
    if isinstance(obj, Label):
        return {
            "id": obj.pk,
            "cell": obj.cell_id,
            "round": obj.round_id,
            "node": obj.node.code if obj.node else None,
            "cannot_classify": obj.cannot_classify,
            "version": obj.version,
        }
    if isinstance(obj, Cell):
        return {"id": obj.pk, "x": obj.x, "y": obj.y, "version": obj.version}
    return None


def _check_version(obj: Cell | Label, expected: int | None, what: str) -> None:
    if expected is not None and expected != obj.version:
        raise ConflictError(
            f"The {what} was changed by someone else (you sent version {expected}, "
            f"the stored one is version {obj.version}); reload it and try again.",
            current=stored_state(obj),
        )


def create_cell(study: Study, scan: Scan, x: int, y: int, user) -> Cell:
    """Place a cell on a scan of the study."""
    require_role(user, study, ANNOTATING_ROLES, "place cells")
    if not study.scans.filter(pk=scan.pk).exists():
        raise DomainError(f"Scan {scan.pk} is not part of study {study.name}.", field="scan")
    _check_position(scan, x, y)
    return Cell.objects.create(study=study, scan=scan, x=x, y=y, created_by=user)


def _name_rounds(rounds: set[Round], user) -> str:
    """The rounds by name where the user may see them, the others only counted: an examiner
    learns whom to ask without learning whose blinded sample holds the cell."""
    seen = set(
        visible_rounds(user).filter(pk__in=[r.pk for r in rounds]).values_list("pk", flat=True)
    )
    named = sorted(r.name or str(r) for r in rounds if r.pk in seen)
    hidden = len(rounds) - len(named)
    return ", ".join([*named, *([f"{hidden} round(s) of other raters"] if hidden else [])])


def _refuse_if_others_work_on(cell: Cell, user, change: str) -> None:
    """Refuse to move or delete a cell that a blinded round samples or that another round
    labelled: their answers were given to the patch at this position, and would silently
    belong to another one."""
    queued = {item.round for item in cell.round_items.select_related("round")}
    if queued:
        raise InUseError(
            f"Cell {cell.pk} cannot be {change}: blinded rounds show its patch "
            f"({_name_rounds(queued, user)})."
        )
    others = {
        label.round for label in cell.labels.exclude(round__rater=user).select_related("round")
    }
    if others:
        raise InUseError(
            f"Cell {cell.pk} cannot be {change}: other rounds labelled the patch at this position "
            f"({_name_rounds(others, user)})."
        )


@transaction.atomic
def move_cell(cell: Cell, x: int, y: int, user, expected_version: int | None) -> Cell:
    """Move a cell's marker; refused when made on a stale copy."""
    cell = (
        Cell.objects.select_for_update(of=("self",)).select_related("scan", "study").get(pk=cell.pk)
    )
    require_role(user, cell.study, ANNOTATING_ROLES, "move cells")
    if cell.scan is None:
        raise DomainError("A patch-only cell has no position to move.", field="x")
    _check_version(cell, expected_version, "cell")
    _refuse_if_others_work_on(cell, user, "moved")
    _check_position(cell.scan, x, y)
    Cell.objects.filter(pk=cell.pk).update(x=x, y=y, version=F("version") + 1)
    cell.refresh_from_db()
    return cell


@transaction.atomic
def delete_cell(cell: Cell, user, expected_version: int | None) -> None:
    """Delete a cell and the user's own labels of it (recorded in the history).

    Refused while another round holds a label for it: that label belongs to someone else.
    """
    cell = Cell.objects.select_for_update().select_related("study").get(pk=cell.pk)
    require_role(user, cell.study, ANNOTATING_ROLES, "delete cells")
    _check_version(cell, expected_version, "cell")
    _refuse_if_others_work_on(cell, user, "deleted")
    for label in cell.labels.select_related("round"):
        delete_label(label, user, expected_version=None)
    cell.delete()


def _resolve_node(study: Study, node: TaxonNode | str | None, allow_internal: bool) -> TaxonNode:
    if isinstance(node, TaxonNode):
        found = node
    else:
        found = TaxonNode.objects.filter(taxonomy=study.taxonomy_id, code=node).first()
        if found is None:
            raise DomainError(
                f"Unknown taxon code {node!r} in taxonomy {study.taxonomy}.", field="node"
            )
    if found.taxonomy_id != study.taxonomy_id:
        raise DomainError(
            f"Node {found.code} belongs to taxonomy {found.taxonomy}, not the study's "
            f"{study.taxonomy}.",
            field="node",
        )
    if not found.is_leaf and not allow_internal:
        leaves = ", ".join(found.children.values_list("code", flat=True))
        raise DomainError(
            f"{found.code} is not a leaf of the taxonomy; choose one of its children ({leaves}).",
            field="node",
        )
    return found


def _answer(node, cannot_classify: bool) -> tuple[bool, bool]:
    if cannot_classify and node is not None:
        raise DomainError("Give a node or 'cannot classify', not both.", field="node")
    if not cannot_classify and node is None:
        raise DomainError("Give a node code, or set cannot_classify.", field="node")
    return cannot_classify, node is not None


def _check_round(cell: Cell, round_: Round, user) -> None:
    if round_.rater_id != user.pk:
        raise DomainError(f"Round {round_.pk} belongs to another rater.", field="round")
    if cell.study_id != round_.study_id:
        raise DomainError(
            f"Cell {cell.pk} belongs to another study than round {round_.pk}.", field="cell"
        )


@transaction.atomic
def set_label(
    cell: Cell,
    round_: Round,
    user,
    *,
    node: TaxonNode | str | None = None,
    cannot_classify: bool = False,
    seconds_spent: float = 0.0,
    expected_version: int | None = None,
    create_only: bool = False,
    allow_internal: bool = False,
    note: str | None = None,
) -> tuple[Label, bool]:
    """Give a cell its label in a round, or change it; returns (label, created).

    `create_only` refuses to touch an existing label (a client that thought the cell was
    unlabelled holds a stale copy); otherwise `expected_version`, when given, must match.
    `note` (an adjudicator's reasoning) replaces the label's note when given.
    """
    _answer(node, cannot_classify)
    if seconds_spent is None or seconds_spent < 0:
        raise DomainError("seconds_spent cannot be negative.", field="seconds_spent")
    _check_round(cell, round_, user)
    study = round_.study
    taxon = None if cannot_classify else _resolve_node(study, node, allow_internal)
    label = Label.objects.select_for_update().filter(cell=cell, round=round_).first()
    if label is None:
        label = create_or_refuse(
            Label.objects,
            lambda: ConflictError(
                f"Cell {cell.pk} was labelled in round {round_.pk} a moment ago; reload it.",
                current=stored_state(Label.objects.filter(cell=cell, round=round_).first()),
            ),
            cell=cell,
            round=round_,
            node=taxon,
            cannot_classify=cannot_classify,
            rater=user,
            seconds_spent=seconds_spent,
            note=note or "",
        )
        _history_row(label, LabelChange.Action.CREATE, user.pk, seconds_spent=seconds_spent).save()
        return label, True
    if create_only:
        raise ConflictError(
            f"Cell {cell.pk} already has a label in round {round_.pk} (version {label.version}); "
            "send that version to change it.",
            current=stored_state(label),
        )
    _check_version(label, expected_version, "label")
    was = (label.node_id, label.cannot_classify)
    label.node, label.cannot_classify = taxon, cannot_classify
    label.seconds_spent += seconds_spent
    if note is not None:
        label.note = note
    label.version += 1
    label.save()
    _history_row(
        label, LabelChange.Action.UPDATE, user.pk, was=was, seconds_spent=seconds_spent
    ).save()
    return label, False


@transaction.atomic
def delete_label(label: Label, user, expected_version: int | None) -> None:
    """Remove a label; the history keeps what it was."""
    label = Label.objects.select_for_update().select_related("round", "cell").get(pk=label.pk)
    _check_round(label.cell, label.round, user)
    _check_version(label, expected_version, "label")
    was = (label.node_id, label.cannot_classify)
    _history_row(label, LabelChange.Action.DELETE, user.pk, was=was).save()
    label.delete()


def _history_row(
    label: Label,
    action: str,
    changed_by_id: int,
    *,
    was: tuple[int | None, bool] = (None, False),
    seconds_spent: float = 0.0,
) -> LabelChange:
    """The history row of one change of a label, not saved yet (the bulk path saves many at
    once): what the label was (`was`: its node id and cannot-classify) and what it is now; a
    deleted label's row keeps only what it was."""
    deleted = action == LabelChange.Action.DELETE
    return LabelChange(
        label=None if deleted else label,
        cell_id=label.cell_id,
        cell_ref=label.cell_id,
        round_id=label.round_id,
        action=action,
        old_node_id=was[0],
        old_cannot_classify=was[1],
        new_node_id=None if deleted else label.node_id,
        new_cannot_classify=False if deleted else label.cannot_classify,
        new_note="" if deleted else label.note,
        changed_by_id=changed_by_id,
        seconds_spent=seconds_spent,
    )


@dataclass(frozen=True)
class ImportedLabels:
    """What `bulk_import_labels` did: labels created, changed and left as they were."""

    created: int
    changed: int
    unchanged: int


@transaction.atomic
def bulk_import_labels(
    round_: Round, answers: Mapping[int, TaxonNode | None], *, batch_size: int = BULK_BATCH
) -> ImportedLabels:
    """Give many cells their label in a round at once, as answers the round's rater gave
    elsewhere (an imported data set): cell id -> node, or None for "cannot classify".

    A cell without a label in the round gets one; a label with another node is changed (its
    version raised); a label with the same node is left alone. Each creation and change gets
    its history row, made as `set_label` makes it, by the label's rater; labels and history
    are written in bulk. The importer has checked its answers: no role, version or taxonomy
    check is made here.
    """
    stored = {label.cell_id: label for label in round_.labels.all()}
    create, change, history = [], [], []
    for cell, node in answers.items():
        label = stored.get(cell)
        if label is None:
            create.append(
                Label(
                    cell_id=cell,
                    round=round_,
                    node=node,
                    cannot_classify=node is None,
                    rater_id=round_.rater_id,
                )
            )
        elif label.node_id != (node.pk if node else None):
            was = (label.node_id, label.cannot_classify)
            label.node, label.cannot_classify = node, node is None
            label.version += 1
            change.append(label)
            history.append(_history_row(label, LabelChange.Action.UPDATE, label.rater_id, was=was))
    made = Label.objects.bulk_create(create, batch_size=batch_size)
    history.extend(_history_row(label, LabelChange.Action.CREATE, label.rater_id) for label in made)
    Label.objects.bulk_update(change, ["node", "cannot_classify", "version"], batch_size=batch_size)
    LabelChange.objects.bulk_create(history, batch_size=batch_size)
    return ImportedLabels(len(made), len(change), len(answers) - len(made) - len(change))
