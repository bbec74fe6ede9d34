"""Training runs in MLflow (mltasks/tracking.py): a real tiny run logged to a file store, a
tracking server that does not answer, a failed run and a second attempt; the learning curves the
run's progress keeps for its page."""

from __future__ import annotations

import html
import json
import logging
import time
from pathlib import PurePosixPath

import pytest
from django.test import Client

from mltasks import runs, tracking
from mltasks.models import FoldModel, TrainingRun

from .conftest import client_for
from .test_training import SMOKE

pytestmark = pytest.mark.django_db

TWO_EPOCHS = {**SMOKE, "max_epochs": 2, "patience": 5, "folds": ["0"], "saliency_samples": 1}


@pytest.fixture
def file_store(settings, tmp_path):
    settings.MLFLOW_TRACKING_URI = f"file:{tmp_path / 'mlruns'}"
    return settings.MLFLOW_TRACKING_URI


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _page(user, run: TrainingRun) -> str:
    browser = Client()
    browser.force_login(user)
    return html.unescape(browser.get(f"/training/{run.pk}/").content.decode())


def test_a_run_is_logged_with_its_params_epochs_hashes_and_report(
    file_store, split, data_scientist, settings
):
    run = runs.execute(runs.start_run(split, data_scientist, TWO_EPOCHS).pk)
    assert run.status == "done", run.error
    assert run.mlflow_run_id and not run.tracking_error
    client = _client(file_store)
    logged = client.get_run(run.mlflow_run_id)
    assert logged.info.status == "FINISHED"
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.name == "cytomark-munich" == tracking.experiment_name("munich")
    assert run.mlflow_experiment_id == experiment.experiment_id
    assert {key: json.loads(value) for key, value in logged.data.params.items()} == run.config
    tags = logged.data.tags
    assert tags["split_sha256"] == split.sha256 and tags["dataset_sha256"] == split.dataset.sha256
    assert tags["dataset"] == f"{split.dataset.name}@{split.dataset.version}"
    assert tags["cytomark_run"] == str(run.pk) and tags["code_version"] == run.code_version
    assert tags["device"] == run.device and run.device.startswith("cpu")

    history = FoldModel.objects.get(run=run).metrics["history"]
    assert [entry["epoch"] for entry in history] == [1, 2]
    for name in ("train_loss", "validation_loss", "validation_accuracy"):
        points = client.get_metric_history(run.mlflow_run_id, f"fold_0/{name}")
        assert [p.step for p in points] == [1, 2]
        assert [p.value for p in points] == pytest.approx([entry[name] for entry in history])
    auc = run.report["groups"]["blast"]["auc"]["mean"]
    if auc is not None:
        assert logged.data.metrics["auc/blast"] == pytest.approx(auc)

    artifacts = {item.path for item in client.list_artifacts(run.mlflow_run_id)}
    assert {"report.json", "models.json", "plots"} <= artifacts
    with open(client.download_artifacts(run.mlflow_run_id, "report.json")) as handle:
        report = json.load(handle)
    assert report == json.loads(json.dumps(run.report))
    with open(client.download_artifacts(run.mlflow_run_id, "models.json")) as handle:
        (model,) = json.load(handle)
    stored = FoldModel.objects.get(run=run)
    assert model == {"fold": "0", "weights": stored.weights, "sha256": stored.sha256, "epochs": 2}
    plots = {item.path for item in client.list_artifacts(run.mlflow_run_id, "plots")}
    assert plots == {f"plots/{PurePosixPath(name).name}" for name in run.report["plots"].values()}

    # The run keeps its curves for the page: the training loss over the steps, the validation
    # per epoch.
    curves = run.progress["curves"]["0"]
    assert [point["epoch"] for point in curves["validation"]] == [1, 2]
    assert curves["validation"][1]["loss"] == pytest.approx(history[1]["validation_loss"], rel=1e-4)
    assert curves["loss"] and curves["loss"][-1][0] == pytest.approx(2.0)

    # The run's page links to the run in the MLflow UI, or names it where there is no UI.
    page = _page(data_scientist, run)
    named = f"MLflow run <code>{run.mlflow_run_id}</code> (experiment {experiment.experiment_id})"
    assert f"{named} in <code>{file_store}</code>" in page
    settings.MLFLOW_UI_URL = "http://mlflow.example.org:5000/"
    page = _page(data_scientist, run)
    link = (
        f"http://mlflow.example.org:5000/#/experiments/{experiment.experiment_id}"
        f"/runs/{run.mlflow_run_id}"
    )
    assert f'<a href="{link}">run {run.mlflow_run_id}</a>' in page
    assert 'id="run-curves-data"' in page
    body = client_for(data_scientist).get(f"/api/v1/training-runs/{run.pk}/").json()
    assert body["mlflow_run_id"] == run.mlflow_run_id and body["tracking_error"] == ""


