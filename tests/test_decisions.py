"""Deciding per patient: a rule on a group share against confirmed diagnoses, checked against
hand-worked numbers, and read through the command, the API and the page, from the examiners'
counts and a finished run's model counts side by side."""

from __future__ import annotations

import io
import json
import math

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from annotator.annotation import bulk_import_labels, gold_round_for
from annotator.differential import GroupCount
from annotator.models import Cell, Membership, Patient, Round
from core.errors import DomainError
from mltasks.decisions import DecisionRule, decide, evaluate
from mltasks.models import ClassifiedCell, ScanClassification, TrainingRun

from .conftest import add_member
from .factories import StudyFactory

Z = 1.959963984540054  # the 97.5 % point of the standard normal


def wilson(count: int, total: int) -> list[float]:
    """The Wilson score interval written out, to check the library's against."""
    p = count / total
    centre = (p + Z**2 / (2 * total)) / (1 + Z**2 / total)
    half = Z * math.sqrt(p * (1 - p) / total + Z**2 / (4 * total**2)) / (1 + Z**2 / total)
    return [centre - half, centre + half]


def _patients(spec: list[tuple[str, float]]) -> tuple[list[Patient], dict[int, GroupCount]]:
    """Unsaved patients with ids, each with a diagnosis code and a share out of 100 cells."""
    patients, counts = [], {}
    for index, (code, share) in enumerate(spec, start=1):
        patients.append(Patient(pk=index, code=f"BM-{index:02d}", diagnosis_code=code))
        counts[index] = GroupCount(in_group=round(share * 100), counted=100)
    return patients, counts


# The bone marrow study's shape: 24 ALL and 25 AML. 21 ALL patients have half of their cells
# lymphoblasts, 3 only a tenth; 24 AML patients 5 %, one 30 %.
BONE_MARROW = [("ALL", 0.5)] * 21 + [("ALL", 0.1)] * 3 + [("AML", 0.05)] * 24 + [("AML", 0.3)]
ALL_RULE = DecisionRule.parse(group="lymphoblast", threshold="0.2", comparison="gt", positive="ALL")


def test_the_bone_marrow_shape_gives_the_hand_worked_rates_and_intervals():
    patients, counts = _patients(BONE_MARROW)
    result = evaluate(ALL_RULE, patients, counts, "examiners")
    assert result.confusion == {"TP": 21, "FP": 1, "TN": 24, "FN": 3}
    metrics = result.metrics
    assert metrics["accuracy"]["value"] == pytest.approx(45 / 49)
    assert metrics["sensitivity"]["value"] == pytest.approx(21 / 24)
    assert metrics["specificity"]["value"] == pytest.approx(24 / 25)
    assert metrics["sensitivity"]["ci"] == pytest.approx(wilson(21, 24))
    assert metrics["specificity"]["ci"] == pytest.approx(wilson(24, 25))
    assert metrics["accuracy"]["ci"] == pytest.approx(wilson(45, 49))
    # Of the 24 x 25 (ALL, AML) pairs, only the 3 low ALL patients against the one 30 % AML
    # patient are ordered wrongly: AUC = 597 / 600.
    assert result.roc["auc"] == pytest.approx(597 / 600)
    assert result.roc["points"][-1] == {"fpr": 1.0, "tpr": 1.0, "threshold": 0.05}


def test_a_small_roc_is_the_hand_counted_one():
    patients, counts = _patients([("ALL", 0.5), ("ALL", 0.1), ("AML", 0.05), ("AML", 0.3)])
    roc = evaluate(ALL_RULE, patients, counts, "examiners").roc
    assert roc["auc"] == pytest.approx(3 / 4)
    assert [(p["fpr"], p["tpr"]) for p in roc["points"]] == [
        (0.0, 0.0),
        (0.0, 0.5),
        (0.5, 0.5),
        (0.5, 1.0),
        (1.0, 1.0),
    ]
    assert roc["points"][0]["threshold"] is None  # scikit-learn's "above every share"


def test_at_the_threshold_ge_calls_positive_and_gt_negative():
    patients, counts = _patients([("AML", 0.2), ("control", 0.1)])
    at_least = DecisionRule.parse(group="blast", threshold=0.2, comparison="ge", positive="aml")
    above = DecisionRule.parse(group="blast", threshold=0.2, comparison="gt", positive="AML")
    assert evaluate(at_least, patients, counts, "examiners").confusion["TP"] == 1
    assert evaluate(above, patients, counts, "examiners").confusion["FN"] == 1


