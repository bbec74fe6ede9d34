from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    """Curation of labelled cells into versioned data sets (depends on annotator only)."""

    name = "datasets"
    verbose_name = "Data sets"

    def ready(self) -> None:
        from annotator.access import register_visibility

        from .access import RULES

        for model, visible in RULES.items():
            register_visibility(model, visible)
