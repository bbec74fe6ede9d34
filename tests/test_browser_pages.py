"""The curation and training pages in real headless Chromium: their scripts (ES modules on the
shared HTTP client) poll the API at the URLs their views name, and follow a job to its end."""

from __future__ import annotations

import pytest
from django.urls import reverse

from datasets.models import ClassMap

from .conftest import log_in, new_page

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_datasets_page_follows_an_export_to_its_download(
    chromium_browser, live_server, split, data_scientist
):
    from datasets import exports
    from datasets.models import Export

    export = exports.request_export(split, "csv", data_scientist)
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, data_scientist.username)
    page.goto(f"{live_server.url}/studies/{split.dataset.study.name}/datasets/")
    row = f"tr[data-export='{export.pk}']"

    Export.objects.filter(pk=export.pk).update(status="running", done=3, total=10)
    page.wait_for_function(f'document.querySelector("{row} progress").value === 3', timeout=15000)
    assert page.inner_text(f"{row} .status") == "running"
    Export.objects.filter(pk=export.pk).update(
        status="done", done=10, size_bytes=5, file="exports/x.zip"
    )
    page.wait_for_selector(f"{row} .download a", timeout=15000)
    assert page.get_attribute(f"{row} .download a", "href") == reverse(
        "export-download", args=[export.pk]
    )
    assert page.inner_text(f"{row} .status") == "done"
    assert problems == []


def test_the_training_page_follows_a_run_and_shows_its_report_when_done(
    chromium_browser, live_server, split, data_scientist
):
    """The banner of the run just started (the page the start form leads to) follows its
    state, and the time left waits for the server's estimate."""
    from mltasks.models import TrainingRun

    run = TrainingRun.objects.create(split=split, config={}, created_by=data_scientist)
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, data_scientist.username)
    page.goto(f"{live_server.url}/studies/{split.dataset.study.name}/training/?run={run.pk}")
    row = f"tr[data-run='{run.pk}']"
    banner = "#run-banner"
    assert page.inner_text(banner).startswith(f"Training run {run.pk} is queued")

    progress = {"fraction": 0.25, "fold": "0", "fold_number": 1, "folds": 2, "epoch": 1}
    TrainingRun.objects.filter(pk=run.pk).update(
        status="running", progress={**progress, "step": 3, "steps": 8, "eta_seconds": None}
    )
    page.wait_for_function(
        f'document.querySelector("{row} .detail").textContent'
        " === 'fold 1/2, epoch 1, step 3/8, estimating time left…'",
        timeout=15000,
    )
    assert page.inner_text(banner) == f"Training run {run.pk} is running."
    TrainingRun.objects.filter(pk=run.pk).update(
        progress={**progress, "step": 5, "steps": 8, "eta_seconds": 41.5}
    )
    page.wait_for_function(
        f"document.querySelector(\"{row} .detail\").textContent.endsWith('about 42 s left')",
        timeout=15000,
    )
    # The learning curves follow the progress: a point per epoch in each panel, as they come.
    validation = [{"epoch": 1, "train_loss": 2.0, "loss": 1.8, "accuracy": 0.4}]
    curves = {"0": {"loss": [[0.25, 2.1], [0.5, 1.9], [1.0, 1.7]], "validation": validation}}
    points = f'document.querySelectorAll("{row} .curves circle.curve-point").length'
    for epochs in (1, 2):
        TrainingRun.objects.filter(pk=run.pk).update(
            progress={**progress, "step": 5, "steps": 8, "eta_seconds": 41.5, "curves": curves}
        )
        page.wait_for_function(f"{points} === {2 * epochs}", timeout=15000)
        validation.append({"epoch": 2, "train_loss": 1.5, "loss": 1.6, "accuracy": 0.55})
        curves["0"]["loss"].append([2.0, 1.4])
    panels = page.eval_on_selector_all(
        f"{row} svg.curve-panel", "nodes => nodes.map(n => n.dataset.panel)"
    )
    assert panels == ["loss", "accuracy"]
    assert page.locator(f"{row} .curves path.curve-line").count() == 3  # training, validation x2
    TrainingRun.objects.filter(pk=run.pk).update(status="done")
    page.wait_for_selector(f"{row} a:has-text('report')", timeout=15000)
    assert page.inner_text(banner).startswith(f"Training run {run.pk} finished")
    assert problems == []


PATTERNS_COMPILE = """() => [...document.querySelectorAll('[pattern]')].map((field) => {
  try { new RegExp(field.pattern, 'v'); return [field.name, true]; }
  catch (error) { return [field.name, false]; }
})"""


def test_the_class_map_name_is_checked_by_the_browser(
    chromium_browser, live_server, study, curated, data_scientist
):
    """Chromium compiles `pattern` with the v flag and skips the check of one that fails."""
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, data_scientist.username)
    for path in ("datasets", "training"):
        page.goto(f"{live_server.url}/studies/{study.name}/{path}/")
        compiled = page.evaluate(PATTERNS_COMPILE)
        assert all(ok for _, ok in compiled), (path, compiled)
    page.goto(f"{live_server.url}/studies/{study.name}/datasets/")
    field = page.locator("input[name=name][pattern]")
    mismatch = "(field) => field.validity.patternMismatch"
    for typed, refused in [("aml merged", True), ("blasts+", True), ("aml-merged_2", False)]:
        field.fill(typed)
        assert field.evaluate(mismatch) is refused, typed
    field.fill("aml merged")
    page.click("text=Save this class map")
    assert page.url.endswith("/datasets/") and not ClassMap.objects.exists()
    field.fill("aml-merged_2")
    page.click("text=Save this class map")
    page.wait_for_selector("text=aml-merged_2", timeout=15000)
    assert ClassMap.objects.filter(name="aml-merged_2").exists()
    assert problems == []


def test_a_rater_typing_addresses_she_may_not_open_gets_the_sites_pages(
    chromium_browser, live_server, settings, study, gold_cells, scan, rater, coordinator
):
    """As on `make run` (DEBUG on): a scan of her blinded study and a coordinators' page show
    the site's layout with the reason and a link home, never Django's URLconf listing."""
    from annotator import rounds

    settings.DEBUG = True
    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1, name="r1")
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, rater.username)
    for path, status, reason in (
        (f"/studies/munich/scans/{scan.pk}/", 404, "No such scan among those you may open"),
        ("/studies/munich/rounds/", 403, "Only coordinators, data scientists and admins"),
        ("/studies/munich/no-such-page/", 404, "There is no page at this address"),
    ):
        response = page.goto(live_server.url + path)
        assert response.status == status, path
        assert reason in page.inner_text(".error-page .reason"), path
        assert "URLconf" not in page.content() and "Traceback" not in page.content()
        assert page.is_visible(".topbar .who")
        page.click("text=Back to your studies")
        page.wait_for_url(live_server.url + "/")
    assert problems == []
