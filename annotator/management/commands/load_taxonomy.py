"""manage.py load_taxonomy FILE...: validate taxonomy YAML files and load each as a version."""

from django.core.management.base import BaseCommand, CommandError

from annotator.taxonomy import TaxonomyError, load_taxonomy_file


class Command(BaseCommand):
    help = "Validate taxonomy YAML files and load each; a changed file becomes a new version."

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="+", help="Taxonomy YAML file(s).")

    def handle(self, *args, files, **options):
        for path in files:
            try:
                result = load_taxonomy_file(path)
            except TaxonomyError as exc:
                raise CommandError(
                    f"{path} is not a valid taxonomy:\n  - " + "\n  - ".join(exc.problems)
                ) from None
            taxonomy = result.taxonomy
            state = "loaded as" if result.created else "unchanged, already loaded as"
            leaves = taxonomy.nodes.filter(is_leaf=True).count()
            self.stdout.write(f"{path}: {state} {taxonomy} ({leaves} leaves, id {taxonomy.pk})")
