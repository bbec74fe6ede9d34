from django.apps import AppConfig


class AnnotatorConfig(AppConfig):
    """Scans, taxonomies, cells, labels, annotation rounds and agreement."""

    name = "annotator"
    verbose_name = "Annotation"
