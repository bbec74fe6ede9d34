"""The model's count of a smear: a finished run's models classify every leukocyte found on a
scan, and the classes they give make a differential count per scan and per patient, beside the
examiners' count of the same scan or patient.

The leukocytes of a scan are the detector's proposals that nobody rejected (proposed or
accepted) and the cells examiners placed by hand in the run's study; an accepted proposal is
one leukocyte, not two. A cell the examiners answered "cannot classify" is uncountable and stays
out of every count, the model's too: the model has no such answer and would count it as
something. A cell counts as the class the models' averaged probabilities make most likely;
group shares (blast, atypical, ...) count the cells whose class answers "yes" to the group's
question, so the model's and the examiners' figures count the same way.

This module is web-safe (no torch); mltasks.smear_classification runs the models.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from annotator import access
from annotator.detection import DETECTOR_VERSION
from annotator.detection_check import MATCH_UM, far_from
from annotator.differential import (
    GroupCount,
    examiner_counts,
    find_group,
    group_count,
    share_row,
    share_rows,
    uncountable_cells,
)
from annotator.models import Cell, ProposedCell, Scan, Study
from annotator.taxonomy import group_leaf_codes
from core import leases
from core.errors import DomainError, NotFoundError
from datasets.classmaps import class_groups

from .access import visible_classifications
from .models import ClassifiedCell, ScanClassification, TrainingRun

Status = ScanClassification.Status


@dataclass(frozen=True)
class Leukocyte:
    """A spot to classify: where it is, and the proposal and/or cell it is."""

    x: int
    y: int
    proposal_id: int | None
    cell_id: int | None


# A proposal this close to a cell placed by hand is that cell, found again by the detector
# (an examiner's click lies on the cell, not always on its nucleus's centre): the match radius
# of annotator.detection_check.
SAME_CELL_UM = MATCH_UM


def leukocytes(scan: Scan, study: Study) -> list[Leukocyte]:
    """Every leukocyte found on the scan for the study, once each, ordered by position: the
    study's cells on the scan (placed by hand or accepted proposals), proposals accepted into
    another study's cell, and the current detector's proposals still open, except those within
    SAME_CELL_UM of a cell, which are that cell again. A proposal whose cell was deleted is
    no leukocyte any more."""
    found = ProposedCell.objects.filter(
        scan=scan,
        detector_version=DETECTOR_VERSION,
        status__in=[ProposedCell.Status.PROPOSED, ProposedCell.Status.ACCEPTED],
    ).values_list("pk", "x", "y", "status", "cell_id")
    proposals = {cell: pk for pk, _, _, _, cell in found if cell}
    cells = Cell.objects.filter(scan=scan, study=study).values_list("pk", "x", "y")
    spots = [Leukocyte(x, y, proposals.get(pk), pk) for pk, x, y in cells]
    ours = {spot.cell_id for spot in spots}
    elsewhere = [(pk, x, y) for pk, x, y, _, cell in found if cell and cell not in ours]
    still_open = [(pk, x, y) for pk, x, y, status, _ in found if status == "proposed"]
    if scan.mpp_x:
        apart = far_from(
            [(x, y) for _, x, y in still_open],
            [(spot.x, spot.y) for spot in spots],
            SAME_CELL_UM / scan.mpp_x,
        )
        still_open = [item for item, keep in zip(still_open, apart, strict=True) if keep]
    spots += [Leukocyte(x, y, pk, None) for pk, x, y in elsewhere + still_open]
    # Two cells placed on one pixel are one leukocyte (nothing stops an import doing that).
    by_position = {}
    for spot in spots:
        by_position.setdefault((spot.x, spot.y), spot)
    return sorted(by_position.values(), key=lambda spot: (spot.y, spot.x))


def _run_and_study(run: TrainingRun) -> Study:
    if run.status != TrainingRun.Status.DONE:
        raise DomainError(f"Run {run.pk} is {run.status}; only a finished run can count.", "run")
    return run.split.dataset.study


def start_classification(
    run: TrainingRun, scan: Scan, user, *, rerun: bool = False
) -> tuple[ScanClassification, bool]:
    """The scan's classification by the run, and whether it is new (the caller queues a new one
    once committed). A queued or running one is returned as it is; so is the last done one
    unless `rerun` (after new cells were found, say)."""
    study = _run_and_study(run)
    if user is not None:
        access.require_role(user, study, access.OVERSEEING_ROLES, "count a scan with a model")
    if not study.scans.filter(pk=scan.pk).exists():
        raise DomainError(f"Scan {scan.pk} is not part of study {study.name}.", "scan")
    jobs = ScanClassification.objects.filter(run=run, scan=scan)
    unfinished = jobs.filter(status__in=leases.UNFINISHED).first()
    if unfinished is not None:
        return unfinished, False
    done = jobs.filter(status=Status.DONE).order_by("-pk").first()
    if done is not None and not rerun:
        return done, False
    if not leukocytes(scan, study):
        raise DomainError(
            f"Scan {scan.pk} has no cells to count yet: find its cells first (Find cells).", "scan"
        )
    try:
        with transaction.atomic():
            job = ScanClassification.objects.create(run=run, scan=scan, created_by=user)
    except IntegrityError:  # another request made one at the same moment: that one it is
        return jobs.get(status__in=leases.UNFINISHED), False
    return job, True


def cancel_classification(job: ScanClassification, user) -> ScanClassification:
    """End a queued or running classification at once (cancelled); its worker writes nothing."""
    access.require_role(
        user, job.run.split.dataset.study, access.OVERSEEING_ROLES, "cancel a count"
    )
    if not leases.cancel(ScanClassification, job.pk, Status.CANCELLED, error="Cancelled."):
        job.refresh_from_db()
        raise DomainError(f"Classification {job.pk} has ended ({job.status}); nothing to cancel.")
    job.refresh_from_db()
    return job


def find_classification(user, pk: int) -> ScanClassification:
    job = visible_classifications(user).filter(pk=pk).select_related("run", "scan").first()
    if job is None:
        raise NotFoundError(f"No classification {pk} among those of the studies you oversee.")
    return job


def latest_done(run: TrainingRun, scans) -> dict[int, ScanClassification]:
    """Per scan id, the run's last finished classification of it."""
    done = ScanClassification.objects.filter(run=run, scan__in=scans, status=Status.DONE)
    latest: dict[int, ScanClassification] = {}
    for job in done.order_by("pk"):
        latest[job.scan_id] = job
    return latest


