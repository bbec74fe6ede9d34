"""How a split is read: typed manifest rows, `splits.samples` for every strategy and role, the
one validation carve (`splits.carve_validation`), and exports and training built on them."""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter

import numpy as np
import pytest
from django.core.files.storage import default_storage
from sklearn.model_selection import train_test_split

from annotator.annotation import set_label
from annotator.models import Cell
from core.errors import DomainError
from datasets import classmaps, exports, splits, versions
from datasets.models import DatasetVersion, ManifestRow, Split
from datasets.torch import ExportDataset

from .conftest import CURATED_PATIENTS


def _dataset(study, user, **options):
    class_map, _ = classmaps.save_class_map(study, "merged", classmaps.propose(study), user)
    return versions.make_dataset(study, "aml", user, class_map=class_map, **options)[0]


def _cells(part) -> list[int]:
    return [sample.cell for sample in part]


# -- typed rows -------------------------------------------------------------------------------


def test_the_manifest_hash_is_the_same_over_lists_and_typed_rows():
    # The hash of this manifest before ManifestRow existed (the stored JSON is unchanged).
    classes = ["NGS", "LYT", "cannot-classify"]
    stored = [[3, "P-01", "12", "NGS"], [7, "", "", "LYT"], [9, "P-02", "12", "cannot-classify"]]
    expected = "147ac29224e46cae2cf06366527c8dff34aa638110cbf1e50158c82c68c217dd"
    assert versions.manifest_sha256(classes, stored) == expected
    typed = DatasetVersion(manifest=stored, classes=classes).rows()
    assert typed[1] == ManifestRow(cell=7, patient="", scan="", class_name="LYT")
    assert versions.manifest_sha256(classes, typed) == expected


@pytest.mark.django_db
def test_a_version_stores_plain_lists_and_reads_back_typed_rows(study, curated, data_scientist):
    version = _dataset(study, data_scientist)
    stored = DatasetVersion.objects.get(pk=version.pk)
    assert (
        all(type(row) is list for row in version.manifest) and stored.manifest == version.manifest
    )
    rows = stored.rows()
    assert [list(row) for row in rows] == stored.manifest
    assert Counter(row.class_name for row in rows) == Counter(stored.counts)
    assert {row.patient for row in rows} == {f"P-{n:02d}" for n in range(CURATED_PATIENTS)}
    assert versions.manifest_sha256(stored.classes, rows) == stored.sha256


# -- the carve --------------------------------------------------------------------------------


LABELS = np.array(["A"] * 40 + ["B"] * 20 + ["C"] * 10)
PATIENTS = np.array([f"P{n % 12}" for n in range(70)])


def _disjoint_cover(carve, n: int) -> None:
    assert sorted([*carve.kept, *carve.held]) == list(range(n))
    assert list(carve.kept) == sorted(carve.kept) and list(carve.held) == sorted(carve.held)


def test_the_carve_by_cells_is_sklearns_stratified_draw():
    carve = splits.carve_validation(LABELS, None, 0.2, seed=4)
    kept, held = train_test_split(np.arange(70), test_size=0.2, random_state=4, stratify=LABELS)
    assert (carve.by, carve.notes) == ("cells", ())
    assert list(carve.held) == sorted(held) and list(carve.kept) == sorted(kept)
    assert Counter(LABELS[carve.held].tolist()) == {"A": 8, "B": 4, "C": 2}
    _disjoint_cover(carve, 70)
    # The class order the draw visits decides which cells it draws, not how many.
    ordered = splits.carve_validation(LABELS, None, 0.2, seed=4, class_order=["C", "B", "A"])
    assert Counter(LABELS[ordered.held].tolist()) == {"A": 8, "B": 4, "C": 2}
    positions = np.array([["C", "B", "A"].index(label) for label in LABELS])
    _, held = train_test_split(np.arange(70), test_size=0.2, random_state=4, stratify=positions)
    assert list(ordered.held) == sorted(held) != list(carve.held)
    same = splits.carve_validation(LABELS, None, 0.2, seed=4, class_order=["A", "B", "C"])
    assert list(same.held) == list(carve.held)

    single = splits.carve_validation([*LABELS, "D"], None, 0.2, seed=4)
    assert single.notes == (
        "The validation part could not be stratified (class(es) D have a single cell); it was "
        "drawn at random instead.",
    )


