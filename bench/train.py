"""Benchmark: training images per second of the project's loop against a bare PyTorch loop.

Three figures, in one process, on one device (`--device`, CUDA where present):

    data pipeline  `mltasks.pipeline` alone: PNG patches read from storage, decoded (Pillow) by
                   the loader workers, collated into uint8 batches (pinned on CUDA); no model.
                   Is the device starved? Then again with the decoded-patch cache on disk warm;
    bare loop      the same network (ResNeXt-50 32x4d, `mltasks.resnext`), batch and optimiser
                   (Adam) on synthetic float images already on the device, channels_last, bf16
                   autocast on CUDA: forward, cross-entropy, backward, step;
    project loop   `mltasks.training.train_fold` for one epoch of `--steps` steps through the
                   real pipeline: oversampling sampler, loader workers, uint8 -> float on the
                   device, rotation 0-359 degrees and flips on the device, progress and cancel
                   checks (and once without augmentation: the loop's own overhead).

With `--ddp N`, two figures instead: the project loop in one process (with `--threads`, default
cores / N, threads; or one GPU), and the same loop data-parallel in N processes started by
torchrun (gloo on the CPU, each with as many threads; NCCL on CUDA, one GPU each), on the same
global batch; their ratio per core (per GPU), where 1.0 is perfect scaling.

Loop rates leave out the first step (model build, cuDNN's benchmark, a compile). The peak memory
is the device's (`torch.cuda.max_memory_allocated`) or on the CPU this process's peak RSS, per
figure. The full protocol's time is projected from the project loop's rate: 5 folds x 15 epochs
x 10,000 images x classes per epoch (validation and test left out). Batch "auto" (the default)
is the run's probe on CUDA, 32 on the CPU. No database: the patches are PNG files in a temporary
media folder, removed at the end.

    .venv/bin/python bench/train.py [--device cpu|cuda] [--image-size 400] [--steps 20]
        [--batch N] [--workers N] [--cells 256] [--classes 15] [--compile] [--repeats 1]
        [--ddp N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchenv import ROOT  # also puts the project on the path

PROTOCOL = {"folds": 5, "epochs": 15, "images_per_class": 10_000}


def synchronise(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as handle:  # Linux: the peak from here on
            handle.write("5")


def peak_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def store_patches(count: int, size: int) -> list[str]:
    """`count` smooth synthetic PNG patches in media storage (cell-like: blobs on white)."""
    from PIL import Image, ImageFilter

    from core.storage import store_bytes

    rng = np.random.default_rng(0)
    names = []
    for n in range(count):
        coarse = rng.integers(120, 256, (size // 16 + 1, size // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        buffer = io.BytesIO()
        image.filter(ImageFilter.GaussianBlur(2)).save(buffer, "PNG")
        names.append(f"bench/patch-{n}.png")
        store_bytes(names[-1], buffer.getvalue())
    return names


def pipeline_rate(data, config, device, batches: int) -> float:
    """Images per second of the loader alone over `batches` batches (after the first)."""
    from mltasks import pipeline

    sampler = pipeline.OversampledSampler(
        np.arange(len(data.labels)),
        data.labels,
        config["oversample_to"],
        np.random.default_rng(0),
    )
    loader = pipeline.loader(
        data.images, data.labels, sampler, config["batch_size"], config, device.type
    )
    seen, started = 0, None
    try:
        for step, (images, _) in enumerate(loader):
            images = images.to(device, non_blocking=True)
            if step == 0:
                synchronise(device)
                started = time.perf_counter()
                continue
            seen += len(images)
            if step == batches:
                break
        synchronise(device)
        return seen / (time.perf_counter() - started)
    finally:
        pipeline.shut_down(loader)


def bare_loop(classes: int, size: int, batch: int, steps: int, device) -> float:
    """Images per second of plain training steps on synthetic images already on the device."""
    from mltasks.resnext import resnext50_32x4d

    torch.manual_seed(0)
    model = resnext50_32x4d(classes).to(device, memory_format=torch.channels_last).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, size, size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, classes, (batch,), device=device)
    autocast = device.type == "cuda"
    started = None
    for step in range(steps):
        if step == 1:
            synchronise(device)
            started = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(images)
        torch.nn.functional.cross_entropy(logits.float(), targets).backward()
        optimiser.step()
    synchronise(device)
    return (steps - 1) * batch / (time.perf_counter() - started)


def project_loop(data, config, device, augment: bool, ranks=None) -> float:
    """Images per second of `train_fold`'s training steps (one epoch of exactly the config's
    steps, the first left out; not its validation and test predictions after); in a
    data-parallel process (`ranks`), of all the processes together."""
    from mltasks import distributed, training

    config = {**config, "rotate": augment, "flip": augment}
    everything = np.arange(len(data.labels))
    plan = training.FoldPlan("0", everything, everything[:2], everything[:2])
    times: list[float] = []

    def progress(update: dict) -> None:
        if "step" in update:
            synchronise(device)
            times.append(time.perf_counter())

    ranks = ranks or distributed.SINGLE
    training.train_fold(data, plan, config, device, progress, lambda: False, ranks)
    return (len(times) - 1) * config["batch_size"] / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--image-size", type=int, default=400, help="image side in px")
    parser.add_argument("--steps", type=int, default=20, help="training steps per loop")
    parser.add_argument("--batch", type=int, default=None, help='default "auto"')
    parser.add_argument("--workers", type=int, default=None, help="loader_workers (auto)")
    parser.add_argument("--cells", type=int, default=256, help="distinct stored patches")
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--compile", action="store_true", help="torch.compile the project loop")
    parser.add_argument("--repeats", type=int, default=1, help="best of, the loops taking turns")
    parser.add_argument("--ddp", type=int, default=0, help="data-parallel processes to compare")
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)  # under torchrun
    args = parser.parse_args()
    if args.rank:
        return rank_loop()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: this machine has no CUDA.")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cytomark-bench-train-") as folder:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
        os.environ.update(
            {"MEDIA_ROOT": str(Path(folder) / "media"), "VAR_DIR": str(Path(folder) / "var")}
        )
        os.chdir(ROOT)
        import django

        django.setup()
        (compare_ddp if args.ddp else run)(args, device)


def loop_config(args, device, classes: int) -> dict:
    """The benchmark's run config; on CUDA with batch "auto", the probe's batch."""
    from mltasks import memory, run_config, training

    config = run_config.load_config(
        {
            "image_size": args.image_size,
            "batch_size": args.batch or "auto",
            "max_epochs": 1,
            "loader_workers": args.workers,
            "device": device.type,
            "compile": args.compile,
        }
    )
    if config["batch_size"] == "auto" and device.type == "cuda":
        training.prepare_device(config, device)
        config["batch_size"] = training.probe_batch_size(config, classes, device)
    config["batch_size"] = memory.batch_size_for(config, device.type)
    config["oversample_to"] = max(1, args.steps * config["batch_size"] // classes)
    return config


def stored_data(names: list[str], classes: int, size: int, cache: bool = False):
    from mltasks import pipeline, training

    found = pipeline.DiskCache(len(names), size) if cache else None
    labels = np.arange(len(names)) % classes
    return training.TrainingData(
        pipeline.StoredPatches(names, size, found),
        labels,
        list(range(len(names))),
        [str(c) for c in range(classes)],
    )


def compare_ddp(args, device) -> None:
    """The project loop in one process against the same loop in `--ddp` processes."""
    cores = len(os.sched_getaffinity(0))
    processes = args.ddp
    if device.type == "cuda" and torch.cuda.device_count() < processes:
        sys.exit(f"--ddp {processes}: this machine has {torch.cuda.device_count()} GPU(s).")
    config = loop_config(args, device, args.classes)
    if device.type == "cuda":  # the probe's batch is one GPU's: the global batch is N of them
        config["batch_size"] *= processes
        config["oversample_to"] *= processes
    names = store_patches(args.cells, args.image_size)
    # Per process: `--threads`, else the cores shared out; one process uses as many.
    threads = args.threads or max(1, cores // processes)
    single_config = {**config, "batch_size": config["batch_size"] // processes}
    if device.type == "cpu":
        torch.set_num_threads(threads)
        single_config = config
    best_single = best_ddp = 0.0
    for _ in range(args.repeats):
        rate = project_loop(
            stored_data(names, args.classes, args.image_size), single_config, device, True
        )
        best_single = max(best_single, rate)
        print(f"  one process: {rate:.1f} images/s", flush=True)
        rate = ddp_rate(names, args.classes, config, processes, threads)
        best_ddp = max(best_ddp, rate)
        print(f"  {processes} processes: {rate:.1f} images/s", flush=True)
    unit = "GPU" if device.type == "cuda" else "core"
    used = 1 if device.type == "cuda" else threads
    print(
        f"\nResNeXt-50 32x4d, {args.image_size} x {args.image_size} px, global batch "
        f"{config['batch_size']}, {args.steps} steps, best of {args.repeats}; "
        + (torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cores} cores")
        + f"; {threads} thread(s) per process"
    )
    print(
        f"one process ({used} {unit}(s)): {best_single:9.1f} images/s, "
        f"{best_single / used:.1f} per {unit}"
    )
    per = processes * used
    print(
        f"DDP, {processes} processes ({per} {unit}s): {best_ddp:9.1f} images/s, "
        f"{best_ddp / per:.1f} per {unit}"
    )
    print(f"per {unit}: DDP = {best_ddp / per / (best_single / used):.2f} x one process")


def ddp_rate(names, classes: int, config, processes: int, threads: int) -> float:
    """Images per second of the project loop in `processes` ranks (torchrun), from rank 0."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "rate.json"
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "BENCH_DDP": json.dumps(
                {"names": names, "classes": classes, "config": config, "result": str(result)}
            ),
        }
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={processes}",
                __file__,
                "--rank",
            ],
            env=env,
            check=True,
        )
        return json.loads(result.read_text())["rate"]


