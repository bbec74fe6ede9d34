"""manage.py train --split SPLIT [--config FILE] [--set key=value ...] [--background]."""

import json
import time

from django.core.management.base import CommandError

from core.commands import DomainCommand
from core.errors import DomainError
from datasets.splits import find_split
from mltasks import run_config, runs
from mltasks.models import TrainingRun
from mltasks.tasks import queue_run


class Command(DomainCommand):
    help = (
        "Train one ResNeXt per fold of a split and write the report. Runs here by default; "
        "--background queues it for a worker on the training queue."
    )

    def add_arguments(self, parser):
        parser.add_argument("--split", required=True, help="Split id or hash prefix.")
        parser.add_argument("--config", help="A JSON file of config keys (docs/training.md).")
        parser.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", help="One config key."
        )
        parser.add_argument("--background", action="store_true")

    def handle(self, *args, **options):
        config = _config(options["config"], options["set"])
        split = find_split(options["split"])
        if not options["background"]:
            _check_device_here(config)
        run = runs.start_run(split, None, config)
        self.stdout.write(f"training run {run.pk} on split {split.pk} ({split.sha256[:12]})")
        if options["background"]:
            queue_run(run)
            self.stdout.write("queued for the training worker")
            return
        started = time.monotonic()
        run = runs.execute(run.pk)
        if run.status != TrainingRun.Status.DONE:
            raise CommandError(f"run {run.pk} {run.status}: {run.error.splitlines()[0]}")
        self.stdout.write(
            f"run {run.pk} done in {time.monotonic() - started:.0f} s on {run.device}"
        )
        self.stdout.write(f"  {'class':<6} {'images':>7} {'precision':>17} {'sensitivity':>17}")
        for code, row in run.report["per_class"].items():
            cells = [_spread(row[rate]) for rate in ("precision", "sensitivity")]
            self.stdout.write(f"  {code:<6} {row['images']:>7} {cells[0]:>17} {cells[1]:>17}")
        for group, roc in run.report["groups"].items():
            self.stdout.write(f"  {group}: AUC {_spread(roc.get('auc') or {})}")
        for warning in run.report.get("warnings", []):
            self.stdout.write(f"  {warning}")


def _check_device_here(config: dict) -> None:
    """A run trained in this process needs its device on this machine (torch: imported only
    when the command trains here, not for --background)."""
    from mltasks import training

    training.check_device(run_config.load_config(config))


def _spread(value: dict) -> str:
    if value.get("mean") is None:
        return "-"
    sd = value.get("sd")
    return f"{value['mean']:.3f} ± {sd:.3f}" if sd is not None else f"{value['mean']:.3f}"


def _config(path: str | None, pairs: list[str]) -> dict:
    config = {}
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError) as exc:
            raise DomainError(f"Cannot read the config file {path}: {exc}") from None
        if not isinstance(config, dict):
            raise DomainError(f"{path} must hold a JSON object of config keys.")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise DomainError(f"--set takes KEY=VALUE, not {pair!r}.")
        try:
            config[key] = json.loads(value)
        except ValueError:
            config[key] = value
    return config
