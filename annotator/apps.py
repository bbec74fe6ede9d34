from django.apps import AppConfig


class AnnotatorConfig(AppConfig):
    """Scans, taxonomies, cells, labels, annotation rounds and agreement."""

    name = "annotator"
    verbose_name = "Annotation"

    def ready(self) -> None:
        # Registers the schema extension that marks nullable answers (core.schema).
        from core import leases, schema  # noqa: F401

        from . import patches, tasks
        from .models import PatchBatch

        leases.register(
            leases.JobKind(
                label="patch batch",
                model=PatchBatch,
                requeue=tasks.queue_batch_again,
                remove_partials=patches.remove_partials,
            )
        )
