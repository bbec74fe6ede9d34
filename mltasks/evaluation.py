"""Evaluation of a cell classifier trained with k-fold cross-validation, laid out as in the Munich
AML study's report: per-class precision, sensitivity and specificity as mean ± sd over the folds
(no overall accuracy, which the commonest classes would dominate), the confusion matrix summed
over the held-out folds, ROC curves of a class group (such as "blast") read as one yes/no
question, and a human rater's sensitivity and specificity for the same question, to plot as a
point beside those curves.

The metrics come from scikit-learn (`confusion_matrix`, `roc_curve`, `roc_auc_score`); only the
bookkeeping around them is written here. Rates that are undefined (a class never present or
never predicted in a fold) are nan in arrays and None in the JSON form, never 0, and are left out
of the means with the number of folds used reported. Standard deviations over folds are sample
standard deviations (ddof=1), as papers report them.

Plain numpy arrays and lists in, JSON-ready dicts out; no Django, so this can be tested and
reused without a database.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

ROW_SUM_TOLERANCE = 1e-4
SD_DDOF = 1
MEAN_CURVE_POINTS = 101


@dataclass(frozen=True)
class FoldPredictions:
    """The network's softmax outputs on one fold's held-out cells, with their true classes.

    `fold` names the fold ("0", "1", ... or "test"); `y_true` holds class indices, shape (n,);
    `probabilities` has shape (n, n_classes) and each row sums to 1. The arrays are checked and
    stored as numpy arrays; the width is checked against the classes by the functions that know
    them.
    """

    fold: str
    y_true: np.ndarray
    probabilities: np.ndarray

    def __post_init__(self) -> None:
        y_true = np.asarray(self.y_true)
        probabilities = np.asarray(self.probabilities, dtype=float)
        if y_true.ndim != 1:
            raise ValueError(
                f"fold {self.fold!r}: y_true must be one-dimensional, got shape {y_true.shape}"
            )
        if y_true.size and not np.issubdtype(y_true.dtype, np.integer):
            raise ValueError(
                f"fold {self.fold!r}: y_true must hold integer class indices, got dtype "
                f"{y_true.dtype}"
            )
        if probabilities.ndim != 2:
            raise ValueError(
                f"fold {self.fold!r}: probabilities must be two-dimensional (cells x classes), "
                f"got shape {probabilities.shape}"
            )
        if len(probabilities) != len(y_true):
            raise ValueError(
                f"fold {self.fold!r}: y_true and probabilities must have the same length, got "
                f"{len(y_true)} labels and {len(probabilities)} probability rows"
            )
        if not np.isfinite(probabilities).all() or (probabilities < 0).any():
            raise ValueError(f"fold {self.fold!r}: probabilities must be finite and non-negative")
        row_sums = probabilities.sum(axis=1)
        off = np.flatnonzero(np.abs(row_sums - 1) > ROW_SUM_TOLERANCE)
        if off.size:
            first = int(off[0])
            raise ValueError(
                f"fold {self.fold!r}: probability rows must sum to 1 within "
                f"{ROW_SUM_TOLERANCE:g}; row {first} sums to {row_sums[first]:.6g} "
                f"({off.size} row(s) off)"
            )
        object.__setattr__(self, "y_true", y_true.astype(np.intp))
        object.__setattr__(self, "probabilities", probabilities)

    @property
    def y_pred(self) -> np.ndarray:
        """The predicted class of each cell: the most probable one (the lowest index on ties)."""
        return np.argmax(self.probabilities, axis=1)


@dataclass(frozen=True)
class SpreadOverFolds:
    """Mean and sample sd (ddof=1) of one value over the folds where it is defined.

    `per_fold` keeps every fold's value in fold order, None where undefined; `folds_used` counts
    the defined ones. The mean needs one fold and the sd two; below that they are None.
    """

    mean: float | None
    sd: float | None
    folds_used: int
    per_fold: list[float | None]

    @classmethod
    def of(cls, values: Sequence[float]) -> SpreadOverFolds:
        """Summarise per-fold values, nan meaning undefined in that fold."""
        values = np.asarray(values, dtype=float)
        defined = values[~np.isnan(values)]
        return cls(
            mean=float(defined.mean()) if defined.size else None,
            sd=float(defined.std(ddof=SD_DDOF)) if defined.size > SD_DDOF else None,
            folds_used=int(defined.size),
            per_fold=[_json_float(value) for value in values],
        )

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "sd": self.sd,
            "folds_used": self.folds_used,
            "per_fold": list(self.per_fold),
        }


def per_class_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> dict[str, np.ndarray]:
    """Precision, sensitivity, specificity and support of each class from one set of predictions.

    Each is an array of length `n_classes`, read off scikit-learn's confusion matrix (true classes
    in rows). A rate whose denominator is zero is nan, meaning undefined rather than bad:
    sensitivity of a class with no true cells, precision of a class never predicted,
    specificity of a class that every cell belongs to. Support (true cells) is an integer array.
    """
    y_true = _class_indices(y_true, n_classes, "y_true")
    y_pred = _class_indices(y_pred, n_classes, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"y_true and y_pred must have the same length, got {len(y_true)} and {len(y_pred)}"
        )
    matrix = confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    true_positive = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    negatives = matrix.sum() - support
    false_positive = predicted - true_positive
    return {
        "precision": _rate(true_positive, predicted),
        "sensitivity": _rate(true_positive, support),
        "specificity": _rate(negatives - false_positive, negatives),
        "support": support.astype(np.int64),
    }


def fold_summary(folds: list[FoldPredictions], classes: list[str]) -> dict:
    """Per-class precision, sensitivity and specificity as mean ± sd over the folds.

    Every fold is taken as a held-out split (pass the cross-validation folds, or the test split
    alone, not both: the cells would be counted twice). Per class: each rate's `SpreadOverFolds`
    (folds where it is undefined left out and counted) and `images`, the class's true cells
    summed over the folds. Also the confusion matrix summed over the folds, true classes in rows
    and predicted classes in columns, both in `classes` order. JSON-ready: None for nan.
    """
    classes = _checked_classes(classes)
    _check_folds(folds, len(classes))
    fold_metrics = [per_class_metrics(fold.y_true, fold.y_pred, len(classes)) for fold in folds]
    summed_matrix = sum(
        confusion_matrix(fold.y_true, fold.y_pred, labels=np.arange(len(classes))) for fold in folds
    )
    images = sum(metrics["support"] for metrics in fold_metrics)
    per_class = {}
    for index, code in enumerate(classes):
        per_class[code] = {"images": int(images[index])}
        for rate in ("precision", "sensitivity", "specificity"):
            values = [metrics[rate][index] for metrics in fold_metrics]
            per_class[code][rate] = SpreadOverFolds.of(values).to_dict()
    return {
        "classes": list(classes),
        "folds": [fold.fold for fold in folds],
        "images": int(summed_matrix.sum()),
        "sd_ddof": SD_DDOF,
        "per_class": per_class,
        "confusion": {"labels": list(classes), "matrix": summed_matrix.tolist()},
    }


def group_probability(
    probabilities: np.ndarray, member_indices: Sequence[int] | np.ndarray
) -> np.ndarray:
    """P(group) for each cell: the sum of the member classes' softmax columns.

    The classes are mutually exclusive, so the probability that a cell belongs to any of them is
    the sum of theirs. Indices must be distinct columns of `probabilities`.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2:
        raise ValueError(
            f"probabilities must be two-dimensional (cells x classes), got shape "
            f"{probabilities.shape}"
        )
    member_indices = np.asarray(member_indices)
    if member_indices.ndim != 1 or member_indices.size == 0:
        raise ValueError("member_indices must be a non-empty list of class indices")
    if not np.issubdtype(member_indices.dtype, np.integer):
        raise ValueError(f"member_indices must be integers, got dtype {member_indices.dtype}")
    width = probabilities.shape[1]
    outside = member_indices[(member_indices < 0) | (member_indices >= width)]
    if outside.size:
        raise ValueError(
            f"member_indices {outside.tolist()} are not columns of probabilities with "
            f"{width} classes"
        )
    if len(np.unique(member_indices)) != len(member_indices):
        raise ValueError(f"member_indices contain duplicates: {member_indices.tolist()}")
    return probabilities[:, member_indices].sum(axis=1)


