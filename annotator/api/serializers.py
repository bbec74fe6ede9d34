"""Serializers: the shapes the API reads and writes; they validate input, never change data."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api.fields import IdField
from core.api.scoping import ScopedModelSerializer, ScopedSerializer

from ..access import (
    blinded_studies,
    visible_cells,
    visible_scans,
    visible_studies,
    visible_users,
)
from ..models import (
    Cell,
    DetectionJob,
    Label,
    LabelChange,
    Membership,
    ProposedCell,
    Round,
    Scan,
    Study,
    Suggestion,
    TaxonNode,
    Taxonomy,
)
from ..panels import MAX_RATERS, NOTE_LENGTH
from ..taxonomy import group_leaf_codes, taxon_tree


class TaxonNodeSerializer(ScopedModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="code", read_only=True)

    class Meta:
        model = TaxonNode
        fields = ["code", "name", "parent", "order", "colour", "hotkey", "is_leaf", "aliases"]


class TaxonomySummarySerializer(ScopedModelSerializer):
    class Meta:
        model = Taxonomy
        fields = ["id", "name", "version", "title"]


class TaxonomySerializer(ScopedModelSerializer):
    """A taxonomy with its tree (nested children) and its groups expanded to leaves."""

    tree = serializers.SerializerMethodField()
    groups = serializers.SerializerMethodField()
    leaf_count = serializers.SerializerMethodField()

    class Meta:
        model = Taxonomy
        fields = [
            "id",
            "name",
            "version",
            "title",
            "description",
            "source_sha256",
            "created_at",
            "leaf_count",
            "tree",
            "groups",
        ]

    @extend_schema_field(
        {
            "type": "object",
            "description": "The root node; every node has code, name, colour, hotkey, is_leaf "
            "and children (a list of nodes).",
        }
    )
    def get_tree(self, taxonomy: Taxonomy) -> dict:
        tree = taxon_tree(taxonomy)

        def build(node: TaxonNode) -> dict:
            return {
                "code": node.code,
                "name": node.name,
                "colour": node.colour,
                "hotkey": node.hotkey,
                "is_leaf": node.is_leaf,
                "children": [build(kid) for kid in tree.children(node.code)],
            }

        return build(tree.root) if tree.root else {}

    @extend_schema_field(
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "nodes": {"type": "array", "items": {"type": "string"}},
                    "leaves": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    )
    def get_groups(self, taxonomy: Taxonomy) -> list[dict]:
        return [
            {
                "name": group.name,
                "description": group.description,
                "nodes": [node.code for node in group.nodes.all()],
                "leaves": sorted(group_leaf_codes(group)),
            }
            for group in taxonomy.groups.all()
        ]

    def get_leaf_count(self, taxonomy: Taxonomy) -> int:
        return sum(1 for node in taxonomy.nodes.all() if node.is_leaf)


class MembershipSerializer(ScopedModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = Membership
        fields = ["username", "role"]


class StudySerializer(ScopedModelSerializer):
    taxonomy = TaxonomySummarySerializer(read_only=True)
    taxonomy_id = IdField(queryset=Taxonomy.objects.all(), source="taxonomy", write_only=True)
    members = MembershipSerializer(
        source="memberships",
        many=True,
        read_only=True,
        allow_null=True,
        help_text="Null for a study you rate blinded: who else works on it is hidden.",
    )
    scan_count = serializers.IntegerField(
        read_only=True,
        help_text="Scans of the study you can list: none in a study you rate blinded.",
    )
    my_roles = serializers.SerializerMethodField()

    class Meta:
        model = Study
        fields = [
            "id",
            "name",
            "title",
            "description",
            "taxonomy",
            "taxonomy_id",
            "scan_count",
            "patch_size_px",
            "patch_size_um",
            "members",
            "my_roles",
            "created_at",
        ]

    def get_my_roles(self, study: Study) -> list[str]:
        user = self.context["request"].user
        return sorted(m.role for m in study.memberships.all() if m.user_id == user.pk)

    def to_representation(self, instance):
        """A blinded rater does not learn who else is in the study (the gold examiner among
        them); her scan count is already none, as her scan list is empty."""
        data = super().to_representation(instance)
        if instance.pk in self.context.get("blinded_study_ids", ()):
            data["members"] = None
        return data


class ScanSerializer(ScopedModelSerializer):
    patient = serializers.CharField(source="patient.code", default=None, read_only=True)
    cohort = serializers.CharField(source="patient.cohort", default=None, read_only=True)
    studies = serializers.SerializerMethodField()

    class Meta:
        model = Scan
        fields = [
            "id",
            "original_name",
            "kind",
            "vendor",
            "width",
            "height",
            "level_count",
            "mpp_x",
            "mpp_y",
            "size_bytes",
            "sha256",
            "patient",
            "cohort",
            "studies",
            "added_at",
        ]

    def get_studies(self, scan: Scan) -> list[str]:
        visible = self.context.get("visible_study_ids")
        return sorted(s.name for s in scan.studies.all() if visible is None or s.pk in visible)


class DetectionJobSerializer(ScopedModelSerializer):
    """A detection job of a scan: its state, progress (tiles done and in all) and counts."""

    class Meta:
        model = DetectionJob
        fields = [
            "id",
            "scan",
            "detector_version",
            "status",
            "progress",
            "error",
            "found_count",
            "new_count",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class DetectRequestSerializer(ScopedSerializer):
    rerun = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Detect again although a done job of this detector version exists (rejected "
        "proposals stay rejected).",
    )


class ProposedCellSerializer(ScopedModelSerializer):
    """A cell the detector proposes: level-0 centre and confidence; not a cell until accepted."""

    class Meta:
        model = ProposedCell
        fields = ["id", "scan", "x", "y", "confidence", "status", "detector_version", "job"]
        read_only_fields = fields


def _annotated_studies(user):
    """Studies in which the user may accept proposals: theirs, none they rate blinded."""
    return visible_studies(user).exclude(pk__in=blinded_studies(user))


class ProposalAcceptSerializer(ScopedSerializer):
    """The gold label a proposed cell gets when accepted: a node code or cannot_classify."""

    visible_querysets = {"study": _annotated_studies}

    node = serializers.CharField(required=False, allow_null=True, max_length=16)
    cannot_classify = serializers.BooleanField(default=False)
    seconds_spent = serializers.FloatField(min_value=0, max_value=86400, default=0)
    study = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Study.objects.all(),
        required=False,
        help_text="The study whose gold round takes the cell; needed only when the scan is in "
        "several studies you annotate.",
    )


class ProposalDecisionSerializer(ScopedSerializer):
    """Optional study of a rejection (as for accepting)."""

    visible_querysets = {"study": _annotated_studies}

    study = serializers.SlugRelatedField(
        slug_field="name", queryset=Study.objects.all(), required=False
    )


class AcceptInViewSerializer(ProposalDecisionSerializer):
    """A rectangle in level-0 pixels, edges included: the examiner's viewport."""

    x0 = serializers.IntegerField(min_value=0, max_value=10_000_000)
    y0 = serializers.IntegerField(min_value=0, max_value=10_000_000)
    x1 = serializers.IntegerField(min_value=0, max_value=10_000_000)
    y1 = serializers.IntegerField(min_value=0, max_value=10_000_000)

    def validate(self, attrs):
        if attrs["x1"] < attrs["x0"] or attrs["y1"] < attrs["y0"]:
            raise serializers.ValidationError("The view is empty: give x1 >= x0 and y1 >= y0.")
        return attrs


