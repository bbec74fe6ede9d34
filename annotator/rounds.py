"""Agreement rounds: blinded re-annotation rounds, their time-separated repeats, and progress.

A blinded round is a sample of a study's cells, drawn from a gold round with a seed, given to
one rater in a random order. The rater reaches its cells only through `RoundItem` tokens (see
`annotator.blinding`). A repeat is the same rater over the same cells in a new order, closed to
the rater before its not-before date; once it opens, the round it repeats closes to the rater,
so their earlier answers cannot be looked up while answering again.
"""

from __future__ import annotations

import random
import secrets
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.db import transaction
from django.db.models import (
    Case,
    Count,
    IntegerField,
    Max,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from core import params
from core.errors import DomainError, ForbiddenError, check_field

from .access import BLINDED_KINDS, MANAGING_ROLES, OVERSEEING_ROLES, Role, require_role, roles_in
from .models import Cell, Label, Membership, Round, RoundItem, Study

SAMPLING_MODES = ("all", "per-class", "fraction")
ITEM_BATCH = 2000  # queue items per INSERT


class RoundClosed(ForbiddenError):
    """The rater may not open the round now (before its washout ends, or after it closed)."""


@dataclass(frozen=True)
class Progress:
    round: Round
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def examiner(study: Study, username: str, first_name: str):
    """A rater of labels made elsewhere (an imported data set, the demo's gold round): a user
    who cannot log in, annotator of the study."""
    user, created = get_user_model().objects.get_or_create(
        username=username[:150], defaults={"first_name": first_name, "is_active": False}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    Membership.objects.get_or_create(study=study, user=user, role=Role.ANNOTATOR)
    return user


def new_token() -> str:
    """An opaque item token: 192 random bits, URL-safe, unrelated to the cell."""
    return secrets.token_urlsafe(24)


def largest_gold_round(study: Study) -> Round | None:
    """The study's gold round with the most labels (the earliest on a tie), or None."""
    return (
        study.rounds.filter(kind=Round.Kind.GOLD)
        .annotate(labelled=Count("labels"))
        .order_by("-labelled", "id")
        .first()
    )


def default_reference(study: Study) -> Round:
    """The usual reference of a blinded round: the study's largest gold round."""
    gold = largest_gold_round(study)
    if gold is None or gold.labelled == 0:
        raise DomainError(
            f"Study {study.name} has no gold labels to draw a blinded round from.",
            field="reference",
        )
    return gold


def can_log_in(user) -> bool:
    """Whether the user can sign in to answer a queue: active, with a usable password (an
    `examiner` of imported or demo labels has neither)."""
    return user.is_active and user.has_usable_password()


def rater_candidates(study: Study) -> QuerySet:
    """The users a coordinator may give a blinded round of the study: annotators of it who can
    log in and hold no role that sees every label (the rules `_check_rater` enforces)."""
    seeing = Membership.objects.filter(study=study, role__in=OVERSEEING_ROLES)
    return (
        get_user_model()
        .objects.filter(memberships__study=study, memberships__role=Role.ANNOTATOR, is_active=True)
        .exclude(password__startswith=UNUSABLE_PASSWORD_PREFIX)
        .exclude(is_superuser=True)
        .exclude(pk__in=seeing.values("user_id"))
        .distinct()
        .order_by("username")
    )


def _check_rater(study: Study, rater) -> None:
    roles = roles_in(rater, study)
    if not roles:
        raise DomainError(f"{rater.get_username()} is not a member of study {study.name}.", "rater")
    if not can_log_in(rater):
        why = " and ".join(
            reason
            for reason, holds in (
                ("an inactive account", not rater.is_active),
                ("no usable password", not rater.has_usable_password()),
            )
            if holds
        )
        raise DomainError(
            f"{rater.get_username()} cannot log in ({why}), so could never answer a blinded "
            "round; choose a rater who can log in.",
            field="rater",
        )
    seeing = sorted(roles & OVERSEEING_ROLES)
    if seeing or rater.is_superuser:
        held = ", ".join(seeing) or "superuser"
        raise DomainError(
            f"{rater.get_username()} holds a role that sees every label of study {study.name} "
            f"({held}); a blinded rater must be an annotator only.",
            field="rater",
        )
    if Role.ANNOTATOR not in roles:
        raise DomainError(f"{rater.get_username()} is not an annotator of {study.name}.", "rater")


def draw_sample(
    reference: Round,
    *,
    mode: str,
    seed: int,
    per_class: int | dict[str, int] | None = None,
    fraction: float | None = None,
) -> list[int]:
    """Cell ids of the sample, in the rater's random order; the same seed gives the same list.

    `all`: every cell the reference labelled; `per-class`: up to N cells of each reference class
    (a number for every class, or a number per class code), so rare classes are covered;
    `fraction`: a random share of the labelled cells (at least one).
    """
    if mode not in SAMPLING_MODES:
        raise DomainError(f"Unknown sampling mode {mode!r}; use {', '.join(SAMPLING_MODES)}.")
    rows = sorted(
        reference.labels.values_list("cell_id", "node__code", "cannot_classify"),
        key=lambda row: row[0],
    )
    rng = random.Random(seed)
    if mode == "all":
        chosen = [cell for cell, _, _ in rows]
    elif mode == "fraction":
        if fraction is None or not 0 < fraction <= 1:
            raise DomainError("fraction must be a number in (0, 1].", field="fraction")
        chosen = rng.sample([cell for cell, _, _ in rows], max(1, round(fraction * len(rows))))
    else:
        chosen = _per_class(rows, per_class, rng)
    chosen.sort()
    rng.shuffle(chosen)
    if not chosen:
        raise DomainError("The sample is empty: the reference round has no matching cells.")
    return chosen


def _per_class(rows, per_class, rng: random.Random) -> list[int]:
    by_class: dict[str, list[int]] = defaultdict(list)
    for cell, code, cannot in rows:
        if not cannot:
            by_class[code].append(cell)
    if isinstance(per_class, int) and not isinstance(per_class, bool):
        wanted = dict.fromkeys(by_class, per_class)
    elif isinstance(per_class, dict):
        unknown = sorted(set(per_class) - set(by_class))
        if unknown:
            raise DomainError(
                f"No gold cells of class {', '.join(unknown)} in the reference round.",
                field="per_class",
            )
        wanted = per_class
    else:
        raise DomainError("per-class sampling needs per_class: a number, or {code: number}.")
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in wanted.values()):
        raise DomainError("Numbers per class must be whole numbers of at least 1.", "per_class")
    chosen = []
    for code in sorted(wanted):
        cells = by_class[code]
        chosen.extend(rng.sample(cells, min(wanted[code], len(cells))))
    return chosen


ROUND_NAME_LENGTH = Round._meta.get_field("name").max_length


def unique_name(study: Study, wanted: str) -> str:
    check_field(Round, "name", wanted, "Round name")
    if not study.rounds.filter(name=wanted).exists():
        return wanted
    raise DomainError(f"Study {study.name} has a round named {wanted!r} already.", field="name")


def derived_name(study: Study, stem: str, tail: str, number: int) -> str:
    """The first free name `STEM-TAIL-N` (N from `number`) of the study's rounds, with the
    stem shortened so that the whole name fits the column however long the stem is."""
    taken = set(study.rounds.values_list("name", flat=True))
    while True:
        suffix = f"-{tail}-{number}"
        name = stem[: ROUND_NAME_LENGTH - len(suffix)] + suffix
        if name not in taken:
            return name
        number += 1


def queue_cells(round_: Round, cell_ids: Iterable[int], *, shuffle_seed: int | None = None) -> int:
    """Queue cells in a round after its last item, each under a fresh token; returns how many.

    The cells keep the order given, or are shuffled with `shuffle_seed` (the same seed, the
    same order); cells the round queues already keep their place. The one way `RoundItem`s
    are made: blinded rounds, repeats and imported rounds alike.
    """
    queued = set(round_.items.values_list("cell_id", flat=True))
    cells = [cell for cell in cell_ids if cell not in queued]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(cells)
    last = round_.items.aggregate(last=Max("position"))["last"] or 0
    RoundItem.objects.bulk_create(
        (
            RoundItem(round=round_, cell_id=cell, position=position, token=new_token())
            for position, cell in enumerate(cells, start=last + 1)
        ),
        batch_size=ITEM_BATCH,
    )
    return len(cells)


def check_images(study: Study, cell_ids: list[int]) -> None:
    missing = Cell.objects.filter(pk__in=cell_ids, scan__isnull=True, patch="").count()
    if missing:
        raise DomainError(
            f"{missing} of the sampled cells have no image (their labels were imported without "
            "the patch files); import the images first.",
            field="reference",
        )


# A round's seed orders its rater's queue with Python's random (any size of seed will do); the
# bound keeps it in the column (a 64-bit integer).
ROUND_SEED_MAX = 2**62


def round_seed(seed) -> int:
    """The seed given (checked, whoever passes it: the page's form, the API, a command), or a
    fresh random one."""
    if seed is None:
        return secrets.randbits(31)
    return params.whole_number(seed, "seed", 0, ROUND_SEED_MAX)


def check_blinded_rater(study: Study, rater, reference: Round, cell_ids: list[int]) -> None:
    """Refuse a rater who may not rate these cells of the reference blinded: not an annotator
    who can log in, one who sees every label, the reference's own rater, or one who labelled
    any of the cells with the scan in view."""
    _check_rater(study, rater)
    if reference.rater_id == rater.pk:
        raise DomainError(
            f"{rater.get_username()} made the reference labels, with the whole scan in view; "
            "choose another rater.",
            field="rater",
        )
    seen = Label.objects.filter(
        cell_id__in=cell_ids, round__rater=rater, round__kind=Round.Kind.GOLD
    ).count()
    if seen:
        raise DomainError(
            f"{rater.get_username()} labelled {seen} of the sampled cells in a gold round, with "
            "the scan in view; choose another rater.",
            field="rater",
        )


def checked_reference(study: Study, reference: Round | None) -> Round:
    """The gold round a blinded sample is drawn from: the one given (of this study) or the
    study's largest."""
    reference = reference or default_reference(study)
    if reference.study_id != study.pk or reference.kind != Round.Kind.GOLD:
        raise DomainError("The reference must be a gold round of the same study.", "reference")
    return reference


@transaction.atomic
def create_blinded_round(
    study: Study,
    rater,
    user,
    *,
    mode: str = "all",
    seed: int | None = None,
    per_class: int | dict[str, int] | None = None,
    fraction: float | None = None,
    reference: Round | None = None,
    name: str = "",
) -> Round:
    """A blinded round for `rater` over a seeded sample of the reference round's cells."""
    require_role(user, study, MANAGING_ROLES, "create blinded rounds")
    _check_rater(study, rater)
    reference = checked_reference(study, reference)
    seed = round_seed(seed)
    cell_ids = draw_sample(reference, mode=mode, seed=seed, per_class=per_class, fraction=fraction)
    check_blinded_rater(study, rater, reference, cell_ids)
    check_images(study, cell_ids)
    number = study.rounds.filter(rater=rater, kind=Round.Kind.BLINDED).count() + 1
    round_ = Round.objects.create(
        study=study,
        rater=rater,
        kind=Round.Kind.BLINDED,
        name=unique_name(study, name)
        if name
        else derived_name(study, "blinded", rater.get_username(), number),
        reference=reference,
        seed=seed,
        design={"mode": mode, "per_class": per_class, "fraction": fraction, "cells": len(cell_ids)},
        created_by=user,
    )
    queue_cells(round_, cell_ids)
    return round_


@transaction.atomic
def schedule_repeat(
    original: Round, user, *, not_before: datetime, seed: int | None = None, name: str = ""
) -> Round:
    """The same rater over the same cells in a new random order, not before `not_before`."""
    require_role(user, original.study, MANAGING_ROLES, "schedule repeat rounds")
    if original.kind not in BLINDED_KINDS:
        raise DomainError("Only a blinded round (or a repeat) can be repeated.", field="round")
    if timezone.is_naive(not_before):
        raise DomainError("not_before needs a time zone.", field="not_before")
    cell_ids = sorted(original.items.values_list("cell_id", flat=True))
    if not cell_ids:
        raise DomainError(f"Round {original.name} has no items to repeat.", field="round")
    seed = round_seed(seed)
    number = original.repeated_by.count() + 1
    round_ = Round.objects.create(
        study=original.study,
        rater=original.rater,
        kind=Round.Kind.REPEAT,
        name=unique_name(original.study, name)
        if name
        else derived_name(original.study, original.name, "repeat", number),
        not_before=not_before,
        repeats=original,
        reference=original.reference,
        panel=original.panel,
        seed=seed,
        design={"mode": "repeat", "of": original.name, "cells": len(cell_ids)},
        created_by=user,
    )
    queue_cells(round_, cell_ids, shuffle_seed=seed)
    return round_


def closing_time(round_: Round) -> datetime | None:
    """When the round closed to its rater: the opening of the first later round of the same
    rater over any of the same cells (a repeat of it, a second repeat of the same original,
    or another blinded round) that has opened. Otherwise the rater could look up an earlier
    answer while answering again."""
    now = timezone.now()
    later = (
        Round.objects.filter(
            rater_id=round_.rater_id,
            kind__in=BLINDED_KINDS,
            pk__gt=round_.pk,
            items__cell__in=RoundItem.objects.filter(round=round_).values("cell"),
        )
        .distinct()
        .only("not_before", "created_at")
    )
    opened = [
        other.not_before or other.created_at
        for other in later
        if (other.not_before or other.created_at) <= now
    ]
    return min(opened) if opened else None


def require_open(round_: Round) -> None:
    """Raise RoundClosed unless the rater may work on the round now."""
    now = timezone.now()
    if round_.not_before and now < round_.not_before:
        raise RoundClosed(f"This round opens on {round_.not_before:%Y-%m-%d %H:%M} UTC (washout).")
    closed = closing_time(round_)
    if closed is not None:
        raise RoundClosed(
            "This round was closed when its repeat opened; its answers can no longer be seen "
            "or changed."
        )


def is_open(round_: Round) -> bool:
    try:
        require_open(round_)
    except RoundClosed:
        return False
    return True


def _count(rows, field: str, outer: str = "pk"):
    """How many `rows` have `field` equal to the outer round's `outer` (0 when none), as a
    subquery."""
    counted = (
        rows.order_by().filter(**{field: OuterRef(outer)}).values(field).annotate(n=Count("id"))
    )
    return Coalesce(Subquery(counted.values("n")[:1], output_field=IntegerField()), Value(0))


def with_progress(rounds: QuerySet[Round]) -> QuerySet[Round]:
    """The rounds annotated with their progress, counted in the database: `done`, the round's
    labels, and `total`, the items of a blinded round or a repeat, or for a gold round the
    study's cells. The one rule of round progress; lists of rounds of any length read it."""
    return rounds.annotate(
        done=_count(Label.objects, "round"),
        total=Case(
            When(kind=Round.Kind.GOLD, then=_count(Cell.objects, "study", outer="study")),
            default=_count(RoundItem.objects, "round"),
        ),
    )


def progress(rounds) -> list[Progress]:
    """Done / total of each round (see `with_progress`), in the order given."""
    rounds = list(rounds)
    counted = {
        pk: (done, total)
        for pk, done, total in with_progress(
            Round.objects.filter(pk__in=[r.pk for r in rounds])
        ).values_list("pk", "done", "total")
    }
    return [Progress(r, *counted.get(r.pk, (0, 0))) for r in rounds]