def test_a_splits_carve_takes_whole_patients_or_refuses():
    carve = splits.carve_validation(LABELS, PATIENTS, 0.25, seed=1, part="test")
    assert carve.by == "patients"
    assert not set(PATIENTS[carve.kept]) & set(PATIENTS[carve.held])
    assert carve.notes[0].startswith("Grouped by patient, the test part holds")
    assert carve.notes[0].endswith("(asked: 25.0%): whole patients only.")
    _disjoint_cover(carve, 70)
    nine = np.array([f"P{n % 9}" for n in range(70)])
    with pytest.raises(DomainError, match="The test part needs at least 10 patients; there are 9"):
        splits.carve_validation(LABELS, nine, 0.1, seed=0, part="test")


def test_trainings_carve_keeps_patients_apart_unless_that_harms_training():
    def carve(patients, share=0.1, **options):
        labels = LABELS[: len(patients)]
        return splits.carve_validation(
            labels, patients, share, seed=0, whole_patients_only=False, **options
        )

    # Patients enough: whole patients (a shuffled draw below the ten the share needs).
    for patients in (PATIENTS, np.array([f"P{n % 5}" for n in range(70)])):
        made = carve(patients)
        assert made.by == "patients" and not set(patients[made.kept]) & set(patients[made.held])
        _disjoint_cover(made, 70)

    two = carve(np.array([f"P{n % 2}" for n in range(70)]))
    assert two.by == "cells" and len(two.held) == 7
    assert two.notes[0] == (
        "The validation part was carved by cells within patients (so its patients also train) "
        "because the cells it was carved from belong to only 2 patients, and whole patients "
        "would leave 1 to train on."
    )
    one = carve(np.array(["P0"] * 70))
    assert one.by == "cells" and "belong to one patient only" in one.notes[0]

    # Five patients, one per fold: any whole patient is a whole fold.
    patients = np.array([f"P{n % 5}" for n in range(70)])
    folds = [int(p[1:]) for p in patients]
    whole = carve(patients, other_folds=folds)
    assert whole.by == "cells" and "would hold out all of fold" in whole.notes[0]
    assert "two folds could then train on the same cells" in whole.notes[0]


# -- samples for each strategy and role -------------------------------------------------------


@pytest.mark.django_db
def test_kfold_samples_are_the_folds_test_and_the_rest(study, curated, data_scientist):
    version = _dataset(study, data_scientist)
    split, _ = splits.make_split(version, "stratified-kfold", data_scientist, k=3, seed=0)
    patch_of = dict(Cell.objects.filter(study=study).values_list("pk", "patch"))
    rows = version.rows()
    assert splits.fold_names(split) == ["0", "1", "2"]
    for fold in (0, "1", 2):
        test = splits.samples(split, fold, "test")
        train = splits.samples(split, fold, "train")
        marked = [row.cell for row, f in zip(rows, split.folds, strict=True) if str(f) == str(fold)]
        assert _cells(test) == marked
        assert sorted(_cells(train) + _cells(test)) == sorted(row.cell for row in rows)
        assert all(str(s.fold) != str(fold) for s in train)
        for sample in test[:5]:
            row = rows[[r.cell for r in rows].index(sample.cell)]
            assert tuple(sample[:4]) == tuple(row) and sample.patch == patch_of[sample.cell]
        with pytest.raises(DomainError, match="no validation part of its own"):
            splits.samples(split, fold, "validation")
        carved = splits.fold_parts(split, fold, validation_fraction=0.25, seed=3)
        assert carved.by == "cells" and carved.test == test
        assert sorted(_cells(carved.train) + _cells(carved.validation)) == sorted(_cells(train))
        assert len(carved.validation) == pytest.approx(0.25 * len(train), abs=1)
        assert splits.samples(split, fold, "validation", validation_fraction=0.25, seed=3) == (
            carved.validation
        )
    with pytest.raises(DomainError, match="has no fold 3; its folds are 0, 1, 2"):
        splits.samples(split, 3, "test")
    with pytest.raises(DomainError, match="has no fold None"):
        splits.samples(split, None, "test")
    with pytest.raises(DomainError, match="Unknown role 'dev'"):
        splits.samples(split, 0, "dev")


