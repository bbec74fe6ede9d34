"""Splits of a frozen data set version: stratified k-fold, patient-wise k-fold, holdout.

The folds come from scikit-learn (`StratifiedKFold`, `StratifiedGroupKFold`,
`train_test_split`); this module adds what a citation needs: warnings in words where a class is
too thin for the folds, a proof that no patient is in two folds for the grouped strategies, the
per-fold class counts, and a sha256 over the data set's hash, the strategy, its parameters, the
seed and the assignment, so the same inputs give the same hash on any machine.

It is also where a split is read, the one definition that exports and training use:
`split_samples(split)` gives every cell with its fold and patch in storage (an export's manifest),
`fold_parts(split, fold)` a fold's train, validation and test samples (training), `samples(split,
fold, role)` one of those roles; `carve_validation` is the one rule by which a part is held out of
others (a holdout's test and validation parts, training's validation part).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from django.db import transaction
from sklearn.model_selection import (
    GroupShuffleSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)

from annotator import patches as cell_patches
from annotator.models import Cell
from core import params as checks
from core.errors import DomainError

from .models import DatasetVersion, Split

Strategy = Split.Strategy
HOLDOUT_PARTS = ("train", "validation", "test")
DEFAULT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
K_RANGE = (2, 1000)  # folds of a k-fold split
ROLES = HOLDOUT_PARTS
# A carve by whole patients must leave at least this many patients in the part that trains.
MIN_TRAINING_PATIENTS = 2


@dataclass(frozen=True)
class SplitParameters:
    """A split's parameters as the page's form, the API's serializer and `make_split` (and so
    the make_split command) pass them, checked here once, with one set of bounds: `k` folds
    from 2 to 1000, a 32-bit `seed`, holdout `fractions` of train, validation and test, each
    a number from 0 to 1, adding up to 1, train and test above 0. Each refusal is a DomainError
    naming the parameter. What depends on the data set (k against its cells and patients) is
    checked where the split is made."""

    strategy: str
    k: int = 5
    seed: int = 0
    fractions: Mapping[str, float] | None = None  # None: DEFAULT_FRACTIONS
    grouped: bool = False

    def __post_init__(self):
        if self.strategy not in Strategy.values:
            known = ", ".join(Strategy.values)
            raise DomainError(f"Unknown strategy {self.strategy!r}; use {known}.", "strategy")
        object.__setattr__(self, "k", checks.whole_number(self.k, "k", *K_RANGE))
        object.__setattr__(self, "seed", checks.seed(self.seed))
        object.__setattr__(self, "fractions", _checked_fractions(self.fractions))

    @property
    def holdout_fractions(self) -> dict[str, float]:
        """The fraction of each holdout part, the defaults where none were given."""
        return dict(self.fractions or DEFAULT_FRACTIONS)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _checked_fractions(fractions: Mapping | None) -> dict[str, float] | None:
    if not fractions:
        return None
    if not isinstance(fractions, Mapping):
        raise DomainError("fractions must map train, validation and test to numbers.", "fractions")
    unknown = sorted(str(part) for part in set(fractions) - set(HOLDOUT_PARTS))
    if unknown:
        raise DomainError(f"Unknown part(s) {', '.join(unknown)}.", field="fractions")
    values = {}
    for part in HOLDOUT_PARTS:
        value = fractions.get(part, 0)
        if not _is_number(value) or not 0 <= value <= 1:
            raise DomainError(
                f"The {part} fraction must be a number from 0 to 1, not {value!r}.", "fractions"
            )
        values[part] = float(value)
    if abs(sum(values.values()) - 1) > 1e-6:
        raise DomainError(
            "train, validation and test fractions must be non-negative and add up to 1.",
            "fractions",
        )
    if values["test"] <= 0 or values["train"] <= 0:
        raise DomainError("train and test fractions must be above 0.", field="fractions")
    return values


def describe(strategy: str, params: Mapping, seed: int | None = None) -> str:
    """A split's strategy in words, as pages and the API show it: "patient-wise, 3 folds",
    "stratified, 5 folds, seed 7", "holdout 70 / 10 / 20 % (train / validation / test),
    patient-wise"."""
    if strategy == Strategy.HOLDOUT:
        fractions = params.get("fractions") or DEFAULT_FRACTIONS
        shares = " / ".join(f"{round(100 * fractions.get(p, 0)):g}" for p in DEFAULT_FRACTIONS)
        words = f"holdout {shares} % ({' / '.join(DEFAULT_FRACTIONS)})"
        if params.get("grouped"):
            words += ", patient-wise"
    else:
        k = params.get("k")
        kind = "patient-wise" if strategy == Strategy.PATIENT_KFOLD else "stratified"
        words = f"{kind}, {k} fold{'s' if k != 1 else ''}"
    return words if seed is None else f"{words}, seed {seed}"


