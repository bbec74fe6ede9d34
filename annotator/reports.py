"""Agreement reports of a study: which rounds to compare, on which cells, at which level, and the
report as JSON, CSV or an HTML page with plots.

The statistics are `annotator.agreement.compare_answers`; this module only gathers the answers
of two rounds on their shared cells, maps them to classes (as labelled, or with internal nodes
collapsed, the rare-leaf merge) and lays the results out.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

from django.utils import timezone

from core import params
from core.errors import DomainError

from .agreement import Agreement, compare_answers
from .models import Cell, Label, Round, Study
from .taxonomy import classes_in_groups, taxon_tree

LEAF_LEVEL = "leaf"
MAX_BOOTSTRAP = 100_000  # replicates of the patient bootstrap


NOTHING_COMPARED = "nothing compared yet"


@dataclass(frozen=True)
class Comparison:
    a: Round  # the reference side (rows of the confusion matrix)
    b: Round  # the rater side (columns)
    agreement: Agreement

    @property
    def compared(self) -> bool:
        """Whether any cell was classified by both rounds (n > 0)."""
        return self.agreement.n > 0

    @property
    def note(self) -> str:
        """What a reader needs where there are no figures: empty when something was compared."""
        if self.compared:
            return ""
        excluded = self.agreement.excluded_cannot_classify
        why = f"; {excluded} shared cell(s) said cannot classify" if excluded else ""
        return (
            f"{NOTHING_COMPARED.capitalize()}: no cell is classified in both "
            f"{self.a.name} and {self.b.name}{why}."
        )

    def to_dict(self) -> dict:
        return {
            "a": self.a.name,
            "b": self.b.name,
            "a_kind": self.a.kind,
            "b_kind": self.b.kind,
            "a_rater": self.a.rater.get_username(),
            "b_rater": self.b.rater.get_username(),
            "compared": self.compared,
            "note": self.note,
            **self.agreement.to_dict(),
        }


@dataclass
class Report:
    study: Study
    level: str
    collapsed: list[str]
    comparisons: list[Comparison]
    generated_at: datetime = field(default_factory=timezone.now)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "study": self.study.name,
            "taxonomy": str(self.study.taxonomy),
            "level": self.level,
            "collapsed": self.collapsed,
            "generated_at": self.generated_at.isoformat(),
            "notes": self.notes,
            "comparisons": [comparison.to_dict() for comparison in self.comparisons],
        }


class ClassMapping:
    """Taxon node code -> report class: the code itself, or the collapsed ancestor's code."""

    def __init__(self, study: Study, collapse: list[str] | tuple[str, ...] = ()):
        tree = taxon_tree(study.taxonomy_id)
        unknown = sorted(code for code in set(collapse) if code not in tree)
        if unknown:
            raise DomainError(
                f"Cannot collapse {', '.join(unknown)}: not in taxonomy {study.taxonomy}.",
                field="collapse",
            )
        leaves = [code for code in collapse if tree.node(code).is_leaf]
        if leaves:
            raise DomainError(
                f"{', '.join(leaves)} is a leaf; only internal nodes can be collapsed.",
                field="collapse",
            )
        self.order = {node.code: index for index, node in enumerate(tree.preorder)}
        self.class_of: dict[str, str] = {}
        for node in tree.preorder:
            # The collapsed node nearest the root wins: collapsing PAT swallows MYO as well.
            collapsed = [code for code in tree.lineage(node.code) if code in collapse]
            self.class_of[node.code] = collapsed[-1] if collapsed else node.code

    def groups(self, study: Study, classes: list[str]) -> dict[str, set[str]]:
        """Each taxonomy group as the set of report classes that answer "yes"."""
        return classes_in_groups(study.taxonomy, {code: (code,) for code in classes})


def round_named(study: Study, name: str) -> Round:
    round_ = study.rounds.filter(name=name).select_related("rater").first()
    if round_ is None:
        names = ", ".join(study.rounds.exclude(name="").values_list("name", flat=True)) or "none"
        raise DomainError(f"No round {name!r} in study {study.name} (rounds: {names}).", "round")
    return round_


