"""Deciding per patient: a rule on a group's share of a patient's counted cells ("lymphoblast
share > 20 %" for ALL, "blast share >= 20 %" for AML), evaluated over all of a study's patients
against their confirmed diagnoses, from the examiners' counts and, given a finished training
run, from the model's counts of the same patients side by side.

Only patients with a diagnosis code and at least one counted cell are evaluated; the others are
listed as left out, with why. Cells answered "cannot classify" are uncountable and are already
out of every count (annotator.differential, mltasks.smear_counts). The statistics are the
libraries': Wilson 95 % intervals from statsmodels, the ROC over the threshold and its AUC from
scikit-learn on the patients' shares.

Web-safe: nothing here imports torch (the model's counts are stored by the worker that ran it).
"""

from __future__ import annotations

import contextlib
import csv
import io
import operator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from annotator.diagnoses import study_patients
from annotator.differential import GroupCount, examiner_group_counts, find_group, share_interval
from annotator.models import Patient, Study
from core.errors import DomainError, NotFoundError
from core.params import whole_number

from .access import visible_runs
from .models import TrainingRun
from .smear_counts import model_group_counts

COMPARISONS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">")}
EXAMINERS, MODEL = "examiners", "model"
SOURCE_TITLES = {EXAMINERS: "the examiners' counts", MODEL: "the model's counts"}
NO_DIAGNOSIS = "no diagnosis code"
NOT_COUNTED = "no counted cells"
RUN_ID_MAX = 2**63 - 1


def _threshold(value) -> float:
    """A share from 0 to 1 (a number or its text), or a DomainError naming `threshold`."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        shown = value[:40] if isinstance(value, str) else value
        raise DomainError(
            f"threshold must be a share from 0 to 1 (0.2 for 20 %), not {shown!r}.", "threshold"
        )
    return float(value)


def _codes(value) -> frozenset[str]:
    """Diagnosis codes from "AML,ALL" or a list, compared without regard to case."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return frozenset(str(item).strip().casefold() for item in items if str(item).strip())


@dataclass(frozen=True)
class DecisionRule:
    """Call a patient positive when the group's share of their counted cells compares (`ge`:
    at least, `gt`: above) with the threshold; `positive` are the diagnosis codes that are
    truly positive (e.g. AML), every other code truly negative."""

    group: str
    threshold: float
    comparison: str = "ge"
    positive: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, *, group, threshold, comparison="ge", positive="") -> DecisionRule:
        """The rule from the API's query, a page's form or a command's options, each value
        checked with a message naming it (the group is checked against a study's taxonomy
        by `decide`)."""
        group = (group or "").strip()
        if not group:
            raise DomainError("Name the group whose share decides (e.g. blast).", "group")
        comparison = (comparison or "ge").strip().lower()
        if comparison not in COMPARISONS:
            raise DomainError(
                f"comparison must be ge or gt, not {comparison[:20]!r}.", "comparison"
            )
        codes = _codes(positive)
        if not codes:
            raise DomainError(
                "Name the diagnosis codes that count as positive (e.g. AML).", "positive"
            )
        return cls(group, _threshold(threshold), comparison, codes)

    def decides(self, share: float) -> bool:
        return COMPARISONS[self.comparison][0](share, self.threshold)

    def is_positive(self, diagnosis_code: str) -> bool:
        return diagnosis_code.casefold() in self.positive

    def describe(self) -> str:
        sign = COMPARISONS[self.comparison][1]
        codes = ", ".join(sorted(code.upper() for code in self.positive))
        return f"{self.group} share {sign} {self.threshold:g}; positive: {codes}"

    def to_dict(self) -> dict:
        return {
            "group": self.group,
            "comparison": self.comparison,
            "threshold": self.threshold,
            "positive": sorted(self.positive),
            "text": self.describe(),
        }


def proportion(count: int, total: int) -> dict:
    """count/total with its Wilson 95 % interval; value and interval None when total is 0."""
    interval = share_interval(count, total)
    return {
        "value": count / total if total > 0 else None,
        "ci": list(interval) if interval else None,
        "count": count,
        "of": total,
    }