class ProposalBecameSerializer(ScopedSerializer):
    proposal = serializers.IntegerField(help_text="The accepted proposal's id.")
    cell = serializers.IntegerField(help_text="The id of the cell it became.")


class AcceptedInViewSerializer(ScopedSerializer):
    accepted = serializers.IntegerField(help_text="Proposals made unlabelled cells.")
    cells = ProposalBecameSerializer(many=True)


class ScanCreateSerializer(ScopedSerializer):
    """Register a scan: send the file, name finished tus uploads, or name a file under a server
    import root (docs/scans.md)."""

    visible_querysets = {"study": visible_studies}

    study = serializers.SlugRelatedField(slug_field="name", queryset=Study.objects.all())
    file = serializers.FileField(required=False, allow_empty_file=True)
    path = serializers.CharField(required=False, max_length=1000)
    uploads = serializers.ListField(
        child=serializers.UUIDField(),
        required=False,
        allow_empty=False,
        max_length=10_000,
        help_text="Ids of finished uploads (/api/v1/uploads/): one file, one .zip, or the "
        "files of one folder, each with its relative_path.",
    )
    patient = serializers.CharField(required=False, max_length=64, allow_blank=True)
    cohort = serializers.CharField(required=False, max_length=64, allow_blank=True, default="")

    def validate(self, attrs):
        if sum(bool(attrs.get(key)) for key in ("file", "path", "uploads")) != 1:
            raise serializers.ValidationError(
                {
                    "file": [
                        "Send exactly one of a file ('file'), finished uploads ('uploads') or "
                        "a server path ('path')."
                    ]
                }
            )
        if attrs.get("uploads") and len(set(attrs["uploads"])) != len(attrs["uploads"]):
            raise serializers.ValidationError({"uploads": ["An upload is named twice."]})
        return attrs