def rank_loop() -> None:
    """One rank of `ddp_rate` (under torchrun): the loop, rank 0 writes the rate."""
    import django

    os.chdir(ROOT)
    django.setup()
    from mltasks import distributed

    job = json.loads(os.environ["BENCH_DDP"])
    config = job["config"]
    ranks = distributed.Ranks.from_env()
    device = distributed.device_for(config, ranks)
    distributed.start_group(ranks, device)
    try:
        data = stored_data(job["names"], job["classes"], config["image_size"])
        rate = project_loop(data, config, device, True, ranks)
        if ranks.leader:
            Path(job["result"]).write_text(json.dumps({"rate": rate}))
    finally:
        distributed.end_group()


def run(args, device) -> None:
    from mltasks import pipeline

    size, classes = args.image_size, args.classes
    config = loop_config(args, device, classes)
    batch = config["batch_size"]
    steps = config["oversample_to"] * classes // batch
    names = store_patches(args.cells, size)

    def data(cache: bool):
        return stored_data(names, classes, size, cache)

    figures: dict[str, tuple[float, int]] = {}

    def measure(name: str, how) -> None:
        reset_peak(device)
        rate = how()
        found = figures.get(name, (0.0, 0))
        figures[name] = (max(rate, found[0]), max(peak_bytes(device), found[1]))
        print(f"  {name}: {rate:.1f} images/s", flush=True)

    workers = pipeline.workers_for(config, device.type)
    streamed, cached = data(cache=False), data(cache=True)
    for position in range(args.cells):  # fill the cache
        cached.images[position]
    loops = {
        "data pipeline (decode + collate, no model)": lambda: pipeline_rate(
            streamed, config, device, steps
        ),
        "data pipeline, disk cache warm": lambda: pipeline_rate(cached, config, device, steps),
        "bare loop (synthetic, on the device)": lambda: bare_loop(
            classes, size, batch, steps, device
        ),
        "project loop": lambda: project_loop(streamed, config, device, True),
        "project loop, no augmentation": lambda: project_loop(streamed, config, device, False),
    }
    for _ in range(args.repeats):
        for name, how in loops.items():
            measure(name, how)
    cached.close()
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    bf16 = "bf16 autocast, " if device.type == "cuda" else "float32, "
    print(
        f"\nResNeXt-50 32x4d, {size} x {size} px, batch {batch}, {steps} steps, {bf16}{where}; "
        f"loader_workers {workers}, {args.cells} stored PNG patches; best of {args.repeats}"
        + (", torch.compile" if args.compile else "")
        + "\n"
    )
    bare = figures["bare loop (synthetic, on the device)"][0]
    memory_kind = "peak GPU memory" if device.type == "cuda" else "peak RSS"
    for name, (rate, peak) in figures.items():
        print(
            f"{name:44} {rate:9.1f} images/s  {rate / bare:6.2f} x the bare loop  "
            f"{memory_kind} {peak / 2**30:6.2f} GB"
        )
    project = figures["project loop"][0]
    feeding = figures["data pipeline (decode + collate, no model)"][0] / project
    plain = figures["project loop, no augmentation"][0]
    print(
        f"\nthe project loop: {project / bare:.2f} x the bare loop "
        f"(without augmentation {plain / bare:.2f} x, own overhead {1 - plain / bare:.1%})"
    )
    print(
        f"the pipeline alone delivers {feeding:.1f} x the project loop's rate"
        + (" (below 1.1: the device waits for data)" if feeding < 1.1 else "")
    )
    images = PROTOCOL["folds"] * PROTOCOL["epochs"] * PROTOCOL["images_per_class"] * classes
    print(
        f"full protocol ({PROTOCOL['folds']} folds x {PROTOCOL['epochs']} epochs x "
        f"{PROTOCOL['images_per_class']:,} images x {classes} classes = {images:,} images) "
        f"projected at the project loop's rate: {images / project / 3600:.1f} h"
    )


if __name__ == "__main__":
    main()