@dataclass(frozen=True)
class PatientDecision:
    code: str
    diagnosis_code: str
    truly_positive: bool
    in_group: int
    counted: int
    share: float
    called_positive: bool

    @property
    def outcome(self) -> str:
        """TP, FP, TN or FN."""
        return ("T" if self.called_positive == self.truly_positive else "F") + (
            "P" if self.called_positive else "N"
        )


@dataclass
class SourceResult:
    """One source's decisions (examiners or model): per patient, the confusion, the rates with
    their intervals and the ROC over the threshold."""

    source: str
    decisions: list[PatientDecision]
    left_out: list[dict]
    confusion: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.confusion = {key: 0 for key in ("TP", "FP", "TN", "FN")}
        for decision in self.decisions:
            self.confusion[decision.outcome] += 1

    @cached_property
    def metrics(self) -> dict:
        tp, fp, tn, fn = (self.confusion[key] for key in ("TP", "FP", "TN", "FN"))
        return {
            "accuracy": proportion(tp + tn, tp + fp + tn + fn),
            "sensitivity": proportion(tp, tp + fn),
            "specificity": proportion(tn, tn + fp),
        }

    @cached_property
    def roc(self) -> dict:
        """False- and true-positive rates over every threshold of the shares, and the AUC;
        `reason` says why there is none (patients of one kind only)."""
        truth = np.array([d.truly_positive for d in self.decisions], dtype=bool)
        if truth.all() or not truth.any():
            return {"auc": None, "points": [], "reason": "needs positive and negative patients"}
        shares = np.array([d.share for d in self.decisions], dtype=float)
        fpr, tpr, thresholds = roc_curve(truth, shares)
        points = [
            {"fpr": float(x), "tpr": float(y), "threshold": float(t) if np.isfinite(t) else None}
            for x, y, t in zip(fpr, tpr, thresholds, strict=True)
        ]
        return {"auc": float(roc_auc_score(truth, shares)), "points": points, "reason": None}

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "evaluated": len(self.decisions),
            "confusion": self.confusion,
            **self.metrics,
            "roc": self.roc,
            "left_out": self.left_out,
        }


def evaluate(
    rule: DecisionRule, patients: list[Patient], counts: dict[int, GroupCount], source: str
) -> SourceResult:
    """Apply the rule to each patient's group count; patients without a diagnosis code or
    with nothing counted are left out, with the reason."""
    decisions, left_out = [], []
    for patient in patients:
        count = counts.get(patient.pk)
        if not patient.diagnosis_code:
            left_out.append({"patient": patient.code, "reason": NO_DIAGNOSIS})
        elif count is None or count.counted <= 0:
            left_out.append({"patient": patient.code, "reason": NOT_COUNTED})
        else:
            decisions.append(
                PatientDecision(
                    code=patient.code,
                    diagnosis_code=patient.diagnosis_code,
                    truly_positive=rule.is_positive(patient.diagnosis_code),
                    in_group=count.in_group,
                    counted=count.counted,
                    share=count.share,
                    called_positive=rule.decides(count.share),
                )
            )
    return SourceResult(source, decisions, left_out)


