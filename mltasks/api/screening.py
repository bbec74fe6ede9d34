"""API of the model's smear counts: classify a study's scans with a finished run, watch and
cancel the classifications, read the differential counts per scan and per patient, and the
gallery of a scan's cells ranked by P(group), each cell's patch with it."""

from __future__ import annotations

import io

from django.db import transaction
from django.http import HttpResponse, JsonResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from annotator import patches
from annotator.access import OVERSEEING_ROLES, roles_in
from annotator.models import Patient, Scan
from core.api.binary import JPEGRenderer, binary_responses, bytes_view
from core.api.scoping import ScopedModelSerializer, ScopedSerializer
from core.errors import DomainError, NotFoundError
from core.params import whole_number

from .. import smear_counts
from ..access import visible_classifications, visible_classified_cells
from ..models import ClassifiedCell, ScanClassification
from ..tasks import queue_classification

GALLERY_LIMIT = 200
ID_MAX = 2**63 - 1


class ScanClassificationSerializer(ScopedModelSerializer):
    """A scan counted by a run's models: state, progress (cells done and in all), timing."""

    class Meta:
        model = ScanClassification
        fields = [
            "id",
            "run",
            "scan",
            "status",
            "progress",
            "error",
            "device",
            "cell_count",
            "seconds",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class ClassifyRequestSerializer(ScopedSerializer):
    scans = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        help_text="Scan ids of the run's study; all its scans with cells found when left out.",
    )
    rerun = serializers.BooleanField(
        required=False, default=False, help_text="Classify again a scan classified before."
    )


def _scans_to_classify(run, wanted: list[int] | None) -> list[Scan]:
    study = run.split.dataset.study
    scans = study.scans.order_by("pk")
    if wanted is None:
        return [scan for scan in scans if smear_counts.leukocytes(scan, study)]
    found = {scan.pk: scan for scan in scans.filter(pk__in=wanted)}
    missing = [pk for pk in wanted if pk not in found]
    if missing:
        raise ValidationError({"scans": [f"Not scans of study {study.name}: {missing}."]})
    return [found[pk] for pk in dict.fromkeys(wanted)]


