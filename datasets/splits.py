"""Splits of a frozen data set version: stratified k-fold, patient-wise k-fold, holdout.

The folds come from scikit-learn (`StratifiedKFold`, `StratifiedGroupKFold`,
`train_test_split`); this module adds what a citation needs: warnings in words where a class is
too thin for the folds, a proof that no patient is in two folds for the grouped strategies, the
per-fold class counts, and a sha256 over the data set's hash, the strategy, its parameters, the
seed and the assignment, so the same inputs give the same hash on any machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from django.db import transaction
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from core import params as checks
from core.errors import DomainError

from .models import DatasetVersion, Split

Strategy = Split.Strategy
HOLDOUT_PARTS = ("train", "validation", "test")
DEFAULT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
K_RANGE = (2, 1000)  # folds of a k-fold split


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
    patients = [row[1] for row in dataset.manifest]
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
    index = np.arange(len(labels))
    labels = np.asarray(labels)
    parts = np.full(len(labels), "train", dtype=object)
    rest = _carve(index, labels, groups, test, seed, warnings, "test")
    parts[np.setdiff1d(index, rest)] = "test"
    if validation > 0:
        share = validation / (train + validation)
        kept = _carve(
            rest, labels[rest], _subset(groups, rest), share, seed, warnings, "validation"
        )
        parts[np.setdiff1d(rest, kept)] = "validation"
    return parts.tolist()


def _subset(groups, index):
    return None if groups is None else [groups[i] for i in index]


def _carve(index, labels, groups, share: float, seed: int, warnings, part: str) -> np.ndarray:
    """The part of `index` that stays after `share` of it is carved out for `part`."""
    if groups is None:
        try:
            kept, _ = train_test_split(index, test_size=share, random_state=seed, stratify=labels)
        except ValueError:
            thin = sorted(k for k, n in Counter(labels.tolist()).items() if n < 2)
            warnings.append(
                f"The {part} part could not be stratified (class(es) {', '.join(thin)} have "
                "a single cell); it was drawn at random instead."
            )
            kept, _ = train_test_split(index, test_size=share, random_state=seed)
        return np.sort(kept)
    # Grouped: one fold of a stratified group k-fold with about the wanted share.
    n_splits = max(2, round(1 / share))
    if len(set(groups)) < n_splits:
        raise DomainError(
            f"The {part} part needs at least {n_splits} patients; there are {len(set(groups))}.",
            "fractions",
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    keep, _ = next(splitter.split(np.zeros(len(index)), labels, groups))
    actual = 1 - len(keep) / len(index)
    warnings.append(
        f"Grouped by patient, the {part} part holds {actual:.1%} of the cells it was drawn from "
        f"(asked: {share:.1%}): whole patients only."
    )
    return np.sort(index[keep])


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
    labels = [row[3] for row in dataset.manifest]
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
