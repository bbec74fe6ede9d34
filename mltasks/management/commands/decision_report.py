"""manage.py decision_report --study NAME --group G --threshold 0.2 [--comparison gt|ge]
--positive ALL[,X] [--run ID] [--format json|csv]."""

import json

from annotator.models import Study
from core.commands import DomainCommand
from core.errors import DomainError
from core.params import whole_number

from ...decisions import RUN_ID_MAX, DecisionRule, check_run, decide
from ...models import TrainingRun


class Command(DomainCommand):
    help = (
        "Decide per patient: a rule on a taxonomy group's share of each patient's counted "
        "cells, against the patients' confirmed diagnoses; accuracy, sensitivity and "
        "specificity with Wilson 95 % CIs and the ROC over the threshold, from the examiners' "
        "counts and, with --run, the model's."
    )

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True)
        parser.add_argument("--group", required=True, help="A group of the study's taxonomy.")
        parser.add_argument("--threshold", required=True, help="A share from 0 to 1, e.g. 0.2.")
        parser.add_argument("--comparison", default="ge", help="ge (at least) or gt (above).")
        parser.add_argument("--positive", required=True, help="Positive codes, e.g. ALL or AML,X.")
        parser.add_argument("--run", help="A finished training run of the study.")
        parser.add_argument("--format", default="json", choices=["json", "csv"])

    def handle(self, *args, **options):
        study = Study.objects.named(options["study"])
        rule = DecisionRule.parse(
            group=options["group"],
            threshold=options["threshold"],
            comparison=options["comparison"],
            positive=options["positive"],
        )
        run = None
        if options["run"]:
            run_id = whole_number(options["run"], "run", 1, RUN_ID_MAX)
            run = TrainingRun.objects.select_related("split__dataset").filter(pk=run_id).first()
            if run is None:
                raise DomainError(f"No training run {run_id}.", "run")
            check_run(study, run)
        report = decide(study, rule, run)
        if options["format"] == "csv":
            self.stdout.write(report.csv(), ending="")
        else:
            self.stdout.write(json.dumps(report.to_dict(), indent=2))
