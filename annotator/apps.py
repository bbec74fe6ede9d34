from django.apps import AppConfig


class AnnotatorConfig(AppConfig):
    """Scans, taxonomies, cells, labels, annotation rounds and agreement."""

    name = "annotator"
    verbose_name = "Annotation"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model

        # `schema` registers the extension that marks nullable answers in the OpenAPI schema.
        from core import leases, schema  # noqa: F401
        from core.visibility import register_visibility

        from . import patches, signals, tasks
        from .access import RULES, visible_users
        from .models import PatchBatch

        leases.register(
            leases.JobKind(
                label="patch batch",
                model=PatchBatch,
                requeue=tasks.queue_batch_again,
                remove_partials=patches.remove_partials,
            )
        )
        register_visibility({**RULES, get_user_model(): visible_users})
        signals.connect()