def split_sha256(dataset_sha: str, strategy: str, params: dict, seed: int, folds: list) -> str:
    canonical = json.dumps(
        {
            "dataset": dataset_sha,
            "strategy": strategy,
            "params": params,
            "seed": seed,
            "folds": folds,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _patients(dataset: DatasetVersion) -> list[str]:
    patients = [row.patient for row in dataset.rows()]
    unknown = sum(1 for patient in patients if not patient)
    if unknown:
        raise DomainError(
            f"{unknown} of the {len(patients)} cells of {dataset} have no known patient; a "
            "patient-wise split needs every cell's patient.",
            field="strategy",
        )
    return patients


def _thin_class_warnings(labels: list[str], groups: list[str] | None, k: int) -> list[str]:
    warnings = []
    cells = Counter(labels)
    for klass in sorted(cells):
        if cells[klass] < k:
            warnings.append(
                f"Class {klass} has {cells[klass]} cell(s), fewer than the {k} folds: "
                f"{k - cells[klass]} fold(s) have none of it in their test part; it was kept "
                "and spread as far as it goes."
            )
    if groups is not None:
        patients = defaultdict(set)
        for klass, group in zip(labels, groups, strict=True):
            patients[klass].add(group)
        for klass in sorted(patients):
            if len(patients[klass]) < k and cells[klass] >= k:
                warnings.append(
                    f"Class {klass} occurs in {len(patients[klass])} patient(s), fewer than "
                    f"the {k} folds: at most {len(patients[klass])} fold(s) test it, because a "
                    "patient's cells stay in one fold."
                )
    return warnings


def _kfold(labels, groups, k: int, seed: int) -> list[int]:
    n = len(labels)
    if k > n:
        raise DomainError(f"k={k} is more than the {n} cells of the data set.", field="k")
    folds = np.full(n, -1)
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        pieces = splitter.split(np.zeros(n), labels)
    else:
        if len(set(groups)) < k:
            raise DomainError(
                f"k={k} is more than the {len(set(groups))} patients of the data set.", "k"
            )
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        pieces = splitter.split(np.zeros(n), labels, groups)
    with warnings.catch_warnings():
        # scikit-learn's "least populated class" warning: reported in words by this module.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        try:
            for fold, (_, test) in enumerate(pieces):
                folds[test] = fold
        except ValueError as exc:  # e.g. every class has fewer cells than folds
            raise DomainError(f"These folds cannot be made: {exc}", field="k") from None
    return folds.tolist()


def _holdout(labels, groups, fractions: dict, seed: int, warnings: list[str]) -> list[str]:
    train, validation, test = (fractions[part] for part in HOLDOUT_PARTS)
    labels = np.asarray(labels)
    parts = np.full(len(labels), "train", dtype=object)
    tested = carve_validation(labels, groups, test, seed, part="test")
    warnings.extend(tested.notes)
    parts[tested.held] = "test"
    rest = tested.kept
    if validation > 0:
        share = validation / (train + validation)
        groups_left = None if groups is None else [groups[i] for i in rest]
        validated = carve_validation(labels[rest], groups_left, share, seed)
        warnings.extend(validated.notes)
        parts[rest[validated.held]] = "validation"
    return parts.tolist()


@dataclass(frozen=True)
class Carve:
    """A part held out of some cells: the positions (into the labels the carve was given) that
    stay and those held out, each sorted; `by` is "patients" (whole patients held out) or
    "cells"; `notes` say in words what a reader of the result should know."""

    kept: np.ndarray
    held: np.ndarray
    by: str
    notes: tuple[str, ...] = ()


def carve_validation(
    labels: Sequence,
    groups: Sequence[str] | None,
    share: float,
    seed: int,
    *,
    part: str = "validation",
    whole_patients_only: bool = True,
    other_folds: Sequence | None = None,
    class_order: Sequence[str] | None = None,
) -> Carve:
    """Hold out about `share` of the cells for `part`, stratified by class and seeded: the one
    rule for a holdout split's test and validation parts and for training's validation part.

    Without `groups`, cells are drawn (stratified; at random where a class has a single cell).
    With `groups` (each cell's patient), whole patients are held out, as one fold of a
    stratified group k-fold where there are patients enough for the share; then
    - `whole_patients_only` (a split's parts): fewer patients than the share needs is refused;
    - else (training's validation part): with fewer, a shuffled draw of whole patients; and
      where whole patients would leave fewer than two patients to train on, or would hold out
      every cell of one of `other_folds` (each cell's test fold: two folds could then train on
      the same cells), cells are drawn within the patients instead, and a note says why.
    `class_order` is the order in which the stratified draws visit the classes (it decides which
    cells are drawn); by default the sorted order of `labels`.
    """
    labels = np.asarray(labels)
    if class_order is None:
        codes = labels
    else:
        position = {name: index for index, name in enumerate(class_order)}
        codes = np.array([position[label] for label in labels.tolist()], dtype=int)
    if groups is None:
        return _carve_cells(labels, codes, share, seed, part)
    groups = np.asarray(groups)
    patients = len(set(groups.tolist()))
    n_splits = max(2, round(1 / share))
    if whole_patients_only and patients < n_splits:
        raise DomainError(
            f"The {part} part needs at least {n_splits} patients; there are {patients}.",
            "fractions",
        )
    if patients < MIN_TRAINING_PATIENTS:
        reason = "the cells it was carved from belong to one patient only"
    else:
        carved = _carve_patients(codes, groups, share, seed, n_splits, patients, part)
        if whole_patients_only:
            return carved
        reason = _why_not_whole_patients(carved, groups, patients, other_folds)
        if reason is None:
            return carved
    cells = _carve_cells(labels, codes, share, seed, part)
    note = (
        f"The {part} part was carved by cells within patients (so its patients also train) "
        f"because {reason}."
    )
    return Carve(cells.kept, cells.held, "cells", (note, *cells.notes))


def _carve_cells(labels, codes, share: float, seed: int, part: str) -> Carve:
    index = np.arange(len(labels))
    notes = ()
    try:
        kept, held = train_test_split(index, test_size=share, random_state=seed, stratify=codes)
    except ValueError:
        thin = sorted(str(k) for k, n in Counter(labels.tolist()).items() if n < 2)
        notes = (
            f"The {part} part could not be stratified (class(es) {', '.join(thin)} have a "
            "single cell); it was drawn at random instead.",
        )
        kept, held = train_test_split(index, test_size=share, random_state=seed)
    return Carve(np.sort(kept), np.sort(held), "cells", notes)


def _carve_patients(codes, groups, share, seed, n_splits, patients, part) -> Carve:
    cells = np.zeros(len(codes))
    if patients >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            # The least populated class warning: a held-out part need not hold every class.
            warnings.filterwarnings("ignore", message="The least populated", category=UserWarning)
            kept, held = next(splitter.split(cells, codes, groups))
    else:
        splitter = GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed)
        try:
            kept, held = next(splitter.split(cells, codes, groups))
        except ValueError:  # the share of so few patients rounds up to all of them
            kept, held = np.array([], dtype=int), np.arange(len(codes))
    note = (
        f"Grouped by patient, the {part} part holds {len(held) / len(codes):.1%} of the cells "
        f"it was drawn from (asked: {share:.1%}): whole patients only."
    )
    return Carve(np.sort(kept), np.sort(held), "patients", (note,))


def _why_not_whole_patients(carved: Carve, groups, patients: int, other_folds) -> str | None:
    """Why a carve by whole patients would do harm to training, or None."""
    training_patients = len(set(groups[carved.kept].tolist()))
    if training_patients < MIN_TRAINING_PATIENTS:
        return (
            f"the cells it was carved from belong to only {patients} patients, and whole "
            f"patients would leave {training_patients} to train on"
        )
    if other_folds is not None:
        folds = np.array([str(fold) for fold in other_folds])
        held = np.zeros(len(folds), dtype=bool)
        held[carved.held] = True
        for fold in sorted(set(folds.tolist()), key=_fold_order):
            if held[folds == fold].all():
                return (
                    f"whole patients would hold out all of fold {fold}, and two folds could "
                    "then train on the same cells"
                )
    return None


def _fold_order(fold: str):
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)


