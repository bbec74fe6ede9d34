"""The public AML annotation file: import, re-import, malformed lines, and the agreement report
on it in all three formats through the command."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from annotator.models import Cell, Label, LabelChange, RoundItem, Study, Taxonomy
from datasets.importers import ImportProblem, import_tcia_aml

from .conftest import SHARED_DATA

ANNOTATIONS = SHARED_DATA / "tcia-aml-cytomorphology" / "annotations.dat"


def _lines() -> list[list[str]]:
    return [line.split() for line in ANNOTATIONS.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def first_import(django_db_setup, django_db_blocker):
    """The file imported once for the module (committed; 18,365 cells take a few seconds),
    removed again afterwards. Each test still runs in its own rolled-back transaction."""
    with django_db_blocker.unblock():
        had_taxonomy = Taxonomy.objects.filter(name="aml-18").exists()
        report = import_tcia_aml(ANNOTATIONS, "tcia-aml")
        yield report
        raters = [r.rater_id for r in report.study.rounds.all()]
        report.study.delete()
        get_user_model().objects.filter(pk__in=raters).delete()
        if not had_taxonomy:
            Taxonomy.objects.filter(name="aml-18").delete()


@pytest.fixture
def imported(first_import, db):
    return first_import.study


def test_the_public_file_becomes_a_study_with_three_named_rounds(imported, first_import):
    assert first_import.cells_created == 18365
    assert first_import.labels_created == {
        "gold": 18365,
        "reannotation-1": 1905,
        "reannotation-2": 1905,
    }
    lines = _lines()
    assert len(lines) == 18365
    assert Cell.objects.filter(study=imported, scan__isnull=True).count() == 18365
    rounds = {r.name: r for r in imported.rounds.all()}
    assert set(rounds) == {"gold", "reannotation-1", "reannotation-2"}
    assert rounds["gold"].kind == "gold"
    assert rounds["reannotation-1"].kind == "blinded"
    assert rounds["reannotation-2"].kind == "repeat"
    assert rounds["reannotation-2"].repeats == rounds["reannotation-1"]
    assert rounds["reannotation-1"].rater == rounds["reannotation-2"].rater != rounds["gold"].rater

    gold = Counter(line[1] for line in lines)
    stored = Counter(
        Label.objects.filter(round=rounds["gold"]).values_list("node__code", flat=True)
    )
    assert stored == gold and stored["NGS"] == 8484 and stored["MYO"] == 3268
    for index, name in ((2, "reannotation-1"), (3, "reannotation-2")):
        wanted = [line[index] for line in lines if line[index] != "nan"]
        labels = Label.objects.filter(round=rounds[name])
        assert labels.count() == len(wanted) == 1905
        assert labels.filter(cannot_classify=True).count() == wanted.count("UNC")
        assert RoundItem.objects.filter(round=rounds[name]).count() == 1905
    assert (
        LabelChange.objects.filter(round__study=imported, action="create").count()
        == 18365 + 2 * 1905
    )


def test_re_importing_changes_nothing(imported):
    before = (Cell.objects.count(), Label.objects.count(), LabelChange.objects.count())
    report = import_tcia_aml(ANNOTATIONS, "tcia-aml")
    assert not report.changed_anything
    assert report.labels_unchanged == {
        "gold": 18365,
        "reannotation-1": 1905,
        "reannotation-2": 1905,
    }
    assert (Cell.objects.count(), Label.objects.count(), LabelChange.objects.count()) == before


def test_a_changed_label_is_updated_with_history(imported, tmp_path):
    lines = ANNOTATIONS.read_text().splitlines()
    first = lines[0].split()
    lines[0] = f"{first[0]} EOS {first[2]} {first[3]}"
    changed = tmp_path / "annotations.dat"
    changed.write_text("\n".join(lines) + "\n")
    report = import_tcia_aml(changed, "tcia-aml")
    assert report.labels_changed == {"gold": 1, "reannotation-1": 0, "reannotation-2": 0}
    cell = Cell.objects.get(study=imported, external_id=first[0])
    assert Label.objects.get(cell=cell, round__name="gold").node.code == "EOS"
    change = LabelChange.objects.get(cell=cell, action="update")
    assert (change.old_node.code, change.new_node.code) == (first[1], "EOS")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("BAS/BAS_9999.tiff BAS nan", "expected 4 space-separated fields"),
        ("BAS/BAS_9999.tiff XYZ nan nan", "unknown gold class 'XYZ'"),
        ("BAS/BAS_9999.tiff BAS FOO nan", "unknown re-annotation class 'FOO'"),
        ("../etc/passwd BAS nan nan", "is not an image path"),
        ("BAS/BAS_0001.tiff BAS nan nan", "listed already on line 1"),
    ],
)
def test_a_malformed_line_stops_the_import_with_its_number(db, tmp_path, bad_line, message):
    lines = ANNOTATIONS.read_text().splitlines()[:100]
    lines.insert(57, bad_line)
    path = tmp_path / "annotations.dat"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportProblem, match="line 58") as caught:
        import_tcia_aml(path, "tcia-bad")
    assert message in str(caught.value)
    assert not Study.objects.filter(name="tcia-bad").exists()
    assert not Cell.objects.filter(study__name="tcia-bad").exists()


def test_the_command_reports_a_bad_file_and_writes_nothing(db, tmp_path):
    path = tmp_path / "annotations.dat"
    path.write_text("BAS/BAS_0001.tiff BAS nan nan\nnot a line\n")
    with pytest.raises(CommandError, match=r"line 2: expected 4 .* \(nothing was imported\)"):
        call_command("import_tcia_aml", str(path), "--study", "tcia-bad")
    assert not Study.objects.filter(name="tcia-bad").exists()


def test_images_are_attached_from_the_class_folders(db, tmp_path, settings):
    lines = ANNOTATIONS.read_text().splitlines()
    chosen = [lines[0], lines[9000]]
    annotations = tmp_path / "annotations.dat"
    annotations.write_text("\n".join(chosen) + "\n")
    images = tmp_path / "images"
    for line in chosen:
        target = images / line.split()[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (400, 400), (200, 120, 160)).save(target, "TIFF")
    report = import_tcia_aml(annotations, "tcia-images", images)
    assert report.images_attached == 2
    cell = Cell.objects.get(study__name="tcia-images", external_id=chosen[0].split()[0])
    assert cell.patch.name.endswith(chosen[0].split()[0])
    with Image.open(cell.patch.path) as stored:
        assert stored.size == (400, 400)
    assert import_tcia_aml(annotations, "tcia-images", images).images_attached == 0

    missing = tmp_path / "empty"
    missing.mkdir()
    with pytest.raises(ImportProblem, match=r"2 image\(s\) missing"):
        import_tcia_aml(annotations, "other-study", missing)


def _pairs(a: int, b: int):
    """The public file's pairs of two columns, both classified, as scikit-learn sees them."""
    rows = [line for line in _lines() if "nan" not in (line[a], line[b])]
    kept = [line for line in rows if "UNC" not in (line[a], line[b])]
    return [line[a] for line in kept], [line[b] for line in kept], len(rows) - len(kept)


