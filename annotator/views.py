"""HTML pages of the annotator app (thin: query, render)."""

from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Prefetch
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from . import access
from .models import Membership, Scan


@login_required
def home(request):
    """The user's studies, each with its scans and the user's roles in it."""
    studies = (
        access.visible_studies(request.user)
        .select_related("taxonomy")
        .prefetch_related(
            Prefetch(
                "scans",
                queryset=Scan.objects.select_related("patient").annotate(
                    cell_count=Count("cells", distinct=True)
                ),
            ),
            Prefetch("memberships", queryset=Membership.objects.filter(user=request.user)),
        )
        .order_by("name")
    )
    return render(request, "annotator/home.html", {"studies": studies})


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
