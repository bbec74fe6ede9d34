"""Pages of training: start and watch runs of a study, read a run's report."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from annotator.access import OVERSEEING_ROLES, overseen_study, roles_in
from annotator.diagnoses import diagnosis_codes, diagnosis_study
from core.errors import DomainError
from core.pages import guarded
from core.url_templates import url_template
from datasets.models import Split

from . import export, runs, smear_counts, tracking
from .access import visible_classifications, visible_runs
from .api.screening import gallery_items
from .decisions import requested_report
from .models import ScanClassification, TrainingRun
from .tasks import queue_classification, queue_run


class StartForm(forms.Form):
    """A run's split and the config keys worth changing from the page (the rest: defaults).
    The initial values make a small run that a CPU finishes in minutes; the original
    protocol is image_size 400, max_epochs 15, oversample_to 10000. The keys' bounds are the
    config's own (checked by runs.start_run), the same as for the API and the train command."""

    split = forms.ModelChoiceField(queryset=Split.objects.none())
    image_size = forms.IntegerField(initial=64)
    max_epochs = forms.IntegerField(initial=2)
    oversample_to = forms.IntegerField(initial=32)
    batch_size = forms.IntegerField(initial=16)
    seed = forms.IntegerField(initial=0)


@login_required
def training_page(request, study_name: str):
    """The study's training runs with live progress, and a form to start one."""
    study = guarded(overseen_study, request.user, study_name, "train models")
    form = StartForm(request.POST or None)
    form.fields["split"].queryset = Split.objects.filter(dataset__study=study).defer(
        "folds", "dataset__manifest"
    )
    if request.method == "POST":
        action = request.POST.get("action", "start")
        try:
            if action == "cancel":
                run = get_object_or_404(
                    TrainingRun, pk=request.POST.get("run"), split__dataset__study=study
                )
                runs.request_cancel(run)
                messages.success(request, f"Run {run.pk} cancelled.")
                return redirect(request.path)
            if form.is_valid():
                data = dict(form.cleaned_data)
                split = data.pop("split")
                run = runs.start_run(split, request.user, data)
                queue_run(run)
                # The page's banner for this run follows its state as the page polls.
                return redirect(f"{request.path}?run={run.pk}")
        except DomainError as exc:
            messages.error(request, str(exc))
    study_runs = (
        TrainingRun.objects.filter(split__dataset__study=study)
        .select_related("split__dataset")
        .defer("report", "split__folds", "split__dataset__manifest")
    )
    # The page's script polls each unfinished run there.
    config = {"urls": {"run": url_template("training-run-detail", "{id}")}}
    started = request.GET.get("run", "")
    banner_run = next((run for run in study_runs if str(run.pk) == started), None)
    return render(
        request,
        "mltasks/training.html",
        {
            "study": study,
            "form": form,
            "runs": study_runs,
            "config": config,
            "banner_run": banner_run,
        },
    )


@login_required
def run_report_page(request, run_id: int):
    """A finished run's report: the per-class table, confusion, ROC with raters, saliency."""
    run = get_object_or_404(TrainingRun.objects.select_related("split__dataset__study"), pk=run_id)
    study = guarded(overseen_study, request.user, run.split.dataset.study.name, "train models")
    report = run.report or {}
    plot_url = reverse("training-run-plot", args=[run.pk]) + "?name="
    rows = [{"code": code, **values} for code, values in (report.get("per_class") or {}).items()]
    groups = [
        {"name": name, **values, "plot": plot_url + report["plots"].get(f"roc-{name}", "")}
        for name, values in (report.get("groups") or {}).items()
    ]
    return render(
        request,
        "mltasks/report.html",
        {
            "run": run,
            "study": study,
            "report": report,
            "rows": rows,
            "groups": groups,
            "confusion_plot": plot_url + (report.get("plots") or {}).get("confusion", ""),
            "saliency": [
                {**item, "url": plot_url + item["file"]} for item in report.get("saliency", [])
            ],
            "raters": report.get("raters", []),
            "mlflow": tracking.link(run),
            "curves": tracking.run_curves(run),
            "downloads": _downloads(run),
        },
    )


def _downloads(run: TrainingRun) -> dict:
    """Links to the run's model files: per fold (ONNX, TorchScript, state dict) and the card."""
    if run.status != TrainingRun.Status.DONE:
        return {}
    url = reverse("training-run-download", args=[run.pk]) + "?file="
    files = export.download_files(run)
    kinds = (("onnx", ".onnx"), ("torchscript", ".ts.pt"), ("weights", ".pt"))
    folds = [
        {
            "fold": model.fold,
            **{
                kind: url + f"fold-{model.fold}{suffix}"
                for kind, suffix in kinds
                if f"fold-{model.fold}{suffix}" in files
            },
        }
        for model in run.models.order_by("fold")
    ]
    card = {
        kind: url + name
        for kind, name in (("json", "model-card.json"), ("markdown", "model-card.md"))
        if name in files
    }
    return {"folds": folds, "card": card}


def _overseen_run(request, run_id: int) -> tuple[TrainingRun, object]:
    """The run, for those who oversee its study; one 404 for a run that does not exist and
    one of a study the user does not oversee (the answer names no study)."""
    found = visible_runs(request.user).select_related("split__dataset__study")
    run = found.filter(pk=run_id).first()
    if run is None:
        raise Http404("No such training run among those of the studies you oversee.")
    return run, run.split.dataset.study


