"""Who placed a data set's cells: a version records which cells the detector placed (a proposed
cell accepted) and how many by hand, without touching its hash; the `placed_by` filter of the
domain function, the command, the API and the page; the `placed_by` column of the exports."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import transaction

from annotator import annotation, screening
from annotator.models import Cell
from core.errors import DomainError
from datasets import exports, splits, versions
from datasets.geojson import scan_cells_geojson

from .test_proposal_review import add_proposals


@pytest.fixture
def placed(study, scan, annotator, coordinator, planted):
    """The planted cells of the scan in anna's gold round: the first four accepted from the
    detector's proposals (two by hotkey, two in a view and labelled afterwards), one proposal
    rejected, the rest clicked by hand. Returns (hand cell ids, detector cell ids)."""
    by_detector, by_hand = planted[:4], planted[5:]
    proposals = add_proposals(scan, coordinator, [(spot["x"], spot["y"]) for spot in planted[:5]])
    gold = annotation.gold_round_for(study, annotator)
    detector = [
        screening.accept_proposal(proposal, annotator, spot["code"]).cell.pk
        for proposal, spot in zip(proposals[:2], by_detector[:2], strict=True)
    ]
    for proposal, spot in zip(proposals[2:4], by_detector[2:], strict=True):
        view = screening.accept_in_view(
            scan, annotator, proposal.x, proposal.y, proposal.x, proposal.y
        )
        cell = Cell.objects.get(pk=view.cells[0]["cell"])
        annotation.set_label(cell, gold, annotator, node=spot["code"])
        detector.append(cell.pk)
    screening.reject_proposal(proposals[4], annotator)
    hand = []
    for spot in by_hand:
        cell = annotation.create_cell(study, scan, spot["x"], spot["y"], annotator)
        annotation.set_label(cell, gold, annotator, node=spot["code"])
        hand.append(cell.pk)
    return hand, detector


def _cells(version) -> list[int]:
    return [row[0] for row in version.manifest]


def test_a_version_records_the_cells_the_detector_placed_outside_its_hash(
    study, data_scientist, placed
):
    hand, detector = placed
    version, created = versions.make_dataset(study, "screened", data_scientist)
    assert created and sorted(_cells(version)) == sorted(hand + detector)
    assert version.detector_cells == sorted(detector)
    assert version.placement == {"hand": len(hand), "detector": 4}
    assert versions.placed_by_of(version) == {
        **dict.fromkeys(hand, "hand"),
        **dict.fromkeys(detector, "detector"),
    }
    # The hash is the one the manifest always had: placement is not hashed (it is a function
    # of the cell ids the hash covers).
    assert version.sha256 == versions.manifest_sha256(version.classes, version.manifest)
    assert versions.version_sha256(version) == version.sha256
    again, created = versions.make_dataset(study, "screened", data_scientist)
    assert not created and again.pk == version.pk


def test_placed_by_keeps_the_cells_placed_so_and_is_recorded_in_the_filters(
    study, data_scientist, placed
):
    hand, detector = placed
    found, _ = versions.make_dataset(
        study, "found", data_scientist, filters={"placed_by": "detector"}
    )
    assert sorted(_cells(found)) == sorted(detector)
    assert found.filters["placed_by"] == "detector"
    assert found.placement == {"hand": 0, "detector": 4}
    clicked, _ = versions.make_dataset(
        study, "clicked", data_scientist, filters={"placed_by": "hand"}
    )
    assert sorted(_cells(clicked)) == sorted(hand) and clicked.detector_cells == []
    both, _ = versions.make_dataset(study, "both", data_scientist)
    assert "placed_by" not in both.filters  # as versions recorded before the filter existed
    with pytest.raises(DomainError, match="placed_by is hand or detector"):
        versions.make_dataset(study, "bad", data_scientist, filters={"placed_by": "robot"})


def test_placed_by_that_leaves_nothing_is_refused_by_name(study, data_scientist, gold_cells):
    with pytest.raises(DomainError, match="No cell placed by detector"):
        versions.make_dataset(study, "none", data_scientist, filters={"placed_by": "detector"})
    version, _ = versions.make_dataset(study, "plain", data_scientist)
    assert version.placement == {"hand": len(gold_cells), "detector": 0}


def test_the_command_filters_and_prints_the_placement(study, placed, capsys):
    _, detector = placed
    call_command("make_dataset", "--study", study.name, "--name", "cmd", "--placed-by", "detector")
    printed = capsys.readouterr().out
    assert "placed by hand 0, by the detector 4" in printed
    version = versions.find_dataset("cmd", study)
    assert sorted(_cells(version)) == sorted(detector)


def test_the_api_filters_and_shows_the_placement(api_as, study, data_scientist, placed):
    hand, detector = placed
    client = api_as(data_scientist)
    made = client.post(
        "/api/v1/datasets/",
        {"study": study.name, "name": "api-found", "placed_by": "detector"},
        format="json",
    )
    assert made.status_code == 201, made.content
    assert made.json()["placement"] == {"hand": 0, "detector": 4}
    assert made.json()["filters"]["placed_by"] == "detector"
    whole = client.post(
        "/api/v1/datasets/", {"study": study.name, "name": "api-all"}, format="json"
    )
    detail = client.get(f"/api/v1/datasets/{whole.json()['id']}/").json()
    assert detail["placement"] == {"hand": len(hand), "detector": 4}
    assert detail["detector_cells"] == sorted(detector)
    listed = client.get("/api/v1/datasets/", {"study": study.name}).json()["results"]
    assert {row["name"]: row["placement"]["detector"] for row in listed} == {
        "api-found": 4,
        "api-all": 4,
    }
    refused = client.post(
        "/api/v1/datasets/",
        {"study": study.name, "name": "api-bad", "placed_by": "robot"},
        format="json",
    )
    assert refused.status_code == 400 and "placed_by" in refused.json()


def test_the_page_offers_the_filter_and_shows_the_placement(client, study, data_scientist, placed):
    hand, _ = placed
    client.force_login(data_scientist)
    page = f"/studies/{study.name}/datasets/"
    assert 'name="placed_by"' in client.get(page).content.decode()
    posted = client.post(
        page, {"action": "dataset", "name": "by-hand", "source": "gold", "placed_by": "hand"}
    )
    assert posted.status_code == 302
    version = versions.find_dataset("by-hand", study)
    assert sorted(_cells(version)) == sorted(hand)
    shown = client.get(page).content.decode()
    assert f"placed by hand {len(hand)}, by the detector 0 (only hand-placed cells kept)" in shown


def test_exports_have_a_placed_by_column_and_the_summary(study, data_scientist, placed):
    hand, detector = placed
    version, _ = versions.make_dataset(study, "exported", data_scientist)
    split, _ = splits.make_split(version, "holdout", data_scientist, seed=0)
    export = exports.run_export(exports.request_export(split, "csv", data_scientist).pk)
    assert export.status == "done", export.error
    with default_storage.open(export.file, "rb") as handle:
        archive = zipfile.ZipFile(io.BytesIO(handle.read()))
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert list(rows[0]) == exports.MANIFEST_COLUMNS and exports.MANIFEST_COLUMNS[-1] == "placed_by"
    assert {int(row["cell_id"]): row["placed_by"] for row in rows} == {
        **dict.fromkeys(hand, "hand"),
        **dict.fromkeys(detector, "detector"),
    }
    described = json.loads(archive.read("dataset.json"))["dataset"]
    assert described["placement"] == {"hand": len(hand), "detector": 4}
    assert described["sha256"] == version.sha256


def test_the_qupath_export_says_who_placed_each_cell(study, scan, annotator, placed):
    hand, detector = placed
    data = scan_cells_geojson(study, scan, annotation.gold_round_for(study, annotator))
    found = {
        feature["properties"]["cytomark"]["cell"]: feature["properties"]["cytomark"]["placed_by"]
        for feature in data["features"]
    }
    assert found == {**dict.fromkeys(hand, "hand"), **dict.fromkeys(detector, "detector")}


def test_the_migration_records_the_placement_of_versions_made_before(study, data_scientist, placed):
    """Migration datasets.0005 fills in what a version made before it would have recorded;
    the frozen-row triggers are back afterwards."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from datasets.models import DatasetVersion, ImmutableError

    hand, detector = placed
    version, _ = versions.make_dataset(study, "older", data_scientist)
    with connection.cursor() as cursor:  # the deferred checks of the rows made: no ALTER before
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    executor = MigrationExecutor(connection)
    executor.migrate([("datasets", "0004_consensus_sources")])
    executor = MigrationExecutor(connection)
    executor.migrate([("datasets", "0005_placement")])
    found = DatasetVersion.objects.get(pk=version.pk)
    assert found.detector_cells == sorted(detector)
    assert found.placement == {"hand": len(hand), "detector": 4}
    assert found.sha256 == version.sha256
    with pytest.raises(Exception, match="frozen"), transaction.atomic():
        DatasetVersion.objects.filter(pk=version.pk).update(notes="changed")
    with pytest.raises(ImmutableError):
        found.save()
