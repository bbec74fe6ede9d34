"""The training data pipeline: patches streamed from storage, decoded in loader processes.

A split's patches are never all in memory. `StoredPatches` reads one patch from storage when
it is asked for (Pillow, JPEG draft mode where the stored patch is larger than the image size),
optionally through a `DiskCache` of decoded pixels (a `numpy.memmap` uint8 file filled on first
read and reused by later epochs and folds). A `torch.utils.data.DataLoader` over `PatchDataset`
decodes in `loader_workers` processes with `prefetch_factor` batches each in flight, pinned
memory on CUDA and workers that persist across the epochs of a fold; oversampling is
`OversampledSampler`, which yields positions (one epoch's `oversampled_order`), never copies.
Memory thus follows the batch size and the prefetch depth, not the data set's size.

A batch is (uint8 images (N, H, W, 3), class indices); it becomes float and is augmented on the
device (`mltasks.augment`). The loader draws no random numbers of its own (its generator is
seeded from the config), so a seed gives the same batches with any number of workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from PIL import Image

log = logging.getLogger(__name__)

# `loader_workers` left to the run: on CUDA one per core but one, at most this many.
MAX_AUTO_WORKERS = 8


def decode(handle, image_size: int) -> np.ndarray:
    """An image file's pixels as uint8 RGB (H, W, 3), resized to `image_size` square. A JPEG
    larger than that is decoded at a reduced scale first (`Image.draft`), which is much faster."""
    with Image.open(handle) as image:
        if image.format == "JPEG" and min(image.size) > image_size:
            image.draft("RGB", (image_size, image_size))
        picture = image.convert("RGB")
        if picture.size != (image_size, image_size):
            picture = picture.resize((image_size, image_size), Image.BILINEAR)
        return np.array(picture)


def read_patch(name: str, image_size: int) -> np.ndarray:
    """A patch in media storage, decoded as `decode` does."""
    from django.core.files.storage import default_storage

    with default_storage.open(name, "rb") as handle:
        return decode(handle, image_size)


class DiskCache:
    """Decoded patches in a uint8 memory-mapped file (count, size, size, 3) beside a byte per
    patch saying it is filled. Opened anew in each process (loader workers write to it too:
    the file is shared, each patch is written whole before its flag). `close` removes the
    folder; so does the process that made it when it forgets the cache or exits."""

    def __init__(self, count: int, image_size: int, root: Path | str | None = None):
        self.count, self.image_size = count, image_size
        if root is None:
            from django.conf import settings

            root = Path(settings.VAR_DIR) / "patch-cache"
        Path(root).mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=root))
        shape = (count, image_size, image_size, 3)
        np.lib.format.open_memmap(self.folder / "pixels.npy", "w+", np.uint8, shape).flush()
        np.lib.format.open_memmap(self.folder / "filled.npy", "w+", np.uint8, (count,)).flush()
        self._opened: tuple[int, np.memmap, np.memmap] | None = None
        self._remove = weakref.finalize(self, _remove_folder, self.folder, os.getpid())

    def _arrays(self) -> tuple[np.memmap, np.memmap]:
        if self._opened is None or self._opened[0] != os.getpid():
            pixels = np.load(self.folder / "pixels.npy", mmap_mode="r+")
            filled = np.load(self.folder / "filled.npy", mmap_mode="r+")
            self._opened = (os.getpid(), pixels, filled)
        return self._opened[1], self._opened[2]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_opened": None, "_remove": None}

    def get(self, position: int) -> np.ndarray | None:
        pixels, filled = self._arrays()
        return np.array(pixels[position]) if filled[position] else None

    def put(self, position: int, image: np.ndarray) -> None:
        pixels, filled = self._arrays()
        pixels[position] = image
        filled[position] = 1

    def filled(self) -> int:
        return int(self._arrays()[1].sum())

    def close(self) -> None:
        self._opened = None
        if self._remove is not None:
            self._remove()


def _remove_folder(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # never a loader worker's copy
        shutil.rmtree(folder, ignore_errors=True)


class StoredPatches(Sequence):
    """The split's patches by position, read from storage when asked for (through `cache`
    where given): `patches[i]` is uint8 (H, W, 3). `reads` counts this process's decodes."""

    def __init__(self, names: list[str], image_size: int, cache: DiskCache | None = None):
        self.names, self.image_size, self.cache = list(names), image_size, cache
        self.reads = 0

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, position):
        if not isinstance(position, int | np.integer):
            raise TypeError("StoredPatches takes one position; use batch() for several.")
        if self.cache is not None and (found := self.cache.get(int(position))) is not None:
            return found
        image = read_patch(self.names[position], self.image_size)
        self.reads += 1
        if self.cache is not None:
            self.cache.put(int(position), image)
        return image

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def batch(images, positions: Sequence[int]) -> torch.Tensor:
    """The images at `positions` as one uint8 (N, H, W, 3) tensor, from a uint8 tensor or any
    sequence of (H, W, 3) arrays (`StoredPatches`)."""
    if isinstance(images, torch.Tensor):
        return images[torch.as_tensor(np.asarray(positions, dtype=np.int64))]
    return torch.from_numpy(np.stack([np.asarray(images[int(p)]) for p in positions]))


