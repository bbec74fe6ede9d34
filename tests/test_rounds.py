"""Blinded rounds and repeats: seeded samples, washout, who may rate, progress, and the API."""

from __future__ import annotations

import random
import re
from collections import Counter
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from annotator import annotation, rounds
from annotator.models import Cell, Label, Membership, Round, RoundItem
from core.errors import DomainError, ForbiddenError

from .factories import UserFactory


def _items(round_) -> list[int]:
    return list(round_.items.order_by("position").values_list("cell_id", flat=True))


def _gold_codes(cells) -> dict[int, str]:
    return dict(
        Label.objects.filter(cell__in=cells, round__kind="gold").values_list(
            "cell_id", "node__code"
        )
    )


def test_the_same_seed_gives_the_same_sample_and_order(study, gold_cells, rater, coordinator):
    first = rounds.create_blinded_round(
        study, rater, coordinator, mode="fraction", fraction=0.5, seed=7
    )
    again = rounds.draw_sample(first.reference, mode="fraction", fraction=0.5, seed=7)
    other = rounds.draw_sample(first.reference, mode="fraction", fraction=0.5, seed=8)
    assert _items(first) == again
    assert len(again) == round(0.5 * len(gold_cells))
    assert other != again
    assert first.seed == 7 and first.design["mode"] == "fraction"


def test_per_class_sampling_covers_every_gold_class(study, gold_cells, rater, coordinator):
    round_ = rounds.create_blinded_round(
        study, rater, coordinator, mode="per-class", per_class=1, seed=1
    )
    gold = _gold_codes(gold_cells)
    sampled = Counter(gold[cell] for cell in _items(round_))
    assert set(sampled) == set(gold.values())
    assert all(count == 1 for count in sampled.values())


def test_per_class_numbers_by_code_and_unknown_codes(study, gold_cells, rater, coordinator):
    code = _gold_codes(gold_cells)[gold_cells[0].pk]
    round_ = rounds.create_blinded_round(
        study, rater, coordinator, mode="per-class", per_class={code: 1}, seed=1
    )
    assert [_gold_codes(gold_cells)[c] for c in _items(round_)] == [code]
    with pytest.raises(DomainError, match="No gold cells of class PAT"):
        rounds.create_blinded_round(
            study, rater, coordinator, mode="per-class", per_class={"PAT": 2}, seed=1, name="x"
        )


def test_the_order_is_random_not_the_order_of_clicking(study, gold_cells, rater, coordinator):
    round_ = rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=3)
    order = _items(round_)
    assert sorted(order) == sorted(cell.pk for cell in gold_cells)
    assert order != sorted(order)
    positions = list(round_.items.order_by("position").values_list("position", flat=True))
    assert positions == list(range(1, len(gold_cells) + 1))
    tokens = set(round_.items.values_list("token", flat=True))
    assert len(tokens) == len(gold_cells) and all(len(t) >= 32 for t in tokens)


@pytest.mark.parametrize("role", ["coordinator", "data_scientist", "admin"])
def test_a_rater_who_sees_labels_cannot_rate_blinded(study, gold_cells, coordinator, role):
    user = UserFactory(username=f"seer-{role}")
    Membership.objects.create(study=study, user=user, role=Membership.Role.ANNOTATOR)
    Membership.objects.create(study=study, user=user, role=role)
    with pytest.raises(DomainError, match="sees every label"):
        rounds.create_blinded_round(study, user, coordinator)


def test_the_gold_examiner_cannot_rate_their_own_cells_blinded(
    study, gold_cells, annotator, coordinator
):
    with pytest.raises(DomainError, match="made the reference labels"):
        rounds.create_blinded_round(study, annotator, coordinator)


def test_only_coordinators_create_rounds(study, gold_cells, rater, second_annotator):
    with pytest.raises(ForbiddenError, match="need the role admin or coordinator"):
        rounds.create_blinded_round(study, rater, second_annotator)
    assert not Round.objects.filter(kind="blinded").exists()


def test_a_study_without_gold_labels_says_so(study, scan, rater, coordinator):
    with pytest.raises(DomainError, match="no gold labels"):
        rounds.create_blinded_round(study, rater, coordinator)


