from django.apps import AppConfig


class MltasksConfig(AppConfig):
    """Training and inference (depends on datasets and annotator)."""

    name = "mltasks"
    verbose_name = "Machine learning"

    def ready(self) -> None:
        from annotator.access import register_visibility

        from .access import RULES

        for model, visible in RULES.items():
            register_visibility(model, visible)
