"""Panels of raters: one blinded design for several raters, their answers as one table, the
majority vote, adjudication of the disputed cells, and the consensus labels that come out.

A panel is one seeded sample of a gold round's cells given to each of its raters as a blinded
round of their own (`annotator.rounds`), each in its own order from a seed derived from the
panel's, optionally with a repeat per rater after a washout. Each rater is blinded from the
others and from the reference exactly as a single blinded rater is (`annotator.access`): while
they rate, the study's scans, cells and labels are closed to them.

Adjudication is a round of its own kind, rated by an overseeing member (coordinator, data
scientist or admin) over the cells a rule picks; the adjudicator sees every panel answer by
design, and their label (with a note) is the consensus where they gave one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from core import params
from core.errors import DomainError, NotFoundError, check_field, create_or_refuse

from . import annotation
from .access import (
    BLINDED_KINDS,
    MANAGING_ROLES,
    OVERSEEING_ROLES,
    blinded_studies,
    overseen_studies,
    require_role,
    roles_in,
)
from .models import Cell, Label, Panel, Round, RoundItem, Study
from .panel_agreement import CANNOT_CLASSIFY
from .rounds import (
    Progress,
    can_log_in,
    check_blinded_rater,
    check_images,
    checked_reference,
    closing_time,
    derived_name,
    draw_sample,
    queue_cells,
    round_seed,
    schedule_repeat,
    unique_name,
)

MIN_RATERS = 2
MAX_RATERS = 50
NOTE_LENGTH = 2000

# The rules that pick the cells an adjudicator settles.
ANY_DISAGREEMENT = "any"
NO_MAJORITY = "no-majority"
BELOW_SHARE = "below-share"
ADJUDICATION_RULES = (ANY_DISAGREEMENT, NO_MAJORITY, BELOW_SHARE)

MAJORITY = "majority"
ADJUDICATED = "adjudicated"
TIE_RULE = (
    "Plurality vote of the panel's classifying answers ('cannot classify' is no vote): the class "
    "with the most votes wins when no other class has as many. A tie for the most votes, or no "
    "classifying answer at all, gives no majority label: the cell is left out of a majority "
    "data set and is what the no-majority adjudication rule picks."
)


@dataclass(frozen=True)
class Vote:
    """The majority vote on one cell: the winning class (None on a tie or with no vote), its
    votes, the classifying answers, and the answers that declined."""

    winner: str | None
    votes: int
    answered: int
    declined: int

    @property
    def share(self) -> float | None:
        """The winner's share of the classifying answers (the top class's on a tie)."""
        return self.votes / self.answered if self.answered else None

    def to_dict(self) -> dict:
        return {
            "winner": self.winner,
            "votes": self.votes,
            "answered": self.answered,
            "declined": self.declined,
            "share": self.share,
        }


def majority_vote(answers: Sequence[str | None]) -> Vote:
    """The plurality vote over one cell's answers (codes; CANNOT_CLASSIFY declines, None is no
    answer), by TIE_RULE."""
    declined = sum(1 for answer in answers if answer == CANNOT_CLASSIFY)
    tally = Counter(answer for answer in answers if answer not in (None, CANNOT_CLASSIFY))
    answered = sum(tally.values())
    if not tally:
        return Vote(None, 0, 0, declined)
    ranked = tally.most_common()
    top = ranked[0][1]
    tied = len(ranked) > 1 and ranked[1][1] == top
    return Vote(None if tied else ranked[0][0], top, answered, declined)


def _rater_seeds(seed: int, count: int) -> list[int]:
    """Independent seeds for each rater's order, derived from the panel's seed (NumPy's
    SeedSequence spawns streams that do not overlap)."""
    children = np.random.SeedSequence(seed).spawn(count)
    return [int(child.generate_state(1, dtype=np.uint64)[0] >> 2) for child in children]


def _panel_name(study: Study, name: str) -> str:
    if name:
        check_field(Panel, "name", name, "Panel name")
        if study.panels.filter(name=name).exists():
            raise DomainError(f"Study {study.name} has a panel named {name!r} already.", "name")
        return name
    number = study.panels.count() + 1
    while study.panels.filter(name=f"panel-{number}").exists():
        number += 1
    return f"panel-{number}"


def _distinct_raters(raters: Sequence) -> list:
    raters = list(raters)
    if not MIN_RATERS <= len(raters) <= MAX_RATERS:
        raise DomainError(
            f"A panel needs {MIN_RATERS} to {MAX_RATERS} raters; {len(raters)} given.", "raters"
        )
    names = [rater.get_username() for rater in raters]
    doubled = sorted(name for name, n in Counter(names).items() if n > 1)
    if doubled:
        raise DomainError(f"Each rater once: {', '.join(doubled)} given twice.", "raters")
    return raters


@transaction.atomic
def create_panel(
    study: Study,
    raters: Sequence,
    user,
    *,
    name: str = "",
    mode: str = "all",
    seed: int | None = None,
    per_class: int | dict[str, int] | None = None,
    fraction: float | None = None,
    reference: Round | None = None,
    repeat_not_before: datetime | None = None,
) -> Panel:
    """One seeded sample of the reference's cells as a blinded round for each rater (each in
    an order of its own), and a repeat per rater not before `repeat_not_before` when given."""
    require_role(user, study, MANAGING_ROLES, "create panels")
    raters = _distinct_raters(raters)
    reference = checked_reference(study, reference)
    seed = round_seed(seed)
    cell_ids = draw_sample(reference, mode=mode, seed=seed, per_class=per_class, fraction=fraction)
    for rater in raters:
        check_blinded_rater(study, rater, reference, cell_ids)
    check_images(study, cell_ids)
    name = _panel_name(study, name)
    panel = create_or_refuse(
        Panel.objects,
        lambda: DomainError(
            f"Study {study.name} got a panel named {name!r} a moment ago; choose another name.",
            "name",
        ),
        study=study,
        name=name,
        reference=reference,
        seed=seed,
        design={
            "mode": mode,
            "per_class": per_class,
            "fraction": fraction,
            "cells": len(cell_ids),
            "raters": [rater.get_username() for rater in raters],
            "repeat_not_before": (repeat_not_before.isoformat() if repeat_not_before else None),
        },
        created_by=user,
    )
    ordered = sorted(cell_ids)
    for rater, rater_seed in zip(raters, _rater_seeds(seed, len(raters)), strict=True):
        round_ = Round.objects.create(
            study=study,
            rater=rater,
            kind=Round.Kind.BLINDED,
            panel=panel,
            name=derived_name(study, panel.name, rater.get_username(), 1),
            reference=reference,
            seed=rater_seed,
            design={"mode": "panel", "panel": panel.name, "cells": len(cell_ids)},
            created_by=user,
        )
        queue_cells(round_, ordered, shuffle_seed=rater_seed)
        if repeat_not_before is not None:
            schedule_repeat(round_, user, not_before=repeat_not_before)
    return panel


def study_panel(study: Study, name: str) -> Panel:
    """The study's panel of that name, or a DomainError listing the panels it has."""
    found = study.panels.filter(name=name).first()
    if found is None:
        names = ", ".join(study.panels.values_list("name", flat=True)) or "none"
        raise NotFoundError(f"No panel {name!r} in study {study.name} (panels: {names}).", "panel")
    return found


