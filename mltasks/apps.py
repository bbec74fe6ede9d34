from django.apps import AppConfig


class MltasksConfig(AppConfig):
    """Training and inference (depends on datasets and annotator)."""

    name = "mltasks"
    verbose_name = "Machine learning"
