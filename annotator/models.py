"""Tables of the annotation domain and the invariants the database itself enforces.

Behaviour that spans several rows (loading a taxonomy, registering a scan, changing a label and
recording its history) lives in the service modules beside this one.
"""

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower

from core.errors import NotFoundError
from core.leases import LeasedJob

HEX_COLOUR = r"^#[0-9a-fA-F]{6}$"


def creator_field() -> models.ForeignKey:
    """Who made a row; the row outlives its author's account, and users get no reverse link."""
    return models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )


def reference_round_field(help_text: str) -> models.ForeignKey:
    """The gold round a sample was drawn from, for a panel or a round; losing it clears the link."""
    return models.ForeignKey(
        "Round",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text=help_text,
    )


def sample_seed_field(help_text: str) -> models.BigIntegerField:
    """The seed a panel's or a round's sample was drawn with; blank where nothing was sampled."""
    return models.BigIntegerField(null=True, blank=True, help_text=help_text)


class Taxonomy(models.Model):
    """One version of a cell taxonomy loaded from a YAML file; never edited once labels use it."""

    name = models.SlugField(max_length=64, help_text="Stable name across versions, e.g. aml-18.")
    version = models.PositiveIntegerField()
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    source_sha256 = models.CharField(
        max_length=64, help_text="sha256 of the canonical content of the file it came from."
    )
    source_file = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        verbose_name_plural = "taxonomies"
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="taxonomy_name_version"),
            models.UniqueConstraint(
                fields=["name", "source_sha256"], name="taxonomy_one_per_content"
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="taxonomy_version_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    def is_in_use(self) -> bool:
        """True once any label points at one of its nodes: from then on it is frozen."""
        return Label.objects.filter(node__taxonomy=self).exists()


class TaxonNode(models.Model):
    """A node of a taxonomy tree; labels normally point at leaves."""

    taxonomy = models.ForeignKey(Taxonomy, on_delete=models.CASCADE, related_name="nodes")
    code = models.CharField(max_length=16)
    name = models.CharField(max_length=200)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    order = models.PositiveIntegerField(default=0, help_text="Position among its siblings.")
    colour = models.CharField(max_length=7, blank=True)
    hotkey = models.CharField(max_length=1, blank=True)
    is_leaf = models.BooleanField(default=True)
    aliases = models.JSONField(
        default=list, blank=True, help_text="Other names for it in imported data sets."
    )

    class Meta:
        ordering = ["taxonomy", "order", "id"]
        constraints = [
            models.UniqueConstraint(fields=["taxonomy", "code"], name="taxon_code_unique"),
            models.UniqueConstraint(
                "taxonomy",
                Lower("hotkey"),
                condition=~Q(hotkey=""),
                name="taxon_hotkey_unique",
            ),
            models.UniqueConstraint(
                fields=["taxonomy"], condition=Q(parent__isnull=True), name="taxon_one_root"
            ),
            models.CheckConstraint(
                condition=Q(colour="") | Q(colour__regex=HEX_COLOUR), name="taxon_colour_hex"
            ),
            models.CheckConstraint(condition=~Q(parent=F("id")), name="taxon_not_own_parent"),
        ]

    def __str__(self) -> str:
        return f"{self.code} ({self.name})"

    def clean(self) -> None:
        if self.parent_id and self.parent.taxonomy_id != self.taxonomy_id:
            raise ValidationError({"parent": "The parent belongs to another taxonomy."})


class TaxonGroup(models.Model):
    """A named set of nodes defining a yes/no question, e.g. `blast` or `atypical`."""

    taxonomy = models.ForeignKey(Taxonomy, on_delete=models.CASCADE, related_name="groups")
    name = models.SlugField(max_length=64)
    description = models.TextField(blank=True)
    nodes = models.ManyToManyField(TaxonNode, related_name="groups")

    class Meta:
        ordering = ["taxonomy", "name"]
        constraints = [
            models.UniqueConstraint(fields=["taxonomy", "name"], name="taxon_group_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.taxonomy} / {self.name}"


class Patient(models.Model):
    """A pseudonymous person whose blood was smeared; never a real name."""

    code = models.CharField(max_length=64, unique=True, help_text="Pseudonymous code.")
    cohort = models.CharField(max_length=64, blank=True, help_text="E.g. AML or control.")
    diagnosis = models.TextField(blank=True, help_text="The confirmed diagnosis, in words.")
    diagnosis_code = models.CharField(
        max_length=32,
        blank=True,
        help_text="Short code of the confirmed diagnosis (e.g. AML, ALL, control); blank: unknown.",
    )
    diagnosis_set_by = creator_field()
    diagnosis_set_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Scan(models.Model):
    """One image file: a pyramidal whole-slide image or a plain field-of-view photograph."""

    class Kind(models.TextChoices):
        WHOLE_SLIDE = "wsi", "whole-slide image"
        PHOTO = "photo", "field-of-view photograph"

    file = models.FileField(upload_to="scans/", max_length=500)
    original_name = models.CharField(max_length=255)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    vendor = models.CharField(max_length=64, help_text="OpenSlide's vendor, or 'image'.")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    level_count = models.PositiveSmallIntegerField(default=1)
    mpp_x = models.FloatField(null=True, blank=True, help_text="Microns per pixel, level 0.")
    mpp_y = models.FloatField(null=True, blank=True)
    size_bytes = models.BigIntegerField(help_text="All of the scan's files together.")
    sha256 = models.CharField(
        max_length=64,
        unique=True,
        help_text="sha256 of the file; of a multi-file scan, of its files' names and sha256s "
        "(annotator.scans.files_digest).",
    )
    companions = models.JSONField(
        default=list,
        blank=True,
        help_text="The other files of a multi-file scan (a DICOM series, a MIRAX slide's "
        "folder), as paths relative to the main file's folder, stored beside it.",
    )
    patient = models.ForeignKey(
        Patient, null=True, blank=True, on_delete=models.PROTECT, related_name="scans"
    )
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    added_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(width__gt=0) & Q(height__gt=0), name="scan_size"),
            models.CheckConstraint(
                condition=(Q(mpp_x__isnull=True) | Q(mpp_x__gt=0))
                & (Q(mpp_y__isnull=True) | Q(mpp_y__gt=0)),
                name="scan_mpp_positive",
            ),
            models.CheckConstraint(
                condition=Q(sha256__regex=r"^[0-9a-f]{64}$"), name="scan_sha256"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.original_name} ({self.width}x{self.height})"


class ScanUpload(models.Model):
    """A file on its way in by the tus protocol: how much of it has arrived, for whom, and until
    when it is kept unfinished. The bytes grow in a local file named by the id
    (`annotator.uploads.data_path`); registering the scan consumes the upload."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    study = models.ForeignKey("Study", on_delete=models.CASCADE, related_name="+")
    filename = models.CharField(max_length=255)
    relative_path = models.CharField(max_length=1000, blank=True)
    length = models.BigIntegerField()
    offset = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(offset__gte=0) & Q(offset__lte=F("length")), name="upload_offset"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.relative_path or self.filename} ({self.offset}/{self.length})"

    @property
    def finished(self) -> bool:
        return self.offset == self.length


class StudyQuerySet(models.QuerySet):
    def named(self, name: str) -> "Study":
        """The study of that name, or NotFoundError naming it: the one lookup of the commands
        and other callers that see every study (the API and the pages look a study up among
        those the user may see, `annotator.access`)."""
        found = self.filter(name=name).first()
        if found is None:
            raise NotFoundError(f"No study named {name!r}.", field="study")
        return found


class Study(models.Model):
    """A set of scans labelled with one taxonomy by a team with roles."""

    name = models.SlugField(max_length=100, unique=True)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    taxonomy = models.ForeignKey(Taxonomy, on_delete=models.PROTECT, related_name="studies")
    scans = models.ManyToManyField(Scan, blank=True, related_name="studies")
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="studies"
    )
    patch_size_px = models.PositiveIntegerField(
        default=400,
        validators=[MinValueValidator(16), MaxValueValidator(4096)],
        help_text="Side of a cell's patch in level-0 pixels.",
    )
    patch_size_um = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1.0), MaxValueValidator(500.0)],
        help_text="Side of a cell's patch in micrometres; when set, it wins over the pixels "
        "for scans that know their resolution.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = StudyQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "studies"
        constraints = [
            models.CheckConstraint(
                condition=Q(patch_size_px__gte=16, patch_size_px__lte=4096),
                name="study_patch_size_px_range",
            ),
            models.CheckConstraint(
                condition=Q(patch_size_um__isnull=True)
                | Q(patch_size_um__gte=1.0, patch_size_um__lte=500.0),
                name="study_patch_size_um_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in a study; a user may hold several roles in one study."""

    class Role(models.TextChoices):
        ANNOTATOR = "annotator", "annotator"
        COORDINATOR = "coordinator", "coordinator"
        DATA_SCIENTIST = "data_scientist", "data scientist"
        ADMIN = "admin", "admin"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices)

    class Meta:
        ordering = ["study", "user", "role"]
        constraints = [
            models.UniqueConstraint(fields=["study", "user", "role"], name="membership_unique"),
            models.CheckConstraint(
                condition=Q(role__in=["annotator", "coordinator", "data_scientist", "admin"]),
                name="membership_role_known",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} as {self.role} in {self.study}"


class Cell(models.Model):
    """A physical cell: a clicked position on a scan, or a pre-cropped patch with no scan."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="cells")
    scan = models.ForeignKey(
        Scan, null=True, blank=True, on_delete=models.PROTECT, related_name="cells"
    )
    x = models.PositiveIntegerField(null=True, blank=True, help_text="Level-0 pixel column.")
    y = models.PositiveIntegerField(null=True, blank=True, help_text="Level-0 pixel row.")
    patch = models.FileField(
        upload_to="patch-cells/", max_length=500, blank=True, help_text="Pre-cropped image."
    )
    patient = models.ForeignKey(
        Patient,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="cells",
        help_text="For patch-only cells; a scan cell's patient is its scan's.",
    )
    external_id = models.CharField(
        max_length=255, blank=True, help_text="Name in an imported data set, e.g. a file name."
    )
    cut_patch = models.CharField(
        max_length=300,
        blank=True,
        help_text="Storage name of the patch last cut for this cell (annotator.patches).",
    )
    version = models.PositiveIntegerField(default=1, help_text="Raised on every change.")
    created_by = creator_field()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["scan", "study"])]
        constraints = [
            # A patch-only cell names its image: a stored file, or (labels imported without
            # the images) the file's name in the data set it came from.
            models.CheckConstraint(
                condition=(
                    Q(scan__isnull=False, x__isnull=False, y__isnull=False, patch="")
                    | (
                        Q(scan__isnull=True, x__isnull=True, y__isnull=True)
                        & (~Q(patch="") | ~Q(external_id=""))
                    )
                ),
                name="cell_on_scan_or_patch_only",
            ),
            models.UniqueConstraint(
                fields=["study", "external_id"],
                condition=~Q(external_id=""),
                name="cell_external_id_unique",
            ),
        ]

    def __str__(self) -> str:
        if self.scan_id:
            return f"cell {self.pk} at ({self.x}, {self.y}) on scan {self.scan_id}"
        return f"cell {self.pk} (patch {self.external_id or self.patch.name})"


class Panel(models.Model):
    """Several raters over one blinded design: the same sampled cells, one blinded round (and
    optionally repeats) per rater, each in its own order; and the adjudication rounds that
    settle where they disagree (`annotator.panels`)."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="panels")
    name = models.SlugField(max_length=100)
    reference = reference_round_field(
        "The gold round the sample was drawn from (none for imported ratings)."
    )
    seed = sample_seed_field("Seed of the sample; each rater's order is derived.")
    design = models.JSONField(default=dict, blank=True)
    created_by = creator_field()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "id"]
        constraints = [
            models.UniqueConstraint(fields=["study", "name"], name="panel_name_unique"),
        ]

    def __str__(self) -> str:
        return self.name


class Round(models.Model):
    """One pass of one rater over cells of a study, of a kind that fixes what the rater sees."""

    class Kind(models.TextChoices):
        GOLD = "gold", "gold (whole scan visible)"
        BLINDED = "blinded", "blinded (patch only)"
        REPEAT = "repeat", "repeat (later blinded pass)"
        ADJUDICATION = "adjudication", "adjudication (an overseer settles a panel's disputes)"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="rounds")
    rater = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rounds"
    )
    kind = models.CharField(max_length=12, choices=Kind.choices)
    name = models.CharField(max_length=200, blank=True)
    panel = models.ForeignKey(
        Panel,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="rounds",
        help_text="The panel a blinded round, repeat or adjudication belongs to.",
    )
    not_before = models.DateTimeField(
        null=True, blank=True, help_text="The rater may not open the round before this time."
    )
    # A repeat means nothing without the round it repeats; the reference is only a default.
    repeats = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="repeated_by"
    )
    reference = reference_round_field(
        "The gold round the sample was drawn from; the default partner in reports."
    )
    seed = sample_seed_field("Seed of the sample and of the order of the items.")
    design = models.JSONField(
        default=dict, blank=True, help_text="How the cells were chosen (mode and parameters)."
    )
    created_by = creator_field()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "name"], condition=~Q(name=""), name="round_name_unique"
            ),
            models.UniqueConstraint(
                fields=["study", "rater"], condition=Q(kind="gold"), name="round_one_gold_per_rater"
            ),
            models.CheckConstraint(
                condition=(Q(kind="repeat") & Q(repeats__isnull=False))
                | (~Q(kind="repeat") & Q(repeats__isnull=True)),
                name="round_repeat_names_original",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["gold", "blinded", "repeat", "adjudication"]),
                name="round_kind_known",
            ),
            models.CheckConstraint(
                condition=~Q(kind="adjudication") | Q(panel__isnull=False),
                name="round_adjudication_has_panel",
            ),
        ]

    def __str__(self) -> str:
        return self.name or f"{self.kind} round of {self.rater} in {self.study}"


