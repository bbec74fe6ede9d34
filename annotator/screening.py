"""Detection as a job: start the leukocyte detector on a scan, run it under a lease, cancel it,
and read the cells it proposes.

A scan has at most one unfinished detection per detector version, and asking again for a scan
already detected with the current version returns that job (nothing is detected again) unless
a re-run is asked for. The detector's proposals are written in one transaction when the job
ends done; a failed or cancelled job writes none. A proposal is not a cell: it becomes one only
when someone accepts it, and a rejected one stays rejected when the same detector runs again.
"""

from __future__ import annotations

import dataclasses
import logging

import openslide
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from core import leases
from core.errors import ConflictError, DomainError, ForbiddenError, NotFoundError

from . import access, annotation, detection
from .detection_check import MATCH_UM as SAME_CELL_UM
from .detection_check import far_from
from .models import Cell, DetectionJob, Label, ProposedCell, Scan, Study, TaxonNode
from .scans import local_path

log = logging.getLogger(__name__)
Status = DetectionJob.Status


def detector_settings() -> detection.DetectorSettings:
    """The detector's defaults with the tile size of this deployment (`DETECTION_TILE_PX`):
    the tile bounds the memory a detection takes and does not change what it finds."""
    return dataclasses.replace(detection.DEFAULT_SETTINGS, tile_px=settings.DETECTION_TILE_PX)


def check_readable(scan: Scan) -> None:
    """Raise DomainError naming the problem when the detector could not read the scan: a file
    missing from storage or one OpenSlide cannot open, or a scan without microns per pixel."""
    name = scan.original_name
    try:
        slide = openslide.open_slide(str(local_path(scan)))
    except (openslide.OpenSlideError, OSError) as exc:
        raise DomainError(
            f"{name}: the scan's file cannot be opened for detection ({type(exc).__name__})",
            "scan",
        ) from None
    with slide:
        try:
            detection.working_grid(slide, name)
        except DomainError as exc:
            raise DomainError(str(exc), "scan") from None


def require_managing(scan: Scan, user, action: str) -> None:
    """Raise ForbiddenError unless the user coordinates (or administers) a study of the scan."""
    if user is not None and not access.managed_studies(user).filter(scans=scan).exists():
        raise ForbiddenError(f"Only coordinators and admins of the scan's study {action}.")


def start_detection(scan: Scan, user, *, rerun: bool = False) -> tuple[DetectionJob, bool]:
    """The scan's detection job with the current detector, and whether it is new (the caller
    queues a new one once committed).

    A coordinator or admin of one of the scan's studies may start it. A queued or running job
    is returned as it is; so is the last done one unless `rerun`. After a failed or cancelled
    job, or with `rerun`, a new job is made.
    """
    require_managing(scan, user, "find its cells")
    version = detection.DETECTOR_VERSION
    jobs = DetectionJob.objects.filter(scan=scan, detector_version=version)
    unfinished = jobs.filter(status__in=[Status.QUEUED, Status.RUNNING]).first()
    if unfinished is not None:
        return unfinished, False
    done = jobs.filter(status=Status.DONE).order_by("-finished_at", "-pk").first()
    if done is not None and not rerun:
        return done, False
    check_readable(scan)
    try:
        with transaction.atomic():
            job = DetectionJob.objects.create(scan=scan, detector_version=version, created_by=user)
    except IntegrityError:  # another request made one at the same moment: that one it is
        return jobs.get(status__in=[Status.QUEUED, Status.RUNNING]), False
    return job, True


def latest_job(scan: Scan) -> DetectionJob | None:
    """The scan's last detection job with the current detector, if any."""
    return (
        DetectionJob.objects.filter(scan=scan, detector_version=detection.DETECTOR_VERSION)
        .order_by("-pk")
        .first()
    )


def latest_jobs(scans) -> dict[int, DetectionJob]:
    """Scan id -> its last detection job with the current detector, for the scans that have
    one (one query for a list of scans)."""
    found = DetectionJob.objects.filter(
        scan__in=scans, detector_version=detection.DETECTOR_VERSION
    ).order_by("pk")
    return {job.scan_id: job for job in found}


def cancel_detection(job: DetectionJob, user) -> DetectionJob:
    """End a queued, running or orphaned job at once (cancelled); a worker running it stops at
    its next tile and writes nothing."""
    require_managing(job.scan, user, "cancel its detection")
    if not leases.cancel(DetectionJob, job.pk, Status.CANCELLED, error="Cancelled by its user."):
        job.refresh_from_db()
        raise DomainError(f"Detection {job.pk} has ended ({job.status}); nothing to cancel.")
    job.refresh_from_db()
    return job


