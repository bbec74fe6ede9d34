"""A training run's config: the defaults (the original protocol), each key's check, and the
device a run is estimated for.

Plain Python, no torch: the web process validates a config and estimates a run's memory
(`mltasks.memory`) before it queues it, and never imports torch. Which device a run really
trains on is the training worker's to decide (`mltasks.training.pick_device`), where torch is.
"""

from __future__ import annotations

from core.errors import DomainError
from core.params import SEED_MAX

DEFAULTS = {
    "image_size": 400,  # px: patches are resized to this square (the original: 400 x 400)
    "batch_size": 32,  # images per optimiser step, or "auto" (a probe on CUDA; 32 on the CPU)
    "micro_batch_size": None,  # images per forward/backward pass (None: mltasks.memory decides)
    "max_epochs": 15,  # the original's loss levelled off after about 15 epochs
    "patience": 3,  # early stopping: epochs without a better validation loss
    "validation_fraction": 0.1,  # of the training folds, stratified
    "oversample_to": 10000,  # training images per class per epoch (the original: 10,000)
    "learning_rate": 0.0001,
    "weight_decay": 0.0,
    "rotate": True,
    "flip": True,
    "seed": 0,
    "folds": None,  # which folds to train (None: all)
    "pretrained": None,  # a torchvision-format resnext50_32x4d state dict file, for fine-tuning
    "device": "auto",  # auto (CUDA when present), cpu or cuda
    "threads": None,  # CPU threads per training process (None: the cores shared out)
    "saliency_samples": 6,  # test patches with a saliency map in the report
    "loader_workers": None,  # decoding processes (None: cores - 1 up to 8 on CUDA, 0 on the CPU)
    "prefetch_factor": 2,  # decoded batches each loader worker holds ready
    "patch_cache": "none",  # "disk": decoded patches in a memory-mapped file for later epochs
    "compile": False,  # torch.compile the network for training
    "export_models": True,  # each fold also as TorchScript and ONNX, with a model card
    "processes": 1,  # data-parallel training processes per host (DDP; one per GPU on CUDA)
    "hosts": 1,  # hosts taking part (DDP across hosts; the others join, docs/training.md)
    "fan_out": False,  # each fold a task of its own, for any training worker (mltasks.fanout)
}


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Each key's check, and what the message says it must be.
CONFIG_CHECKS = {
    "image_size": (lambda v: _whole(v) and 32 <= v <= 4096, "a whole number from 32 to 4096"),
    "batch_size": (
        lambda v: v == "auto" or (_whole(v) and 1 <= v <= 65536),
        '"auto" or a whole number of at least 1',
    ),
    "micro_batch_size": (
        lambda v: v is None or (_whole(v) and 1 <= v <= 65536),
        "null or a whole number of at least 1",
    ),
    "max_epochs": (lambda v: _whole(v) and 1 <= v <= 10000, "a whole number of at least 1"),
    "patience": (lambda v: _whole(v) and v >= 1, "a whole number of at least 1"),
    "validation_fraction": (lambda v: _number(v) and 0 < v < 1, "a number between 0 and 1"),
    "oversample_to": (lambda v: _whole(v) and 1 <= v <= 10**7, "a whole number of at least 1"),
    "learning_rate": (lambda v: _number(v) and 0 < v < 10, "a positive number"),
    "weight_decay": (lambda v: _number(v) and 0 <= v < 10, "a number of at least 0"),
    "rotate": (lambda v: isinstance(v, bool), "true or false"),
    "flip": (lambda v: isinstance(v, bool), "true or false"),
    "seed": (lambda v: _whole(v) and 0 <= v <= SEED_MAX, f"a whole number from 0 to {SEED_MAX}"),
    "folds": (
        lambda v: v is None or (isinstance(v, list) and all(isinstance(f, str | int) for f in v)),
        "null or a list of fold names",
    ),
    "pretrained": (lambda v: v is None or isinstance(v, str), "null or a file path"),
    "device": (lambda v: v in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
    "threads": (lambda v: v is None or (_whole(v) and 1 <= v <= 1024), "null or a whole number"),
    "saliency_samples": (lambda v: _whole(v) and 0 <= v <= 100, "a whole number from 0 to 100"),
    "loader_workers": (
        lambda v: v is None or (_whole(v) and 0 <= v <= 64),
        "null or a whole number from 0 to 64",
    ),
    "prefetch_factor": (lambda v: _whole(v) and 1 <= v <= 64, "a whole number from 1 to 64"),
    "patch_cache": (lambda v: v in ("none", "disk"), "none or disk"),
    "export_models": (lambda v: isinstance(v, bool), "true or false"),
    "compile": (lambda v: isinstance(v, bool), "true or false"),
    "processes": (lambda v: _whole(v) and 1 <= v <= 64, "a whole number from 1 to 64"),
    "hosts": (lambda v: _whole(v) and 1 <= v <= 1024, "a whole number from 1 to 1024"),
    "fan_out": (lambda v: isinstance(v, bool), "true or false"),
}


def load_config(overrides: dict | None = None) -> dict:
    """The defaults with `overrides` applied; unknown keys and wrong types are refused."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise DomainError(f"Unknown config key(s) {', '.join(unknown)}; known: {sorted(DEFAULTS)}.")
    config = {**DEFAULTS, **overrides}
    for key, (check, wanted) in CONFIG_CHECKS.items():
        if not check(config[key]):
            raise DomainError(f"{key} must be {wanted}, not {config[key]!r}.", field=key)
    if config["fan_out"] and distributed(config):
        raise DomainError(
            "fan_out trains each fold in one process: it cannot go with processes or hosts "
            "above 1.",
            field="fan_out",
        )
    return config


def distributed(config: dict) -> bool:
    """Whether the run trains in several processes (DDP), launched by torchrun."""
    return config["processes"] * config["hosts"] > 1


def estimated_device_type(config: dict) -> str:
    """The device type a run's memory is estimated for before it is queued: the one the config
    names, the CPU for `auto`. The process that queues a run does not know the training
    worker's device; the CPU estimate is the larger one but at small image sizes, where a
    CUDA context's 1 GB outweighs the activations (docs/training.md, "Memory")."""
    return "cuda" if config["device"] == "cuda" else "cpu"
