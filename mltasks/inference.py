"""Pre-annotation: a finished run's models suggest a class for each cell of the study that no
gold round labelled yet. The suggestions go to `annotator.Suggestion`, which the gold-round
screen shows beside each such cell; blinded raters never see them (they see no cell at all)."""

from __future__ import annotations

import numpy as np
import torch
from django.core.files.storage import default_storage
from django.db import transaction

from annotator import patches
from annotator.access import OVERSEEING_ROLES, require_role
from annotator.models import Cell, Label, Round, Suggestion, TaxonNode
from core.errors import DomainError

from . import training
from .augment import to_float
from .models import TrainingRun

BATCH = 32


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
    nodes_of = (
        {item["code"]: item["nodes"] for item in dataset.class_map.classes}
        if dataset.class_map
        else {code: [code] for code in dataset.classes}
    )
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
    classes = run.split.dataset.classes
    models = []
    for fold_model in run.models.all():
        with default_storage.open(fold_model.weights, "rb") as handle:
            models.append(training.load_model(handle.read(), classes))
    if not models:
        raise DomainError(f"Run {run.pk} has no published models.")
    cells = unlabelled_cells(study)
    size = run.config["image_size"]
    nodes = _suggestable_nodes(run)
    made = []
    with torch.no_grad():
        for start in range(0, len(cells), BATCH):
            batch = cells[start : start + BATCH]
            pixels = np.stack(
                [training.decode_patch(patches.ensure_patch(c).name, size) for c in batch]
            )
            images = to_float(torch.from_numpy(pixels))
            probabilities = torch.stack(
                [torch.softmax(model(images), dim=1) for model in models]
            ).mean(dim=0)
            best, index = probabilities.max(dim=1)
            for cell, p, i in zip(batch, best.tolist(), index.tolist(), strict=True):
                code = classes[i]
                made.append(
                    Suggestion(
                        cell=cell,
                        code=code,
                        node=nodes.get(code),
                        probability=min(1.0, max(0.0, p)),
                        source=f"training run {run.pk}",
                    )
                )
    with transaction.atomic():
        Suggestion.objects.filter(cell__in=[s.cell for s in made]).delete()
        Suggestion.objects.bulk_create(made, batch_size=1000)
    return len(made)
