"""Blinding, tested from the blinded rater's side.

Rita rates a blinded round (and later its repeat) over cells that Anna labelled in her gold
round with the whole scan in view; Bert rates the same cells in a round of his own. Rita tries
every endpoint of the API, with every id she could guess, and the pages: nothing she gets back
may name a cell's scan, position or patient, or any label but her own answer in the same round.
"""

from __future__ import annotations

import functools
import io
import json
import re
import uuid
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import Client, override_settings
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from PIL import Image
from rest_framework.test import APIClient

from annotator import annotation, panels, rounds, tile_links, uploads
from annotator.models import (
    Cell,
    Label,
    LabelChange,
    Membership,
    Panel,
    Patient,
    Round,
    RoundItem,
    ScanUpload,
)

from .conftest import (
    add_member,
    ingest_first_scan,
    label_planted_cells,
    load_default_taxonomy,
    make_outsider,
    tus_metadata,
)
from .factories import StudyFactory


def _logged_in(user) -> APIClient:
    """A session login, as the browser has: the image endpoints accept sessions and tokens."""
    client = APIClient()
    client.force_login(user)
    return client


# Keys that would carry a cell's identity or somebody's label; allowed only in the queue's own
# answer object (the rater's answer in the same round).
FORBIDDEN_KEYS = {"x", "y", "scan", "scans", "patient", "sha256", "cell", "cells", "node", "label"}
WRITE_BODIES = [
    {},
    {"cell": 0, "round": 0, "node": "NGS", "x": 5, "y": 5, "version": 1, "study": "munich"},
]


def _make_blinded(study, scan, gold_cells, rater, second_annotator, coordinator) -> dict:
    """Rita's round (half answered) and its repeat, Bert's round, Rita's own gold label."""
    own = annotation.create_cell(study, scan, 40, 40, rater)
    annotation.set_label(own, annotation.gold_round_for(study, rater), rater, node="NGS")
    rita = rounds.create_blinded_round(
        study, rater, coordinator, mode="all", seed=1, name="rita-blind-r1"
    )
    bert = rounds.create_blinded_round(
        study, second_annotator, coordinator, mode="all", seed=2, name="bert-blind-b1"
    )
    for item in bert.items.all():
        annotation.set_label(item.cell, bert, second_annotator, node="LYT")
    answered = list(rita.items.order_by("position")[:5])
    for item in answered:
        annotation.set_label(item.cell, rita, rater, node="MON")
    repeat = rounds.schedule_repeat(
        rita, coordinator, not_before=timezone.now() + timedelta(days=330), seed=3
    )
    return {
        "rita": rita,
        "bert": bert,
        "repeat": repeat,
        "own_cell": own,
        "answered": answered,
        "answered_ids": {item.cell_id for item in answered[:2]},
        "cells": [*gold_cells, own],
    }


@pytest.fixture
def blinded(study, scan, gold_cells, annotator, rater, second_annotator, coordinator):
    return _make_blinded(study, scan, gold_cells, rater, second_annotator, coordinator)


SECRET_NOTE = "consensus-secret-note"


def _add_panel(blinded, study, rater, second_annotator, coordinator) -> dict:
    """Rita and Bert also rate a panel over the gold cells (answered, disagreeing on two),
    and Cora has settled one disputed cell of its adjudication with a note."""
    panel = panels.create_panel(
        study, [rater, second_annotator], coordinator, name="sweep-panel", mode="all", seed=4
    )
    for round_ in panels.first_rounds(panel):
        for item in round_.items.order_by("cell_id"):
            disagree = round_.rater == rater and item.cell_id in blinded["answered_ids"]
            annotation.set_label(item.cell, round_, round_.rater, node="LYT" if disagree else "NGS")
    adjudication = panels.open_adjudication(
        panel, coordinator, coordinator, rule="any", name="sweep-settle"
    )
    first = adjudication.items.order_by("position").first()
    panels.record_consensus(adjudication, first.cell_id, coordinator, node="MON", note=SECRET_NOTE)
    return {**blinded, "panel": panel, "adjudication": adjudication}