def _fold_counts(labels: list[str], folds: list) -> dict:
    counts: dict[str, Counter] = defaultdict(Counter)
    for klass, fold in zip(labels, folds, strict=True):
        counts[str(fold)][klass] += 1
    return {fold: dict(sorted(c.items())) for fold, c in sorted(counts.items())}


def patient_check(groups: list[str], folds: list) -> dict:
    """Which patients have cells in more than one fold (must be none for grouped splits)."""
    seen: dict[str, set] = defaultdict(set)
    for group, fold in zip(groups, folds, strict=True):
        seen[group].add(fold)
    shared = sorted(group for group, found in seen.items() if len(found) > 1)
    return {"patients": len(seen), "patients_in_two_folds": len(shared), "examples": shared[:5]}


@transaction.atomic
def make_split(
    dataset: DatasetVersion,
    strategy: str,
    user,
    *,
    k: int = 5,
    seed: int = 0,
    fractions: dict | None = None,
    grouped: bool = False,
) -> tuple[Split, bool]:
    """Split the version; an identical split (same hash) is found rather than stored twice.
    The parameters are checked first (`SplitParameters`), whoever passes them."""
    asked = SplitParameters(strategy, k=k, seed=seed, fractions=fractions, grouped=grouped)
    k, seed = asked.k, asked.seed
    labels = [row.class_name for row in dataset.rows()]
    notes: list[str] = []
    if strategy in (Strategy.STRATIFIED_KFOLD, Strategy.PATIENT_KFOLD):
        groups = _patients(dataset) if strategy == Strategy.PATIENT_KFOLD else None
        params = {"k": k}
        folds = _kfold(labels, groups, k, seed)
        notes += _thin_class_warnings(labels, groups, k)
    else:  # holdout
        groups = _patients(dataset) if grouped else None
        params = {"fractions": asked.holdout_fractions, "grouped": grouped}
        folds = _holdout(labels, groups, params["fractions"], seed, notes)
    check = patient_check(groups, folds) if groups is not None else {}
    if check.get("patients_in_two_folds"):
        raise DomainError(f"Patients in two folds: {check['examples']}; this is a bug.")
    sha = split_sha256(dataset.sha256, strategy, params, seed, folds)
    existing = Split.objects.filter(dataset=dataset, sha256=sha).first()
    if existing:
        return existing, False
    made = Split.objects.create(
        dataset=dataset,
        strategy=strategy,
        params=params,
        seed=seed,
        folds=folds,
        fold_counts=_fold_counts(labels, folds),
        warnings=notes,
        patient_check=check,
        sha256=sha,
        created_by=user,
    )
    return made, True