def test_patients_without_a_code_or_counted_cells_are_left_out_saying_why():
    patients = [
        Patient(pk=1, code="A", diagnosis_code="AML"),
        Patient(pk=2, code="B", diagnosis_code=""),
        Patient(pk=3, code="C", diagnosis_code="control"),
        Patient(pk=4, code="D", diagnosis_code="AML"),
    ]
    counts = {1: GroupCount(30, 100), 2: GroupCount(50, 100), 3: GroupCount(0, 0)}
    result = evaluate(ALL_RULE, patients, counts, "examiners")
    assert [d.code for d in result.decisions] == ["A"]
    assert result.left_out == [
        {"patient": "B", "reason": "no diagnosis code"},
        {"patient": "C", "reason": "no counted cells"},
        {"patient": "D", "reason": "no counted cells"},
    ]
    assert result.roc == {
        "auc": None,
        "points": [],
        "reason": "needs positive and negative patients",
    }
    assert result.metrics["sensitivity"]["value"] is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"threshold": "1.5"}, "threshold must be a share from 0 to 1"),
        ({"threshold": "-0.1"}, "threshold must be a share from 0 to 1"),
        ({"threshold": "a fifth"}, "not 'a fifth'"),
        ({"comparison": "lt"}, "comparison must be ge or gt"),
        ({"positive": " , "}, "diagnosis codes that count as positive"),
        ({"group": ""}, "Name the group"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_value(values, message):
    given = {"group": "blast", "threshold": "0.2", "comparison": "ge", "positive": "AML"}
    with pytest.raises(DomainError, match=message):
        DecisionRule.parse(**{**given, **values})


# A counted world: four patients of the study with patch-only cells in the gold round, 10 cells
# each; the blast (MYON) cells per patient, and their diagnosis.
WORLD = {"AML-1": (6, "AML"), "AML-2": (1, "AML"), "CTL-1": (0, "control"), "CTL-2": (3, "control")}


@pytest.fixture
def counted(study, annotator, coordinator):
    nodes = {code: study.taxonomy.nodes.get(code=code) for code in ("MYON", "NGS")}
    answers = {}
    for code, (blasts, diagnosis) in WORLD.items():
        patient = Patient.objects.create(code=code, diagnosis_code=diagnosis)
        for index in range(10):
            cell = Cell.objects.create(study=study, patient=patient, external_id=f"{code}/{index}")
            answers[cell.pk] = nodes["MYON" if index < blasts else "NGS"]
    Patient.objects.create(code="UNKNOWN-1")
    unknown = Patient.objects.get(code="UNKNOWN-1")
    cell = Cell.objects.create(study=study, patient=unknown, external_id="unknown/0")
    answers[cell.pk] = nodes["NGS"]
    gold = gold_round_for(study, annotator)
    bulk_import_labels(gold, answers)
    return gold


BLAST_RULE = DecisionRule.parse(group="blast", threshold="0.25", positive="AML")


def test_the_examiners_counts_decide_each_patient(study, counted):
    report = decide(study, BLAST_RULE).to_dict()
    examiners = report["sources"]["examiners"]
    assert examiners["confusion"] == {"TP": 1, "FP": 1, "TN": 1, "FN": 1}
    assert examiners["left_out"] == [{"patient": "UNKNOWN-1", "reason": "no diagnosis code"}]
    rows = {row["patient"]: row["examiners"] for row in report["patients"]}
    assert rows["AML-1"] == {
        "share": 0.6,
        "in_group": 6,
        "counted": 10,
        "decision": "positive",
        "outcome": "TP",
    }
    assert rows["CTL-2"]["outcome"] == "FP"
    assert rows["UNKNOWN-1"] == {"left_out": "no diagnosis code"}
    assert examiners["roc"]["auc"] == pytest.approx(0.75)
    assert report["notes"] == []
    typo = DecisionRule.parse(group="blast", threshold=0.25, positive="AML,AMLL")
    assert decide(study, typo).to_dict()["notes"] == [
        "No patient of the study has the diagnosis code AMLL."
    ]


def test_an_uncountable_cell_changes_no_count(study, counted, annotator):
    before = decide(study, BLAST_RULE).to_dict()
    patient = Patient.objects.get(code="AML-2")
    extra = Cell.objects.create(study=study, patient=patient, external_id="AML-2/unc")
    bulk_import_labels(counted, {extra.pk: None})
    assert counted.labels.filter(cell=extra, cannot_classify=True).exists()
    assert decide(study, BLAST_RULE).to_dict() == before


def test_an_unknown_group_and_a_wrong_run_are_refused(study, counted, split):
    with pytest.raises(DomainError, match=r"no group 'lymphoblast' \(groups: atypical, blast\)"):
        decide(study, DecisionRule.parse(group="lymphoblast", threshold=0.2, positive="AML"))
    run = TrainingRun.objects.create(split=split, config={})
    with pytest.raises(DomainError, match=f"Run {run.pk} is queued"):
        decide(study, BLAST_RULE, run)
    other = StudyFactory(name="other", taxonomy=study.taxonomy)
    with pytest.raises(DomainError, match=f"Run {run.pk} was trained on another study"):
        decide(other, BLAST_RULE, run)


@pytest.fixture
def model_run(study, counted, split, scan):
    """A finished run that counted the scan of patient P-001 (AML): 4 of its 5 cells MYO."""
    Patient.objects.filter(code="P-001").update(diagnosis_code="AML")
    run = TrainingRun.objects.create(split=split, config={}, status=TrainingRun.Status.DONE)
    job = ScanClassification.objects.create(run=run, scan=scan, status="done", cell_count=5)
    classes = list(split.dataset.classes)
    for index in range(5):
        predicted = "MYO" if index < 4 else "NGS"
        probabilities = [1.0 if klass == predicted else 0.0 for klass in classes]
        ClassifiedCell.objects.create(
            job=job, x=10 + index, y=10, predicted=predicted, probabilities=probabilities
        )
    return run


def test_a_run_adds_the_model_counts_beside_the_examiners(study, model_run):
    report = decide(study, BLAST_RULE, model_run).to_dict()
    model = report["sources"]["model"]
    assert model["confusion"] == {"TP": 1, "FP": 0, "TN": 0, "FN": 0}
    rows = {row["patient"]: row for row in report["patients"]}
    assert rows["P-001"]["model"]["share"] == pytest.approx(0.8)
    assert rows["P-001"]["examiners"] == {"left_out": "no counted cells"}  # no gold label there
    assert rows["AML-1"]["model"] == {"left_out": "no counted cells"}
    assert {"patient": "AML-1", "reason": "no counted cells"} in model["left_out"]
    assert "No ROC from the model's counts" in " ".join(report["notes"])


def test_the_command_writes_json_and_csv(study, model_run):
    out = io.StringIO()
    call_command(
        "decision_report",
        *("--study", "munich", "--group", "blast", "--threshold", "0.25", "--positive", "AML"),
        *("--run", str(model_run.pk)),
        stdout=out,
    )
    body = json.loads(out.getvalue())
    assert body["rule"]["text"] == "blast share >= 0.25; positive: AML"
    assert set(body["sources"]) == {"examiners", "model"}
    out = io.StringIO()
    call_command(
        "decision_report",
        *("--study", "munich", "--group", "blast", "--threshold", "0.25", "--positive", "AML"),
        *("--format", "csv"),
        stdout=out,
    )
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("patient,diagnosis_code,examiners_in_group,examiners_counted")
    assert "AML-1,AML,6,10,0.600000,positive,TP" in lines
    assert "UNKNOWN-1,,,,,left out: no diagnosis code," in lines
    with pytest.raises(CommandError, match="threshold must be a share from 0 to 1"):
        call_command(
            "decision_report",
            *("--study", "munich", "--group", "blast", "--threshold", "2", "--positive", "AML"),
        )


def test_the_api_answers_overseers_and_names_bad_parameters(
    study, counted, coordinator, data_scientist, annotator, outsider, api_as
):
    url = f"/api/v1/studies/{study.pk}/decision/"
    query = {"group": "blast", "threshold": "0.25", "positive": "AML"}
    answer = api_as(data_scientist).get(url, query)
    assert answer.status_code == 200
    assert answer.json()["sources"]["examiners"]["confusion"]["TP"] == 1
    assert api_as(annotator).get(url, query).status_code == 403
    assert api_as(outsider).get(url, query).status_code == 404
    bad = api_as(coordinator).get(url, {**query, "threshold": "5"})
    assert bad.status_code == 400 and "threshold must be a share" in bad.json()["threshold"][0]
    unknown = api_as(coordinator).get(url, {**query, "group": "nope"})
    assert unknown.status_code == 400 and "no group 'nope'" in unknown.json()["group"][0]
    assert api_as(coordinator).get(url, {**query, "run": "x"}).status_code == 400
    assert api_as(coordinator).get(url, {**query, "run": "999999"}).status_code == 404


def test_the_page_shows_both_sources_the_roc_and_the_patients(study, model_run, data_scientist):
    browser = Client()
    browser.force_login(data_scientist)
    page = browser.get(
        f"/studies/{study.name}/decision/",
        {"group": "blast", "threshold": "0.25", "positive": "AML", "run": model_run.pk},
    )
    assert page.status_code == 200
    text = page.content.decode()
    assert 'data-source="examiners"' in text and 'data-source="model"' in text
    assert "<svg" in text and "AUC 0.75" in text
    assert 'data-patient="AML-1"' in text and "UNKNOWN-1 (no diagnosis code)" in text
    assert "AML (3), control (2)" in text  # P-001 is AML too
    assert f"/training/{model_run.pk}/counts/" in text
    refused = browser.get(
        f"/studies/{study.name}/decision/", {"group": "blast", "threshold": "x", "positive": "AML"}
    )
    assert refused.status_code == 200 and "threshold must be a share" in refused.content.decode()


def test_a_blinded_rater_reaches_no_decision(study, counted, api_as):
    rater = add_member(study, Membership.Role.COORDINATOR, "rico")
    Round.objects.create(study=study, rater=rater, kind=Round.Kind.BLINDED, name="rico-blind")
    query = {"group": "blast", "threshold": "0.25", "positive": "AML"}
    assert api_as(rater).get(f"/api/v1/studies/{study.pk}/decision/", query).status_code == 404
    browser = Client()
    browser.force_login(rater)
    assert browser.get(f"/studies/{study.name}/decision/", query).status_code == 404
