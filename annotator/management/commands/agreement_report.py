"""manage.py agreement_report --study NAME [--a ROUND --b ROUND] [--level leaf]
[--collapse CODES] [--bootstrap N] --format json|csv|html [--out FILE]."""

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from annotator.models import Study
from annotator.report_plots import standalone_html
from annotator.reports import LEAF_LEVEL, build_report, report_csv, round_named
from core.errors import DomainError


class Command(BaseCommand):
    help = (
        "Agreement of rounds of a study: Cohen's kappa with its CI, confusion, sensitivity and "
        "specificity. Default pairs: gold against every other round, each repeat against the "
        "round it repeats."
    )

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True)
        parser.add_argument("--a", help="Reference round name (rows); give --b with it.")
        parser.add_argument("--b", help="Rater round name (columns).")
        parser.add_argument(
            "--level",
            default=LEAF_LEVEL,
            help="leaf: classes as labelled (class maps come with the data set curation).",
        )
        parser.add_argument(
            "--collapse", default="", help="Internal nodes to merge into one class, e.g. MYO,PMO."
        )
        parser.add_argument("--bootstrap", type=int, default=0, help="Patient bootstrap size.")
        parser.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap.")
        parser.add_argument("--format", choices=["json", "csv", "html"], default="json")
        parser.add_argument("--out", help="File to write (default: standard output).")

    def handle(self, *args, **options):
        try:
            text = self._report(options)
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        if options["out"]:
            with open(options["out"], "w", encoding="utf-8") as handle:
                handle.write(text)
            self.stderr.write(f"wrote {options['out']}")
        else:
            sys.stdout.write(text)

    def _report(self, options) -> str:
        study = Study.objects.filter(name=options["study"]).first()
        if study is None:
            raise DomainError(f"No study named {options['study']!r}.")
        if options["level"] != LEAF_LEVEL:
            raise DomainError(
                f"Unknown level {options['level']!r}: use leaf, with --collapse CODES to merge "
                "internal nodes."
            )
        if bool(options["a"]) != bool(options["b"]):
            raise DomainError("Give both --a and --b, or neither for the default pairs.")
        pairs = None
        if options["a"]:
            pairs = [(round_named(study, options["a"]), round_named(study, options["b"]))]
        collapse = [code.strip() for code in options["collapse"].split(",") if code.strip()]
        report = build_report(
            study,
            pairs=pairs,
            collapse=collapse,
            bootstrap=options["bootstrap"],
            seed=options["seed"],
        )
        if options["format"] == "csv":
            return report_csv(report)
        if options["format"] == "html":
            return standalone_html(report)
        return json.dumps(report.to_dict(), indent=2) + "\n"
