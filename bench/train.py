"""Benchmark: training images per second of the project's loop against a bare PyTorch loop.

Both train the same network (ResNeXt-50 32x4d, `mltasks.resnext`), with the same batch size,
optimiser (Adam) and images (a synthetic uint8 set held in memory, as the project caches the
decoded patches), for the same number of steps, in one process:

    bare loop      for each batch: uint8 -> float, forward, cross-entropy, backward, step;
    project        `mltasks.training.train_fold` for one epoch: oversampled order, on-device
                   augmentation (random rotation 0-359 degrees and flips), progress callback,
                   cancel check, then its validation and test predictions (kept tiny here);
    project, no augmentation   the same with `rotate` and `flip` off: the loop's own overhead.

Goal on CPU: the project's overhead at most 10 % (images per second at least 0.9 x the bare
loop's). Each figure is the best of `--repeats`. On a CUDA machine the same script measures
the GPU (bf16 autocast and channels_last in both loops) and projects the full protocol's time.

    .venv/bin/python bench/train.py [--size 64] [--batch 16] [--steps 12] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")


def synthetic_data(count: int, size: int, classes: int, seed: int):
    from mltasks.training import TrainingData

    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8))
    labels = np.arange(count) % classes
    return TrainingData(
        images=images,
        labels=labels,
        cell_ids=list(range(count)),
        classes=[f"C{i}" for i in range(classes)],
    )


def bare_loop(data, batch: int, steps: int, device) -> float:
    """Seconds for `steps` plain training steps."""
    from mltasks.resnext import resnext50_32x4d

    torch.manual_seed(0)
    model = resnext50_32x4d(len(data.classes)).to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = device.type == "cuda"
    order = np.random.default_rng(0).permutation(len(data.labels))
    model.train()
    synchronise(device)
    started = time.perf_counter()
    for step in range(steps):
        index = order[(step * batch) % len(order) :][:batch]
        images = data.images[index].permute(0, 3, 1, 2).float().div(255).to(device)
        images = images.contiguous(memory_format=torch.channels_last)
        targets = torch.from_numpy(data.labels[index]).to(device)
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(images)
        loss_fn(logits.float(), targets).backward()
        optimiser.step()
    synchronise(device)
    return time.perf_counter() - started


def project_loop(data, batch: int, steps: int, device, augment: bool) -> float:
    """Seconds of the project's training steps (one epoch of exactly `steps` steps)."""
    from mltasks import run_config, training

    classes = len(data.classes)
    config = run_config.load_config(
        {
            "image_size": data.images.shape[1],
            "batch_size": batch,
            "max_epochs": 1,
            "oversample_to": steps * batch // classes,
            "rotate": augment,
            "flip": augment,
            "device": device.type,
        }
    )
    everything = np.arange(len(data.labels))
    plan = training.FoldPlan("0", everything, everything[:batch], everything[:batch])
    times: list[float] = []

    def progress(update: dict) -> None:
        if "step" in update:
            synchronise(device)
            times.append(time.perf_counter())

    synchronise(device)
    started = time.perf_counter()
    training.train_fold(data, plan, config, device, progress, lambda: False)
    # Only the training steps count: up to the last step, not the validation and test after.
    return times[-1] - started


def synchronise(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side in px")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import django

    django.setup()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = synthetic_data(max(256, args.batch * 4), args.size, args.classes, seed=0)
    images = args.steps * args.batch
    bare_loop(data, args.batch, 2, device)  # warm-up: allocator, kernels, threads
    rates = {}
    for name, run in (
        ("bare PyTorch loop", lambda: bare_loop(data, args.batch, args.steps, device)),
        ("project loop", lambda: project_loop(data, args.batch, args.steps, device, True)),
        (
            "project loop, no augmentation",
            lambda: project_loop(data, args.batch, args.steps, device, False),
        ),
    ):
        rates[name] = images / min(run() for _ in range(args.repeats))
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"\nResNeXt-50 32x4d, {args.size} x {args.size} px, batch {args.batch}, "
        f"{args.steps} steps, {where}; best of {args.repeats}\n"
    )
    bare = rates["bare PyTorch loop"]
    for name, rate in rates.items():
        print(f"{name:32} {rate:9.1f} images/s  {rate / bare:5.2f} x the bare loop")
    overhead = 1 - rates["project loop, no augmentation"] / bare
    print(f"\nthe project loop's own overhead: {overhead:.1%} (goal: at most 10 %)")
    if device.type == "cuda":
        protocol = 5 * 15 * 15 * 10_000  # folds x epochs x classes x images per class per epoch
        hours = protocol / rates["project loop"] / 3600
        print(f"full protocol (5 folds, 15 classes x 10,000, 15 epochs) projected: {hours:.1f} h")


if __name__ == "__main__":
    main()
