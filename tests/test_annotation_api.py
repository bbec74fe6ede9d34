"""Gold-round annotation through the API, the cases tests/test_api.py leaves open: clicks and
labels that cross study or scan boundaries, bodies a client can get wrong, stale copies on
every kind of change, two annotators on one cell, and no trace of a refused request."""

import pytest

from annotator.models import Cell, Label, LabelChange, Membership, Round
from annotator.scans import ingest_scan

from .conftest import client_for
from .factories import StudyFactory


@pytest.fixture
def cell(study, scan, annotator):
    return Cell.objects.create(study=study, scan=scan, x=1500, y=1200, created_by=annotator)


@pytest.fixture
def other_study(aml_taxonomy):
    return StudyFactory(name="leeds", taxonomy=aml_taxonomy)


@pytest.fixture
def other_scan(other_study, synthetic_scan_files, coordinator):
    """A scan of the other study only."""
    path, _ = synthetic_scan_files[1]
    return ingest_scan(path, study=other_study, patient_code="P-009", user=coordinator).scan


@pytest.fixture
def other_cell(other_study, other_scan, coordinator):
    return Cell.objects.create(
        study=other_study, scan=other_scan, x=100, y=100, created_by=coordinator
    )


def snapshot():
    """What a refused request must leave as it found it."""
    return {
        "cells": sorted(Cell.objects.values_list("pk", "x", "y", "version")),
        "labels": sorted(
            Label.objects.values_list("pk", "node__code", "cannot_classify", "version")
        ),
        "changes": LabelChange.objects.count(),
        "rounds": Round.objects.count(),
    }


def label(client, cell, node="NGS", **extra):
    response = client.post(
        "/api/v1/labels/", {"cell": cell.pk, "node": node, **extra}, format="json"
    )
    assert response.status_code == 201, response.json()
    return response.json()


@pytest.mark.parametrize(
    ("payload", "field", "text"),
    [
        ({"x": 3000, "y": 5, "version": 1}, "x", "x=3000 is outside the scan (0 <= x < 3000)"),
        ({"x": 5, "y": 2400, "version": 1}, "y", "y=2400 is outside the scan (0 <= y < 2400)"),
        ({"x": -4, "y": 5, "version": 1}, "x", "greater than or equal to 0"),
        ({"x": 5, "y": 5}, "version", "required"),
    ],
)
def test_a_cell_cannot_be_moved_off_the_image(annotator, cell, payload, field, text):
    before = snapshot()
    response = client_for(annotator).patch(f"/api/v1/cells/{cell.pk}/", payload, format="json")
    assert response.status_code == 400
    assert text in response.json()[field][0]
    assert snapshot() == before


def test_a_label_change_to_an_unknown_or_inner_node_is_refused_and_nothing_changes(annotator, cell):
    client = client_for(annotator)
    created = label(client, cell, "LYT")
    before = snapshot()
    for node, text in (("XYZ", "Unknown taxon code 'XYZ'"), ("MYO", "MYO is not a leaf")):
        response = client.patch(
            f"/api/v1/labels/{created['id']}/", {"node": node, "version": 1}, format="json"
        )
        assert response.status_code == 400
        assert text in response.json()["node"][0]
    assert snapshot() == before
    assert Label.objects.get().node.code == "LYT"


def test_a_refused_first_label_leaves_no_gold_round_behind(annotator, cell):
    client = client_for(annotator)
    response = client.post("/api/v1/labels/", {"cell": cell.pk, "node": "XYZ"}, format="json")
    assert response.status_code == 400 and "XYZ" in response.json()["node"][0]
    assert not Round.objects.exists()
    assert client.get("/api/v1/rounds/").json()["results"] == []


