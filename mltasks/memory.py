"""How much memory a training run needs, worked out before it starts, and the size of the
batches it passes through the network.

A run's resident memory is the decoded batches in flight, a fixed number of copies of the
network's parameters and the activations of one forward/backward pass. It does not depend on
the number of cells, `oversample_to`, the number of epochs or the number of folds: the patches
stream from storage (`mltasks.pipeline`: an epoch is an order of positions, each loader worker
holds `prefetch_factor` decoded batches), a batch is converted to float when it is used, and
each fold's weights leave memory once they are stored. The loader workers are processes of
their own (forks of the training process), not counted here. On the CPU a batch goes through
the network in passes of at most `pass_size` images whose gradients add up to the batch's (so
`batch_size` stays the number of images per optimiser step, as in the original protocol).

    estimate = runtime + batches in flight x batch x image_size^2 x 3   (uint8 batches)
               + PARAMETER_COPIES x 4 B x parameters       (weights, gradients, Adam's two
                                                            moments, the best epoch's copy,
                                                            the stored file's bytes)
               + pass_size x image_size^2 x ACTIVATION_BYTES_PER_PIXEL   (CPU only)

The constants were measured on ResNeXt-50 32x4d in float32 on the CPU (bench/train_memory.py
prints a run's peak beside this estimate). Plain Python, no torch: the web process estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import DomainError

GB = 1024**3
# The interpreter with Django, NumPy, PyTorch and matplotlib loaded, and the allocators' slack
# (measured peaks of short runs at 128 and 400 px, bench/train_memory.py).
RUNTIME_BYTES = int(0.85 * GB)
# A CUDA context costs host memory too.
CUDA_CONTEXT_BYTES = int(1.0 * GB)
# The most images per batch a `batch_size: "auto"` probe tries on CUDA; on the CPU "auto" is
# the original protocol's batch.
AUTO_BATCH_CAP = 256
CPU_AUTO_BATCH = 32
# `loader_workers` assumed for an estimate where the config leaves it to the worker's host.
ESTIMATED_AUTO_WORKERS = 8
# ResNeXt-50 32x4d without its classifier layer; the classifier adds 2049 per class.
BACKBONE_PARAMETERS = 22_979_904
PARAMETER_COPIES = 6
# Forward activations kept for backward plus the gradients flowing back, per input pixel of
# one image: about 350 MB per 400 x 400 px image (measured), rounded up.
ACTIVATION_BYTES_PER_PIXEL = 2_400
# The CPU's share for activations when the config leaves `micro_batch_size` to the run:
# four 400 x 400 px images per pass, the whole batch at small sizes.
ACTIVATION_BUDGET_BYTES = int(1.5 * GB)


def parameters(classes: int, pretrained: bool = False) -> int:
    """The network's parameter count (a pretrained file is loaded with its 1000 classes)."""
    return BACKBONE_PARAMETERS + 2049 * max(classes, 1000 if pretrained else 0)


def batch_size_for(config: dict, device_type: str) -> int:
    """Images per optimiser step: the config's number; for "auto" on the CPU the protocol's 32,
    on CUDA (before the run's probe found it) the probe's cap."""
    batch = config["batch_size"]
    if batch != "auto":
        return batch
    return AUTO_BATCH_CAP if device_type == "cuda" else CPU_AUTO_BATCH


def batches_in_flight(config: dict, device_type: str) -> int:
    """Decoded batches a run holds at most: one training, one being copied, and each loader
    worker's `prefetch_factor` (the estimate assumes ESTIMATED_AUTO_WORKERS where the config
    leaves the workers to the host); twice on CUDA, whose batches are also pinned."""
    workers = config.get("loader_workers")
    if workers is None:
        workers = ESTIMATED_AUTO_WORKERS if device_type == "cuda" else 0
    held = 2 + workers * (config.get("prefetch_factor") or 2)
    return held * (2 if device_type == "cuda" else 1)


def pass_size(config: dict, device_type: str) -> int:
    """Images per forward/backward pass: `micro_batch_size` where the config sets it; else the
    whole batch on CUDA (activations live in device memory) and on the CPU as many as fit in
    `ACTIVATION_BUDGET_BYTES`, at least one."""
    batch = batch_size_for(config, device_type)
    if config.get("micro_batch_size"):
        return min(config["micro_batch_size"], batch)
    if device_type == "cuda":
        return batch
    per_image = ACTIVATION_BYTES_PER_PIXEL * config["image_size"] ** 2
    return max(1, min(batch, ACTIVATION_BUDGET_BYTES // per_image))


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of a run's estimated peak resident memory, in bytes."""

    cells: int
    image_size: int
    pass_size: int
    runtime: int
    cache: int  # the decoded batches in flight
    parameters: int
    activations: int
    batches: int = 0
    batch_size: int = 0
    processes: int = 1  # data-parallel processes on the host, each needing the same

    @property
    def total(self) -> int:
        return self.processes * (self.runtime + self.cache + self.parameters + self.activations)

    def describe(self) -> str:
        each = f" ({self.processes} processes, each)" if self.processes > 1 else ""
        return (
            f"{self.total / GB:.1f} GB{each}: decoded patches {self.cache / GB:.2f} GB "
            f"({self.batches} batches in flight x {self.batch_size} x {self.image_size} x "
            f"{self.image_size} x 3 bytes), "
            f"network and optimiser {self.parameters / GB:.2f} GB, "
            f"activations {self.activations / GB:.2f} GB "
            f"({self.pass_size} images per pass), runtime {self.runtime / GB:.2f} GB"
        )


def estimate(cells: int, classes: int, config: dict, device_type: str) -> MemoryEstimate:
    """The peak resident memory of a run's training process over `cells` patches with `config`
    on `device_type` (the cells do not count: the patches stream)."""
    size = config["image_size"]
    images = pass_size(config, device_type)
    on_cuda = device_type == "cuda"
    batch = batch_size_for(config, device_type)
    flight = batches_in_flight(config, device_type)
    return MemoryEstimate(
        cells=cells,
        image_size=size,
        pass_size=images,
        runtime=RUNTIME_BYTES + (CUDA_CONTEXT_BYTES if on_cuda else 0),
        cache=flight * batch * size * size * 3,
        batches=flight,
        batch_size=batch,
        # On CUDA only the stored copies (weights on the host, the file's bytes) are host memory.
        parameters=(2 if on_cuda else PARAMETER_COPIES)
        * 4
        * parameters(classes, bool(config.get("pretrained"))),
        activations=0 if on_cuda else images * size * size * ACTIVATION_BYTES_PER_PIXEL,
        processes=config.get("processes", 1),
    )


def require_within(found: MemoryEstimate, limit_gb: float) -> None:
    """Refuse a run whose estimate exceeds the limit, naming both and what lowers it."""
    if found.total > limit_gb * GB:
        raise DomainError(
            f"This run would need an estimated {found.describe()}; the limit "
            f"(TRAINING_MAX_MEMORY_GB) is {limit_gb:g} GB. Lower image_size, batch_size, "
            "micro_batch_size or loader_workers, or raise the limit where the training worker "
            "has the memory.",
            field="config",
        )
