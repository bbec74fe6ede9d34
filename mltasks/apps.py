from django.apps import AppConfig


def _queue_again(run_id: int) -> None:
    from .tasks import train

    train.delay(run_id)


def _remove_partials(run) -> None:
    from .runs import remove_partials

    remove_partials(run)


def _stopped_message(run, reason: str) -> str:
    from .runs import position, stopped_message

    return stopped_message(reason, position(run.progress or {}))


class MltasksConfig(AppConfig):
    """Training and inference (depends on datasets and annotator)."""

    name = "mltasks"
    verbose_name = "Machine learning"

    def ready(self) -> None:
        from core import leases
        from core.visibility import register_visibility

        from .access import RULES
        from .models import TrainingRun

        leases.register(
            leases.JobKind(
                label="training run",
                model=TrainingRun,
                requeue=_queue_again,
                remove_partials=_remove_partials,
                stopped_message=_stopped_message,
            )
        )
        register_visibility(RULES)
