"""Tile links follow access: whatever can take a scan out of a user's sight withdraws the tile
links they hold (`tile_links.withdraw`), at the moment of the change, and once more when the
transaction commits (a link issued in between, from the state before, dies then too).

Signals, because these changes come from many places (the API, the admin, commands, the demo)
and a forgotten call would be a leak. Everything that widens access needs nothing: old links
stay valid and new ones are issued from the new state.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from . import tile_links, tile_store
from .access import BLINDED_KINDS
from .models import Membership, Round, Scan, Study


def _withdraw(user_ids: Iterable[int]) -> None:
    user_ids = set(user_ids)
    if not user_ids:
        return
    tile_links.withdraw(user_ids)
    transaction.on_commit(lambda: tile_links.withdraw(user_ids))


def _round_saved(sender, instance: Round, **kwargs) -> None:
    if instance.kind in BLINDED_KINDS:
        _withdraw([instance.rater_id])


def _membership_deleted(sender, instance: Membership, **kwargs) -> None:
    _withdraw([instance.user_id])


def _study_scans_changed(sender, instance, action: str, reverse: bool, pk_set, **kwargs) -> None:
    """A scan added to a study hides it from the study's blinded raters; a scan taken out of a
    study may hide it from the study's members."""
    if action not in ("post_add", "pre_remove", "pre_clear"):
        return
    if not reverse:
        studies = [instance.pk]
    elif pk_set is not None:
        studies = list(pk_set)
    else:
        studies = list(instance.studies.values_list("pk", flat=True))
    if action == "post_add":
        users = Round.objects.filter(study__in=studies, kind__in=BLINDED_KINDS)
        _withdraw(users.values_list("rater_id", flat=True))
    else:
        members = Membership.objects.filter(study__in=studies)
        _withdraw(members.values_list("user_id", flat=True))


def _user_about_to_change(sender, instance, update_fields=None, **kwargs) -> None:
    """A user switched off, or no longer a superuser (who sees every scan), loses their links."""
    if instance.pk is None or (update_fields is not None and set(update_fields) == {"last_login"}):
        return
    before = sender.objects.filter(pk=instance.pk).values("is_active", "is_superuser").first()
    if before is None:
        return
    if (before["is_active"] and not instance.is_active) or (
        before["is_superuser"] and not instance.is_superuser
    ):
        _withdraw([instance.pk])


def _user_deleted(sender, instance, **kwargs) -> None:
    _withdraw([instance.pk])


def _scan_deleted(sender, instance: Scan, **kwargs) -> None:
    tile_links.forget_scan(instance.pk)
    scan_id = instance.pk
    transaction.on_commit(lambda: tile_store.remove_scan(scan_id))


def connect() -> None:
    user_model = get_user_model()
    post_save.connect(_round_saved, sender=Round, dispatch_uid="tiles-round")
    post_delete.connect(_membership_deleted, sender=Membership, dispatch_uid="tiles-member")
    scans_of_studies = Study.scans.through
    m2m_changed.connect(_study_scans_changed, sender=scans_of_studies, dispatch_uid="tiles-scans")
    pre_save.connect(_user_about_to_change, sender=user_model, dispatch_uid="tiles-user")
    post_delete.connect(_user_deleted, sender=user_model, dispatch_uid="tiles-user-gone")
    post_delete.connect(_scan_deleted, sender=Scan, dispatch_uid="tiles-scan-gone")
