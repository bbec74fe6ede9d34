"""API v1 viewsets: parse, check permission, call the domain function, answer."""

from __future__ import annotations

import tempfile
from pathlib import Path

from django.db import transaction
from django.db.models import Prefetch
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings

from core.api.fields import int_param
from core.http import BoundedFormParser, BoundedJSONParser, BoundedMultiPartParser
from core.params import SEED_MAX

from .. import access, annotation, panel_reports, reports, screening
from ..models import LabelChange, Membership, Taxonomy
from ..scans import import_roots_for, ingest_folder, ingest_scan, safe_file_name
from ..tasks import queue_detection, schedule_patches
from ..uploads import consume as consume_uploads
from . import serializers as s


def expected_version(request) -> int | None:
    """The version a client last saw, from `If-Match: "N"` or `?version=N`."""
    header = request.headers.get("If-Match", "").strip().strip('"').removeprefix("W/").strip('"')
    if header:
        if not header.isdigit():
            raise ValidationError({"If-Match": [f"Must be a version number, not {header!r}."]})
        return int(header)
    return int_param(request, "version")


VERSION_PARAMETER = OpenApiParameter(
    "version", OpenApiTypes.INT, description="The version you last saw (or send If-Match)."
)


class CSVTextRenderer(BaseRenderer):
    """Serves text a view has already laid out as CSV (`?format=csv`); errors as JSON text."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if isinstance(data, str):
            return data.encode(self.charset)
        return JSONRenderer().render(data)


@extend_schema_view(post=extend_schema(summary="Get your API token"))
class AuthTokenView(ObtainAuthToken):
    """Trade your username and password for your API token; send it on every request as
    `Authorization: Token <token>`."""


@extend_schema_view(
    list=extend_schema(summary="List your studies"),
    create=extend_schema(summary="Create a study (staff; you become its admin)"),
    retrieve=extend_schema(summary="Get a study"),
    agreement=extend_schema(summary="Agreement report of a study"),
)
class StudyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Studies the user is a member of. Staff users may create studies (and become their admin)."""

    serializer_class = s.StudySerializer

    def get_queryset(self):
        user = self.request.user
        studies = (
            access.visible_studies(user)
            .select_related("taxonomy")
            .prefetch_related(
                Prefetch("memberships", queryset=Membership.objects.select_related("user"))
            )
            .order_by("name")
        )
        return access.with_visible_scan_count(studies, user)

    def get_serializer_context(self):
        context = super().get_serializer_context()
        context["blinded_study_ids"] = set(
            access.blinded_studies(self.request.user).values_list("pk", flat=True)
        )
        return context

    def get_permissions(self):
        if self.action == "create":
            return [permissions.IsAdminUser()]
        return super().get_permissions()

    @extend_schema(
        parameters=[
            OpenApiParameter("a", str, description="Reference round name (give b with it)."),
            OpenApiParameter("b", str, description="Rater round name."),
            OpenApiParameter("level", str, enum=[reports.LEAF_LEVEL], description="Classes."),
            OpenApiParameter("collapse", str, description="Internal nodes to merge, e.g. MYO,PMO"),
            OpenApiParameter(
                "bootstrap",
                int,
                description=f"Patient-clustered bootstrap size, 0 to {reports.MAX_BOOTSTRAP}.",
            ),
            OpenApiParameter("seed", int, description=f"Seed of the bootstrap, 0 to {SEED_MAX}."),
            OpenApiParameter(
                "panel",
                str,
                description="A panel's name: adds its report as `panel` beside the study's "
                "(with format=csv, the panel's report alone).",
            ),
            OpenApiParameter(
                "panel_bootstrap",
                int,
                description="Replicates of the bootstrap of the panel's Krippendorff alpha, 0 to "
                f"{panel_reports.MAX_REPLICATES} (default {panel_reports.DEFAULT_REPLICATES}).",
            ),
            OpenApiParameter(
                "panel_seed", int, description=f"Seed of the panel's bootstrap, 0 to {SEED_MAX}."
            ),
            OpenApiParameter(
                "disputed",
                int,
                description="How many of the panel's most disputed cells to list, 0 to "
                f"{panel_reports.MAX_DISPUTED} (default {panel_reports.DEFAULT_DISPUTED}).",
            ),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    @action(
        detail=True,
        renderer_classes=[*api_settings.DEFAULT_RENDERER_CLASSES, CSVTextRenderer],
    )
    def agreement(self, request, pk=None):
        """The agreement report (coordinators, data scientists, admins): default pairs are gold
        against every other round and each repeat against the round it repeats. JSON, or
        `?format=csv` for one row per comparison. `?panel=NAME` adds that panel's report as
        `panel` (with CSV: the panel's report alone, one figure a line)."""
        study = self.get_object()
        access.require_role(request.user, study, access.OVERSEEING_ROLES, "read agreement")
        report = reports.ReportRequest.parse(request.query_params).build(study)
        panel = None
        if request.query_params.get("panel"):
            panel = panel_reports.PanelRequest.parse(request.query_params).build(study)
        if request.accepted_renderer.format == "csv":
            name = (
                f"agreement-{study.name}-{panel.panel.name}" if panel else f"agreement-{study.name}"
            )
            response = Response(
                panel_reports.panel_csv(panel) if panel else reports.report_csv(report)
            )
            response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
            return response
        body = report.to_dict()
        if panel:
            body["panel"] = panel.to_dict()
        return Response(body)

    def perform_create(self, serializer):
        study = serializer.save()
        Membership.objects.create(study=study, user=self.request.user, role=Membership.Role.ADMIN)
        study.scan_count = 0


@extend_schema_view(
    list=extend_schema(summary="List taxonomies"),
    retrieve=extend_schema(summary="Get a taxonomy with its tree and groups"),
)
class TaxonomyViewSet(viewsets.ReadOnlyModelViewSet):
    """Every loaded taxonomy version, each with its tree and groups."""

    serializer_class = s.TaxonomySerializer
    queryset = Taxonomy.objects.prefetch_related("nodes", "groups__nodes__taxonomy__nodes")


@extend_schema_view(
    list=extend_schema(summary="List the scans of your studies"),
    create=extend_schema(summary="Register a scan (an upload or a file on the server)"),
    retrieve=extend_schema(summary="Get a scan"),
    detect=extend_schema(summary="Find the cells of a scan (start detection)"),
    proposals=extend_schema(summary="Cells the detector proposes on a scan"),
    accept_proposals=extend_schema(summary="Accept the proposed cells in a view"),
)
class ScanViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Scans of the user's studies; coordinators and admins register new ones."""

    parser_classes = [BoundedMultiPartParser, BoundedFormParser, BoundedJSONParser]

    def get_serializer_class(self):
        return s.ScanCreateSerializer if self.action == "create" else s.ScanSerializer

    def get_serializer_context(self):
        context = super().get_serializer_context()
        context["visible_study_ids"] = set(
            access.visible_studies(self.request.user).values_list("pk", flat=True)
        )
        return context

    @extend_schema(
        parameters=[OpenApiParameter("study", OpenApiTypes.STR, description="Study name.")]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_queryset(self):
        queryset = (
            access.visible_scans(self.request.user)
            .select_related("patient")
            .prefetch_related("studies")
            .order_by("id")
        )
        study = self.request.query_params.get("study")
        if study:
            queryset = queryset.filter(studies__name=study)
        return queryset

    @extend_schema(
        request=s.ScanCreateSerializer, responses={201: s.ScanSerializer, 200: s.ScanSerializer}
    )
    def create(self, request, *args, **kwargs):
        form = s.ScanCreateSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = form.validated_data
        study = data["study"]
        access.require_role(request.user, study, access.MANAGING_ROLES, "add scans")
        options = {
            "study": study,
            "patient_code": data.get("patient") or None,
            "cohort": data.get("cohort", ""),
            "user": request.user,
        }
        if data.get("path"):
            roots = import_roots_for(request.user, study)
            result = ingest_scan(data["path"], roots=roots, **options)
        elif data.get("uploads"):
            with consume_uploads(request.user, study, data["uploads"]) as received:
                result = ingest_folder([(item.name, item.path) for item in received], **options)
        else:
            result = self._ingest_upload(data["file"], options)
        body = s.ScanSerializer(result.scan, context=self.get_serializer_context()).data
        return Response(
            body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        )

    @extend_schema(
        request=s.DetectRequestSerializer,
        responses={202: s.DetectionJobSerializer, 200: s.DetectionJobSerializer},
    )
    @action(detail=True, methods=["post"])
    @transaction.atomic
    def detect(self, request, pk=None):
        """Start the leukocyte detector on the scan (coordinators and admins of its study): a
        new job is 202, the scan's job of this detector version that is unfinished or done
        (unless `rerun`) is 200. Poll it at `/api/v1/detection-jobs/ID/`."""
        form = s.DetectRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        job, created = screening.start_detection(
            self.get_object(), request.user, rerun=form.validated_data["rerun"]
        )
        if created:
            queue_detection(job)
        return Response(
            s.DetectionJobSerializer(job).data,
            status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        )

    @extend_schema(responses=s.ProposedCellSerializer(many=True))
    @action(detail=True)
    def proposals(self, request, pk=None):
        """The cells the detector proposes on the scan and nobody accepted or rejected yet, in
        reading order, each with its confidence."""
        found = screening.proposals(self.get_object(), request.user)
        page = self.paginate_queryset(found)
        return self.get_paginated_response(s.ProposedCellSerializer(page, many=True).data)

    @extend_schema(request=s.AcceptInViewSerializer, responses=s.AcceptedInViewSerializer)
    @action(detail=True, methods=["post"], url_path="proposals/accept")
    def accept_proposals(self, request, pk=None):
        """Accept every proposed cell inside the rectangle (your viewport, level-0 pixels) as
        an unlabelled cell of your gold round's study; label them afterwards."""
        form = s.AcceptInViewSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = form.validated_data
        done = screening.accept_in_view(
            self.get_object(),
            request.user,
            data["x0"],
            data["y0"],
            data["x1"],
            data["y1"],
            study=data.get("study"),
        )
        return Response(s.AcceptedInViewSerializer(done).data)

    @staticmethod
    def _ingest_upload(upload, options):
        name = safe_file_name(upload.name)
        with tempfile.TemporaryDirectory(prefix="cytomark-upload-") as folder:
            target = Path(folder) / name
            with target.open("wb") as handle:
                for chunk in upload.chunks():
                    handle.write(chunk)
            return ingest_scan(target, display_name=name, check_roots=False, **options)


@extend_schema_view(
    retrieve=extend_schema(summary="Get a detection job and its progress"),
    cancel=extend_schema(summary="Cancel a detection job"),
)
class DetectionJobViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Detection jobs of the scans you see whole; `cancel/` stops one (coordinators, admins)."""

    serializer_class = s.DetectionJobSerializer

    def get_queryset(self):
        return access.visible_detection_jobs(self.request.user).order_by("id")

    @extend_schema(request=None, responses=s.DetectionJobSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Stop the job at its next tile; it proposes nothing."""
        job = screening.cancel_detection(self.get_object(), request.user)
        return Response(s.DetectionJobSerializer(job).data)


@extend_schema_view(
    retrieve=extend_schema(summary="Get a proposed cell"),
    accept=extend_schema(summary="Accept a proposed cell with a gold label"),
    reject=extend_schema(summary="Reject a proposed cell"),
    restore=extend_schema(summary="Take a rejection of a proposed cell back"),
)
class ProposalViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Proposed cells of the scans you see whole; annotators accept (with a label) or reject
    each in their gold round."""

    serializer_class = s.ProposedCellSerializer

    def get_queryset(self):
        return access.visible_proposals(self.request.user).order_by("id")

    @extend_schema(
        request=s.ProposalAcceptSerializer, responses={201: s.AcceptedProposalSerializer}
    )
    @action(detail=True, methods=["post"])
    def accept(self, request, pk=None):
        """Make the proposal a cell at its position with your gold label (a node code or
        cannot_classify); a proposal decided already is refused (409)."""
        form = s.ProposalAcceptSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = form.validated_data
        with transaction.atomic():
            done = screening.accept_proposal(
                self.get_object(),
                request.user,
                node=data.get("node"),
                cannot_classify=data["cannot_classify"],
                seconds_spent=data["seconds_spent"],
                study=data.get("study"),
            )
            _queue_patches(done.label)
        body = s.AcceptedProposalSerializer(done, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ProposalDecisionSerializer, responses=s.ProposedCellSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        """Reject the proposal: the same detector never proposes it again on this scan."""
        return self._change_status(request, screening.reject_proposal)

    @extend_schema(request=s.ProposalDecisionSerializer, responses=s.ProposedCellSerializer)
    @action(detail=True, methods=["post"])
    def restore(self, request, pk=None):
        """Put a rejected proposal back to proposed (undo a reject); 409 for one that is not
        rejected. Who may reject it may restore it."""
        return self._change_status(request, screening.restore_proposal)

    def _change_status(self, request, change):
        """Reject or restore the proposal, in the optional `study` of the body."""
        form = s.ProposalDecisionSerializer(
            data=request.data, context=self.get_serializer_context()
        )
        form.is_valid(raise_exception=True)
        proposal = change(self.get_object(), request.user, study=form.validated_data.get("study"))
        return Response(s.ProposedCellSerializer(proposal).data)


@extend_schema_view(
    list=extend_schema(summary="List cells"),
    create=extend_schema(summary="Place a cell"),
    retrieve=extend_schema(summary="Get a cell"),
    partial_update=extend_schema(summary="Move a cell"),
    destroy=extend_schema(summary="Delete a cell"),
)
class CellViewSet(viewsets.ModelViewSet):
    """Cells of the user's studies: place (POST), move (PATCH with version), delete."""

    serializer_class = s.CellSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    @extend_schema(
        parameters=[
            OpenApiParameter("scan", OpenApiTypes.INT, description="Only cells on this scan."),
            OpenApiParameter("study", OpenApiTypes.STR, description="Only cells of this study."),
        ]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_queryset(self):
        queryset = (
            access.visible_cells(self.request.user)
            .select_related("study", "suggestion__node")
            .order_by("id")
        )
        scan = int_param(self.request, "scan")
        if scan is not None:
            # An unknown scan is a 404, not an empty list that reads as "no cells yet".
            if not access.visible_scans(self.request.user).filter(pk=scan).exists():
                raise NotFound(f"No scan {scan} among the scans of your studies.")
            queryset = queryset.filter(scan_id=scan)
        study = self.request.query_params.get("study")
        if study:
            queryset = queryset.filter(study__name=study)
        return queryset

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = annotation.create_cell(
            data["study"], data["scan"], data["x"], data["y"], self.request.user
        )

    @extend_schema(request=s.CellMoveSerializer, responses=s.CellSerializer)
    def partial_update(self, request, *args, **kwargs):
        form = s.CellMoveSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        cell = annotation.move_cell(
            self.get_object(),
            form.validated_data["x"],
            form.validated_data["y"],
            request.user,
            expected_version=form.validated_data["version"],
        )
        return Response(s.CellSerializer(cell, context=self.get_serializer_context()).data)

    @extend_schema(parameters=[VERSION_PARAMETER])
    def destroy(self, request, *args, **kwargs):
        annotation.delete_cell(self.get_object(), request.user, expected_version(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _queue_patches(label) -> None:
    """Once the label is committed, have its scan's new patches cut in the next batch."""
    scan_id = label.cell.scan_id
    if scan_id is not None:
        transaction.on_commit(lambda: schedule_patches(scan_id))


@extend_schema_view(
    list=extend_schema(summary="List labels"),
    create=extend_schema(summary="Label a cell"),
    retrieve=extend_schema(summary="Get a label"),
    partial_update=extend_schema(summary="Change a label"),
    destroy=extend_schema(summary="Delete a label"),
    history=extend_schema(summary="History of a label"),
)
class LabelViewSet(viewsets.ModelViewSet):
    """Labels of the rounds the user may see. POST labels a cell (in your gold round unless a
    round is named); PATCH changes a label and must carry the version you last saw."""

    serializer_class = s.LabelSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    @extend_schema(
        parameters=[
            OpenApiParameter("cell", OpenApiTypes.INT),
            OpenApiParameter("round", OpenApiTypes.INT),
            OpenApiParameter("scan", OpenApiTypes.INT),
        ]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_queryset(self):
        queryset = (
            access.visible_labels(self.request.user).select_related("node", "rater").order_by("id")
        )
        for name, lookup in (("cell", "cell_id"), ("round", "round_id"), ("scan", "cell__scan_id")):
            value = int_param(self.request, name)
            if value is not None:
                queryset = queryset.filter(**{lookup: value})
        return queryset

    # Atomic: the gold round made on first use is kept only when the label is saved too.
    @extend_schema(request=s.LabelWriteSerializer, responses={201: s.LabelSerializer})
    @transaction.atomic
    def create(self, request, *args, **kwargs):
        form = s.LabelWriteSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = form.validated_data
        cell = data["cell"]
        round_ = data.get("round") or annotation.gold_round_for_member(cell.study, request.user)
        label, _ = annotation.set_label(
            cell,
            round_,
            request.user,
            node=data.get("node"),
            cannot_classify=data["cannot_classify"],
            seconds_spent=data["seconds_spent"],
            create_only=True,
        )
        _queue_patches(label)
        return Response(s.LabelSerializer(label).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.LabelUpdateSerializer, responses=s.LabelSerializer)
    def partial_update(self, request, *args, **kwargs):
        label = self.get_object()
        form = s.LabelUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        label, _ = annotation.set_label(
            label.cell,
            label.round,
            request.user,
            node=data.get("node"),
            cannot_classify=data["cannot_classify"],
            seconds_spent=data["seconds_spent"],
            expected_version=data["version"],
        )
        _queue_patches(label)
        return Response(s.LabelSerializer(label).data)

    @extend_schema(parameters=[VERSION_PARAMETER])
    def destroy(self, request, *args, **kwargs):
        annotation.delete_label(self.get_object(), request.user, expected_version(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses=s.LabelChangeSerializer(many=True))
    @action(detail=True, pagination_class=None)
    def history(self, request, pk=None):
        """Every change of this label: who changed what from what to what, and when."""
        label = self.get_object()
        changes = (
            LabelChange.objects.filter(cell_ref=label.cell_id, round=label.round_id)
            .select_related("old_node", "new_node", "changed_by")
            .order_by("changed_at", "id")
        )
        return Response(s.LabelChangeSerializer(changes, many=True).data)