class RoundItem(models.Model):
    """A cell's place in a blinded round's queue, under an opaque token.

    The token is all the rater's side of the API ever names: it is random, differs between a
    round and its repeat, and says nothing of the cell, its scan or its position.
    """

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="items")
    cell = models.ForeignKey(Cell, on_delete=models.CASCADE, related_name="round_items")
    position = models.PositiveIntegerField(help_text="1-based place in the rater's order.")
    token = models.CharField(max_length=43, unique=True)

    class Meta:
        ordering = ["round", "position"]
        constraints = [
            models.UniqueConstraint(fields=["round", "cell"], name="round_item_cell_once"),
            models.UniqueConstraint(fields=["round", "position"], name="round_item_position"),
            models.CheckConstraint(condition=Q(position__gte=1), name="round_item_position_gte_1"),
        ]

    def __str__(self) -> str:
        return f"item {self.position} of round {self.round_id}"


class Suggestion(models.Model):
    """A trained model's class for a cell that no gold round labelled yet (pre-annotation).

    Shown beside the cell in the gold-round screen, to accept with one key; never anywhere a
    blinded rater can reach. `node` is set where the class is one taxonomy node a label can
    take (a leaf); a merged class (e.g. MYO of the 15-class map) names its code only.
    """

    cell = models.OneToOneField(Cell, on_delete=models.CASCADE, related_name="suggestion")
    code = models.CharField(max_length=16, help_text="The model's class code.")
    node = models.ForeignKey(
        TaxonNode, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    probability = models.FloatField()
    source = models.CharField(max_length=200, help_text="Which model, e.g. training run 12.")
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["cell"]
        constraints = [
            models.CheckConstraint(
                condition=Q(probability__gte=0) & Q(probability__lte=1),
                name="suggestion_probability_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.code} ({self.probability:.2f}) for cell {self.cell_id}"


class Label(models.Model):
    """The current answer of one round for one cell: a taxon node or "cannot classify"."""

    cell = models.ForeignKey(Cell, on_delete=models.CASCADE, related_name="labels")
    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="labels")
    node = models.ForeignKey(
        TaxonNode, null=True, blank=True, on_delete=models.PROTECT, related_name="labels"
    )
    cannot_classify = models.BooleanField(default=False)
    rater = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="labels"
    )
    seconds_spent = models.FloatField(default=0, help_text="Summed over every change.")
    note = models.TextField(
        blank=True, help_text="Why: an adjudicator's reasoning for a consensus label."
    )
    version = models.PositiveIntegerField(default=1, help_text="Raised on every change.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["cell", "round"], name="label_one_per_cell_round"),
            models.CheckConstraint(
                condition=(Q(node__isnull=False) & Q(cannot_classify=False))
                | (Q(node__isnull=True) & Q(cannot_classify=True)),
                name="label_node_xor_cannot_classify",
            ),
            models.CheckConstraint(condition=Q(seconds_spent__gte=0), name="label_seconds_gte_0"),
        ]

    def __str__(self) -> str:
        answer = "cannot classify" if self.cannot_classify else self.node.code
        return f"{answer} for cell {self.cell_id} in round {self.round_id}"


class LabelChange(models.Model):
    """One entry of a label's history: who changed what from what to what, and when.

    Written in the same transaction as the change itself; survives the deletion of the label
    and of its cell.
    """

    class Action(models.TextChoices):
        CREATE = "create", "created"
        UPDATE = "update", "changed"
        DELETE = "delete", "deleted"

    label = models.ForeignKey(
        Label, null=True, blank=True, on_delete=models.SET_NULL, related_name="history"
    )
    cell = models.ForeignKey(
        Cell, null=True, blank=True, on_delete=models.SET_NULL, related_name="label_history"
    )
    cell_ref = models.BigIntegerField(help_text="The cell's id, kept after the cell is deleted.")
    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="label_history")
    action = models.CharField(max_length=8, choices=Action.choices)
    old_node = models.ForeignKey(
        TaxonNode, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    old_cannot_classify = models.BooleanField(default=False)
    new_node = models.ForeignKey(
        TaxonNode, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    new_cannot_classify = models.BooleanField(default=False)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    changed_at = models.DateTimeField(auto_now_add=True)
    seconds_spent = models.FloatField(default=0)
    new_note = models.TextField(blank=True)

    class Meta:
        ordering = ["changed_at", "id"]
        indexes = [models.Index(fields=["cell_ref", "round"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(action__in=["create", "update", "delete"]), name="label_change_action"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} label of cell {self.cell_ref} in round {self.round_id}"


class PatchBatch(LeasedJob):
    """One queued task that cuts a scan's missing patches; held by a lease while it cuts, so a
    batch whose worker died is cut again (core.leases). Removed when done."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        FAILED = "failed", "failed"

    scan = models.ForeignKey(Scan, on_delete=models.CASCADE, related_name="patch_batches")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "failed"]), name="patch_batch_status"
            ),
        ]

    def __str__(self) -> str:
        return f"patch batch {self.pk} of scan {self.scan_id} ({self.status})"


class DetectionJob(LeasedJob):
    """One run of the leukocyte detector (annotator.detection) over a scan, held by a lease
    while it runs (core.leases). Its proposals are written when it ends done, all at once."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    scan = models.ForeignKey(Scan, on_delete=models.CASCADE, related_name="detection_jobs")
    detector_version = models.CharField(max_length=40)
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.QUEUED)
    progress = models.JSONField(
        default=dict, blank=True, help_text="Tiles done and in all, while it runs."
    )
    error = models.TextField(blank=True)
    found_count = models.PositiveIntegerField(
        default=0, help_text="Leukocytes the detector found on the scan."
    )
    new_count = models.PositiveIntegerField(
        default=0, help_text="Of these, the ones not proposed before for this scan and detector."
    )
    created_by = creator_field()
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "done", "failed", "cancelled"]),
                name="detection_job_status",
            ),
            # Asking twice while one runs gets that one (annotator.screening.start_detection).
            models.UniqueConstraint(
                fields=["scan", "detector_version"],
                condition=Q(status__in=["queued", "running"]),
                name="one_unfinished_detection_per_scan_and_version",
            ),
        ]

    def __str__(self) -> str:
        return f"detection {self.pk} of scan {self.scan_id} ({self.status})"


