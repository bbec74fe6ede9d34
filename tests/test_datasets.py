"""Dataset curation on a small synthetic study with patients: class maps, frozen versions,
splits (determinism, no patient in two folds, warnings for thin classes) and exports."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db import DatabaseError, transaction
from django.test import Client

from annotator.annotation import set_label
from annotator.models import Cell, Label
from core.errors import DomainError
from datasets import classmaps, exports, splits, versions
from datasets.models import ClassMap, DatasetVersion, Export, ImmutableError, Split
from datasets.torch import ExportDataset

from .conftest import CURATED_CLASS_SIZES as CLASS_SIZES
from .conftest import CURATED_PATIENTS as PATIENTS
from .conftest import client_for


def test_the_proposal_merges_the_parents_of_thin_leaves(study, curated):
    proposal = classmaps.propose(study, threshold=10)
    assert proposal.collapsed == ["MYO", "PMO"]
    classes = {c["code"]: c["cells"] for c in proposal.classes}
    assert classes["MYO"] == 44 and classes["PMO"] == 15
    assert "MYOA" not in classes and classes["EBO"] == 11
    tree = {node.code: node for node in proposal.tree}
    assert tree["PAT"].total == 44 + 15 + 11 and tree["MYOA"].direct == 4

    by_hand = classmaps.propose(study, threshold=10, expand=["PMO"], collapse=["PHY"])
    assert by_hand.collapsed == ["PHY", "MYO"]
    assert {c["code"] for c in by_hand.classes} >= {"PHY", "PMON", "PMOA", "MYO"}
    with pytest.raises(DomainError, match="a leaf cannot be collapsed"):
        classmaps.propose(study, collapse=["NGS"])
    with pytest.raises(DomainError, match="Unknown node"):
        classmaps.propose(study, collapse=["XYZ"])


def test_a_saved_class_map_is_versioned_and_frozen(study, curated, data_scientist):
    first, created = classmaps.save_class_map(
        study, "merged", classmaps.propose(study), data_scientist
    )
    again, created_again = classmaps.save_class_map(
        study, "merged", classmaps.propose(study), data_scientist
    )
    assert created and not created_again and again.pk == first.pk
    second, _ = classmaps.save_class_map(
        study, "merged", classmaps.propose(study, expand=["PMO"]), data_scientist
    )
    assert (first.version, second.version) == (1, 2)
    assert classmaps.find_class_map(study, "merged").pk == second.pk
    assert classmaps.find_class_map(study, "merged@1").pk == first.pk
    first.notes = "edited"
    with pytest.raises(ImmutableError):
        first.save()
    with pytest.raises(DatabaseError), transaction.atomic():
        ClassMap.objects.filter(pk=first.pk).update(notes="edited behind its back")


def _dataset(study, user, name="aml", **options):
    class_map, _ = classmaps.save_class_map(study, "merged", classmaps.propose(study), user)
    return versions.make_dataset(study, name, user, class_map=class_map, **options)


def test_a_version_is_hashed_frozen_and_found_again(study, curated, data_scientist):
    version, created = _dataset(study, data_scientist)
    assert created and version.version == 1
    assert len(version.manifest) == sum(CLASS_SIZES.values())
    cells = [row.cell for row in version.rows()]
    assert cells == sorted(cells)
    assert version.counts["MYO"] == 44 and version.classes[0] == "NGS"
    assert version.rows()[0].patient.startswith("P-")
    same, created_again = _dataset(study, data_scientist)
    assert not created_again and same.pk == version.pk
    assert versions.manifest_sha256(version.classes, version.manifest) == version.sha256

    version.notes = "changed"
    with pytest.raises(ImmutableError):
        version.save()
    with pytest.raises(DatabaseError), transaction.atomic():
        DatasetVersion.objects.filter(pk=version.pk).update(notes="changed")


def test_a_relabelled_cell_makes_a_new_version_and_the_diff_says_so(
    study, curated, data_scientist, annotator
):
    first, _ = _dataset(study, data_scientist)
    label = Label.objects.filter(round=curated, node__code="LYT").order_by("cell_id").first()
    set_label(label.cell, curated, annotator, node="MON", expected_version=label.version)
    second, created = _dataset(study, data_scientist)
    assert created and second.version == 2 and second.sha256 != first.sha256
    diff = versions.diff_versions(first, second).to_dict()
    assert diff["relabelled"] == [{"cell": label.cell_id, "from": "LYT", "to": "MON"}]
    assert diff["added"] == diff["removed"] == [] and not diff["class_map_changed"]


def test_filters_leave_out_patients_and_say_what_is_unknown(study, curated, data_scientist):
    version, _ = _dataset(
        study, data_scientist, name="no-p00", filters={"exclude_patients": ["P-00"]}
    )
    assert all(row.patient != "P-00" for row in version.rows())
    with pytest.raises(DomainError, match="Unknown filter"):
        _dataset(study, data_scientist, name="x", filters={"colour": "red"})


def _folds_of_patients(version, split) -> dict[str, set]:
    found: dict[str, set] = {}
    for row, fold in zip(version.rows(), split.folds, strict=True):
        found.setdefault(row.patient, set()).add(fold)
    return found


def test_splits_are_deterministic_and_keep_class_proportions(study, curated, data_scientist):
    version, _ = _dataset(study, data_scientist)
    split, created = splits.make_split(version, "stratified-kfold", data_scientist, k=5, seed=0)
    same, created_again = splits.make_split(
        version, "stratified-kfold", data_scientist, k=5, seed=0
    )
    other, _ = splits.make_split(version, "stratified-kfold", data_scientist, k=5, seed=1)
    assert created and not created_again and same.pk == split.pk
    assert other.sha256 != split.sha256
    assert split.sha256 == splits.split_sha256(
        version.sha256, "stratified-kfold", {"k": 5}, 0, split.folds
    )
    assert [split.fold_counts[str(f)]["NGS"] for f in range(5)] == [24] * 5
    assert sorted(set(split.folds)) == [0, 1, 2, 3, 4]
    with pytest.raises(ImmutableError):
        split.save()
    with pytest.raises(DatabaseError), transaction.atomic():
        Split.objects.filter(pk=split.pk).update(seed=7)


def test_patient_folds_never_share_a_patient_and_thin_classes_are_explained(
    study, curated, data_scientist
):
    version, _ = _dataset(study, data_scientist)
    split, _ = splits.make_split(version, "patient-kfold", data_scientist, k=4, seed=3)
    assert all(len(folds) == 1 for folds in _folds_of_patients(version, split).values())
    assert split.patient_check == {"patients": PATIENTS, "patients_in_two_folds": 0, "examples": []}
    # EBO (11 cells) sits in at most 3 patients: fewer than the 4 folds.
    assert any(
        w.startswith("Class EBO occurs in") and "fewer than the 4 folds" in w
        for w in split.warnings
    )

    thin, _ = splits.make_split(version, "stratified-kfold", data_scientist, k=20, seed=0)
    assert any("Class EBO has 11 cell(s), fewer than the 20 folds" in w for w in thin.warnings)
    with pytest.raises(DomainError, match="more than the 12 patients"):
        splits.make_split(version, "patient-kfold", data_scientist, k=13)
    with pytest.raises(DomainError, match="These folds cannot be made"):
        splits.make_split(version, "stratified-kfold", data_scientist, k=200)


def test_holdout_parts_and_grouped_holdout(study, curated, data_scientist):
    version, _ = _dataset(study, data_scientist)
    split, _ = splits.make_split(version, "holdout", data_scientist, seed=2)
    sizes = {part: sum(counts.values()) for part, counts in split.fold_counts.items()}
    total = len(version.manifest)
    assert sizes["test"] == pytest.approx(0.2 * total, abs=2)
    assert sizes["validation"] == pytest.approx(0.1 * total, abs=2)
    grouped, _ = splits.make_split(
        version,
        "holdout",
        data_scientist,
        seed=2,
        grouped=True,
        fractions={"train": 0.5, "validation": 0.25, "test": 0.25},
    )
    assert all(len(parts) == 1 for parts in _folds_of_patients(version, grouped).values())
    assert any("whole patients only" in w for w in grouped.warnings)
    with pytest.raises(DomainError, match="add up to 1"):
        splits.make_split(version, "holdout", data_scientist, fractions={"train": 0.9, "test": 0.5})


def test_the_imagefolder_export_reads_back_through_the_torch_dataset(
    study, curated, data_scientist
):
    version, _ = _dataset(study, data_scientist)
    split, _ = splits.make_split(version, "patient-kfold", data_scientist, k=3, seed=0)
    export = exports.run_export(exports.request_export(split, "imagefolder", data_scientist).pk)
    assert export.status == "done" and export.done == export.total == len(version.manifest)
    again = exports.run_export(export.pk)  # a second delivery of the task: nothing rewritten
    assert (again.status, again.sha256, again.finished_at) == (
        "done",
        export.sha256,
        export.finished_at,
    )
    with default_storage.open(export.file, "rb") as handle:
        archive = zipfile.ZipFile(io.BytesIO(handle.read()))
    names = set(archive.namelist())
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert len(rows) == len(version.manifest) and {"manifest.csv", "dataset.json"} <= names
    for row in rows[:20]:
        assert row["patch"] == f"fold_{row['fold']}/{row['class']}/{row['cell_id']}.png"
        assert row["patch"] in names
    described = json.loads(archive.read("dataset.json"))
    assert described["split"]["sha256"] == split.sha256 and described["classes"] == version.classes
    assert described["dataset"]["sha256"] == version.sha256
    assert described["class_map"]["collapsed"] == ["MYO", "PMO"]

    local = default_storage.path(export.file)
    test = ExportDataset(local, fold=0, role="test")
    train = ExportDataset(local, fold=0, role="train")
    assert len(test) + len(train) == len(version.manifest)
    image, index = test[0]
    assert tuple(image.shape) == (3, 16, 16) and test.classes[index] in version.classes


def test_a_failed_export_is_marked_and_leaves_no_file(study, curated, data_scientist):
    version, _ = _dataset(study, data_scientist)
    split, _ = splits.make_split(version, "stratified-kfold", data_scientist, k=2, seed=0)
    victim = Cell.objects.filter(study=study).order_by("pk").last()
    default_storage.delete(victim.patch.name)  # a patch file gone from storage
    export = exports.run_export(exports.request_export(split, "imagefolder", data_scientist).pk)
    assert export.status == "failed" and export.file == "" and export.error
    assert "No such file" in export.error or "not found" in export.error.lower()
    exported = Path(settings.MEDIA_ROOT) / "exports"
    assert [p for p in exported.rglob("*") if p.is_file()] == []  # not even a partial file
    assert Export.objects.get(pk=export.pk).status == "failed"


def test_the_commands_print_ids_and_hashes(study, curated, data_scientist, tmp_path):
    out = io.StringIO()
    call_command("classmap", "--study", "munich", "--save", "merged", stdout=out)
    assert (
        "6 classes: NGS (120), LYT (60), MON (30), MYO (44), PMO (15), EBO (11)" in out.getvalue()
    )
    out = io.StringIO()
    call_command(
        "make_dataset", "--study", "munich", "--name", "aml", "--classmap", "merged", stdout=out
    )
    version = DatasetVersion.objects.get(name="aml")
    assert f"id {version.pk}" in out.getvalue() and version.sha256 in out.getvalue()
    out = io.StringIO()
    call_command(
        "make_split", "--dataset", "aml", "--strategy", "patient-kfold", "--k", "3", stdout=out
    )
    split = Split.objects.get()
    assert f"split {split.pk}" in out.getvalue() and split.sha256 in out.getvalue()
    assert "in two folds: 0" in out.getvalue()
    misnamed = tmp_path / "export.csv"
    with pytest.raises(CommandError, match=r"every export format is a zip.*--out csv\.zip"):
        call_command("export_split", split.sha256[:10], "--format", "csv", "--out", str(misnamed))
    assert not misnamed.exists() and not Export.objects.exists()
    target = tmp_path / "export.zip"
    out = io.StringIO()
    call_command(
        "export_split", split.sha256[:10], "--format", "csv", "--out", str(target), stdout=out
    )
    export = Export.objects.get()
    assert export.sha256 in out.getvalue()
    with zipfile.ZipFile(target) as archive:
        header = archive.read("manifest.csv").decode().splitlines()[0]
    assert header == "cell_id,external_id,patient,scan,scan_file,class,fold,patch,placed_by"


def test_a_scan_study_export_names_the_scan_file_and_holds_each_patch(
    study, scan, gold_cells, data_scientist
):
    version, _ = versions.make_dataset(study, "scan-cells", data_scientist)
    split, _ = splits.make_split(version, "stratified-kfold", data_scientist, k=2, seed=0)
    export = exports.run_export(exports.request_export(split, "imagefolder", data_scientist).pk)
    assert export.status == "done", export.error
    local = default_storage.path(export.file)
    with zipfile.ZipFile(local) as archive:
        names = set(archive.namelist())
        rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [int(row["cell_id"]) for row in rows] == sorted(cell.pk for cell in gold_cells)
    for row in rows:
        assert (row["scan"], row["scan_file"]) == (str(scan.pk), scan.original_name)
        assert row["patient"] == "P-001" and row["patch"] in names
    train = ExportDataset(local, fold=0, role="train")
    test = ExportDataset(local, fold=0, role="test")
    assert len(train) + len(test) == len(rows)
    assert train.external_ids == [""] * len(train)
    image, _ = test[0]
    assert image.shape[0] == 3


@pytest.mark.parametrize(
    ("strategy", "params", "seed", "words"),
    [
        ("patient-kfold", {"k": 3}, None, "patient-wise, 3 folds"),
        ("stratified-kfold", {"k": 5}, 7, "stratified, 5 folds, seed 7"),
        (
            "holdout",
            {"fractions": {"train": 0.7, "validation": 0.1, "test": 0.2}, "grouped": True},
            0,
            "holdout 70 / 10 / 20 % (train / validation / test), patient-wise, seed 0",
        ),
        (
            "holdout",
            {"fractions": {"train": 0.5, "validation": 0, "test": 0.5}, "grouped": False},
            None,
            "holdout 50 / 0 / 50 % (train / validation / test)",
        ),
    ],
)
def test_a_split_strategy_in_words(strategy, params, seed, words):
    assert splits.describe(strategy, params, seed) == words


def test_the_splits_table_and_the_api_say_the_strategy_in_words(study, curated, data_scientist):
    version, _ = _dataset(study, data_scientist)
    split, _ = splits.make_split(version, "patient-kfold", data_scientist, k=3, seed=7)
    page = Client()
    page.force_login(data_scientist)
    html = page.get("/studies/munich/datasets/").content.decode()
    row = html.split(f'<tr data-split="{split.pk}">')[1].split("</tr>")[0]
    assert "<td>patient-wise, 3 folds, seed 7</td>" in row
    assert "{" not in row.split("<code>")[0]
    body = client_for(data_scientist).get(f"/api/v1/splits/{split.pk}/").json()
    assert body["strategy_display"] == "patient-wise, 3 folds, seed 7"
    assert body["strategy"] == "patient-kfold" and body["params"] == {"k": 3}
