"""Agreement of one rater with a reference on the same cells: Cohen's kappa with its asymptotic
standard error and confidence interval, the confusion matrix, per-class sensitivity and
precision, sensitivity and specificity of class groups (such as "blast"), and optionally a
patient-clustered bootstrap interval for kappa.

Answers are class codes; ``None`` (``CANNOT_CLASSIFY``) means the rater declined to classify the
cell. Such pairs cannot be scored, so they are left out of every statistic and counted by side.

Only the glue is written here: kappa and its standard error come from statsmodels, which agrees
with scikit-learn's ``cohen_kappa_score``. The one piece computed by hand is the cluster
bootstrap, because cells of the same patient are not independent and neither library offers a
clustered bootstrap of kappa.

Plain Python values in, plain Python values out; no Django, so this can be tested and reused
without a database.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm
from statsmodels.stats.inter_rater import cohens_kappa

CANNOT_CLASSIFY = None

_UNKNOWN_CODE = -2
_CANNOT_CLASSIFY_INDEX = -1


@dataclass(frozen=True)
class ClassStats:
    """How one class fared: its row and column of the confusion matrix."""

    reference_count: int
    rater_count: int
    agreed: int
    sensitivity: float | None
    precision: float | None

    def to_dict(self) -> dict:
        return {
            "reference_count": self.reference_count,
            "rater_count": self.rater_count,
            "agreed": self.agreed,
            "sensitivity": self.sensitivity,
            "precision": self.precision,
        }


@dataclass(frozen=True)
class GroupStats:
    """A group of classes read as one yes/no question (e.g. "is it a blast?")."""

    true_positive: int
    false_negative: int
    true_negative: int
    false_positive: int
    sensitivity: float | None
    specificity: float | None

    def to_dict(self) -> dict:
        return {
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "true_positive": self.true_positive,
            "false_negative": self.false_negative,
            "true_negative": self.true_negative,
            "false_positive": self.false_positive,
        }


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile interval of kappa over bootstrap replicates that resample whole clusters.

    `clusters` counts the clusters that have at least one compared pair; clusters whose pairs
    were all excluded add nothing to kappa and are not resampled.
    """

    low: float | None
    high: float | None
    replicates: int
    valid_replicates: int
    clusters: int
    seed: int
    confidence: float

    def to_dict(self) -> dict:
        return {
            "low": self.low,
            "high": self.high,
            "replicates": self.replicates,
            "valid_replicates": self.valid_replicates,
            "clusters": self.clusters,
            "seed": self.seed,
            "confidence": self.confidence,
        }


@dataclass(frozen=True)
class Agreement:
    """Everything `compare_answers` measures; `to_dict` gives the JSON form."""

    n: int
    excluded_cannot_classify: int
    excluded_reference_only: int
    excluded_rater_only: int
    excluded_both: int
    kappa: float | None
    kappa_se: float | None
    kappa_ci: tuple[float, float] | None
    observed_agreement: float | None
    confidence: float
    labels: list[str]
    matrix: list[list[int]]
    per_class: dict[str, ClassStats]
    groups: dict[str, GroupStats]
    bootstrap: BootstrapInterval | None

    def to_dict(self) -> dict:
        """JSON-ready: only dicts, lists, str, int, float and None."""
        return {
            "n": self.n,
            "excluded_cannot_classify": self.excluded_cannot_classify,
            "excluded": {
                "reference_only": self.excluded_reference_only,
                "rater_only": self.excluded_rater_only,
                "both": self.excluded_both,
            },
            "kappa": self.kappa,
            "kappa_se": self.kappa_se,
            "kappa_ci": list(self.kappa_ci) if self.kappa_ci is not None else None,
            "observed_agreement": self.observed_agreement,
            "confidence": self.confidence,
            "confusion": {
                "labels": list(self.labels),
                "matrix": [list(row) for row in self.matrix],
            },
            "per_class": {code: counts.to_dict() for code, counts in self.per_class.items()},
            "groups": {name: counts.to_dict() for name, counts in self.groups.items()},
            "bootstrap": self.bootstrap.to_dict() if self.bootstrap is not None else None,
        }


