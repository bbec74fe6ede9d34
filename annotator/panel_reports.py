"""The panel section of the agreement report: the panel's own figures (Fleiss' kappa,
Krippendorff's alpha, per-class specific agreement), the pairwise kappa matrix with the reference
as one more rater, each rater against the reference, each rater against their own repeat, and
the cells the panel disputes most.

The statistics are `annotator.panel_agreement.panel_agreement` (the panel) and
`annotator.agreement.compare_answers` (any two sides); this module gathers the answers of the
panel's rounds (`annotator.panels.panel_table`) and lays the results out as JSON or CSV.

The reference (the gold round the panel's sample was drawn from) is named
``reference (RATER)`` in the pairwise matrix, after the user who labelled it, so it can never
be mistaken for a panel rater (user names hold no spaces or brackets).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from core import params
from core.errors import DomainError

from .agreement import Agreement, compare_answers
from .models import Cell, Panel, Round, Study
from .panel_agreement import CANNOT_CLASSIFY, PanelAgreement, panel_agreement
from .panels import (
    ANY_DISAGREEMENT,
    TIE_RULE,
    PanelTable,
    Vote,
    disputed_cells,
    panel_table,
    round_answers,
    study_panel,
)
from .reports import ClassMapping, cell_patients

DEFAULT_REPLICATES = 1000
MAX_REPLICATES = 10_000
# The bootstrap holds replicates x clusters draw counts at once: at most this many (160 MB).
MAX_DRAWS = 20_000_000
DEFAULT_DISPUTED = 20
MAX_DISPUTED = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class SideBySide:
    """Two sides compared with `compare_answers`: a rater against the reference, or a rater's
    repeat against their first pass (`first` the rows, `second` the columns)."""

    rater: str
    first: Round
    second: Round
    agreement: Agreement

    def to_dict(self) -> dict:
        return {
            "rater": self.rater,
            "first": self.first.name,
            "second": self.second.name,
            **self.agreement.to_dict(),
        }


@dataclass(frozen=True)
class DisputedCell:
    """One cell the panel disagrees on: every rater's answer, the reference's, the vote."""

    cell: int
    scan: int | None
    external_id: str
    answers: dict[str, str | None]
    reference: str | None
    vote: Vote
    classes: int

    def to_dict(self) -> dict:
        return {
            "cell": self.cell,
            "scan": self.scan,
            "external_id": self.external_id,
            "answers": self.answers,
            "reference": self.reference,
            "vote": self.vote.to_dict(),
            "classes": self.classes,
        }


@dataclass
class PanelReport:
    panel: Panel
    agreement: PanelAgreement
    reference: str | None
    pairwise: dict[str, dict[str, float | None]]
    against_reference: list[SideBySide]
    intra_rater: list[SideBySide]
    disputed: list[DisputedCell]
    disputed_total: int
    groups: list[str]
    generated_at: datetime = field(default_factory=timezone.now)

    @property
    def unrated(self) -> int:
        """Cell-rater pairs with no answer yet."""
        figures = self.agreement
        return figures.items * len(figures.raters) - figures.ratings - figures.declined

    @property
    def left_out(self) -> str:
        """What the statistics did not count, as a sentence for the report."""
        figures = self.agreement
        possible = figures.items * len(figures.raters)
        return (
            f"Of {possible} possible ratings ({figures.items} cells x {len(figures.raters)} "
            f"raters), {figures.ratings} are counted; left out of every statistic: "
            f"{figures.declined} 'cannot classify' and {self.unrated} not rated yet."
        )

    @property
    def members(self) -> list[str]:
        """The pairwise matrix's rows: the raters, then the reference where there is one."""
        return list(self.pairwise)

    def to_dict(self) -> dict:
        figures = self.agreement.to_dict()
        return {
            "name": self.panel.name,
            "reference": self.reference,
            "reference_round": self.panel.reference.name if self.panel.reference else None,
            "generated_at": self.generated_at.isoformat(),
            **figures,
            "pairwise": self.pairwise,
            "unrated": self.unrated,
            "left_out": self.left_out,
            "groups": self.groups,
            "against_reference": [side.to_dict() for side in self.against_reference],
            "intra_rater": [side.to_dict() for side in self.intra_rater],
            "tie_rule": TIE_RULE,
            "disputed_total": self.disputed_total,
            "disputed": [cell.to_dict() for cell in self.disputed],
        }