class PatchDataset(torch.utils.data.Dataset):
    """(uint8 image (H, W, 3), class index) by position into the run's data."""

    def __init__(self, images, labels: np.ndarray):
        self.images, self.labels = images, np.asarray(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, position: int):
        image = self.images[position]
        image = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.asarray(image))
        return image, int(self.labels[position])


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


class OversampledSampler(torch.utils.data.Sampler[int]):
    """Each epoch (each `iter`), `positions` in a fresh `oversampled_order` of their `labels`,
    drawn from `rng` in the main process: indices only, the images are never copied."""

    def __init__(self, positions: np.ndarray, labels: np.ndarray, target: int, rng):
        self.positions, self.labels = np.asarray(positions), np.asarray(labels)
        self.target, self.rng = target, rng

    def __len__(self) -> int:
        return len(np.unique(self.labels)) * self.target

    def __iter__(self) -> Iterator[int]:
        order = self.positions[oversampled_order(self.labels, self.target, self.rng)]
        return iter(order.tolist())


def global_batch_sizes(total: int, batch_size: int, world: int = 1) -> list[int]:
    """The images of each optimiser step of an epoch of `total` positions, across all `world`
    processes: full batches, then the rest; a rest smaller than `world` is left out in data-
    parallel training (every process must take part in every step)."""
    sizes = [batch_size] * (total // batch_size)
    if total % batch_size and (world == 1 or total % batch_size >= world):
        sizes.append(total % batch_size)
    return sizes


class RankBatches(torch.utils.data.Sampler[list[int]]):
    """This process's share of every global batch of a data-parallel epoch: each process walks
    the same order (its sampler draws from the same seed) and takes its slice of each batch of
    `batch_size` positions, so `world` processes see exactly the batches one process would."""

    def __init__(self, sampler, batch_size: int, rank: int, world: int):
        self.sampler, self.batch_size, self.rank, self.world = sampler, batch_size, rank, world

    def __len__(self) -> int:
        return len(global_batch_sizes(len(self.sampler), self.batch_size, self.world))

    def __iter__(self) -> Iterator[list[int]]:
        order = np.fromiter(iter(self.sampler), dtype=np.int64)
        start = 0
        for size in global_batch_sizes(len(order), self.batch_size, self.world):
            yield np.array_split(order[start : start + size], self.world)[self.rank].tolist()
            start += size


def workers_for(config: dict, device_type: str) -> int:
    """Loader processes: `loader_workers` where set; else on CUDA one per CPU core but one, up to
    MAX_AUTO_WORKERS, on the CPU none (the network needs the cores). None in a daemonic process
    (a Celery prefork pool's child may not start processes): it decodes itself then, and says so."""
    wanted = config.get("loader_workers")
    if wanted is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        wanted = min(MAX_AUTO_WORKERS, max(0, (cores or 1) - 1)) if device_type == "cuda" else 0
    if wanted and multiprocessing.current_process().daemon:
        log.warning(
            "loader_workers=%s asked for, but this is a daemonic process (a Celery prefork "
            "child), which may not start processes: decoding in the training process instead. "
            "Run the training worker with --pool=solo or --pool=threads to decode in parallel.",
            wanted,
        )
        return 0
    return wanted


def loader(
    images,
    labels: np.ndarray,
    sampler,
    batch_size: int,
    config: dict,
    device_type: str,
    *,
    persistent: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> torch.utils.data.DataLoader:
    """A DataLoader of (uint8 images, class indices) batches in the sampler's order (any
    iterable of positions), decoded by `workers_for` processes; with `shard` (rank, world) of
    a data-parallel run, this process's share of each batch (`RankBatches`)."""
    workers = workers_for(config, device_type)
    extra = {}
    if workers:
        extra = {"prefetch_factor": config.get("prefetch_factor") or 2}
        extra["persistent_workers"] = persistent
    rank, world = shard
    if world > 1:
        extra["batch_sampler"] = RankBatches(sampler, batch_size, rank, world)
    else:
        extra.update(batch_size=batch_size, sampler=sampler)
    return torch.utils.data.DataLoader(
        PatchDataset(images, labels),
        num_workers=workers,
        pin_memory=device_type == "cuda",
        generator=torch.Generator().manual_seed(int(config.get("seed", 0))),
        **extra,
    )


def shut_down(data_loader: torch.utils.data.DataLoader) -> None:
    """End a loader's worker processes now (persistent workers otherwise outlive the fold until
    the loader is collected)."""
    iterator = getattr(data_loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    data_loader._iterator = None
