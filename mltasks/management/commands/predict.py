"""manage.py predict --run ID --images DIR --out preds.csv: classify a folder of images with a
finished run's fold ensemble."""

from __future__ import annotations

import csv
from pathlib import Path

from django.core.management.base import CommandError

from core.commands import DomainCommand
from core.errors import DomainError
from mltasks.models import TrainingRun

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def image_files(folder: Path) -> list[Path]:
    """The PNG, JPEG and TIFF files in the folder and its subfolders, in path order."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def _read(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise DomainError(f"Cannot read the image {path}: {exc}") from None


class Command(DomainCommand):
    help = (
        "Classify every image (png, jpg, tif) in a folder and its subfolders with a finished "
        "run's fold models (their probabilities averaged); write a CSV: file, predicted, one "
        "probability column per class."
    )
    refusal_note = " (no predictions were written)"

    def add_arguments(self, parser):
        parser.add_argument("--run", type=int, required=True)
        parser.add_argument("--images", required=True, help="A folder of images.")
        parser.add_argument("--out", required=True, help="The CSV file to write.")
        parser.add_argument(
            "--device",
            choices=["auto", "cpu", "cuda"],
            default="auto",
            help="auto: CUDA where present",
        )
        parser.add_argument("--batch-size", type=int, default=32, help="Images per pass.")

    def handle(self, *args, run, images, out, device, batch_size, **options):
        found = TrainingRun.objects.select_related("split__dataset").filter(pk=run).first()
        if found is None:
            raise CommandError(f"No training run {run}.")
        if found.status != TrainingRun.Status.DONE:
            raise CommandError(f"Run {run} is {found.status}; only a finished run has models.")
        folder = Path(images)
        if not folder.is_dir():
            raise CommandError(f"--images {folder}: no such folder.")
        files = image_files(folder)
        if not files:
            raise CommandError(f"--images {folder}: no png, jpg or tif files in it.")
        target = Path(out)
        if not target.parent.is_dir():
            raise CommandError(f"--out {target}: the folder {target.parent} does not exist.")
        from mltasks import inference  # torch: only where the command predicts

        models = inference.load_models(found, inference.pick_device(device))
        probabilities = inference.ensemble_predict(
            found, (_read(path) for path in files), batch_size=batch_size, models=models
        )
        classes = found.split.dataset.classes
        with target.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "predicted", *classes])
            for path, row in zip(files, probabilities, strict=True):
                writer.writerow(
                    [
                        path.relative_to(folder).as_posix(),
                        classes[int(row.argmax())],
                        *(f"{p:.8f}" for p in row),
                    ]
                )
        self.stdout.write(
            f"{len(files)} image(s) classified by the {len(models)} fold model(s) of run "
            f"{run}: {target}"
        )