def default_pairs(study: Study) -> list[tuple[Round, Round]]:
    """Gold against every other round, and each repeat against the round it repeats."""
    rounds = list(study.rounds.select_related("rater", "reference", "repeats").order_by("id"))
    golds = [r for r in rounds if r.kind == Round.Kind.GOLD]
    pairs = []
    for round_ in rounds:
        if round_.kind == Round.Kind.GOLD:
            continue
        references = [round_.reference] if round_.reference else golds
        pairs.extend((gold, round_) for gold in references if gold is not None)
    pairs.extend((r.repeats, r) for r in rounds if r.kind == Round.Kind.REPEAT and r.repeats)
    return pairs


@dataclass(frozen=True)
class ReportRequest:
    """What an agreement report is asked for, read the same way from the API's query, the
    page's query and the command's options: one pair of rounds by name (`a` the reference,
    `b` the rater; both or neither, for the default pairs), the level, the internal nodes to
    collapse, and the size and seed of the patient bootstrap. Built, it is valid: each refusal
    is a DomainError naming the parameter. What needs the study (that the rounds and nodes
    exist) is checked by `build`."""

    a: str = ""
    b: str = ""
    level: str = LEAF_LEVEL
    collapse: tuple[str, ...] = ()
    bootstrap: int = 0
    seed: int = 0

    def __post_init__(self):
        if bool(self.a) != bool(self.b):
            raise DomainError(
                "Give both a and b, or neither for the default pairs.", "b" if self.a else "a"
            )
        if self.level != LEAF_LEVEL:
            raise DomainError(
                f"Unknown level {self.level!r}: use leaf, with collapse CODES to merge internal "
                "nodes.",
                "level",
            )
        object.__setattr__(self, "collapse", tuple(self.collapse))
        object.__setattr__(
            self, "bootstrap", params.whole_number(self.bootstrap, "bootstrap", 0, MAX_BOOTSTRAP)
        )
        object.__setattr__(self, "seed", params.seed(self.seed))

    @classmethod
    def parse(cls, values: Mapping) -> ReportRequest:
        """From a query string (texts) or a command's options; keys left out or empty take
        their defaults, other keys (a format, a page number) are not the report's."""
        given = {key: values.get(key) for key in ("a", "b", "level", "bootstrap", "seed")}
        given = {key: value for key, value in given.items() if value not in (None, "")}
        collapse = values.get("collapse") or ""
        if isinstance(collapse, str):
            collapse = collapse.split(",")
        return cls(**given, collapse=tuple(c.strip() for c in collapse if c.strip()))

    def query(self) -> str:
        """The request as a query string (only what differs from the defaults), for links."""
        pairs = [("a", self.a), ("b", self.b), ("collapse", ",".join(self.collapse))]
        if self.bootstrap:
            pairs += [("bootstrap", str(self.bootstrap)), ("seed", str(self.seed))]
        return urlencode([(key, value) for key, value in pairs if value], safe=",")

    def build(self, study: Study) -> Report:
        """The report this request asks of `study`."""
        pairs = None
        if self.a:
            pairs = [(round_named(study, self.a), round_named(study, self.b))]
        return build_report(
            study,
            pairs=pairs,
            collapse=self.collapse,
            bootstrap=self.bootstrap,
            seed=self.seed,
        )


def _answers(round_: Round) -> dict[int, str | None]:
    return {
        cell: (None if cannot else code)
        for cell, code, cannot in Label.objects.filter(round=round_).values_list(
            "cell_id", "node__code", "cannot_classify"
        )
    }


def cell_patients(cell_ids: list[int]) -> dict[int, int | None]:
    """Cell -> its patient id (its own, or its scan's; None where unknown)."""
    rows = Cell.objects.filter(pk__in=cell_ids).values_list("pk", "patient_id", "scan__patient_id")
    return {cell: own or via_scan for cell, own, via_scan in rows}