@pytest.mark.django_db
def test_patient_kfold_validation_is_carved_by_whole_patients(study, curated, data_scientist):
    version = _dataset(study, data_scientist)
    split, _ = splits.make_split(version, "patient-kfold", data_scientist, k=3, seed=0)
    for fold in splits.fold_names(split):
        parts = splits.fold_parts(split, fold, validation_fraction=0.25, seed=0)
        train, validation, test = (
            {s.patient for s in part} for part in (parts.train, parts.validation, parts.test)
        )
        assert parts.by == "patients" and validation
        assert not train & validation and not (train | validation) & test
        assert parts.notes[0].startswith("Grouped by patient, the validation part holds")


@pytest.mark.django_db
def test_holdout_samples_are_its_parts(study, curated, data_scientist):
    version = _dataset(study, data_scientist)
    split, _ = splits.make_split(version, "holdout", data_scientist, seed=2)
    assert splits.fold_names(split) == [None]
    every = splits.split_samples(split)
    for role in splits.ROLES:
        assert _cells(splits.samples(split, None, role)) == [
            s.cell for s in every if s.fold == role
        ]
    own = splits.fold_parts(split, None, validation_fraction=0.5, seed=0)
    assert own.by == "split" and own.validation == splits.samples(split, None, "validation")
    for role in splits.ROLES:
        with pytest.raises(DomainError, match="A holdout split has no folds"):
            splits.samples(split, 0, role)

    no_validation = {"train": 0.8, "validation": 0, "test": 0.2}
    options = {"seed": 2, "grouped": True, "fractions": no_validation}
    bare, _ = splits.make_split(version, "holdout", data_scientist, **options)
    assert splits.samples(bare, None, "validation") == []
    parts = splits.fold_parts(bare, None, validation_fraction=0.2, seed=0)
    assert parts.by == "patients" and parts.validation
    train = splits.samples(bare, None, "train")
    assert sorted(_cells(parts.train) + _cells(parts.validation)) == sorted(_cells(train))
    assert not {s.patient for s in parts.train} & {s.patient for s in parts.validation}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("stratified-kfold", {"k": 3}),
        ("patient-kfold", {"k": 3}),
        (
            "holdout",
            {"grouped": True, "fractions": {"train": 0.5, "validation": 0.25, "test": 0.25}},
        ),
    ],
)
def test_the_export_and_its_torch_reader_agree_with_samples(
    study, curated, data_scientist, strategy, options
):
    version = _dataset(study, data_scientist)
    split, _ = splits.make_split(version, strategy, data_scientist, seed=1, **options)
    export = exports.run_export(exports.request_export(split, "imagefolder", data_scientist).pk)
    assert export.status == "done", export.error
    local = default_storage.path(export.file)
    for fold in splits.fold_names(split):
        selection = {"fold": None if fold is None else int(fold)}
        roles = splits.ROLES if fold is None else ("train", "test")
        for role in roles:
            read = ExportDataset(local, role=role, **selection)
            assert read.cell_ids == [
                str(cell) for cell in _cells(splits.samples(split, fold, role))
            ]


