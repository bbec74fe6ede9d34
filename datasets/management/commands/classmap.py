"""manage.py classmap --study NAME [--threshold 10] [--collapse CODES] [--expand CODES]
[--save NAME]: counts per node, the proposed merge and its classes; --save stores the map."""

import json

from annotator.models import Study
from core.commands import DomainCommand
from datasets.classmaps import DEFAULT_THRESHOLD, propose, save_class_map


def _codes(text: str) -> list[str]:
    return [code.strip() for code in text.split(",") if code.strip()]


class Command(DomainCommand):
    help = "Count labelled cells per taxonomy node, propose the rare-leaf merge, save a class map."

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True)
        parser.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD)
        parser.add_argument("--collapse", default="", help="More nodes to merge, e.g. PAT.")
        parser.add_argument("--expand", default="", help="Proposed merges to undo, e.g. MYO.")
        parser.add_argument("--save", metavar="NAME", help="Store the map under this name.")
        parser.add_argument("--json", action="store_true", help="Print the proposal as JSON.")

    def handle(self, *args, **options):
        study = Study.objects.named(options["study"])
        proposal = propose(
            study,
            threshold=options["threshold"],
            collapse=_codes(options["collapse"]),
            expand=_codes(options["expand"]),
        )
        saved = save_class_map(study, options["save"], proposal, None) if options["save"] else None
        if options["json"]:
            self.stdout.write(json.dumps(proposal.to_dict(), indent=2))
        else:
            for node in proposal.tree:
                mark = "  [merged]" if node.code in proposal.collapsed else ""
                self.stdout.write(f"{'  ' * node.depth}{node.code:<6} {node.total:>7} cells{mark}")
            codes = ", ".join(f"{c['code']} ({c['cells']})" for c in proposal.classes)
            self.stdout.write(f"{len(proposal.classes)} classes: {codes}")
            for note in proposal.notes:
                self.stdout.write(f"note: {note}")
        if saved:
            map_, created = saved
            state = "saved" if created else "unchanged, kept"
            self.stdout.write(f"class map {map_.name} v{map_.version} (id {map_.pk}) {state}")