class SmearCountActions:
    """The training-run actions of smear counting (mixed into TrainingRunViewSet)."""

    @extend_schema(
        summary="Count scans with a run's models",
        request=ClassifyRequestSerializer,
        responses={202: OpenApiTypes.OBJECT},
    )
    @action(detail=True, methods=["post"])
    def classify(self, request, pk=None):
        """Classify every leukocyte found on the scans (the detector's proposals not rejected
        and the cells placed by hand) with the finished run's models, on the `training` queue.
        Answers the scans' classifications, new or unfinished or done before (unless `rerun`),
        and the scans left out with why."""
        run = self.get_object()
        form = ClassifyRequestSerializer(data=request.data, context={"request": request})
        form.is_valid(raise_exception=True)
        if run.status != run.Status.DONE:
            raise ValidationError({"run": [f"Run {run.pk} is {run.status}; it has no models."]})
        jobs, skipped = [], []
        with transaction.atomic():
            for scan in _scans_to_classify(run, form.validated_data.get("scans")):
                try:
                    job, created = smear_counts.start_classification(
                        run, scan, request.user, rerun=form.validated_data["rerun"]
                    )
                except DomainError as exc:
                    skipped.append({"scan": scan.pk, "reason": str(exc)})
                    continue
                if created:
                    queue_classification(job)
                jobs.append(job)
        return Response(
            {
                "classifications": ScanClassificationSerializer(jobs, many=True).data,
                "skipped": skipped,
            },
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(
        summary="The model's differential count of a scan or a patient",
        parameters=[
            OpenApiParameter("scan", int, description="A scan of the run's study."),
            OpenApiParameter("patient", str, description="A patient's code (instead of scan)."),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    @action(detail=True)
    def counts(self, request, pk=None):
        """Class and group shares with Wilson 95 % intervals from the model's classes of the
        counted cells, beside the examiners' gold labels of the same cells' scan or patient;
        cells answered "cannot classify" stay out of both."""
        run = self.get_object()
        study = run.split.dataset.study
        scan_id, code = request.query_params.get("scan"), request.query_params.get("patient")
        if bool(scan_id) == bool(code):
            raise ValidationError(
                {"detail": "Name one scan (?scan=ID) or one patient (?patient=)."}
            )
        if scan_id:
            scan = study.scans.filter(pk=whole_number(scan_id, "scan", 1, ID_MAX)).first()
            if scan is None:
                raise NotFoundError(f"No scan {scan_id} in study {study.name}.")
            return Response(smear_counts.scan_report(run, scan))
        patient = Patient.objects.filter(code=code, scans__studies=study).distinct().first()
        if patient is None:
            raise NotFoundError(f"No patient {code!r} with scans in study {study.name}.")
        return Response(smear_counts.patient_report(run, patient))


class GalleryCellSerializer(ScopedSerializer):
    id = serializers.IntegerField()
    x = serializers.IntegerField()
    y = serializers.IntegerField()
    predicted = serializers.CharField()
    probability = serializers.FloatField(help_text="P(group): the group's classes summed.")
    proposal = serializers.IntegerField(allow_null=True)
    cell = serializers.IntegerField(allow_null=True)
    patch = serializers.CharField(help_text="URL of the cell's patch (JPEG).")
    viewer = serializers.CharField(help_text="The gold viewer, opened at the cell.")


class GallerySerializer(ScopedSerializer):
    group = serializers.CharField()
    total = serializers.IntegerField(help_text="Counted cells of the scan.")
    offset = serializers.IntegerField()
    cells = GalleryCellSerializer(many=True)


def gallery_items(
    job: ScanClassification, group: str, limit: int, offset: int, *, leave_out_uncountable: bool
) -> dict:
    total, ranked = smear_counts.gallery(
        job, group, limit=limit, offset=offset, leave_out_uncountable=leave_out_uncountable
    )
    study = job.run.split.dataset.study
    viewer = reverse("annotate", args=[study.name, job.scan_id])
    items = [
        {
            "id": cell.pk,
            "x": cell.x,
            "y": cell.y,
            "predicted": cell.predicted,
            "probability": round(probability, 6),
            "proposal": cell.proposal_id,
            "cell": cell.cell_id,
            "patch": reverse("classified-cell-patch", args=[cell.pk]),
            "viewer": f"{viewer}?at={cell.x},{cell.y}",
        }
        for cell, probability in ranked
    ]
    return {"group": group, "total": total, "offset": offset, "cells": items}


def _whole(text: str | None, name: str, default: int, most: int) -> int:
    return default if text in (None, "") else whole_number(text, name, 0, most)


@extend_schema_view(
    list=extend_schema(summary="List scan classifications"),
    retrieve=extend_schema(summary="Get a scan classification and its progress"),
)
class ScanClassificationViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Scans counted by runs of the studies you oversee (`?run=`, `?scan=` filter the list)."""

    serializer_class = ScanClassificationSerializer

    def get_queryset(self):
        found = visible_classifications(self.request.user).order_by("-id")
        for name in ("run", "scan"):
            value = self.request.query_params.get(name)
            if value is not None:
                found = found.filter(**{f"{name}_id": whole_number(value, name, 1, ID_MAX)})
        return found

    @extend_schema(summary="Cancel a scan classification", request=None)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = smear_counts.cancel_classification(self.get_object(), request.user)
        return Response(ScanClassificationSerializer(job).data)

    @extend_schema(
        summary="A classified scan's cells ranked by P(group)",
        parameters=[
            OpenApiParameter("group", str, description="A taxonomy group; `blast` by default."),
            OpenApiParameter("limit", int, description=f"At most {GALLERY_LIMIT}; 60 by default."),
            OpenApiParameter("offset", int),
        ],
        responses={200: GallerySerializer},
    )
    @action(detail=True)
    def gallery(self, request, pk=None):
        """The counted cells, highest P(group) first, each with its patch and a link that
        opens the gold viewer at it: the suspicious cells for a person to look at."""
        job = self.get_object()
        if job.status != job.Status.DONE:
            raise ValidationError({"detail": f"Classification {job.pk} is {job.status}."})
        params = request.query_params
        limit = _whole(params.get("limit"), "limit", 60, GALLERY_LIMIT)
        offset = _whole(params.get("offset"), "offset", 0, 10**9)
        study = job.run.split.dataset.study
        overseer = bool(roles_in(request.user, study) & OVERSEEING_ROLES)
        data = gallery_items(
            job, params.get("group") or "blast", limit, offset, leave_out_uncountable=overseer
        )
        return Response(data)


@extend_schema(
    operation_id="classified_cells_patch_retrieve",
    summary="The patch of a classified cell",
    responses=binary_responses(
        "image/jpeg",
        "The study's patch around the cell.",
        {401: "Not logged in.", 404: "No such classified cell among those you may see."},
    ),
)
@bytes_view(JPEGRenderer)
def classified_cell_patch(request, classified_cell_id: int):
    """The patch the models classified, cut afresh at the cell's position (JPEG)."""
    if not request.user.is_authenticated:
        return JsonResponse({"detail": "Log in, or send an API token, to see patches."}, status=401)
    found = visible_classified_cells(request.user).select_related("job__scan", "job__run")
    cell: ClassifiedCell | None = found.filter(pk=classified_cell_id).first()
    if cell is None:
        return JsonResponse(
            {"detail": f"No classified cell {classified_cell_id} you may see."}, status=404
        )
    scan = cell.job.scan
    geometry = patches.geometry_at(cell.job.run.split.dataset.study, scan, cell.x, cell.y)
    buffer = io.BytesIO()
    patches.patch_image(scan, geometry).save(buffer, "JPEG", quality=90)
    response = HttpResponse(buffer.getvalue(), content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=3600"
    return response
