"""Panels of raters: one design for several raters, the majority vote and its tie rule,
adjudication of the disputed cells, and consensus labels."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotator import panels
from annotator.models import Membership, Panel, Round
from annotator.panel_agreement import CANNOT_CLASSIFY
from core.errors import DomainError, ForbiddenError, create_or_refuse

from .factories import UserFactory


def _order(round_) -> list[int]:
    return list(round_.items.order_by("position").values_list("cell_id", flat=True))


def test_a_panel_gives_every_rater_the_same_cells_in_an_order_of_their_own(
    study, curated, coordinator, panel_raters
):
    panel = panels.create_panel(
        study, panel_raters, coordinator, mode="per-class", per_class=3, seed=4
    )
    rounds = list(panels.first_rounds(panel))
    assert [r.rater for r in rounds] == panel_raters
    assert all(r.kind == Round.Kind.BLINDED and r.reference == curated for r in rounds)
    orders = [_order(r) for r in rounds]
    assert len({tuple(sorted(order)) for order in orders}) == 1
    assert len(orders[0]) == 3 * 8  # three of each of the eight gold classes
    assert len({tuple(order) for order in orders}) == 3
    assert len({r.seed for r in rounds}) == 3
    again = panels.create_panel(
        study, panel_raters, coordinator, mode="per-class", per_class=3, seed=4, name="again"
    )
    assert [_order(r) for r in panels.first_rounds(again)] == orders
    assert panel.name == "panel-1" and panel.design["raters"] == ["pia", "quinn", "ruth"]


def test_panel_repeats_wait_for_the_washout(study, curated, coordinator, panel_raters):
    later = timezone.now() + timedelta(days=14)
    panel = panels.create_panel(
        study, panel_raters, coordinator, fraction=0.1, mode="fraction", repeat_not_before=later
    )
    repeats = panel.rounds.filter(kind=Round.Kind.REPEAT).order_by("id")
    assert [r.rater for r in repeats] == panel_raters
    assert all(r.not_before == later and r.repeats.panel == panel for r in repeats)
    for repeat in repeats:
        assert sorted(_order(repeat)) == sorted(_order(repeat.repeats))
        assert _order(repeat) != _order(repeat.repeats)


def test_who_may_make_and_be_in_a_panel(study, curated, coordinator, panel_raters, annotator):
    with pytest.raises(ForbiddenError, match="create panels"):
        panels.create_panel(study, panel_raters, panel_raters[0])
    with pytest.raises(DomainError, match="2 to 50 raters"):
        panels.create_panel(study, panel_raters[:1], coordinator)
    with pytest.raises(DomainError, match="pia given twice"):
        panels.create_panel(study, [panel_raters[0], panel_raters[0]], coordinator)
    with pytest.raises(DomainError, match="made the reference labels"):
        panels.create_panel(study, [panel_raters[0], annotator], coordinator)
    with pytest.raises(DomainError, match="sees every label"):
        panels.create_panel(study, [panel_raters[0], coordinator], coordinator)
    assert not study.panels.exists() and not study.rounds.exclude(kind="gold").exists()


def test_a_panel_name_taken_a_moment_ago_is_refused_and_the_transaction_goes_on(study):
    """The savepoint of `create_or_refuse`: the unique clash becomes the refusal, and what the
    caller's transaction did before and does after still stands."""
    Panel.objects.create(study=study, name="twin")
    with pytest.raises(DomainError, match="twin is taken") as refused:
        create_or_refuse(
            Panel.objects, lambda: DomainError("twin is taken", "name"), study=study, name="twin"
        )
    assert refused.value.field == "name"
    other = create_or_refuse(
        Panel.objects, lambda: DomainError("never raised"), study=study, name="other"
    )
    assert sorted(study.panels.values_list("name", flat=True)) == ["other", "twin"]
    assert other.pk is not None


def test_the_majority_vote_and_its_tie_rule():
    vote = panels.majority_vote(["A", "A", "B", CANNOT_CLASSIFY, None])
    assert (vote.winner, vote.votes, vote.answered, vote.declined) == ("A", 2, 3, 1)
    assert vote.share == pytest.approx(2 / 3)
    assert panels.majority_vote(["A", "B"]).winner is None
    assert panels.majority_vote(["A", "B", "B", "A", "C"]).winner is None
    assert panels.majority_vote([CANNOT_CLASSIFY, None]).winner is None
    assert panels.majority_vote(["B", CANNOT_CLASSIFY]).winner == "B"


