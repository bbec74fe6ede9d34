"""The streamed training data pipeline (mltasks.pipeline): oversampling by indices, the same
batches with and without loader worker processes, the decoded-patch cache on disk, JPEG draft
decoding, memory that does not follow the data set's size, and batched saliency."""

from __future__ import annotations

import io
import multiprocessing
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import DomainError
from core.storage import store_bytes
from mltasks import pipeline, run_config, training

SIZE = 32


def _stored(count: int, size: int = SIZE, prefix: str = "p") -> list[str]:
    """`count` distinct PNG patches in media storage; their names."""
    rng = np.random.default_rng(count)
    names = []
    for n in range(count):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, "PNG")
        names.append(f"test-patches/{prefix}-{n}.png")
        store_bytes(names[-1], buffer.getvalue())
    return names


def test_the_sampler_yields_each_epochs_oversampled_positions_and_copies_nothing():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    positions = np.arange(100, 108)
    sampler = pipeline.OversampledSampler(positions, labels, 5, np.random.default_rng(3))
    expected = np.random.default_rng(3)
    assert len(sampler) == 15
    for _ in range(2):  # each epoch a fresh draw from the same generator, as before
        drawn = list(sampler)
        assert drawn == positions[pipeline.oversampled_order(labels, 5, expected)].tolist()
        assert all(isinstance(p, int) for p in drawn)
        assert np.bincount(labels[np.array(drawn) - 100]).tolist() == [5, 5, 5]
    images = torch.zeros(108, SIZE, SIZE, 3, dtype=torch.uint8)
    loader = pipeline.loader(images, np.zeros(108, int), sampler, 4, {"seed": 0}, "cpu")
    assert loader.dataset.images is images  # the loader indexes the data, never a copy of it
    assert [len(b[0]) for b in loader] == [4, 4, 4, 3]


