"""manage.py make_split --dataset NAME[@VERSION] --strategy stratified-kfold|patient-kfold|holdout
[--k 5] [--seed 0] [--fractions 0.7,0.1,0.2] [--grouped] [--study NAME]."""

from annotator.models import Study
from core.commands import DomainCommand
from core.errors import DomainError
from datasets.models import Split
from datasets.splits import K_RANGE, make_split
from datasets.versions import find_dataset


class Command(DomainCommand):
    help = "Split a data set version into folds; prints the split's id, hash and warnings."

    def add_arguments(self, parser):
        parser.add_argument("--dataset", required=True, help="Id, NAME or NAME@VERSION.")
        parser.add_argument("--study", help="The study, where several have the data set name.")
        parser.add_argument("--strategy", required=True, choices=Split.Strategy.values)
        parser.add_argument(
            "--k", type=int, default=5, help=f"Folds, {K_RANGE[0]} to {K_RANGE[1]}."
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--fractions", default="0.7,0.1,0.2", help="holdout: train,validation,test"
        )
        parser.add_argument("--grouped", action="store_true", help="holdout: whole patients only")

    def handle(self, *args, **options):
        study = Study.objects.named(options["study"]) if options["study"] else None
        dataset = find_dataset(options["dataset"], study)
        split, created = make_split(
            dataset,
            options["strategy"],
            None,
            k=options["k"],
            seed=options["seed"],
            fractions=_fractions(options["fractions"]),
            grouped=options["grouped"],
        )
        state = "made" if created else "exists already"
        self.stdout.write(
            f"split {split.pk} of {dataset.name} v{dataset.version} {state}: {split.strategy} "
            f"sha256 {split.sha256}"
        )
        for fold, counts in split.fold_counts.items():
            self.stdout.write(f"  fold {fold}: {sum(counts.values())} cells")
        if split.patient_check:
            check = split.patient_check
            self.stdout.write(
                f"  patients: {check['patients']}, in two folds: {check['patients_in_two_folds']}"
            )
        for warning in split.warnings:
            self.stdout.write(f"warning: {warning}")


def _fractions(text: str) -> dict:
    """The option's three numbers by part; their bounds are `SplitParameters`'."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise DomainError("--fractions takes three numbers: train,validation,test.") from None
    if len(values) != 3:
        raise DomainError("--fractions takes three numbers: train,validation,test.")
    return dict(zip(("train", "validation", "test"), values, strict=True))
