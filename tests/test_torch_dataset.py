"""`datasets.torch.ExportDataset` over small synthetic imagefolder exports (no database)."""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils.data
from PIL import Image

import datasets.torch as export_torch
from datasets.torch import ExportDataset

CLASSES = ["NGS", "LYT", "MON"]
HEIGHT, WIDTH = 6, 8  # not square, so a transposed tensor shows
COLUMNS = ["cell_id", "patient", "scan", "class", "fold", "patch"]


def pixels_of(cell_id: int) -> np.ndarray:
    """Each cell's own deterministic HxWx3 uint8 image."""
    y, x, c = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), np.arange(3), indexing="ij")
    return ((cell_id * 37 + y * 11 + x * 13 + c * 71) % 256).astype(np.uint8)


def kfold_rows(k: int = 3, cells: int = 15) -> list[list[str]]:
    # Class order in the manifest differs from `classes`' order: indices must follow `classes`.
    codes = ["MON", "NGS", "LYT"]
    rows = []
    for cell in range(cells):
        code, fold = codes[cell % 3], (cell + cell // 3) % k
        patient = f"P{cell % 4}" if cell % 5 else ""
        rows.append(
            [str(100 + cell), patient, "", code, str(fold), f"fold_{fold}/{code}/{100 + cell}.png"]
        )
    return rows


def holdout_rows() -> list[list[str]]:
    parts = ["train"] * 6 + ["validation"] * 2 + ["test"] * 3
    codes = ["NGS", "LYT", "NGS", "MON", "LYT", "NGS", "LYT", "MON", "NGS", "MON", "MON"]
    return [
        [str(500 + i), "", "", code, part, f"fold_{part}/{code}/{500 + i}.png"]
        for i, (part, code) in enumerate(zip(parts, codes, strict=True))
    ]


def write_export(
    root: Path,
    rows: list[list[str]],
    *,
    strategy: str = "stratified-kfold",
    k: int | None = 3,
    classes: list[str] | None = None,
    columns: list[str] | None = None,
    skip_images: tuple[str, ...] = (),
    dataset_json: bool = True,
    manifest: bool = True,
) -> Path:
    """An unpacked export directory as the exporter writes it."""
    root.mkdir(parents=True)
    split = {"strategy": strategy, "seed": 0, "sha256": "0" * 64}
    if k is not None:
        split["k"] = k
    if dataset_json:
        described = {
            "format": "cytomark-export-1",
            "classes": CLASSES if classes is None else classes,
            "split": split,
            "dataset": {"name": "synthetic", "sha256": "1" * 64},
        }
        (root / "dataset.json").write_text(json.dumps(described), encoding="utf-8")
    if manifest:
        with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns or COLUMNS)
            writer.writerows(rows)
    for row in rows:
        patch = row[-1]
        if patch in skip_images:
            continue
        (root / patch).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels_of(int(row[0])), "RGB").save(root / patch)
    return root