class CellSerializer(ScopedModelSerializer):
    # A study the user rates blinded, and its scans, read as unknown here: placing a cell
    # would otherwise tell the rater which scans belong to it, and how large they are.
    visible_querysets = {
        "study": lambda user: visible_studies(user).exclude(pk__in=blinded_studies(user)),
        "scan": visible_scans,
    }

    study = serializers.SlugRelatedField(slug_field="name", queryset=Study.objects.all())
    scan = IdField(queryset=Scan.objects.all())
    x = serializers.IntegerField(min_value=0)
    y = serializers.IntegerField(min_value=0)
    patch_url = serializers.SerializerMethodField()
    suggestion = serializers.SerializerMethodField()

    class Meta:
        model = Cell
        fields = [
            "id",
            "study",
            "scan",
            "x",
            "y",
            "external_id",
            "version",
            "patch_url",
            "suggestion",
            "created_at",
        ]
        read_only_fields = ["external_id", "version", "created_at"]

    def get_patch_url(self, cell: Cell) -> str:
        return reverse("cell-patch", args=[cell.pk])

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_suggestion(self, cell: Cell) -> dict | None:
        """A trained model's class for the cell (pre-annotation), if any."""
        try:
            found = cell.suggestion
        except Suggestion.DoesNotExist:
            return None
        return {
            "code": found.code,
            "node": found.node.code if found.node_id else None,
            "probability": round(found.probability, 4),
            "source": found.source,
        }


class CellMoveSerializer(ScopedSerializer):
    x = serializers.IntegerField(min_value=0)
    y = serializers.IntegerField(min_value=0)
    version = serializers.IntegerField(min_value=1)


class LabelSerializer(ScopedModelSerializer):
    node = serializers.SlugRelatedField(slug_field="code", read_only=True)
    rater = serializers.CharField(source="rater.username", read_only=True)

    class Meta:
        model = Label
        fields = [
            "id",
            "cell",
            "round",
            "node",
            "cannot_classify",
            "rater",
            "seconds_spent",
            "version",
            "created_at",
            "updated_at",
        ]


class LabelWriteSerializer(ScopedSerializer):
    """Input of a label: a node code or cannot_classify, and the seconds spent on it."""

    visible_querysets = {
        "cell": visible_cells,
        # Only gold rounds take labels by cell id: a blinded round's answers go by item token
        # (annotator.blinding), an adjudication's through its own endpoint (annotator.panels).
        "round": lambda user: Round.objects.filter(rater=user, kind=Round.Kind.GOLD),
    }

    cell = IdField(queryset=Cell.objects.all())
    round = IdField(
        queryset=Round.objects.all(),
        required=False,
        help_text="Defaults to your gold round of the cell's study.",
    )
    node = serializers.CharField(required=False, allow_null=True, max_length=16)
    cannot_classify = serializers.BooleanField(default=False)
    seconds_spent = serializers.FloatField(min_value=0, max_value=86400, default=0)


class LabelUpdateSerializer(ScopedSerializer):
    node = serializers.CharField(required=False, allow_null=True, max_length=16)
    cannot_classify = serializers.BooleanField(default=False)
    seconds_spent = serializers.FloatField(min_value=0, max_value=86400, default=0)
    version = serializers.IntegerField(min_value=1)


class LabelChangeSerializer(ScopedModelSerializer):
    old_node = serializers.SlugRelatedField(slug_field="code", read_only=True)
    new_node = serializers.SlugRelatedField(slug_field="code", read_only=True)
    changed_by = serializers.CharField(source="changed_by.username", read_only=True)
    cell = serializers.IntegerField(source="cell_ref", read_only=True)

    class Meta:
        model = LabelChange
        fields = [
            "id",
            "cell",
            "round",
            "action",
            "old_node",
            "old_cannot_classify",
            "new_node",
            "new_cannot_classify",
            "changed_by",
            "changed_at",
            "seconds_spent",
        ]