def test_the_report_on_the_public_file_in_json_matches_scikit_learn(imported, capsys):
    call_command("agreement_report", "--study", "tcia-aml", "--format", "json")
    report = json.loads(capsys.readouterr().out)
    found = {(c["a"], c["b"]): c for c in report["comparisons"]}
    assert set(found) == {
        ("gold", "reannotation-1"),
        ("gold", "reannotation-2"),
        ("reannotation-1", "reannotation-2"),
    }
    for (a, b), columns in {
        ("gold", "reannotation-1"): (1, 2),
        ("gold", "reannotation-2"): (1, 3),
        ("reannotation-1", "reannotation-2"): (2, 3),
    }.items():
        item = found[(a, b)]
        left, right, excluded = _pairs(*columns)
        assert item["n"] == len(left)
        assert item["excluded_cannot_classify"] == excluded
        assert item["kappa"] == pytest.approx(cohen_kappa_score(left, right), abs=1e-12)
        low, high = item["kappa_ci"]
        assert low < item["kappa"] < high
        agreed = sum(x == y for x, y in zip(left, right, strict=True))
        assert item["observed_agreement"] == pytest.approx(agreed / len(left))
        labels = item["confusion"]["labels"]
        matrix = item["confusion"]["matrix"]
        assert sum(map(sum, matrix)) == len(left)
        ngs = labels.index("NGS")
        assert matrix[ngs][ngs] == sum(x == y == "NGS" for x, y in zip(left, right, strict=True))
        blast = {"MYO", "MOB"}
        positives = [(x in blast, y in blast) for x, y in zip(left, right, strict=True)]
        tp = sum(x and y for x, y in positives)
        assert item["groups"]["blast"]["sensitivity"] == pytest.approx(
            tp / sum(x for x, _ in positives)
        )
        assert set(item["groups"]) == {"blast", "atypical"}