def _count_scans(request, run: TrainingRun, study) -> None:
    """Start the classifications the page's form asks for: one scan, or every scan with cells."""
    wanted = request.POST.get("scan", "")
    if wanted and not (wanted.isascii() and wanted.isdigit()):
        raise DomainError(f"scan must be a scan's id, not {wanted[:40]!r}.", "scan")
    scans = study.scans.filter(pk=wanted) if wanted else study.scans.all()
    rerun = request.POST.get("rerun") == "1"
    started = 0
    for scan in scans.order_by("pk"):
        if not wanted and not smear_counts.leukocytes(scan, study):
            continue
        try:
            job, created = smear_counts.start_classification(run, scan, request.user, rerun=rerun)
        except DomainError as exc:
            messages.error(request, str(exc))
            continue
        if created:
            queue_classification(job)
            started += 1
    messages.success(request, f"{started} scan(s) queued for counting.")


@login_required
def smear_counts_page(request, run_id: int):
    """Every scan of the run's study counted by the run's models beside the examiners, per
    scan and per patient; forms to count scans and to cancel a count."""
    run, study = _overseen_run(request, run_id)
    if request.method == "POST":
        try:
            if request.POST.get("action") == "cancel":
                wanted = request.POST.get("job", "")
                if not (wanted.isascii() and wanted.isdigit()):
                    raise DomainError(f"job must be a count's id, not {wanted[:40]!r}.", "job")
                job = get_object_or_404(ScanClassification, pk=wanted, run=run)
                smear_counts.cancel_classification(job, request.user)
                messages.success(request, f"Count of {job.scan.original_name} cancelled.")
            else:
                _count_scans(request, run, study)
        except DomainError as exc:
            messages.error(request, str(exc))
        return redirect(request.path)
    overview = smear_counts.overview(run) if run.status == TrainingRun.Status.DONE else None
    unfinished = overview and any(
        row["job"] and row["job"].status in ("queued", "running") for row in overview["scans"]
    )
    return render(
        request,
        "mltasks/smear_counts.html",
        {"run": run, "study": study, "overview": overview, "unfinished": unfinished},
    )


@login_required
def gallery_page(request, run_id: int, scan_id: int):
    """A counted scan's cells ranked by the models' P(group), each opening the gold viewer at
    the cell, with the scan's differential by the model and the examiners."""
    counted = visible_classifications(request.user).filter(run_id=run_id, scan_id=scan_id)
    if not counted.exists():
        raise Http404("No count of this scan by this run among those you may see.")
    run = TrainingRun.objects.select_related("split__dataset__study").get(pk=run_id)
    study = run.split.dataset.study
    scan = study.scans.get(pk=scan_id)
    job = smear_counts.latest_done(run, [scan]).get(scan.pk)
    group = request.GET.get("group") or "blast"
    groups = sorted(study.taxonomy.groups.values_list("name", flat=True))
    if group not in groups:
        messages.error(request, f"No group {group!r}; the taxonomy has {', '.join(groups)}.")
        group = groups[0] if groups else ""
    page = request.GET.get("page", "0")
    page = int(page) if page.isascii() and page.isdigit() and len(page) < 9 else 0
    per_page = 60
    overseer = bool(roles_in(request.user, study) & OVERSEEING_ROLES)
    items = (
        gallery_items(job, group, per_page, page * per_page, leave_out_uncountable=overseer)
        if job and group
        else None
    )
    return render(
        request,
        "mltasks/gallery.html",
        {
            "run": run,
            "study": study,
            "scan": scan,
            "job": job,
            "group": group,
            "groups": groups,
            "items": items,
            "page": page,
            "more": bool(items) and items["total"] > (page + 1) * per_page,
            "report": smear_counts.scan_report(run, scan) if overseer else None,
            # The examiners' count is of labels only overseers see (their own rounds aside).
            "overseer": overseer,
        },
    )


@login_required
def decision_page(request, study_name: str):
    """Decide per patient: the rule's form, the examiners' and the model's figures side by
    side, the ROC and the per-patient table. The query is the API's; a refused one says why.
    The plot module (matplotlib) is imported by the first request for this page."""
    from . import decision_plots

    study = guarded(diagnosis_study, request.user, "read decision reports", name=study_name)
    report = None
    if request.GET.get("group"):
        try:
            report = requested_report(request.user, study, request.GET)
        except DomainError as exc:
            messages.error(request, str(exc))
    runs_done = visible_runs(request.user).filter(
        split__dataset__study=study, status=TrainingRun.Status.DONE
    )
    api = reverse("study-decision", args=[study.pk])
    return render(
        request,
        "mltasks/decision.html",
        {
            "study": study,
            "query": {
                "group": request.GET.get("group", ""),
                "threshold": request.GET.get("threshold", "0.2"),
                "comparison": request.GET.get("comparison", "ge"),
                "positive": request.GET.get("positive", ""),
                "run": request.GET.get("run", ""),
            },
            "groups": list(study.taxonomy.groups.order_by("name").values_list("name", flat=True)),
            "codes": diagnosis_codes(study),
            "runs": runs_done.defer("report").order_by("-pk"),
            "report": report.to_dict() if report else None,
            "roc_svg": decision_plots.roc_svg(report) if report else None,
            "json_url": f"{api}?{request.GET.urlencode()}" if report else None,
        },
    )