def group_roc(folds: list[FoldPredictions], classes: list[str], members: set[str]) -> dict:
    """ROC curve and AUC of P(group) for "is the true class one of `members`?", fold by fold.

    Per fold: counts of positives and negatives, scikit-learn's `roc_curve` (false- and
    true-positive rates and thresholds; the first threshold, infinite, is written None) and
    `roc_auc_score`. Folds where only one outcome occurs have no ROC curve; they are listed as
    skipped and left out of the AUC's mean ± sd (ddof=1) and of the mean curve. The mean curve
    is on a fixed grid of 101 false-positive rates from 0 to 1: each fold's curve is read at the
    grid (following its polyline, taking the top of a vertical step that falls on a grid point)
    and the true-positive rates are averaged, with their sd for a band.
    """
    classes = _checked_classes(classes)
    member_indices = _member_indices(members, classes)
    if len(member_indices) == len(classes):
        raise ValueError(
            "members must leave out at least one class, else no cell can be a negative"
        )
    _check_folds(folds, len(classes))

    grid = np.linspace(0.0, 1.0, MEAN_CURVE_POINTS)
    per_fold = []
    aucs = []
    curves_on_grid = []
    skipped = []
    for fold in folds:
        is_member = np.isin(fold.y_true, member_indices)
        positives = int(is_member.sum())
        negatives = int(is_member.size - positives)
        row = {"fold": fold.fold, "positives": positives, "negatives": negatives}
        if positives == 0 or negatives == 0:
            skipped.append(fold.fold)
            row.update(auc=None, fpr=None, tpr=None, thresholds=None)
            per_fold.append(row)
            continue
        scores = group_probability(fold.probabilities, member_indices)
        fpr, tpr, thresholds = roc_curve(is_member, scores)
        auc = float(roc_auc_score(is_member, scores))
        aucs.append(auc)
        # roc_curve's false-positive rates never decrease; at a repeated one (a vertical step)
        # np.interp returns the last, i.e. the step's top, and in between follows the polyline.
        curves_on_grid.append(np.interp(grid, fpr, tpr))
        row.update(
            auc=auc,
            fpr=fpr.tolist(),
            tpr=tpr.tolist(),
            thresholds=[_json_float(value) for value in thresholds],
        )
        per_fold.append(row)

    auc_spread = SpreadOverFolds.of(aucs)
    mean_tpr = tpr_sd = None
    if curves_on_grid:
        stacked = np.vstack(curves_on_grid)
        mean_tpr = stacked.mean(axis=0).tolist()
        if len(curves_on_grid) > SD_DDOF:
            tpr_sd = stacked.std(axis=0, ddof=SD_DDOF).tolist()
    return {
        "members": [classes[index] for index in member_indices],
        "folds": per_fold,
        "auc": {
            "mean": auc_spread.mean,
            "sd": auc_spread.sd,
            "folds_used": auc_spread.folds_used,
            "folds_skipped": len(skipped),
            "skipped": skipped,
        },
        "sd_ddof": SD_DDOF,
        "mean_curve": {"fpr": grid.tolist(), "tpr": mean_tpr, "tpr_sd": tpr_sd},
    }