def test_labelling_a_cell_of_another_study_in_ones_gold_round_is_refused(
    study, annotator, cell, other_study, other_cell
):
    Membership.objects.create(study=other_study, user=annotator, role=Membership.Role.ANNOTATOR)
    client = client_for(annotator)
    gold = label(client, cell)["round"]
    before = snapshot()
    response = client.post(
        "/api/v1/labels/", {"cell": other_cell.pk, "round": gold, "node": "NGS"}, format="json"
    )
    assert response.status_code == 400
    assert (
        f"Cell {other_cell.pk} belongs to another study than round {gold}"
        in (response.json()["cell"][0])
    )
    assert snapshot() == before
    # Without a round named, the cell is labelled in the gold round of its own study.
    own = label(client, other_cell)
    assert own["round"] != gold
    assert Round.objects.get(pk=own["round"]).study == other_study


def test_a_member_may_not_label_with_someone_elses_round(annotator, second_annotator, cell):
    theirs = label(client_for(second_annotator), cell, "NGB")
    before = snapshot()
    response = client_for(annotator).post(
        "/api/v1/labels/", {"cell": cell.pk, "round": theirs["round"], "node": "NGS"}, format="json"
    )
    assert response.status_code == 400
    assert "does not exist" in response.json()["round"][0]
    assert snapshot() == before


def test_scans_one_may_not_see_are_4xx_for_cells(annotator, scan, other_study, other_scan):
    client = client_for(annotator)
    listed = client.get(f"/api/v1/cells/?scan={other_scan.pk}")
    assert listed.status_code == 404
    assert f"No scan {other_scan.pk}" in listed.json()["detail"]
    assert client.get("/api/v1/cells/?scan=999999999").status_code == 404
    assert client.get(f"/api/v1/cells/?scan={scan.pk}").status_code == 200
    placed = client.post(
        "/api/v1/cells/", {"study": "munich", "scan": other_scan.pk, "x": 5, "y": 5}, format="json"
    )
    assert placed.status_code == 400
    assert "does not exist" in placed.json()["scan"][0]
    assert not Cell.objects.exists()


def test_a_scan_of_another_study_of_ones_own_is_refused_for_this_study(
    annotator, scan, other_study, other_scan
):
    Membership.objects.create(study=other_study, user=annotator, role=Membership.Role.ANNOTATOR)
    response = client_for(annotator).post(
        "/api/v1/cells/", {"study": "munich", "scan": other_scan.pk, "x": 5, "y": 5}, format="json"
    )
    assert response.status_code == 400
    assert f"Scan {other_scan.pk} is not part of study munich" in response.json()["scan"][0]
    assert not Cell.objects.exists()


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ('{"node": "NGB", "version": ', "JSON parse error"),
        ('{"node": "NGB", "version": 1,}', "JSON parse error"),
        ('{"node": NaN, "version": 1}', "JSON parse error"),
        ("[1, 2]", "Expected a dictionary"),
        ("null", "No data provided"),
    ],
)
def test_malformed_bodies_of_changes_are_400_and_change_nothing(annotator, cell, body, text):
    client = client_for(annotator)
    created = label(client, cell, "LYT")
    before = snapshot()
    for url in (f"/api/v1/labels/{created['id']}/", f"/api/v1/cells/{cell.pk}/"):
        response = client.patch(url, body, content_type="application/json")
        assert response.status_code == 400, url
        assert text in str(response.json())
    assert snapshot() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"cell": 1e400, "node": "NGS"}', "cell"),
        ('{"cell": CELL, "round": 1e400, "node": "NGS"}', "round"),
        ('{"cell": CELL, "node": "NGS", "seconds_spent": 1e400}', "seconds_spent"),
        ('{"cell": "CELL", "node": ["NGS"]}', "node"),
        ('{"cell": true, "node": "NGS"}', "cell"),
    ],
)
def test_numbers_and_types_a_client_gets_wrong_are_400_naming_the_field(
    annotator, cell, body, field
):
    before = snapshot()
    response = client_for(annotator).post(
        "/api/v1/labels/", body.replace("CELL", str(cell.pk)), content_type="application/json"
    )
    assert response.status_code == 400
    assert field in response.json()
    assert snapshot() == before