def test_two_loader_workers_give_the_same_batches_as_none(settings, tmp_path):
    """Not only the same multiset: the same batches in the same order (the order is drawn in
    the main process; the workers only decode)."""
    names = _stored(24)
    patches = pipeline.StoredPatches(names, SIZE)
    labels = np.arange(24) % 3

    def epochs(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        config = {"seed": 0, "loader_workers": workers, "prefetch_factor": 2}
        sampler = pipeline.OversampledSampler(np.arange(24), labels, 6, np.random.default_rng(1))
        loader = pipeline.loader(patches, labels, sampler, 5, config, "cpu")
        try:
            return [batch for _ in range(2) for batch in loader]
        finally:
            pipeline.shut_down(loader)

    alone, with_workers = epochs(0), epochs(2)
    assert len(alone) == len(with_workers) == 8
    for (images, targets), (other_images, other_targets) in zip(alone, with_workers, strict=True):
        assert images.dtype == torch.uint8 and images.shape[1:] == (SIZE, SIZE, 3)
        assert torch.equal(images, other_images) and torch.equal(targets, other_targets)
    first = alone[0][0][0].numpy()
    assert any(np.array_equal(first, pipeline.read_patch(name, SIZE)) for name in names)


def test_the_disk_cache_is_filled_once_and_read_back_equal(settings, tmp_path):
    settings.VAR_DIR = tmp_path / "var"
    names = _stored(10)
    cache = pipeline.DiskCache(len(names), SIZE)
    assert cache.folder.parent == tmp_path / "var" / "patch-cache"
    patches = pipeline.StoredPatches(names, SIZE, cache)
    # Filled by two loader workers (the file is shared), then read back in this process.
    config = {"seed": 0, "loader_workers": 2}
    loader = pipeline.loader(patches, np.zeros(10, int), list(range(10)), 3, config, "cpu")
    decoded = torch.cat([images for images, _ in loader])
    pipeline.shut_down(loader)
    assert cache.filled() == 10 and patches.reads == 0  # the workers decoded, not this process
    for position, name in enumerate(names):
        stored = pipeline.read_patch(name, SIZE)
        assert np.array_equal(patches[position], stored)
        assert np.array_equal(decoded[position].numpy(), stored)
    assert patches.reads == 0  # every read came from the cache
    uncached = pipeline.StoredPatches(names, SIZE)
    for position in range(10):
        uncached[position]
        uncached[position]
    assert uncached.reads == 20
    patches.close()
    assert not cache.folder.exists()


def test_a_large_jpeg_is_decoded_in_draft_mode_to_the_image_size():
    side = 512
    yy, xx = np.mgrid[0:side, 0:side]
    pixels = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    pixels = np.repeat(np.repeat(pixels[::8, ::8], 8, axis=0), 8, axis=1)  # smooth 8 px blocks
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    store_bytes("test-patches/large.jpg", buffer.getvalue())
    fast = pipeline.read_patch("test-patches/large.jpg", 64)
    full = np.asarray(Image.fromarray(pixels).resize((64, 64), Image.BILINEAR))
    assert fast.shape == (64, 64, 3) and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 12
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        image.draft("RGB", (64, 64))
        assert image.size == (64, 64)  # decoded at an eighth of the scale


def _peak_traced_over_an_epoch(count: int) -> int:
    names = _stored(count, 64, prefix=f"n{count}")
    labels = np.arange(count) % 2
    data = training.TrainingData(
        images=pipeline.StoredPatches(names, 64),
        labels=labels,
        cell_ids=list(range(count)),
        classes=["A", "B"],
    )
    sampler = pipeline.OversampledSampler(np.arange(count), labels, 100, np.random.default_rng(0))
    loader = pipeline.loader(data.images, labels, sampler, 16, {"seed": 0}, "cpu")
    tracemalloc.start()
    try:
        seen = sum(len(images) for images, _ in loader)
        return tracemalloc.get_traced_memory()[1] if seen == 200 else -1
    finally:
        tracemalloc.stop()


def test_the_data_sets_size_does_not_raise_the_peak_memory_of_an_epoch():
    """200 and 2,000 patches of 64 px, an epoch of 200 images each: the 2,000 decoded at
    once would be 24.6 MB; the peak stays at a few batches."""
    small, large = _peak_traced_over_an_epoch(200), _peak_traced_over_an_epoch(2000)
    assert small > 0 and large > 0
    assert large - small < 2 * 2**20, (small, large)
    assert large < 8 * 2**20, large  # a batch of 16 is 0.2 MB; far below 2,000 x 12 KB


def test_loader_workers_fall_back_to_none_in_a_daemonic_process():
    assert pipeline.workers_for({"loader_workers": 3}, "cpu") == 3
    assert pipeline.workers_for({"loader_workers": None}, "cpu") == 0
    assert 0 <= pipeline.workers_for({"loader_workers": None}, "cuda") <= 8
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    child = context.Process(
        target=lambda: answers.put(pipeline.workers_for({"loader_workers": 3}, "cpu")),
        daemon=True,
    )
    child.start()
    assert answers.get(timeout=30) == 0  # a Celery prefork child may not start processes
    child.join(timeout=30)


def test_the_new_config_keys_are_checked():
    config = run_config.load_config(
        {"batch_size": "auto", "loader_workers": 2, "patch_cache": "disk", "compile": True}
    )
    assert config["prefetch_factor"] == 2 and config["batch_size"] == "auto"
    for key, wrong in (
        ("batch_size", "big"),
        ("loader_workers", -1),
        ("prefetch_factor", 0),
        ("patch_cache", "ram"),
        ("compile", "yes"),
    ):
        with pytest.raises(DomainError, match=f"{key} must be"):
            run_config.load_config({key: wrong})


def test_a_fold_trains_the_same_with_loader_workers_and_the_disk_cache(settings, tmp_path):
    """The same seed, 0 workers and in memory against 2 workers through the disk cache: the
    same batches, so the same model and test probabilities."""
    settings.VAR_DIR = tmp_path / "var"
    count = 12
    names = _stored(count)
    labels = np.arange(count) % 2
    index = np.arange(count)
    plan = training.FoldPlan("0", index[:8], index[8:10], index[10:])
    base = {"image_size": SIZE, "batch_size": 4, "max_epochs": 1, "oversample_to": 4}
    results = []
    for images, overrides in (
        (pipeline.StoredPatches(names, SIZE), {"loader_workers": 0}),
        (
            pipeline.StoredPatches(names, SIZE, pipeline.DiskCache(count, SIZE)),
            {"loader_workers": 2, "patch_cache": "disk"},
        ),
    ):
        data = training.TrainingData(images, labels, list(range(count)), ["A", "B"])
        config = run_config.load_config({**base, **overrides})
        steps = []
        results.append(
            training.train_fold(
                data, plan, config, torch.device("cpu"), steps.append, lambda: False
            )
        )
        data.close()
        assert sum("step" in s for s in steps) == 2  # 2 classes x 4 / batch 4
    first, second = results
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]
    np.testing.assert_array_equal(first.probabilities, second.probabilities)
    assert not list((tmp_path / "var" / "patch-cache").iterdir())  # removed at the end


def test_saliency_is_batched_and_equals_one_image_at_a_time():
    from mltasks.resnext import resnext50_32x4d

    torch.manual_seed(0)
    model = resnext50_32x4d(num_classes=3)
    images = torch.randint(0, 256, (3, SIZE, SIZE, 3), dtype=torch.uint8)
    labels = np.array([0, 2, 1])
    together = training.saliency(model, images, labels, torch.device("cpu"))
    assert together.shape == (3, SIZE, SIZE) and together.max() == pytest.approx(1.0)
    for n in range(3):
        alone = training.saliency(model, images[n : n + 1], labels[n : n + 1], torch.device("cpu"))
        np.testing.assert_allclose(together[n], alone[0], rtol=1e-4, atol=1e-5)