def zip_export(folder: Path, target: Path) -> Path:
    """The zip of an export directory: PNGs stored, the rest deflated, as the exporter does."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder).as_posix()
                stored = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
                archive.write(path, name, compress_type=stored)
    return target


@pytest.fixture
def kfold_dir(tmp_path) -> Path:
    return write_export(tmp_path / "kfold", kfold_rows())


@pytest.fixture
def kfold_zip(kfold_dir, tmp_path) -> Path:
    return zip_export(kfold_dir, tmp_path / "kfold.zip")


@pytest.fixture
def holdout_dir(tmp_path) -> Path:
    return write_export(tmp_path / "holdout", holdout_rows(), strategy="holdout", k=None)


def expected_tensor(cell_id: str) -> torch.Tensor:
    return torch.from_numpy(pixels_of(int(cell_id)).astype(np.float32) / 255).permute(2, 0, 1)


# -- k-fold ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_kfold_train_and_test_partition_the_manifest(kfold_dir, fold):
    rows = kfold_rows()
    train = ExportDataset(kfold_dir, fold=fold, role="train")
    test = ExportDataset(kfold_dir, fold=fold, role="test")
    assert len(test) == sum(1 for row in rows if row[4] == str(fold)) == 5
    assert len(train) == len(rows) - len(test) == 10
    assert set(train.cell_ids).isdisjoint(test.cell_ids)
    assert sorted(train.cell_ids + test.cell_ids) == sorted(row[0] for row in rows)
    # manifest order, (patch, class index) with the index following `classes`' order
    assert test.samples == [(row[5], CLASSES.index(row[3])) for row in rows if row[4] == str(fold)]
    assert train.samples == [(row[5], CLASSES.index(row[3])) for row in rows if row[4] != str(fold)]
    assert train.classes == CLASSES
    assert test.fold == fold and test.k == 3 and test.strategy == "stratified-kfold"


def test_class_indices_follow_the_classes_order(kfold_dir):
    test = ExportDataset(kfold_dir, fold=0, role="test")
    # fold 0 holds cells 100 (MON), 105 (LYT), 107 (NGS), 109 (MON), 114 (LYT);
    # classes are NGS, LYT, MON
    assert test.cell_ids == ["100", "105", "107", "109", "114"]
    assert [test[i][1] for i in range(len(test))] == [2, 1, 0, 2, 1]
    assert test.targets == [2, 1, 0, 2, 1]


def test_kfold_tensors_are_the_png_pixels_over_255(kfold_dir):
    test = ExportDataset(kfold_dir, fold=1, role="test")
    for index, cell in enumerate(test.cell_ids):
        image, target = test[index]
        assert isinstance(target, int)
        assert image.shape == (3, HEIGHT, WIDTH)
        assert image.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert torch.equal(image, expected_tensor(cell))
    # a few pixels spelled out: channel c, row y, column x of cell 101 (fold 1's first)
    image, _ = test[0]
    assert test.cell_ids[0] == "101"
    for c, y, x in [(0, 0, 0), (1, 2, 5), (2, 5, 7), (0, 5, 0)]:
        value = (101 * 37 + y * 11 + x * 13 + c * 71) % 256
        assert image[c, y, x].item() == pytest.approx(value / 255)
    assert image.max().item() > 0.5  # scaled to [0, 1], not left as 0..255 nor all zero


def test_negative_index_and_out_of_range(kfold_dir):
    test = ExportDataset(kfold_dir, fold=0, role="test")
    assert torch.equal(test[-1][0], test[len(test) - 1][0])
    with pytest.raises(IndexError):
        test[len(test)]


def test_zip_and_directory_give_the_same_samples_and_tensors(kfold_dir, kfold_zip):
    for fold in range(3):
        for role in ("train", "test"):
            unpacked = ExportDataset(kfold_dir, fold=fold, role=role)
            packed = ExportDataset(str(kfold_zip), fold=fold, role=role)
            assert packed.samples == unpacked.samples
            assert packed.classes == unpacked.classes
            for index in range(len(unpacked)):
                a, b = unpacked[index], packed[index]
                assert a[1] == b[1]
                assert torch.equal(a[0], b[0])
            packed.close()


# -- holdout --------------------------------------------------------------------------------------


def test_holdout_roles_and_class_counts(holdout_dir, tmp_path):
    rows = holdout_rows()
    packed = zip_export(holdout_dir, tmp_path / "holdout.zip")
    for export in (holdout_dir, packed):
        seen = []
        for role, n in [("train", 6), ("validation", 2), ("test", 3)]:
            part = ExportDataset(export, role=role)
            assert len(part) == n
            assert part.cell_ids == [row[0] for row in rows if row[4] == role]
            seen += part.cell_ids
            image, target = part[0]
            assert image.shape == (3, HEIGHT, WIDTH)
            assert target == CLASSES.index(rows[int(part.cell_ids[0]) - 500][3])
        assert sorted(seen) == sorted(row[0] for row in rows)
    assert ExportDataset(holdout_dir).role == "train"  # the default role
    assert ExportDataset(holdout_dir, role="train").class_counts() == {
        "NGS": 3,
        "LYT": 2,
        "MON": 1,
    }
    assert ExportDataset(holdout_dir, role="validation").class_counts() == {
        "NGS": 0,
        "LYT": 1,
        "MON": 1,
    }
    assert ExportDataset(holdout_dir, role="test").class_counts() == {
        "NGS": 1,
        "LYT": 0,
        "MON": 2,
    }
    assert list(ExportDataset(holdout_dir, role="test").class_counts()) == CLASSES


def test_kfold_class_counts(kfold_dir):
    train = ExportDataset(kfold_dir, fold=2, role="train")
    test = ExportDataset(kfold_dir, fold=2, role="test")
    assert test.class_counts() == {"NGS": 2, "LYT": 2, "MON": 1}
    assert train.class_counts() == {"NGS": 3, "LYT": 3, "MON": 4}


# -- transform and loaders ------------------------------------------------------------------------


def test_transform_is_applied(kfold_dir):
    seen = []

    def flip_and_shift(image: torch.Tensor) -> torch.Tensor:
        seen.append(image.shape)
        return image.flip(-1) - 0.5

    plain = ExportDataset(kfold_dir, fold=0, role="test")
    changed = ExportDataset(kfold_dir, fold=0, role="test", transform=flip_and_shift)
    image, target = changed[1]
    assert seen == [(3, HEIGHT, WIDTH)]  # given the float CHW tensor
    assert target == plain[1][1]
    assert torch.allclose(image, plain[1][0].flip(-1) - 0.5)
    assert image.min().item() < 0  # the shift shows: the transform's result is returned


def test_dataloader_batches(kfold_dir):
    train = ExportDataset(kfold_dir, fold=0, role="train")
    loader = torch.utils.data.DataLoader(train, batch_size=4, shuffle=False)
    batches = list(loader)
    assert [images.shape for images, _ in batches] == [
        (4, 3, HEIGHT, WIDTH),
        (4, 3, HEIGHT, WIDTH),
        (2, 3, HEIGHT, WIDTH),
    ]
    images, labels = batches[0]
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == train.targets[:4]
    assert torch.equal(images[1], train[1][0])


def test_dataloader_with_forked_workers_over_the_zip(kfold_zip):
    train = ExportDataset(kfold_zip, fold=1, role="train")
    expected = [train[i] for i in range(len(train))]  # the parent has its zip open now
    loader = torch.utils.data.DataLoader(
        train, batch_size=4, shuffle=False, num_workers=2, multiprocessing_context="fork"
    )
    images = torch.cat([batch for batch, _ in loader])
    labels = torch.cat([batch for _, batch in loader])
    assert images.shape == (len(train), 3, HEIGHT, WIDTH)
    assert torch.equal(images, torch.stack([image for image, _ in expected]))
    assert labels.tolist() == [target for _, target in expected]


def test_zip_opened_once_per_process(kfold_zip, monkeypatch):
    opened = []
    real = zipfile.ZipFile

    def counting(*args, **kwargs):
        opened.append(os.getpid())
        return real(*args, **kwargs)

    train = ExportDataset(kfold_zip, fold=0, role="train")
    monkeypatch.setattr(export_torch.zipfile, "ZipFile", counting)
    first = train[0][0]
    train[1], train[2]
    assert len(opened) <= 1  # at most once in this process (perhaps already open from __init__)
    before = len(opened)
    # as seen from a forked worker: another pid must reopen rather than share the handle
    parent = os.getpid()
    monkeypatch.setattr(export_torch.os, "getpid", lambda: parent + 1)
    assert torch.equal(train[0][0], first)
    train[1]
    assert len(opened) == before + 1


def test_pickles_without_its_zip_handle(kfold_zip):
    train = ExportDataset(kfold_zip, fold=0, role="train")
    image = train[3][0]
    copy = pickle.loads(pickle.dumps(train))
    assert copy.samples == train.samples
    assert torch.equal(copy[3][0], image)


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True])
def test_missing_dataset_json(tmp_path, packed):
    export = write_export(tmp_path / "e", kfold_rows(), dataset_json=False)
    if packed:
        export = zip_export(export, tmp_path / "e.zip")
    with pytest.raises(ValueError, match=r"has no dataset\.json"):
        ExportDataset(export, fold=0)


@pytest.mark.parametrize("packed", [False, True])
def test_missing_manifest(tmp_path, packed):
    export = write_export(tmp_path / "e", kfold_rows(), manifest=False)
    if packed:
        export = zip_export(export, tmp_path / "e.zip")
    with pytest.raises(ValueError, match=r"has no manifest\.csv"):
        ExportDataset(export, fold=0)


def test_manifest_missing_columns_are_named(tmp_path):
    rows = [[row[0], row[1], row[2], row[3]] for row in kfold_rows()]
    export = write_export(tmp_path / "e", [], columns=["cell_id", "patient", "scan", "class"])
    with open(export / "manifest.csv", "a", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    with pytest.raises(ValueError, match="fold, patch") as raised:
        ExportDataset(export, fold=0)
    assert "cell_id" not in str(raised.value).split("(")[0]  # names only what is missing


def test_class_not_in_classes_names_class_and_cell(tmp_path):
    rows = kfold_rows()
    rows[4][3] = "BLA"
    rows[4][5] = f"fold_{rows[4][4]}/BLA/104.png"
    export = write_export(tmp_path / "e", rows)
    with pytest.raises(ValueError, match=r"cell 104 has class 'BLA'"):
        ExportDataset(export, fold=0, role="test")  # row 104 is in fold 2: checked anyway


@pytest.mark.parametrize("fold", [3, -1, 99])
def test_fold_out_of_range_says_the_range(kfold_dir, fold):
    with pytest.raises(ValueError, match=rf"fold {fold} is out of range.*0\.\.2"):
        ExportDataset(kfold_dir, fold=fold)


def test_kfold_needs_an_integer_fold(kfold_dir):
    with pytest.raises(ValueError, match=r"fold is required \(0\.\.2\)"):
        ExportDataset(kfold_dir)
    with pytest.raises(ValueError, match="must be an integer"):
        ExportDataset(kfold_dir, fold="0")
    with pytest.raises(ValueError, match="must be an integer"):
        ExportDataset(kfold_dir, fold=True)
    assert len(ExportDataset(kfold_dir, fold=np.int64(1), role="test")) == 5


def test_kfold_has_no_validation_role(kfold_dir):
    with pytest.raises(ValueError, match=r"no validation role.*carve validation out of train"):
        ExportDataset(kfold_dir, fold=0, role="validation")


@pytest.mark.parametrize("export", ["kfold_dir", "holdout_dir"])
def test_unknown_role(request, export):
    with pytest.raises(ValueError, match=r"Unknown role 'val'.*'validation'"):
        ExportDataset(request.getfixturevalue(export), fold=None, role="val")


def test_holdout_refuses_a_fold(holdout_dir):
    with pytest.raises(ValueError, match="holdout export: leave fold=None"):
        ExportDataset(holdout_dir, fold=0, role="train")


def test_manifest_fold_values_are_checked(tmp_path):
    rows = kfold_rows()
    rows[2][4] = "7"
    export = write_export(tmp_path / "kfold", rows)
    with pytest.raises(ValueError, match=r"cell 102 has fold '7'.*0\.\.2"):
        ExportDataset(export, fold=0)
    rows = holdout_rows()
    rows[1][4] = "valid"
    export = write_export(tmp_path / "holdout", rows, strategy="holdout", k=None)
    with pytest.raises(ValueError, match="cell 501 has fold 'valid'"):
        ExportDataset(export, role="test")


def test_unknown_strategy_and_missing_k(tmp_path):
    export = write_export(tmp_path / "a", kfold_rows(), strategy="random")
    with pytest.raises(ValueError, match="unknown split strategy 'random'"):
        ExportDataset(export, fold=0)
    export = write_export(tmp_path / "b", kfold_rows(), strategy="patient-kfold", k=None)
    with pytest.raises(ValueError, match='patient-kfold split needs a positive integer "k"'):
        ExportDataset(export, fold=0)


def test_patch_outside_the_export_is_refused(tmp_path):
    rows = kfold_rows()
    export = write_export(tmp_path / "e", rows)
    text = (export / "manifest.csv").read_text().replace(rows[0][5], "../secret.png")
    (export / "manifest.csv").write_text(text)
    with pytest.raises(ValueError, match=r"cell 100 has patch '\.\./secret\.png'"):
        ExportDataset(export, fold=0, role="test")


@pytest.mark.parametrize("packed", [False, True])
def test_missing_patch_is_named(tmp_path, packed):
    rows = kfold_rows()
    gone = rows[3][5]  # cell 103, fold 1
    export = write_export(tmp_path / "e", rows, skip_images=(gone,))
    if packed:
        export = zip_export(export, tmp_path / "e.zip")
    test = ExportDataset(export, fold=1, role="test")
    assert test.cell_ids[1] == "103"
    assert test[0][0].shape == (3, HEIGHT, WIDTH)  # the others still load
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"{gone} (cell 103) is listed in manifest")
    ):
        test[1]


def test_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="No export at"):
        ExportDataset(tmp_path / "nowhere.zip", fold=0)
    stray = tmp_path / "notes.txt"
    stray.write_text("hello")
    with pytest.raises(ValueError, match="neither an export directory nor a zip file"):
        ExportDataset(stray, fold=0)
