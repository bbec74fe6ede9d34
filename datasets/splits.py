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
import warnings
from collections import Counter, defaultdict

import numpy as np
from django.db import transaction
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from core.errors import DomainError

from .models import DatasetVersion, Split

Strategy = Split.Strategy
HOLDOUT_PARTS = ("train", "validation", "test")


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


def _check_seed(seed: int) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise DomainError("seed must be a whole number from 0 to 4294967295.", field="seed")
    return seed


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
    if k < 2:
        raise DomainError("k must be at least 2.", field="k")
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
    train, validation, test = (fractions.get(part, 0) for part in HOLDOUT_PARTS)
    if any(f < 0 for f in (train, validation, test)) or abs(train + validation + test - 1) > 1e-6:
        raise DomainError(
            "train, validation and test fractions must be non-negative and add up to 1.",
            "fractions",
        )
    if test <= 0 or train <= 0:
        raise DomainError("train and test fractions must be above 0.", field="fractions")
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
    """Split the version; an identical split (same hash) is found rather than stored twice."""
    seed = _check_seed(seed)
    labels = [row[3] for row in dataset.manifest]
    notes: list[str] = []
    if strategy in (Strategy.STRATIFIED_KFOLD, Strategy.PATIENT_KFOLD):
        groups = _patients(dataset) if strategy == Strategy.PATIENT_KFOLD else None
        params = {"k": k}
        folds = _kfold(labels, groups, k, seed)
        notes += _thin_class_warnings(labels, groups, k)
    elif strategy == Strategy.HOLDOUT:
        fractions = fractions or {"train": 0.7, "validation": 0.1, "test": 0.2}
        unknown = sorted(set(fractions) - set(HOLDOUT_PARTS))
        if unknown:
            raise DomainError(f"Unknown part(s) {', '.join(unknown)}.", field="fractions")
        groups = _patients(dataset) if grouped else None
        params = {
            "fractions": {p: float(fractions.get(p, 0)) for p in HOLDOUT_PARTS},
            "grouped": grouped,
        }
        folds = _holdout(labels, groups, params["fractions"], seed, notes)
    else:
        known = ", ".join(Strategy.values)
        raise DomainError(f"Unknown strategy {strategy!r}; use {known}.", field="strategy")
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