@dataclass
class ModelCount:
    """The classes the model gave the counted cells of some scans, and the cells left out."""

    classes: Counter
    uncountable: int
    scans: int


def _model_counts(run: TrainingRun, jobs: list[ScanClassification]) -> ModelCount:
    per_scan = model_counts_by_scan(jobs, uncountable_cells(run.split.dataset.study))
    return ModelCount(
        sum((count.classes for count in per_scan.values()), Counter()),
        sum(count.uncountable for count in per_scan.values()),
        len(jobs),
    )


def model_counts_by_scan(jobs, uncountable: set[int]) -> dict[int, ModelCount]:
    """Per scan id, the model's classes of the counted cells of its job among `jobs`."""
    counts = {job.scan_id: ModelCount(Counter(), 0, 1) for job in jobs}
    found = ClassifiedCell.objects.filter(job__in=jobs).values_list(
        "job__scan_id", "cell_id", "predicted"
    )
    for scan, cell, predicted in found.iterator():
        if cell in uncountable:
            counts[scan].uncountable += 1
        else:
            counts[scan].classes[predicted] += 1
    return counts


OUTSIDE = "other"  # the examiners' leaves no class of the run holds


def _examiner_differential(run: TrainingRun, leaf_counts: Counter) -> dict:
    """The examiners' leaf counts in the run's classes (leaves no class holds as "other"),
    and their group shares from the leaves themselves."""
    dataset = run.split.dataset
    class_of = dataset.class_map.class_of() if dataset.class_map else {}
    counts: Counter = Counter()
    for leaf, n in leaf_counts.items():
        klass = class_of.get(leaf, leaf)
        counts[klass if klass in dataset.classes else OUTSIDE] += n
    order = list(dataset.classes) + ([OUTSIDE] if counts[OUTSIDE] else [])
    total = sum(leaf_counts.values())
    groups = [
        {
            "group": group.name,
            **share_row(group_count(leaf_counts, group_leaf_codes(group)).in_group, total),
        }
        for group in dataset.study.taxonomy.groups.prefetch_related("nodes").order_by("name")
    ]
    return {"counted": total, "classes": share_rows(counts, order), "groups": groups}


