"""The Add scans page in real headless Chromium: a coordinator sends every real-format fixture
through it (files, a folder, a .zip, a drop), by tus in small chunks with one lost connection on
the way; each row says what became of its scan, and each added scan opens in the viewer with its
tiles. Members in other roles and outsiders get no link and a 403 page naming the reason."""

from __future__ import annotations

import random
import shutil
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.urls import reverse
from PIL import Image

from annotator import views
from annotator.models import Membership, Scan

from .conftest import SHARED_DATA, log_in, new_page

pytestmark = pytest.mark.django_db(transaction=True)

FIXTURES = SHARED_DATA / "openslide-fixtures"
CHUNK = 64 * 1024
OUTCOMES = ("added", "known", "refused", "failed")


@pytest.fixture
def uploader(coordinator, study):
    """The study's coordinator, who labels too: the outcome's link opens the viewer for her."""
    Membership.objects.create(study=study, user=coordinator, role=Membership.Role.ANNOTATOR)
    return coordinator


@pytest.fixture
def small_chunks(settings):
    settings.SCAN_UPLOAD_CHUNK_MAX_BYTES = CHUNK


@pytest.fixture
def noisy_photo(tmp_path) -> Path:
    """A field-of-view photo of noise (PNG does not shrink it): about eight chunks."""
    pixels = random.Random(5).randbytes(400 * 400 * 3)
    path = tmp_path / "field_of_view.png"
    Image.frombytes("RGB", (400, 400), pixels).save(path)
    assert path.stat().st_size > 6 * CHUNK
    return path


@pytest.fixture
def dicom_folder(tmp_path) -> Path:
    folder = tmp_path / "picked" / "boxes"
    folder.mkdir(parents=True)
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(FIXTURES / name, folder / name)
    return folder


def _rows(page) -> dict[str, dict]:
    return {
        row["name"]: row
        for row in page.eval_on_selector_all(
            "#uploads tbody tr",
            """rows => rows.map(r => ({
                name: r.querySelector('.name').textContent,
                state: r.dataset.state,
                outcome: r.querySelector('.outcome').textContent,
                link: (r.querySelector('.outcome a') || {getAttribute: () => null})
                    .getAttribute('href'),
                value: r.querySelector('progress').getAttribute('value'),
                max: r.querySelector('progress').getAttribute('max'),
            }))""",
        )
    }


def _wait_until_done(page, count: int) -> None:
    page.wait_for_function(
        """([count, outcomes]) => {
            const rows = [...document.querySelectorAll('#uploads tbody tr')];
            return rows.length === count && rows.every(r => outcomes.includes(r.dataset.state));
        }""",
        arg=[count, list(OUTCOMES)],
        timeout=30000,
    )


def _drop(page, path: Path) -> None:
    """Drop a file on the drop zone as a person dragging it from their desktop would."""
    data = page.evaluate_handle(
        """([name, bytes]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name));
            return transfer;
        }""",
        [path.name, list(path.read_bytes())],
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": data})


def test_a_coordinator_adds_every_fixture_and_each_added_scan_opens_with_its_tiles(
    chromium_browser, live_server, study, uploader, small_chunks, noisy_photo, dicom_folder
):
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, uploader.username)
    page.click("text=Add scans")
    page.wait_for_url(live_server.url + reverse("add-scans", args=[study.name]))

    page.fill("#default-patient", "P-100")
    page.fill("#default-cohort", "AML")
    names = ["small.svs", "boxes.tiff", "unreadable.svs", "unopenable.tiff"]
    page.set_input_files("#pick-files", [FIXTURES / name for name in names] + [noisy_photo])
    page.set_input_files("#pick-folder", dicom_folder)
    _drop(page, FIXTURES / "boxes.png")
    page.wait_for_selector("#uploads tbody tr:nth-child(7)")
    # One scan's patient is edited by hand before the upload; the defaults still reach the rest.
    page.fill("#uploads tbody tr:first-child .patient", "P-200")
    page.fill("#default-cohort", "MDS")

    # The photo's bar is watched as the chunks go; one PATCH is cut off and resumed.
    page.eval_on_selector(
        "#uploads tbody tr:nth-child(5) progress",
        """bar => {
            window.seen = [];
            new MutationObserver(() => window.seen.push(Number(bar.getAttribute('value'))))
                .observe(bar, {attributes: true, attributeFilter: ['value']});
        }""",
    )
    cut = {"left": 1, "patches": 0}

    def cut_one_patch(route):
        if route.request.method == "PATCH":
            cut["patches"] += 1
            if cut["patches"] == 3 and cut["left"]:
                cut["left"] -= 1
                route.abort("connectionreset")
                return
        route.continue_()

    page.route("**/api/v1/uploads/**", cut_one_patch)
    page.click("#start")
    _wait_until_done(page, 7)

    rows = _rows(page)
    good = ["small.svs", "boxes.tiff", "field_of_view.png", "boxes/ (2 files)", "boxes.png"]
    for name in good:
        assert rows[name]["state"] == "added", rows[name]
        assert rows[name]["outcome"].startswith("added as scan "), rows[name]
        assert rows[name]["value"] == rows[name]["max"]
    assert rows["unreadable.svs"]["state"] == "refused"
    assert rows["unreadable.svs"]["outcome"].startswith("refused: unreadable.svs")
    assert "pixels cannot be read" in rows["unreadable.svs"]["outcome"]
    assert rows["unopenable.tiff"]["state"] == "refused"
    assert rows["unopenable.tiff"]["outcome"].startswith("refused: unopenable.tiff")
    assert "not supported" in rows["unopenable.tiff"]["outcome"]
    assert rows["unreadable.svs"]["link"] is None and rows["unopenable.tiff"]["link"] is None
    assert cut == {"left": 0, "patches": cut["patches"]} and cut["patches"] > 8
    screenshots = Path(settings.TEST_RUN_DIR) / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "add-scans.png"), full_page=True)

    seen = page.evaluate("window.seen")
    total = noisy_photo.stat().st_size
    assert len({value for value in seen if 0 < value < total}) >= 5, seen
    assert seen == sorted(seen) and seen[-1] == total

    scans = {scan.original_name: scan for scan in Scan.objects.select_related("patient")}
    assert len(scans) == 5
    assert scans["small.svs"].patient.code == "P-200"
    assert {scan.patient.code for name, scan in scans.items() if name != "small.svs"} == {"P-100"}
    assert {scan.patient.cohort for scan in scans.values()} == {"MDS"}
    assert scans["boxes.png"].kind == Scan.Kind.PHOTO
    for name in good:
        scan_id = int(rows[name]["outcome"].rsplit(" ", 1)[1])
        assert rows[name]["link"] == reverse("annotate", args=[study.name, scan_id])

    # The same file again is already known, as the same scan.
    page.unroute("**/api/v1/uploads/**")
    page.set_input_files("#pick-files", [FIXTURES / "small.svs"])
    page.fill("#uploads tbody tr:last-child .patient", "P-200")
    page.click("#start")
    _wait_until_done(page, 8)
    again = page.locator("#uploads tbody tr:last-child .outcome").inner_text()
    assert again == "already known as scan " + rows["small.svs"]["outcome"].rsplit(" ", 1)[1]
    assert Scan.objects.count() == 5

    # Each added scan opens in the viewer, which draws its tiles through its signed tile link.
    for name in good:
        tiles = []

        def record(response, tiles=tiles):
            if urlsplit(response.url).path.startswith("/tiles/"):
                tiles.append(response.status)

        page.on("response", record)
        page.goto(live_server.url + rows[name]["link"])
        page.wait_for_function(
            "window.cytomark && window.cytomark.viewer.world.getItemAt(0)"
            " && window.cytomark.viewer.world.getItemAt(0).getFullyLoaded()",
            timeout=15000,
        )
        page.remove_listener("response", record)
        assert tiles and set(tiles) == {200}, (name, tiles)
    assert problems == []


