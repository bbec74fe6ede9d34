"""QuPath GeoJSON: a scan's cells exported as classified points, read back into a fresh scan, and
every kind of bad feature reported by its place in the file with nothing written."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from annotator import annotation
from annotator.models import Cell, Label, LabelChange, Round, TaxonNode
from annotator.scans import ingest_scan
from core.errors import DomainError
from datasets.geojson import (
    IGNORE_CLASS,
    GeoJsonProblems,
    import_cells_geojson,
    scan_cells_geojson,
)


def _point(x, y, name=None, geometry="Point"):
    properties = {"objectType": "annotation"}
    if name is not None:
        properties["classification"] = {"name": name, "color": [255, 0, 0]}
    coordinates = [x, y] if geometry == "Point" else [[x, y]]
    return {
        "type": "Feature",
        "geometry": {"type": geometry, "coordinates": coordinates},
        "properties": properties,
    }


def _answers(study, scan, round_) -> dict[tuple[int, int], str | None]:
    """Position -> node code, IGNORE_CLASS, or None (no label in the round)."""
    labels = {label.cell_id: label for label in round_.labels.select_related("node")}
    answers = {}
    for cell in Cell.objects.filter(study=study, scan=scan):
        label = labels.get(cell.pk)
        if label is None:
            answers[(cell.x, cell.y)] = None
        else:
            answers[(cell.x, cell.y)] = IGNORE_CLASS if label.cannot_classify else label.node.code
    return answers


@pytest.fixture
def fresh_scan(study, coordinator, synthetic_scan_files):
    path, _ = synthetic_scan_files[1]
    return ingest_scan(path, study=study, patient_code="P-002", cohort="AML", user=coordinator).scan


@pytest.fixture
def gold(study, annotator, scan, gold_cells):
    """Anna's gold round: the planted cells, one cell she cannot classify, one unlabelled."""
    round_ = annotation.gold_round_for(study, annotator)
    unclear = annotation.create_cell(study, scan, 10, 20, annotator)
    annotation.set_label(unclear, round_, annotator, cannot_classify=True)
    annotation.create_cell(study, scan, 30, 40, annotator)
    return round_


def test_export_gives_qupath_points_classified_by_the_round(study, scan, gold, gold_cells):
    data = scan_cells_geojson(study, scan, gold)
    assert data["type"] == "FeatureCollection"
    assert len(data["features"]) == len(gold_cells) + 2
    json.dumps(data)  # plain JSON, no model objects

    first = gold_cells[0]
    node = first.labels.get().node
    red, green, blue = (int(node.colour[i : i + 2], 16) for i in (1, 3, 5))
    assert data["features"][0] == {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [first.x, first.y]},
        "properties": {
            "objectType": "annotation",
            "isLocked": False,
            "classification": {"name": node.code, "color": [red, green, blue]},
            "cytomark": {
                "cell": first.pk,
                "node": node.code,
                "cannot_classify": False,
                "placed_by": "hand",
            },
        },
    }
    unclear, bare = data["features"][-2:]
    assert unclear["geometry"]["coordinates"] == [10, 20]
    assert unclear["properties"]["classification"]["name"] == IGNORE_CLASS
    assert unclear["properties"]["cytomark"] == {
        "cell": unclear["properties"]["cytomark"]["cell"],
        "node": None,
        "cannot_classify": True,
        "placed_by": "hand",
    }
    assert bare["geometry"]["coordinates"] == [30, 40]
    assert "classification" not in bare["properties"]
    assert bare["properties"]["cytomark"]["node"] is None


def test_export_then_import_into_a_fresh_scan_keeps_positions_and_classes(
    study, scan, fresh_scan, gold, second_annotator
):
    data = json.loads(json.dumps(scan_cells_geojson(study, scan, gold)))
    target = annotation.gold_round_for(study, second_annotator)
    summary = import_cells_geojson(study, fresh_scan, target, data, second_annotator)
    expected = _answers(study, scan, gold)
    assert _answers(study, fresh_scan, target) == expected
    assert summary.cells_created == len(expected)
    assert summary.labels_created == len(expected) - 1 and summary.without_class == 1
    assert LabelChange.objects.filter(round=target, action="create").count() == len(expected) - 1


