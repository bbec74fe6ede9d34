"""Tables of dataset curation: class maps, frozen data set versions, splits and exports.

Class maps, versions and splits are immutable once written: `save()` refuses to update a stored
row, and database triggers (migration 0002) refuse UPDATE statements too, so not even a bulk
`update()` or a hand-written SQL statement can change what a citation points at. A change is
always a new version.
"""

from typing import NamedTuple

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.leases import LeasedJob


class ImmutableError(Exception):
    """A stored class map, data set version or split was about to be changed."""


class Immutable(models.Model):
    """Rows that are written once and never updated."""

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding:
            raise ImmutableError(
                f"{self._meta.verbose_name} {self.pk} is frozen; make a new version instead."
            )
        super().save(*args, **kwargs)


class ClassMap(Immutable):
    """Which taxonomy nodes are merged into one training class (the rare-leaf merge)."""

    study = models.ForeignKey(
        "annotator.Study", on_delete=models.CASCADE, related_name="class_maps"
    )
    taxonomy = models.ForeignKey(
        "annotator.Taxonomy", on_delete=models.PROTECT, related_name="class_maps"
    )
    name = models.SlugField(max_length=100)
    version = models.PositiveIntegerField()
    collapsed = models.JSONField(help_text="Codes of the internal nodes merged into one class.")
    classes = models.JSONField(
        help_text="Ordered classes: [{code, name, nodes: [node codes mapped to it]}]."
    )
    threshold = models.PositiveIntegerField(
        null=True, blank=True, help_text="The cell threshold of the proposal it started from."
    )
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "name", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "name", "version"], name="class_map_name_version"
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="class_map_version_gte_1"),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    def class_of(self) -> dict[str, str]:
        """Node code -> class code, for every node that belongs to a class."""
        return {node: item["code"] for item in self.classes for node in item["nodes"]}


class ManifestRow(NamedTuple):
    """One row of a data set version's manifest. The manifest is stored as JSON lists in this
    order (`list(row)`), so the stored rows and their hash do not depend on this type. A version
    made from a panel's consensus stores a fifth column, where each row's label came from
    (`DatasetVersion.origin_of()`)."""

    cell: int
    patient: str  # "" when the cell's patient is unknown
    scan: str  # the scan's id as text, "" for a cell that has only a patch
    class_name: str


class DatasetVersion(Immutable):
    """A frozen manifest of (cell, patient, scan, class), hashed, with its counts."""

    class LabelSource(models.TextChoices):
        GOLD = "gold", "a gold round"
        ROUND = "round", "a blinded or repeat round"
        MAJORITY = "majority", "a panel's majority vote"
        ADJUDICATED = "adjudicated", "a panel's adjudicated consensus"

    study = models.ForeignKey("annotator.Study", on_delete=models.PROTECT, related_name="datasets")
    name = models.SlugField(max_length=100)
    version = models.PositiveIntegerField()
    source = models.CharField(max_length=200, help_text="The label source, e.g. a round name.")
    source_round = models.ForeignKey(
        "annotator.Round", null=True, on_delete=models.PROTECT, related_name="+"
    )
    label_source = models.CharField(
        max_length=12, choices=LabelSource.choices, default=LabelSource.ROUND
    )
    panel = models.ForeignKey(
        "annotator.Panel", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    consensus = models.JSONField(
        default=dict,
        blank=True,
        help_text="Consensus versions: the consensus summary, the cells left out and the "
        "panel's agreement when the version was made.",
    )
    class_map = models.ForeignKey(
        ClassMap, null=True, blank=True, on_delete=models.PROTECT, related_name="datasets"
    )
    filters = models.JSONField(default=dict, blank=True)
    classes = models.JSONField(help_text="Class codes in their canonical order.")
    manifest = models.JSONField(
        help_text="Rows [cell_id, patient, scan, class] ordered by cell id; consensus versions "
        "add each row's label origin (majority or adjudicated)."
    )
    counts = models.JSONField(help_text="Cells per class.")
    detector_cells = models.JSONField(
        default=list,
        blank=True,
        help_text="Ids of the manifest's cells the detector placed (a proposal accepted), in "
        "order; every other cell was placed by hand.",
    )
    placement = models.JSONField(
        default=dict,
        blank=True,
        help_text="Cells by who placed them, {hand: n, detector: m}; {} for a version made "
        "before placement was recorded.",
    )
    sha256 = models.CharField(max_length=64)
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "name", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "name", "version"], name="dataset_name_version"
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="dataset_version_gte_1"),
            models.CheckConstraint(
                condition=Q(label_source__in=["majority", "adjudicated"], panel__isnull=False)
                | Q(label_source__in=["gold", "round"], panel__isnull=True),
                name="dataset_panel_iff_consensus",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def cell_count(self) -> int:
        return sum(self.counts.values())

    @property
    def is_consensus(self) -> bool:
        return self.label_source in (self.LabelSource.MAJORITY, self.LabelSource.ADJUDICATED)

    def rows(self) -> list[ManifestRow]:
        """The manifest as typed rows, in its order (by cell id)."""
        return [ManifestRow(*row[:4]) for row in self.manifest]

    def origin_of(self) -> dict[int, str]:
        """Cell -> where its label came from: `majority` or `adjudicated` in a consensus
        version, "" in a version made from a round."""
        return {row[0]: row[4] if len(row) > 4 else "" for row in self.manifest}


class Split(Immutable):
    """Fold assignment of a data set version by a named strategy and seed, hashed."""

    class Strategy(models.TextChoices):
        STRATIFIED_KFOLD = "stratified-kfold", "stratified k-fold (image-wise)"
        PATIENT_KFOLD = "patient-kfold", "patient-wise stratified k-fold"
        HOLDOUT = "holdout", "train / validation / test"

    dataset = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="splits")
    strategy = models.CharField(max_length=20, choices=Strategy.choices)
    params = models.JSONField(help_text="k, or the fractions and whether grouped by patient.")
    seed = models.BigIntegerField()
    folds = models.JSONField(help_text="The fold of each manifest row, in the manifest's order.")
    fold_counts = models.JSONField(help_text="{fold: {class: cells}}")
    warnings = models.JSONField(default=list, blank=True)
    patient_check = models.JSONField(
        default=dict, blank=True, help_text="For grouped strategies: patients in two folds."
    )
    sha256 = models.CharField(max_length=64)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(strategy__in=["stratified-kfold", "patient-kfold", "holdout"]),
                name="split_strategy_known",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.strategy} split {self.pk} of {self.dataset}"

    @property
    def fold_sizes(self) -> dict[str, int]:
        return {fold: sum(counts.values()) for fold, counts in self.fold_counts.items()}


class Export(LeasedJob):
    """A split written out in a format, by a background task, as one zip in storage; the task
    holds a lease on it while it writes (core.leases)."""

    class Format(models.TextChoices):
        IMAGEFOLDER = "imagefolder", "image folders per fold and class, with manifest.csv"
        CSV = "csv", "manifest.csv alone"
        JSON = "json", "dataset.json: everything needed to reproduce it"

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    split = models.ForeignKey(Split, on_delete=models.PROTECT, related_name="exports")
    format = models.CharField(max_length=12, choices=Format.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    file = models.CharField(max_length=500, blank=True, help_text="Storage name of the zip.")
    size_bytes = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(format__in=["imagefolder", "csv", "json"]), name="export_format_known"
            ),
            models.CheckConstraint(
                condition=~Q(status="done") | ~Q(file=""), name="export_done_has_file"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.format} export {self.pk} of split {self.split_id}"
