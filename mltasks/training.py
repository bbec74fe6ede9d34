"""Training a ResNeXt on a frozen split, the way the Munich AML study did.

One model per fold (k-fold splits) or one model (holdout): random rotation and flips applied on
the fly to whole batches on the device, every class oversampled towards a target count per
epoch, early stopping on a validation part carved out of the training folds (stratified, seeded:
the fold's samples come from `datasets.splits.fold_parts`, which carves by `carve_validation`).
The patches stream from storage through `mltasks.pipeline` (a DataLoader with worker processes,
an oversampling sampler of indices, an optional decoded-patch cache on local disk): an epoch is an
order of positions, a batch is decoded while the previous one trains and becomes float on the
device only while it is used, in passes small enough for the memory (`mltasks.memory`), so
memory follows the batch, the prefetch depth and the pass size, not the data set. On CUDA: bf16
autocast, channels_last, cuDNN's benchmark, optionally `torch.compile`, and a batch size found by
a probe (`batch_size: "auto"`). Everything is in the config (`mltasks.run_config`, documented
in docs/training.md); the seeds make a CPU run repeatable.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from django.core.files.storage import default_storage

from core.errors import DomainError
from datasets import splits
from datasets.models import Split

from . import distributed, pipeline
from .augment import augment_batch, to_float
from .memory import AUTO_BATCH_CAP, batch_size_for, pass_size
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
    """The split's cells in the manifest's order (a fold's parts come from
    `splits.fold_parts`): `images` gives each one's uint8 pixels (H, W, 3) by position, read
    from storage when asked for (`pipeline.StoredPatches`) or, in tests and benchmarks, a uint8
    tensor (N, H, W, 3) in memory; class indices; `patches` the patch name of each cell (as
    `splits.patch_names`)."""

    images: pipeline.StoredPatches | torch.Tensor
    labels: np.ndarray
    cell_ids: list[int]
    classes: list[str]
    patients: list[str] | None = None
    patches: dict[int, str] = field(default_factory=dict)

    def batch(self, positions) -> torch.Tensor:
        """The images at `positions` as one uint8 (N, H, W, 3) tensor."""
        return pipeline.batch(self.images, positions)

    def close(self) -> None:
        """Remove the decoded-patch cache on disk, if the run made one."""
        if isinstance(self.images, pipeline.StoredPatches):
            self.images.close()


def decode_patch(name: str, image_size: int) -> np.ndarray:
    """A stored patch as uint8 RGB pixels, resized to `image_size` square."""
    return pipeline.read_patch(name, image_size)


def load_data(split: Split, image_size: int, patch_cache: str = "none") -> TrainingData:
    """The split's cells and where their patches are; nothing is decoded here. With
    `patch_cache` "disk" the decoded patches are kept in a memory-mapped file under VAR_DIR for
    later epochs and folds, removed by `TrainingData.close` (or when the data is forgotten)."""
    names = splits.patch_names(split, needed_by="training")
    every = splits.split_samples(split, names)
    missing = [sample.patch for sample in every if not default_storage.exists(sample.patch)]
    if missing:  # found now, not epochs later when the loader first reads it
        raise FileNotFoundError(
            errno.ENOENT, f"{len(missing)} patch file(s) are not in storage", missing[0]
        )
    index = {code: i for i, code in enumerate(split.dataset.classes)}
    cache = pipeline.DiskCache(len(every), image_size) if patch_cache == "disk" else None
    return TrainingData(
        images=pipeline.StoredPatches([sample.patch for sample in every], image_size, cache),
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


def _on_device(images: torch.Tensor, device) -> torch.Tensor:
    """A uint8 (N, H, W, 3) batch as float (N, 3, H, W) channels_last on `device` (the copy
    is asynchronous from pinned memory)."""
    return to_float(images.to(device, non_blocking=True))


def predict(model, data: TrainingData, index: np.ndarray, config: dict, device) -> np.ndarray:
    """Softmax probabilities of the cells at `index`, without augmentation, in batches on the
    device."""
    batches = evaluation_loader(data, index, config, device, persistent=False)
    try:
        return _predict(model, batches, device, len(data.classes))
    finally:
        pipeline.shut_down(batches)


def evaluation_loader(data, index, config, device, *, persistent=True):
    """The cells at `index` in order, in batches of one pass (`memory.pass_size`)."""
    size = pass_size({**config, "batch_size": batch_size_for(config, device.type)}, device.type)
    return pipeline.loader(
        data.images,
        data.labels,
        [int(i) for i in index],
        size,
        config,
        device.type,
        persistent=persistent,
    )


def _predict(model, batches, device, classes: int) -> np.ndarray:
    model.eval()
    autocast = device.type == "cuda"
    out = []
    with torch.no_grad():
        for images, _ in batches:
            logits = _forward(model, _on_device(images, device), device, autocast).float()
            out.append(torch.softmax(logits, dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, classes))


def _new_model(config: dict, classes: int, device) -> torch.nn.Module:
    model = resnext50_32x4d(num_classes=1000 if config["pretrained"] else classes)
    if config["pretrained"]:
        load_pretrained(model, config["pretrained"])
        model.fc = torch.nn.Linear(model.fc.in_features, classes)
    return model.to(device, memory_format=torch.channels_last)


# The share of the device's memory a probed batch may peak at: the rest is for the optimiser's
# first step, the loader's pinned batches and the allocator's fragmentation.
PROBE_MEMORY_SHARE = 0.85


def probe_batch_size(config: dict, classes: int, device, cap: int = AUTO_BATCH_CAP) -> int:
    """The largest power of two up to `cap` images whose training step (forward and backward
    in bf16, on a throw-away model and synthetic images) fits the CUDA device's memory with
    room to spare, halving on running out of memory; at least 1."""
    size = config["image_size"]
    model = _new_model({**config, "pretrained": None}, classes, device).train()
    total = torch.cuda.get_device_properties(device).total_memory
    batch = 1 << (max(1, cap).bit_length() - 1)
    try:
        while batch > 1:
            try:
                torch.cuda.reset_peak_memory_stats(device)
                images = torch.rand(batch, 3, size, size, device=device)
                images = images.contiguous(memory_format=torch.channels_last)
                targets = torch.zeros(batch, dtype=torch.long, device=device)
                loss = torch.nn.functional.cross_entropy(
                    _forward(model, images, device, True).float(), targets
                )
                loss.backward()
                torch.cuda.synchronize(device)
                if torch.cuda.max_memory_allocated(device) <= PROBE_MEMORY_SHARE * total:
                    return batch
            except torch.cuda.OutOfMemoryError:
                pass
            finally:
                images = targets = loss = None
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
            batch //= 2
        return 1
    finally:
        del model
        torch.cuda.empty_cache()


def prepare_device(config: dict, device) -> None:
    """What CUDA runs gain from: cuDNN picks its fastest kernels for the (fixed) input size."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def train_fold(
    data: TrainingData,
    plan: FoldPlan,
    config: dict,
    device: torch.device,
    progress: ProgressFn,
    should_stop: Callable[[], bool],
    ranks: distributed.Ranks = distributed.SINGLE,
) -> FoldResult:
    """Train one model on the plan's training part; keep the epoch with the best validation
    loss; predict the test part. In a data-parallel run (`ranks`), this process trains on its
    share of each batch, and only the leader validates and predicts (`mltasks.distributed`)."""
    started = time.perf_counter()
    prepare_device(config, device)
    torch.manual_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])  # the same epochs' order in every process
    generator = torch.Generator(device="cpu").manual_seed(config["seed"] + ranks.rank)
    model = _new_model(config, len(data.classes), device)
    if config["batch_size"] == "auto" and device.type == "cuda":
        found = probe_batch_size(config, len(data.classes), device)
        config = {**config, "batch_size": distributed.smallest(ranks, found, device) * ranks.world}
        progress({"fold": plan.fold, "batch_size": config["batch_size"]})
    batch_size = batch_size_for(config, device.type)
    config = {**config, "batch_size": batch_size}
    shared = distributed.wrap(model, ranks, device)
    runs_model = torch.compile(shared) if config.get("compile") else shared
    optimiser = torch.optim.Adam(
        model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"]
    )
    passes = pass_size(config, device.type)
    sampler = pipeline.OversampledSampler(
        plan.train, data.labels[plan.train], config["oversample_to"], rng
    )
    training = pipeline.loader(
        data.images,
        data.labels,
        sampler,
        batch_size,
        config,
        device.type,
        shard=(ranks.rank, ranks.world),
    )
    validation = evaluation_loader(data, plan.validation, config, device) if ranks.leader else None
    step_images = pipeline.global_batch_sizes(len(sampler), batch_size, ranks.world)
    best_loss, best_state, stale, history = float("inf"), None, 0, []
    epoch = 0
    try:
        for epoch in range(1, config["max_epochs"] + 1):
            runs_model.train()
            steps = len(training)
            running = 0.0
            for step, (images, targets) in enumerate(training, start=1):
                optimiser.zero_grad(set_to_none=True)
                loss = 0.0
                # This process's share of the step's mean loss is its images over the batch's
                # (times the processes, as DDP averages their gradients).
                share_of = step_images[step - 1] / ranks.world
                for start in range(0, len(images), passes):
                    if not ranks.distributed and should_stop():
                        raise Cancelled()
                    part = slice(start, start + passes)
                    with distributed.syncing(shared, start + passes >= len(images)):
                        loss += _accumulate(
                            runs_model,
                            images[part],
                            targets[part],
                            share_of,
                            config,
                            generator,
                            device,
                        )
                optimiser.step()
                if ranks.distributed:
                    stop, loss = distributed.end_of_step(ranks, should_stop(), loss, device)
                    if stop:
                        raise Cancelled()
                running += loss
                progress(
                    {"fold": plan.fold, "epoch": epoch, "step": step, "steps": steps, "loss": loss}
                )
            if ranks.leader:
                validation_loss, validation_accuracy = _validate(
                    model, validation, data.labels[plan.validation], device, len(data.classes)
                )
            else:
                validation_loss = validation_accuracy = 0.0
            validation_loss, validation_accuracy = distributed.from_leader(
                ranks, [validation_loss, validation_accuracy], device
            )
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
    finally:
        pipeline.shut_down(training)
        if validation is not None:
            pipeline.shut_down(validation)
    model.load_state_dict(best_state)
    if not ranks.leader:  # its weights are the leader's: the leader predicts and stores
        return FoldResult(
            plan.fold, {}, plan.test, np.zeros((0, len(data.classes))), epoch, 0.0, history
        )
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


