"""Statistics of rater agreement (annotator.agreement): kappa against scikit-learn and published
worked examples, its standard error against the Fleiss, Cohen & Everitt (1969) formula, the
confusion matrix and derived rates, cannot-classify exclusion, validation, the cluster
bootstrap and the JSON form. No database."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import cohens_kappa

from annotator.agreement import CANNOT_CLASSIFY, compare_answers

# Cohen (1960), Educational and Psychological Measurement 20:37-46, Table 1: judge A in rows,
# judge B in columns, 200 items.
COHEN_1960_LABELS = ["c1", "c2", "c3"]
COHEN_1960_TABLE = [[88, 14, 18], [10, 40, 10], [2, 6, 12]]


def answers_from_table(table, labels):
    """Two answer lists whose confusion matrix (first list in rows) is `table`."""
    reference, rater = [], []
    for row_code, row in zip(labels, table, strict=True):
        for column_code, count in zip(labels, row, strict=True):
            reference += [row_code] * count
            rater += [column_code] * count
    return reference, rater


def random_answers(seed, class_count, pairs, agreement=0.6, cannot_classify=0.05):
    """A rater who copies the reference with probability `agreement`, else guesses; some answers
    on either side are replaced by cannot classify."""
    rng = np.random.default_rng(seed)
    codes = [f"K{i:02d}" for i in range(class_count)]
    reference = [codes[i] for i in rng.integers(0, class_count, pairs)]
    rater = [
        code if rng.random() < agreement else codes[rng.integers(0, class_count)]
        for code in reference
    ]
    reference = [CANNOT_CLASSIFY if rng.random() < cannot_classify else c for c in reference]
    rater = [CANNOT_CLASSIFY if rng.random() < cannot_classify else c for c in rater]
    return reference, rater


def clustered_answers(seed, clusters=100, per_cluster=20, agreement=0.8, class_count=6):
    """Pairs grouped by patient, each patient with its own class mix."""
    rng = np.random.default_rng(seed)
    codes = [f"K{i}" for i in range(class_count)]
    reference, rater, patients = [], [], []
    for patient in range(clusters):
        mix = rng.dirichlet(np.ones(class_count))
        for _ in range(per_cluster):
            code = codes[rng.choice(class_count, p=mix)]
            reference.append(code)
            rater.append(code if rng.random() < agreement else codes[rng.integers(class_count)])
            patients.append(f"patient-{patient}")
    return reference, rater, patients


def fleiss_cohen_everitt_variance(table):
    """Large-sample variance of kappa, Fleiss, Cohen & Everitt (1969), written out term by term."""
    counts = np.asarray(table, dtype=float)
    n = counts.sum()
    p = counts / n
    row = p.sum(axis=1)
    column = p.sum(axis=0)
    size = len(p)
    po = sum(p[i, i] for i in range(size))
    pe = sum(row[i] * column[i] for i in range(size))
    diagonal = sum(p[i, i] * ((1 - pe) - (row[i] + column[i]) * (1 - po)) ** 2 for i in range(size))
    off_diagonal = (1 - po) ** 2 * sum(
        p[i, j] * (column[i] + row[j]) ** 2 for i in range(size) for j in range(size) if i != j
    )
    correction = (po * pe - 2 * pe + po) ** 2
    return (diagonal + off_diagonal - correction) / (n * (1 - pe) ** 4)


@pytest.mark.parametrize(
    ("seed", "class_count"), [(1, 2), (2, 3), (3, 5), (4, 8), (5, 15), (6, 15)]
)
def test_kappa_equals_scikit_learn_on_compared_pairs(seed, class_count):
    reference, rater = random_answers(seed, class_count, pairs=400)
    compared = [
        (a, b)
        for a, b in zip(reference, rater, strict=True)
        if a is not CANNOT_CLASSIFY and b is not CANNOT_CLASSIFY
    ]
    expected = cohen_kappa_score([a for a, _ in compared], [b for _, b in compared])

    result = compare_answers(reference, rater)

    assert result.n == len(compared) < len(reference)
    assert result.kappa == pytest.approx(expected, abs=1e-12)


def test_cohen_1960_worked_example():
    reference, rater = answers_from_table(COHEN_1960_TABLE, COHEN_1960_LABELS)

    result = compare_answers(reference, rater, labels=COHEN_1960_LABELS)

    assert result.n == 200
    assert result.matrix == COHEN_1960_TABLE
    assert result.observed_agreement == 0.70
    assert round(result.kappa, 3) == round(0.29 / 0.59, 3) == 0.492
    assert result.kappa == pytest.approx((0.70 - 0.41) / (1 - 0.41), abs=1e-12)


def test_two_by_two_textbook_example():
    reference = ["yes"] * 25 + ["no"] * 25
    rater = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15

    result = compare_answers(reference, rater, labels=["yes", "no"])

    assert result.matrix == [[20, 5], [10, 15]]
    assert result.observed_agreement == pytest.approx(0.70)
    assert result.kappa == pytest.approx(0.40)


def test_standard_error_matches_fleiss_cohen_everitt_formula():
    reference, rater = answers_from_table(COHEN_1960_TABLE, COHEN_1960_LABELS)

    result = compare_answers(reference, rater, labels=COHEN_1960_LABELS)

    expected_se = math.sqrt(fleiss_cohen_everitt_variance(COHEN_1960_TABLE))
    assert result.kappa_se == pytest.approx(expected_se, rel=1e-10)
    low, high = result.kappa_ci
    assert low == pytest.approx(result.kappa - 1.959964 * expected_se, abs=1e-6)
    assert high == pytest.approx(result.kappa + 1.959964 * expected_se, abs=1e-6)
    statsmodels_result = cohens_kappa(COHEN_1960_TABLE)
    assert low == pytest.approx(statsmodels_result.kappa_low, abs=1e-12)
    assert high == pytest.approx(statsmodels_result.kappa_upp, abs=1e-12)


def test_interval_widens_with_confidence():
    reference, rater = answers_from_table(COHEN_1960_TABLE, COHEN_1960_LABELS)

    narrow = compare_answers(reference, rater, confidence=0.90)
    wide = compare_answers(reference, rater, confidence=0.99)

    assert narrow.kappa_se == wide.kappa_se
    assert wide.kappa_ci[1] - wide.kappa_ci[0] == pytest.approx(
        2 * 2.575829 * wide.kappa_se, abs=1e-6
    )
    assert narrow.kappa_ci[1] - narrow.kappa_ci[0] == pytest.approx(
        2 * 1.644854 * narrow.kappa_se, abs=1e-6
    )


def test_classes_nobody_used_change_nothing_but_the_matrix_shape():
    reference, rater = answers_from_table(COHEN_1960_TABLE, COHEN_1960_LABELS)

    plain = compare_answers(reference, rater, labels=COHEN_1960_LABELS)
    padded = compare_answers(reference, rater, labels=["c0", *COHEN_1960_LABELS, "c9"])

    assert padded.kappa == pytest.approx(plain.kappa, abs=1e-12)
    assert padded.kappa_se == pytest.approx(plain.kappa_se, abs=1e-12)
    assert padded.matrix[0] == [0] * 5
    assert [row[-1] for row in padded.matrix] == [0] * 5
    assert padded.per_class["c0"].sensitivity is None
    assert padded.per_class["c0"].precision is None


def test_cannot_classify_pairs_are_excluded_and_counted_by_side():
    reference = ["A", "A", None, "B", None, "B", None, "A"]
    rater = ["A", None, "B", "B", None, None, "A", "B"]

    result = compare_answers(reference, rater, labels=["A", "B"])

    assert result.n == 3
    assert result.excluded_cannot_classify == 5
    assert result.excluded_reference_only == 2
    assert result.excluded_rater_only == 2
    assert result.excluded_both == 1
    assert result.matrix == [[1, 1], [0, 1]]
    assert result.observed_agreement == pytest.approx(2 / 3)


def test_default_labels_are_the_sorted_classes_seen_on_either_side():
    result = compare_answers(["MON", "LYT", None], ["MON", "NGS", "EOS"])

    assert result.labels == ["EOS", "LYT", "MON", "NGS"]
    assert result.matrix == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_matrix_has_reference_rows_and_rater_columns_and_per_class_rates():
    reference = ["A", "A", "A", "A", "B", "B", "C"]
    rater = ["A", "A", "A", "B", "B", "C", "C"]

    result = compare_answers(reference, rater, labels=["A", "B", "C"])

    assert result.matrix == [[3, 1, 0], [0, 1, 1], [0, 0, 1]]
    a, b, c = (result.per_class[code] for code in "ABC")
    assert (a.reference_count, a.rater_count, a.agreed) == (4, 3, 3)
    assert a.sensitivity == pytest.approx(3 / 4)
    assert a.precision == pytest.approx(1.0)
    assert (b.reference_count, b.rater_count, b.agreed) == (2, 2, 1)
    assert b.sensitivity == pytest.approx(1 / 2)
    assert b.precision == pytest.approx(1 / 2)
    assert (c.reference_count, c.rater_count, c.agreed) == (1, 2, 1)
    assert c.sensitivity == pytest.approx(1.0)
    assert c.precision == pytest.approx(1 / 2)


def test_group_sensitivity_and_specificity():
    reference = ["MYO", "MOB", "MYO", "MOB", "LYT", "LYT", "NGS", "NGS", "MON", None]
    rater = ["MOB", "MYO", "LYT", "MOB", "LYT", "MYO", "NGS", "NGS", "NGS", "MYO"]
    labels = ["LYT", "MOB", "MON", "MYO", "NGS"]

    result = compare_answers(reference, rater, labels=labels, groups={"blast": {"MYO", "MOB"}})

    blast = result.groups["blast"]
    assert (blast.true_positive, blast.false_negative) == (3, 1)
    assert (blast.true_negative, blast.false_positive) == (4, 1)
    assert blast.sensitivity == pytest.approx(3 / 4)
    assert blast.specificity == pytest.approx(4 / 5)


def test_group_without_reference_positives_has_no_sensitivity():
    result = compare_answers(["A", "B"], ["A", "C"], labels=["A", "B", "C"], groups={"c": ["C"]})

    group = result.groups["c"]
    assert group.sensitivity is None
    assert group.specificity == pytest.approx(1 / 2)


def test_empty_input_is_undefined_not_an_error():
    result = compare_answers([], [], labels=["A", "B"])

    assert result.n == 0
    assert result.kappa is None
    assert result.kappa_se is None
    assert result.kappa_ci is None
    assert result.observed_agreement is None
    assert result.matrix == [[0, 0], [0, 0]]


def test_all_pairs_excluded_is_undefined_not_an_error():
    result = compare_answers([None, "A", None], ["B", None, None], labels=["A", "B"])

    assert result.n == 0
    assert result.excluded_cannot_classify == 3
    assert result.kappa is None
    assert result.observed_agreement is None
    assert result.matrix == [[0, 0], [0, 0]]


def test_one_shared_class_gives_no_kappa():
    result = compare_answers(["NGS"] * 10, ["NGS"] * 10, labels=["LYT", "NGS"])

    assert result.n == 10
    assert result.observed_agreement == 1.0
    assert result.kappa is None
    assert result.kappa_se is None
    assert result.kappa_ci is None


def test_perfect_agreement_has_zero_standard_error():
    result = compare_answers(["A", "B", "A", "C"], ["A", "B", "A", "C"])

    assert result.kappa == pytest.approx(1.0)
    assert result.kappa_se == pytest.approx(0.0, abs=1e-12)
    assert result.kappa_ci == pytest.approx((1.0, 1.0), abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reference": ["A", "B"], "rater": ["A"]}, "same length, got 2 reference and 1 rater"),
        (
            {"reference": ["A", "A", "A"], "labels": ["A"]},
            "rater answer 'B' at position 1 is not in",
        ),
        (
            {"reference": ["A", "A", "X"], "labels": ["A", "B"]},
            "reference answer 'X' at position 2",
        ),
        ({"labels": ["A", "B", "A"]}, "labels contain duplicates: 'A'"),
        ({"labels": ["A", None, "B"]}, "labels must not contain None"),
        ({"confidence": 1.0}, "confidence must lie strictly between 0 and 1, got 1.0"),
        ({"confidence": 0}, "confidence must lie strictly between 0 and 1, got 0"),
        ({"bootstrap": -1}, "bootstrap must be zero or a positive number of replicates, got -1"),
        ({"bootstrap": 10}, "bootstrap needs clusters"),
        ({"clusters": ["p1"]}, "got 1 clusters for 3 pairs"),
        ({"groups": {"blast": ["A", "MYO"]}}, "group 'blast' names codes not in labels: 'MYO'"),
        ({"groups": {"blast": "A"}}, "group 'blast' must be a collection of class codes"),
    ],
)
def test_invalid_input_raises_value_error_naming_the_problem(kwargs, message):
    arguments = {"reference": ["A", "A", "B"], "rater": ["A", "B", "B"], **kwargs}
    reference = arguments.pop("reference")
    rater = arguments.pop("rater")

    with pytest.raises(ValueError, match=message):
        compare_answers(reference, rater, **arguments)


def test_bootstrap_is_reproducible_and_depends_on_the_seed():
    reference, rater, patients = clustered_answers(seed=11)

    first = compare_answers(reference, rater, clusters=patients, bootstrap=500, seed=7)
    again = compare_answers(reference, rater, clusters=patients, bootstrap=500, seed=7)
    other = compare_answers(reference, rater, clusters=patients, bootstrap=500, seed=8)

    assert first.bootstrap == again.bootstrap
    assert (first.bootstrap.low, first.bootstrap.high) != (
        other.bootstrap.low,
        other.bootstrap.high,
    )
    assert other.bootstrap.seed == 8


def test_bootstrap_interval_covers_kappa_on_a_realistic_example():
    reference, rater, patients = clustered_answers(seed=12, clusters=100, per_cluster=20)
    rater[:30] = [CANNOT_CLASSIFY] * 30

    result = compare_answers(reference, rater, clusters=patients, bootstrap=1000, seed=1)

    interval = result.bootstrap
    assert interval.replicates == 1000
    assert 0 < interval.valid_replicates <= interval.replicates
    assert interval.clusters == 99  # patient-0's 20 pairs were all excluded
    assert interval.confidence == 0.95
    assert interval.low < result.kappa < interval.high
    assert 0.6 < result.kappa < 0.85
    assert interval.high - interval.low < 0.15


def test_bootstrap_of_a_single_cluster_reproduces_the_point_kappa():
    reference, rater = answers_from_table(COHEN_1960_TABLE, COHEN_1960_LABELS)

    result = compare_answers(
        reference, rater, clusters=["only"] * len(reference), bootstrap=20, seed=3
    )

    assert result.bootstrap.clusters == 1
    assert result.bootstrap.valid_replicates == 20
    assert result.bootstrap.low == pytest.approx(result.kappa, abs=1e-12)
    assert result.bootstrap.high == pytest.approx(result.kappa, abs=1e-12)


def test_bootstrap_drops_replicates_with_undefined_kappa():
    reference = ["A"] * 5 + ["A", "B", "B", "A"]
    rater = ["A"] * 5 + ["B", "B", "A", "A"]
    patients = ["uniform"] * 5 + ["mixed"] * 4

    result = compare_answers(reference, rater, clusters=patients, bootstrap=200, seed=0)

    interval = result.bootstrap
    assert interval.clusters == 2
    # About a quarter of replicates draw "uniform" twice: both raters all "A", no kappa.
    assert 0 < interval.valid_replicates < interval.replicates == 200
    assert interval.low is not None and interval.high is not None


def test_bootstrap_with_no_compared_pairs_has_no_interval():
    result = compare_answers([None, "A"], ["A", None], clusters=["p1", "p2"], bootstrap=50)

    assert result.bootstrap.clusters == 0
    assert result.bootstrap.valid_replicates == 0
    assert result.bootstrap.low is None
    assert result.bootstrap.high is None


def test_to_dict_is_plain_json():
    reference, rater, patients = clustered_answers(seed=13, clusters=10, per_cluster=10)
    reference[0] = CANNOT_CLASSIFY

    result = compare_answers(
        reference,
        rater,
        labels=[f"K{i}" for i in range(7)],
        groups={"low": ["K0", "K1"], "unused": ["K6"]},
        clusters=patients,
        bootstrap=100,
    )
    data = result.to_dict()
    text = json.dumps(data, allow_nan=False)

    assert json.loads(text) == data
    assert set(data) == {
        "n",
        "excluded_cannot_classify",
        "excluded",
        "kappa",
        "kappa_se",
        "kappa_ci",
        "observed_agreement",
        "confidence",
        "confusion",
        "per_class",
        "groups",
        "bootstrap",
    }
    assert data["excluded"] == {"reference_only": 1, "rater_only": 0, "both": 0}
    assert isinstance(data["kappa_ci"], list) and len(data["kappa_ci"]) == 2
    assert data["confusion"]["labels"] == [f"K{i}" for i in range(7)]
    assert len(data["confusion"]["matrix"]) == 7
    assert set(data["per_class"]["K0"]) == {
        "reference_count",
        "rater_count",
        "agreed",
        "sensitivity",
        "precision",
    }
    assert data["per_class"]["K6"]["sensitivity"] is None
    assert set(data["groups"]["low"]) == {
        "sensitivity",
        "specificity",
        "true_positive",
        "false_negative",
        "true_negative",
        "false_positive",
    }
    assert data["groups"]["unused"]["sensitivity"] is None
    assert set(data["bootstrap"]) == {
        "low",
        "high",
        "replicates",
        "valid_replicates",
        "clusters",
        "seed",
        "confidence",
    }


def test_to_dict_of_undefined_result_is_json_without_nan():
    data = compare_answers([], []).to_dict()

    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["kappa"] is None
    assert data["kappa_ci"] is None
    assert data["bootstrap"] is None