def run_detection(job_id: int) -> DetectionJob | None:
    """Run a queued job to its end: done (its proposals written), failed or cancelled; None
    when the job is gone (its scan was deleted meanwhile).

    Claimed in one statement (core.leases): a task delivered twice detects once, one delivered
    again after its worker died detects from the start. The detector is asked to stop before
    each tile once the job is cancelled or the worker shuts down.
    """
    job = DetectionJob.objects.select_related("scan").filter(pk=job_id).first()
    if job is None:
        return None

    def work(lease: leases.Lease, should_stop) -> list[detection.Proposal]:
        return detection.detect_leukocytes(
            local_path(job.scan),
            settings=detector_settings(),
            progress=leases.ThrottledProgress(lease, "tiles"),
            should_stop=should_stop,
        )

    def publish(lease: leases.Lease, found: list[detection.Proposal]) -> None:
        _publish(job, lease, found)

    leases.work_under_lease(
        DetectionJob, job.pk, work, publish, stopped=detection.DetectionStopped, what="detection"
    )
    job.refresh_from_db()
    return job


def _publish(job: DetectionJob, lease: leases.Lease, found: list[detection.Proposal]) -> None:
    """Write the proposals and end the job done, in one transaction, if the job is still this
    worker's; a spot proposed before (rejected or accepted included) is kept as it is, and a
    leukocyte within SAME_CELL_UM of a cell already on the scan is not proposed: it is that
    cell (examiners often click cells before detection runs)."""
    cells = list(Cell.objects.filter(scan_id=job.scan_id).values_list("x", "y"))
    mpp = job.scan.mpp_x
    new = far_from([(p.x, p.y) for p in found], cells, SAME_CELL_UM / mpp if mpp else 0.0)
    rows = [
        ProposedCell(
            scan_id=job.scan_id,
            job=job,
            detector_version=job.detector_version,
            x=proposal.x,
            y=proposal.y,
            confidence=proposal.confidence,
        )
        for proposal, not_a_cell in zip(found, new, strict=True)
        if not_a_cell
    ]
    scan_proposals = ProposedCell.objects.filter(
        scan_id=job.scan_id, detector_version=job.detector_version
    )
    with transaction.atomic():
        before = scan_proposals.count()
        ProposedCell.objects.bulk_create(rows, batch_size=2000, ignore_conflicts=True)
        ended = lease.finish(
            status=Status.DONE,
            found_count=len(found),
            new_count=scan_proposals.count() - before,
            finished_at=timezone.now(),
        )
        if not ended:  # cancelled or taken over meanwhile: nothing written
            transaction.set_rollback(True)


def stopped_message(job: DetectionJob, reason: str) -> str:
    """The sentence of a job stopped because its worker shut down."""
    return leases.stopped_sentence(job, reason, "tiles", "find the scan's cells")


def remove_partials(job: DetectionJob) -> None:
    """Nothing to remove: a detection writes its proposals only when it ends done."""


def proposals(scan: Scan, user) -> QuerySet[ProposedCell]:
    """The scan's cells still proposed, for a user who sees the scan whole (NotFoundError
    otherwise, alike for a scan that does not exist and one in a study rated blind)."""
    if not access.visible_scans(user).filter(pk=scan.pk).exists():
        raise NotFoundError(f"No scan {scan.pk} among the scans of your studies.")
    return access.visible_proposals(user).filter(scan=scan, status=ProposedCell.Status.PROPOSED)


@dataclasses.dataclass(frozen=True)
class Accepted:
    """What accepting a proposal made: the new cell and, unless accepted unlabelled, its gold
    label."""

    proposal: ProposedCell
    cell: Cell
    label: Label | None


def _annotated_study(scan: Scan, user, study: Study | None) -> Study:
    """The study whose gold round an accepted proposal goes into: the named one, or the one
    study of the scan in which the user annotates (ForbiddenError where there is none,
    DomainError where several leave the choice open)."""
    studies = scan.studies.filter(
        pk__in=access.visible_studies(user).exclude(pk__in=access.blinded_studies(user))
    ).order_by("name")
    annotating = [s for s in studies if access.roles_in(user, s) & access.ANNOTATING_ROLES]
    if study is not None:
        if not scan.studies.filter(pk=study.pk).exists():
            raise DomainError(f"Scan {scan.pk} is not part of study {study.name}.", "study")
        if not any(s.pk == study.pk for s in annotating):
            raise ForbiddenError(
                f"To accept proposed cells on scan {scan.pk} in study {study.name} you need the "
                "role admin or annotator there."
            )
        return study
    if not annotating:
        raise ForbiddenError(
            f"To accept proposed cells on scan {scan.pk} you need the role admin or annotator "
            "in one of its studies."
        )
    if len(annotating) > 1:
        names = ", ".join(s.name for s in annotating)
        raise DomainError(
            f"Scan {scan.pk} is in several studies you annotate ({names}); name the study.",
            "study",
        )
    return annotating[0]


def _locked_proposal(proposal: ProposedCell, user) -> ProposedCell:
    """The proposal locked for a change: NotFoundError where the user does not see it."""
    locked = access.visible_proposals(user).select_for_update().filter(pk=proposal.pk).first()
    if locked is None:
        raise NotFoundError(f"No proposed cell {proposal.pk} on the scans you see.")
    return locked


