"""Differential counts: how a patient's (or a scan's) counted cells share out over classes and
over the taxonomy's groups, as the examiners labelled them.

The examiners' count is the study's gold labels: every gold round (one per examiner), a cell
labelled in several counted once, by its most recent label. A cell answered "cannot classify"
is uncountable: it stays out of every count and every denominator, as the bone marrow study
sets crushed and degenerated cells apart before it counts. Shares carry a Wilson 95 % interval
(statsmodels), which stays inside 0..1 and keeps its coverage for the small counts and shares
near 0 a differential has.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from statsmodels.stats.proportion import proportion_confint

from core.errors import DomainError

from .models import Label, Round, Study, TaxonGroup
from .taxonomy import group_leaf_codes

CONFIDENCE = 0.95


def share_interval(count: int, total: int) -> tuple[float, float] | None:
    """The Wilson 95 % interval of count/total; None when nothing was counted."""
    if total <= 0:
        return None
    low, high = proportion_confint(count, total, alpha=1 - CONFIDENCE, method="wilson")
    return float(low), float(high)


@dataclass(frozen=True)
class GroupCount:
    """Of `counted` cells, `in_group` answer "yes" to a group's question."""

    in_group: int
    counted: int

    @property
    def share(self) -> float | None:
        return self.in_group / self.counted if self.counted else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return share_interval(self.in_group, self.counted)


def share_row(count: int, total: int) -> dict:
    """A count with its share of the total and that share's interval (None when total is 0)."""
    interval = share_interval(count, total)
    return {
        "count": count,
        "share": count / total if total else None,
        "ci": list(interval) if interval else None,
    }


def share_text(row: dict | None, *, percent: bool = True, empty: str = "-") -> str:
    """A share row as text: "12.5% (8.1-18.9%)", or "0.125 (0.081-0.189)" without `percent`;
    `empty` where nothing was counted."""
    if not row or row.get("share") is None:
        return empty
    low, high = row["ci"]
    if percent:
        return f"{row['share']:.1%} ({low * 100:.1f}-{high:.1%})"
    return f"{row['share']:.3f} ({low:.3f}-{high:.3f})"


def share_rows(counts: Counter, order: list[str]) -> list[dict]:
    """Each code of `order` with its count, share of the total and interval: a differential."""
    total = sum(counts.values())
    return [{"code": code, **share_row(counts.get(code, 0), total)} for code in order]


def find_group(study: Study, name: str) -> TaxonGroup:
    """The study's taxonomy group of that name, or a DomainError listing the ones there are."""
    groups = {group.name: group for group in study.taxonomy.groups.all()}
    if name not in groups:
        offered = ", ".join(sorted(groups)) or "none"
        raise DomainError(
            f"Taxonomy {study.taxonomy.name} has no group {name!r} (groups: {offered}).", "group"
        )
    return groups[name]


@dataclass
class ExaminerCounts:
    """The examiners' leaf counts of a study per patient (and per scan), and the uncountable."""

    by_patient: dict[int, Counter]
    by_scan: dict[int, Counter]
    uncountable_by_patient: Counter
    uncountable_by_scan: Counter


def examiner_answers(study: Study, *, scan_ids: list[int] | None = None) -> dict[int, tuple]:
    """Per cell, its examiners' gold answer: (patient id, scan id, leaf code or None for
    "cannot classify"). Every gold round of the study counts (each examiner has one); a cell
    labelled in several takes its most recent label, as the annotation screen shows the latest."""
    labels = Label.objects.filter(round__study=study, round__kind=Round.Kind.GOLD)
    if scan_ids is not None:
        labels = labels.filter(cell__scan_id__in=scan_ids)
    found = labels.order_by("cell_id", "updated_at", "pk").values_list(
        "cell_id", "cell__patient_id", "cell__scan__patient_id", "cell__scan_id", "node__code"
    )
    return {
        cell: (own_patient or scan_patient, scan, code)
        for cell, own_patient, scan_patient, scan, code in found.iterator()
    }


def uncountable_cells(study: Study) -> set[int]:
    """Cells whose examiners' gold answer is "cannot classify"."""
    return {cell for cell, (_, _, code) in examiner_answers(study).items() if code is None}


def examiner_counts(study: Study, *, scan_ids: list[int] | None = None) -> ExaminerCounts:
    """Leaf counts of the examiners' gold answers, per patient and per scan. Cells without a
    patient are left out of the per-patient counts; "cannot classify" is counted apart."""
    by_patient: dict[int, Counter] = defaultdict(Counter)
    by_scan: dict[int, Counter] = defaultdict(Counter)
    uncountable_by_patient: Counter = Counter()
    uncountable_by_scan: Counter = Counter()
    for patient, scan, code in examiner_answers(study, scan_ids=scan_ids).values():
        if code is None:
            if patient:
                uncountable_by_patient[patient] += 1
            if scan:
                uncountable_by_scan[scan] += 1
            continue
        if patient:
            by_patient[patient][code] += 1
        if scan:
            by_scan[scan][code] += 1
    return ExaminerCounts(
        dict(by_patient), dict(by_scan), uncountable_by_patient, uncountable_by_scan
    )


def group_count(leaf_counts: Counter, leaves: set[str]) -> GroupCount:
    """How many of the counted leaves lie in the group's leaves."""
    return GroupCount(
        in_group=sum(n for code, n in leaf_counts.items() if code in leaves),
        counted=sum(leaf_counts.values()),
    )


def examiner_group_counts(study: Study, group_name: str) -> dict[int, GroupCount]:
    """Per patient id: of the cells the examiners could classify, how many lie in the group."""
    leaves = group_leaf_codes(find_group(study, group_name))
    counts = examiner_counts(study)
    return {patient: group_count(leaf, leaves) for patient, leaf in counts.by_patient.items()}