def test_an_unreachable_tracking_server_leaves_the_run_training_and_says_so(
    settings, monkeypatch, split, data_scientist, caplog
):
    settings.MLFLOW_TRACKING_URI = "http://user:secret@127.0.0.1:9"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mltasks.tracking"):
        config = {**TWO_EPOCHS, "max_epochs": 1, "saliency_samples": 0}
        run = runs.execute(runs.start_run(split, data_scientist, config).pk)
    assert run.status == "done", run.error
    assert time.monotonic() - started < 120
    assert run.tracking_error.startswith("Tracking unavailable (http://127.0.0.1:9): ")
    assert "secret" not in run.tracking_error and not run.mlflow_run_id
    warnings = [r for r in caplog.records if r.name == "mltasks.tracking"]
    assert len(warnings) == 1 and "not tracked in MLflow" in warnings[0].getMessage()
    page = _page(data_scientist, run)
    assert "Not tracked in MLflow." in page and run.tracking_error in page
    body = client_for(data_scientist).get(f"/api/v1/training-runs/{run.pk}/").json()
    assert body["tracking_error"] == run.tracking_error


def test_no_tracking_uri_tracks_nothing(settings, split, data_scientist):
    settings.MLFLOW_TRACKING_URI = ""
    run = runs.start_run(split, data_scientist, {**SMOKE, "pretrained": "/nonexistent.pt"})
    run = runs.execute(run.pk)
    assert run.status == "failed" and not run.mlflow_run_id and not run.tracking_error


def test_a_failed_run_and_the_attempt_before_it_end_in_mlflow(file_store, split, data_scientist):
    client = _client(file_store)
    experiment = client.create_experiment("cytomark-munich")
    earlier = client.create_run(experiment).info.run_id  # an attempt whose worker died
    run = runs.start_run(split, data_scientist, {**SMOKE, "pretrained": "/nonexistent.pt"})
    TrainingRun.objects.filter(pk=run.pk).update(
        mlflow_run_id=earlier, mlflow_experiment_id=experiment
    )
    run = runs.execute(run.pk)
    assert run.status == "failed" and run.mlflow_run_id != earlier
    assert client.get_run(earlier).info.status == "KILLED"
    logged = client.get_run(run.mlflow_run_id)
    assert logged.info.status == "FAILED" and "nonexistent.pt" in logged.data.tags["error"]
    assert logged.info.experiment_id == experiment


def test_the_curves_keep_a_bounded_number_of_evenly_spaced_points():
    curves = tracking.Curves(max_points=8)
    for epoch in (1, 2):
        for step in range(1, 51):
            curves.record(
                {"fold": "0", "epoch": epoch, "step": step, "steps": 50, "loss": float(epoch)}
            )
        values = {"train_loss": epoch, "validation_loss": epoch / 2, "validation_accuracy": 0.5}
        curves.record({"fold": "0", "epoch": epoch, "validation": values})
    curve = curves.folds["0"]
    assert 4 <= len(curve["loss"]) <= 8
    xs = [x for x, _ in curve["loss"]]
    assert xs == sorted(xs) and 0 < xs[0] < 1 and 1.5 < xs[-1] <= 2
    assert {loss for x, loss in curve["loss"] if x < 0.9} == {1.0}
    assert [v["loss"] for v in curve["validation"]] == [0.5, 1.0]
    curves.record({"fold": "1", "epoch": 1, "step": 1, "steps": 4, "loss": 3.0})
    assert curves.folds["1"]["loss"] == [[0.25, 3.0]]


def test_the_shown_tracking_uri_has_no_password():
    assert tracking.shown_uri("https://me:pw@mlflow.example.org:5000/x") == (
        "https://mlflow.example.org:5000/x"
    )
    assert tracking.shown_uri("file:/var/lib/cytomark/mlruns") == "file:/var/lib/cytomark/mlruns"