def _open_proposal(proposal: ProposedCell, user) -> ProposedCell:
    """The proposal locked for a decision: NotFoundError where the user does not see it,
    ConflictError where someone decided it already."""
    locked = _locked_proposal(proposal, user)
    if locked.status != ProposedCell.Status.PROPOSED:
        raise ConflictError(
            f"Proposed cell {locked.pk} was {locked.status} already"
            + (f" (cell {locked.cell_id})" if locked.cell_id else "")
            + "; reload the scan's proposals."
        )
    return locked


def _decide(proposal: ProposedCell, user, status: str, cell: Cell | None = None) -> None:
    proposal.status = status
    proposal.cell = cell
    proposal.decided_by = user
    proposal.decided_at = timezone.now()
    proposal.save(update_fields=["status", "cell", "decided_by", "decided_at"])


@transaction.atomic
def accept_proposal(
    proposal: ProposedCell,
    user,
    node: TaxonNode | str | None = None,
    cannot_classify: bool = False,
    *,
    seconds_spent: float = 0.0,
    study: Study | None = None,
    labelled: bool = True,
) -> Accepted:
    """Make the proposal a cell of the study (the scan's one the user annotates) at its
    position and give it the user's gold label (`node` or `cannot_classify`), in one
    transaction; `labelled=False` makes an unlabelled cell."""
    proposal = _open_proposal(proposal, user)
    target = _annotated_study(proposal.scan, user, study)
    cell = annotation.create_cell(target, proposal.scan, proposal.x, proposal.y, user)
    label = None
    if labelled:
        label, _ = annotation.set_label(
            cell,
            annotation.gold_round_for_member(target, user),
            user,
            node=node,
            cannot_classify=cannot_classify,
            seconds_spent=seconds_spent,
            create_only=True,
        )
    _decide(proposal, user, ProposedCell.Status.ACCEPTED, cell)
    return Accepted(proposal, cell, label)


@transaction.atomic
def reject_proposal(proposal: ProposedCell, user, *, study: Study | None = None) -> ProposedCell:
    """Reject the proposal: it stays rejected, also when the same detector runs again."""
    proposal = _open_proposal(proposal, user)
    _annotated_study(proposal.scan, user, study)
    _decide(proposal, user, ProposedCell.Status.REJECTED)
    return proposal


@transaction.atomic
def restore_proposal(proposal: ProposedCell, user, *, study: Study | None = None) -> ProposedCell:
    """Take a rejection back: the proposal is proposed again (an undo of `reject_proposal`).

    Whoever may reject it may restore it. Only a rejected proposal is restored (ConflictError
    otherwise): an accepted one is a cell, which is deleted as a cell.
    """
    locked = _locked_proposal(proposal, user)
    if locked.status != ProposedCell.Status.REJECTED:
        raise ConflictError(
            f"Proposed cell {locked.pk} is {locked.status}, not rejected: only a rejection can "
            "be taken back."
        )
    _annotated_study(locked.scan, user, study)
    locked.status, locked.decided_by, locked.decided_at = ProposedCell.Status.PROPOSED, None, None
    locked.save(update_fields=["status", "decided_by", "decided_at"])
    return locked


@dataclasses.dataclass(frozen=True)
class AcceptedInView:
    """What `accept_in_view` did: how many proposals became cells, and which became which
    (`{"proposal": id, "cell": id}` in reading order)."""

    accepted: int
    cells: list[dict[str, int]]


@transaction.atomic
def accept_in_view(
    scan: Scan, user, x0: int, y0: int, x1: int, y1: int, *, study: Study | None = None
) -> AcceptedInView:
    """Accept every still-proposed cell inside the rectangle (level-0 pixels, edges included)
    as an unlabelled cell of the user's study; the examiner labels them later."""
    if x1 < x0 or y1 < y0:
        raise DomainError(f"The view ({x0}, {y0})-({x1}, {y1}) is empty: x1 >= x0, y1 >= y0.")
    inside = proposals(scan, user).filter(
        x__gte=x0, x__lte=x1, y__gte=y0, y__lte=y1, x__lt=scan.width, y__lt=scan.height
    )
    target = _annotated_study(scan, user, study)
    locked = list(inside.select_for_update(of=("self",)))
    # One INSERT and one UPDATE for the whole view (a view may hold hundreds of proposals).
    made = Cell.objects.bulk_create(
        [Cell(study=target, scan=scan, x=p.x, y=p.y, created_by=user) for p in locked]
    )
    now = timezone.now()
    for proposal, cell in zip(locked, made, strict=True):
        proposal.status, proposal.cell = ProposedCell.Status.ACCEPTED, cell
        proposal.decided_by, proposal.decided_at = user, now
    ProposedCell.objects.bulk_update(locked, ["status", "cell", "decided_by", "decided_at"])
    cells = [{"proposal": p.pk, "cell": c.pk} for p, c in zip(locked, made, strict=True)]
    return AcceptedInView(len(cells), cells)
