"""Who may see and do what in a study: the per-study roles, as plain queries and checks."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet

from .models import Cell, Label, Membership, Round, Scan, Study

Role = Membership.Role
# Roles that see every label of a study (the agreement and curation work needs them).
OVERSEEING_ROLES = {Role.COORDINATOR, Role.DATA_SCIENTIST, Role.ADMIN}
MANAGING_ROLES = {Role.COORDINATOR, Role.ADMIN}
ANNOTATING_ROLES = {Role.ANNOTATOR, Role.ADMIN}


def visible_studies(user) -> QuerySet[Study]:
    """Studies the user is a member of (all of them for a superuser, none for anonymous)."""
    if not user.is_authenticated:
        return Study.objects.none()
    if user.is_superuser:
        return Study.objects.all()
    return Study.objects.filter(memberships__user=user).distinct()


def roles_in(user, study: Study) -> set[str]:
    if not user.is_authenticated:
        return set()
    if user.is_superuser:
        return set(Role.values)
    return set(Membership.objects.filter(user=user, study=study).values_list("role", flat=True))


def require_role(user, study: Study, roles: set[str], action: str) -> None:
    """Raise PermissionDenied naming the action and the roles it needs."""
    if not roles_in(user, study) & set(roles):
        needed = " or ".join(sorted(roles))
        raise PermissionDenied(f"To {action} in study {study.name} you need the role {needed}.")


def visible_scans(user) -> QuerySet[Scan]:
    return Scan.objects.filter(studies__in=visible_studies(user)).distinct()


def scan_for_tiles(user, scan_id: int) -> Scan | None:
    """The scan if the user may see it, in one query loading only what tiles need.

    Tiles are asked for by the dozen per screen, so this skips `visible_scans`' DISTINCT
    subquery: a join on the memberships and the first row is enough to answer "may see".
    """
    if not user.is_authenticated:
        return None
    scans = Scan.objects.only("id", "sha256", "file", "original_name").filter(pk=scan_id)
    if not user.is_superuser:
        scans = scans.filter(studies__memberships__user=user)
    return next(iter(scans.order_by()[:1]), None)


def visible_cells(user) -> QuerySet[Cell]:
    return Cell.objects.filter(study__in=visible_studies(user))


def visible_rounds(user) -> QuerySet[Round]:
    """A rater sees their own rounds; coordinators, data scientists and admins see all."""
    if not user.is_authenticated:
        return Round.objects.none()
    if user.is_superuser:
        return Round.objects.all()
    overseen = Membership.objects.filter(user=user, role__in=OVERSEEING_ROLES).values("study")
    return Round.objects.filter(rater=user) | Round.objects.filter(study__in=overseen)


def visible_labels(user) -> QuerySet[Label]:
    """Labels of the rounds the user may see; an annotator never sees another rater's labels."""
    return Label.objects.filter(round__in=visible_rounds(user))
