"""A training run's memory: refused before it starts when its estimate exceeds
TRAINING_MAX_MEMORY_GB, and while it runs bounded by one pass through the network and the
decoded batches in flight, not by the batch size, images per class per epoch, epochs or the
number of cells (the patches stream: tests/test_pipeline.py measures that one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from core.errors import DomainError
from mltasks import memory, run_config, training
from mltasks.models import TrainingRun

from .conftest import client_for

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"image_size": 32, "batch_size": 16, "max_epochs": 1, "oversample_to": 8}


@pytest.mark.django_db
def test_a_run_estimated_over_the_limit_is_refused_naming_estimate_and_limit(
    split, data_scientist, settings
):
    settings.TRAINING_MAX_MEMORY_GB = 0.5
    api = client_for(data_scientist)
    response = api.post(
        "/api/v1/training-runs/", {"split": split.pk, "config": SMALL}, format="json"
    )
    assert response.status_code == 400, response.json()
    message = response.json()["config"][0]
    assert "would need an estimated" in message
    assert "decoded patches 0.00 GB (2 batches in flight x 16 x 32 x 32 x 3 bytes)" in message
    assert "limit (TRAINING_MAX_MEMORY_GB) is 0.5 GB" in message
    with pytest.raises(CommandError, match=r"estimated .* GB: decoded patches .* is 0.5 GB"):
        call_command("train", "--split", str(split.pk), "--set", "image_size=32")
    assert not TrainingRun.objects.exists()

    settings.TRAINING_MAX_MEMORY_GB = 8.0  # the default: a small run starts
    response = api.post(
        "/api/v1/training-runs/", {"split": split.pk, "config": SMALL}, format="json"
    )
    assert response.status_code == 202, response.json()


def test_the_estimate_follows_the_batches_in_flight_not_the_cells():
    config = run_config.load_config()
    demo = memory.estimate(300, 15, config, "cpu")
    assert demo.pass_size == 4 and demo.total < 3 * memory.GB
    assert demo.cache == 2 * 32 * 400 * 400 * 3  # the batch training and the next, no workers
    full = memory.estimate(18_365, 15, config, "cpu")
    assert full.total == demo.total
    memory.require_within(full, 8.0)
    # Four workers with 2 batches each ahead, pinned on CUDA too; "auto" on CUDA: the cap.
    workers = {**config, "loader_workers": 4}
    assert memory.estimate(300, 15, workers, "cpu").batches == 2 + 4 * 2
    assert memory.estimate(300, 15, workers, "cuda").batches == 2 * (2 + 4 * 2)
    auto = memory.estimate(300, 15, {**config, "batch_size": "auto"}, "cuda")
    assert auto.batch_size == memory.AUTO_BATCH_CAP and auto.batches == 2 * (2 + 8 * 2)
    with pytest.raises(DomainError, match=r"decoded patches 0\.29 GB \(10 batches in flight"):
        memory.require_within(memory.estimate(300, 15, {**workers, "batch_size": 64}, "cpu"), 1)


def test_the_pass_size_follows_the_config_device_and_image_size():
    default = run_config.load_config()
    assert memory.pass_size(default, "cpu") == 4
    assert memory.pass_size(default, "cuda") == 32
    assert memory.pass_size({**default, "image_size": 64}, "cpu") == 32
    assert memory.pass_size({**default, "micro_batch_size": 8}, "cuda") == 8
    assert memory.pass_size({**default, "micro_batch_size": 64}, "cpu") == 32
    for wrong in (0, "4", 2.5):
        with pytest.raises(DomainError, match="micro_batch_size must be"):
            run_config.load_config({"micro_batch_size": wrong})


# One training fold in a fresh process on synthetic patches; prints the peak RSS of the training
# in bytes (the start-up's peak is reset first).
FOLD = textwrap.dedent(
    """
    import json, sys
    import django
    django.setup()
    import numpy as np, torch
    from mltasks import run_config, training
    torch.set_num_threads(2)
    overrides = json.loads(sys.argv[1])
    config = run_config.load_config({"image_size": 96, "max_epochs": 1, **overrides})
    rng = np.random.default_rng(0)
    count = 32
    data = training.TrainingData(
        images=torch.from_numpy(rng.integers(0, 256, (count, 96, 96, 3), dtype=np.uint8)),
        labels=np.arange(count) % 2, cell_ids=list(range(count)),
        classes=["A", "B"],
    )
    index = np.arange(count)
    plan = training.FoldPlan("0", index, index[:4], index[:4])
    with open("/proc/self/clear_refs", "w") as handle:  # the peak from here on (Linux)
        handle.write("5")
    training.train_fold(data, plan, config, torch.device("cpu"), lambda update: None, lambda: False)
    with open("/proc/self/status") as handle:
        peak = next(line for line in handle if line.startswith("VmHWM:"))
    print(int(peak.split()[1]) * 1024)
    """
)


def _peak_of_a_fold(overrides: dict) -> int:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    found = subprocess.run(
        [sys.executable, "-c", FOLD, json.dumps(overrides)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    return int(found.stdout.strip().splitlines()[-1])


def test_a_folds_peak_memory_follows_the_pass_not_the_batch_images_per_class_or_epochs():
    whole_batch = _peak_of_a_fold(
        {"batch_size": 16, "micro_batch_size": 16, "max_epochs": 2, "oversample_to": 8}
    )
    # From the second epoch on the best epoch's weights are kept beside the training: the
    # peak is reached then and must stay there however many images or epochs follow.
    passes = {"batch_size": 16, "micro_batch_size": 2, "max_epochs": 2, "patience": 4}
    small = _peak_of_a_fold({**passes, "oversample_to": 8})
    longer = _peak_of_a_fold({**passes, "oversample_to": 16, "max_epochs": 3})
    # 16 images of 96 px at once: about 90 MB more at the peak than passes of 2.
    assert whole_batch - small > 50 * 2**20, (whole_batch, small)
    assert abs(longer - small) < 0.05 * small, (small, longer)
    estimate = memory.estimate(32, 2, run_config.load_config({"image_size": 96, **passes}), "cpu")
    assert small <= estimate.total, (small, estimate.describe())


def test_passes_add_up_to_the_gradient_of_the_whole_batch():
    import numpy as np
    import torch

    from mltasks.resnext import resnext50_32x4d

    torch.manual_seed(0)
    model = resnext50_32x4d(num_classes=3).eval()  # running BatchNorm statistics: no batch effect
    count = 6
    data = training.TrainingData(
        images=torch.randint(0, 256, (count, 32, 32, 3), dtype=torch.uint8),
        labels=np.arange(count) % 3,
        cell_ids=list(range(count)),
        classes=["A", "B", "C"],
    )
    config = run_config.load_config({"rotate": False, "flip": False})
    device = torch.device("cpu")

    def gradients(passes: int) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = sum(
            training._accumulate(
                model,
                data.images[i : i + passes],
                torch.from_numpy(data.labels[i : i + passes]),
                count,
                config,
                None,
                device,
            )
            for i in range(0, count, passes)
        )
        return loss, [p.grad.clone() for p in model.parameters()]

    whole_loss, whole = gradients(count)
    parts_loss, parts = gradients(2)
    assert parts_loss == pytest.approx(whole_loss, rel=1e-5)
    for one, other in zip(whole, parts, strict=True):
        torch.testing.assert_close(one, other, rtol=1e-4, atol=1e-6)
