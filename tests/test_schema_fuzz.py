"""Schemathesis over every operation of the generated OpenAPI schema, as a coordinator (who also
holds the data scientist's role, so every list and action is open to her) and as a blinded
rater. Any 5xx fails, and so does any documented answer whose body does not match the schema.

Each operation is tried with generated path ids and with the ids of real objects of the study,
a bounded number of derandomised examples each, in-process through the WSGI application inside
the test's transaction.
"""

from __future__ import annotations

import re
from datetime import timedelta

import hypothesis
import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, Phase
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from annotator import annotation, panels, rounds, screening, tile_links, uploads
from annotator.models import Membership, ProposedCell
from datasets import classmaps, exports, splits, versions
from mltasks import runs
from mltasks.models import ClassifiedCell, ScanClassification, TrainingRun

from .conftest import tus_metadata

EXAMPLES_PER_OPERATION = 8
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
# Cutting patches and rendering tiles is the slowest work an operation does; a few examples
# already reach every branch of these views.
SLOW_PATHS = re.compile(r"tiles|patch\.(png|jpeg)")


@pytest.fixture
def wsgi_app():
    """The WSGI application, with the connection kept open between requests (as Django's test
    client does) so that every request runs inside the test's transaction."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def world(
    study, scan, gold_cells, curated, annotator, rater, coordinator, data_scientist, panel_raters
):
    """One of everything: labels, a blinded round answered in part and its repeat, a panel
    answered with an adjudication and a consensus, a class map, a data set version, a split,
    an export, a training run and a done detection with its proposed cells."""
    Membership.objects.create(study=study, user=coordinator, role=Membership.Role.DATA_SCIENTIST)
    blinded = rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1, name="r1")
    for item in blinded.items.order_by("position")[:3]:
        annotation.set_label(item.cell, blinded, rater, node="MON")
    repeat = rounds.schedule_repeat(
        blinded, coordinator, not_before=timezone.now() - timedelta(minutes=1), seed=2
    )
    panel = panels.create_panel(
        study, panel_raters, coordinator, name="fuzz", mode="per-class", per_class=1, seed=3
    )
    for round_ in panels.first_rounds(panel):
        for index, item in enumerate(round_.items.order_by("cell_id")):
            node = "LYT" if round_.rater == panel_raters[0] and index < 2 else "NGS"
            annotation.set_label(item.cell, round_, round_.rater, node=node)
    adjudication = panels.open_adjudication(panel, coordinator, coordinator, name="fuzz-settle")
    settled = adjudication.items.order_by("position").first().cell_id
    panels.record_consensus(adjudication, settled, coordinator, node="MON", note="seen")
    class_map, _ = classmaps.save_class_map(study, "merged", classmaps.propose(study), coordinator)
    plain, _ = versions.make_dataset(study, "plain", coordinator)
    mapped, _ = versions.make_dataset(study, "mapped", coordinator, class_map=class_map)
    split, _ = splits.make_split(mapped, "stratified-kfold", coordinator, k=3)
    export = exports.request_export(split, "csv", coordinator)
    run = runs.start_run(split, coordinator, {})
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.FAILED, error="test")
    detected = screening.run_detection(screening.start_detection(scan, coordinator)[0].pk)
    # Every planted cell is a gold cell already, so the detector proposes none again: one spot
    # of its own, away from them.
    ProposedCell.objects.create(
        scan=scan,
        job=detected,
        detector_version=detected.detector_version,
        x=5,
        y=5,
        confidence=0.5,
    )
    counted = ScanClassification.objects.create(run=run, scan=scan, status="done")
    classified = ClassifiedCell.objects.create(
        job=counted,
        x=10,
        y=10,
        predicted=split.dataset.classes[0],
        probabilities=[1.0] + [0.0] * (len(split.dataset.classes) - 1),
    )
    label = gold_cells[0].labels.first()
    upload = uploads.create_upload(
        coordinator, "10", tus_metadata(filename="a.svs", study=study.name)
    )
    # A real tile link (the coordinator's): its fields are the signed tile's path parameters.
    link_user, epoch, expires, signature, scan_key = (
        tile_links.issue(coordinator, scan).tiles_url.strip("/").split("/")[1:6]
    )
    return {
        # `{id}` of each resource, by the path segment that names it.
        "studies": [study.pk],
        "taxonomies": [study.taxonomy_id],
        "scans": [scan.pk],
        "cells": [gold_cells[0].pk],
        "labels": [label.pk],
        "rounds": [blinded.pk, repeat.pk],
        "panels": [panel.pk],
        "adjudications": [adjudication.pk],
        "classmaps": [class_map.pk],
        "datasets": [plain.pk, mapped.pk],
        "splits": [split.pk],
        "exports": [export.pk],
        "training-runs": [run.pk],
        "detection-jobs": [detected.pk],
        "proposals": list(detected.proposals.values_list("pk", flat=True)[:1]),
        "scan-classifications": [counted.pk],
        "classified_cell_id": [classified.pk],
        # The other path parameters, by name.
        "scan_id": [scan.pk],
        "study_id": [study.pk],
        "patient_code": [scan.patient.code],
        "cell_id": [gold_cells[0].pk, settled],
        "round_id": [blinded.pk, repeat.pk],
        "token": [repeat.items.first().token, blinded.items.first().token],
        "position": [1],
        "level": [8],
        "col": [0],
        "row": [0],
        "upload_id": [upload.pk],
        "user_id": [link_user],
        "epoch": [epoch],
        "expires": [expires],
        "signature": [signature],
        "scan_key": [scan_key],
    }


def _schema():
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return schemathesis.openapi.from_dict(generated)


def _run_operation(operation, app, headers, path_parameters, examples) -> list[str]:
    """Failures of one operation over `examples` generated cases (empty when it held)."""
    failures: list[str] = []

    @hypothesis.given(case=operation.as_strategy(path_parameters=path_parameters))
    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        try:
            case.call_and_validate(app=app, headers=headers, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as failure:
            failures.append(f"{operation.label} {path_parameters or ''}:\n{failure}"[:1500])

    run()
    return failures[:2]


def _real_path_parameters(path: str, ids: dict) -> list[dict]:
    """Path parameters naming real objects: `{id}` by the resource its path names."""
    names = re.findall(r"{(\w+)}", path)
    if not names:
        return []
    resource = path.removeprefix("/api/v1/").split("/")[0]
    choices = {name: ids[resource if name == "id" else name] for name in names}
    longest = max(len(values) for values in choices.values())
    return [
        {name: values[index % len(values)] for name, values in choices.items()}
        for index in range(longest)
    ]


def _fuzz(app, user, ids: dict) -> list[str]:
    headers = {"Authorization": f"Token {Token.objects.get_or_create(user=user)[0].key}"}
    failures: list[str] = []
    operations = 0
    for result in _schema().get_all_operations():
        operation = result.ok()
        operations += 1
        examples = 2 if SLOW_PATHS.search(operation.path) else EXAMPLES_PER_OPERATION
        failures += _run_operation(operation, app, headers, None, examples)
        for real in _real_path_parameters(operation.path, ids):
            failures += _run_operation(operation, app, headers, real, 2)
    assert operations >= 50
    return failures


def test_every_operation_as_a_coordinator(world, wsgi_app, coordinator):
    failures = _fuzz(wsgi_app, coordinator, world)
    assert not failures, "\n\n".join(failures)


def test_every_operation_as_a_blinded_rater(world, wsgi_app, rater):
    failures = _fuzz(wsgi_app, rater, world)
    assert not failures, "\n\n".join(failures)


def test_the_schema_says_null_and_list_where_the_answers_hold_them(db):
    schema = SchemaGenerator().get_schema(request=None, public=True)
    components = schema["components"]["schemas"]
    assert components["Round"]["properties"]["repeats"]["nullable"] is True
    assert components["Round"]["properties"]["reference"]["nullable"] is True
    assert not {"reference", "seed", "design"} & set(components["Round"]["required"])
    assert components["Dataset"]["properties"]["class_map"]["nullable"] is True
    assert components["Cell"]["properties"]["x"]["nullable"] is True
    assert "nullable" not in components["CellRequest"]["properties"]["x"]
    history = schema["paths"]["/api/v1/labels/{id}/history/"]["get"]["responses"]["200"]
    assert history["content"]["application/json"]["schema"]["type"] == "array"
