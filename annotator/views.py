"""HTML pages of the annotator app (thin: query, render)."""

from collections.abc import Callable
from datetime import UTC
from typing import NamedTuple
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Prefetch
from django.http import Http404, QueryDict
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.http import require_GET

from core.errors import DomainError
from core.pages import guarded
from core.scan_links import scan_links
from core.url_templates import url_template

from . import (
    access,
    annotation,
    blinding,
    diagnoses,
    panel_reports,
    panels,
    reports,
    rounds,
    screening,
)
from .api.serializers import DetectionJobSerializer
from .models import Cell, Membership, Panel, Round, Study
from .panel_agreement import CANNOT_CLASSIFY
from .taxonomy import group_leaf_codes


@login_required
def home(request):
    """The user's studies, each with its scans and, per scan, the cells and the user's progress."""
    studies = list(
        access.visible_studies(request.user)
        .select_related("taxonomy")
        .prefetch_related(
            Prefetch(
                "scans",
                queryset=access.visible_scans(request.user)
                .select_related("patient")
                .order_by("id"),
            ),
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
    blinded = set(access.blinded_studies(request.user).values_list("pk", flat=True))
    adjudications = rounds.progress(
        panels.visible_adjudications(request.user).filter(rater=request.user).order_by("id")
    )
    queue = blinding.queue_summary(request.user)
    queue_study = dict(blinding.rater_rounds(request.user).values_list("pk", "study_id"))
    detections = {}  # scan id -> its last detection job, for the scans the user may detect on
    for study in studies:
        roles = access.roles_in(request.user, study)
        study.blinded = study.pk in blinded
        study.queue = [row for row in queue if queue_study[row["id"]] == study.pk]
        study.adjudications = [a for a in adjudications if a.round.study_id == study.pk]
        study.oversees = bool(roles & access.OVERSEEING_ROLES)
        study.can_annotate = bool(roles & access.ANNOTATING_ROLES) and not study.blinded
        study.can_add_scans = bool(roles & access.MANAGING_ROLES)
        # Detection is started from here too: a coordinator who does not annotate never
        # opens the viewer, where the other Find cells button is.
        study.can_detect = study.can_add_scans
        if study.blinded:
            study.scan_rows = []
            continue
        if study.can_detect:
            detections.update(
                {
                    scan_id: DetectionJobSerializer(job).data
                    for scan_id, job in screening.latest_jobs(
                        # Not a scan shared with a study the user rates blinded.
                        study.scans.filter(pk__in=access.visible_scans(request.user))
                    ).items()
                }
            )
        study.scan_rows = [
            {
                "scan": scan,
                "cells": totals.get((study.pk, scan.pk), 0),
                "labelled": mine.get((study.pk, scan.pk), 0),
            }
            for scan in study.scans.all()
        ]
    config = {
        "detections": detections,
        "urls": {
            "detect": url_template("scan-detect", "{id}"),
            "job": url_template("detection-job-detail", "{id}"),
        },
    }
    return render(request, "annotator/home.html", {"studies": studies, "config": config})


@login_required
def annotate(request, study_name: str, scan_id: int):
    """The gold-round annotation screen of one scan: viewer, markers, picker, counts."""
    study = access.visible_studies(request.user).filter(name=study_name).first()
    scan = study and access.visible_scans(request.user).filter(studies=study, pk=scan_id).first()
    if not scan:
        # One sentence for a scan that does not exist and one the user may not open.
        raise Http404("No such scan among those you may open in this study.")
    round_ = guarded(annotation.gold_round_for_member, study, request.user)
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
        "tileLinkSeconds": settings.TILE_LINK_SECONDS,
        "urls": {
            "dzi": reverse("scan-dzi", args=[scan.pk]),
            "tileLink": reverse("scan-tile-link", args=[scan.pk]),
            "cells": reverse("cell-list"),
            "cell": url_template("cell-detail", "{id}"),
            "labels": reverse("label-list"),
            "label": url_template("label-detail", "{id}"),
            "proposals": reverse("scan-proposals", args=[scan.pk]),
            "acceptProposal": url_template("proposal-accept", "{id}"),
            "rejectProposal": url_template("proposal-reject", "{id}"),
            "restoreProposal": url_template("proposal-restore", "{id}"),
            "proposal": url_template("proposal-detail", "{id}"),
            "acceptInView": reverse("scan-accept-proposals", args=[scan.pk]),
            "osdImages": static("vendor/openseadragon/images/"),
        },
    }
    can_detect = bool(access.roles_in(request.user, study) & access.MANAGING_ROLES)
    if can_detect:
        last = screening.latest_job(scan)
        config["detection"] = {
            "last": DetectionJobSerializer(last).data if last else None,
            "urls": {
                "detect": reverse("scan-detect", args=[scan.pk]),
                "job": url_template("detection-job-detail", "{id}"),
            },
        }
    return render(
        request,
        "annotator/annotate.html",
        {
            "study": study,
            "scan": scan,
            "config": config,
            "can_detect": can_detect,
            "scan_links": scan_links(request.user, study, scan),
        },
    )


# The Add scans page's retries of a transfer after a lost connection or a 5xx (ms) before its row
# says it stopped and offers to try again; each retry resumes from the server's offset.
UPLOAD_RETRY_DELAYS_MS = [0, 1000, 3000, 5000]


@login_required
@require_GET
def add_scans_page(request, study_name: str):
    """Coordinators and admins: send scan files (several, a folder, .zip files) to the study by
    resumable tus uploads, then register each as a scan; the page shows each one's outcome."""
    study = guarded(access.managed_study, request.user, study_name, "add scans")
    config = {
        "study": study.name,
        "chunkSize": settings.SCAN_UPLOAD_CHUNK_MAX_BYTES,
        "maxBytes": settings.SCAN_UPLOAD_MAX_BYTES,
        "retryDelays": UPLOAD_RETRY_DELAYS_MS,
        # The viewer is the gold-round screen, for those who label: a coordinator who does not
        # gets the outcome without a link.
        "canOpenViewer": bool(access.roles_in(request.user, study) & access.ANNOTATING_ROLES),
        "urls": {
            "uploads": reverse("upload-list"),
            "scans": reverse("scan-list"),
            "annotate": url_template("annotate", study.name, "{id}"),
        },
    }
    return render(request, "annotator/add_scans.html", {"study": study, "config": config})


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


class SamplingForm(forms.Form):
    """How a blinded design samples the gold round's cells."""

    mode = forms.ChoiceField(
        choices=[
            ("per-class", "a number of cells per gold class"),
            ("all", "all labelled cells"),
            ("fraction", "a random fraction"),
        ]
    )
    # The sample's bounds (at least 1 per class; a fraction in (0, 1]) are the domain's
    # (rounds.draw_sample), as for the API.
    per_class = forms.IntegerField(
        required=False, initial=10, widget=forms.NumberInput(attrs={"min": 1})
    )
    fraction = forms.FloatField(
        required=False, widget=forms.NumberInput(attrs={"min": 0, "max": 1, "step": "any"})
    )
    seed = forms.IntegerField(required=False)
    name = forms.CharField(max_length=200, required=False)


class BlindedRoundForm(SamplingForm):
    rater = forms.ModelChoiceField(
        queryset=get_user_model().objects.none(), to_field_name="username"
    )
    field_order = ["rater"]

    def __init__(self, study, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["rater"].queryset = rounds.rater_candidates(study)


class PanelForm(SamplingForm):
    """A panel: the blinded round's sampling, for two raters or more, and an optional repeat
    date for all of them."""

    raters = forms.ModelMultipleChoiceField(
        queryset=get_user_model().objects.none(),
        to_field_name="username",
        widget=forms.CheckboxSelectMultiple,
    )
    name = forms.CharField(max_length=100, required=False)
    repeat_not_before = forms.DateTimeField(
        required=False,
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        label="Repeat not before (UTC)",
    )
    field_order = ["raters"]

    def __init__(self, study, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["raters"].queryset = rounds.rater_candidates(study)


class RepeatForm(forms.Form):
    original = forms.IntegerField(min_value=1, widget=forms.HiddenInput)
    not_before = forms.DateTimeField(
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="UTC",
    )
    seed = forms.IntegerField(required=False)
    name = forms.CharField(max_length=200, required=False)


class AdjudicationForm(forms.Form):
    panel = forms.IntegerField(min_value=1, widget=forms.HiddenInput)
    adjudicator = forms.ModelChoiceField(
        queryset=get_user_model().objects.none(), to_field_name="username"
    )
    rule = forms.ChoiceField(choices=[(rule, rule) for rule in panels.ADJUDICATION_RULES])
    share = forms.FloatField(required=False)
    with_reference = forms.BooleanField(required=False)
    name = forms.CharField(max_length=200, required=False)

    def __init__(self, study, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["adjudicator"].queryset = panels.adjudicator_candidates(study)


def _panel_rows(study) -> list[dict]:
    """Each panel of the study with its raters' rounds and its adjudications, with progress
    and each round's status."""
    rows = []
    for panel in study.panels.order_by("id"):
        states = rounds.progress(panel.rounds.select_related("rater", "repeats").order_by("id"))
        rated = [
            {"state": state, "status": panels.round_status(state)}
            for state in states
            if state.round.kind != Round.Kind.ADJUDICATION
        ]
        judged = [state for state in states if state.round.kind == Round.Kind.ADJUDICATION]
        rows.append({"panel": panel, "rounds": rated, "adjudications": judged})
    return rows


@login_required
def rounds_page(request, study_name: str):
    """Coordinators: every round of the study with its progress; create blinded rounds and
    schedule repeats."""
    study = guarded(access.overseen_study, request.user, study_name)
    shown_forms = {
        "create_form": BlindedRoundForm(study),
        "repeat_form": None,
        "panel_form": PanelForm(study, prefix="panel"),
        "adjudication_form": None,
    }
    action = (
        _ROUNDS_PAGE_ACTIONS.get(request.POST.get("action")) if request.method == "POST" else None
    )
    if action is not None:
        try:
            form = shown_forms[action.form_key] = action.bind(study, request.POST)
            if form.is_valid():
                made = action.perform(study, request.user, form.cleaned_data)
                messages.success(request, action.success(made))
                return redirect("rounds", study.name)
        except DomainError as exc:
            messages.error(request, str(exc))
    all_rounds = list(study.rounds.select_related("rater", "repeats", "reference").order_by("id"))
    return render(
        request,
        "annotator/rounds.html",
        {
            "study": study,
            "progress": rounds.progress(all_rounds),
            **shown_forms,
            "panel_rows": _panel_rows(study),
            "adjudicators": panels.adjudicator_candidates(study),
            "rules": panels.ADJUDICATION_RULES,
            "can_manage": bool(access.roles_in(request.user, study) & access.MANAGING_ROLES),
        },
    )


def _create_panel(study, user, data) -> Panel:
    return panels.create_panel(
        study,
        list(data["raters"]),
        user,
        name=data["name"] or "",
        mode=data["mode"],
        seed=data["seed"],
        per_class=data["per_class"],
        fraction=data["fraction"],
        repeat_not_before=(
            data["repeat_not_before"].replace(tzinfo=UTC) if data["repeat_not_before"] else None
        ),
    )


def _open_adjudication(study, user, data) -> Round:
    panel = study.panels.filter(pk=data["panel"]).first()
    if panel is None:
        raise DomainError("No such panel in this study.")
    return panels.open_adjudication(
        panel,
        data["adjudicator"],
        user,
        rule=data["rule"],
        share=data["share"],
        with_reference=data["with_reference"],
        name=data["name"] or "",
    )


def _create_round(study, user, data) -> Round:
    return rounds.create_blinded_round(
        study,
        data["rater"],
        user,
        mode=data["mode"],
        seed=data["seed"],
        per_class=data["per_class"],
        fraction=data["fraction"],
        name=data["name"] or "",
    )


def _schedule_repeat(study, user, data) -> Round:
    original = study.rounds.filter(pk=data["original"]).first()
    if original is None:
        raise DomainError("No such round in this study.")
    return rounds.schedule_repeat(
        original,
        user,
        not_before=data["not_before"].replace(tzinfo=UTC),
        seed=data["seed"],
        name=data["name"] or "",
    )


class _RoundsPageAction(NamedTuple):
    """One POST action of the rounds page: its form bound to the request (shown again under
    form_key when refused), what it does with the cleaned data, and the message on success."""

    form_key: str
    bind: Callable[[Study, QueryDict], forms.Form]
    perform: Callable[[Study, AbstractBaseUser, dict], Panel | Round]
    success: Callable[[Panel | Round], str]


def _panel_made(made: Panel) -> str:
    cells = made.design["cells"]
    raters = len(made.design["raters"])
    return f"Panel {made.name} made: {cells} cells for each of {raters} raters."


_ROUNDS_PAGE_ACTIONS = {
    "panel": _RoundsPageAction(
        "panel_form",
        lambda study, data: PanelForm(study, data, prefix="panel"),
        _create_panel,
        _panel_made,
    ),
    "adjudicate": _RoundsPageAction(
        "adjudication_form",
        AdjudicationForm,
        _open_adjudication,
        lambda made: f"Adjudication {made.name} opened: {made.items.count()} cells.",
    ),
    "create": _RoundsPageAction(
        "create_form",
        BlindedRoundForm,
        _create_round,
        lambda made: f"Round {made.name} made: {made.items.count()} cells.",
    ),
    "repeat": _RoundsPageAction(
        "repeat_form",
        lambda study, data: RepeatForm(data),
        _schedule_repeat,
        lambda made: (
            f"Repeat {made.name} scheduled, not before {made.not_before:%Y-%m-%d %H:%M} UTC."
        ),
    ),
}


@login_required
@require_GET
def agreement_page(request, study_name: str):
    """The agreement report as a page with plots; JSON and CSV through the API. The query is
    the API's (`reports.ReportRequest`); a refused one shows why beside the default report. The
    plots' module (matplotlib) is imported by the first request for this page, not by every
    worker."""
    from . import report_plots

    study = guarded(access.overseen_study, request.user, study_name)
    try:
        asked = reports.ReportRequest.parse(request.GET)
        report = asked.build(study)
    except DomainError as exc:
        messages.error(request, str(exc))
        asked = reports.ReportRequest()
        report = asked.build(study)
    api = reverse("study-agreement", args=[study.pk])
    context = report_plots.page_context(report)
    query = f"&{asked.query()}" if asked.query() else ""
    context.update({"json_url": f"{api}?format=json{query}", "csv_url": f"{api}?format=csv{query}"})
    context["panel_names"] = list(study.panels.order_by("id").values_list("name", flat=True))
    if context["panel_names"]:
        context["panel_section"] = _panel_section(request, study, api)
    return render(request, "annotator/agreement.html", context)


def _panel_section(request, study, api: str) -> dict:
    """The page's panel section: the asked panel (default the latest; a refused request shows
    why beside the latest, without a bootstrap, the one part that can be refused for its size),
    its downloads, and where an overseer looks at each disputed cell."""
    from . import report_plots

    try:
        report = panel_reports.PanelRequest.parse(request.GET).build(study)
    except DomainError as exc:
        messages.error(request, str(exc))
        report = panel_reports.PanelRequest(bootstrap=0).build(study)
    can_annotate = bool(access.roles_in(request.user, study) & access.ANNOTATING_ROLES)
    links = {}
    for cell in report.disputed:
        links[cell.cell] = {"patch": reverse("cell-patch", args=[cell.cell])}
        if cell.scan is not None and can_annotate:
            links[cell.cell]["scan"] = reverse("annotate", args=[study.name, cell.scan])
    section = report_plots.panel_context(report, links)
    query = urlencode({"panel": report.panel.name})
    section.update(
        {"json_url": f"{api}?format=json&{query}", "csv_url": f"{api}?format=csv&{query}"}
    )
    return section


@login_required
@require_GET
def queue_page(request, round_id: int):
    """The blinded rater's screen: one patch at a time, hotkeys, back, skip, progress."""
    try:
        round_ = blinding.rater_round(request.user, round_id)
    except DomainError:
        raise Http404("No such blinded round among yours.") from None
    state = "open" if rounds.is_open(round_) else "closed"
    why = ""
    if state == "closed":
        try:
            rounds.require_open(round_)
        except DomainError as exc:
            why = str(exc)
    config = {
        "round": round_.pk,
        "taxonomy": taxonomy_for_screen(round_.study.taxonomy),
        "urls": {
            "round": reverse("queue-round", args=[round_.pk]),
            "item": url_template("queue-item", round_.pk, "{position}"),
            "answer": url_template("queue-answer", "{token}"),
        },
    }
    return render(
        request,
        "annotator/queue.html",
        {"round": round_, "config": config, "state": state, "why": why},
    )


def _next_open(found: list, after: int) -> int:
    """The position of the first cell without a consensus after `after` (wrapping round), or
    `after` itself when every cell has one."""
    ordered = sorted(found, key=lambda dispute: dispute.position)
    later = [d for d in ordered if d.position > after] + [d for d in ordered if d.position <= after]
    return next((d.position for d in later if d.consensus is None), after)


def _position(raw, found: list) -> int | None:
    try:
        position = int(raw)
    except (TypeError, ValueError):
        return None
    return position if any(d.position == position for d in found) else None


@login_required
def adjudication_page(request, round_id: int):
    """The adjudicator's screen: one disputed cell at a time with its patch, every panel
    answer by rater, the reference's answer and the majority vote; the consensus label and a
    note are saved by a plain form, and the next unsettled cell follows."""
    round_ = panels.visible_adjudications(request.user).filter(pk=round_id).first()
    if round_ is None:
        raise Http404("No such adjudication round among those you oversee.")
    found = guarded(panels.disputes, round_, request.user)
    if not found:
        raise Http404("This adjudication round has no cells.")
    page_url = reverse("adjudicate", args=[round_.pk])
    if request.method == "POST":
        position = _position(request.POST.get("position"), found)
        if position is None:
            messages.error(request, "No such cell in this adjudication round; nothing was saved.")
            return redirect(page_url)
        answer = request.POST.get("answer", "")
        version = request.POST.get("version") or None
        try:
            cell = next(d.cell.pk for d in found if d.position == position)
            panels.record_consensus(
                round_,
                cell,
                request.user,
                node=None if answer in ("", CANNOT_CLASSIFY) else answer,
                cannot_classify=answer == CANNOT_CLASSIFY,
                note=request.POST.get("note", ""),
                expected_version=int(version)
                if version and version.isascii() and version.isdigit()
                else None,
            )
        except DomainError as exc:
            messages.error(request, str(exc))
        else:
            found = panels.disputes(round_, request.user)
            following = _next_open(found, position)
            if following == position:
                messages.success(request, "Saved. Every disputed cell has a consensus now.")
            else:
                messages.success(request, f"Saved cell {position}.")
            return redirect(f"{page_url}?position={following}")
    else:
        position = _position(request.GET.get("position"), found) or _next_open(found, 0)
    current = next(d for d in found if d.position == position)
    leaves = list(round_.study.taxonomy.nodes.filter(is_leaf=True).order_by("order", "code"))
    names = {node.code: node.name for node in leaves}
    names[CANNOT_CLASSIFY] = "cannot classify"
    label = current.consensus
    chosen = (
        CANNOT_CLASSIFY if label and label.cannot_classify else (label.node.code if label else "")
    )
    return render(
        request,
        "annotator/adjudicate.html",
        {
            "round": round_,
            "study": round_.study,
            "current": current,
            "answers": [
                (rater, answer, names.get(answer, "")) for rater, answer in current.answers.items()
            ],
            "reference_name": names.get(current.reference, ""),
            "winner_name": names.get(current.vote.winner, ""),
            "leaves": leaves,
            "chosen": chosen,
            "cannot_classify": CANNOT_CLASSIFY,
            "items": found,
            "done": sum(1 for d in found if d.consensus is not None),
            "total": len(found),
            "patch_url": reverse("cell-patch", args=[current.cell.pk]),
            "context_url": (
                reverse("cell-context", args=[current.cell.pk]) if current.cell.scan_id else ""
            ),
            "tie_rule": panels.TIE_RULE,
            "may_record": round_.rater_id == request.user.pk,
        },
    )


@login_required
def patients_page(request, study_name: str):
    """The study's patients with their confirmed diagnoses: coordinators and admins set one per
    patient or import a CSV; data scientists read them."""
    study = guarded(diagnoses.diagnosis_study, request.user, name=study_name)
    can_set = diagnoses.may_set(request.user, study)
    if request.method == "POST":
        guarded(diagnoses.require_manager, request.user, study)
        try:
            if request.POST.get("action") == "import":
                upload = request.FILES.get("file")
                if upload is None:
                    raise DomainError("Choose a CSV file to import.")
                result = diagnoses.import_diagnoses(
                    study, upload.read(), request.user, name=upload.name
                )
                messages.success(
                    request,
                    f"{result.rows} rows: {result.changed} diagnoses set, "
                    f"{result.unchanged} unchanged.",
                )
            else:
                patient = diagnoses.set_diagnosis(
                    study,
                    request.POST.get("patient", ""),
                    request.user,
                    request.POST.get("code", ""),
                    request.POST.get("diagnosis", ""),
                )
                messages.success(request, f"{patient.code}: {patient.diagnosis_code or 'unknown'}.")
        except DomainError as exc:
            messages.error(request, str(exc))
        return redirect("patients", study.name)
    return render(
        request,
        "annotator/patients.html",
        {
            "study": study,
            "patients": diagnoses.study_patients(study).select_related("diagnosis_set_by"),
            "can_set": can_set,
            "header": ",".join(diagnoses.HEADER),
        },
    )
