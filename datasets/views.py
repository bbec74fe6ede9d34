"""The data set curation page: class map tree, versions, splits and exports of a study."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from annotator.access import overseen_study
from annotator.models import Panel
from core.errors import DomainError
from core.pages import guarded
from core.params import SEED_MAX
from core.url_templates import url_template

from . import classmaps, exports, splits, versions
from .models import ClassMap, DatasetVersion, Export, Split
from .tasks import start_export


def _codes(text: str) -> list[str]:
    return [code.strip() for code in (text or "").split(",") if code.strip()]


def _bounded(low: int, high: int, **kwargs) -> forms.IntegerField:
    """A whole number field whose bounds the domain checks (the same for the API and the
    commands, in the same words); the browser is told them too."""
    return forms.IntegerField(widget=forms.NumberInput(attrs={"min": low, "max": high}), **kwargs)


class ProposalForm(forms.Form):
    threshold = _bounded(0, classmaps.MAX_THRESHOLD, initial=classmaps.DEFAULT_THRESHOLD)
    collapse = forms.CharField(required=False, help_text="e.g. PAT")
    expand = forms.CharField(required=False, help_text="e.g. MYO")


class DatasetForm(forms.Form):
    name = forms.SlugField(max_length=100)
    classmap = forms.ModelChoiceField(queryset=ClassMap.objects.none(), required=False)
    source = forms.CharField(
        max_length=200, initial="gold", help_text="gold, a round's name, majority or adjudicated"
    )
    panel = forms.ModelChoiceField(
        queryset=Panel.objects.none(),
        required=False,
        to_field_name="name",
        empty_label="latest panel",
        help_text="majority / adjudicated only",
    )
    keep_cannot_classify = forms.BooleanField(required=False)
    placed_by = forms.ChoiceField(
        choices=[("", "by hand or detector"), ("hand", "by hand"), ("detector", "by detector")],
        required=False,
        help_text="who placed the cells kept",
    )
    notes = forms.CharField(required=False)


class SplitForm(forms.Form):
    dataset = forms.ModelChoiceField(queryset=DatasetVersion.objects.none())
    strategy = forms.ChoiceField(choices=Split.Strategy.choices)
    k = _bounded(*splits.K_RANGE, initial=5)
    seed = _bounded(0, SEED_MAX, initial=0)
    grouped = forms.BooleanField(required=False, help_text="holdout: whole patients only")


class ExportForm(forms.Form):
    split = forms.ModelChoiceField(queryset=Split.objects.none())
    format = forms.ChoiceField(choices=Export.Format.choices)


def _forms(study, data=None):
    dataset_form = DatasetForm(data if data and data.get("action") == "dataset" else None)
    dataset_form.fields["classmap"].queryset = study.class_maps.all()
    dataset_form.fields["panel"].queryset = study.panels.all()
    split_form = SplitForm(data if data and data.get("action") == "split" else None)
    split_form.fields["dataset"].queryset = study.datasets.defer("manifest")
    export_form = ExportForm(data if data and data.get("action") == "export" else None)
    export_form.fields["split"].queryset = Split.objects.filter(dataset__study=study).defer(
        "folds", "dataset__manifest"
    )
    return dataset_form, split_form, export_form


def _handle_post(request, study, proposal, dataset_form, split_form, export_form) -> str | None:
    """Run the posted action; the message to show, or None when a form has errors."""
    action = request.POST.get("action")
    if action == "classmap":
        made, created = classmaps.save_class_map(
            study, request.POST.get("name", ""), proposal, request.user
        )
        return f"Class map {made} {'saved' if created else 'unchanged'}."
    if action == "dataset" and dataset_form.is_valid():
        data = dataset_form.cleaned_data
        made, created = versions.make_dataset(
            study,
            data["name"],
            request.user,
            source=data["source"],
            panel=data["panel"].name if data["panel"] else "",
            class_map=data["classmap"],
            filters={
                "exclude_cannot_classify": not data["keep_cannot_classify"],
                "placed_by": data["placed_by"],
            },
            notes=data["notes"],
        )
        state = "made" if created else "unchanged: nothing differs from"
        return f"Data set {made} {state} (sha256 {made.sha256[:12]})."
    if action == "split" and split_form.is_valid():
        data = split_form.cleaned_data
        made, created = splits.make_split(
            data["dataset"],
            data["strategy"],
            request.user,
            k=data["k"],
            seed=data["seed"],
            grouped=data["grouped"],
        )
        state = "made" if created else "exists already"
        return f"Split {made.pk} {state} (sha256 {made.sha256[:12]})."
    if action == "export" and export_form.is_valid():
        export = exports.request_export(
            export_form.cleaned_data["split"], export_form.cleaned_data["format"], request.user
        )
        start_export(export)
        return f"Export {export.pk} queued."
    return None


@login_required
def datasets_page(request, study_name: str):
    """Coordinators, data scientists and admins: curate the study's data sets."""
    study = guarded(overseen_study, request.user, study_name, "curate data sets")
    proposal_form = ProposalForm(request.GET or None)
    options = proposal_form.cleaned_data if proposal_form.is_valid() else {}
    proposal, problem = None, ""
    try:
        proposal = classmaps.propose(
            study,
            threshold=options.get("threshold", classmaps.DEFAULT_THRESHOLD),
            collapse=_codes(options.get("collapse")),
            expand=_codes(options.get("expand")),
        )
    except DomainError as exc:
        problem = str(exc)
    dataset_form, split_form, export_form = _forms(study, request.POST or None)
    if request.method == "POST":
        try:
            message = _handle_post(request, study, proposal, dataset_form, split_form, export_form)
        except DomainError as exc:
            messages.error(request, str(exc))
        else:
            if message:
                messages.success(request, message)
                return redirect(request.get_full_path())
    return render(
        request,
        "datasets/datasets.html",
        {
            "study": study,
            "proposal": proposal,
            "problem": problem,
            "proposal_form": proposal_form,
            "dataset_form": dataset_form,
            "split_form": split_form,
            "export_form": export_form,
            "class_maps": study.class_maps.all(),
            "datasets": study.datasets.defer("manifest", "detector_cells").select_related(
                "class_map", "panel"
            ),
            "splits": Split.objects.filter(dataset__study=study)
            .select_related("dataset")
            .defer("folds", "dataset__manifest"),
            "exports": Export.objects.filter(split__dataset__study=study).select_related("split"),
            # The page's script polls each unfinished export there.
            "config": {"urls": {"export": url_template("export-detail", "{id}")}},
        },
    )
