"""HTML pages of the annotator app (thin: query, render)."""

from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Prefetch
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.http import require_GET

from . import access, annotation
from .models import Cell, Membership, Round, Scan
from .taxonomy import group_leaf_codes


@login_required
def home(request):
    """The user's studies, each with its scans and, per scan, the cells and the user's progress."""
    studies = list(
        access.visible_studies(request.user)
        .select_related("taxonomy")
        .prefetch_related(
            Prefetch("scans", queryset=Scan.objects.select_related("patient").order_by("id")),
            Prefetch("memberships", queryset=Membership.objects.filter(user=request.user)),
        )
        .order_by("name")
    )
    cells = Cell.objects.filter(study__in=studies, scan__isnull=False)
    totals = {
        (row["study"], row["scan"]): row["n"]
        for row in cells.values("study", "scan").annotate(n=Count("id"))
    }
    mine = {
        (row["study"], row["scan"]): row["n"]
        for row in cells.filter(
            labels__round__rater=request.user, labels__round__kind=Round.Kind.GOLD
        )
        .values("study", "scan")
        .annotate(n=Count("id", distinct=True))
    }
    for study in studies:
        study.can_annotate = bool(access.roles_in(request.user, study) & access.ANNOTATING_ROLES)
        study.scan_rows = [
            {
                "scan": scan,
                "cells": totals.get((study.pk, scan.pk), 0),
                "labelled": mine.get((study.pk, scan.pk), 0),
            }
            for scan in study.scans.all()
        ]
    return render(request, "annotator/home.html", {"studies": studies})


@login_required
def annotate(request, study_name: str, scan_id: int):
    """The gold-round annotation screen of one scan: viewer, markers, picker, counts."""
    study = get_object_or_404(access.visible_studies(request.user), name=study_name)
    scan = get_object_or_404(study.scans.all(), pk=scan_id)
    round_ = annotation.gold_round_for_member(study, request.user)
    config = {
        "study": study.name,
        "round": round_.pk,
        "scan": {
            "id": scan.pk,
            "name": scan.original_name,
            "width": scan.width,
            "height": scan.height,
            "mpp": scan.mpp_x,
        },
        "taxonomy": taxonomy_for_screen(study.taxonomy),
        "urls": {
            "dzi": reverse("scan-dzi", args=[scan.pk]),
            "cells": reverse("cell-list"),
            "labels": reverse("label-list"),
            "osdImages": static("vendor/openseadragon/images/"),
        },
    }
    return render(
        request, "annotator/annotate.html", {"study": study, "scan": scan, "config": config}
    )


def taxonomy_for_screen(taxonomy) -> dict:
    """The tree, hotkeys, colours and groups the annotation screen needs, as plain data."""
    nodes = list(taxonomy.nodes.select_related("parent").order_by("order", "code"))
    return {
        "name": str(taxonomy),
        "nodes": [
            {
                "code": node.code,
                "name": node.name,
                "parent": node.parent.code if node.parent else None,
                "colour": node.colour,
                "hotkey": node.hotkey,
                "leaf": node.is_leaf,
            }
            for node in nodes
        ],
        "groups": {
            group.name: sorted(group_leaf_codes(group))
            for group in taxonomy.groups.prefetch_related("nodes")
        },
    }


@require_GET
def health(request):
    """Liveness for load balancers: the database and the cache answer."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        cache.set("health-probe", "ok", 5)
        checks["cache"] = "ok" if cache.get("health-probe") == "ok" else "error: no round trip"
    except Exception as exc:
        checks["cache"] = f"error: {exc.__class__.__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "error", **checks}, status=200 if healthy else 503
    )
