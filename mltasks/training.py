"""Training a ResNeXt on a frozen split, the way the Munich AML study did.

One model per fold (k-fold splits) or one model (holdout): random rotation and flips applied on
the fly to whole batches on the device, every class oversampled towards a target count per
epoch, early stopping on a validation part carved out of the training folds (stratified, seeded:
the fold's samples come from `datasets.splits.fold_parts`, which carves by `carve_validation`).
The patches are decoded once into a uint8 cache in memory, so no epoch waits for image decoding;
an epoch is an order of indices into it and a batch becomes float only while it is used, in passes
small enough for the memory (`mltasks.memory`), so memory follows the cache and the pass size.
Everything is in the config (`mltasks.run_config`, documented in docs/training.md); the seeds
make a CPU run repeatable.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from django.core.files.storage import default_storage
from PIL import Image

from core.errors import DomainError
from datasets import splits
from datasets.models import Split

from .augment import augment_batch, to_float
from .memory import pass_size
from .resnext import load_pretrained, resnext50_32x4d


def check_device(config: dict) -> None:
    """Refuse a run that asks for CUDA on this machine when it has none (checked where the run
    trains: the process that queued it cannot know the worker's device)."""
    if config["device"] == "cuda" and not torch.cuda.is_available():
        raise DomainError("device cuda was asked for, but this machine has no CUDA.", "device")


def pick_device(config: dict) -> torch.device:
    if config["device"] == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


@dataclass
class TrainingData:
    """The split's patches decoded once: uint8 images (N, H, W, 3), class indices, in the
    manifest's order (a fold's parts come from `splits.fold_parts`); `patches` the patch name
    of each cell (as `splits.patch_names`)."""

    images: torch.Tensor
    labels: np.ndarray
    cell_ids: list[int]
    classes: list[str]
    patients: list[str] | None = None
    patches: dict[int, str] = field(default_factory=dict)


def decode_patch(name: str, image_size: int) -> np.ndarray:
    """A stored patch as uint8 RGB pixels, resized to `image_size` square."""
    with default_storage.open(name, "rb") as handle, Image.open(handle) as image:
        picture = image.convert("RGB")
        if picture.size != (image_size, image_size):
            picture = picture.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(picture)


def load_data(split: Split, image_size: int) -> TrainingData:
    """Decode every patch of the split once, resized to `image_size`."""
    names = splits.patch_names(split, needed_by="training")
    every = splits.split_samples(split, names)
    index = {code: i for i, code in enumerate(split.dataset.classes)}
    images = np.empty((len(every), image_size, image_size, 3), dtype=np.uint8)
    for position, sample in enumerate(every):
        images[position] = decode_patch(sample.patch, image_size)
    return TrainingData(
        images=torch.from_numpy(images),
        labels=np.array([index[sample.class_name] for sample in every]),
        cell_ids=[sample.cell for sample in every],
        classes=list(split.dataset.classes),
        patients=[sample.patient for sample in every],
        patches=names,
    )


@dataclass(frozen=True)
class FoldPlan:
    """Positions (into `TrainingData`) of one fold's train, validation and test parts, how its
    validation part was made (`splits.FoldParts.by`) and what a reader of the run should know
    about these parts, in words."""

    fold: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    validation_by: str = ""
    notes: tuple[str, ...] = ()

    def describe(self, patients: list[str] | None) -> dict:
        """The parts for the report: sizes, the validation part's patients and how it was
        made (also as a phrase), and the notes."""
        cells = len(self.validation)
        among = len({patients[i] for i in self.validation}) if patients else None
        of = f"{cells} cells" + (f" of {among} patient(s)" if among is not None else "")
        made = {
            "patients": f"{of}, carved by whole patients",
            "cells": f"{of}, carved by cells",
            "split": f"the split's own, {of}",
        }.get(self.validation_by, of if cells else "none")
        return {
            "train": len(self.train),
            "validation": {"cells": cells, "patients": among, "by": self.validation_by},
            "validation_made": made,
            "test": len(self.test),
            "notes": list(self.notes),
        }


HOLDOUT_FOLD = "test"  # the name of a holdout split's one model


def fold_plans(split: Split, data: TrainingData, config: dict) -> list[FoldPlan]:
    """Train / validation / test positions per fold, as `splits.fold_parts` defines them with
    the config's validation fraction and seed: validation by whole patients where the split
    keeps patients apart (else early stopping would be steered by cells of the training
    patients), by cells within patients where whole patients would harm training; the notes say
    which, and name folds that would train on the same cells."""
    position = {cell: i for i, cell in enumerate(data.cell_ids)}

    def positions(part: list[splits.Sample]) -> np.ndarray:
        return np.array([position[sample.cell] for sample in part], dtype=int)

    names = splits.fold_names(split)
    wanted = config["folds"]
    if wanted is not None:
        wanted = {str(f) for f in wanted}
        known = {HOLDOUT_FOLD if name is None else name for name in names}
        unknown = sorted(wanted - known)
        if unknown:
            raise DomainError(f"The split has no fold(s) {', '.join(unknown)}.", field="folds")
    plans: list[FoldPlan] = []
    for name in names:
        parts = splits.fold_parts(
            split,
            name,
            validation_fraction=config["validation_fraction"],
            seed=config["seed"],
            patches=data.patches,
        )
        train = positions(parts.train)
        notes = [
            f"Folds {earlier.fold} and {name} train on the same {len(train)} cells: their "
            "models differ by their validation parts only."
            for earlier in plans
            if np.array_equal(earlier.train, train)
        ]
        plans.append(
            FoldPlan(
                HOLDOUT_FOLD if name is None else name,
                train,
                positions(parts.validation),
                positions(parts.test),
                parts.by,
                (*parts.notes, *notes),
            )
        )
    return [plan for plan in plans if wanted is None or plan.fold in wanted]


def oversampled_order(labels: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's order: each class present drawn `target` times (with replacement where it
    has fewer cells, without where it has more), shuffled together."""
    picks = []
    for klass in np.unique(labels):
        members = np.flatnonzero(labels == klass)
        picks.append(rng.choice(members, size=target, replace=len(members) < target))
    order = np.concatenate(picks)
    rng.shuffle(order)
    return order


class Cancelled(Exception):
    """The run was cancelled by its user."""


@dataclass
class FoldResult:
    fold: str
    state_dict: dict
    test_index: np.ndarray
    probabilities: np.ndarray
    epochs: int
    seconds: float
    history: list[dict]
    parts: dict = field(default_factory=dict)  # FoldPlan.describe: what the fold trained on

    def without_weights(self) -> FoldResult:
        """The result once its weights are stored: a finished fold holds no model in memory,
        so a run's memory does not grow with its folds."""
        return dataclasses.replace(self, state_dict={})


ProgressFn = Callable[[dict], None]


def _batches(indices: np.ndarray, size: int):
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _forward(model, images, device, autocast: bool):
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
        return model(images)


def predict(model, data: TrainingData, index: np.ndarray, config: dict, device) -> np.ndarray:
    """Softmax probabilities of the cells at `index`, without augmentation."""
    model.eval()
    autocast = device.type == "cuda"
    out = []
    with torch.no_grad():
        for batch in _batches(index, pass_size(config, device.type)):
            images = to_float(data.images[batch]).to(device, memory_format=torch.channels_last)
            logits = _forward(model, images, device, autocast).float()
            out.append(torch.softmax(logits, dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(data.classes)))


def train_fold(
    data: TrainingData,
    plan: FoldPlan,
    config: dict,
    device: torch.device,
    progress: ProgressFn,
    should_stop: Callable[[], bool],
) -> FoldResult:
    """Train one model on the plan's training part; keep the epoch with the best validation
    loss; predict the test part."""
    started = time.perf_counter()
    torch.manual_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])
    generator = torch.Generator(device="cpu").manual_seed(config["seed"])
    model = resnext50_32x4d(num_classes=1000 if config["pretrained"] else len(data.classes))
    if config["pretrained"]:
        load_pretrained(model, config["pretrained"])
        model.fc = torch.nn.Linear(model.fc.in_features, len(data.classes))
    model = model.to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(
        model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"]
    )
    passes = pass_size(config, device.type)
    train_labels = data.labels[plan.train]
    best_loss, best_state, stale, history = float("inf"), None, 0, []
    epoch = 0
    for epoch in range(1, config["max_epochs"] + 1):
        model.train()
        order = plan.train[oversampled_order(train_labels, config["oversample_to"], rng)]
        steps = (len(order) + config["batch_size"] - 1) // config["batch_size"]
        running = 0.0
        for step, batch in enumerate(_batches(order, config["batch_size"]), start=1):
            optimiser.zero_grad(set_to_none=True)
            loss = 0.0
            for part in _batches(batch, passes):
                if should_stop():
                    raise Cancelled()
                loss += _accumulate(model, data, part, len(batch), config, generator, device)
            optimiser.step()
            running += loss
            progress(
                {"fold": plan.fold, "epoch": epoch, "step": step, "steps": steps, "loss": loss}
            )
        validation_loss, validation_accuracy = _validate(model, data, plan, config, device)
        history.append(
            {
                "epoch": epoch,
                "train_loss": running / max(1, steps),
                "validation_loss": validation_loss,
                "validation_accuracy": validation_accuracy,
            }
        )
        progress({"fold": plan.fold, "epoch": epoch, "validation": history[-1]})
        if validation_loss < best_loss:
            best_loss, best_state, stale = validation_loss, _keep(model, best_state), 0
        else:
            stale += 1
            if stale >= config["patience"]:
                break
    model.load_state_dict(best_state)
    probabilities = predict(model, data, plan.test, config, device)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return FoldResult(
        plan.fold,
        state,
        plan.test,
        probabilities,
        epoch,
        time.perf_counter() - started,
        history,
        plan.describe(data.patients),
    )