def latest_panel(study: Study) -> Panel:
    """The study's most recent panel, or a DomainError saying it has none."""
    panel = study.panels.select_related("reference__rater").order_by("-id").first()
    if panel is None:
        raise DomainError(f"Study {study.name} has no panel of raters.", "panel")
    return panel


@dataclass(frozen=True)
class PanelRequest:
    """What a panel report is asked for, read alike from the API's and the page's query and
    the command's options: the panel's name (empty: the study's latest panel), the bootstrap
    of alpha (replicates and seed) and how many disputed cells to list. Built, it is valid."""

    panel: str = ""
    bootstrap: int = DEFAULT_REPLICATES
    seed: int = 0
    disputed: int = DEFAULT_DISPUTED

    def __post_init__(self):
        object.__setattr__(
            self,
            "bootstrap",
            params.whole_number(self.bootstrap, "panel_bootstrap", 0, MAX_REPLICATES),
        )
        object.__setattr__(self, "seed", params.seed(self.seed, "panel_seed"))
        object.__setattr__(
            self, "disputed", params.whole_number(self.disputed, "disputed", 0, MAX_DISPUTED)
        )

    @classmethod
    def parse(cls, values: Mapping, panel: str | None = None) -> PanelRequest:
        """From a query string or a command's options (`panel_bootstrap`, `panel_seed`,
        `disputed`; left out or empty: the defaults); `panel` overrides the `panel` key."""
        given = {
            "panel": values.get("panel") if panel is None else panel,
            "bootstrap": values.get("panel_bootstrap"),
            "seed": values.get("panel_seed"),
            "disputed": values.get("disputed"),
        }
        return cls(**{key: value for key, value in given.items() if value not in (None, "")})

    def build(self, study: Study) -> PanelReport:
        panel = study_panel(study, self.panel) if self.panel else latest_panel(study)
        return build_panel_report(
            panel, replicates=self.bootstrap, seed=self.seed, disputed=self.disputed
        )


def build_panel_report(
    panel: Panel,
    *,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    disputed: int = DEFAULT_DISPUTED,
) -> PanelReport:
    """The panel's agreement: its figures over its first pass, the pairwise matrix with the
    reference, each rater against the reference and against their repeats, and the `disputed`
    cells with the weakest majority. The bootstrap of alpha resamples patients when every cell
    has one, else cells."""
    replicates = params.whole_number(replicates, "panel_bootstrap", 0, MAX_REPLICATES)
    seed = params.seed(seed, "panel_seed")
    disputed = params.whole_number(disputed, "disputed", 0, MAX_DISPUTED)
    table = panel_table(panel)
    patients = cell_patients(table.cells)
    clusters = [patients.get(cell) for cell in table.cells]
    by_patient = all(patient is not None for patient in clusters)
    resampled = len(set(clusters)) if by_patient else len(table.cells)
    if replicates * resampled > MAX_DRAWS:
        raise DomainError(
            f"panel_bootstrap {replicates} over {resampled} "
            f"{'patients' if by_patient else 'cells'} is more than this server draws at once; "
            f"at most {MAX_DRAWS // resampled} replicates for panel {panel.name}.",
            "panel_bootstrap",
        )
    figures = panel_agreement(
        table.ratings,
        table.raters,
        clusters=clusters if by_patient else None,
        replicates=replicates,
        seed=seed,
        confidence=CONFIDENCE,
    )
    study = panel.study
    mapping = ClassMapping(study)
    reference_name = (
        f"reference ({panel.reference.rater.get_username()})" if panel.reference else None
    )
    against = _against_reference(table, mapping, study)
    pairwise = {rater: dict(row) for rater, row in figures.pairwise.items()}
    if reference_name:
        for side in against:
            pairwise[side.rater][reference_name] = side.agreement.kappa
        pairwise[reference_name] = {side.rater: side.agreement.kappa for side in against}
        pairwise[reference_name][reference_name] = 1.0
    groups = sorted({name for side in against for name in side.agreement.groups})
    picked = _most_disputed(table)
    return PanelReport(
        panel=panel,
        agreement=figures,
        reference=reference_name,
        pairwise=pairwise,
        against_reference=against,
        intra_rater=_intra_rater(table),
        disputed=_disputed_cells(table, picked[:disputed]),
        disputed_total=len(picked),
        groups=groups,
    )


