"""A PyTorch `Dataset` over a Cytomark "imagefolder" export, for training outside the server.

    from datasets.torch import ExportDataset
    train = ExportDataset("export.zip", fold=0, role="train")
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)

The export is the zip itself or the directory it unpacks to: `dataset.json` (the class order,
the split's strategy, k and seed), `manifest.csv` (one row per cell: `cell_id,external_id,patient,
scan,scan_file,class,fold,patch`; MANIFEST_COLUMNS are the ones read, so exports written before
`external_id` and `scan_file` were added still open) and the PNG patches at the manifest's `patch`
paths.

- k-fold exports (`stratified-kfold`, `patient-kfold`): `fold` (0..k-1) is required;
  `role="test"` is that fold's rows, `role="train"` every other row. There is no validation
  role: carve one out of train yourself (for patient-kfold, by patient).
- holdout exports: `fold` stays None; `role` is `train`, `validation` or `test`.

Each item is `(image, class_index)`: the image a float32 CHW tensor in [0, 1] (then `transform`
if given), the index the class's position in `dataset.json`'s `classes`. A zip is opened lazily
once per process (DataLoader workers reopen it after forking) and its members read by name.

Only the standard library, numpy, Pillow and torch: no Django.
"""

from __future__ import annotations

import csv
import io
import json
import operator
import os
import posixpath
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from PIL import Image, UnidentifiedImageError

__all__ = ["HOLDOUT_ROLES", "KFOLD_STRATEGIES", "MANIFEST_COLUMNS", "ExportDataset"]

MANIFEST_COLUMNS = ("cell_id", "patient", "scan", "class", "fold", "patch")
KFOLD_STRATEGIES = ("stratified-kfold", "patient-kfold")
HOLDOUT_STRATEGY = "holdout"
HOLDOUT_ROLES = ("train", "validation", "test")