class RoundSerializer(ScopedModelSerializer):
    """A round with its progress. How its sample was drawn (reference, seed, design) is shown
    only to those who oversee the study: a blinded rater must not learn that their sample was,
    say, ten cells of every gold class."""

    rater = serializers.CharField(source="rater.username", read_only=True)
    study = serializers.SlugRelatedField(slug_field="name", read_only=True)
    repeats = serializers.SlugRelatedField(slug_field="name", read_only=True)
    reference = serializers.SlugRelatedField(slug_field="name", read_only=True)
    done = serializers.IntegerField(read_only=True)
    total = serializers.IntegerField(read_only=True)

    OVERSEER_ONLY = ("reference", "seed", "design")
    schema_optional_fields = OVERSEER_ONLY

    class Meta:
        model = Round
        fields = [
            "id",
            "study",
            "rater",
            "kind",
            "name",
            "not_before",
            "repeats",
            "reference",
            "seed",
            "design",
            "done",
            "total",
            "created_at",
        ]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if instance.study_id not in self.context.get("overseen_study_ids", set()):
            for name in self.OVERSEER_ONLY:
                data.pop(name, None)
        return data


class RoundCreateSerializer(ScopedSerializer):
    """A blinded round for a rater over a seeded sample of a gold round's cells."""

    visible_querysets = {"study": visible_studies}

    study = serializers.SlugRelatedField(slug_field="name", queryset=Study.objects.all())
    rater = serializers.SlugRelatedField(
        slug_field="username", queryset=get_user_model().objects.all(), help_text="Username."
    )
    mode = serializers.ChoiceField(choices=["all", "per-class", "fraction"], default="all")
    per_class = serializers.JSONField(
        required=False, help_text="per-class mode: a number for every class, or {code: number}."
    )
    fraction = serializers.FloatField(
        required=False, help_text="fraction mode: the share of the cells, in (0, 1]."
    )
    seed = serializers.IntegerField(required=False)
    reference = serializers.CharField(
        required=False, max_length=200, help_text="Name of a gold round; default the largest."
    )
    name = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")

    def validate(self, attrs):
        study = attrs["study"]
        name = attrs.get("reference")
        if name:
            found = study.rounds.filter(name=name, kind=Round.Kind.GOLD).first()
            if found is None:
                raise serializers.ValidationError(
                    {"reference": [f"No gold round named {name!r} in study {study.name}."]}
                )
            attrs["reference"] = found
        return attrs


class RepeatCreateSerializer(ScopedSerializer):
    not_before = serializers.DateTimeField(
        help_text="The rater cannot open the repeat before this time (the washout)."
    )
    seed = serializers.IntegerField(required=False)
    name = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")


class QueueAnswerSerializer(ScopedSerializer):
    node = serializers.CharField(required=False, allow_null=True, max_length=16)
    cannot_classify = serializers.BooleanField(default=False)
    seconds_spent = serializers.FloatField(min_value=0, max_value=86400, default=0)


class PanelCreateSerializer(RoundCreateSerializer):
    """A panel: one seeded sample of a gold round's cells as a blinded round for each rater,
    each in an order of its own, and optionally a repeat per rater after a washout."""

    visible_querysets = {"study": visible_studies}

    rater = None
    raters = serializers.ListField(
        child=serializers.CharField(max_length=150),
        max_length=MAX_RATERS,
        help_text="Usernames of the panel's raters (annotators of the study who can log in).",
    )
    name = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")
    repeat_not_before = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="When given, each rater also gets a repeat they cannot open before this time.",
    )

    def validate(self, attrs):
        attrs = super().validate(attrs)
        names = attrs["raters"]
        found = {
            user.get_username(): user
            for user in visible_users(self.context["request"].user).filter(username__in=names)
        }
        unknown = sorted(set(names) - set(found))
        if unknown:
            raise serializers.ValidationError(
                {"raters": [f"No member of your studies named {', '.join(unknown)}."]}
            )
        attrs["raters"] = [found[name] for name in names]
        return attrs


