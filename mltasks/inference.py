"""A finished run's fold models applied to new images, the folds' probabilities averaged (the
ensemble): `ensemble_predict` serves `manage.py predict` (a folder of images) and pre-annotation.

Pre-annotation: the run's models suggest a class for each cell of the study that no gold round
labelled yet. The suggestions go to `annotator.Suggestion`, which the gold-round screen shows
beside each such cell; blinded raters never see them (they see no cell at all).

Images are prepared as training prepares its patches (`training.decode_patch`): converted to
RGB, resized bilinear to the run's `image_size` square, then `augment.to_float`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np
import torch
from django.core.files.storage import default_storage
from django.db import transaction
from PIL import Image

from annotator import patches
from annotator.access import OVERSEEING_ROLES, require_role
from annotator.models import Cell, Label, Round, Suggestion, TaxonNode
from core.errors import DomainError
from datasets.classmaps import class_nodes

from . import training
from .augment import to_float
from .models import TrainingRun

BATCH = 32


def resized_pixels(image: Image.Image | np.ndarray, image_size: int) -> np.ndarray:
    """An image (PIL, or an (H, W, 3) uint8 array) as uint8 RGB pixels of `image_size` square,
    resized as training resizes its patches."""
    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    picture = picture.convert("RGB")
    if picture.size != (image_size, image_size):
        picture = picture.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(picture)


def pick_device(name: str = "cpu") -> torch.device:
    """`cpu`, `cuda` (refused where there is none) or `auto` (CUDA when present), as a run's
    config `device` is read."""
    training.check_device({"device": name})
    return training.pick_device({"device": name})


def load_models(run: TrainingRun, device: torch.device | None = None) -> list[torch.nn.Module]:
    """The fold models of a finished run, in eval mode on `device` (the CPU by default)."""
    if run.status != TrainingRun.Status.DONE:
        raise DomainError(f"Run {run.pk} is {run.status}; only a finished run has models.")
    classes = run.split.dataset.classes
    models = []
    for fold_model in run.models.order_by("fold"):
        with default_storage.open(fold_model.weights, "rb") as handle:
            model = training.load_model(handle.read(), classes)
        models.append(model.to(device or torch.device("cpu")).eval())
    if not models:
        raise DomainError(f"Run {run.pk} has no published models.")
    return models


def ensemble_probabilities(models: list[torch.nn.Module], pixels: np.ndarray) -> np.ndarray:
    """Mean over the models of the softmax probabilities of a uint8 (N, H, W, 3) batch, in
    float32 (as the exported files compute them), on the models' device."""
    device = next(models[0].parameters()).device
    images = to_float(torch.from_numpy(np.ascontiguousarray(pixels)).to(device))
    with torch.no_grad():
        each = torch.stack([torch.softmax(model(images).float(), dim=1) for model in models])
    return each.mean(dim=0).cpu().numpy()


def ensemble_predict(
    run: TrainingRun,
    images: Iterable[Image.Image | np.ndarray],
    *,
    device: torch.device | None = None,
    batch_size: int = BATCH,
    models: list[torch.nn.Module] | None = None,
) -> np.ndarray:
    """Class probabilities (N, classes, in `run.split.dataset.classes` order) of the images,
    the mean of the run's fold models; the images are read `batch_size` at a time."""
    if batch_size < 1:
        raise DomainError(f"batch size must be at least 1, not {batch_size}.", "batch_size")
    models = models or load_models(run, device)
    size = run.config["image_size"]
    out = [np.zeros((0, len(run.split.dataset.classes)), dtype=np.float32)]
    for batch in _chunks(iter(images), batch_size):
        pixels = np.stack([resized_pixels(image, size) for image in batch])
        out.append(ensemble_probabilities(models, pixels))
    return np.concatenate(out)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(items, size)):
        yield chunk


def stored_image(name: str) -> Image.Image:
    """A stored image, read whole (so that no file stays open while it waits for its batch)."""
    with default_storage.open(name, "rb") as handle, Image.open(handle) as image:
        image.load()
        return image.copy()


def unlabelled_cells(study) -> list[Cell]:
    """Cells of the study with an image and no label in any gold round."""
    labelled = Label.objects.filter(round__study=study, round__kind=Round.Kind.GOLD).values("cell")
    cells = Cell.objects.filter(study=study).exclude(pk__in=labelled)
    cells = cells.select_related("scan", "study").order_by("pk")
    return [cell for cell in cells if cell.scan_id is not None or cell.patch]


def _suggestable_nodes(run: TrainingRun) -> dict[str, TaxonNode]:
    """Class code -> the leaf a label can take, where the class is exactly one leaf."""
    dataset = run.split.dataset
    leaves = {
        node.code: node
        for node in TaxonNode.objects.filter(taxonomy=dataset.study.taxonomy_id, is_leaf=True)
    }
    nodes_of = class_nodes(dataset.classes, dataset.class_map)
    return {
        code: leaves[members[0]]
        for code, members in nodes_of.items()
        if len(members) == 1 and members[0] in leaves
    }


def preannotate(run: TrainingRun, user) -> int:
    """Suggest a class (the folds' models averaged) for every unlabelled cell; the count."""
    study = run.split.dataset.study
    if user is not None:
        require_role(user, study, OVERSEEING_ROLES, "pre-annotate cells")
    if run.status != TrainingRun.Status.DONE:
        raise DomainError(f"Run {run.pk} is {run.status}; only a finished run can pre-annotate.")
    models = load_models(run)
    classes = run.split.dataset.classes
    cells = unlabelled_cells(study)
    nodes = _suggestable_nodes(run)
    images = (stored_image(patches.ensure_patch(cell).name) for cell in cells)
    probabilities = ensemble_predict(run, images, models=models)
    made = []
    for cell, row in zip(cells, probabilities, strict=True):
        code = classes[int(row.argmax())]
        made.append(
            Suggestion(
                cell=cell,
                code=code,
                node=nodes.get(code),
                probability=min(1.0, max(0.0, float(row.max()))),
                source=f"training run {run.pk}",
            )
        )
    with transaction.atomic():
        Suggestion.objects.filter(cell__in=[s.cell for s in made]).delete()
        Suggestion.objects.bulk_create(made, batch_size=1000)
    return len(made)