def test_a_repeat_has_the_same_cells_in_a_new_order_and_waits(
    study, gold_cells, rater, coordinator
):
    original = rounds.create_blinded_round(study, rater, coordinator, seed=5)
    later = timezone.now() + timedelta(days=330)
    repeat = rounds.schedule_repeat(original, coordinator, not_before=later, seed=6)
    assert repeat.kind == "repeat" and repeat.repeats == original and repeat.rater == rater
    assert sorted(_items(repeat)) == sorted(_items(original))
    assert _items(repeat) != _items(original)
    assert not set(repeat.items.values_list("token", flat=True)) & set(
        original.items.values_list("token", flat=True)
    )
    with pytest.raises(rounds.RoundClosed, match="opens on"):
        rounds.require_open(repeat)
    rounds.require_open(original)  # still open until the repeat opens

    Round.objects.filter(pk=repeat.pk).update(not_before=timezone.now() - timedelta(seconds=1))
    repeat.refresh_from_db()
    original.refresh_from_db()
    rounds.require_open(repeat)
    with pytest.raises(rounds.RoundClosed, match="closed when its repeat opened"):
        rounds.require_open(original)


def test_progress_counts_answered_items(study, gold_cells, rater, coordinator, annotator):
    round_ = rounds.create_blinded_round(study, rater, coordinator, mode="per-class", per_class=1)
    item = round_.items.order_by("position").first()
    annotation.set_label(item.cell, round_, rater, cannot_classify=True)
    states = {s.round.pk: s for s in rounds.progress(Round.objects.filter(study=study))}
    assert (states[round_.pk].done, states[round_.pk].total) == (1, round_.items.count())
    gold = annotation.gold_round_for(study, annotator)
    assert (states[gold.pk].done, states[gold.pk].total) == (len(gold_cells), len(gold_cells))


def test_round_api_creates_and_repeats(api_as, study, gold_cells, rater, coordinator):
    client = api_as(coordinator)
    response = client.post(
        "/api/v1/rounds/",
        {"study": "munich", "rater": "rita", "mode": "per-class", "per_class": 2, "seed": 11},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["kind"] == "blinded" and body["rater"] == "rita" and body["seed"] == 11
    assert body["done"] == 0 and body["total"] == RoundItem.objects.filter(round=body["id"]).count()
    assert body["reference"] == annotation.gold_round_for(study, gold_cells[0].created_by).name

    when = (timezone.now() + timedelta(days=30)).isoformat()
    repeat = client.post(
        f"/api/v1/rounds/{body['id']}/repeat/", {"not_before": when}, format="json"
    )
    assert repeat.status_code == 201, repeat.json()
    assert repeat.json()["repeats"] == body["name"] and repeat.json()["kind"] == "repeat"

    listed = client.get("/api/v1/rounds/?study=munich").json()["results"]
    assert {r["name"] for r in listed} >= {body["name"], repeat.json()["name"]}


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"rater": "nobody"}, "rater", "does not exist"),
        ({"mode": "most"}, "mode", "not a valid choice"),
        ({"mode": "fraction"}, "fraction", "(0, 1]"),
        ({"mode": "per-class"}, "detail", "per_class"),
        ({"mode": "per-class", "per_class": {"NGS": -1}}, "per_class", "at least 1"),
        ({"reference": "no-such-round"}, "reference", "No gold round named"),
        ({"rater": "anna"}, "rater", "made the reference labels"),
    ],
)
def test_round_api_rejects_bad_designs(
    api_as, study, gold_cells, rater, coordinator, payload, field, message
):
    body = {"study": "munich", "rater": "rita", **payload}
    response = api_as(coordinator).post("/api/v1/rounds/", body, format="json")
    assert response.status_code == 400, response.json()
    assert message in str(response.json()[field])
    assert not Round.objects.filter(kind="blinded").exists()


def test_round_api_refuses_annotators_and_bad_dates(api_as, study, gold_cells, rater, coordinator):
    refused = api_as(rater).post(
        "/api/v1/rounds/", {"study": "munich", "rater": "rita"}, format="json"
    )
    assert refused.status_code == 403
    made = rounds.create_blinded_round(study, rater, coordinator)
    bad = api_as(coordinator).post(
        f"/api/v1/rounds/{made.pk}/repeat/", {"not_before": "next spring"}, format="json"
    )
    assert bad.status_code == 400 and "not_before" in bad.json()


