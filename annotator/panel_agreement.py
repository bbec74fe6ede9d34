"""Agreement among a panel of raters on the same items (issue 15): Fleiss' kappa with its
asymptotic standard error, Krippendorff's alpha (nominal, missing ratings allowed) with a
bootstrap interval over items or patients, the pairwise Cohen's kappa matrix, and per-class
agreement.

Ratings are an items x raters table of class codes; ``None`` is "not rated" and
``CANNOT_CLASSIFY`` ("UNC") is "declined to classify": both are left out of every statistic, and
the declined ones are counted so a report can say what was left out.

The libraries do the statistics: statsmodels' `fleiss_kappa` and `cohens_kappa`, the
`krippendorff` package's alpha. Written here: Fleiss' asymptotic standard error (Fleiss, Nee &
Landis 1979; statsmodels gives none), the proportion of specific agreement per class, and the
bootstrap of alpha, which resamples per-item sums (no library bootstraps alpha, and calling the
library once per replicate would take minutes on a study's panel).

Plain Python values in, plain Python values out; no Django.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import krippendorff
import numpy as np
from scipy.stats import norm
from statsmodels.stats.inter_rater import cohens_kappa, fleiss_kappa

from .agreement import bootstrap_draws

CANNOT_CLASSIFY = "UNC"


@dataclass(frozen=True)
class PanelAgreement:
    raters: list[str]
    items: int
    ratings: int
    declined: int
    categories: list[str]
    fleiss_kappa: float | None
    fleiss_kappa_reason: str | None
    fleiss_kappa_se: float | None
    fleiss_kappa_ci: tuple[float, float] | None
    krippendorff_alpha: float | None
    krippendorff_alpha_ci: tuple[float, float] | None
    bootstrap: dict
    pairwise: dict[str, dict[str, float | None]]
    per_class: dict[str, dict[str, float | int | None]]

    def to_dict(self) -> dict:
        return {
            "raters": self.raters,
            "items": self.items,
            "ratings": self.ratings,
            "declined": self.declined,
            "categories": self.categories,
            "fleiss_kappa": self.fleiss_kappa,
            "fleiss_kappa_reason": self.fleiss_kappa_reason,
            "fleiss_kappa_se": self.fleiss_kappa_se,
            "fleiss_kappa_ci": list(self.fleiss_kappa_ci) if self.fleiss_kappa_ci else None,
            "krippendorff_alpha": self.krippendorff_alpha,
            "krippendorff_alpha_ci": (
                list(self.krippendorff_alpha_ci) if self.krippendorff_alpha_ci else None
            ),
            "bootstrap": self.bootstrap,
            "pairwise": self.pairwise,
            "per_class": self.per_class,
        }


def _codes(
    ratings: Sequence[Sequence[str | None]], raters: int
) -> tuple[np.ndarray, list[str], int]:
    """The table as integer codes (-1 where not rated or declined), the categories, and how
    many ratings were declined."""
    categories = sorted(
        {label for row in ratings for label in row if label not in (None, CANNOT_CLASSIFY)}
    )
    index = {label: position for position, label in enumerate(categories)}
    codes = np.full((len(ratings), raters), -1, dtype=np.int64)
    declined = 0
    for item, row in enumerate(ratings):
        if len(row) != raters:
            raise ValueError(f"Item {item + 1} has {len(row)} ratings for {raters} raters.")
        for rater, label in enumerate(row):
            if label == CANNOT_CLASSIFY:
                declined += 1
            elif label is not None:
                codes[item, rater] = index[label]
    return codes, categories, declined


def _counts(codes: np.ndarray, categories: int) -> np.ndarray:
    """Items x categories: how many raters gave each item each class."""
    items = np.repeat(np.arange(codes.shape[0]), codes.shape[1])
    flat = codes.ravel()
    rated = flat >= 0
    table = np.zeros((codes.shape[0], categories), dtype=np.int64)
    np.add.at(table, (items[rated], flat[rated]), 1)
    return table


def _fleiss(counts: np.ndarray, confidence: float):
    """Fleiss' kappa, its standard error and interval; a reason instead where undefined."""
    per_item = counts.sum(axis=1)
    if counts.shape[0] == 0 or counts.shape[1] < 2:
        return None, "Fewer than two classes or no item was rated.", None, None
    if per_item.min() != per_item.max():
        return (
            None,
            "Items have unequal numbers of ratings (missing or declined ones); Fleiss' kappa "
            "needs the same number for every item: see Krippendorff's alpha.",
            None,
            None,
        )
    n = int(per_item[0])
    if n < 2:
        return None, "Each item has fewer than two ratings.", None, None
    shares = counts.sum(axis=0) / counts.sum()
    spread = shares * (1 - shares)
    if spread.sum() == 0:
        return None, "Every rating is the same class: chance agreement is complete.", None, None
    kappa = float(fleiss_kappa(counts, method="fleiss"))
    # Fleiss, Nee & Landis (1979): the large-sample variance of kappa when agreement is at
    # chance, the standard error Fleiss' kappa is reported with.
    items = counts.shape[0]
    variance = (
        2
        / (items * n * (n - 1))
        * (spread.sum() ** 2 - np.sum(spread * (1 - 2 * shares)))
        / spread.sum() ** 2
    )
    se = float(np.sqrt(variance))
    z = norm.ppf(0.5 + confidence / 2)
    return kappa, None, se, (kappa - z * se, kappa + z * se)