# -- exports ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_export_manifests_are_the_stored_rows_with_origins_fold_and_patch(
    study, curated, data_scientist
):
    version = _dataset(study, data_scientist)
    split, _ = splits.make_split(version, "patient-kfold", data_scientist, k=2, seed=0)
    patch_of = dict(Cell.objects.filter(study=study).values_list("pk", "patch"))
    external_of = dict(Cell.objects.filter(study=study).values_list("pk", "external_id"))
    assert ",".join(exports.MANIFEST_COLUMNS) == (
        "cell_id,external_id,patient,scan,scan_file,class,fold,patch,placed_by"
    )

    def manifest(export_format: str) -> tuple[list[list[str]], zipfile.ZipFile]:
        export = exports.run_export(exports.request_export(split, export_format, data_scientist).pk)
        assert export.status == "done", export.error
        with default_storage.open(export.file, "rb") as handle:
            archive = zipfile.ZipFile(io.BytesIO(handle.read()))
        return list(csv.reader(io.StringIO(archive.read("manifest.csv").decode()))), archive

    def expected(cell, patient, scan, code, fold, patch) -> list[str]:
        row = [cell, external_of[cell], patient, scan, "", code, fold, patch, "hand"]
        return [str(v) for v in row]

    stored = list(zip(version.manifest, split.folds, strict=True))
    rows, _ = manifest("csv")
    assert rows[0] == exports.MANIFEST_COLUMNS
    # A csv export holds no image: no patch path, the external id joins the rows to the files.
    assert rows[1:] == [expected(*row, fold, "") for row, fold in stored]
    assert all(row[1] for row in rows[1:])
    rows, archive = manifest("imagefolder")
    assert rows[1:] == [
        expected(*row, fold, f"fold_{fold}/{row[3]}/{row[0]}.png") for row, fold in stored
    ]
    for row, fold in stored[:10]:
        with default_storage.open(patch_of[row[0]], "rb") as handle:
            assert archive.read(f"fold_{fold}/{row[3]}/{row[0]}.png") == handle.read()


@pytest.mark.django_db
def test_a_cell_without_an_image_is_refused_where_images_are_needed(
    study, curated, data_scientist, annotator
):
    bare = Cell.objects.create(study=study, external_id="no-file/1")
    set_label(bare, curated, annotator, node="NGS")
    version = _dataset(study, data_scientist)
    split, _ = splits.make_split(version, "stratified-kfold", data_scientist, k=2, seed=0)
    names = splits.patch_names(split)
    assert names[bare.pk] == "" and all(name for cell, name in names.items() if cell != bare.pk)
    with pytest.raises(
        DomainError,
        match=r"1 of the \d+ cells of the split have no image .*"
        "training needs them all",
    ):
        splits.patch_names(split, needed_by="training")
    csv_export = exports.run_export(exports.request_export(split, "csv", data_scientist).pk)
    assert csv_export.status == "done"
    folder = exports.run_export(exports.request_export(split, "imagefolder", data_scientist).pk)
    assert folder.status == "failed"
    assert "an imagefolder export (csv and json exports work without) needs them all" in (
        folder.error
    )


def test_split_and_dataset_need_no_database_to_be_read():
    """fold_parts reads a split's rows and folds alone when the patches are given."""
    version = DatasetVersion(
        manifest=[[n, f"P{n % 3}", "", "AB"[n % 2]] for n in range(12)], classes=["A", "B"]
    )
    split = Split(dataset=version, strategy="stratified-kfold", params={"k": 2}, folds=[0, 1] * 6)
    parts = splits.fold_parts(split, 1, validation_fraction=0.5, seed=0, patches={0: "p/0.png"})
    assert _cells(parts.test) == [1, 3, 5, 7, 9, 11]
    assert sorted(_cells(parts.train) + _cells(parts.validation)) == [0, 2, 4, 6, 8, 10]
    assert splits.samples(split, 1, "test", patches={})[0].patch == ""