@pytest.fixture
def panelled(blinded, study, rater, second_annotator, coordinator):
    return _add_panel(blinded, study, rater, second_annotator, coordinator)


def _forbidden_strings(scan) -> list[str]:
    return [scan.original_name, scan.sha256[:12], scan.patient.code, "smear_"]


def _walk(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), key, item
            yield from _walk(item, (*path, key))
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, path)


def _assert_clean(response, scan, where: str, allow_answer: bool = False) -> None:
    assert response.status_code < 500, f"{where}: {response.status_code}"
    text = response.content.decode("utf-8", "replace")
    for needle in _forbidden_strings(scan):
        assert needle not in text, f"{where} shows {needle!r}"
    headers = " ".join(f"{k}: {v}" for k, v in response.items())
    assert scan.sha256[:12] not in headers and "X-Patch" not in headers, where
    if "json" not in response.get("Content-Type", ""):
        return
    body = json.loads(text) if text else None
    if response.status_code >= 400:
        # Error bodies are keyed by the input field at fault ("node", "scan"): names, not data.
        # What must never come back is the stored state of somebody's label or cell.
        assert not (isinstance(body, dict) and body.get("current")), f"{where}: {body}"
        return
    for path, key, _ in _walk(body):
        if key in FORBIDDEN_KEYS:
            assert allow_answer and path[0] == "answer", f"{where} has key {'.'.join(path)}"


