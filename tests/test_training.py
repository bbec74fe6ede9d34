"""Training runs: a CPU smoke run through a real Celery worker that produces a complete report,
cancelling, failing, and the command."""

from __future__ import annotations

import html
import io
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.test import Client

from core.errors import DomainError
from mltasks import run_config, runs, training
from mltasks.models import FoldModel, TrainingRun

from .conftest import client_for
from .workers import celery_worker

# Small enough for two CPU cores: 32 px images, a few images per class, one epoch.
SMOKE = {
    "image_size": 32,
    "batch_size": 16,
    "max_epochs": 1,
    "oversample_to": 8,
    "saliency_samples": 2,
    "threads": 2,
    "export_models": False,  # the exports have their own tests (tests/test_export.py)
}


def _wait(run_id: int, states, seconds: float = 240) -> TrainingRun:
    deadline = time.monotonic() + seconds
    while True:
        run = TrainingRun.objects.get(pk=run_id)
        if run.status in states:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.status}: {run.progress}"
        time.sleep(0.2)


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_smoke_run_through_the_worker_gives_a_complete_report(
    study, curated, split, data_scientist, rater, coordinator
):
    from annotator import annotation, rounds

    # A blinded rater's answers on some of the cells: their points belong on the ROC plots.
    blinded = rounds.create_blinded_round(study, rater, coordinator, mode="fraction", fraction=0.3)
    for item in blinded.items.all():
        gold = item.cell.labels.get(round__kind="gold").node.code
        annotation.set_label(item.cell, blinded, rater, node=gold if item.position % 3 else "NGS")

    with celery_worker(("training",), Path(settings.MEDIA_ROOT)):  # it reads this test's files
        response = client_for(data_scientist).post(
            "/api/v1/training-runs/", {"split": split.pk, "config": SMOKE}, format="json"
        )
        assert response.status_code == 202, response.json()
        run = _wait(response.json()["id"], {"done", "failed", "cancelled"})
    assert run.status == "done", run.error
    report = run.report
    assert report["classes"] == split.dataset.classes
    assert "exports" not in report  # export_models false: no TorchScript, ONNX or card
    for row in report["per_class"].values():
        assert {"images", "precision", "sensitivity", "specificity"} <= set(row)
        assert row["sensitivity"]["folds_used"] <= 2
    assert sum(report["per_class"][c]["images"] for c in report["classes"]) == len(
        split.dataset.manifest
    )
    matrix = report["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == len(split.dataset.manifest)
    assert set(report["groups"]) == {"blast", "atypical"}
    assert report["groups"]["blast"]["members"] == ["MYO"]
    assert "mean_curve" in report["groups"]["atypical"]
    assert {p["round"] for p in report["raters"]} == {blinded.name}
    assert len(report["saliency"]) == 2
    for name in [*report["plots"].values(), *(s["file"] for s in report["saliency"])]:
        assert default_storage.exists(name), name
    assert [f["fold"] for f in report["folds"]] == ["0", "1"]
    assert report["split"]["sha256"] == split.sha256
    assert run.device == f"cpu ({SMOKE['threads']} threads)"  # as the run was configured
    assert run.code_version and run.progress["fraction"] == 1.0
    models = FoldModel.objects.filter(run=run).order_by("fold")
    assert [m.fold for m in models] == ["0", "1"]
    with default_storage.open(models[0].weights, "rb") as handle:
        model = training.load_model(handle.read(), split.dataset.classes)
    assert model.fc.out_features == len(split.dataset.classes)
    with (
        default_storage.open(models[0].weights, "rb") as handle,
        pytest.raises(DomainError, match="not the expected"),
    ):
        training.load_model(handle.read(), ["NGS", "LYT"])


@pytest.mark.django_db
def test_cancelling_stops_the_run_and_publishes_nothing(split, data_scientist):
    run = runs.start_run(split, data_scientist, {**SMOKE, "max_epochs": 50})
    TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    runs.PROGRESS_EVERY_SECONDS = 0.0
    try:
        finished = runs.execute(run.pk)
    finally:
        runs.PROGRESS_EVERY_SECONDS = 0.5
    assert finished.status == "cancelled" and "Cancelled" in finished.error
    assert not FoldModel.objects.filter(run=run).exists()
    assert not list((Path(settings.MEDIA_ROOT) / "training").rglob("*.pt"))
    queued = runs.start_run(split, data_scientist, SMOKE)
    assert runs.request_cancel(queued).status == "cancelled"
    assert runs.execute(queued.pk).status == "cancelled"  # the worker then leaves it alone


@pytest.mark.django_db
def test_a_failure_is_recorded_and_publishes_nothing(split, data_scientist, tmp_path):
    run = runs.start_run(split, data_scientist, {**SMOKE, "pretrained": str(tmp_path / "no.pt")})
    finished = runs.execute(run.pk)
    assert finished.status == "failed" and "no.pt" in finished.error
    assert not FoldModel.objects.filter(run=run).exists()
    with pytest.raises(DomainError, match="Unknown config key"):
        runs.start_run(split, data_scientist, {"epochs": 3})
    for key, value in (("validation_fraction", "0.1"), ("threads", "x"), ("seed", -1)):
        with pytest.raises(DomainError, match=f"{key} must be"):
            runs.start_run(split, data_scientist, {key: value})
    assert runs.execute(run.pk).status == "failed"  # a second delivery changes nothing
    with pytest.raises(DomainError, match="image_size must be a whole number from 32 to 4096"):
        runs.start_run(split, data_scientist, {"image_size": 8})


@pytest.mark.django_db
def test_the_train_command_runs_here_and_prints_the_report(split, tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"image_size": 32, "batch_size": 16, "oversample_to": 4}')
    out = io.StringIO()
    call_command(
        "train",
        "--split",
        str(split.pk),
        "--config",
        str(config),
        "--set",
        "max_epochs=1",
        "--set",
        "saliency_samples=1",
        "--set",
        'folds=["0"]',
        stdout=out,
    )
    text = out.getvalue()
    assert "done in" in text and "MYO" in text and "blast: AUC" in text
    assert "Fold 0: Grouped by patient, the validation part holds" in text
    run = TrainingRun.objects.get()
    assert run.config["image_size"] == 32 and run.config["max_epochs"] == 1
    with pytest.raises(CommandError, match="--set takes KEY=VALUE"):
        call_command("train", "--split", str(split.pk), "--set", "nonsense")


@pytest.mark.django_db
def test_the_pages_show_runs_and_the_report(split, data_scientist, annotator):
    run = runs.start_run(split, data_scientist, {**SMOKE, "folds": ["1"]})
    runs.execute(run.pk)
    browser = Client()
    browser.force_login(data_scientist)
    listing = browser.get("/studies/munich/training/")
    assert listing.status_code == 200 and f'data-run="{run.pk}"' in listing.content.decode()
    page = browser.get(f"/training/{run.pk}/").content.decode()
    assert 'data-code="MYO"' in page and "AUC" in page and "saliency of cell" in page
    report = browser.get(f"/api/v1/training-runs/{run.pk}/report/").json()
    plot = browser.get(
        f"/api/v1/training-runs/{run.pk}/plot/", {"name": report["plots"]["confusion"]}
    )
    assert plot.status_code == 200 and plot["Content-Type"] == "image/png"
    assert (
        browser.get(
            f"/api/v1/training-runs/{run.pk}/plot/", {"name": "annotator/../settings.py"}
        ).status_code
        == 404
    )
    started = browser.post(
        "/studies/munich/training/",
        {
            "split": split.pk,
            "image_size": 32,
            "max_epochs": 1,
            "oversample_to": 4,
            "batch_size": 8,
            "seed": 0,
        },
        follow=True,
    )
    queued = TrainingRun.objects.exclude(pk=run.pk).get()
    assert started.redirect_chain[-1][0] == f"/studies/munich/training/?run={queued.pk}"
    banner = f'<li id="run-banner" data-run="{queued.pk}" data-status="queued">'
    assert banner in started.content.decode()
    assert queued.config["image_size"] == 32 and queued.config["patience"] == 3
    cancelled = browser.post(
        "/studies/munich/training/", {"action": "cancel", "run": queued.pk}, follow=True
    )
    assert f"Run {queued.pk} cancelled." in cancelled.content.decode()
    queued.refresh_from_db()
    assert queued.status == "cancelled"
    outsider = Client()
    outsider.force_login(annotator)
    assert outsider.get("/studies/munich/training/").status_code == 403
    assert outsider.get(f"/training/{run.pk}/").status_code == 403


@pytest.mark.django_db
def test_preannotation_suggests_classes_for_unlabelled_cells_only(
    study, split, data_scientist, annotator
):
    from annotator.models import Cell, Suggestion

    run = runs.start_run(split, data_scientist, {**SMOKE, "folds": ["0"]})
    assert runs.execute(run.pk).status == "done"
    labelled = Cell.objects.filter(study=study).first()
    fresh = [
        Cell.objects.create(study=study, patch=labelled.patch.name, external_id=f"new/{n}")
        for n in range(3)
    ]
    out = io.StringIO()
    call_command("preannotate", "--run", str(run.pk), stdout=out)
    assert "3 cell(s) of munich have a suggestion" in out.getvalue()
    suggestions = Suggestion.objects.filter(cell__in=fresh)
    assert suggestions.count() == 3 and not Suggestion.objects.filter(cell=labelled).exists()
    for suggestion in suggestions:
        assert suggestion.code in split.dataset.classes and 0 <= suggestion.probability <= 1
        # A merged class (MYO, PMO) is no single leaf: it names its code, not a node.
        assert (suggestion.node is None) == (suggestion.code in ("MYO", "PMO"))
    body = client_for(annotator).get(f"/api/v1/cells/{fresh[0].pk}/").json()
    assert body["suggestion"]["code"] == suggestions.get(cell=fresh[0]).code
    assert body["suggestion"]["source"] == f"training run {run.pk}"
    with pytest.raises(CommandError, match="No training run"):
        call_command("preannotate", "--run", "999999")


@pytest.mark.django_db
def test_patient_folds_carve_validation_by_whole_patients(split):
    data = training.load_data(split, 32)
    config = run_config.load_config({"validation_fraction": 0.25})
    for plan in training.fold_plans(split, data, config):
        train = {data.patients[i] for i in plan.train}
        validation = {data.patients[i] for i in plan.validation}
        test = {data.patients[i] for i in plan.test}
        assert validation and not train & validation and not (train | validation) & test
        assert plan.validation_by == "patients"


@pytest.mark.django_db
def test_training_reads_the_splits_samples(split):
    from datasets import splits

    data = training.load_data(split, 32)
    every = splits.split_samples(split)
    assert data.cell_ids == [s.cell for s in every] == [row.cell for row in split.dataset.rows()]
    assert [data.classes[i] for i in data.labels] == [s.class_name for s in every]
    assert data.patients == [s.patient for s in every]
    config = run_config.load_config({"validation_fraction": 0.2, "seed": 5})
    plans = training.fold_plans(split, data, config)
    assert [plan.fold for plan in plans] == splits.fold_names(split) == ["0", "1"]
    for plan in plans:
        for role in ("train", "validation", "test"):
            cells = [data.cell_ids[i] for i in getattr(plan, role)]
            expected = splits.samples(split, plan.fold, role, validation_fraction=0.2, seed=5)
            assert cells == [s.cell for s in expected], role
    only = training.fold_plans(split, data, {**config, "folds": [1]})
    assert [plan.fold for plan in only] == ["1"]
    with pytest.raises(DomainError, match="no fold"):
        training.fold_plans(split, data, {**config, "folds": ["7"]})


@pytest.fixture
def three_patients(study, curated, data_scientist):
    """The curated cells of three patients only, split by patient into three folds."""
    from datasets import splits, versions

    others = [f"P-{n:02d}" for n in range(3, 12)]
    version, _ = versions.make_dataset(
        study, "three", data_scientist, filters={"exclude_patients": others}
    )
    made, _ = splits.make_split(version, "patient-kfold", data_scientist, k=3, seed=0)
    return made


@pytest.mark.django_db
def test_three_patients_never_train_two_folds_on_the_same_cells(three_patients, data_scientist):
    split = three_patients
    data = training.load_data(split, 32)
    plans = training.fold_plans(split, data, run_config.load_config())
    trained = [tuple(plan.train) for plan in plans]
    assert len(set(trained)) == 3
    for plan in plans:
        # A whole patient carved out would leave one patient to train on: cells are carved.
        assert plan.validation_by == "cells" and len(plan.validation)
        assert {data.patients[i] for i in plan.train} == {data.patients[i] for i in plan.validation}
        assert not {data.patients[i] for i in plan.train} & {data.patients[i] for i in plan.test}
        assert "carved by cells within patients" in plan.notes[0]
        assert "belong to only 2 patients, and whole patients would leave 1" in plan.notes[0]

    # The run's report says it, fold by fold (one fold trained here, to keep the test short).
    run = runs.start_run(split, data_scientist, {**SMOKE, "saliency_samples": 1, "folds": ["1"]})
    assert runs.execute(run.pk).status == "done"
    report = TrainingRun.objects.get(pk=run.pk).report
    (fold,) = report["folds"]
    assert fold["validation"]["by"] == "cells" and fold["validation"]["patients"] == 2
    assert fold["validation_made"] == f"{fold['validation']['cells']} cells of 2 patient(s), " + (
        "carved by cells"
    )
    assert fold["train"] + fold["validation"]["cells"] + fold["test"] == len(data.cell_ids)
    assert report["warnings"][0] == f"Fold 1: {plans[1].notes[0]}"
    browser = Client()
    browser.force_login(data_scientist)
    page = html.unescape(browser.get(f"/training/{run.pk}/").content.decode())
    assert report["warnings"][0] in page and fold["validation_made"] in page


@pytest.mark.django_db
def test_folds_that_would_train_on_the_same_cells_are_named():
    """Where the carve cannot help it (a fold of one cell), the plans say so."""
    from datasets.models import DatasetVersion, Split

    version = DatasetVersion(manifest=[[n, "", "", "A"] for n in range(3)], classes=["A", "B"])
    split = Split(dataset=version, strategy="stratified-kfold", params={"k": 3}, folds=[0, 1, 2])
    data = training.TrainingData(
        images=None,
        labels=np.zeros(3, dtype=int),
        cell_ids=[0, 1, 2],
        classes=["A", "B"],
    )
    named = 0
    for seed in range(8):
        plans = training.fold_plans(split, data, run_config.load_config({"seed": seed}))
        for later, plan in enumerate(plans):
            same = [p.fold for p in plans[:later] if np.array_equal(p.train, plan.train)]
            notes = [n for n in plan.notes if "train on the same" in n]
            assert len(notes) == len(same)
            named += len(notes)
    assert named


def test_the_time_left_is_the_mean_measured_step_times_the_steps_left():
    """A run of 3 slow warm-up steps (loading, first passes) and 160 steps of about 1 s:
    after the warm-up the estimate is the measured mean per step times the steps left, so it
    falls as the run goes instead of rising (issue 13: 116 s, then 389 s, for a 174 s run)."""
    rng = np.random.default_rng(0)
    durations = [6.0, 3.0, 2.0, *(1.0 + rng.uniform(-0.1, 0.1, 160))]
    times = runs.StepTimes(warmup=3)
    estimates = []
    for done, seconds in enumerate(durations, start=1):
        times.add(seconds)
        estimates.append(times.remaining(len(durations) - done))
    assert estimates[:3] == [None, None, None]
    assert estimates[3] == pytest.approx(durations[3] * (len(durations) - 4))
    actual_left = [sum(durations[done:]) for done in range(1, len(durations) + 1)]
    for estimate, actual in list(zip(estimates, actual_left, strict=True))[10:]:
        assert estimate == pytest.approx(actual, rel=0.1, abs=1.0)
    later = estimates[10:]
    assert all(b <= 1.05 * a for a, b in itertools.pairwise(later))
    assert estimates[-1] == 0


def test_no_time_left_before_the_first_measured_step():
    times = runs.StepTimes(warmup=2)
    assert times.remaining(100) is None
    times.add(30.0)
    times.add(20.0)
    assert times.remaining(100) is None
    times.add(0.5)
    times.add(1.5)
    assert times.remaining(10) == pytest.approx(10.0)


def test_the_roc_gives_human_raters_their_own_colours_and_markers():
    from matplotlib.colors import to_hex

    from mltasks import report

    roc = {"mean_curve": {"fpr": [0, 0.2, 1], "tpr": [0, 0.8, 1]}, "auc": {"mean": 0.9}}
    points = [
        {"round": "gold-examiner", "kind": "gold", "sensitivity": 0.9, "specificity": 0.95},
        {"round": "rita-blind-r1", "kind": "blinded", "sensitivity": 0.8, "specificity": 0.9},
        {"round": "rita-repeat-1", "kind": "repeat", "sensitivity": 0.7, "specificity": 0.85},
    ]
    figure = report.roc_figure("blast", roc, points)
    axes = figure.axes[0]
    network = to_hex(axes.lines[-1].get_color())
    raters = [to_hex(collection.get_facecolor()[0]) for collection in axes.collections]
    assert len(raters) == 3 and network not in raters and len(set(raters)) == 3
    markers = {path.get_paths()[0].vertices.shape for path in axes.collections}
    assert len(markers) == 3  # star, circle and square: one per kind of round
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend[0].startswith("network, AUC 0.900")
    assert legend[1:] == [
        "rater: gold-examiner (gold)",
        "rater: rita-blind-r1 (blinded)",
        "rater: rita-repeat-1 (repeat)",
    ]


def test_saliency_titles_are_legible_at_the_size_the_report_shows():
    from core import plots
    from mltasks import report

    patch = np.zeros((32, 32, 3), dtype=np.uint8)
    figure = report.saliency_figure(patch, np.zeros((32, 32)), "cell 12: MYB")
    width_px = figure.get_figwidth() * plots.PNG_DPI
    shown = min(report.SALIENCY_SHOWN_PX, width_px) / width_px
    for axes in figure.axes:
        size_px = axes.title.get_fontsize() * plots.PNG_DPI / 72 * shown
        assert size_px >= 10, (axes.title.get_text(), size_px)