def _group_rows(run: TrainingRun, counts: Counter) -> list[dict]:
    dataset = run.split.dataset
    groups = class_groups(dataset.study, dataset.classes, dataset.class_map)
    total = sum(counts.values())
    return [
        {"group": name, **share_row(sum(counts.get(klass, 0) for klass in members), total)}
        for name, members in sorted(groups.items())
    ]


def _differential(run: TrainingRun, counts: Counter) -> dict:
    return {
        "counted": sum(counts.values()),
        "classes": share_rows(counts, list(run.split.dataset.classes)),
        "groups": _group_rows(run, counts),
    }


def _count_report(
    run: TrainingRun,
    jobs: list[ScanClassification],
    leaf_counts: Counter,
    examiner_uncountable: int,
) -> dict:
    model = _model_counts(run, jobs)
    return {
        "run": run.pk,
        "classes": list(run.split.dataset.classes),
        "model": {
            **_differential(run, model.classes),
            "uncountable": model.uncountable,
            "scans_counted": model.scans,
        },
        "examiners": {
            **_examiner_differential(run, leaf_counts),
            "uncountable": examiner_uncountable,
        }
        if leaf_counts or examiner_uncountable
        else None,
    }


def scan_report(run: TrainingRun, scan: Scan) -> dict:
    """The model's differential count of a scan (its last finished classification by the run)
    beside the examiners' count of the same scan, with shares and Wilson intervals."""
    study = run.split.dataset.study
    job = latest_done(run, [scan]).get(scan.pk)
    examiners = examiner_counts(study, scan_ids=[scan.pk])
    report = _count_report(
        run,
        [job] if job else [],
        examiners.by_scan.get(scan.pk, Counter()),
        examiners.uncountable_by_scan.get(scan.pk, 0),
    )
    return {"scan": scan.pk, "classification": job.pk if job else None, **report}


def patient_report(run: TrainingRun, patient) -> dict:
    """The model's count pooled over the patient's classified scans in the run's study, beside
    the examiners' count of the patient's cells."""
    study = run.split.dataset.study
    scans = study.scans.filter(patient=patient)
    jobs = list(latest_done(run, scans).values())
    examiners = examiner_counts(study)
    report = _count_report(
        run,
        jobs,
        examiners.by_patient.get(patient.pk, Counter()),
        examiners.uncountable_by_patient.get(patient.pk, 0),
    )
    return {"patient": patient.code, "scans": scans.count(), **report}


