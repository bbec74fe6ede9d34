"""Data set versions made from a panel's consensus: the majority vote or the adjudicated labels
as the label source, recorded (source, panel, agreement, each row's origin) and hashed, through
the domain, the command, the API and the page, compared with a gold version, split and exported.

The `answered_panel` fixture: three raters over 16 curated cells; the first cell (by id) is a
three-way tie, so it has no majority label; every other cell's majority is its gold class."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.test import Client

from annotator import panels
from core.errors import DomainError, NotFoundError
from datasets import exports, splits, versions
from datasets.models import DatasetVersion
from datasets.torch import ExportDataset

from .conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def cells(answered_panel) -> list[int]:
    """The panel's cells by id: the first is the tied one."""
    return panels.panel_table(answered_panel).cells


@pytest.fixture
def gold(curated) -> dict[int, str]:
    return panels.round_answers(curated)


def _other_class(code: str) -> str:
    return "PMOA" if code != "PMOA" else "EBO"


def _adjudicate(panel, coordinator, answers: dict):
    """An adjudication round over the cells the raters disagree on (the first two), with the
    coordinator's consensus for the cells `answers` names."""
    round_ = panels.open_adjudication(panel, coordinator, coordinator, rule="any")
    for cell, answer in answers.items():
        panels.record_consensus(round_, cell, coordinator, note="settled", **answer)
    return round_


def test_a_majority_version_leaves_the_tie_out_and_records_its_source(
    study, answered_panel, data_scientist, cells, gold
):
    version, created = versions.make_dataset(study, "trio", data_scientist, source="majority")
    assert created and version.label_source == "majority" and version.panel == answered_panel
    assert version.source == "majority of panel trio" and version.source_round is None
    rows = {row.cell: row.class_name for row in version.rows()}
    assert sorted(rows) == cells[1:]  # the tie is left out ...
    assert rows == {cell: gold[cell] for cell in cells[1:]}
    assert set(version.origin_of().values()) == {"majority"}
    assert version.counts == dict(Counter(rows.values())) and version.cell_count == 15
    record = version.consensus
    assert record["left_out"] == {  # ... and counted
        "no_consensus": 1,
        "pending": 0,
        "cannot_classify": 0,
        "filters": 0,
    }
    assert record["panel"] == "trio" and record["tie_rule"] == panels.TIE_RULE
    assert record["by_origin"] == {"majority": 15}
    agreement = record["agreement"]
    assert agreement["raters"] == ["pia", "quinn", "ruth"] and agreement["items"] == 16
    assert 0 < agreement["krippendorff_alpha"] < 1 and agreement["declined"] == 1
    # ruth declined one cell, so not every cell has three ratings: Fleiss' kappa says why not.
    assert agreement["fleiss_kappa"] is None and agreement["fleiss_kappa_reason"]
    assert versions.version_sha256(version) == version.sha256

    same, created_again = versions.make_dataset(
        study, "trio", data_scientist, source="majority", panel="trio"
    )
    assert not created_again and same.pk == version.pk


def test_an_adjudicated_version_carries_the_adjudicated_class(
    study, answered_panel, data_scientist, coordinator, cells, gold
):
    first, second = cells[:2]
    decided = _other_class(gold[first])
    round_ = _adjudicate(answered_panel, coordinator, {first: {"node": decided}})
    pending, _ = versions.make_dataset(study, "trio", data_scientist, source="adjudicated")
    assert pending.label_source == "adjudicated" and pending.source_round == round_
    assert pending.origin_of()[first] == "adjudicated"
    assert {row.cell: row.class_name for row in pending.rows()}[first] == decided
    assert second not in pending.origin_of() and pending.consensus["left_out"]["pending"] == 1
    assert pending.consensus["adjudication"] == round_.name

    panels.record_consensus(round_, second, coordinator, cannot_classify=True, note="smudged")
    # Cannot classify is left out by default: the same cells as before, so the same version.
    same, created = versions.make_dataset(study, "trio", data_scientist, source="adjudicated")
    assert not created and same.pk == pending.pk
    settled, _ = versions.make_dataset(study, "settled", data_scientist, source="adjudicated")
    assert second not in settled.origin_of() and settled.sha256 == pending.sha256
    assert settled.consensus["left_out"] == {
        "no_consensus": 0,
        "pending": 0,
        "cannot_classify": 1,
        "filters": 0,
    }
    kept, _ = versions.make_dataset(
        study,
        "trio-unc",
        data_scientist,
        source="adjudicated",
        adjudication=round_.name,
        filters={"exclude_cannot_classify": False},
    )
    assert {row.cell: row.class_name for row in kept.rows()}[second] == "cannot-classify"
    assert kept.origin_of()[second] == "adjudicated" and "cannot-classify" in kept.classes


