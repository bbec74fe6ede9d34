"""manage.py join_training --run ID: this host's processes join a data-parallel run across hosts."""

from core.commands import DomainCommand
from mltasks import launch


class Command(DomainCommand):
    help = (
        "Start this host's share of a training run whose config has hosts > 1: waits until a "
        "training worker has started the run, then joins its rendezvous (TRAINING_RENDEZVOUS) "
        "with torchrun and trains until the run ends (docs/training.md, 'Several hosts')."
    )

    def add_arguments(self, parser):
        parser.add_argument("--run", type=int, required=True, help="The run's id.")
        parser.add_argument(
            "--wait", type=float, default=600, help="Seconds to wait for the run to start."
        )

    def handle(self, *args, **options):
        code = launch.join(options["run"], options["wait"])
        self.stdout.write(f"This host's processes of run {options['run']} ended ({code}).")
        if code:
            raise SystemExit(code)