def test_the_report_in_csv_and_html(imported, tmp_path):
    out = tmp_path / "report.csv"
    call_command("agreement_report", "--study", "tcia-aml", "--format", "csv", "--out", str(out))
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert (rows[0]["a"], rows[0]["b"]) == ("gold", "reannotation-1")
    assert (
        float(rows[0]["kappa_ci_low"]) < float(rows[0]["kappa"]) < float(rows[0]["kappa_ci_high"])
    )
    assert {"blast_sensitivity", "atypical_specificity"} <= set(rows[0])

    page = tmp_path / "report.html"
    call_command(
        "agreement_report",
        "--study",
        "tcia-aml",
        "--a",
        "reannotation-1",
        "--b",
        "reannotation-2",
        "--format",
        "html",
        "--out",
        str(page),
    )
    html = page.read_text()
    assert html.count("<svg") == 3  # one confusion heatmap, the two yes/no questions
    assert "reannotation-2 against reannotation-1" in html and "<link" not in html


def test_collapsing_nodes_merges_their_classes(imported, capsys):
    call_command(
        "agreement_report",
        "--study",
        "tcia-aml",
        "--collapse",
        "PAT",
        "--a",
        "gold",
        "--b",
        "reannotation-1",
        "--format",
        "json",
    )
    item = json.loads(capsys.readouterr().out)["comparisons"][0]
    labels = item["confusion"]["labels"]
    assert "PAT" in labels and not {"MYO", "MOB", "PMO", "EBO"} & set(labels)
    assert item["groups"]["atypical"]["sensitivity"] is not None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--study", "nope"], "No study named 'nope'"),
        (["--study", "tcia-aml", "--a", "gold"], "Give both a and b"),
        (["--study", "tcia-aml", "--a", "gold", "--b", "x"], "No round 'x' in study tcia-aml"),
        (["--study", "tcia-aml", "--level", "fifteen"], "Unknown level 'fifteen'"),
        (["--study", "tcia-aml", "--collapse", "NGS"], "NGS is a leaf"),
        (["--study", "tcia-aml", "--bootstrap", "100"], "needs every cell's patient"),
    ],
)
def test_report_command_errors(imported, arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("agreement_report", *arguments)


def test_the_proposed_class_map_gives_the_15_public_classes(imported, tmp_path):
    out = io.StringIO()
    call_command("classmap", "--study", "tcia-aml", "--save", "aml-15", stdout=out)
    assert "15 classes: NGS (8484), NGB (109), LYT (3937)" in out.getvalue()
    call_command("make_dataset", "--study", "tcia-aml", "--name", "aml", "--classmap", "aml-15")
    from datasets.models import DatasetVersion

    version = DatasetVersion.objects.get(study=imported, name="aml")
    public = Counter(line[1] for line in _lines())
    assert version.counts == dict(public) and len(version.classes) == 15
    assert version.class_map.collapsed == ["MYO", "PMO"]
    out = io.StringIO()
    call_command(
        "make_split",
        "--dataset",
        "aml",
        "--study",
        "tcia-aml",
        "--strategy",
        "stratified-kfold",
        "--k",
        "5",
        "--seed",
        "0",
        stdout=out,
    )
    assert "fold 4: 3673 cells" in out.getvalue()
    # Patient-wise folds need patients, which the public release does not name.
    with pytest.raises(CommandError, match="no known patient"):
        call_command(
            "make_split", "--dataset", "aml", "--study", "tcia-aml", "--strategy", "patient-kfold"
        )


def test_a_labels_only_export_joins_to_the_public_image_files(imported, tmp_path):
    """The public release comes without images here: its csv export has no patch path, but
    every row names the image's path in the release, so it joins to the downloaded files."""
    from datasets.models import Split

    quiet = io.StringIO()
    for command in (
        "classmap --study tcia-aml --save aml-15",
        "make_dataset --study tcia-aml --name aml --classmap aml-15",
        "make_split --dataset aml --study tcia-aml --strategy holdout",
    ):
        call_command(*command.split(), stdout=quiet)
    split = Split.objects.get(dataset__study=imported)
    target = tmp_path / "aml.zip"
    call_command(
        "export_split", str(split.pk), "--format", "csv", "--out", str(target), stdout=quiet
    )
    with zipfile.ZipFile(target) as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    public = {line[0]: line[1] for line in _lines()}
    assert len(rows) == len(public) == 18365
    assert {row["external_id"] for row in rows} == set(public)
    assert all(row["patch"] == "" and row["scan"] == row["scan_file"] == "" for row in rows)
    assert {row["fold"] for row in rows} <= {"train", "validation", "test"}
    assert all(row["class"] == public[row["external_id"]] for row in rows)


def _two_lines(tmp_path, prefix: str = "") -> tuple:
    chosen = ANNOTATIONS.read_text().splitlines()[:2]
    annotations = tmp_path / "annotations.dat"
    annotations.write_text(prefix + "\n".join(chosen) + "\n", encoding="utf-8")
    return annotations, [line.split()[0] for line in chosen]


def _patch_tiff(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (400, 400), (200, 120, 160)).save(path, "TIFF")


def test_an_image_link_leading_out_of_the_folder_is_refused_and_nothing_written(db, tmp_path):
    annotations, paths = _two_lines(tmp_path)
    images = tmp_path / "images"
    _patch_tiff(images / paths[0])
    elsewhere = tmp_path / "elsewhere" / "private.tiff"
    _patch_tiff(elsewhere)
    link = images / paths[1]
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere)
    with pytest.raises(ImportProblem, match=rf"{paths[1]} \(line 2\): a link that leads out"):
        import_tcia_aml(annotations, "tcia-link", images)
    assert not Study.objects.filter(name="tcia-link").exists()