def build_report(
    study: Study,
    *,
    pairs: list[tuple[Round, Round]] | None = None,
    collapse: list[str] | tuple[str, ...] = (),
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
) -> Report:
    """Compare each pair of rounds on the cells both labelled."""
    bootstrap = params.whole_number(bootstrap, "bootstrap", 0, MAX_BOOTSTRAP)
    if not 0 < confidence < 1:
        raise DomainError("confidence must be between 0 and 1, e.g. 0.95.", "confidence")
    pairs = default_pairs(study) if pairs is None else pairs
    for a, b in pairs:
        if a.study_id != study.pk or b.study_id != study.pk:
            raise DomainError(f"Rounds {a} and {b} must both belong to {study.name}.", "round")
    mapping = ClassMapping(study, collapse)
    report = Report(study, LEAF_LEVEL if not collapse else "collapsed", list(collapse), [])
    cache: dict[int, dict[int, str | None]] = {}
    for a, b in pairs:
        left = cache.setdefault(a.pk, _answers(a))
        right = cache.setdefault(b.pk, _answers(b))
        shared = sorted(left.keys() & right.keys())
        reference = [_mapped(mapping, left[cell]) for cell in shared]
        rater = [_mapped(mapping, right[cell]) for cell in shared]
        classes = sorted(
            {code for code in reference + rater if code is not None},
            key=lambda code: mapping.order.get(code, 10**6),
        )
        clusters = None
        if bootstrap:
            patients = cell_patients(shared)
            unknown = sum(1 for cell in shared if patients.get(cell) is None)
            if unknown:
                raise DomainError(
                    f"The patient-clustered bootstrap needs every cell's patient; {unknown} of "
                    f"the {len(shared)} cells shared by {a.name} and {b.name} have none.",
                    field="bootstrap",
                )
            clusters = [patients[cell] for cell in shared]
        agreement = compare_answers(
            reference,
            rater,
            labels=classes,
            groups=mapping.groups(study, classes),
            clusters=clusters,
            bootstrap=bootstrap,
            seed=seed,
            confidence=confidence,
        )
        report.comparisons.append(Comparison(a, b, agreement))
    if not pairs:
        report.notes.append("The study has no pair of rounds to compare yet.")
    return report


def _mapped(mapping: ClassMapping, code: str | None) -> str | None:
    return None if code is None else mapping.class_of.get(code, code)


CSV_COLUMNS = [
    "a",
    "b",
    "n",
    "excluded_cannot_classify",
    "kappa",
    "kappa_ci_low",
    "kappa_ci_high",
    "kappa_se",
    "observed_agreement",
    "note",
]


def report_csv(report: Report) -> str:
    """One row per comparison: kappa with its interval, agreement, and each group's
    sensitivity and specificity."""
    groups = sorted({name for c in report.comparisons for name in c.agreement.groups})
    columns = CSV_COLUMNS + [f"{g}_{m}" for g in groups for m in ("sensitivity", "specificity")]
    if any(c.agreement.bootstrap for c in report.comparisons):
        columns += ["bootstrap_ci_low", "bootstrap_ci_high"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for comparison in report.comparisons:
        result = comparison.agreement
        row = {
            "a": comparison.a.name,
            "b": comparison.b.name,
            "n": result.n,
            "excluded_cannot_classify": result.excluded_cannot_classify,
            "kappa": _number(result.kappa),
            "kappa_ci_low": _number(result.kappa_ci[0] if result.kappa_ci else None),
            "kappa_ci_high": _number(result.kappa_ci[1] if result.kappa_ci else None),
            "kappa_se": _number(result.kappa_se),
            "observed_agreement": _number(result.observed_agreement),
            "note": comparison.note,
        }
        for name in groups:
            stats = result.groups.get(name)
            row[f"{name}_sensitivity"] = _number(stats.sensitivity if stats else None)
            row[f"{name}_specificity"] = _number(stats.specificity if stats else None)
        if "bootstrap_ci_low" in columns:
            interval = result.bootstrap
            row["bootstrap_ci_low"] = _number(interval.low if interval else None)
            row["bootstrap_ci_high"] = _number(interval.high if interval else None)
        writer.writerow(row)
    return out.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