def first_rounds(panel: Panel) -> QuerySet[Round]:
    """The panel's first blinded pass, one round per rater, in the order they were made."""
    return panel.rounds.filter(kind=Round.Kind.BLINDED).select_related("rater").order_by("id")


def _answer_code(code: str | None, cannot_classify: bool) -> str:
    return CANNOT_CLASSIFY if cannot_classify else code


def round_answers(round_: Round) -> dict[int, str]:
    """Cell -> the round's answer: a node code, or CANNOT_CLASSIFY."""
    return {
        cell: _answer_code(code, cannot)
        for cell, code, cannot in Label.objects.filter(round=round_).values_list(
            "cell_id", "node__code", "cannot_classify"
        )
    }


@dataclass(frozen=True)
class PanelTable:
    """The panel's answers: one row per cell (by cell id), one column per rater (None where
    that rater has not answered), and the reference's answer per cell."""

    panel: Panel
    rounds: list[Round]
    cells: list[int]
    ratings: list[list[str | None]]
    reference: dict[int, str]

    @property
    def raters(self) -> list[str]:
        return [round_.rater.get_username() for round_ in self.rounds]

    def votes(self, *, with_reference: bool = False) -> dict[int, Vote]:
        """The majority vote of each cell (the reference's answer one more vote if asked)."""
        return {
            cell: majority_vote(row + ([self.reference.get(cell)] if with_reference else []))
            for cell, row in zip(self.cells, self.ratings, strict=True)
        }