def test_the_hash_covers_the_label_source(
    study, answered_panel, data_scientist, coordinator, cells, gold
):
    # Adjudicating the second cell to its gold class (the first left pending) gives the same
    # cells with the same classes as the majority: only the source and one origin differ.
    _adjudicate(answered_panel, coordinator, {cells[1]: {"node": gold[cells[1]]}})
    majority, _ = versions.make_dataset(study, "m", data_scientist, source="majority")
    adjudicated, _ = versions.make_dataset(study, "a", data_scientist, source="adjudicated")
    assert majority.rows() == adjudicated.rows() and majority.classes == adjudicated.classes
    as_gold = versions.manifest_sha256(majority.classes, majority.rows())
    assert len({as_gold, majority.sha256, adjudicated.sha256}) == 3
    assert versions.version_sha256(adjudicated) == adjudicated.sha256

    # A version made from a round hashes as it always did: no label source line or column.
    from_gold, _ = versions.make_dataset(study, "g", data_scientist)
    assert from_gold.label_source == "gold" and from_gold.panel is None
    assert from_gold.consensus == {} and all(len(row) == 4 for row in from_gold.manifest)
    assert from_gold.sha256 == versions.manifest_sha256(from_gold.classes, from_gold.manifest)


def test_the_diff_from_gold_lists_the_relabelled_cells_and_their_origin(
    study, answered_panel, data_scientist, coordinator, cells, gold
):
    first, second = cells[:2]
    decided = _other_class(gold[first])
    _adjudicate(answered_panel, coordinator, {first: {"node": decided}, second: {"node": "LYT"}})
    from_gold, _ = versions.make_dataset(study, "gold", data_scientist)
    adjudicated, _ = versions.make_dataset(study, "trio", data_scientist, source="adjudicated")
    diff = versions.diff_versions(from_gold, adjudicated).to_dict()
    expected = [{"cell": first, "from": gold[first], "to": decided, "origin": "adjudicated"}]
    if gold[second] != "LYT":
        expected.append(
            {"cell": second, "from": gold[second], "to": "LYT", "origin": "adjudicated"}
        )
    assert diff["relabelled"] == sorted(expected, key=lambda change: change["cell"])
    assert diff["added"] == [] and len(diff["removed"]) == len(from_gold.manifest) - 16
    assert diff["label_source_changed"]
    assert diff["label_sources"]["to"].startswith("adjudicated: adjudication")
    assert diff["label_sources"]["from"] == f"gold: {from_gold.source}"

    client = client_for(data_scientist)
    answer = client.get(f"/api/v1/datasets/{from_gold.pk}/diff/", {"other": adjudicated.pk})
    assert answer.status_code == 200 and answer.json()["relabelled"] == diff["relabelled"]
    assert answer.json()["label_source_changed"] is True


def test_unknown_panels_and_missing_adjudication_are_refused(
    study, answered_panel, curated, data_scientist
):
    with pytest.raises(NotFoundError, match=r"No panel 'nope' in study munich \(panels: trio\)"):
        versions.make_dataset(study, "x", data_scientist, source="majority", panel="nope")
    with pytest.raises(DomainError, match="Panel trio has no adjudication round yet"):
        versions.make_dataset(study, "x", data_scientist, source="adjudicated")
    with pytest.raises(DomainError, match="A panel goes with the source majority or adjudicated"):
        versions.make_dataset(study, "x", data_scientist, panel="trio")
    with pytest.raises(DomainError, match="goes with the source adjudicated"):
        versions.make_dataset(study, "x", data_scientist, source="majority", adjudication="r")
    assert not DatasetVersion.objects.exists()


def test_a_study_without_a_panel_has_no_consensus(study, curated, data_scientist):
    with pytest.raises(DomainError, match="Study munich has no panel"):
        versions.make_dataset(study, "x", data_scientist, source="majority")


def test_the_command_makes_a_consensus_version(study, answered_panel, data_scientist):
    out = io.StringIO()
    call_command(
        "make_dataset",
        "--study",
        "munich",
        "--name",
        "trio",
        "--source",
        "majority",
        "--panel",
        "trio",
        stdout=out,
    )
    version = DatasetVersion.objects.get(name="trio")
    assert version.sha256 in out.getvalue() and "(15 cells" in out.getvalue()
    assert "left out: 1 without a majority, 0 pending adjudication" in out.getvalue()
    assert "Krippendorff's alpha 0." in out.getvalue()
    with pytest.raises(CommandError, match="No panel 'nope'"):
        call_command("make_dataset", "--study", "munich", "--name", "x", "--panel", "nope",
                     "--source", "majority")  # fmt: skip
    with pytest.raises(CommandError, match="no adjudication round yet"):
        call_command("make_dataset", "--study", "munich", "--name", "x", "--source", "adjudicated")


