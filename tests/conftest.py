"""Fixtures shared by the tests: users with roles, a study on the AML taxonomy, small synthetic
scans inside the test import root, and API clients logged in as each role."""

from __future__ import annotations

import base64
import functools
import io
import os
import random
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image
from rest_framework.test import APIClient

from annotator.annotation import bulk_import_labels, gold_round_for
from annotator.models import Cell, Membership, Patient, Study, Taxonomy
from annotator.scans import ingest_scan
from annotator.synthetic import make_synthetic_scan
from annotator.taxonomy import (
    DEFAULT_TAXONOMY_FILE,
    TaxonomySpec,
    load_taxonomy,
    read_taxonomy_file,
)

from .factories import StudyFactory, UserFactory


def _find_shared_data() -> Path:
    """The workplace's shared data folder (the public AML annotation file): `CYTOMARK_SHARED_DATA`
    if set, else a `shared/data` beside any parent of the checkout (a clone may live anywhere),
    else the workplace's fixed place."""
    if os.environ.get("CYTOMARK_SHARED_DATA"):
        return Path(os.environ["CYTOMARK_SHARED_DATA"])
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "data" / "tcia-aml-cytomorphology").is_dir():
            return parent / "shared" / "data"
    return Path("/work/shared/data")


SHARED_DATA = _find_shared_data()


@pytest.fixture(autouse=True)
def _isolated_media(tmp_path, settings):
    """Each test stores files (and tiles) in its own folders, so a test can count what it left."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.TILE_DIR = tmp_path / "tiles"


@pytest.fixture(scope="session")
def import_root() -> Path:
    root = Path(settings.SCAN_IMPORT_ROOTS[0])
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def synthetic_scan_files(import_root) -> list[tuple[Path, dict]]:
    """Two small synthetic pyramidal scans with planted leukocytes, made once per session."""
    folder = import_root / "synthetic"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    made = []
    for index in range(2):
        path = folder / f"smear_{index}.tiff"
        manifest = make_synthetic_scan(path, width=3000, height=2400, cells=20, seed=100 + index)
        made.append((path, manifest))
    return made


@functools.cache
def _default_taxonomy_spec() -> TaxonomySpec:
    """The default taxonomy file read and validated once per session (the spec is frozen)."""
    return read_taxonomy_file(DEFAULT_TAXONOMY_FILE)


def load_default_taxonomy() -> Taxonomy:
    """The default taxonomy stored as `load_taxonomy_file` stores it, without reading the file
    again for every test."""
    spec = _default_taxonomy_spec()
    return load_taxonomy(spec, source_file=DEFAULT_TAXONOMY_FILE.name).taxonomy


@pytest.fixture
def aml_taxonomy(db):
    return load_default_taxonomy()


@pytest.fixture
def study(aml_taxonomy) -> Study:
    return StudyFactory(name="munich", taxonomy=aml_taxonomy)


def add_member(study: Study, role: str, username: str):
    user = UserFactory(username=username)
    Membership.objects.create(study=study, user=user, role=role)
    return user


@pytest.fixture
def annotator(study):
    return add_member(study, Membership.Role.ANNOTATOR, "anna")


@pytest.fixture
def second_annotator(study):
    return add_member(study, Membership.Role.ANNOTATOR, "bert")


@pytest.fixture
def coordinator(study):
    return add_member(study, Membership.Role.COORDINATOR, "cora")


def make_outsider():
    """Olga, an annotator of the study "elsewhere" only."""
    other = StudyFactory(name="elsewhere", taxonomy=load_default_taxonomy())
    return add_member(other, Membership.Role.ANNOTATOR, "olga")


@pytest.fixture
def outsider(db):
    """A user of another study only."""
    return make_outsider()


def ingest_first_scan(study: Study, coordinator, scan_files: list[tuple[Path, dict]]):
    """The first synthetic scan registered in the study by its coordinator."""
    path, _ = scan_files[0]
    return ingest_scan(path, study=study, patient_code="P-001", cohort="AML", user=coordinator).scan


@pytest.fixture
def scan(study, coordinator, synthetic_scan_files):
    return ingest_first_scan(study, coordinator, synthetic_scan_files)


@pytest.fixture
def planted(synthetic_scan_files) -> list[dict]:
    """The planted leukocytes of the first synthetic scan."""
    return synthetic_scan_files[0][1]["cells"]


def tus_metadata(**pairs: str) -> str:
    """A tus `Upload-Metadata` header: `key base64(value)` pairs."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in pairs.items()
    )


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def api_as():
    return client_for


@pytest.fixture
def rater(study):
    """An annotator who will rate blinded rounds."""
    return add_member(study, Membership.Role.ANNOTATOR, "rita")


def label_planted_cells(study: Study, scan, annotator, planted: list[dict]) -> list[Cell]:
    """The planted cells clicked on the scan and labelled in the annotator's gold round."""
    from annotator import annotation

    gold = annotation.gold_round_for(study, annotator)
    cells = []
    for spot in planted:
        cell = annotation.create_cell(study, scan, spot["x"], spot["y"], annotator)
        annotation.set_label(cell, gold, annotator, node=spot["code"])
        cells.append(cell)
    return cells


@pytest.fixture
def gold_cells(study, scan, annotator, planted):
    """The planted cells of the scan, clicked and labelled in anna's gold round."""
    return label_planted_cells(study, scan, annotator, planted)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