def rater_point(
    y_true_codes: Sequence[Hashable],
    rater_codes: Sequence[Hashable | None],
    members: Collection[Hashable],
    *,
    classes: Collection[Hashable] | None = None,
) -> dict | None:
    """A human rater's sensitivity and specificity for "is the true class one of `members`?".

    The rater answered the same cells the network saw: `y_true_codes[i]` is cell i's true class
    code and `rater_codes[i]` the rater's, None meaning the rater could not classify it. Those
    cells are left out and counted. The rater says "yes" by naming any member class. Returns
    None when, after the exclusions, the cells hold only positives or only negatives (one of
    the two rates is undefined). If `classes` is given, members and every code must be in it.
    """
    if len(y_true_codes) != len(rater_codes):
        raise ValueError(
            f"y_true_codes and rater_codes must have the same length, got {len(y_true_codes)} "
            f"and {len(rater_codes)}"
        )
    members = _checked_members(members)
    if any(code is None for code in y_true_codes):
        raise ValueError(
            "y_true_codes must give every cell's true class; None (cannot classify) is allowed "
            "only in rater_codes"
        )
    if classes is not None:
        known = set(classes)
        unknown_members = sorted(map(str, members - known))
        if unknown_members:
            raise ValueError(f"members not in classes: {', '.join(map(repr, unknown_members))}")
        seen = set(y_true_codes) | {code for code in rater_codes if code is not None}
        unknown_codes = sorted(map(str, seen - known))
        if unknown_codes:
            raise ValueError(f"codes not in classes: {', '.join(map(repr, unknown_codes))}")

    answered = [
        (truth, answer)
        for truth, answer in zip(y_true_codes, rater_codes, strict=True)
        if answer is not None
    ]
    truly_member = np.array([truth in members for truth, _ in answered], dtype=bool)
    said_member = np.array([answer in members for _, answer in answered], dtype=bool)
    positives = int(truly_member.sum())
    negatives = len(answered) - positives
    if positives == 0 or negatives == 0:
        return None
    true_positive = int((truly_member & said_member).sum())
    true_negative = int((~truly_member & ~said_member).sum())
    sensitivity = true_positive / positives
    specificity = true_negative / negatives
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "false_positive_rate": 1 - specificity,
        "n": len(answered),
        "excluded_cannot_classify": len(rater_codes) - len(answered),
        "true_positive": true_positive,
        "false_negative": positives - true_positive,
        "true_negative": true_negative,
        "false_positive": negatives - true_negative,
    }