def test_a_text_file_named_like_an_image_is_refused(db, tmp_path):
    annotations, paths = _two_lines(tmp_path)
    images = tmp_path / "images"
    _patch_tiff(images / paths[0])
    (images / paths[1]).parent.mkdir(parents=True, exist_ok=True)
    (images / paths[1]).write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ImportProblem, match=rf"{paths[1]} \(line 2\): not a readable image"):
        import_tcia_aml(annotations, "tcia-text", images)
    assert not Study.objects.filter(name="tcia-text").exists()


def test_a_link_inside_the_folder_is_followed(db, tmp_path):
    annotations, paths = _two_lines(tmp_path)
    images = tmp_path / "images"
    _patch_tiff(images / "shared" / "one.tiff")
    for path in paths:
        (images / path).parent.mkdir(parents=True, exist_ok=True)
        (images / path).symlink_to(images / "shared" / "one.tiff")
    assert import_tcia_aml(annotations, "tcia-inside", images).images_attached == 2


def test_an_annotation_file_with_a_byte_order_mark_is_read(db, tmp_path):
    annotations, paths = _two_lines(tmp_path, prefix="\ufeff")
    report = import_tcia_aml(annotations, "tcia-bom")
    assert report.lines == 2
    cells = Cell.objects.filter(study__name="tcia-bom")
    assert set(cells.values_list("external_id", flat=True)) == set(paths)
