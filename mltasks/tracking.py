"""A training run as it goes, for people watching it: its learning curves in the run's progress
(the run page plots them) and its record in MLflow (params, per-epoch metrics per fold, the
report and the fold models' names, tags with the split and data set hashes).

MLflow is the worker's: `mlflow` is imported only when a `Tracker` starts, in the process that
trains, never by the web process (which only reads `link`). Tracking never stops a run: the
first MLflow error (an unreachable server, a full disk) is logged once as a warning, recorded on
the run as `tracking_error`, and the run trains on untracked. Each MLflow request is bounded by
MLFLOW_HTTP_REQUEST_TIMEOUT seconds and MLFLOW_HTTP_REQUEST_MAX_RETRIES retries (defaults here,
the environment's when it sets them).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.files.storage import default_storage

from .models import TrainingRun

log = logging.getLogger(__name__)

# Points of a fold's training-loss curve kept in the progress (polled every second by the page).
MAX_CURVE_POINTS = 120
HTTP_TIMEOUT_SECONDS = 10
HTTP_MAX_RETRIES = 1
CREDENTIALS = re.compile(r"//[^/@\s]+@")  # user:password@ in a URL
END_STATES = {
    TrainingRun.Status.DONE: "FINISHED",
    TrainingRun.Status.FAILED: "FAILED",
    TrainingRun.Status.CANCELLED: "KILLED",
}


class Curves:
    """Per fold, the training loss over the epochs (x = epochs done, fractional within an epoch;
    each point the mean of `stride` steps, at most `max_points` points: the stride doubles and
    neighbours merge when there would be more) and the validation after each epoch. `folds` is
    what the run's progress keeps under "curves"."""

    def __init__(self, max_points: int = MAX_CURVE_POINTS):
        self.max_points = max_points
        self.folds: dict[str, dict] = {}
        self._stride: dict[str, int] = {}
        self._bucket: list[float] = [0.0, 0.0, 0]  # sum of x, sum of loss, steps

    def record(self, update: dict) -> None:
        """Take one progress update of a training step or of an epoch's validation."""
        if "fold" not in update:
            return
        fold = str(update["fold"])
        curve = self.folds.setdefault(fold, {"loss": [], "validation": []})
        if "loss" in update and update.get("steps"):
            x = update["epoch"] - 1 + update["step"] / update["steps"]
            xs, losses, steps = self._bucket
            self._bucket = [xs + x, losses + update["loss"], steps + 1]
            if self._bucket[2] >= self._stride.setdefault(fold, 1):
                self._flush(fold, curve)
        if "validation" in update:
            self._flush(fold, curve)
            values = update["validation"]
            curve["validation"].append(
                {
                    "epoch": update["epoch"],
                    "train_loss": _rounded(values["train_loss"]),
                    "loss": _rounded(values["validation_loss"]),
                    "accuracy": _rounded(values["validation_accuracy"]),
                }
            )

    def _flush(self, fold: str, curve: dict) -> None:
        x, loss, steps = self._bucket
        self._bucket = [0.0, 0.0, 0]
        if not steps:
            return
        curve["loss"].append([round(x / steps, 4), _rounded(loss / steps)])
        if len(curve["loss"]) > self.max_points:
            points = curve["loss"]
            curve["loss"] = [
                [round((a[0] + b[0]) / 2, 4), _rounded((a[1] + b[1]) / 2)]
                for a, b in zip(points[0::2], points[1::2], strict=False)
            ] + ([points[-1]] if len(points) % 2 else [])
            self._stride[fold] *= 2


def _rounded(value: float) -> float:
    return float(f"{float(value):.5g}")


def run_curves(run: TrainingRun) -> dict:
    """A run's learning curves: those its progress kept, or for a run trained before they were
    kept, its fold models' validation history."""
    curves = (run.progress or {}).get("curves")
    if curves:
        return curves
    return {
        model.fold: {
            "loss": [],
            "validation": [
                {
                    "epoch": entry["epoch"],
                    "train_loss": entry["train_loss"],
                    "loss": entry["validation_loss"],
                    "accuracy": entry["validation_accuracy"],
                }
                for entry in (model.metrics or {}).get("history", [])
            ],
        }
        for model in run.models.all()
    }