def _compared(
    first: Mapping[int, str],
    second: Mapping[int, str],
    cells: list[int],
    *,
    order: Mapping[str, int] | None = None,
    groups: Callable[[list[str]], dict[str, set[str]]] | None = None,
) -> Agreement:
    """`compare_answers` over the cells both sides answered ("cannot classify" as the
    library's None, so it is counted and left out), classes in the taxonomy's `order`, and
    the yes/no questions `groups` makes of those classes."""
    shared = [cell for cell in cells if cell in first and cell in second]

    def side(answers):
        return [None if answers[cell] == CANNOT_CLASSIFY else answers[cell] for cell in shared]

    rows, columns = side(first), side(second)
    order = order or {}
    labels = sorted(
        {code for code in rows + columns if code is not None},
        key=lambda code: (order.get(code, 10**6), code),
    )
    return compare_answers(
        rows,
        columns,
        labels=labels,
        groups=groups(labels) if groups else None,
        confidence=CONFIDENCE,
    )


def _against_reference(table: PanelTable, mapping: ClassMapping, study: Study) -> list[SideBySide]:
    """Each rater against the panel's reference, with the sensitivity and specificity of every
    group of the taxonomy."""
    reference = table.panel.reference
    if reference is None:
        return []
    result = []
    for round_, answers in zip(table.rounds, _columns(table), strict=True):
        agreement = _compared(
            table.reference,
            answers,
            table.cells,
            order=mapping.order,
            groups=lambda labels: mapping.groups(study, labels),
        )
        result.append(SideBySide(round_.rater.get_username(), reference, round_, agreement))
    return result


def _columns(table: PanelTable) -> list[dict[int, str]]:
    """Each rater's answers from the table: cell -> code or CANNOT_CLASSIFY."""
    rows = list(zip(table.cells, table.ratings, strict=True))
    return [
        {cell: row[rater] for cell, row in rows if row[rater] is not None}
        for rater in range(len(table.rounds))
    ]


def _intra_rater(table: PanelTable) -> list[SideBySide]:
    """Each panel rater's repeats against their first pass, over the cells both answered."""
    result = []
    for round_, first in zip(table.rounds, _columns(table), strict=True):
        repeats = Round.objects.filter(
            panel=table.panel, kind=Round.Kind.REPEAT, repeats=round_
        ).order_by("id")
        for repeat in repeats:
            agreement = _compared(first, round_answers(repeat), table.cells)
            result.append(SideBySide(round_.rater.get_username(), round_, repeat, agreement))
    return result


def _most_disputed(table: PanelTable) -> list[tuple[int, Vote, int]]:
    """The cells on which two classifying answers differ (the `any` adjudication rule), the
    weakest majority first, then the most distinct classes, then by cell id."""
    votes = table.votes()
    rows = dict(zip(table.cells, table.ratings, strict=True))
    picked = []
    for cell in disputed_cells(table, ANY_DISAGREEMENT):
        classes = len({answer for answer in rows[cell] if answer not in (None, CANNOT_CLASSIFY)})
        picked.append((cell, votes[cell], classes))
    picked.sort(key=lambda entry: (entry[1].share, -entry[2], entry[0]))
    return picked


