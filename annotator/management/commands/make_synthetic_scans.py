"""manage.py make_synthetic_scans: pyramidal TIFF smears with planted, labelled leukocytes."""

import time

from django.core.management.base import BaseCommand

from annotator.synthetic import make_synthetic_scans


class Command(BaseCommand):
    help = (
        "Write synthetic_NNN.tiff blood-smear scans and their .json manifests into a folder; "
        "scans already made with the same parameters are reused."
    )

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True, help="Folder for the scans.")
        parser.add_argument("--count", type=int, default=3, help="Number of scans.")
        parser.add_argument("--cells", type=int, default=100, help="Leukocytes per scan.")
        parser.add_argument("--seed", type=int, default=2019, help="Seed of the series.")
        parser.add_argument("--width", type=int, default=20000, help="Level-0 width, px.")
        parser.add_argument("--height", type=int, default=20000, help="Level-0 height, px.")
        parser.add_argument("--mpp", type=float, default=0.0725, help="Microns per pixel.")

    def handle(self, *args, out, count, cells, seed, width, height, mpp, **options):
        started = time.perf_counter()

        def report(scan: dict) -> None:
            status = "reused" if scan["reused"] else "made"
            megabytes = scan["bytes"] / 1e6
            self.stdout.write(
                f"{scan['path']}  {scan['width']} x {scan['height']} px  {megabytes:.1f} MB  "
                f"{len(scan['cells'])} cells  {status}"
            )

        make_synthetic_scans(
            out,
            count=count,
            cells=cells,
            seed=seed,
            width=width,
            height=height,
            mpp=mpp,
            on_scan=report,
        )
        self.stdout.write(f"{count} scan(s) in {time.perf_counter() - started:.1f} s")
