"""manage.py count_smear --run ID (--scan ID ... | --all) [--format text|json]: classify every
leukocyte found on the scans with a finished run's models, here, and print the counts."""

import json

from django.core.management.base import CommandError

from annotator.differential import share_text
from core.commands import DomainCommand
from mltasks import smear_counts
from mltasks.models import TrainingRun


class Command(DomainCommand):
    help = "Count scans' leukocytes with a finished run's models and print the differentials."

    def add_arguments(self, parser):
        parser.add_argument("--run", type=int, required=True)
        parser.add_argument("--scan", type=int, action="append", default=[], help="repeatable")
        parser.add_argument(
            "--all", dest="every", action="store_true", help="every scan of the study"
        )
        parser.add_argument("--rerun", action="store_true", help="classify a counted scan again")
        parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
        parser.add_argument("--format", choices=["text", "json"], default="text")

    def handle(self, *args, run, scan, every, rerun, device, format, **options):
        from mltasks.smear_classification import run_classification  # torch, when it counts

        found = TrainingRun.objects.select_related("split__dataset__study").filter(pk=run).first()
        if found is None:
            raise CommandError(f"No training run {run}.")
        study = found.split.dataset.study
        if bool(scan) == every:
            raise CommandError("Name the scans (--scan ID, repeatable) or pass --all.")
        scans = study.scans.order_by("pk")
        if scan:
            scans = scans.filter(pk__in=scan)
            missing = sorted(set(scan) - set(scans.values_list("pk", flat=True)))
            if missing:
                raise CommandError(f"Not scans of study {study.name}: {missing}.")
        reports = []
        for item in scans:
            if every and not smear_counts.leukocytes(item, study):
                continue
            job, created = smear_counts.start_classification(found, item, None, rerun=rerun)
            if created or job.status == job.Status.QUEUED:
                job = run_classification(job.pk, device)
            if job.status != job.Status.DONE:
                raise CommandError(f"Scan {item.pk}: the classification {job.status}: {job.error}")
            reports.append({**smear_counts.scan_report(found, item), "seconds": job.seconds})
        if format == "json":
            self.stdout.write(json.dumps(reports, indent=2))
            return
        for report in reports:
            model = report["model"]
            self.stdout.write(
                f"Scan {report['scan']}: {model['counted']} cell(s) counted, "
                f"{model['uncountable']} uncountable, {report['seconds']:.1f} s"
            )
            for row in model["groups"]:
                self.stdout.write(f"  {row['group']}: {share_text(row)}")
            for row in model["classes"]:
                if row["count"]:
                    self.stdout.write(f"  {row['code']}: {row['count']} = {share_text(row)}")