def test_the_api_makes_and_shows_consensus_versions(
    study, answered_panel, data_scientist, panel_raters
):
    client = client_for(data_scientist)
    body = {"study": "munich", "name": "trio", "source": "majority", "panel": "trio"}
    made = client.post("/api/v1/datasets/", body, format="json")
    assert made.status_code == 201, made.json()
    shown = made.json()
    assert shown["label_source"] == "majority" and shown["panel"] == "trio"
    assert shown["consensus"]["left_out"]["no_consensus"] == 1
    assert shown["consensus"]["agreement"]["items"] == 16
    assert client.post("/api/v1/datasets/", body, format="json").status_code == 200
    detail = client.get(f"/api/v1/datasets/{shown['id']}/").json()
    assert all(row[4] == "majority" for row in detail["manifest"])

    refusals = [
        ({**body, "panel": "nope"}, 404, "No panel 'nope'"),
        ({**body, "source": "adjudicated"}, 400, "no adjudication round yet"),
        ({**body, "source": "gold"}, 400, "A panel goes with the source majority"),
        ({**body, "adjudication": "r9"}, 400, "goes with the source adjudicated"),
        ({**body, "source": "adjudicated", "adjudication": "r9"}, 404, "No adjudication round"),
    ]
    for data, status, message in refusals:
        response = client.post("/api/v1/datasets/", {**data, "name": "x"}, format="json")
        assert response.status_code == status and message in str(response.json()), data

    # The panel's raters are blinded: they see no data set and cannot make one.
    rater = client_for(panel_raters[0])
    assert rater.get("/api/v1/datasets/").json()["results"] == []
    assert rater.get(f"/api/v1/datasets/{shown['id']}/").status_code == 404
    assert rater.post("/api/v1/datasets/", {**body, "name": "y"}, format="json").status_code == 400
    assert not DatasetVersion.objects.filter(name="y").exists()


def test_a_consensus_version_splits_and_exports_with_its_label_sources(
    study, answered_panel, data_scientist, coordinator, cells, gold
):
    first, second = cells[:2]
    _adjudicate(
        answered_panel, coordinator, {cell: {"node": gold[cell]} for cell in (first, second)}
    )
    version, _ = versions.make_dataset(study, "trio", data_scientist, source="adjudicated")
    split, _ = splits.make_split(version, "stratified-kfold", data_scientist, k=2, seed=0)
    origins = version.origin_of()
    for export_format in ("csv", "imagefolder"):
        export = exports.run_export(exports.request_export(split, export_format, data_scientist).pk)
        assert export.status == "done", export.error
        with default_storage.open(export.file, "rb") as handle:
            archive = zipfile.ZipFile(io.BytesIO(handle.read()))
        rows = list(csv.reader(io.StringIO(archive.read("manifest.csv").decode())))
        assert rows[0] == [*exports.MANIFEST_COLUMNS, "label_source"]
        assert {int(row[0]): row[-1] for row in rows[1:]} == origins
        described = json.loads(archive.read("dataset.json"))["dataset"]
        assert described["label_source"] == "adjudicated" and described["panel"] == "trio"
        assert described["consensus"]["by_origin"] == {"adjudicated": 2, "majority": 14}
    assert origins[first] == origins[second] == "adjudicated"
    local = default_storage.path(export.file)
    test = ExportDataset(local, fold=0, role="test")
    train = ExportDataset(local, fold=0, role="train")
    assert (
        len(test) + len(train) == 16 and sorted(map(int, test.cell_ids + train.cell_ids)) == cells
    )


def test_the_page_makes_a_consensus_version_and_shows_its_agreement(
    study, answered_panel, data_scientist
):
    browser = Client()
    browser.force_login(data_scientist)
    response = browser.post(
        "/studies/munich/datasets/",
        {"action": "dataset", "name": "trio", "source": "majority", "panel": "trio"},
        follow=True,
    )
    page = response.content.decode()
    assert "Data set trio v1 made" in page
    assert "majority of panel trio" in page and "a panel&#x27;s majority vote: 15 majority" in page
    assert "left out 1 without a majority, 0 pending adjudication" in page
    assert "Krippendorff's alpha 0." in page
    refused = browser.post(
        "/studies/munich/datasets/",
        {"action": "dataset", "name": "x", "source": "adjudicated", "panel": "trio"},
        follow=True,
    ).content.decode()
    assert "Panel trio has no adjudication round yet" in refused


def test_a_long_adjudication_name_still_fits_the_source(
    study, answered_panel, data_scientist, coordinator, cells
):
    long_name = "a" * 200
    round_ = panels.open_adjudication(
        answered_panel, coordinator, coordinator, rule="any", name=long_name
    )
    panels.record_consensus(round_, cells[0], coordinator, node="NGS")
    version, _ = versions.make_dataset(study, "trio", data_scientist, source="adjudicated")
    assert len(version.source) == 200 and version.source.endswith("…")
    assert version.consensus["adjudication"] == long_name and version.source_round == round_