@pytest.fixture
def chromium_browser(monkeypatch):
    """Debian's headless Chromium through Playwright. Playwright's event loop shares the thread
    with the test's ORM calls, which Django allows only when told (they never run inside it)."""
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        yield browser
        browser.close()


def new_page(browser, width: int = 1400, height: int = 900):
    """A page in a fresh context (its own cookies), and a list collecting its script errors."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    return page, problems


def log_in(page, base_url: str, username: str, password: str = "pass-word-123") -> None:
    page.goto(base_url + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(base_url + "/")


def answer_queue(page, keys: list[str], check_item=None) -> None:
    """Answer every item of the blinded queue open on `page`, the n-th with keys[n] (the last
    key after that); `check_item(page)`, when given, runs on each item once its patch shows."""
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=20000)
    total = int(page.locator("#progress").get_attribute("max"))
    for index in range(total):
        page.wait_for_function("document.body.dataset.imageShown === 'true'", timeout=15000)
        if check_item is not None:
            check_item(page)
        before = page.locator("#progress").get_attribute("value")
        page.keyboard.press(keys[min(index, len(keys) - 1)])
        page.wait_for_function(
            f"document.getElementById('progress').value > {before}"
            " || !document.getElementById('finished').hidden",
            timeout=15000,
        )
    page.wait_for_selector("#finished:not([hidden])", timeout=15000)


# Cells per gold class, far apart as in real studies; MYOA and PMOA are under the threshold of
# 10, so their parents MYO and PMO are merged; EBO is just above it.
CURATED_CLASS_SIZES = {
    "NGS": 120,
    "LYT": 60,
    "MON": 30,
    "MYON": 40,
    "MYOA": 4,
    "PMON": 12,
    "PMOA": 3,
    "EBO": 11,
}
CURATED_PATIENTS = 12


@pytest.fixture
def data_scientist(study):
    user = UserFactory(username="dora")
    Membership.objects.create(study=study, user=user, role=Membership.Role.DATA_SCIENTIST)
    return user


@pytest.fixture
def curated(study, annotator):
    """Patch-only cells with tiny PNGs, one patient each of twelve, labelled in a gold round.
    Cells and labels are written in bulk (`bulk_import_labels`: the same labels and history
    rows as `set_label` makes, without a round trip per cell)."""
    rng = random.Random(5)
    patients = [
        Patient.objects.create(code=f"P-{n:02d}", cohort="AML") for n in range(CURATED_PATIENTS)
    ]
    gold = gold_round_for(study, annotator)
    nodes = {node.code: node for node in study.taxonomy.nodes.filter(code__in=CURATED_CLASS_SIZES)}
    cells, codes = [], []
    for class_index, (code, size) in enumerate(CURATED_CLASS_SIZES.items()):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (class_index * 30, 100, 200 - class_index * 20)).save(
            buffer, "PNG"
        )
        for index in range(size):
            name = default_storage.save(
                f"patch-cells/test/{code}_{index}.png", ContentFile(buffer.getvalue())
            )
            patient = (
                patients[index % CURATED_PATIENTS]
                if size >= CURATED_PATIENTS
                else rng.choice(patients[:3])
            )
            cells.append(
                Cell(study=study, patch=name, patient=patient, external_id=f"{code}/{index}")
            )
            codes.append(code)
    made = Cell.objects.bulk_create(cells)
    bulk_import_labels(gold, {cell.pk: nodes[code] for cell, code in zip(made, codes, strict=True)})
    return gold


@pytest.fixture
def split(study, curated, data_scientist):
    """The curated cells frozen with the proposed class map and split 2-fold by patient."""
    from datasets import classmaps, splits, versions

    class_map, _ = classmaps.save_class_map(
        study, "merged", classmaps.propose(study), data_scientist
    )
    version, _ = versions.make_dataset(study, "aml", data_scientist, class_map=class_map)
    made, _ = splits.make_split(version, "patient-kfold", data_scientist, k=2, seed=0)
    return made


PANEL_RATERS = ("pia", "quinn", "ruth")


@pytest.fixture
def panel_raters(study):
    """Three annotators who will rate a panel."""
    return [add_member(study, Membership.Role.ANNOTATOR, name) for name in PANEL_RATERS]


@pytest.fixture
def answered_panel(study, curated, coordinator, panel_raters):
    """A 3-rater panel over 2 curated cells per class, answered: pia says the gold class
    everywhere, quinn too except LYT for the first two cells, ruth the gold class except
    MON for the first cell and cannot classify for the last. The answers are written in bulk
    (`bulk_import_labels`), as `set_label` would write them."""
    from annotator import panels

    panel = panels.create_panel(
        study, panel_raters, coordinator, name="trio", mode="per-class", per_class=2, seed=11
    )
    gold = panels.round_answers(curated)
    nodes = {node.code: node for node in study.taxonomy.nodes.all()}
    rounds = list(panels.first_rounds(panel))
    cells = sorted(rounds[0].items.values_list("cell_id", flat=True))
    for round_ in rounds:
        answers = {}
        for position, cell_id in enumerate(cells):
            code = gold[cell_id]
            if round_.rater.username == "quinn" and position < 2:
                code = "LYT" if gold[cell_id] != "LYT" else "NGS"
            if round_.rater.username == "ruth" and position == 0:
                code = "MON" if gold[cell_id] != "MON" else "NGS"
            if round_.rater.username == "ruth" and position == len(cells) - 1:
                code = None  # cannot classify
            answers[cell_id] = nodes[code] if code else None
        bulk_import_labels(round_, answers)
    return panel
