from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    """Curation of labelled cells into versioned data sets (depends on annotator only)."""

    name = "datasets"
    verbose_name = "Data sets"