def _checked_classes(classes: Sequence[str]) -> list[str]:
    """The class order: non-empty and without duplicates."""
    classes = list(classes)
    if not classes:
        raise ValueError("classes must name at least one class")
    if len(set(classes)) != len(classes):
        duplicates = sorted({code for code in classes if classes.count(code) > 1})
        raise ValueError(f"classes contain duplicates: {', '.join(map(repr, duplicates))}")
    return classes


def _checked_members(members: Collection[Hashable]) -> set[Hashable]:
    """A non-empty set of class codes; a bare string is refused (it would be read letter by
    letter)."""
    if isinstance(members, str):
        raise ValueError(
            f"members must be a collection of class codes, not the single string {members!r}"
        )
    members = set(members)
    if not members:
        raise ValueError("members must name at least one class")
    return members


def _member_indices(members: Collection[str], classes: list[str]) -> np.ndarray:
    """The members' positions in `classes`, in class order; codes not in classes raise."""
    members = _checked_members(members)
    unknown = sorted(map(str, members - set(classes)))
    if unknown:
        raise ValueError(f"members not in classes: {', '.join(map(repr, unknown))}")
    return np.array([i for i, code in enumerate(classes) if code in members], dtype=np.intp)


def _check_folds(folds: list[FoldPredictions], n_classes: int) -> None:
    """At least one fold, distinct names, and each fold's width and labels fit the classes."""
    if not folds:
        raise ValueError("folds must hold at least one FoldPredictions, got an empty list")
    names = [fold.fold for fold in folds]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"fold names must be distinct, repeated: {', '.join(duplicates)}")
    for fold in folds:
        width = fold.probabilities.shape[1]
        if width != n_classes:
            raise ValueError(
                f"fold {fold.fold!r}: probabilities have {width} columns but there are "
                f"{n_classes} classes"
            )
        _class_indices(fold.y_true, n_classes, f"fold {fold.fold!r}: y_true")


def _class_indices(values: Sequence[int] | np.ndarray, n_classes: int, name: str) -> np.ndarray:
    """`values` as a 1-D integer array of indices in [0, n_classes); anything else raises."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {values.shape}")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {values.dtype}")
    outside = values[(values < 0) | (values >= n_classes)]
    if outside.size:
        raise ValueError(
            f"{name} holds class index {int(outside[0])}, outside 0..{n_classes - 1} "
            f"({outside.size} value(s) out of range)"
        )
    return values.astype(np.intp)


def _rate(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio, nan where the denominator is zero."""
    result = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=result, where=denominator != 0)
    return result


def _json_float(value: float) -> float | None:
    """A plain float, or None for nan and infinities (not valid JSON)."""
    value = float(value)
    return value if np.isfinite(value) else None
