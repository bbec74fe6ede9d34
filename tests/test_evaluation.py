"""Evaluation of a cross-validated classifier (mltasks.evaluation): per-class rates on hand-computed
examples, nan for undefined rates and None in the JSON form, mean ± sample sd over folds, the
summed confusion matrix, group ROC/AUC against the Mann-Whitney definition and scikit-learn, the
mean ROC curve, a rater's point, validation and the JSON form. No database."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score

from mltasks.evaluation import (
    FoldPredictions,
    fold_summary,
    group_probability,
    group_roc,
    per_class_metrics,
    rater_point,
)

CLASSES = ["A", "B", "C"]


def labels_from_matrix(matrix):
    """y_true and y_pred whose confusion matrix (true in rows) is `matrix`."""
    y_true, y_pred = [], []
    for true_class, row in enumerate(matrix):
        for predicted_class, count in enumerate(row):
            y_true += [true_class] * count
            y_pred += [predicted_class] * count
    return np.array(y_true), np.array(y_pred)


def confident_probabilities(y_pred, n_classes, top=0.8):
    """Softmax-like rows whose most probable class is `y_pred`."""
    rest = (1 - top) / (n_classes - 1)
    probabilities = np.full((len(y_pred), n_classes), rest)
    probabilities[np.arange(len(y_pred)), y_pred] = top
    return probabilities


def fold_from_labels(name, y_true, y_pred, n_classes=3):
    return FoldPredictions(
        fold=name,
        y_true=np.asarray(y_true),
        probabilities=confident_probabilities(np.asarray(y_pred), n_classes),
    )


def assert_plain_json(value):
    """Only dict, list, str, int, float, bool and None (no numpy scalars), and no NaN/inf."""
    json.dumps(value, allow_nan=False)
    if isinstance(value, dict):
        assert all(type(key) is str for key in value)
        for item in value.values():
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert type(value) in (str, int, float, bool, type(None)), type(value)


# --- per_class_metrics ---------------------------------------------------------------------

# Rows true class, columns predicted (11 cells):
#          A  B  C
#     A  [ 4, 1, 0 ]   support 5
#     B  [ 2, 2, 1 ]   support 5
#     C  [ 0, 0, 1 ]   support 1
#  predicted 6  3  2
HAND_MATRIX = [[4, 1, 0], [2, 2, 1], [0, 0, 1]]


def test_per_class_metrics_match_hand_computation():
    y_true, y_pred = labels_from_matrix(HAND_MATRIX)
    metrics = per_class_metrics(y_true, y_pred, 3)
    # precision = diagonal / column sum
    np.testing.assert_allclose(metrics["precision"], [4 / 6, 2 / 3, 1 / 2])
    # sensitivity = diagonal / row sum
    np.testing.assert_allclose(metrics["sensitivity"], [4 / 5, 2 / 5, 1 / 1])
    # specificity = true negatives / negatives: A: 6 negatives, 2 false positives (from B);
    # B: 6 negatives, 1 false positive (from A); C: 10 negatives, 1 false positive (from B)
    np.testing.assert_allclose(metrics["specificity"], [4 / 6, 5 / 6, 9 / 10])
    assert metrics["support"].tolist() == [5, 5, 1]


def test_per_class_metrics_agree_with_scikit_learn_rates():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 5, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 5, 300))
    metrics = per_class_metrics(y_true, y_pred, 5)
    labels = list(range(5))
    np.testing.assert_allclose(
        metrics["precision"], precision_score(y_true, y_pred, labels=labels, average=None)
    )
    np.testing.assert_allclose(
        metrics["sensitivity"], recall_score(y_true, y_pred, labels=labels, average=None)
    )


def test_undefined_rates_are_nan_not_zero():
    # Class C (2) is never true and never predicted; every cell is in A or B.
    metrics = per_class_metrics([0, 0, 1], [0, 1, 1], 3)
    assert math.isnan(metrics["sensitivity"][2])
    assert math.isnan(metrics["precision"][2])
    assert metrics["specificity"][2] == 1.0
    # Every cell is class A: A's specificity has no negatives to work with.
    everything_a = per_class_metrics([0, 0], [0, 1], 2)
    assert math.isnan(everything_a["specificity"][0])
    assert everything_a["sensitivity"][0] == 0.5


# --- fold_summary --------------------------------------------------------------------------

# Fold "0": true [A A A A B B], predicted [A A A B B B]
#   sensitivity A 3/4, B 2/2, C undefined; precision A 3/3, B 2/3, C undefined
#   specificity A 2/2, B 3/4, C 6/6
# Fold "1": true [A A B B C C], predicted [A B B B C A]
#   sensitivity A 1/2, B 2/2, C 1/2; precision A 1/2, B 2/3, C 1/1
#   specificity A 3/4, B 3/4, C 4/4
TWO_FOLDS = [
    ("0", [0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]),
    ("1", [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]),
]


def two_folds():
    return [fold_from_labels(name, y_true, y_pred) for name, y_true, y_pred in TWO_FOLDS]


def test_fold_summary_mean_and_sample_sd_over_folds():
    summary = fold_summary(two_folds(), CLASSES)
    sensitivity_a = summary["per_class"]["A"]["sensitivity"]
    assert sensitivity_a["per_fold"] == [0.75, 0.5]
    assert sensitivity_a["mean"] == pytest.approx(0.625)
    # ddof=1: |0.75 - 0.5| / sqrt(2); ddof=0 would give 0.125.
    assert sensitivity_a["sd"] == pytest.approx(0.25 / math.sqrt(2))
    assert sensitivity_a["folds_used"] == 2
    assert summary["sd_ddof"] == 1

    specificity_a = summary["per_class"]["A"]["specificity"]
    assert specificity_a["mean"] == pytest.approx((1 + 0.75) / 2)
    precision_b = summary["per_class"]["B"]["precision"]
    assert precision_b["mean"] == pytest.approx(2 / 3)
    assert precision_b["sd"] == pytest.approx(0.0)


def test_fold_summary_leaves_undefined_folds_out_and_reports_none():
    summary = fold_summary(two_folds(), CLASSES)
    sensitivity_c = summary["per_class"]["C"]["sensitivity"]
    assert sensitivity_c["per_fold"] == [None, 0.5]
    assert sensitivity_c["mean"] == 0.5
    assert sensitivity_c["sd"] is None  # one defined fold: no sample sd
    assert sensitivity_c["folds_used"] == 1
    precision_c = summary["per_class"]["C"]["precision"]
    assert precision_c["per_fold"] == [None, 1.0]
    assert precision_c["folds_used"] == 1


def test_fold_summary_counts_images_and_sums_confusion_matrices():
    folds = two_folds()
    summary = fold_summary(folds, CLASSES)
    assert {code: summary["per_class"][code]["images"] for code in CLASSES} == {
        "A": 6,
        "B": 4,
        "C": 2,
    }
    assert summary["images"] == 12
    # Fold 0 [[3,1,0],[0,2,0],[0,0,0]] + fold 1 [[1,1,0],[0,2,0],[1,0,1]]
    assert summary["confusion"]["matrix"] == [[4, 2, 0], [0, 4, 0], [1, 0, 1]]
    assert summary["confusion"]["labels"] == CLASSES
    per_fold_matrices = [
        confusion_matrix(y_true, y_pred, labels=[0, 1, 2]) for _, y_true, y_pred in TWO_FOLDS
    ]
    assert summary["confusion"]["matrix"] == sum(per_fold_matrices).tolist()
    # Rows are true classes: one true C was predicted A, no true A was predicted C.
    assert summary["confusion"]["matrix"][2][0] == 1
    assert summary["confusion"]["matrix"][0][2] == 0


def test_fold_summary_is_json_ready():
    summary = fold_summary(two_folds(), CLASSES)
    assert_plain_json(summary)
    assert summary["folds"] == ["0", "1"]


# --- group_probability and group_roc -------------------------------------------------------

# Classes MYB, PMB (the group) and LYT. P(group) = P(MYB) + P(PMB).
GROUP_CLASSES = ["MYB", "PMB", "LYT"]
GROUP = {"MYB", "PMB"}
# Three group cells with P(group) 0.9, 0.7, 0.4 and three others with 0.5, 0.2, 0.1.
SWAPPED_PAIR_Y = np.array([0, 1, 0, 2, 2, 2])
SWAPPED_PAIR_PROBABILITIES = np.array(
    [
        [0.5, 0.4, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.3, 0.6],
        [0.3, 0.2, 0.5],
        [0.1, 0.1, 0.8],
        [0.05, 0.05, 0.9],
    ]
)


def swapped_pair_fold(name="0"):
    return FoldPredictions(name, SWAPPED_PAIR_Y, SWAPPED_PAIR_PROBABILITIES)


def perfect_fold(name="1"):
    y_true = np.array([0, 1, 2, 2])
    probabilities = np.array([[0.6, 0.3, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.1, 0.0, 0.9]])
    return FoldPredictions(name, y_true, probabilities)


def no_group_fold(name="2"):
    return FoldPredictions(name, np.array([2, 2]), np.array([[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]))


def test_group_probability_sums_member_columns():
    scores = group_probability(SWAPPED_PAIR_PROBABILITIES, [0, 1])
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.4, 0.5, 0.2, 0.1])
    np.testing.assert_allclose(group_probability(SWAPPED_PAIR_PROBABILITIES, [2]), 1 - scores)


def test_group_auc_with_one_swapped_pair_matches_mann_whitney_and_scikit_learn():
    # Mann-Whitney: of the 3 x 3 (group, other) pairs, only (0.4, 0.5) is ordered wrongly.
    expected = 8 / 9
    result = group_roc([swapped_pair_fold()], GROUP_CLASSES, GROUP)
    fold = result["folds"][0]
    assert fold["auc"] == pytest.approx(expected)
    assert fold["positives"] == 3
    assert fold["negatives"] == 3
    scores = SWAPPED_PAIR_PROBABILITIES[:, :2].sum(axis=1)
    assert fold["auc"] == pytest.approx(roc_auc_score(SWAPPED_PAIR_Y < 2, scores))
    assert fold["thresholds"][0] is None  # scikit-learn's leading infinite threshold
    # The first member column alone ranks differently: the sum, not one column, is scored.
    assert roc_auc_score(SWAPPED_PAIR_Y < 2, SWAPPED_PAIR_PROBABILITIES[:, 0]) != pytest.approx(
        expected
    )


def test_group_auc_mean_and_sd_over_folds_skip_folds_without_both_outcomes():
    folds = [swapped_pair_fold("0"), perfect_fold("1"), no_group_fold("2")]
    result = group_roc(folds, GROUP_CLASSES, GROUP)
    assert result["folds"][1]["auc"] == 1.0
    assert result["folds"][2]["auc"] is None
    assert result["folds"][2]["positives"] == 0
    auc = result["auc"]
    assert auc["folds_used"] == 2
    assert auc["folds_skipped"] == 1
    assert auc["skipped"] == ["2"]
    assert auc["mean"] == pytest.approx((1 + 8 / 9) / 2)
    assert auc["sd"] == pytest.approx((1 - 8 / 9) / math.sqrt(2))
    assert result["members"] == ["MYB", "PMB"]


def test_mean_roc_curve_follows_each_fold_polyline_on_a_101_point_grid():
    # Swapped-pair fold ROC: up to tpr 2/3 at fpr 0, flat to fpr 1/3, up to 1, flat to 1.
    swapped = group_roc([swapped_pair_fold()], GROUP_CLASSES, GROUP)["mean_curve"]
    assert len(swapped["fpr"]) == 101
    assert swapped["fpr"][0] == 0.0
    assert swapped["fpr"][-1] == 1.0
    tpr = np.array(swapped["tpr"])
    np.testing.assert_allclose(tpr[:34], 2 / 3)  # fpr 0.00 .. 0.33
    np.testing.assert_allclose(tpr[34:], 1.0)  # fpr 0.34 .. 1.00
    assert swapped["tpr_sd"] is None  # one fold: no sample sd

    both = group_roc([swapped_pair_fold("0"), perfect_fold("1")], GROUP_CLASSES, GROUP)
    mean_tpr = np.array(both["mean_curve"]["tpr"])
    np.testing.assert_allclose(mean_tpr[:34], (2 / 3 + 1) / 2)
    np.testing.assert_allclose(both["mean_curve"]["tpr_sd"][0], (1 - 2 / 3) / math.sqrt(2))


def test_group_roc_is_json_ready():
    folds = [swapped_pair_fold("0"), perfect_fold("1"), no_group_fold("2")]
    assert_plain_json(group_roc(folds, GROUP_CLASSES, GROUP))
    assert_plain_json(group_roc([no_group_fold()], GROUP_CLASSES, GROUP))


# --- rater_point ---------------------------------------------------------------------------


def test_rater_point_leaves_cannot_classify_out():
    truth = ["MYB", "PMB", "MYB", "LYT", "LYT", "LYT", "MYB", "LYT"]
    rater = ["MYB", "MYB", "LYT", "LYT", "PMB", "LYT", None, None]
    point = rater_point(truth, rater, GROUP)
    # Scored cells: 3 group cells (2 named as a member), 3 others (1 named as a member).
    assert point["excluded_cannot_classify"] == 2
    assert point["n"] == 6
    assert point["sensitivity"] == pytest.approx(2 / 3)
    assert point["specificity"] == pytest.approx(2 / 3)
    assert point["false_positive_rate"] == pytest.approx(1 / 3)
    assert (point["true_positive"], point["false_negative"]) == (2, 1)
    assert (point["true_negative"], point["false_positive"]) == (2, 1)
    assert_plain_json(point)


def test_rater_point_is_none_without_both_outcomes():
    assert rater_point(["LYT", "LYT"], ["MYB", "LYT"], GROUP) is None
    # The only group cell was declined: no positives remain.
    assert rater_point(["MYB", "LYT"], [None, "LYT"], GROUP) is None


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y_true", "probabilities", "message"),
    [
        ([0, 1], [[0.5, 0.5]], "same length"),
        ([0, 1], [0.5, 0.5], "two-dimensional"),
        ([0], [[0.5, 0.4]], "sum to 1"),
        ([0.0], [[0.5, 0.5]], "integer class indices"),
        ([[0]], [[0.5, 0.5]], "one-dimensional"),
        ([0], [[1.5, -0.5]], "non-negative"),
    ],
)
def test_fold_predictions_reject_bad_inputs(y_true, probabilities, message):
    with pytest.raises(ValueError, match=message):
        FoldPredictions("0", np.array(y_true), np.array(probabilities))


def test_row_sum_tolerance_is_1e_4():
    FoldPredictions("0", np.array([0]), np.array([[0.50004, 0.5]]))
    with pytest.raises(ValueError, match="row 0 sums to"):
        FoldPredictions("0", np.array([0]), np.array([[0.5002, 0.5]]))


@pytest.mark.parametrize(
    ("y_true", "y_pred", "n_classes", "message"),
    [
        ([0, 1], [0], 2, "same length"),
        ([0, 2], [0, 1], 2, r"outside 0\.\.1"),
        ([0], [0], 0, "n_classes must be at least 1"),
    ],
)
def test_per_class_metrics_reject_bad_inputs(y_true, y_pred, n_classes, message):
    with pytest.raises(ValueError, match=message):
        per_class_metrics(y_true, y_pred, n_classes)


def test_fold_functions_reject_bad_folds_and_classes():
    with pytest.raises(ValueError, match="empty list"):
        fold_summary([], CLASSES)
    with pytest.raises(ValueError, match="empty list"):
        group_roc([], GROUP_CLASSES, GROUP)
    two_wide = FoldPredictions("0", np.array([0, 1]), np.array([[0.6, 0.4], [0.3, 0.7]]))
    with pytest.raises(ValueError, match="2 columns but there are 3 classes"):
        fold_summary([two_wide], CLASSES)
    with pytest.raises(ValueError, match="2 columns but there are 3 classes"):
        group_roc([two_wide], GROUP_CLASSES, GROUP)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        fold_summary([FoldPredictions("0", np.array([2]), np.array([[0.6, 0.4]]))], ["A", "B"])
    with pytest.raises(ValueError, match="fold names must be distinct"):
        fold_summary([perfect_fold("1"), perfect_fold("1")], GROUP_CLASSES)
    with pytest.raises(ValueError, match="classes contain duplicates"):
        fold_summary([perfect_fold()], ["MYB", "MYB", "LYT"])
    with pytest.raises(ValueError, match="at least one class"):
        fold_summary([perfect_fold()], [])


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"MYB", "EBO"}, "members not in classes: 'EBO'"),
        (set(), "members must name at least one class"),
        ("MYB", "not the single string"),
        ({"MYB", "PMB", "LYT"}, "leave out at least one class"),
    ],
)
def test_group_roc_rejects_bad_members(members, message):
    with pytest.raises(ValueError, match=message):
        group_roc([perfect_fold()], GROUP_CLASSES, members)


@pytest.mark.parametrize(
    ("probabilities", "member_indices", "message"),
    [
        (SWAPPED_PAIR_PROBABILITIES, [3], r"\[3\] are not columns"),
        (SWAPPED_PAIR_PROBABILITIES, [], "non-empty"),
        (SWAPPED_PAIR_PROBABILITIES, [0, 0], "duplicates"),
        (SWAPPED_PAIR_PROBABILITIES, [0.0], "must be integers"),
        (SWAPPED_PAIR_PROBABILITIES[0], [0], "two-dimensional"),
    ],
)
def test_group_probability_rejects_bad_inputs(probabilities, member_indices, message):
    with pytest.raises(ValueError, match=message):
        group_probability(probabilities, member_indices)


def test_rater_point_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        rater_point(["MYB", "LYT"], ["MYB"], GROUP)
    with pytest.raises(
        ValueError, match=r"None \(cannot classify\) is allowed only in rater_codes"
    ):
        rater_point(["MYB", None], ["MYB", "LYT"], GROUP)
    with pytest.raises(ValueError, match="members must name at least one class"):
        rater_point(["MYB", "LYT"], ["MYB", "LYT"], set())
    with pytest.raises(ValueError, match="members not in classes: 'EBO'"):
        rater_point(["MYB", "LYT"], ["MYB", "LYT"], {"EBO"}, classes=GROUP_CLASSES)
    with pytest.raises(ValueError, match="codes not in classes: 'XYZ'"):
        rater_point(["MYB", "LYT"], ["XYZ", "LYT"], GROUP, classes=GROUP_CLASSES)