class ExportDataset(torch.utils.data.Dataset):
    """One fold and role of an imagefolder export, as `(float32 CHW tensor, class index)`.

    Attributes: `classes` (from dataset.json), `samples` (`(patch path inside the export, class
    index)` in manifest order), `targets` (the class indices alone), `cell_ids`, `external_ids`
    (the original image paths of an imported data set, "" where none), `strategy`,
    `k` (None for holdout), `fold`, `role` and `info` (the whole dataset.json).
    """

    def __init__(
        self,
        export: str | os.PathLike,
        *,
        fold: int | None = None,
        role: str = "train",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.path = Path(export)
        self.transform = transform
        self._zipfile: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        if self.path.is_dir():
            self.is_zip = False
        elif self.path.is_file():
            if not zipfile.is_zipfile(self.path):
                raise ValueError(f"{self.path} is neither an export directory nor a zip file.")
            self.is_zip = True
        else:
            raise FileNotFoundError(f"No export at {self.path}.")

        self.info = self._read_info()
        self.classes = self._read_classes(self.info)
        self.strategy, self.k = self._read_split(self.info)
        self.fold, self.role = self._check_selection(fold, role)

        index_of = {code: position for position, code in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        self.cell_ids: list[str] = []
        self.external_ids: list[str] = []
        for row in self._read_manifest():
            cell = row["cell_id"]
            code = row["class"]
            if code not in index_of:
                raise ValueError(
                    f"manifest.csv: cell {cell} has class {code!r}, which is not in "
                    f"dataset.json's classes {self.classes}."
                )
            if self._selected(row["fold"], cell):
                self.samples.append((self._check_patch(row["patch"], cell), index_of[code]))
                self.cell_ids.append(cell)
                self.external_ids.append(row.get("external_id", ""))
        self.targets = [target for _, target in self.samples]

    # -- reading the export -------------------------------------------------------------------

    def _read_member(self, name: str) -> bytes | None:
        """A file of the export by its path inside it, or None when it is missing."""
        if self.is_zip:
            archive = self._archive()
            try:
                info = archive.getinfo(name)
            except KeyError:
                return None
            return archive.read(info)
        try:
            return (self.path / name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def _archive(self) -> zipfile.ZipFile:
        """The zip, opened once per process: a handle inherited across a fork shares its file
        offset with the parent's, so a worker reads through its own."""
        pid = os.getpid()
        if self._zipfile is None or self._zip_pid != pid:
            self._zipfile = zipfile.ZipFile(self.path)
            self._zip_pid = pid
        return self._zipfile

    def _read_info(self) -> dict:
        data = self._read_member("dataset.json")
        if data is None:
            raise ValueError(f"{self.path} has no dataset.json: not a Cytomark export.")
        try:
            info = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"dataset.json in {self.path} is not valid JSON: {error}") from None
        if not isinstance(info, dict):
            raise ValueError("dataset.json must hold a JSON object.")
        return info

    @staticmethod
    def _read_classes(info: dict) -> list[str]:
        classes = info.get("classes")
        if not isinstance(classes, list) or not classes:
            raise ValueError('dataset.json has no "classes" list (the class order).')
        if not all(isinstance(code, str) for code in classes):
            raise ValueError(f'dataset.json: "classes" must be class codes (strings): {classes}')
        doubled = sorted(code for code, n in Counter(classes).items() if n > 1)
        if doubled:
            raise ValueError(f'dataset.json: "classes" lists {", ".join(doubled)} twice.')
        return list(classes)

    @staticmethod
    def _read_split(info: dict) -> tuple[str, int | None]:
        split = info.get("split")
        if not isinstance(split, dict):
            raise ValueError('dataset.json has no "split" object: not an export of a split.')
        strategy = split.get("strategy")
        if strategy == HOLDOUT_STRATEGY:
            return strategy, None
        if strategy not in KFOLD_STRATEGIES:
            known = ", ".join([*KFOLD_STRATEGIES, HOLDOUT_STRATEGY])
            raise ValueError(f"dataset.json: unknown split strategy {strategy!r}; known: {known}.")
        k = split.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f'dataset.json: a {strategy} split needs a positive integer "k".')
        return strategy, k

    def _check_selection(self, fold, role) -> tuple[int | None, str]:
        if role not in HOLDOUT_ROLES:
            raise ValueError(f"Unknown role {role!r}; use 'train', 'validation' or 'test'.")
        if self.k is None:
            if fold is not None:
                raise ValueError(
                    f"This is a holdout export: leave fold=None (got fold={fold!r}) and pick "
                    "role='train', 'validation' or 'test'."
                )
            return None, role
        if fold is None:
            raise ValueError(
                f"This is a {self.strategy} export with k={self.k}: fold is required "
                f"(0..{self.k - 1})."
            )
        if isinstance(fold, bool):
            raise ValueError(f"fold must be an integer in 0..{self.k - 1}, not {fold!r}.")
        try:
            fold = operator.index(fold)
        except TypeError:
            raise ValueError(f"fold must be an integer in 0..{self.k - 1}, not {fold!r}.") from None
        if not 0 <= fold < self.k:
            raise ValueError(f"fold {fold} is out of range: this export has folds 0..{self.k - 1}.")
        if role == "validation":
            raise ValueError(
                f"A {self.strategy} export has no validation role, only 'train' and 'test' of "
                "each fold: carve validation out of train yourself."
            )
        return fold, role

    def _read_manifest(self) -> list[dict[str, str]]:
        data = self._read_member("manifest.csv")
        if data is None:
            raise ValueError(f"{self.path} has no manifest.csv: not an imagefolder export.")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ValueError(f"manifest.csv is not UTF-8: {error}") from None
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        missing = [column for column in MANIFEST_COLUMNS if column not in header]
        if missing:
            raise ValueError(
                f"manifest.csv lacks the column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} (expected {','.join(MANIFEST_COLUMNS)})."
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            if None in row.values() or None in row:
                raise ValueError(
                    f"manifest.csv line {line} does not have the header's {len(header)} fields."
                )
            rows.append(row)
        return rows

    def _selected(self, value: str, cell: str) -> bool:
        """Whether a manifest row with this fold value belongs to this fold and role."""
        if self.k is None:
            if value not in HOLDOUT_ROLES:
                raise ValueError(
                    f"manifest.csv: cell {cell} has fold {value!r}; a holdout export's folds "
                    "are train, validation and test."
                )
            return value == self.role
        try:
            row_fold = int(value)
        except ValueError:
            row_fold = None
        if row_fold is None or not 0 <= row_fold < self.k:
            raise ValueError(
                f"manifest.csv: cell {cell} has fold {value!r}; this {self.strategy} export has "
                f"folds 0..{self.k - 1}."
            )
        return (row_fold == self.fold) == (self.role == "test")

    @staticmethod
    def _check_patch(patch: str, cell: str) -> str:
        """A patch path that stays inside the export (no absolute path, no `..`)."""
        normal = posixpath.normpath(patch) if patch else ""
        if (
            not patch
            or "\\" in patch
            or patch.startswith("/")
            or normal == ".."
            or normal.startswith("../")
        ):
            raise ValueError(
                f"manifest.csv: cell {cell} has patch {patch!r}, which is not a relative path "
                "inside the export."
            )
        return patch

    # -- the Dataset interface ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index) -> tuple[torch.Tensor, int]:
        patch, target = self.samples[index]
        data = self._read_member(patch)
        if data is None:
            cell = self.cell_ids[index]
            raise FileNotFoundError(
                f"{patch} (cell {cell}) is listed in manifest.csv but missing from the export "
                f"{self.path}."
            )
        try:
            with Image.open(io.BytesIO(data)) as image:
                # np.array copies into a writable array (torch warns about read-only ones).
                pixels = np.array(image.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{patch} in {self.path} is not a readable image: {error}") from None
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32).div_(255.0)
        if self.transform is not None:
            tensor = self.transform(tensor)
        return tensor, target

    def class_counts(self) -> dict[str, int]:
        """Samples per class, every class of `classes` in its order (0 where absent)."""
        counts = Counter(self.targets)
        return {code: counts.get(position, 0) for position, code in enumerate(self.classes)}

    # -- handles ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close this process's zip handle (reopened on the next read)."""
        if self._zipfile is not None and self._zip_pid == os.getpid():
            self._zipfile.close()
        self._zipfile = None
        self._zip_pid = None

    def __getstate__(self) -> dict:
        # An open ZipFile cannot be pickled (spawned workers); each process opens its own.
        state = self.__dict__.copy()
        state["_zipfile"] = None
        state["_zip_pid"] = None
        return state

    def __repr__(self) -> str:
        selection = f"fold={self.fold}, " if self.fold is not None else ""
        return (
            f"{type(self).__name__}({str(self.path)!r}, {selection}role={self.role!r}: "
            f"{len(self)} samples, {len(self.classes)} classes)"
        )