def find_split(reference: str) -> Split:
    """A split by id or by a prefix (at least 8 characters) of its hash."""
    if reference.isdigit() and len(reference) < 12:
        found = Split.objects.filter(pk=int(reference)).first()
        if found:
            return found
    if len(reference) >= 8:
        found = list(Split.objects.filter(sha256__startswith=reference.lower())[:2])
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DomainError(f"Hash prefix {reference!r} fits several splits; give more of it.")
    raise DomainError(f"No split {reference!r} (give its id or its hash).", field="split")


class Sample(NamedTuple):
    """One cell of a split as exports and training read it: its manifest row, its fold (a
    k-fold's number, or a holdout's part) and its patch's name in media storage ("" for a cell
    without an image). An export's manifest.csv row adds the cell's external id and its scan's
    file name to it (`datasets.exports.manifest_rows`)."""

    cell: int
    patient: str
    scan: str
    class_name: str
    fold: int | str
    patch: str


def patch_names(split: Split, *, needed_by: str | None = None) -> dict[int, str]:
    """Each cell's patch in media storage, cut now where a scan's cell has none yet; "" for a
    cell that has no image (its label was imported without the file). With `needed_by` (who
    needs them all), a cell without an image is refused."""
    wanted = {row.cell for row in split.dataset.rows()}
    found = Cell.objects.filter(study=split.dataset.study_id).values_list("pk", "scan_id", "patch")
    names = dict.fromkeys(wanted, "")
    on_scans = []
    for pk, scan, patch in found:
        if pk in wanted:
            if scan is None:
                names[pk] = patch
            else:
                on_scans.append(pk)
    for cell in Cell.objects.filter(pk__in=on_scans).select_related("scan", "study"):
        names[cell.pk] = cell_patches.ensure_patch(cell).name
    missing = sum(1 for name in names.values() if not name)
    if missing and needed_by:
        raise DomainError(
            f"{missing} of the {len(names)} cells of the split have no image (their labels were "
            f"imported without the image files): {needed_by} needs them all."
        )
    return names