def _keep(model, kept: dict | None) -> dict:
    """The model's weights copied into `kept` (made on the first call): one copy however many
    epochs improve, never two at once."""
    if kept is None:
        return {key: value.detach().clone() for key, value in model.state_dict().items()}
    for key, value in model.state_dict().items():
        kept[key].copy_(value)
    return kept


def _accumulate(model, data, part, batch_images, config, generator, device) -> float:
    """Forward and backward one pass of a batch, adding its share to the gradients (the summed
    shares are the gradient of the batch's mean loss); returns its share of that loss."""
    images = to_float(data.images[part]).to(device, memory_format=torch.channels_last)
    images = augment_batch(images, generator, rotate=config["rotate"], flip=config["flip"])
    targets = torch.from_numpy(data.labels[part]).to(device)
    logits = _forward(model, images, device, device.type == "cuda").float()
    share = torch.nn.functional.cross_entropy(logits, targets) * (len(part) / batch_images)
    share.backward()
    return share.item()


def _validate(model, data, plan, config, device) -> tuple[float, float]:
    probabilities = predict(model, data, plan.validation, config, device)
    labels = data.labels[plan.validation]
    if not len(labels):
        return 0.0, 0.0
    picked = probabilities[np.arange(len(labels)), labels]
    loss = float(-np.log(np.clip(picked, 1e-12, 1)).mean())
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    return loss, accuracy


def state_dict_bytes(state: dict, classes: list[str], config: dict) -> bytes:
    """The weights with what is needed to use them: classes and config."""
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "classes": classes, "config": json.dumps(config)}, buffer)
    return buffer.getvalue()


def load_model(data: bytes, expected_classes: list[str]) -> torch.nn.Module:
    """A stored fold model, refused when its classes are not the ones expected."""
    saved = torch.load(io.BytesIO(data), weights_only=True)
    if list(saved["classes"]) != list(expected_classes):
        raise DomainError(
            f"The model's classes {saved['classes']} are not the expected {expected_classes}."
        )
    model = resnext50_32x4d(num_classes=len(expected_classes))
    model.load_state_dict(saved["state_dict"])
    return model.eval()