def panel_table(panel: Panel) -> PanelTable:
    rounds = list(first_rounds(panel))
    cells = sorted(
        set(RoundItem.objects.filter(round__in=rounds).values_list("cell_id", flat=True))
    )
    answers = [round_answers(round_) for round_ in rounds]
    reference = round_answers(panel.reference) if panel.reference else {}
    return PanelTable(
        panel=panel,
        rounds=rounds,
        cells=cells,
        ratings=[[given.get(cell) for given in answers] for cell in cells],
        reference={cell: reference[cell] for cell in cells if cell in reference},
    )


def _disputed(row: list[str | None], vote: Vote, rule: str, share: float | None) -> bool:
    classes = {answer for answer in row if answer not in (None, CANNOT_CLASSIFY)}
    if rule == ANY_DISAGREEMENT:
        return len(classes) > 1
    if rule == NO_MAJORITY:
        return vote.winner is None
    return vote.winner is None or vote.share < share


def disputed_cells(
    table: PanelTable, rule: str, *, share: float | None = None, with_reference: bool = False
) -> list[int]:
    """The cells the rule picks, by cell id: `any` (two classifying answers differ), `no-majority`
    (no majority label, TIE_RULE), `below-share` (the winner has less than `share` of the
    votes, or there is none). With `with_reference` the reference's answer counts as one more
    answer."""
    if rule not in ADJUDICATION_RULES:
        raise DomainError(f"Unknown rule {rule!r}; use {', '.join(ADJUDICATION_RULES)}.", "rule")
    if rule == BELOW_SHARE:
        if share is None:
            raise DomainError("The below-share rule needs a share in (0, 1], e.g. 0.75.", "share")
        share = params.share(share, "share")
    votes = table.votes(with_reference=with_reference)
    picked = []
    for cell, row in zip(table.cells, table.ratings, strict=True):
        answers = row + ([table.reference.get(cell)] if with_reference else [])
        if _disputed(answers, votes[cell], rule, share):
            picked.append(cell)
    return picked


def _check_adjudicator(study: Study, adjudicator) -> None:
    name = adjudicator.get_username()
    if not can_log_in(adjudicator):
        raise DomainError(f"{name} cannot log in, so could never adjudicate.", "adjudicator")
    if not (roles_in(adjudicator, study) & OVERSEEING_ROLES):
        raise DomainError(
            f"{name} is not a coordinator, data scientist or admin of study {study.name}; an "
            "adjudicator sees every panel answer, so must hold an overseeing role.",
            "adjudicator",
        )
    if Round.objects.filter(study=study, rater=adjudicator, kind__in=BLINDED_KINDS).exists():
        raise DomainError(
            f"{name} rates a blinded round of study {study.name} and may not see the panel's "
            "answers.",
            "adjudicator",
        )