@dataclass
class DecisionReport:
    study: Study
    rule: DecisionRule
    run: TrainingRun | None
    patients: list[Patient]
    sources: list[SourceResult]

    def notes(self) -> list[str]:
        """What makes a figure missing or suspect: a positive code no patient has (a typo?),
        a source that evaluates nobody or patients of one kind only."""
        notes = []
        held = {patient.diagnosis_code.casefold() for patient in self.patients}
        unheld = sorted(code.upper() for code in self.rule.positive - held)
        if unheld:
            notes.append(f"No patient of the study has the diagnosis code {', '.join(unheld)}.")
        for result in self.sources:
            if not result.decisions:
                title = SOURCE_TITLES[result.source]
                notes.append(f"No patient could be evaluated from {title}.")
            elif result.roc["reason"]:
                title = SOURCE_TITLES[result.source]
                notes.append(f"No ROC from {title}: it {result.roc['reason']}.")
        return notes

    def rows(self) -> list[dict]:
        """Per patient of the study: its codes and each source's share and decision, or
        `left_out` with the reason where the source left the patient out."""
        decided = {r.source: {d.code: d for d in r.decisions} for r in self.sources}
        reasons = {r.source: {o["patient"]: o["reason"] for o in r.left_out} for r in self.sources}
        rows = []
        for patient in self.patients:
            row = {"patient": patient.code, "diagnosis_code": patient.diagnosis_code}
            for source, decisions in decided.items():
                decision = decisions.get(patient.code)
                row[source] = (
                    {
                        "share": decision.share,
                        "in_group": decision.in_group,
                        "counted": decision.counted,
                        "decision": "positive" if decision.called_positive else "negative",
                        "outcome": decision.outcome,
                    }
                    if decision
                    else {"left_out": reasons[source][patient.code]}
                )
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {
            "study": self.study.name,
            "rule": self.rule.to_dict(),
            "run": self.run.pk if self.run else None,
            "sources": {result.source: result.to_dict() for result in self.sources},
            "patients": self.rows(),
            "notes": self.notes(),
        }

    def csv(self) -> str:
        """One line per patient: codes, then per source its counts, share, decision (or "left
        out: " and why) and outcome."""
        sources = [result.source for result in self.sources]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        header = ["patient", "diagnosis_code"]
        for source in sources:
            header += [f"{source}_in_group", f"{source}_counted", f"{source}_share"]
            header += [f"{source}_decision", f"{source}_outcome"]
        writer.writerow(header)
        for row in self.rows():
            line = [row["patient"], row["diagnosis_code"]]
            for source in sources:
                cell = row[source]
                share = cell.get("share")
                line += [cell.get("in_group", ""), cell.get("counted", "")]
                line += ["" if share is None else f"{share:.6f}"]
                decision = cell.get("decision") or f"left out: {cell['left_out']}"
                line += [decision, cell.get("outcome", "")]
            writer.writerow(line)
        return out.getvalue()


def check_run(study: Study, run: TrainingRun) -> None:
    """The run must be a finished run trained on a data set of this study."""
    if run.split.dataset.study_id != study.pk:
        raise DomainError(f"Run {run.pk} was trained on another study's data.", "run")
    if run.status != TrainingRun.Status.DONE:
        raise DomainError(
            f"Run {run.pk} is {run.status}: only a finished run has counted the smears.", "run"
        )


def decide(study: Study, rule: DecisionRule, run: TrainingRun | None = None) -> DecisionReport:
    """The rule over all of the study's patients, from the examiners' counts and, with a run,
    the model's counts beside them."""
    find_group(study, rule.group)
    if run is not None:
        check_run(study, run)
    patients = list(study_patients(study))
    sources = [evaluate(rule, patients, examiner_group_counts(study, rule.group), EXAMINERS)]
    if run is not None:
        sources.append(evaluate(rule, patients, model_group_counts(run, rule.group), MODEL))
    return DecisionReport(study, rule, run, patients, sources)


def requested_report(user, study, query) -> DecisionReport:
    """The report a query (`group`, `threshold`, `comparison`, `positive`, `run`) asks for; a
    run the user cannot see is not found."""
    rule = DecisionRule.parse(
        group=query.get("group", ""),
        threshold=query.get("threshold", ""),
        comparison=query.get("comparison", "ge"),
        positive=query.get("positive", ""),
    )
    run = None
    if query.get("run"):
        run_id = whole_number(query["run"], "run", 1, RUN_ID_MAX)
        run = visible_runs(user).filter(pk=run_id).select_related("split__dataset").first()
        if run is None:
            raise NotFoundError(f"No training run {run_id} among those of the studies you oversee.")
    return decide(study, rule, run)
