"""Training runs and the models they publish (one per fold)."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.leases import LeasedJob


class TrainingRun(LeasedJob):
    """A split + a config -> per-fold models, a report with plots; status and live progress.
    The worker training it holds a lease on it (core.leases)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    split = models.ForeignKey("datasets.Split", on_delete=models.PROTECT, related_name="runs")
    config = models.JSONField(help_text="The full config, defaults filled in.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    progress = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    report = models.JSONField(default=dict, blank=True)
    device = models.CharField(max_length=100, blank=True)
    code_version = models.CharField(max_length=100, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    mlflow_run_id = models.CharField(
        max_length=64, blank=True, help_text="The MLflow run it is logged to (mltasks.tracking)."
    )
    mlflow_experiment_id = models.CharField(max_length=64, blank=True)
    tracking_error = models.TextField(
        blank=True, help_text="Why it could not be logged to MLflow (the run trained anyway)."
    )

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "done", "failed", "cancelled"]),
                name="training_run_status_known",
            ),
        ]

    def __str__(self) -> str:
        return f"training run {self.pk} ({self.status})"


class FoldModel(models.Model):
    """One fold's trained weights in storage, published only when the whole run succeeded."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="models")
    fold = models.CharField(max_length=20)
    weights = models.CharField(max_length=500, help_text="Storage name of the state dict.")
    sha256 = models.CharField(max_length=64)
    classes = models.JSONField(help_text="Class codes in output order.")
    metrics = models.JSONField(default=dict, blank=True)
    epochs = models.PositiveIntegerField(default=0)
    seconds = models.FloatField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "fold"]
        constraints = [
            models.UniqueConstraint(fields=["run", "fold"], name="fold_model_once"),
        ]

    def __str__(self) -> str:
        return f"model of fold {self.fold} of run {self.run_id}"


class FoldJob(LeasedJob):
    """One fold of a fanned-out run (config `fan_out`), trained by whichever training worker
    takes its task (mltasks.fanout); it holds a lease of its own while it trains. Its result
    (test predictions, history) waits in storage until the last fold gathers the report."""

    Status = TrainingRun.Status

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="fold_jobs")
    fold = models.CharField(max_length=20)
    position = models.PositiveSmallIntegerField(help_text="The fold's place in the run's plans.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    result = models.CharField(
        max_length=500, blank=True, help_text="Storage name of the fold's result (.npz)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "fold"], name="fold_job_once"),
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "done", "failed", "cancelled"]),
                name="fold_job_status_known",
            ),
        ]

    def __str__(self) -> str:
        return f"fold {self.fold} of training run {self.run_id} ({self.status})"


class ScanClassification(LeasedJob):
    """A finished run's models applied to every leukocyte found on one scan (the detector's
    proposals not rejected, and the cells placed by hand): the model's differential count of
    the smear (mltasks.smear_counts). Held by a lease while it runs; its cells are written all
    at once when it ends done."""

    Status = TrainingRun.Status

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="classifications")
    scan = models.ForeignKey(
        "annotator.Scan", on_delete=models.CASCADE, related_name="classifications"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.JSONField(default=dict, blank=True, help_text="Cells done and in all.")
    error = models.TextField(blank=True)
    device = models.CharField(max_length=100, blank=True, help_text="Where the models ran.")
    cell_count = models.PositiveIntegerField(default=0, help_text="Cells classified.")
    seconds = models.FloatField(default=0, help_text="Time the classification took.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "done", "failed", "cancelled"]),
                name="scan_classification_status_known",
            ),
            # Asking twice while one runs gets that one (mltasks.smear_counts).
            models.UniqueConstraint(
                fields=["run", "scan"],
                condition=Q(status__in=["queued", "running"]),
                name="one_unfinished_classification_per_run_and_scan",
            ),
        ]

    def __str__(self) -> str:
        return f"classification of scan {self.scan_id} by run {self.run_id} ({self.status})"


class ClassifiedCell(models.Model):
    """One leukocyte of a classified scan with the run's class probabilities (the folds'
    models averaged), in the order of the run's classes. It points at the proposal it was
    found as, or at the cell an examiner placed by hand (an accepted proposal at both)."""

    job = models.ForeignKey(ScanClassification, on_delete=models.CASCADE, related_name="cells")
    x = models.PositiveIntegerField(help_text="Level-0 pixel column of the centre.")
    y = models.PositiveIntegerField(help_text="Level-0 pixel row of the centre.")
    proposal = models.ForeignKey(
        "annotator.ProposedCell", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cell = models.ForeignKey(
        "annotator.Cell", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    predicted = models.CharField(max_length=64, help_text="The most probable class.")
    probabilities = models.JSONField(help_text="One per class of the run, in its order.")

    class Meta:
        ordering = ["job", "id"]
        constraints = [
            models.UniqueConstraint(fields=["job", "x", "y"], name="one_classified_cell_per_spot"),
        ]

    def __str__(self) -> str:
        return f"({self.x}, {self.y}) of {self.job}: {self.predicted}"
