"""Who sees which training runs and fold models: those who oversee the run's study,
registered with `annotator.access` so every API field is scoped by it."""

from __future__ import annotations

from django.db.models import QuerySet

from annotator.access import overseen_studies, visible_scans, visible_studies

from .models import ClassifiedCell, FoldModel, ScanClassification, TrainingRun


def visible_runs(user) -> QuerySet[TrainingRun]:
    return TrainingRun.objects.filter(split__dataset__study__in=overseen_studies(user))


def visible_fold_models(user) -> QuerySet[FoldModel]:
    return FoldModel.objects.filter(run__in=visible_runs(user))


def visible_classifications(user) -> QuerySet[ScanClassification]:
    """Counts of the scans a user sees whole, by runs of a study the user is in: the overseers',
    and the examiners' who review its suspicious cells in the gold viewer (as they see the
    models' suggestions there). Never a scan of a study the user rates blinded, whatever their
    role in the run's study (`visible_scans` holds none)."""
    return ScanClassification.objects.filter(
        scan__in=visible_scans(user), run__split__dataset__study__in=visible_studies(user)
    )


def visible_classified_cells(user) -> QuerySet[ClassifiedCell]:
    return ClassifiedCell.objects.filter(job__in=visible_classifications(user))


RULES = {
    TrainingRun: visible_runs,
    FoldModel: visible_fold_models,
    ScanClassification: visible_classifications,
    ClassifiedCell: visible_classified_cells,
}