def split_samples(split: Split, patches: Mapping[int, str] | None = None) -> list[Sample]:
    """Every cell of the split with its fold and patch, in the manifest's order; `patches` as
    `patch_names` gives them (found now when not given)."""
    if patches is None:
        patches = patch_names(split)
    return [
        Sample(*row, fold, patches.get(row.cell, ""))
        for row, fold in zip(split.dataset.rows(), split.folds, strict=True)
    ]


def fold_names(split: Split) -> list[str | None]:
    """The folds `samples` takes: a k-fold split's numbers as text, None for a holdout."""
    if split.strategy == Strategy.HOLDOUT:
        return [None]
    return sorted({str(fold) for fold in split.folds}, key=int)


def _is_grouped(split: Split) -> bool:
    return split.strategy == Strategy.PATIENT_KFOLD or bool(split.params.get("grouped"))


@dataclass(frozen=True)
class FoldParts:
    """One fold of a split in its three roles, and how its validation part came to be: `by` is
    "split" (a holdout's own part), "patients" or "cells" (carved out of the training part),
    or "" (no validation part); `notes` say so in words where a reader should know."""

    fold: str | None
    train: list[Sample]
    validation: list[Sample]
    test: list[Sample]
    by: str
    notes: tuple[str, ...] = ()


def fold_parts(
    split: Split,
    fold: int | str | None,
    *,
    validation_fraction: float | None = None,
    seed: int = 0,
    patches: Mapping[int, str] | None = None,
) -> FoldParts:
    """The train, validation and test samples of one fold, in the manifest's order.

    k-fold splits (`fold` one of `fold_names`): test is the fold's cells, train every other
    fold's. Holdout splits (`fold` None): each role is the part of that name. A validation part
    is carved out of train with `validation_fraction` (seeded by `seed`, by whole patients where
    the split keeps patients apart: `carve_validation`) where the split has none of its own;
    without it a k-fold has no validation part.
    """
    every = split_samples(split, patches)
    fold = _check_fold(split, fold)
    if fold is None:
        parts = {role: [s for s in every if s.fold == role] for role in ROLES}
    else:
        parts = {
            "train": [s for s in every if str(s.fold) != fold],
            "validation": [],
            "test": [s for s in every if str(s.fold) == fold],
        }
    if parts["validation"]:
        return FoldParts(fold, parts["train"], parts["validation"], parts["test"], "split")
    if validation_fraction is None:
        return FoldParts(fold, parts["train"], [], parts["test"], "")
    train = parts["train"]
    carved = carve_validation(
        [s.class_name for s in train],
        [s.patient for s in train] if _is_grouped(split) else None,
        validation_fraction,
        seed,
        whole_patients_only=False,
        other_folds=None if fold is None else [s.fold for s in train],
        class_order=split.dataset.classes,
    )
    return FoldParts(
        fold,
        [train[i] for i in carved.kept],
        [train[i] for i in carved.held],
        parts["test"],
        carved.by,
        carved.notes,
    )


def _check_fold(split: Split, fold) -> str | None:
    names = fold_names(split)
    if names == [None]:
        if fold is not None:
            raise DomainError(
                f"A holdout split has no folds: leave fold out (not {fold!r}) and pick the role "
                "train, validation or test.",
                field="fold",
            )
        return None
    if fold is None or isinstance(fold, bool) or str(fold) not in names:
        raise DomainError(
            f"Split {split.pk} has no fold {fold!r}; its folds are {', '.join(names)}.", "fold"
        )
    return str(fold)


def samples(
    split: Split,
    fold: int | str | None,
    role: str,
    *,
    validation_fraction: float | None = None,
    seed: int = 0,
    patches: Mapping[int, str] | None = None,
) -> list[Sample]:
    """The samples of one fold and role (train, validation or test), as `fold_parts` defines
    them; a k-fold split's validation role needs `validation_fraction` to carve it."""
    if role not in ROLES:
        raise DomainError(f"Unknown role {role!r}; use train, validation or test.", "role")
    kfold = split.strategy != Strategy.HOLDOUT
    if role == "validation" and validation_fraction is None and kfold:
        raise DomainError(
            f"A {split.strategy} split has no validation part of its own: give "
            "validation_fraction to carve one out of the fold's training part.",
            field="role",
        )
    parts = fold_parts(
        split, fold, validation_fraction=validation_fraction, seed=seed, patches=patches
    )
    return getattr(parts, role)