@transaction.atomic
def open_adjudication(
    panel: Panel,
    adjudicator,
    user,
    *,
    rule: str = ANY_DISAGREEMENT,
    share: float | None = None,
    with_reference: bool = False,
    name: str = "",
) -> Round:
    """An adjudication round for `adjudicator` over the cells of the panel that `rule` picks."""
    study = panel.study
    require_role(user, study, MANAGING_ROLES, "open adjudication rounds")
    _check_adjudicator(study, adjudicator)
    if with_reference and panel.reference is None:
        raise DomainError(f"Panel {panel.name} has no reference to compare with.", "reference")
    table = panel_table(panel)
    cells = disputed_cells(table, rule, share=share, with_reference=with_reference)
    if not cells:
        raise DomainError(f"No cell of panel {panel.name} matches the rule {rule!r}.", "rule")
    number = panel.rounds.filter(kind=Round.Kind.ADJUDICATION).count() + 1
    round_ = Round.objects.create(
        study=study,
        rater=adjudicator,
        kind=Round.Kind.ADJUDICATION,
        panel=panel,
        name=unique_name(study, name)
        if name
        else derived_name(study, panel.name, "adjudication", number),
        reference=panel.reference,
        design={
            "rule": rule,
            "share": share,
            "with_reference": with_reference,
            "cells": len(cells),
        },
        created_by=user,
    )
    queue_cells(round_, cells)
    return round_


def adjudication_round(panel: Panel, name: str = "") -> Round | None:
    """The panel's adjudication round of that name, or its latest one; None when it has none."""
    rounds = panel.rounds.filter(kind=Round.Kind.ADJUDICATION).order_by("-id")
    if name:
        found = rounds.filter(name=name).first()
        if found is None:
            raise NotFoundError(f"No adjudication round {name!r} in panel {panel.name}.", "round")
        return found
    return rounds.first()


@dataclass(frozen=True)
class Dispute:
    """What an adjudicator sees of one cell: every panel answer, the reference's, the vote, and
    the consensus recorded so far."""

    position: int
    cell: Cell
    answers: dict[str, str | None]
    reference: str | None
    vote: Vote
    consensus: Label | None


def disputes(round_: Round, user) -> list[Dispute]:
    """The cells of an adjudication round, in its order, for its adjudicator (or a manager of
    the study)."""
    _require_adjudication(round_, user, "see adjudication rounds")
    table = panel_table(round_.panel)
    rows = dict(zip(table.cells, table.ratings, strict=True))
    votes = table.votes(with_reference=bool(round_.design.get("with_reference")))
    labels = {label.cell_id: label for label in round_.labels.select_related("node")}
    items = round_.items.select_related("cell__scan").order_by("position")
    return [
        Dispute(
            position=item.position,
            cell=item.cell,
            answers=dict(zip(table.raters, rows.get(item.cell_id, []), strict=False)),
            reference=table.reference.get(item.cell_id),
            vote=votes.get(item.cell_id, majority_vote([])),
            consensus=labels.get(item.cell_id),
        )
        for item in items
    ]


def _require_adjudication(round_: Round, user, action: str) -> None:
    if round_.kind != Round.Kind.ADJUDICATION:
        raise DomainError(f"Round {round_.name} is not an adjudication round.", "round")
    if round_.rater_id != user.pk:
        require_role(user, round_.study, MANAGING_ROLES, action)


def record_consensus(
    round_: Round,
    cell_id: int,
    user,
    *,
    node: str | None = None,
    cannot_classify: bool = False,
    note: str = "",
    expected_version: int | None = None,
) -> Label:
    """The adjudicator's consensus label (with a note) for one cell of their round."""
    if round_.kind != Round.Kind.ADJUDICATION:
        raise DomainError(f"Round {round_.name} is not an adjudication round.", "round")
    if round_.rater_id != user.pk:
        raise DomainError(f"Round {round_.name} is another adjudicator's.", "round")
    if not isinstance(note, str) or len(note) > NOTE_LENGTH:
        raise DomainError(f"A note is text of at most {NOTE_LENGTH} characters.", "note")
    item = round_.items.select_related("cell").filter(cell_id=cell_id).first()
    if item is None:
        raise NotFoundError(f"Cell {cell_id} is not in adjudication round {round_.name}.", "cell")
    label, _ = annotation.set_label(
        item.cell,
        round_,
        user,
        node=node,
        cannot_classify=cannot_classify,
        note=note,
        expected_version=expected_version,
    )
    return label


