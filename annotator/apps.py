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

        from . import patches, screening, signals, tasks
        from .access import RULES, visible_users
        from .models import DetectionJob, PatchBatch

        leases.register(
            leases.JobKind(
                "patch batch", PatchBatch, tasks.queue_batch_again, patches.remove_partials
            ),
            leases.JobKind(
                "detection",
                DetectionJob,
                tasks.queue_detection_again,
                screening.remove_partials,
                screening.stopped_message,
            ),
        )
        register_visibility({**RULES, get_user_model(): visible_users})
        signals.connect()
