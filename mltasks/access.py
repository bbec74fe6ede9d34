"""Who sees which training runs and fold models: those who oversee the run's study,
registered with `annotator.access` so every API field is scoped by it."""

from __future__ import annotations

from django.db.models import QuerySet

from annotator.access import overseen_studies

from .models import FoldModel, TrainingRun


def visible_runs(user) -> QuerySet[TrainingRun]:
    return TrainingRun.objects.filter(split__dataset__study__in=overseen_studies(user))


def visible_fold_models(user) -> QuerySet[FoldModel]:
    return FoldModel.objects.filter(run__in=visible_runs(user))


RULES = {TrainingRun: visible_runs, FoldModel: visible_fold_models}