def test_a_cell_on_a_scan_with_an_overflowing_id_is_400(annotator, scan):
    response = client_for(annotator).post(
        "/api/v1/cells/",
        '{"study": "munich", "scan": 1e400, "x": 5, "y": 5}',
        content_type="application/json",
    )
    assert response.status_code == 400 and "scan" in response.json()
    assert not Cell.objects.exists()


def test_a_stale_delete_of_a_label_is_409_and_keeps_it(annotator, cell):
    client = client_for(annotator)
    created = label(client, cell, "LYT")
    changed = client.patch(
        f"/api/v1/labels/{created['id']}/", {"node": "MON", "version": 1}, format="json"
    )
    assert changed.status_code == 200
    before = snapshot()
    stale = client.delete(f"/api/v1/labels/{created['id']}/", HTTP_IF_MATCH='"1"')
    assert stale.status_code == 409
    current = stale.json()["current"]
    assert current["node"] == "MON" and current["version"] == 2
    assert current["id"] == created["id"] and current["cell"] == cell.pk
    assert snapshot() == before
    assert not LabelChange.objects.filter(action=LabelChange.Action.DELETE).exists()


def test_a_stale_label_change_reports_cannot_classify_as_the_current_answer(annotator, cell):
    client = client_for(annotator)
    created = label(client, cell, "LYT")
    client.patch(
        f"/api/v1/labels/{created['id']}/", {"cannot_classify": True, "version": 1}, format="json"
    )
    before = snapshot()
    stale = client.patch(
        f"/api/v1/labels/{created['id']}/", {"node": "EOS", "version": 1}, format="json"
    )
    assert stale.status_code == 409
    assert stale.json()["current"] == {
        "id": created["id"],
        "cell": cell.pk,
        "round": created["round"],
        "node": None,
        "cannot_classify": True,
        "version": 2,
    }
    assert snapshot() == before


def test_two_annotators_keep_separate_gold_rounds_and_histories(annotator, second_annotator, cell):
    anna, bert = client_for(annotator), client_for(second_annotator)
    mine = label(anna, cell, "NGS", seconds_spent=2)
    theirs = label(bert, cell, "NGB", seconds_spent=3)
    assert mine["round"] != theirs["round"]
    assert Round.objects.get(pk=mine["round"]).rater == annotator
    assert Round.objects.get(pk=theirs["round"]).rater == second_annotator

    # Neither can change, delete or read the other's label.
    before = snapshot()
    for client, other in ((anna, theirs), (bert, mine)):
        url = f"/api/v1/labels/{other['id']}/"
        assert client.patch(url, {"node": "EOS", "version": 1}, format="json").status_code == 404
        assert client.delete(url, HTTP_IF_MATCH='"1"').status_code == 404
        assert client.get(f"{url}history/").status_code == 404
        assert client.get(f"/api/v1/labels/?cell={cell.pk}").json()["count"] == 1
    assert snapshot() == before

    changed = anna.patch(
        f"/api/v1/labels/{mine['id']}/", {"node": "LYT", "version": 1}, format="json"
    )
    assert changed.status_code == 200 and changed.json()["version"] == 2
    anna_history = anna.get(f"/api/v1/labels/{mine['id']}/history/").json()
    assert [(h["changed_by"], h["action"], h["old_node"], h["new_node"]) for h in anna_history] == [
        ("anna", "create", None, "NGS"),
        ("anna", "update", "NGS", "LYT"),
    ]
    assert all(h["round"] == mine["round"] and h["cell"] == cell.pk for h in anna_history)
    bert_history = bert.get(f"/api/v1/labels/{theirs['id']}/history/").json()
    assert [(h["changed_by"], h["old_node"], h["new_node"]) for h in bert_history] == [
        ("bert", None, "NGB")
    ]
    assert Label.objects.get(pk=theirs["id"]).node.code == "NGB"


def test_a_coordinator_is_refused_labelling_and_gets_no_round(coordinator, cell):
    response = client_for(coordinator).post(
        "/api/v1/labels/", {"cell": cell.pk, "node": "NGS"}, format="json"
    )
    assert response.status_code == 403 and "annotator" in response.json()["detail"]
    assert not Round.objects.exists() and not Label.objects.exists()
