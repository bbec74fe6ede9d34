from django.apps import AppConfig


class AnnotatorConfig(AppConfig):
    """Scans, taxonomies, cells, labels, annotation rounds and agreement."""

    name = "annotator"
    verbose_name = "Annotation"

    def ready(self):
        # Registers the schema extension that marks nullable answers (core.schema).
        from core import schema  # noqa: F401