def compare_answers(
    reference: Sequence[str | None],
    rater: Sequence[str | None],
    *,
    labels: Sequence[str] | None = None,
    groups: Mapping[str, Collection[str]] | None = None,
    clusters: Sequence[Hashable] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
) -> Agreement:
    """Compare a rater's answers with the reference's, pair by pair (same cell at each index).

    `labels` fixes the class order (default: the sorted classes seen on either side); `groups`
    maps a group name to the codes that count as "yes"; `clusters` gives each pair's patient,
    needed for `bootstrap` > 0 replicates drawn with `numpy.random.default_rng(seed)`.
    Raises ValueError naming the problem when the inputs do not fit together.
    """
    if len(reference) != len(rater):
        raise ValueError(
            f"reference and rater must have the same length, got {len(reference)} reference "
            f"and {len(rater)} rater answers"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if bootstrap < 0:
        raise ValueError(
            f"bootstrap must be zero or a positive number of replicates, got {bootstrap}"
        )
    if clusters is not None and len(clusters) != len(reference):
        raise ValueError(
            f"clusters must give one cluster per pair: got {len(clusters)} clusters for "
            f"{len(reference)} pairs"
        )
    if bootstrap > 0 and clusters is None:
        raise ValueError("bootstrap needs clusters: one cluster (patient) id per pair")

    labels = _checked_labels(labels, reference, rater)
    group_masks = _group_masks(groups or {}, labels)

    reference_index = _class_indices(reference, labels, "reference")
    rater_index = _class_indices(rater, labels, "rater")

    reference_declined = reference_index == _CANNOT_CLASSIFY_INDEX
    rater_declined = rater_index == _CANNOT_CLASSIFY_INDEX
    compared = ~(reference_declined | rater_declined)
    reference_compared = reference_index[compared]
    rater_compared = rater_index[compared]

    matrix = _confusion_matrix(reference_compared, rater_compared, len(labels))
    n = int(compared.sum())
    kappa, kappa_se, kappa_ci = _kappa_with_interval(matrix, confidence)

    interval = None
    if bootstrap > 0:
        cluster_ids = _cluster_indices(clusters)[compared]
        interval = _cluster_bootstrap(
            reference_compared,
            rater_compared,
            cluster_ids,
            len(labels),
            replicates=bootstrap,
            seed=seed,
            confidence=confidence,
        )

    return Agreement(
        n=n,
        excluded_cannot_classify=len(reference) - n,
        excluded_reference_only=int((reference_declined & ~rater_declined).sum()),
        excluded_rater_only=int((rater_declined & ~reference_declined).sum()),
        excluded_both=int((reference_declined & rater_declined).sum()),
        kappa=kappa,
        kappa_se=kappa_se,
        kappa_ci=kappa_ci,
        observed_agreement=_ratio(int(np.trace(matrix)), n),
        confidence=float(confidence),
        labels=list(labels),
        matrix=matrix.tolist(),
        per_class=_per_class(matrix, labels),
        groups={name: _group_stats(matrix, mask) for name, mask in group_masks.items()},
        bootstrap=interval,
    )


def _checked_labels(
    labels: Sequence[str] | None,
    reference: Sequence[str | None],
    rater: Sequence[str | None],
) -> list[str]:
    """The class order: as given (checked for duplicates), else the sorted classes seen."""
    if labels is None:
        seen = set(reference) | set(rater)
        seen.discard(CANNOT_CLASSIFY)
        return sorted(seen)
    labels = list(labels)
    if CANNOT_CLASSIFY in labels:
        raise ValueError("labels must not contain None, which stands for cannot classify")
    if len(set(labels)) != len(labels):
        duplicates = sorted({code for code in labels if labels.count(code) > 1})
        raise ValueError(f"labels contain duplicates: {', '.join(map(repr, duplicates))}")
    return labels


def _group_masks(groups: Mapping[str, Collection[str]], labels: list[str]) -> dict[str, np.ndarray]:
    """For each group, a boolean mask over `labels` of the codes that answer "yes"."""
    position = {code: i for i, code in enumerate(labels)}
    masks = {}
    for name, codes in groups.items():
        if isinstance(codes, str):
            raise ValueError(
                f"group {name!r} must be a collection of class codes, not the single string "
                f"{codes!r}"
            )
        unknown = sorted(code for code in codes if code not in position)
        if unknown:
            raise ValueError(
                f"group {name!r} names codes not in labels: {', '.join(map(repr, unknown))}"
            )
        mask = np.zeros(len(labels), dtype=bool)
        mask[[position[code] for code in codes]] = True
        masks[name] = mask
    return masks


def _class_indices(answers: Sequence[str | None], labels: list[str], side: str) -> np.ndarray:
    """Each answer's position in `labels`, -1 for cannot classify; unknown codes raise."""
    lookup = {code: i for i, code in enumerate(labels)}
    lookup[CANNOT_CLASSIFY] = _CANNOT_CLASSIFY_INDEX
    indices = np.fromiter(
        (lookup.get(answer, _UNKNOWN_CODE) for answer in answers),
        dtype=np.intp,
        count=len(answers),
    )
    unknown = np.flatnonzero(indices == _UNKNOWN_CODE)
    if unknown.size:
        first = int(unknown[0])
        raise ValueError(
            f"{side} answer {answers[first]!r} at position {first} is not in labels "
            f"({unknown.size} unknown answer(s) on the {side} side)"
        )
    return indices


def _cluster_indices(clusters: Sequence[Hashable]) -> np.ndarray:
    """Cluster ids turned into consecutive integers, in order of first appearance."""
    numbering: dict[Hashable, int] = {}
    return np.fromiter(
        (numbering.setdefault(cluster, len(numbering)) for cluster in clusters),
        dtype=np.intp,
        count=len(clusters),
    )


def _confusion_matrix(
    reference_index: np.ndarray, rater_index: np.ndarray, class_count: int
) -> np.ndarray:
    """Counts with reference classes in rows and rater classes in columns."""
    flat = np.bincount(
        reference_index * class_count + rater_index, minlength=class_count * class_count
    )
    return flat.reshape(class_count, class_count)


def _kappa_with_interval(
    matrix: np.ndarray, confidence: float
) -> tuple[float | None, float | None, tuple[float, float] | None]:
    """Unweighted kappa, its asymptotic SE (statsmodels' `std_kappa`) and normal interval.

    Kappa is undefined without pairs or when chance agreement is 1 (both sides used one and the
    same class throughout); all three are None then. Classes nobody used give zero rows and
    columns, which change neither kappa nor its variance.
    """
    n = int(matrix.sum())
    row_sums = matrix.sum(axis=1)
    column_sums = matrix.sum(axis=0)
    if n == 0 or int(row_sums @ column_sums) == n * n:
        return None, None, None
    with np.errstate(divide="ignore", invalid="ignore"):
        result = cohens_kappa(matrix)
    kappa = float(result.kappa)
    # Rounding can leave a variance of exactly zero (perfect agreement) a hair below it.
    kappa_se = float(np.sqrt(max(float(result.var_kappa), 0.0)))
    # The same expression statsmodels uses for kappa_low / kappa_upp, at any confidence.
    half_width = float(norm.isf((1 - confidence) / 2)) * kappa_se
    return kappa, kappa_se, (kappa - half_width, kappa + half_width)


def _per_class(matrix: np.ndarray, labels: list[str]) -> dict[str, ClassStats]:
    reference_counts = matrix.sum(axis=1).tolist()
    rater_counts = matrix.sum(axis=0).tolist()
    agreed_counts = np.diag(matrix).tolist()
    return {
        code: ClassStats(
            reference_count=reference_count,
            rater_count=rater_count,
            agreed=agreed,
            sensitivity=_ratio(agreed, reference_count),
            precision=_ratio(agreed, rater_count),
        )
        for code, reference_count, rater_count, agreed in zip(
            labels, reference_counts, rater_counts, agreed_counts, strict=True
        )
    }


def _group_stats(matrix: np.ndarray, in_group: np.ndarray) -> GroupStats:
    """Collapse the matrix to 2x2 for one group: positive = the class is one of its codes."""
    out_group = ~in_group
    true_positive = int(matrix[np.ix_(in_group, in_group)].sum())
    false_negative = int(matrix[np.ix_(in_group, out_group)].sum())
    false_positive = int(matrix[np.ix_(out_group, in_group)].sum())
    true_negative = int(matrix[np.ix_(out_group, out_group)].sum())
    return GroupStats(
        true_positive=true_positive,
        false_negative=false_negative,
        true_negative=true_negative,
        false_positive=false_positive,
        sensitivity=_ratio(true_positive, true_positive + false_negative),
        specificity=_ratio(true_negative, true_negative + false_positive),
    )


def _cluster_bootstrap(
    reference_index: np.ndarray,
    rater_index: np.ndarray,
    cluster_ids: np.ndarray,
    class_count: int,
    *,
    replicates: int,
    seed: int,
    confidence: float,
) -> BootstrapInterval:
    """Percentile interval of kappa from resampling whole clusters with replacement.

    Written by hand: neither statsmodels nor scikit-learn offers a clustered bootstrap of kappa.
    Kappa needs only the agreed count and the two margins, so those are summed per cluster once;
    each replicate is then a vector of how often each cluster was drawn, and all replicates'
    tables come out of one matrix product.
    """
    present, cluster_ids = np.unique(cluster_ids, return_inverse=True)
    cluster_count = len(present)
    if cluster_count == 0:
        return BootstrapInterval(
            low=None,
            high=None,
            replicates=replicates,
            valid_replicates=0,
            clusters=0,
            seed=seed,
            confidence=float(confidence),
        )

    pairs_per_cluster = np.bincount(cluster_ids, minlength=cluster_count)
    agreed_per_cluster = np.bincount(
        cluster_ids[reference_index == rater_index], minlength=cluster_count
    )
    margin_size = cluster_count * class_count
    reference_margins = np.bincount(
        cluster_ids * class_count + reference_index, minlength=margin_size
    ).reshape(cluster_count, class_count)
    rater_margins = np.bincount(
        cluster_ids * class_count + rater_index, minlength=margin_size
    ).reshape(cluster_count, class_count)

    times_drawn = bootstrap_draws(cluster_count, replicates, seed)
    n = times_drawn @ pairs_per_cluster
    agreed = times_drawn @ agreed_per_cluster
    chance_numerator = np.einsum(
        "bk,bk->b", times_drawn @ reference_margins, times_drawn @ rater_margins
    )
    n_squared = n * n
    defined = chance_numerator != n_squared
    observed = agreed[defined] / n[defined]
    chance = chance_numerator[defined] / n_squared[defined]
    kappas = (observed - chance) / (1 - chance)

    low = high = None
    if kappas.size:
        tail = (1 - confidence) / 2
        low, high = (float(value) for value in np.quantile(kappas, [tail, 1 - tail]))
    return BootstrapInterval(
        low=low,
        high=high,
        replicates=replicates,
        valid_replicates=int(kappas.size),
        clusters=cluster_count,
        seed=seed,
        confidence=float(confidence),
    )


def bootstrap_draws(cluster_count: int, replicates: int, seed: int) -> np.ndarray:
    """How often each cluster is drawn in each bootstrap replicate (replicates x clusters): a
    replicate's statistic is then a matrix product of these counts with per-cluster sums."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, cluster_count, size=(replicates, cluster_count))
    replicate_offsets = np.arange(replicates)[:, None] * cluster_count
    return np.bincount(
        (draws + replicate_offsets).ravel(), minlength=replicates * cluster_count
    ).reshape(replicates, cluster_count)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None