def _disputed_cells(table: PanelTable, picked: list[tuple[int, Vote, int]]) -> list[DisputedCell]:
    rows = dict(zip(table.cells, table.ratings, strict=True))
    cells = {
        pk: (scan, external_id)
        for pk, scan, external_id in Cell.objects.filter(
            pk__in=[cell for cell, _, _ in picked]
        ).values_list("pk", "scan_id", "external_id")
    }
    return [
        DisputedCell(
            cell=cell,
            scan=cells[cell][0],
            external_id=cells[cell][1] or "",
            answers=dict(zip(table.raters, rows[cell], strict=True)),
            reference=table.reference.get(cell),
            vote=vote,
            classes=classes,
        )
        for cell, vote, classes in picked
    ]


CSV_COLUMNS = ["section", "row", "column", "value"]


def panel_csv(report: PanelReport) -> str:
    """The panel report in long form, one figure a line (`section,row,column,value`): headline
    figures, the pairwise matrix, per-class agreement, each rater against the reference (kappa
    and each group's sensitivity and specificity), intra-rater kappas and the disputed cells
    (one line per answer). Empty values are undefined figures."""
    figures = report.agreement
    lines: list[tuple[str, str, str, object]] = [
        ("panel", "name", "", report.panel.name),
        ("panel", "reference", "", report.reference or ""),
        ("panel", "raters", "", len(figures.raters)),
        ("panel", "items", "", figures.items),
        ("panel", "ratings", "", figures.ratings),
        ("panel", "declined", "", figures.declined),
        ("panel", "unrated", "", report.unrated),
        ("panel", "left_out", "", report.left_out),
        ("panel", "fleiss_kappa", "", figures.fleiss_kappa),
        ("panel", "fleiss_kappa_reason", "", figures.fleiss_kappa_reason or ""),
        ("panel", "fleiss_kappa_se", "", figures.fleiss_kappa_se),
        *_interval("panel", "fleiss_kappa_ci", figures.fleiss_kappa_ci),
        ("panel", "krippendorff_alpha", "", figures.krippendorff_alpha),
        *_interval("panel", "krippendorff_alpha_ci", figures.krippendorff_alpha_ci),
        ("panel", "bootstrap_over", "", figures.bootstrap["over"]),
        ("panel", "bootstrap_replicates", "", figures.bootstrap["replicates"]),
    ]
    for row, values in report.pairwise.items():
        lines += [("pairwise", row, column, value) for column, value in values.items()]
    for code, stats in figures.per_class.items():
        lines += [("per_class", code, key, value) for key, value in stats.items()]
    for side in report.against_reference:
        result = side.agreement
        lines += [
            ("against_reference", side.rater, "n", result.n),
            ("against_reference", side.rater, "kappa", result.kappa),
            *_interval("against_reference", side.rater, result.kappa_ci, "kappa_ci"),
        ]
        for name, stats in result.groups.items():
            lines += [
                ("against_reference", side.rater, f"{name}_sensitivity", stats.sensitivity),
                ("against_reference", side.rater, f"{name}_specificity", stats.specificity),
            ]
    for side in report.intra_rater:
        key = f"{side.rater}: {side.second.name}"
        lines += [
            ("intra_rater", key, "n", side.agreement.n),
            ("intra_rater", key, "kappa", side.agreement.kappa),
            *_interval("intra_rater", key, side.agreement.kappa_ci, "kappa_ci"),
        ]
    for cell in report.disputed:
        key = str(cell.cell)
        lines += [("disputed", key, rater, answer) for rater, answer in cell.answers.items()]
        lines += [
            ("disputed", key, "reference", cell.reference),
            ("disputed", key, "vote", cell.vote.winner),
            ("disputed", key, "share", cell.vote.share),
        ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows((section, row, column, _text(value)) for section, row, column, value in lines)
    return out.getvalue()


def _interval(section: str, row: str, interval, name: str = ""):
    """An interval as its low and high lines: the column names the bound (under `name`)."""
    low, high = interval if interval else (None, None)
    if name:
        return [(section, row, f"{name}_low", low), (section, row, f"{name}_high", high)]
    return [(section, f"{row}_low", "", low), (section, f"{row}_high", "", high)]


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