def _accumulate(model, images, targets, batch_images, config, generator, device) -> float:
    """Forward and backward one pass (uint8 `images` (N, H, W, 3), class indices `targets`) of
    a batch of `batch_images` (a data-parallel process: the batch's images per process),
    adding its share to the gradients (the summed shares are the gradient of the batch's mean
    loss); returns its share of that loss."""
    images = augment_batch(
        _on_device(images, device), generator, rotate=config["rotate"], flip=config["flip"]
    )
    targets = torch.as_tensor(targets).to(device, non_blocking=True)
    logits = _forward(model, images, device, device.type == "cuda").float()
    share = torch.nn.functional.cross_entropy(logits, targets) * (len(images) / batch_images)
    share.backward()
    return share.item()


def _validate(model, batches, labels, device, classes: int) -> tuple[float, float]:
    probabilities = _predict(model, batches, device, classes)
    if not len(labels):
        return 0.0, 0.0
    picked = probabilities[np.arange(len(labels)), labels]
    loss = float(-np.log(np.clip(picked, 1e-12, 1)).mean())
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    return loss, accuracy


def saliency(model, images: torch.Tensor, labels, device) -> np.ndarray:
    """|d loss / d input| (max over colour channels), scaled to [0, 1] per image, for a uint8
    (N, H, W, 3) batch in one pass on the device (float32: gradients of bf16 are too coarse)."""
    model = model.to(device, memory_format=torch.channels_last).eval()
    pixels = _on_device(images, device).requires_grad_(True)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    loss = torch.nn.functional.cross_entropy(model(pixels), targets, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, pixels)
    heat = gradient.abs().amax(dim=1)
    peak = heat.flatten(1).amax(dim=1).clamp_min(torch.finfo(heat.dtype).tiny)
    return (heat / peak[:, None, None]).cpu().numpy()


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
