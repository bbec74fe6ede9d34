"""Who may see and do what in a study: the per-study roles, as plain queries and checks."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth import get_user_model
from django.db.models import Count, Model, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from core.errors import ForbiddenError, NotFoundError

from .models import (
    Cell,
    DetectionJob,
    Label,
    Membership,
    ProposedCell,
    Round,
    Scan,
    Study,
    Taxonomy,
)

Role = Membership.Role
# Roles that see every label of a study (the agreement and curation work needs them).
OVERSEEING_ROLES = {Role.COORDINATOR, Role.DATA_SCIENTIST, Role.ADMIN}
MANAGING_ROLES = {Role.COORDINATOR, Role.ADMIN}
ANNOTATING_ROLES = {Role.ANNOTATOR, Role.ADMIN}
BLINDED_KINDS = (Round.Kind.BLINDED, Round.Kind.REPEAT)


def visible_studies(user) -> QuerySet[Study]:
    """Studies the user is a member of (all of them for a superuser, none for anonymous)."""
    if not user.is_authenticated:
        return Study.objects.none()
    if user.is_superuser:
        return Study.objects.all()
    return Study.objects.filter(memberships__user=user).distinct()


def overseen_studies(user) -> QuerySet[Study]:
    """Studies in which the user sees every label: coordinator, data scientist or admin."""
    if not user.is_authenticated:
        return Study.objects.none()
    if user.is_superuser:
        return Study.objects.all()
    return Study.objects.filter(
        memberships__user=user, memberships__role__in=OVERSEEING_ROLES
    ).distinct()


def managed_studies(user) -> QuerySet[Study]:
    """Studies to which the user adds scans and members: coordinator or admin."""
    if not user.is_authenticated:
        return Study.objects.none()
    if user.is_superuser:
        return Study.objects.all()
    return Study.objects.filter(
        memberships__user=user, memberships__role__in=MANAGING_ROLES
    ).distinct()


def roles_in(user, study: Study) -> set[str]:
    if not user.is_authenticated:
        return set()
    if user.is_superuser:
        return set(Role.values)
    return set(Membership.objects.filter(user=user, study=study).values_list("role", flat=True))


def require_role(user, study: Study, roles: set[str], action: str) -> None:
    """Raise ForbiddenError naming the action and the roles it needs."""
    if not roles_in(user, study) & set(roles):
        needed = " or ".join(sorted(roles))
        raise ForbiddenError(f"To {action} in study {study.name} you need the role {needed}.")


def overseen_study(user, study_name: str, what: str = "see this page") -> Study:
    """The named study of the user's, for the work of coordinators, data scientists and admins:
    NotFoundError for a study they are not in, ForbiddenError naming `what` for one they are in
    another role."""
    study = visible_studies(user).filter(name=study_name).first()
    if study is None:
        raise NotFoundError(f"No study named {study_name[:80]!r} among yours.")
    if not roles_in(user, study) & OVERSEEING_ROLES:
        raise ForbiddenError(f"Only coordinators, data scientists and admins {what}.")
    return study


def managed_study(user, study_name: str, action: str) -> Study:
    """The named study, for work only its coordinators and admins do (adding scans). Anybody
    else is refused alike, with ForbiddenError naming `action`: a member in another role learns
    the roles it needs, an outsider the same words whether or not such a study exists."""
    study = visible_studies(user).filter(name=study_name).first()
    if study is None:
        raise ForbiddenError(
            f"To {action} you need to be a coordinator or admin of the study; "
            f"no study named {study_name[:80]!r} is among yours."
        )
    require_role(user, study, MANAGING_ROLES, action)
    return study


def blinded_studies(user) -> QuerySet[Study]:
    """Studies in which the user rates a blinded round or a repeat.

    In such a study the user sees no scan, tile, cell, position or label through the ordinary
    endpoints, not even their own gold labels: their blinded rounds' cells are reached only
    through opaque item tokens (`annotator.blinding`). Otherwise a rater could look up where a
    patch came from, or what anybody (themselves included) said of it.
    """
    if not user.is_authenticated:
        return Study.objects.none()
    return Study.objects.filter(rounds__rater=user, rounds__kind__in=BLINDED_KINDS)


def visible_scans(user) -> QuerySet[Scan]:
    return (
        Scan.objects.filter(studies__in=visible_studies(user))
        .exclude(studies__in=blinded_studies(user))
        .distinct()
    )


def with_visible_scan_count(studies: QuerySet[Study], user) -> QuerySet[Study]:
    """The studies, each annotated `scan_count`: how many of its scans the user can list (what
    `visible_scans` holds for the study, so none in a study they rate blinded)."""
    listed = (
        Study.scans.through.objects.filter(
            study_id=OuterRef("pk"), scan__in=visible_scans(user).values("pk")
        )
        .order_by()
        .values("study_id")
        .annotate(n=Count("scan_id"))
        .values("n")
    )
    return studies.annotate(scan_count=Coalesce(Subquery(listed), 0))


def scan_for_tiles(user, scan_id: int) -> Scan | None:
    """The scan if the user may see it, in one query loading only what tiles need.

    Tiles are asked for by the dozen per screen, so this skips `visible_scans`' DISTINCT
    subquery: a join on the memberships and the first row is enough to answer "may see".
    """
    if not user.is_authenticated:
        return None
    scans = Scan.objects.only("id", "sha256", "file", "original_name").filter(pk=scan_id)
    if not user.is_superuser:
        scans = scans.filter(studies__memberships__user=user).exclude(
            studies__in=blinded_studies(user)
        )
    return next(iter(scans.order_by()[:1]), None)


def visible_cells(user) -> QuerySet[Cell]:
    """Cells of the user's studies, except those of a study they rate blinded and those on a
    scan of such a study (through another study the scan is in, its positions and patch
    would give the blinded cells away)."""
    blinded = blinded_studies(user)
    return (
        Cell.objects.filter(study__in=visible_studies(user))
        .exclude(study__in=blinded)
        .exclude(scan__in=Scan.objects.filter(studies__in=blinded))
    )


def visible_detection_jobs(user) -> QuerySet[DetectionJob]:
    """Detection jobs of the scans the user sees whole (none of a scan in a study they rate
    blinded: its proposals are positions on that scan)."""
    return DetectionJob.objects.filter(scan__in=visible_scans(user))


def visible_proposals(user) -> QuerySet[ProposedCell]:
    """Proposed cells of the scans the user sees whole, as for `visible_cells`: never on a
    scan of a study the user rates blinded."""
    return ProposedCell.objects.filter(scan__in=visible_scans(user))


def visible_rounds(user) -> QuerySet[Round]:
    """A rater sees their own rounds; coordinators, data scientists and admins see all."""
    if not user.is_authenticated:
        return Round.objects.none()
    if user.is_superuser:
        return Round.objects.all()
    overseen = Membership.objects.filter(user=user, role__in=OVERSEEING_ROLES).values("study")
    return Round.objects.filter(rater=user) | Round.objects.filter(study__in=overseen)


def visible_labels(user) -> QuerySet[Label]:
    """Labels of the rounds the user may see; an annotator never sees another rater's labels,
    and a blinded rater no label of the study they rate blinded."""
    return Label.objects.filter(round__in=visible_rounds(user)).exclude(
        round__study__in=blinded_studies(user)
    )


def visible_taxonomies(user) -> QuerySet[Taxonomy]:
    """Taxonomies are published trees: every logged-in user may read and use them."""
    return Taxonomy.objects.all() if user.is_authenticated else Taxonomy.objects.none()


def visible_users(user):
    """Users the requester may name (a round's rater): members of the studies the requester
    sees with open eyes. A study rated blind adds nobody: its member list is hidden."""
    members = Membership.objects.filter(
        study__in=visible_studies(user).exclude(pk__in=blinded_studies(user))
    ).values("user")
    return get_user_model().objects.filter(pk__in=members)


# Who sees which rows of the annotator's models (registered with core.visibility on start).
RULES: dict[type[Model], Callable[[object], QuerySet]] = {
    Study: visible_studies,
    Scan: visible_scans,
    Cell: visible_cells,
    Round: visible_rounds,
    Label: visible_labels,
    Taxonomy: visible_taxonomies,
    DetectionJob: visible_detection_jobs,
    ProposedCell: visible_proposals,
}