def test_import_reads_a_bare_list_multipoints_and_class_names_loosely(
    study, fresh_scan, second_annotator
):
    TaxonNode.objects.filter(taxonomy=study.taxonomy, code="EOS").update(
        aliases=["Granulocyte, eosinophilic"]
    )
    features = [
        _point(100.7, 200.2, "NGS"),
        _point(110, 200, "lyt"),
        _point(120, 200, "granulocyte, EOSINOPHILIC"),
        _point(130, 200, "monocyte"),
        _point(140, 200, IGNORE_CLASS),
        _point(150, 200),
        {
            "type": "Feature",
            "geometry": {"type": "MultiPoint", "coordinates": [[160, 200], [170, 200]]},
            "properties": {"classification": {"names": ["NGB"]}},
        },
    ]
    round_ = annotation.gold_round_for(study, second_annotator)
    summary = import_cells_geojson(study, fresh_scan, round_, features, second_annotator)
    assert summary.features == 7 and summary.cells_created == 8
    assert _answers(study, fresh_scan, round_) == {
        (100, 200): "NGS",
        (110, 200): "LYT",
        (120, 200): "EOS",
        (130, 200): "MON",
        (140, 200): IGNORE_CLASS,
        (150, 200): None,
        (160, 200): "NGB",
        (170, 200): "NGB",
    }


def test_importing_again_reuses_the_cells_and_records_a_changed_class(
    study, fresh_scan, second_annotator
):
    round_ = annotation.gold_round_for(study, second_annotator)
    features = [_point(100, 200, "NGS"), _point(300, 400, "MON")]
    import_cells_geojson(study, fresh_scan, round_, features, second_annotator)
    again = import_cells_geojson(study, fresh_scan, round_, features, second_annotator)
    assert (again.cells_created, again.cells_reused, again.labels_unchanged) == (0, 2, 2)
    assert not again.changed_anything

    features[1] = _point(300, 400, "EOS")
    changed = import_cells_geojson(study, fresh_scan, round_, features, second_annotator)
    assert changed.labels_changed == 1 and Cell.objects.filter(scan=fresh_scan).count() == 2
    update = LabelChange.objects.get(round=round_, action="update")
    assert (update.old_node.code, update.new_node.code) == ("MON", "EOS")


def test_bad_features_are_all_reported_by_index_and_nothing_is_written(
    study, fresh_scan, second_annotator
):
    round_ = annotation.gold_round_for(study, second_annotator)
    polygon = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]},
        "properties": {},
    }
    data = {
        "type": "FeatureCollection",
        "features": [
            _point(100, 100, "NGS"),
            _point(5000, 10, "NGS"),
            _point(200, 200, "Tumor"),
            polygon,
            _point(300, 300, "PHY"),
            {
                "type": "Feature",
                "geometry": {"type": "MultiPoint", "coordinates": [[400, 400], [-1, 5]]},
                "properties": {},
            },
            _point(100.4, 100.9, "MON"),
            "not a feature",
        ],
    }
    with pytest.raises(GeoJsonProblems) as caught:
        import_cells_geojson(study, fresh_scan, round_, data, second_annotator)
    assert caught.value.problems == [
        "features[1]: point (5000, 10) is outside the scan (3000 x 2400)",
        "features[2]: unknown class 'Tumor' (not a code, alias or name of a node of aml-18 v1)",
        "features[3]: geometry Polygon is not a point (only Point and MultiPoint become cells)",
        "features[4]: class 'PHY' names PHY, which is not a leaf of the taxonomy "
        "(use one of its children: NGS, NGB, LYT, MON, EOS, BAS)",
        "features[5], point 1: point (-1, 5) is outside the scan (3000 x 2400)",
        "features[6]: pixel (100, 100) is taken by features[0] already",
        "features[7]: not a GeoJSON feature",
    ]
    assert "nothing was imported" in str(caught.value)
    assert not Cell.objects.filter(scan=fresh_scan).exists()
    assert not Label.objects.filter(round=round_).exists()