def test_a_cell_in_a_blinded_round_cannot_be_deleted(
    study, gold_cells, rater, coordinator, annotator
):
    round_ = rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1)
    cell = round_.items.first().cell
    with pytest.raises(DomainError, match="blinded rounds show its patch"):
        annotation.delete_cell(cell, annotator, expected_version=None)
    assert round_.items.count() == len(gold_cells)


def _patch_cells(study, count: int) -> list[int]:
    return [Cell.objects.create(study=study, external_id=f"p/{n}.tiff").pk for n in range(count)]


def test_queued_cells_follow_the_last_item_and_a_queued_cell_keeps_its_place(study, rater):
    round_ = Round.objects.create(study=study, rater=rater, kind=Round.Kind.BLINDED, name="q")
    first, second, third, fourth, fifth = _patch_cells(study, 5)
    assert rounds.queue_cells(round_, [third, first]) == 2
    assert _items(round_) == [third, first]
    assert rounds.queue_cells(round_, [first, second, fourth, fifth], shuffle_seed=7) == 3
    shuffled = [second, fourth, fifth]
    random.Random(7).shuffle(shuffled)
    assert _items(round_) == [third, first, *shuffled]
    assert list(round_.items.values_list("position", flat=True)) == [1, 2, 3, 4, 5]
    assert len(set(round_.items.values_list("token", flat=True))) == 5


def test_progress_of_any_rounds_is_the_annotated_rounds_progress(study, annotator, rater):
    cells = _patch_cells(study, 4)
    gold = annotation.gold_round_for(study, annotator)
    for cell in cells[:2]:
        annotation.set_label(Cell.objects.get(pk=cell), gold, annotator, node="LYT")
    blinded = Round.objects.create(study=study, rater=rater, kind=Round.Kind.BLINDED, name="b")
    rounds.queue_cells(blinded, cells[1:])
    annotation.set_label(Cell.objects.get(pk=cells[3]), blinded, rater, cannot_classify=True)
    empty = Round.objects.create(study=study, rater=rater, kind=Round.Kind.BLINDED, name="e")
    expected = {gold.pk: (2, 4), blinded.pk: (1, 3), empty.pk: (0, 0)}
    annotated = rounds.with_progress(Round.objects.filter(study=study))
    assert {r.pk: (r.done, r.total) for r in annotated} == expected
    given = [empty, blinded, gold]
    states = rounds.progress(given)
    assert [state.round for state in states] == given
    assert [(state.done, state.total) for state in states] == [expected[r.pk] for r in given]
    assert states[1].fraction == pytest.approx(1 / 3) and states[0].fraction == 0.0


@pytest.mark.parametrize(
    ("why", "make_unable"),
    [
        ("no usable password", lambda user: user.set_unusable_password()),
        ("an inactive account", lambda user: setattr(user, "is_active", False)),
    ],
)
def test_a_user_who_cannot_log_in_is_neither_offered_nor_taken_as_a_rater(
    api_as, study, gold_cells, rater, coordinator, why, make_unable
):
    """The examiner of imported or demo gold labels cannot log in: a blinded round given to
    them could never be answered."""
    examiner = rounds.examiner(study, "examiner", "Gold examiner")
    late = UserFactory(username="lea")
    Membership.objects.create(study=study, user=late, role=Membership.Role.ANNOTATOR)
    make_unable(late)
    late.save()
    assert [u.username for u in rounds.rater_candidates(study)] == ["anna", "rita"]

    page = Client()
    page.force_login(coordinator)
    form = page.get("/studies/munich/rounds/").content.decode()
    offered = re.findall(
        r'<option value="([^"]+)"', form.split('name="rater"')[1].split("</select>")[0]
    )
    assert offered == ["anna", "rita"]

    for user in (examiner, late):
        response = api_as(coordinator).post(
            "/api/v1/rounds/", {"study": "munich", "rater": user.username}, format="json"
        )
        assert response.status_code == 400
        expected = why if user is late else "an inactive account and no usable password"
        assert f"{user.username} cannot log in ({expected})" in response.json()["rater"][0]
    assert not Round.objects.filter(kind=Round.Kind.BLINDED).exists()
