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


def _queue_fold_again(job_id: int) -> None:
    from .tasks import train_fold

    train_fold.delay(job_id)


def _fold_released(job) -> None:
    from .fanout import released

    released(job)


def _queue_classification_again(job_id: int) -> None:
    from .tasks import classify_scan

    classify_scan.delay(job_id)


def _classification_stopped(job, reason: str) -> str:
    from .smear_classification import stopped_message

    return stopped_message(job, reason)


def _no_partials(job) -> None:
    """A classification writes its cells only when it ends done: nothing to remove."""


class MltasksConfig(AppConfig):
    """Training and inference (depends on datasets and annotator)."""

    name = "mltasks"
    verbose_name = "Machine learning"

    def ready(self) -> None:
        from core import leases
        from core.visibility import register_visibility

        from .access import RULES
        from .models import FoldJob, ScanClassification, TrainingRun

        leases.register(
            leases.JobKind(
                "training run", TrainingRun, _queue_again, _remove_partials, _stopped_message
            ),
            leases.JobKind(
                "fold of a training run",
                FoldJob,
                _queue_fold_again,
                _fold_released,
                _stopped_message,
            ),
            leases.JobKind(
                "classification of a scan",
                ScanClassification,
                _queue_classification_again,
                _no_partials,
                _classification_stopped,
            ),
        )
        register_visibility(RULES)
