"""manage.py seed_demo: the demo study, its synthetic scans and one login per role."""

from django.core.management.base import BaseCommand

from annotator.demo import seed_demo


class Command(BaseCommand):
    help = "Create (or find) the demo study with synthetic scans and print the demo logins."

    def add_arguments(self, parser):
        parser.add_argument("--scans", type=int, default=3)
        parser.add_argument("--size", type=int, default=20000, help="Scan width and height, px.")
        parser.add_argument("--cells", type=int, default=100, help="Leukocytes per scan.")

    def handle(self, *args, scans, size, cells, **options):
        study, logins = seed_demo(scan_count=scans, scan_size=size, cells=cells)
        self.stdout.write(f"Demo study '{study.name}' with {study.scans.count()} scan(s).")
        self.stdout.write("Demo logins (username / password / role):")
        for login in logins:
            self.stdout.write(f"  {login.username:<14} {login.password:<14} {login.role}")