def test_a_dicom_series_as_a_zip_is_one_scan(
    chromium_browser, live_server, study, coordinator, tmp_path
):
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in ("boxes_0.dcm", "boxes_1.dcm"):
            zipped.write(FIXTURES / name, f"boxes/{name}")
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, coordinator.username)
    page.goto(live_server.url + reverse("add-scans", args=[study.name]))
    page.set_input_files("#pick-files", [archive])
    page.click("#start")
    _wait_until_done(page, 1)
    row = _rows(page)["series.zip"]
    # A coordinator who does not label gets the outcome without a link to the labelling screen.
    assert row["state"] == "added" and row["link"] is None, row
    assert row["outcome"] == f"added as scan {Scan.objects.get().pk}"
    assert problems == []


def test_a_transfer_that_cannot_reach_the_server_says_so_and_resumes_when_tried_again(
    chromium_browser, live_server, study, coordinator, small_chunks, noisy_photo, monkeypatch
):
    monkeypatch.setattr(views, "UPLOAD_RETRY_DELAYS_MS", [0, 200])
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, coordinator.username)
    page.goto(live_server.url + reverse("add-scans", args=[study.name]))
    sent = {"patches": 0}

    def cut_from_the_third_patch(route):
        if route.request.method == "PATCH":
            sent["patches"] += 1
            if sent["patches"] >= 3:
                route.abort("internetdisconnected")
                return
        route.continue_()

    page.route("**/api/v1/uploads/**", cut_from_the_third_patch)
    page.set_input_files("#pick-files", [noisy_photo])
    page.click("#start")
    _wait_until_done(page, 1)
    row = _rows(page)["field_of_view.png"]
    assert row["state"] == "failed"
    assert row["outcome"] == "stopped (no connection); try again to resume"
    assert int(row["value"]) >= 2 * CHUNK

    page.unroute("**/api/v1/uploads/**")
    offsets = []
    page.on(
        "request",
        lambda r: r.method == "PATCH" and offsets.append(int(r.headers["upload-offset"])),
    )
    page.click("#uploads .retry")
    _wait_until_done(page, 1)
    row = _rows(page)["field_of_view.png"]
    assert row["state"] == "added", row
    assert offsets[0] == 2 * CHUNK, offsets  # resumed where the server's copy ends
    with Scan.objects.get().file.open("rb") as stored:
        assert stored.read() == noisy_photo.read_bytes()
    assert problems == []


@pytest.mark.parametrize("who", ["rater", "outsider"])
def test_other_roles_get_no_link_and_a_403_page_naming_the_reason(
    chromium_browser, live_server, study, request, who
):
    user = request.getfixturevalue(who)
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, user.username)
    assert page.locator("text=Add scans").count() == 0
    answer = page.goto(live_server.url + reverse("add-scans", args=[study.name]))
    assert answer.status == 403
    reason = page.inner_text("#reason")
    assert "coordinator" in reason and "add scans" in reason
    assert problems == []