def test_the_rules_pick_the_disputed_cells(answered_panel):
    table = panels.panel_table(answered_panel)
    assert table.raters == ["pia", "quinn", "ruth"]
    first, second, last = table.cells[0], table.cells[1], table.cells[-1]
    assert set(panels.disputed_cells(table, "any")) == {first, second}
    # Three different answers on the first cell: no majority; two against one on the second.
    assert panels.disputed_cells(table, "no-majority") == [first]
    assert set(panels.disputed_cells(table, "below-share", share=0.9)) == {first, second}
    assert last not in panels.disputed_cells(table, "any")  # one declined, the others agree
    with pytest.raises(DomainError, match="needs a share"):
        panels.disputed_cells(table, "below-share")
    with pytest.raises(DomainError, match="Unknown rule"):
        panels.disputed_cells(table, "loudest")


def test_adjudication_settles_the_disputes_into_consensus_labels(
    study, answered_panel, coordinator, curated
):
    table = panels.panel_table(answered_panel)
    first, second = table.cells[:2]
    adjudication = panels.open_adjudication(answered_panel, coordinator, coordinator, rule="any")
    assert adjudication.kind == Round.Kind.ADJUDICATION and adjudication.panel == answered_panel
    shown = panels.disputes(adjudication, coordinator)
    assert {d.cell.pk for d in shown} == {first, second}
    by_cell = {d.cell.pk: d for d in shown}
    gold = panels.round_answers(curated)
    assert by_cell[second].answers["pia"] == gold[second]
    assert by_cell[second].vote.winner == gold[second] and by_cell[first].vote.winner is None

    majority = panels.consensus_labels(answered_panel, panels.MAJORITY)
    assert first not in majority.labels and majority.unresolved == 1
    assert majority.labels[second] == (gold[second], "majority")

    label = panels.record_consensus(
        adjudication, first, coordinator, node="PMOA", note="granules seen at higher zoom"
    )
    assert label.note == "granules seen at higher zoom"
    assert label.history.get().new_note == "granules seen at higher zoom"
    adjudicated = panels.consensus_labels(answered_panel, panels.ADJUDICATED)
    assert adjudicated.labels[first] == ("PMOA", "adjudicated")
    assert second not in adjudicated.labels and adjudicated.pending == 1
    assert adjudicated.summary()["by_origin"]["adjudicated"] == 1


def test_who_may_adjudicate(study, answered_panel, coordinator, panel_raters, data_scientist):
    with pytest.raises(DomainError, match="overseeing role"):
        panels.open_adjudication(answered_panel, panel_raters[0], coordinator)
    with pytest.raises(ForbiddenError, match="open adjudication"):
        panels.open_adjudication(answered_panel, data_scientist, data_scientist)
    blinded_coordinator = panel_raters[1]
    Membership.objects.create(study=study, user=blinded_coordinator, role="coordinator")
    with pytest.raises(DomainError, match="rates a blinded round"):
        panels.open_adjudication(answered_panel, blinded_coordinator, coordinator)
    adjudication = panels.open_adjudication(answered_panel, data_scientist, coordinator)
    cell = adjudication.items.first().cell_id
    with pytest.raises(DomainError, match="another adjudicator"):
        panels.record_consensus(adjudication, cell, coordinator, node="NGS")
    with pytest.raises(DomainError, match="at most 2000"):
        panels.record_consensus(adjudication, cell, data_scientist, node="NGS", note="x" * 2001)
    outsider = UserFactory(username="ozzy")
    with pytest.raises(ForbiddenError):
        panels.disputes(adjudication, outsider)


def test_an_adjudication_takes_labels_only_through_its_own_endpoint(
    answered_panel, coordinator, api_as
):
    adjudication = panels.open_adjudication(answered_panel, coordinator, coordinator)
    cell = adjudication.items.first().cell_id
    answer = api_as(coordinator).post(
        "/api/v1/labels/", {"cell": cell, "round": adjudication.pk, "node": "NGS"}, format="json"
    )
    assert answer.status_code == 400 and "round" in answer.json()
    assert not adjudication.labels.exists()
