from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    """Curation of labelled cells into versioned data sets (depends on annotator only)."""

    name = "datasets"
    verbose_name = "Data sets"

    def ready(self) -> None:
        from core import leases
        from core.visibility import register_visibility

        from . import exports, tasks
        from .access import RULES
        from .models import Export

        leases.register(
            leases.JobKind(
                label="export",
                model=Export,
                requeue=lambda pk: tasks.write_export.delay(pk),
                remove_partials=exports.remove_partials,
                stopped_message=exports.stopped_message,
            )
        )
        register_visibility(RULES)