@dataclass(frozen=True)
class Consensus:
    """Consensus labels of a panel's cells: cell -> (answer, where it came from), what the
    labels were made by, and how many cells got none."""

    labels: dict[int, tuple[str, str]]
    source: str
    adjudication: Round | None
    unresolved: int
    pending: int

    def summary(self) -> dict:
        provenance = Counter(origin for _, origin in self.labels.values())
        return {
            "source": self.source,
            "adjudication": self.adjudication.name if self.adjudication else None,
            "tie_rule": TIE_RULE,
            "cells": len(self.labels),
            "by_origin": dict(sorted(provenance.items())),
            "unresolved": self.unresolved,
            "pending": self.pending,
        }


def consensus_labels(panel: Panel, source: str, *, adjudication: Round | None = None) -> Consensus:
    """`majority`: each cell's majority label (TIE_RULE; cells with none are `unresolved`).
    `adjudicated`: the adjudication round's label where it gave one, the majority label on
    the cells it does not hold; its cells still unanswered are `pending` and left out."""
    if source not in (MAJORITY, ADJUDICATED):
        raise DomainError(f"Unknown consensus {source!r}; use {MAJORITY} or {ADJUDICATED}.")
    table = panel_table(panel)
    votes = table.votes()
    labels: dict[int, tuple[str, str]] = {
        cell: (vote.winner, MAJORITY) for cell, vote in votes.items() if vote.winner is not None
    }
    pending = 0
    if source == ADJUDICATED:
        adjudication = adjudication or adjudication_round(panel)
        if adjudication is None:
            raise DomainError(f"Panel {panel.name} has no adjudication round yet.", "source")
        settled = round_answers(adjudication)
        held = set(adjudication.items.values_list("cell_id", flat=True))
        for cell in held:
            if cell in settled:
                labels[cell] = (settled[cell], ADJUDICATED)
            else:
                labels.pop(cell, None)
                pending += 1
    unresolved = sum(1 for cell in table.cells if cell not in labels) - pending
    return Consensus(
        labels=dict(sorted(labels.items())),
        source=source,
        adjudication=adjudication if source == ADJUDICATED else None,
        unresolved=unresolved,
        pending=pending,
    )


def adjudicator_candidates(study: Study) -> QuerySet:
    """Users who may adjudicate the study's panels (what `_check_adjudicator` allows):
    coordinators, data scientists and admins of it who can log in and rate no blinded round
    of it."""
    return (
        get_user_model()
        .objects.filter(
            memberships__study=study, memberships__role__in=OVERSEEING_ROLES, is_active=True
        )
        .exclude(password__startswith=UNUSABLE_PASSWORD_PREFIX)
        .exclude(
            pk__in=Round.objects.filter(study=study, kind__in=BLINDED_KINDS).values("rater_id")
        )
        .distinct()
        .order_by("username")
    )


def round_status(state: Progress) -> str:
    """A panel round as its rater finds it: `waiting` (before its washout), `closed` (a later
    round of the rater over the same cells has opened), `finished` or `open`."""
    round_ = state.round
    if round_.not_before and round_.not_before > timezone.now():
        return "waiting"
    if round_.kind != Round.Kind.ADJUDICATION and closing_time(round_) is not None:
        return "closed"
    return "finished" if state.total and state.done >= state.total else "open"


def visible_panels(user) -> QuerySet[Panel]:
    """Panels of the studies the user oversees and rates no blinded round of."""
    return Panel.objects.filter(study__in=overseen_studies(user)).exclude(
        study__in=blinded_studies(user)
    )


def visible_adjudications(user) -> QuerySet[Round]:
    """Adjudication rounds of the panels the user may see."""
    return Round.objects.filter(
        kind=Round.Kind.ADJUDICATION, panel__in=visible_panels(user)
    ).select_related("rater", "study", "panel")
