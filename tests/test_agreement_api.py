"""The agreement report through the API: default pairs, JSON and CSV, permissions, bad input,
and the patient-clustered bootstrap where patients are known."""

from __future__ import annotations

import csv
import io

import pytest
from sklearn.metrics import cohen_kappa_score

from annotator import annotation, rounds
from annotator.models import Label
from annotator.scans import ingest_scan

# The rater's answer for each gold class: right for most, systematically wrong for two.
CONFUSED = {"MYON": "MYOA", "PMB": "PMON"}


@pytest.fixture
def rated(study, gold_cells, rater, coordinator):
    """Rita's blinded round over every gold cell, answered (one cell: cannot classify)."""
    round_ = rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=4, name="r1")
    gold = dict(Label.objects.filter(round__kind="gold").values_list("cell_id", "node__code"))
    for index, item in enumerate(round_.items.order_by("position")):
        if index == 0:
            annotation.set_label(item.cell, round_, rater, cannot_classify=True)
            continue
        code = gold[item.cell_id]
        annotation.set_label(item.cell, round_, rater, node=CONFUSED.get(code, code))
    return round_


def test_the_report_api_matches_scikit_learn(api_as, study, rated, coordinator):
    response = api_as(coordinator).get(f"/api/v1/studies/{study.pk}/agreement/")
    assert response.status_code == 200, response.json()
    (comparison,) = response.json()["comparisons"]
    assert comparison["b"] == "r1" and comparison["a_kind"] == "gold"
    gold = dict(Label.objects.filter(round__kind="gold").values_list("cell_id", "node__code"))
    answers = dict(
        Label.objects.filter(round=rated, cannot_classify=False).values_list(
            "cell_id", "node__code"
        )
    )
    left = [gold[cell] for cell in answers]
    right = [answers[cell] for cell in answers]
    assert comparison["n"] == len(answers) and comparison["excluded_cannot_classify"] == 1
    assert comparison["excluded"] == {"reference_only": 0, "rater_only": 1, "both": 0}
    assert comparison["kappa"] == pytest.approx(cohen_kappa_score(left, right))
    labels = comparison["confusion"]["labels"]
    matrix = comparison["confusion"]["matrix"]
    assert matrix[labels.index("MYON")][labels.index("MYOA")] >= 1  # reference rows, rater columns
    assert comparison["per_class"]["PMB"]["sensitivity"] == 0.0
    # MYON read as MYOA is still a blast: the blast question is answered right.
    assert comparison["groups"]["blast"]["sensitivity"] == 1.0


def test_the_report_as_csv(api_as, study, rated, coordinator):
    response = api_as(coordinator).get(f"/api/v1/studies/{study.pk}/agreement/?format=csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    (row,) = csv.DictReader(io.StringIO(response.content.decode()))
    assert row["b"] == "r1" and row["excluded_cannot_classify"] == "1"
    assert float(row["kappa_ci_low"]) <= float(row["kappa"]) <= float(row["kappa_ci_high"])


def test_collapsing_through_the_api(api_as, study, rated, coordinator):
    body = (
        api_as(coordinator)
        .get(f"/api/v1/studies/{study.pk}/agreement/", {"collapse": "MYO,PMO"})
        .json()
    )
    (comparison,) = body["comparisons"]
    assert body["collapsed"] == ["MYO", "PMO"]
    labels = comparison["confusion"]["labels"]
    assert "MYO" in labels and "MYON" not in labels and "MYOA" not in labels
    assert comparison["per_class"]["MYO"]["sensitivity"] == 1.0  # MYON/MYOA mix-ups vanish


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ({"a": "r1"}, 400, "Give both a and b"),
        ({"a": "r1", "b": "nope"}, 400, "No round 'nope'"),
        ({"collapse": "XYZ"}, 400, "Cannot collapse XYZ"),
        ({"bootstrap": "many"}, 400, "bootstrap must be a whole number from 0 to 100000"),
        ({"bootstrap": "1000000"}, 400, "from 0 to 100000, not 1000000"),
    ],
)
def test_bad_report_requests_are_4xx(api_as, study, rated, coordinator, query, status, message):
    response = api_as(coordinator).get(f"/api/v1/studies/{study.pk}/agreement/", query)
    assert response.status_code == status
    assert message in str(response.json())


def test_annotators_cannot_read_the_report(api_as, study, rated, annotator, outsider):
    assert api_as(annotator).get(f"/api/v1/studies/{study.pk}/agreement/").status_code == 403
    assert api_as(outsider).get(f"/api/v1/studies/{study.pk}/agreement/").status_code == 404


def test_patient_bootstrap_where_patients_are_known(
    api_as, study, scan, gold_cells, rated, coordinator, annotator, synthetic_scan_files
):
    path, manifest = synthetic_scan_files[1]
    other = ingest_scan(path, study=study, patient_code="P-002", user=coordinator).scan
    gold = annotation.gold_round_for(study, annotator)
    for spot in manifest["cells"]:  # the second patient's cells, every one misread by Rita
        cell = annotation.create_cell(study, other, spot["x"], spot["y"], annotator)
        annotation.set_label(cell, gold, annotator, node=spot["code"])
        misread = "NGS" if spot["code"] != "NGS" else "LYT"
        annotation.set_label(cell, rated, rated.rater, node=misread)

    client = api_as(coordinator)
    url = f"/api/v1/studies/{study.pk}/agreement/"
    first = client.get(url, {"bootstrap": 400, "seed": 3}).json()["comparisons"][0]
    again = client.get(url, {"bootstrap": 400, "seed": 3}).json()["comparisons"][0]
    interval = first["bootstrap"]
    assert interval == again["bootstrap"]
    assert interval["clusters"] == 2 and interval["replicates"] == 400
    # With two patients, one read well and one not at all, the patient interval is far wider
    # than the asymptotic one, which treats every cell as independent.
    assert interval["high"] - interval["low"] > first["kappa_ci"][1] - first["kappa_ci"][0]