def overview(run: TrainingRun) -> dict:
    """Every scan of the run's study with the leukocytes found on it, its last classification
    and the group shares by the model and by the examiners; the same pooled per patient."""
    study = _run_and_study(run)
    scans = list(study.scans.select_related("patient").order_by("original_name", "pk"))
    last = {job.scan_id: job for job in ScanClassification.objects.filter(run=run).order_by("pk")}
    done = latest_done(run, scans)
    model = model_counts_by_scan(list(done.values()), uncountable_cells(study))
    examiners = examiner_counts(study)
    scan_rows = []
    pooled: dict[int, Counter] = {}
    for scan in scans:
        counted = model.get(scan.pk)
        if counted is not None and scan.patient_id:
            pooled[scan.patient_id] = pooled.get(scan.patient_id, Counter()) + counted.classes
        scan_rows.append(
            {
                "scan": scan,
                "found": len(leukocytes(scan, study)),
                "job": last.get(scan.pk),
                "model": _differential(run, counted.classes) if counted else None,
                "examiners": _examiner_differential(run, examiners.by_scan.get(scan.pk, Counter())),
            }
        )
    patients = {scan.patient_id: scan.patient for scan in scans if scan.patient_id}
    patient_rows = [
        {
            "patient": patient,
            "model": _differential(run, pooled[pk]) if pk in pooled else None,
            "examiners": _examiner_differential(run, examiners.by_patient.get(pk, Counter())),
        }
        for pk, patient in sorted(patients.items(), key=lambda item: item[1].code)
    ]
    groups = sorted(study.taxonomy.groups.values_list("name", flat=True))
    return {"groups": groups, "scans": scan_rows, "patients": patient_rows}


def model_group_counts(run: TrainingRun, group_name: str) -> dict[int, GroupCount]:
    """Per patient id: of the cells the model counted on the patient's classified scans, how
    many it put in a class of the group."""
    study = _run_and_study(run)
    find_group(study, group_name)
    dataset = run.split.dataset
    members = class_groups(study, dataset.classes, dataset.class_map)[group_name]
    jobs = latest_done(run, study.scans.filter(patient__isnull=False))
    patient_of = dict(study.scans.filter(pk__in=list(jobs)).values_list("pk", "patient_id"))
    per_scan = model_counts_by_scan(list(jobs.values()), uncountable_cells(study))
    in_group: Counter = Counter()
    counted: Counter = Counter()
    for scan, count in per_scan.items():
        patient = patient_of[scan]
        counted[patient] += sum(count.classes.values())
        in_group[patient] += sum(count.classes.get(klass, 0) for klass in members)
    return {patient: GroupCount(in_group[patient], n) for patient, n in counted.items() if n}


def gallery(
    job: ScanClassification,
    group_name: str,
    *,
    limit: int = 60,
    offset: int = 0,
    leave_out_uncountable: bool = True,
):
    """The classification's cells ranked by the models' P(group), highest first, as
    (classified cell, P(group)) pairs, and how many there are. Uncountable cells stay out of it
    for overseers; an examiner's gallery keeps them, since which cells they are is other
    examiners' answers, which an examiner does not see."""
    run = job.run
    study = run.split.dataset.study
    find_group(study, group_name)
    dataset = run.split.dataset
    members = class_groups(study, dataset.classes, dataset.class_map)[group_name]
    columns = [i for i, klass in enumerate(dataset.classes) if klass in members]
    uncountable = uncountable_cells(study) if leave_out_uncountable else set()
    scored = [
        (cell, sum(cell.probabilities[i] for i in columns))
        for cell in job.cells.all()
        if cell.cell_id not in uncountable
    ]
    cells = sorted(scored, key=lambda pair: (-pair[1], pair[0].pk))
    return len(cells), cells[offset : offset + limit]


def gallery_links(user, study, scan) -> list:
    """The annotation screen's links to the galleries of the scan's last finished counts that
    the user may see, one per run of the study (core.scan_links)."""
    from django.urls import reverse

    from core.scan_links import ScanLink

    done = visible_classifications(user).filter(
        scan=scan, status=Status.DONE, run__split__dataset__study=study
    )
    runs = sorted(set(done.values_list("run_id", flat=True)), reverse=True)
    return [
        ScanLink(f"Cells by P(group), run {run}", reverse("cell-gallery", args=[run, scan.pk]))
        for run in runs
    ]
