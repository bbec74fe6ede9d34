"""Panel agreement (annotator.panel_agreement) against published worked examples and against
the libraries it wraps; what is left out (not rated, cannot classify) and when Fleiss' kappa is
undefined; the bootstrap interval over items and over patients."""

from __future__ import annotations

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from annotator.panel_agreement import CANNOT_CLASSIFY, panel_agreement

# Fleiss' kappa, worked example of the Wikipedia article "Fleiss' kappa" (10 subjects, 14
# raters, 5 categories): P-bar 0.378, P-bar-e 0.213, kappa 0.210.
FLEISS_COUNTS = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: 4 observers,
# 12 units, nominal data with missing values: alpha = 0.743.
KRIPPENDORFF_2011 = [
    ["1", "2", "3", "3", "2", "1", "4", "1", "2", None, None, None],
    ["1", "2", "3", "3", "2", "2", "4", "1", "2", "5", None, "3"],
    [None, "3", "3", "3", "2", "3", "4", "2", "2", "5", "1", None],
    ["1", "2", "3", "3", "2", "4", "4", "1", "2", "5", "1", None],
]


def _rows_from_counts(counts) -> list[list[str]]:
    """Per subject, the raters' labels in a fixed order (Fleiss' kappa does not depend on it)."""
    return [
        [code for code, many in zip("ABCDE", row, strict=True) for _ in range(many)]
        for row in counts
    ]


def test_fleiss_kappa_reproduces_the_worked_example():
    result = panel_agreement(_rows_from_counts(FLEISS_COUNTS), [f"r{i}" for i in range(14)])
    assert result.fleiss_kappa == pytest.approx(0.210, abs=0.0005)
    assert result.fleiss_kappa_reason is None
    low, high = result.fleiss_kappa_ci
    assert low < result.fleiss_kappa < high
    assert high - low == pytest.approx(2 * 1.959964 * result.fleiss_kappa_se)


def test_krippendorff_alpha_reproduces_krippendorff_2011():
    items = [list(unit) for unit in zip(*KRIPPENDORFF_2011, strict=True)]
    result = panel_agreement(items, ["A", "B", "C", "D"])
    assert result.krippendorff_alpha == pytest.approx(0.743, abs=0.0005)
    # Unequal ratings per unit: no Fleiss' kappa, and the report says why.
    assert result.fleiss_kappa is None
    assert "unequal numbers of ratings" in result.fleiss_kappa_reason
    assert result.ratings == 41


def test_the_bootstrap_of_alpha_is_the_librarys_alpha_on_each_resample():
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 4, size=120)
    table = [
        [str(t if rng.random() < 0.7 else rng.integers(0, 4)) for _ in range(5)] for t in truth
    ]
    result = panel_agreement(table, list("abcde"), replicates=200, seed=3)
    data = np.array([[float(x) for x in row] for row in table]).T
    assert result.krippendorff_alpha == pytest.approx(
        krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    )
    # The same resamples drawn by hand, each given to the library.
    from annotator.agreement import bootstrap_draws

    drawn = bootstrap_draws(len(table), 200, 3)
    by_library = [
        krippendorff.alpha(
            reliability_data=np.repeat(data, counts, axis=1), level_of_measurement="nominal"
        )
        for counts in drawn
    ]
    low, high = result.krippendorff_alpha_ci
    assert low < result.krippendorff_alpha < high
    assert (low, high) == pytest.approx(tuple(np.quantile(by_library, [0.025, 0.975])))


def test_fleiss_standard_error_matches_the_spread_of_kappa_at_chance():
    rng = np.random.default_rng(11)
    kappas, errors = [], []
    for _ in range(300):
        table = [[str(rng.choice(3, p=[0.5, 0.3, 0.2])) for _ in range(4)] for _ in range(80)]
        result = panel_agreement(table, list("abcd"), replicates=10)
        kappas.append(result.fleiss_kappa)
        errors.append(result.fleiss_kappa_se)
    assert np.std(kappas) == pytest.approx(np.mean(errors), rel=0.15)


def test_pairwise_kappa_is_cohens_kappa_of_each_pair_on_the_items_both_rated():
    table = [
        ["A", "A", "B"],
        ["B", "B", "B"],
        ["A", None, "A"],
        ["C", "C", CANNOT_CLASSIFY],
        ["B", "A", "B"],
        ["C", "C", "C"],
    ]
    result = panel_agreement(table, ["x", "y", "z"], replicates=50)
    for first, second in [(0, 1), (0, 2), (1, 2)]:
        rows = [
            r for r in table if r[first] not in (None, "UNC") and r[second] not in (None, "UNC")
        ]
        expected = cohen_kappa_score([r[first] for r in rows], [r[second] for r in rows])
        names = ["x", "y", "z"]
        assert result.pairwise[names[first]][names[second]] == pytest.approx(expected)
        assert result.pairwise[names[second]][names[first]] == pytest.approx(expected)
    assert result.pairwise["x"]["x"] == 1.0
    assert result.declined == 1
    assert result.ratings == 16


def test_specific_agreement_names_the_class_the_panel_disagrees_on():
    table = [["A", "A", "A"]] * 10 + [["B", "C", "B"], ["C", "B", "C"], ["B", "B", "C"]] * 3
    result = panel_agreement(table, ["x", "y", "z"], replicates=50)
    assert result.per_class["A"]["specific_agreement"] == 1.0
    assert result.per_class["B"]["specific_agreement"] < 0.5
    assert result.per_class["A"]["ratings"] == 30


def test_patients_are_resampled_whole():
    rng = np.random.default_rng(2)
    table, patients = [], []
    for patient in range(30):
        agree = rng.random() < 0.5
        for _ in range(20):
            label = str(rng.integers(0, 3))
            table.append([label] * 3 if agree else [str(rng.integers(0, 3)) for _ in range(3)])
            patients.append(f"P{patient}")
    by_item = panel_agreement(table, list("abc"), replicates=400, seed=1)
    by_patient = panel_agreement(table, list("abc"), clusters=patients, replicates=400, seed=1)
    assert by_patient.bootstrap["clusters"] == 30 and by_patient.bootstrap["over"] == "clusters"
    width = lambda r: r.krippendorff_alpha_ci[1] - r.krippendorff_alpha_ci[0]  # noqa: E731
    # Items of one patient agree or not together: the honest interval is wider.
    assert width(by_patient) > 1.5 * width(by_item)


def test_a_ragged_table_is_refused_with_the_item_named():
    with pytest.raises(ValueError, match="Item 2 has 1 ratings for 2 raters"):
        panel_agreement([["A", "B"], ["A"]], ["x", "y"])
