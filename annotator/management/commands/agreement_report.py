"""manage.py agreement_report --study NAME [--a ROUND --b ROUND] [--level leaf]
[--collapse CODES] [--bootstrap N] [--panel [PANEL] [--panel-bootstrap N] [--panel-seed N]
[--disputed N]] --format json|csv|html [--out FILE]."""

import json
import sys

from annotator.models import Study
from annotator.panel_reports import (
    DEFAULT_DISPUTED,
    DEFAULT_REPLICATES,
    MAX_REPLICATES,
    PanelRequest,
    panel_csv,
)
from annotator.report_plots import standalone_html
from annotator.reports import LEAF_LEVEL, MAX_BOOTSTRAP, ReportRequest, report_csv
from core.commands import DomainCommand


class Command(DomainCommand):
    help = (
        "Agreement of rounds of a study: Cohen's kappa with its CI, confusion, sensitivity and "
        "specificity. Default pairs: gold against every other round, each repeat against the "
        "round it repeats."
    )

    def add_arguments(self, parser):
        # The report's options are read by ReportRequest.parse, as the API's query is.
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
        parser.add_argument(
            "--bootstrap", default="0", help=f"Patient bootstrap size, 0 to {MAX_BOOTSTRAP}."
        )
        parser.add_argument("--seed", default="0", help="Seed of the bootstrap.")
        parser.add_argument(
            "--panel",
            nargs="?",
            const="",
            help="Add the panel section: the named panel, or with no name the study's latest. "
            "Its CSV is the panel's alone.",
        )
        parser.add_argument(
            "--panel-bootstrap",
            default=str(DEFAULT_REPLICATES),
            help=f"Replicates of the bootstrap of the panel's alpha, 0 to {MAX_REPLICATES}.",
        )
        parser.add_argument("--panel-seed", default="0", help="Seed of the panel's bootstrap.")
        parser.add_argument(
            "--disputed",
            default=str(DEFAULT_DISPUTED),
            help="How many of the most disputed cells of the panel to list.",
        )
        parser.add_argument("--format", choices=["json", "csv", "html"], default="json")
        parser.add_argument("--out", help="File to write (default: standard output).")

    def handle(self, *args, **options):
        study = Study.objects.named(options["study"])
        report = ReportRequest.parse(options).build(study)
        panel = None
        if options["panel"] is not None:
            panel = PanelRequest.parse(options, panel=options["panel"]).build(study)
        if options["format"] == "csv":
            text = panel_csv(panel) if panel else report_csv(report)
        elif options["format"] == "html":
            text = standalone_html(report, panel)
        else:
            body = report.to_dict()
            if panel:
                body["panel"] = panel.to_dict()
            text = json.dumps(body, indent=2) + "\n"
        if options["out"]:
            with open(options["out"], "w", encoding="utf-8") as handle:
                handle.write(text)
            self.stderr.write(f"wrote {options['out']}")
        else:
            sys.stdout.write(text)
