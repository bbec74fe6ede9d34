"""Admin pages. Taxonomies and labels are read-only here: taxonomies come from their YAML files
(`load_taxonomy`), labels from the annotation screens, so their history stays complete."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect

from . import access
from .models import (
    Cell,
    Label,
    LabelChange,
    Membership,
    Patient,
    Round,
    Scan,
    Study,
    TaxonGroup,
    TaxonNode,
    Taxonomy,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class TaxonNodeInline(admin.TabularInline):
    model = TaxonNode
    fields = ["code", "name", "parent", "order", "colour", "hotkey", "is_leaf"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Taxonomy)
class TaxonomyAdmin(ReadOnlyAdmin):
    list_display = ["name", "version", "title", "created_at"]
    inlines = [TaxonNodeInline]


@admin.register(TaxonGroup)
class TaxonGroupAdmin(ReadOnlyAdmin):
    list_display = ["taxonomy", "name", "description"]


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ["code", "cohort", "diagnosis_code", "created_at"]
    search_fields = ["code"]
    list_filter = ["cohort", "diagnosis_code"]


@admin.register(Scan)
class ScanAdmin(admin.ModelAdmin):
    list_display = ["original_name", "kind", "width", "height", "mpp_x", "patient", "added_at"]
    list_filter = ["kind", "vendor"]
    search_fields = ["original_name", "sha256", "patient__code"]
    readonly_fields = [
        "file",
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
        "added_by",
        "added_at",
    ]

    def has_add_permission(self, request):
        return access.managed_studies(request.user).exists()

    def add_view(self, request, form_url="", extra_context=None):
        """The admin's Add leads to the study's Add scans page: a scan is registered from its
        file, which the page (like the API and `add_scans`) checks, where an admin form could
        not."""
        studies = list(access.managed_studies(request.user).order_by("name")[:2])
        if not studies:
            raise PermissionDenied("Only a study's coordinators and admins add scans to it.")
        if len(studies) == 1:
            return redirect("add-scans", studies[0].name)
        messages.info(request, "Scans are added per study: follow a study's Add scans link.")
        return redirect("home")


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ["name", "title", "taxonomy", "created_at"]
    search_fields = ["name", "title"]
    filter_horizontal = ["scans"]
    inlines = [MembershipInline]


@admin.register(Cell)
class CellAdmin(ReadOnlyAdmin):
    list_display = ["id", "study", "scan", "x", "y", "external_id", "created_at"]
    list_filter = ["study"]


@admin.register(Round)
class RoundAdmin(admin.ModelAdmin):
    list_display = ["id", "study", "rater", "kind", "not_before", "repeats", "created_at"]
    list_filter = ["kind", "study"]


@admin.register(Label)
class LabelAdmin(ReadOnlyAdmin):
    list_display = ["id", "cell", "round", "node", "cannot_classify", "rater", "updated_at"]
    list_filter = ["round__study", "round__kind"]


@admin.register(LabelChange)
class LabelChangeAdmin(ReadOnlyAdmin):
    list_display = [
        "changed_at",
        "cell_ref",
        "round",
        "action",
        "old_node",
        "new_node",
        "changed_by",
    ]
    list_filter = ["action"]