class ProposedCell(models.Model):
    """A leukocyte the detector proposes on a scan: not a cell until someone accepts it. A
    rejected one is kept, so that the same detector never proposes it again on that scan."""

    class Status(models.TextChoices):
        PROPOSED = "proposed", "proposed"
        ACCEPTED = "accepted", "accepted"
        REJECTED = "rejected", "rejected"

    scan = models.ForeignKey(Scan, on_delete=models.CASCADE, related_name="proposed_cells")
    job = models.ForeignKey(DetectionJob, on_delete=models.CASCADE, related_name="proposals")
    detector_version = models.CharField(max_length=40)
    x = models.PositiveIntegerField(help_text="Level-0 pixel column of the centre.")
    y = models.PositiveIntegerField(help_text="Level-0 pixel row of the centre.")
    confidence = models.FloatField(
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
    )
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PROPOSED)
    cell = models.ForeignKey(
        Cell,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The cell it became once accepted.",
    )
    decided_by = creator_field()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["scan", "y", "x"]
        constraints = [
            models.UniqueConstraint(
                fields=["scan", "detector_version", "x", "y"], name="one_proposal_per_spot"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["proposed", "accepted", "rejected"]),
                name="proposed_cell_status",
            ),
            models.CheckConstraint(
                condition=Q(confidence__gte=0.0) & Q(confidence__lte=1.0),
                name="proposed_cell_confidence",
            ),
            models.CheckConstraint(
                condition=Q(cell__isnull=True) | Q(status="accepted"),
                name="only_accepted_proposals_become_cells",
            ),
        ]
        indexes = [models.Index(fields=["scan", "status"], name="proposal_scan_status")]

    def __str__(self) -> str:
        return f"proposal ({self.x}, {self.y}) on scan {self.scan_id} ({self.status})"