def shown_uri(uri: str) -> str:
    """A tracking URI without the user name and password it may hold."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def link(run: TrainingRun) -> dict | None:
    """Where the run is in MLflow, for its page: the UI's address of the run when MLFLOW_UI_URL
    is set, and always its MLflow run id and the tracking URI; None for a run not logged."""
    if not run.mlflow_run_id:
        return None
    ui = settings.MLFLOW_UI_URL.rstrip("/")
    url = f"{ui}/#/experiments/{run.mlflow_experiment_id}/runs/{run.mlflow_run_id}" if ui else ""
    return {
        "run_id": run.mlflow_run_id,
        "experiment_id": run.mlflow_experiment_id,
        "uri": shown_uri(settings.MLFLOW_TRACKING_URI),
        "url": url,
    }


def experiment_name(study_name: str) -> str:
    return f"cytomark-{study_name}"


class Tracker:
    """One training run's MLflow run. Every method returns normally: after the first MLflow
    error the tracker is off for the rest of the run (see the module's docstring)."""

    def __init__(self, run_pk: int, uri: str):
        self.run_pk, self.uri = run_pk, uri
        self.client = None
        self.mlflow_run_id = ""
        self.off = not uri

    @classmethod
    def start(cls, run_pk: int) -> Tracker:
        """The MLflow run of a claimed training run (its device and code version set), made in
        the study's experiment; off where MLFLOW_TRACKING_URI is empty."""
        tracker = cls(run_pk, settings.MLFLOW_TRACKING_URI)
        tracker._guard(tracker._start)
        return tracker

    def epoch(self, fold: str, epoch: int, values: dict) -> None:
        """An epoch's training loss, validation loss and accuracy, as fold_F/NAME at step
        `epoch`."""
        self._guard(self._log_epoch, str(fold), epoch, values)

    def finish(self) -> None:
        """End the MLflow run as the training run ended; a finished run's report, fold models
        and summary figures go with it."""
        self._guard(self._finish)

    def _guard(self, action, *args) -> None:
        if self.off:
            return
        try:
            action(*args)
        except Exception as exc:  # any failure of MLflow: the run trains on untracked
            self._unavailable(exc)

    def _unavailable(self, exc: Exception) -> None:
        self.off = True
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = CREDENTIALS.sub("//", reason)[:300]
        where = shown_uri(self.uri)
        log.warning("Training run %s is not tracked in MLflow (%s): %s", self.run_pk, where, reason)
        TrainingRun.objects.filter(pk=self.run_pk).update(
            tracking_error=f"Tracking unavailable ({where}): {reason}"
        )

    def _start(self) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_SECONDS))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_MAX_RETRIES))
        if "://" not in self.uri or self.uri.startswith("file:"):
            # MLflow 3 keeps its file store only for those who opt in; the embedded profile does.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        run = TrainingRun.objects.select_related("split__dataset__study").get(pk=self.run_pk)
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self._experiment(experiment_name(run.split.dataset.study.name))
        if run.mlflow_run_id:  # an earlier attempt whose worker died
            self._end_earlier_attempt(run.mlflow_run_id)
        created = self.client.create_run(experiment, run_name=f"run {run.pk}", tags=_tags(run))
        self.mlflow_run_id = created.info.run_id
        TrainingRun.objects.filter(pk=run.pk).update(
            mlflow_run_id=self.mlflow_run_id, mlflow_experiment_id=experiment, tracking_error=""
        )
        params = [Param(key, json.dumps(value)[:6000]) for key, value in sorted(run.config.items())]
        self.client.log_batch(self.mlflow_run_id, params=params)

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # made meanwhile by another worker
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _end_earlier_attempt(self, mlflow_run_id: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            if self.client.get_run(mlflow_run_id).info.status == "RUNNING":
                self.client.set_terminated(mlflow_run_id, "KILLED")
        except MlflowException:  # deleted in MLflow meanwhile: nothing to end
            log.info("MLflow run %s of an earlier attempt is gone", mlflow_run_id)

    def _log_epoch(self, fold: str, epoch: int, values: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(f"fold_{fold}/{name}", float(values[name]), now, epoch)
            for name in ("train_loss", "validation_loss", "validation_accuracy")
        ]
        self.client.log_batch(self.mlflow_run_id, metrics=metrics)

    def _finish(self) -> None:
        run = TrainingRun.objects.get(pk=self.run_pk)
        if run.status == TrainingRun.Status.DONE:
            self._log_outcome(run)
        elif run.error:
            self.client.set_tag(self.mlflow_run_id, "error", run.error[:5000])
        self.client.set_terminated(self.mlflow_run_id, END_STATES.get(run.status, "FAILED"))

    def _log_outcome(self, run: TrainingRun) -> None:
        """The report, the fold models (storage names and hashes, not the weights), the summary
        figures (AUC per group, per-class means over the folds) and the report's plots."""
        from mlflow.entities import Metric

        report = run.report or {}
        self.client.log_dict(self.mlflow_run_id, report, "report.json")
        models = [
            {"fold": m.fold, "weights": m.weights, "sha256": m.sha256, "epochs": m.epochs}
            for m in run.models.all()
        ]
        self.client.log_dict(self.mlflow_run_id, models, "models.json")
        now = int(time.time() * 1000)
        figures = {
            f"auc/{name}": group["auc"]["mean"]
            for name, group in (report.get("groups") or {}).items()
            if (group.get("auc") or {}).get("mean") is not None
        }
        for code, row in (report.get("per_class") or {}).items():
            for measure in ("precision", "sensitivity", "specificity"):
                if (row.get(measure) or {}).get("mean") is not None:
                    figures[f"{measure}/{code}"] = row[measure]["mean"]
        self.client.log_batch(
            self.mlflow_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in figures.items()]
        )
        plots = report.get("plots") or {}
        if plots:
            with tempfile.TemporaryDirectory() as folder:
                for name in plots.values():
                    with default_storage.open(name, "rb") as source:
                        (Path(folder) / Path(name).name).write_bytes(source.read())
                self.client.log_artifacts(self.mlflow_run_id, folder, "plots")


def _tags(run: TrainingRun) -> dict[str, str]:
    dataset = run.split.dataset
    return {
        "cytomark_run": str(run.pk),
        "study": dataset.study.name,
        "split": str(run.split.pk),
        "split_sha256": run.split.sha256,
        "dataset": f"{dataset.name}@{dataset.version}",
        "dataset_sha256": dataset.sha256,
        "code_version": run.code_version,
        "device": run.device,
    }