def test_data_that_is_no_feature_collection_is_refused(study, fresh_scan, second_annotator):
    round_ = annotation.gold_round_for(study, second_annotator)
    with pytest.raises(GeoJsonProblems, match="expected a FeatureCollection"):
        import_cells_geojson(study, fresh_scan, round_, {"type": "Polygon"}, second_annotator)


def test_import_goes_only_into_the_users_own_gold_round(study, fresh_scan, gold, second_annotator):
    with pytest.raises(DomainError, match="the user's own gold round; round Gold round of anna"):
        import_cells_geojson(study, fresh_scan, gold, [_point(1, 1)], second_annotator)


def test_the_export_command_defaults_to_the_gold_round_with_most_labels(
    study, scan, gold, gold_cells, second_annotator, tmp_path, capsys
):
    other = annotation.gold_round_for(study, second_annotator)
    annotation.set_label(gold_cells[0], other, second_annotator, node="EOS")
    out = tmp_path / "cells.geojson"
    call_command("export_geojson", "--study", study.name, "--scan", scan.pk, "--out", str(out))
    data = json.loads(out.read_text())
    assert data == scan_cells_geojson(study, scan, gold)
    total = len(gold_cells) + 2
    assert f"{total} cells of scan {scan.pk} ({total - 1} classified in round {gold})" in (
        capsys.readouterr().out
    )

    call_command(
        "export_geojson",
        *("--study", study.name, "--scan", scan.pk, "--round", other.name, "--out", str(out)),
    )
    classified = [
        f for f in json.loads(out.read_text())["features"] if "classification" in f["properties"]
    ]
    assert [f["properties"]["classification"]["name"] for f in classified] == ["EOS"]


def test_the_export_command_names_what_is_missing(study, scan, tmp_path):
    out = str(tmp_path / "cells.geojson")
    with pytest.raises(CommandError, match=r"has labels on scan \d+; name one with --round"):
        call_command("export_geojson", "--study", study.name, "--scan", scan.pk, "--out", out)
    with pytest.raises(CommandError, match="No round 'nope' in study munich"):
        call_command(
            "export_geojson",
            *("--study", study.name, "--scan", scan.pk, "--round", "nope", "--out", out),
        )
    with pytest.raises(CommandError, match="No study named 'nope'"):
        call_command("export_geojson", "--study", "nope", "--scan", scan.pk, "--out", out)


def test_the_import_command_labels_in_the_users_gold_round(
    study, fresh_scan, second_annotator, tmp_path, capsys
):
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps([_point(100, 200, "NGS"), _point(300, 400)]))
    call_command(
        "import_geojson",
        str(path),
        *("--study", study.name, "--scan", fresh_scan.pk, "--user", second_annotator.username),
    )
    round_ = Round.objects.get(study=study, rater=second_annotator, kind="gold")
    assert _answers(study, fresh_scan, round_) == {(100, 200): "NGS", (300, 400): None}
    assert "2 features: 2 cells created, 0 already there" in capsys.readouterr().out


def test_the_import_command_lists_the_problems_and_leaves_no_round(
    study, fresh_scan, second_annotator, tmp_path
):
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps([_point(100, 200, "Tumor"), _point(9999, 1, "NGS")]))
    with pytest.raises(CommandError) as caught:
        call_command(
            "import_geojson",
            str(path),
            *("--study", study.name, "--scan", fresh_scan.pk, "--user", second_annotator.username),
        )
    message = str(caught.value)
    assert message.startswith(f"2 problem(s) in {path}:\n  - features[0]: unknown class 'Tumor'")
    assert "\n  - features[1]: point (9999, 1) is outside the scan" in message
    assert message.endswith("(nothing was imported)")
    assert not Round.objects.filter(study=study, rater=second_annotator).exists()
    assert not Cell.objects.filter(scan=fresh_scan).exists()