@functools.cache
def _schema_operations() -> tuple[tuple[str, str, list[str]], ...]:
    """(path, method, query parameter names) of every operation, generated once: the schema
    follows the code alone."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return tuple(
        (path, method.upper(), [p["name"] for p in op.get("parameters", []) if p["in"] == "query"])
        for path, methods in schema["paths"].items()
        for method, op in methods.items()
    )


def _fill(path: str, values: dict[str, list]) -> list[str]:
    """The path with every combination of values for its parameters, each URL once (ids of
    different kinds of object can be the same number)."""
    names = re.findall(r"{(\w+)}", path)
    urls = [path]
    for name in names:
        urls = [u.replace("{" + name + "}", str(v), 1) for u in urls for v in values[name]]
    return list(dict.fromkeys(urls))


def _state():
    return (
        Cell.objects.count(),
        Label.objects.count(),
        LabelChange.objects.count(),
        Round.objects.count(),
        RoundItem.objects.count(),
        Panel.objects.count(),
        list(ScanUpload.objects.values_list("pk", "offset")),
        list(Patient.objects.values_list("pk", "diagnosis_code", "diagnosis")),
    )


def _make_curation(study, coordinator):
    """A data set, split, export and training run of the study: what an overseer's forms
    would list (their names carry the study's cells and classes)."""
    from datasets import exports, splits, versions
    from mltasks.models import TrainingRun

    dataset, _ = versions.make_dataset(study, "munich-secret-set", coordinator)
    split, _ = splits.make_split(dataset, "holdout", coordinator, seed=0)
    exports.request_export(split, "csv", coordinator)
    TrainingRun.objects.create(split=split, config={}, created_by=coordinator)
    uploads.create_upload(coordinator, "10", tus_metadata(filename="secret.svs", study="munich"))
    return dataset


def _give_second_hat(rater, taxonomy):
    """Rita also coordinates a study of her own: overseeing powers there, none here."""
    from annotator.models import Membership, Study

    own = Study.objects.create(name="ritas-own", title="Rita's own", taxonomy=taxonomy)
    Membership.objects.create(study=own, user=rater, role=Membership.Role.COORDINATOR)
    return own


# A proposed cell's confidence, found nowhere else: a response showing it shows the proposal.
PROPOSAL_CONFIDENCE = 0.7654321


def _add_detection(scan, coordinator) -> None:
    """A finished detection on the scan with one proposed cell still to review."""
    from annotator.detection import DETECTOR_VERSION
    from annotator.models import DetectionJob, ProposedCell

    job = DetectionJob.objects.create(
        scan=scan,
        detector_version=DETECTOR_VERSION,
        status=DetectionJob.Status.DONE,
        created_by=coordinator,
        found_count=1,
        new_count=1,
    )
    ProposedCell.objects.create(
        scan=scan,
        job=job,
        detector_version=DETECTOR_VERSION,
        x=4321,
        y=1234,
        confidence=PROPOSAL_CONFIDENCE,
    )


# A patient's confirmed diagnosis, found nowhere else: a response showing it leaks it.
DIAGNOSIS_TEXT = "sweep-secret-diagnosis"


def _add_diagnosis(scan, coordinator) -> None:
    """The scan's patient carries a confirmed diagnosis with a text no other field holds."""
    from annotator import diagnoses

    study = scan.studies.get()
    diagnoses.set_diagnosis(study, scan.patient.code, coordinator, "AML", DIAGNOSIS_TEXT)


# A classified cell's probability, found nowhere else: a response showing it shows the count.
CLASSIFIED_PROBABILITY = 0.8765432


def _add_classification(scan, coordinator) -> None:
    """The study's training run counted the scan: one classified cell, at the proposal."""
    from mltasks.models import ClassifiedCell, ScanClassification, TrainingRun

    run = TrainingRun.objects.get(split__dataset__study__scans=scan)
    job = ScanClassification.objects.create(
        run=run, scan=scan, status="done", cell_count=1, created_by=coordinator
    )
    ClassifiedCell.objects.create(
        job=job, x=4321, y=1234, predicted="MYO", probabilities=[CLASSIFIED_PROBABILITY]
    )


def _hidden_strings(blinded, curation, scan, mine=()) -> list[str]:
    """What the browsable API's forms would show of the study: cells by position, other
    raters' rounds, the data set's name, the scan, its proposed cells."""
    strings = [*_forbidden_strings(scan), curation.name, SECRET_NOTE, str(PROPOSAL_CONFIDENCE)]
    strings.append(DIAGNOSIS_TEXT)
    strings.append(str(CLASSIFIED_PROBABILITY))
    strings += [f"({cell.x}, {cell.y})" for cell in blinded["cells"]]
    strings += [str(cell) for cell in blinded["cells"]]
    strings += [str(r) for r in Round.objects.exclude(pk__in=mine)]
    return strings


def _own_rounds(user) -> list[int]:
    return list(Round.objects.filter(rater=user).values_list("pk", flat=True))


def _sweep(client, blinded, scan, *, accept: str, hidden: list[str], check_keys: bool) -> int:
    """Every operation of the schema, with every id the client could guess, as GET with each
    query parameter and as writes with bodies naming the hidden things; nothing may show a
    hidden string, no write may be accepted, nothing may change. Returns the requests made."""
    cells = [c.pk for c in blinded["cells"]]
    labels = list(Label.objects.values_list("pk", flat=True))
    gold_rounds = list(Round.objects.filter(kind="gold").values_list("pk", flat=True))
    others = [blinded["bert"].pk, *gold_rounds]
    mine = [blinded["rita"].pk, blinded["repeat"].pk]
    tokens = list(blinded["bert"].items.values_list("token", flat=True)[:2]) + list(
        blinded["repeat"].items.values_list("token", flat=True)[:2]
    )
    from annotator.models import DetectionJob
    from datasets.models import DatasetVersion, Export, Split
    from mltasks.models import ClassifiedCell, ScanClassification, TrainingRun

    panelled = [blinded["panel"].pk, blinded["adjudication"].pk] if "panel" in blinded else []
    curated_ids = [
        *DatasetVersion.objects.values_list("pk", flat=True),
        *Split.objects.values_list("pk", flat=True),
        *Export.objects.values_list("pk", flat=True),
        *TrainingRun.objects.values_list("pk", flat=True),
        *DetectionJob.objects.values_list("pk", flat=True),
        *ScanClassification.objects.values_list("pk", flat=True),
    ]
    values = {
        "id": [
            *cells[:3],
            scan.pk,
            *labels[:3],
            *others,
            *mine,
            scan.studies.first().pk,
            *curated_ids,
            *panelled,
        ],
        "scan_id": [scan.pk],
        "study_id": [scan.studies.first().pk],
        "patient_code": [scan.patient.code],
        "cell_id": cells[:3],
        "classified_cell_id": list(ClassifiedCell.objects.values_list("pk", flat=True)),
        "level": [0, 12],
        "col": [0],
        "row": [0],
        "round_id": others + mine + panelled[1:],
        "position": [1],
        "token": tokens,
        "format": ["json"],
        "name": ["plot.png"],
        "upload_id": [*ScanUpload.objects.values_list("pk", flat=True), uuid.uuid4()],
        # A tile link she might try to forge for the scan (a real one is never given to her).
        "user_id": [blinded["rita"].rater_id],
        "epoch": ["0" * 16],
        "expires": [2**40],
        "signature": ["A" * 22],
        "scan_key": [tile_links.scan_key(scan)],
    }
    query_values = {
        "scan": scan.pk,
        "cell": cells[0],
        "round": others[0],
        "study": "munich",
        "dataset": curated_ids[0],
        "split": curated_ids[1],
        "panel": "sweep-panel",
        "with_reference": "true",
        "group": "blast",
        "threshold": "0.2",
        "positive": "AML",
    }
    bodies = [
        *WRITE_BODIES,
        {
            "study": "munich",
            "scan": scan.pk,
            "x": 5,
            "y": 5,
            "cell": cells[0],
            "round": mine[0],
            "node": "NGS",
            "version": 1,
            "dataset": curated_ids[0],
            "split": curated_ids[1],
            "raters": ["anna", "bert"],
            "adjudicator": "cora",
            "rule": "any",
            "note": "a note",
            "code": "ALL",
            "diagnosis": "a diagnosis",
        },
    ]

    def check(response, where, allow_answer=False):
        text = response.content.decode("utf-8", "replace")
        for needle in hidden:
            assert needle not in text, f"{where} shows {needle!r}"
        if check_keys:
            _assert_clean(response, scan, where, allow_answer=allow_answer)
        else:
            assert response.status_code < 500, f"{where}: {response.status_code}"

    before = _state()
    tried = 0
    for path, method, params in _schema_operations():
        for url in _fill(path, values):
            where = f"{method} {url} ({accept})"
            if method == "GET":
                queries = [{}] + [
                    {name: query_values[name]} for name in params if name in query_values
                ]
                for query in queries:
                    response = client.get(url, query, HTTP_ACCEPT=accept)
                    own_answer = url.startswith("/api/v1/queue/")  # her answer, same round
                    check(response, f"{where} {query}", allow_answer=own_answer)
                    tried += 1
                continue
            for body in bodies:
                response = client.generic(
                    method,
                    url,
                    json.dumps(body),
                    content_type="application/json",
                    HTTP_ACCEPT=accept,
                )
                check(response, f"{where} {body}")
                assert response.status_code >= 400, f"{where} {body} was accepted"
                tried += 1
    assert _state() == before, "a request of the sweep changed something"
    return tried


SWEEP_ACCEPTS = ["application/json", "text/html"]


@pytest.fixture(scope="class")
def sweep_world(django_db_setup, django_db_blocker, synthetic_scan_files, tmp_path_factory):
    """The world the sweeps walk (the `panelled` and `curation` fixtures' world), built once
    for all of them inside a transaction that is rolled back after the last: the sweeps only
    read it (each asserts that nothing changed), and each test's own additions are undone
    with the test's savepoint. Its files lie in one folder of its own."""
    folder = tmp_path_factory.mktemp("sweep-world")
    media = override_settings(MEDIA_ROOT=folder / "media", TILE_DIR=folder / "tiles")
    with django_db_blocker.unblock(), media, transaction.atomic():
        study = StudyFactory(name="munich", taxonomy=load_default_taxonomy())
        cora = add_member(study, Membership.Role.COORDINATOR, "cora")
        scan = ingest_first_scan(study, cora, synthetic_scan_files)
        anna = add_member(study, Membership.Role.ANNOTATOR, "anna")
        gold_cells = label_planted_cells(study, scan, anna, synthetic_scan_files[0][1]["cells"])
        rita = add_member(study, Membership.Role.ANNOTATOR, "rita")
        bert = add_member(study, Membership.Role.ANNOTATOR, "bert")
        blinded = _make_blinded(study, scan, gold_cells, rita, bert, cora)
        panelled = _add_panel(blinded, study, rita, bert, cora)
        curation = _make_curation(study, cora)
        _add_detection(scan, cora)
        _add_diagnosis(scan, cora)
        _add_classification(scan, cora)
        yield {"panelled": panelled, "curation": curation, "scan": scan, "rita": rita}
        transaction.set_rollback(True)


@pytest.mark.usefixtures("db")
class TestLeakSweep:
    """Every endpoint walked as each user who must learn nothing, with JSON and with the
    browsable API's HTML (whose forms list what related fields offer)."""

    @pytest.fixture(autouse=True)
    def _isolated_media(self):
        """The sweeps share the world's media folders (set by `sweep_world`)."""

    @pytest.mark.parametrize("accept", SWEEP_ACCEPTS)
    def test_every_api_endpoint_hides_scan_position_patient_and_labels(self, sweep_world, accept):
        panelled, curation, scan, rita = (
            sweep_world[key] for key in ("panelled", "curation", "scan", "rita")
        )
        hidden = _hidden_strings(panelled, curation, scan, _own_rounds(rita))
        tried = _sweep(
            _logged_in(rita), panelled, scan, accept=accept, hidden=hidden, check_keys=True
        )
        assert tried > 150

    @pytest.mark.parametrize("accept", SWEEP_ACCEPTS)
    def test_a_blinded_rater_who_coordinates_another_study_learns_nothing_more(
        self, sweep_world, accept
    ):
        panelled, curation, scan, rita = (
            sweep_world[key] for key in ("panelled", "curation", "scan", "rita")
        )
        _give_second_hat(rita, scan.studies.get().taxonomy)
        hidden = _hidden_strings(panelled, curation, scan, _own_rounds(rita))
        tried = _sweep(
            _logged_in(rita), panelled, scan, accept=accept, hidden=hidden, check_keys=True
        )
        assert tried > 150

    @pytest.mark.parametrize("accept", SWEEP_ACCEPTS)
    def test_a_member_of_another_study_learns_nothing_of_this_one(self, sweep_world, accept):
        panelled, curation, scan = (sweep_world[key] for key in ("panelled", "curation", "scan"))
        outsider = make_outsider()
        elsewhere = outsider.memberships.get().study
        Membership.objects.create(study=elsewhere, user=outsider, role=Membership.Role.COORDINATOR)
        hidden = [*_hidden_strings(panelled, curation, scan), "sweep-settle", "sweep-panel-"]
        tried = _sweep(
            _logged_in(outsider), panelled, scan, accept=accept, hidden=hidden, check_keys=False
        )
        assert tried > 150


def test_lists_show_none_of_the_study_cells_scans_or_labels(blinded, scan, rater):
    client = _logged_in(rater)
    assert client.get("/api/v1/cells/").json()["results"] == []
    assert client.get("/api/v1/scans/").json()["results"] == []
    assert client.get("/api/v1/labels/").json()["results"] == []
    rounds_seen = client.get("/api/v1/rounds/").json()["results"]
    assert {r["name"] for r in rounds_seen} == {
        "rita-blind-r1",
        blinded["repeat"].name,
        annotation.gold_round_for(blinded["rita"].study, rater).name,
    }
    for row in rounds_seen:
        assert not {"reference", "seed", "design"} & set(row), row


def test_hidden_things_read_exactly_like_missing_ones(blinded, scan, rater):
    client = _logged_in(rater)
    cell = blinded["cells"][0].pk
    for template in (
        "/api/v1/cells/{}/",
        "/api/v1/cells/{}/patch.png",
        "/api/v1/scans/{}/",
        "/api/v1/scans/{}/tiles/scan.dzi",
        "/api/v1/scans/{}/tiles/scan_files/0/0_0.jpeg",
    ):
        real = cell if "cells" in template else scan.pk
        hidden = client.get(template.format(real))
        missing = client.get(template.format(987654))
        assert hidden.status_code == missing.status_code == 404, template
        assert hidden.content.replace(str(real).encode(), b"N") == missing.content.replace(
            b"987654", b"N"
        ), template


def test_the_queue_gives_tokens_patches_and_only_the_raters_own_answer(blinded, scan, rater):
    client = _logged_in(rater)
    round_ = blinded["rita"]
    state = client.get(f"/api/v1/queue/{round_.pk}/").json()
    assert state["done"] == 5 and state["total"] == round_.items.count()
    assert state["first_unanswered"] == 6

    first = client.get(f"/api/v1/queue/{round_.pk}/items/1/")
    _assert_clean(first, scan, "item 1", allow_answer=True)
    body = first.json()
    assert set(body) == {"token", "position", "total", "done", "answer", "next_unanswered", "patch"}
    assert body["answer"] == {"node": "MON", "cannot_classify": False}
    assert body["patch"] == f"/api/v1/queue/items/{body['token']}/patch.png"

    patch = client.get(body["patch"])
    _assert_clean(patch, scan, "patch")
    assert patch["Content-Type"] == "image/png" and "ETag" not in patch
    image = Image.open(io.BytesIO(patch.content))
    assert image.size == (400, 400)
    assert not image.info or set(image.info) <= {"dpi"}, image.info
    assert b"tEXt" not in patch.content and b"eXIf" not in patch.content

    saved = client.put(
        f"/api/v1/queue/items/{body['token']}/answer/",
        {"node": "NGS", "seconds_spent": 2.5},
        format="json",
    )
    assert saved.status_code == 200 and saved.json()["answer"]["node"] == "NGS"
    item = RoundItem.objects.get(token=body["token"])
    label = Label.objects.get(cell=item.cell, round=round_)
    assert label.node.code == "NGS" and label.seconds_spent == 2.5
    assert LabelChange.objects.filter(cell_ref=item.cell_id, round=round_).count() == 2


def test_answer_errors_name_the_problem_and_nothing_else(blinded, scan, rater):
    client = _logged_in(rater)
    token = blinded["rita"].items.order_by("position").last().token
    url = f"/api/v1/queue/items/{token}/answer/"
    cases = [
        ({"node": "NOPE"}, "Unknown taxon code 'NOPE'"),
        ({"node": "MYO"}, "not a leaf"),
        ({}, "Give a node code"),
        ({"node": "NGS", "cannot_classify": True}, "not both"),
        ({"node": "NGS", "seconds_spent": -1}, "greater than or equal to 0"),
    ]
    for payload, message in cases:
        response = client.put(url, payload, format="json")
        assert response.status_code == 400, payload
        assert message in response.content.decode(), (payload, response.json())
        _assert_clean(response, scan, str(payload))
    other = blinded["bert"].items.first().token
    stolen = client.put(f"/api/v1/queue/items/{other}/answer/", {"node": "NGS"}, format="json")
    assert stolen.status_code == 404
    assert not Label.objects.filter(round=blinded["bert"], node__code="NGS").exists()


def test_the_repeat_is_closed_before_its_date_and_shows_no_earlier_answer(blinded, scan, rater):
    client = _logged_in(rater)
    repeat, original = blinded["repeat"], blinded["rita"]
    for url in (
        f"/api/v1/queue/{repeat.pk}/",
        f"/api/v1/queue/{repeat.pk}/items/1/",
        f"/api/v1/queue/items/{repeat.items.first().token}/patch.png",
    ):
        response = client.get(url)
        assert response.status_code == 403 and "opens on" in response.json()["detail"], url
    token = repeat.items.first().token
    early = client.put(f"/api/v1/queue/items/{token}/answer/", {"node": "NGS"}, format="json")
    assert early.status_code == 403
    assert not Label.objects.filter(round=repeat).exists()
    listed = {r["id"]: r for r in client.get("/api/v1/queue/").json()}
    assert listed[repeat.pk]["status"] == "waiting" and listed[original.pk]["status"] == "open"

    Round.objects.filter(pk=repeat.pk).update(not_before=timezone.now() - timedelta(minutes=1))
    answered_cells = {item.cell_id for item in blinded["answered"]}
    for position in range(1, repeat.items.count() + 1):
        item = client.get(f"/api/v1/queue/{repeat.pk}/items/{position}/").json()
        assert item["answer"] is None, "the repeat shows an answer before any was given"
    assert answered_cells  # the original round had answers for these cells
    closed = client.get(f"/api/v1/queue/{original.pk}/items/1/")
    assert closed.status_code == 403 and "closed when its repeat opened" in closed.json()["detail"]
    listed = {r["id"]: r for r in client.get("/api/v1/queue/").json()}
    assert listed[original.pk]["status"] == "closed" and listed[repeat.pk]["status"] == "open"


def test_pages_show_the_rater_nothing_of_the_scan(blinded, scan, rater):
    browser = Client()
    browser.force_login(rater)
    home = browser.get("/")
    assert home.status_code == 200
    _assert_clean(home, scan, "home page")
    assert b"Your blinded rounds" in home.content
    assert browser.get(f"/studies/munich/scans/{scan.pk}/").status_code == 404
    assert browser.get("/studies/munich/rounds/").status_code == 403
    assert browser.get("/studies/munich/agreement/").status_code == 403
    queue = browser.get(f"/queue/{blinded['rita'].pk}/")
    assert queue.status_code == 200
    _assert_clean(queue, scan, "queue page")
    waiting = browser.get(f"/queue/{blinded['repeat'].pk}/")
    assert b"opens on" in waiting.content
    assert browser.get(f"/queue/{blinded['bert'].pk}/").status_code == 404


def test_a_second_repeat_closes_the_first(blinded, rater, coordinator):
    original, first = blinded["rita"], blinded["repeat"]
    past = timezone.now() - timedelta(days=1)
    Round.objects.filter(pk=first.pk).update(not_before=past - timedelta(days=1))
    second = rounds.schedule_repeat(original, coordinator, not_before=past)
    client = _logged_in(rater)
    assert client.get(f"/api/v1/queue/{second.pk}/items/1/").status_code == 200
    for closed in (original, first):
        response = client.get(f"/api/v1/queue/{closed.pk}/items/1/")
        assert response.status_code == 403, closed.name


def test_a_scan_shared_with_another_study_gives_nothing_away(blinded, scan, rater, annotator):
    from annotator.models import Membership, Study

    copy = Study.objects.create(name="copy", title="copy", taxonomy=scan.studies.first().taxonomy)
    copy.scans.add(scan)
    Membership.objects.create(study=copy, user=rater, role=Membership.Role.ANNOTATOR)
    Membership.objects.create(study=copy, user=annotator, role=Membership.Role.ANNOTATOR)
    spot = blinded["cells"][0]
    twin = annotation.create_cell(copy, scan, spot.x, spot.y, annotator)
    client = _logged_in(rater)
    assert client.get("/api/v1/cells/", {"study": "copy"}).json()["results"] == []
    assert client.get(f"/api/v1/cells/{twin.pk}/patch.png").status_code == 404
    assert client.get(f"/api/v1/scans/{scan.pk}/tiles/scan.dzi").status_code == 404
    home = client.get("/")
    _assert_clean(home, scan, "home page with a shared scan")
    placed = client.post(
        "/api/v1/cells/", {"study": "copy", "scan": scan.pk, "x": 10**6, "y": 1}, format="json"
    )
    assert placed.status_code == 400 and "outside the scan" not in placed.content.decode()


def test_a_panel_rater_reaches_nothing_of_the_panel(panelled, rater, second_annotator):
    """The panel's endpoints and the adjudication page read to its raters exactly as those of
    a panel that does not exist, and list nothing."""
    panel, adjudication = panelled["panel"], panelled["adjudication"]
    cell = adjudication.items.first().cell_id
    for user in (rater, second_annotator):
        client = _logged_in(user)
        assert client.get("/api/v1/panels/").json()["results"] == []
        assert client.get("/api/v1/adjudications/").json()["results"] == []
        for template in (
            "/api/v1/panels/{}/",
            "/api/v1/panels/{}/votes/",
            "/api/v1/adjudications/{}/",
            "/api/v1/adjudications/{}/items/",
        ):
            real = adjudication.pk if "adjudications" in template else panel.pk
            hidden = client.get(template.format(real))
            missing = client.get(template.format(987654))
            assert hidden.status_code == missing.status_code == 404, template
            assert hidden.content.replace(str(real).encode(), b"N") == missing.content.replace(
                b"987654", b"N"
            ), template
        settled = client.put(
            f"/api/v1/adjudications/{adjudication.pk}/items/{cell}/", {"node": "NGS"}, format="json"
        )
        assert settled.status_code == 404
        page = Client()
        page.force_login(user)
        shown = page.get(f"/adjudications/{adjudication.pk}/")
        assert shown.status_code == 404 and SECRET_NOTE.encode() not in shown.content
        assert b"sweep-settle" not in shown.content
    assert Label.objects.filter(round=adjudication).count() == 1


def test_a_rejection_cannot_be_taken_back_by_a_blinded_rater_or_an_outsider(
    blinded, scan, rater, coordinator
):
    """`proposals/{id}/restore/` (which the sweeps walk too) reads to a rater of a blinded
    round and to a coordinator of another study exactly as a proposal that does not exist,
    and changes nothing."""
    from annotator.models import ProposedCell

    assert ("/api/v1/proposals/{id}/restore/", "POST", []) in _schema_operations()
    _add_detection(scan, coordinator)
    proposal = ProposedCell.objects.get(scan=scan)
    ProposedCell.objects.filter(pk=proposal.pk).update(status=ProposedCell.Status.REJECTED)
    outsider = make_outsider()
    Membership.objects.create(
        study=outsider.memberships.get().study, user=outsider, role=Membership.Role.COORDINATOR
    )
    for user in (rater, outsider):
        client = _logged_in(user)
        hidden = client.post(f"/api/v1/proposals/{proposal.pk}/restore/", format="json")
        missing = client.post("/api/v1/proposals/987654/restore/", format="json")
        assert hidden.status_code == missing.status_code == 404, user.username
        assert hidden.content.replace(str(proposal.pk).encode(), b"N") == missing.content.replace(
            b"987654", b"N"
        )
        assert str(PROPOSAL_CONFIDENCE).encode() not in hidden.content
    proposal.refresh_from_db()
    assert proposal.status == ProposedCell.Status.REJECTED