def _alpha_sums(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item, what nominal alpha sums: the agreeing coincidences and the class values, for
    the items with at least two ratings (the others cannot be paired)."""
    per_item = counts.sum(axis=1)
    pairable = per_item >= 2
    counts, per_item = counts[pairable], per_item[pairable]
    agreeing = (counts * (counts - 1)).sum(axis=1) / (per_item - 1)
    return agreeing, counts


def _alpha_from_sums(agreeing: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Nominal alpha = 1 - (n - 1)(n - sum_c o_cc) / (n^2 - sum_c n_c^2) (Krippendorff 2011),
    for each row of replicate sums (agreeing: replicates, values: replicates x classes)."""
    n = values.sum(axis=1).astype(float)
    expected = n * n - (values.astype(float) ** 2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1 - (n - 1) * (n - agreeing) / expected


def panel_agreement(
    ratings: Sequence[Sequence[str | None]],
    raters: Sequence[str],
    *,
    clusters: Sequence[Hashable] | None = None,
    replicates: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PanelAgreement:
    """Agreement of `raters` over the items of `ratings` (one row per item, one column per
    rater). `clusters` (e.g. the patient of each item) makes the bootstrap resample whole
    clusters, since items of one patient are not independent."""
    codes, categories, declined = _codes(ratings, len(raters))
    counts = _counts(codes, len(categories))
    kappa, reason, se, kappa_ci = _fleiss(counts, confidence)

    alpha = alpha_ci = None
    agreeing, values = _alpha_sums(counts)
    if values.size and len(categories) >= 2:
        data = np.where(codes >= 0, codes, np.nan).T
        alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    pairable = counts.sum(axis=1) >= 2
    cluster_ids = (
        np.unique(np.asarray(clusters, dtype=object)[pairable].astype(str), return_inverse=True)[1]
        if clusters is not None
        else np.arange(int(pairable.sum()))
    )
    cluster_count = int(cluster_ids.max()) + 1 if cluster_ids.size else 0
    valid = 0
    if alpha is not None and cluster_count:
        agreeing_per = np.bincount(cluster_ids, weights=agreeing, minlength=cluster_count)
        values_per = np.zeros((cluster_count, values.shape[1]))
        np.add.at(values_per, cluster_ids, values)
        drawn = bootstrap_draws(cluster_count, replicates, seed)
        alphas = _alpha_from_sums(drawn @ agreeing_per, drawn @ values_per)
        alphas = alphas[np.isfinite(alphas)]
        valid = int(alphas.size)
        if valid:
            tail = (1 - confidence) / 2
            low, high = np.quantile(alphas, [tail, 1 - tail])
            alpha_ci = (float(low), float(high))

    return PanelAgreement(
        raters=list(raters),
        items=len(ratings),
        ratings=int((codes >= 0).sum()),
        declined=declined,
        categories=categories,
        fleiss_kappa=kappa,
        fleiss_kappa_reason=reason,
        fleiss_kappa_se=se,
        fleiss_kappa_ci=kappa_ci,
        krippendorff_alpha=alpha,
        krippendorff_alpha_ci=alpha_ci,
        bootstrap={
            "replicates": replicates,
            "valid_replicates": valid,
            "clusters": cluster_count,
            "over": "clusters" if clusters is not None else "items",
            "seed": seed,
            "confidence": confidence,
        },
        pairwise=_pairwise(codes, list(raters), len(categories)),
        per_class=_specific_agreement(counts, categories),
    )


def _pairwise(codes: np.ndarray, raters: list[str], categories: int):
    """Cohen's kappa of every pair of raters over the items both classified (None where
    undefined: no shared item, or chance agreement complete)."""
    matrix: dict[str, dict[str, float | None]] = {rater: {} for rater in raters}
    for first in range(len(raters)):
        matrix[raters[first]][raters[first]] = 1.0
        for second in range(first + 1, len(raters)):
            both = (codes[:, first] >= 0) & (codes[:, second] >= 0)
            value = None
            if both.any():
                table = np.zeros((categories, categories))
                np.add.at(table, (codes[both, first], codes[both, second]), 1)
                margins = table.sum(axis=0) @ table.sum(axis=1) / table.sum() ** 2
                if margins < 1:
                    value = float(cohens_kappa(table, return_results=False))
            matrix[raters[first]][raters[second]] = value
            matrix[raters[second]][raters[first]] = value
    return matrix


def _specific_agreement(counts: np.ndarray, categories: list[str]):
    """Per class, the proportion of specific agreement: of the pairs of ratings of an item in
    which one says the class, the share in which the other says it too (Uebersax 1982's
    generalisation to many raters; defined with missing ratings)."""
    per_item = counts.sum(axis=1)
    pairable = per_item >= 2
    counts, per_item = counts[pairable], per_item[pairable]
    result = {}
    for position, code in enumerate(categories):
        column = counts[:, position]
        possible = float((column * (per_item - 1)).sum())
        agreeing = float((column * (column - 1)).sum())
        result[code] = {
            "ratings": int(column.sum()),
            "specific_agreement": agreeing / possible if possible else None,
        }
    return result