class PanelRoundSerializer(ScopedSerializer):
    """One rater's round of a panel, with progress and whether the rater can open it now."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()
    rater = serializers.CharField()
    repeats = serializers.CharField(allow_null=True)
    not_before = serializers.DateTimeField(allow_null=True)
    done = serializers.IntegerField()
    total = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["open", "finished", "waiting", "closed"])


class AdjudicationSerializer(ScopedSerializer):
    """An adjudication round: who settles it, the rule that picked its cells, and progress."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    panel = serializers.CharField()
    study = serializers.CharField()
    adjudicator = serializers.CharField()
    rule = serializers.CharField()
    share = serializers.FloatField(allow_null=True)
    with_reference = serializers.BooleanField()
    done = serializers.IntegerField()
    total = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class PanelSerializer(ScopedSerializer):
    """A panel with each rater's rounds and progress, and its adjudication rounds."""

    id = serializers.IntegerField()
    study = serializers.CharField()
    name = serializers.CharField()
    reference = serializers.CharField(allow_null=True)
    seed = serializers.IntegerField(allow_null=True)
    design = serializers.DictField()
    created_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    rounds = PanelRoundSerializer(many=True)
    adjudications = AdjudicationSerializer(many=True)


class AdjudicationCreateSerializer(ScopedSerializer):
    """Open an adjudication round over the panel's cells that the rule picks."""

    visible_querysets = {"adjudicator": visible_users}

    adjudicator = serializers.SlugRelatedField(
        slug_field="username",
        queryset=get_user_model().objects.all(),
        help_text="Username of a coordinator, data scientist or admin of the study.",
    )
    rule = serializers.ChoiceField(choices=["any", "no-majority", "below-share"], default="any")
    share = serializers.FloatField(
        required=False,
        allow_null=True,
        help_text="below-share: a cell is disputed when its winner has less than this share.",
    )
    with_reference = serializers.BooleanField(
        default=False, help_text="Count the reference's answer as one more answer."
    )
    name = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")


class VoteSerializer(ScopedSerializer):
    winner = serializers.CharField(allow_null=True)
    votes = serializers.IntegerField()
    answered = serializers.IntegerField()
    declined = serializers.IntegerField()
    share = serializers.FloatField(allow_null=True)


class PanelCellVoteSerializer(ScopedSerializer):
    cell = serializers.IntegerField()
    answers = serializers.DictField(child=serializers.CharField(allow_null=True))
    reference = serializers.CharField(allow_null=True)
    vote = VoteSerializer()


class PanelVotesSerializer(ScopedSerializer):
    """Each panel cell's majority vote, with the tie rule that decided it."""

    panel = serializers.CharField()
    tie_rule = serializers.CharField()
    with_reference = serializers.BooleanField()
    raters = serializers.ListField(child=serializers.CharField())
    cells = PanelCellVoteSerializer(many=True)


class ConsensusSerializer(ScopedSerializer):
    """A consensus label recorded by the adjudicator."""

    node = serializers.CharField(allow_null=True)
    cannot_classify = serializers.BooleanField()
    note = serializers.CharField(allow_blank=True)
    version = serializers.IntegerField()


class DisputeSerializer(ScopedSerializer):
    """What the adjudicator sees of one cell: every panel answer by rater, the reference's
    answer, the vote, the consensus so far, the patch, and where a scan cell lies."""

    position = serializers.IntegerField()
    cell = serializers.IntegerField()
    answers = serializers.DictField(child=serializers.CharField(allow_null=True))
    reference = serializers.CharField(allow_null=True)
    vote = VoteSerializer()
    consensus = ConsensusSerializer(allow_null=True)
    patch = serializers.CharField()
    scan = serializers.IntegerField(allow_null=True)
    x = serializers.IntegerField(allow_null=True)
    y = serializers.IntegerField(allow_null=True)


class ConsensusWriteSerializer(ScopedSerializer):
    """The consensus for one cell: a leaf code or cannot_classify, a note, and the version of
    the consensus label you changed (when there is one already)."""

    node = serializers.CharField(required=False, allow_null=True, max_length=16)
    cannot_classify = serializers.BooleanField(default=False)
    note = serializers.CharField(
        required=False, allow_blank=True, max_length=NOTE_LENGTH, default=""
    )
    version = serializers.IntegerField(
        required=False, min_value=1, help_text="The version you saw; omit for a first label."
    )


class AcceptedProposalSerializer(ScopedSerializer):
    """An accepted proposal with the cell it became and that cell's gold label."""

    proposal = ProposedCellSerializer()
    cell = CellSerializer()
    label = LabelSerializer(allow_null=True)
