"""`mltasks.resnext`: torchvision-compatible ResNeXt-50 32x4d names, shapes, sizes and loading."""

from __future__ import annotations

import pytest
import torch

from mltasks.resnext import ResNeXt, load_pretrained, replace_classifier, resnext50_32x4d

TORCHVISION_PARAMETERS = 25_028_904  # torchvision's published figure for resnext50_32x4d
# conv1 + bn1 (1 + 5), 16 blocks of 3 convolutions and 3 BatchNorms (16 * 18), a downsample
# convolution and BatchNorm in each stage's first block (4 * 6), fc weight and bias (2).
TORCHVISION_STATE_ENTRIES = 6 + 16 * 18 + 4 * 6 + 2
BN_ENTRIES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def imagenet_model() -> ResNeXt:
    torch.manual_seed(0)
    return resnext50_32x4d().eval()


def parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def torchvision_key_names() -> list[str]:
    """torchvision's resnext50_32x4d state dict keys, spelled out from its architecture."""
    keys = ["conv1.weight", *(f"bn1.{entry}" for entry in BN_ENTRIES)]
    for stage, depth in enumerate((3, 4, 6, 3), start=1):
        for block in range(depth):
            prefix = f"layer{stage}.{block}"
            for index in (1, 2, 3):
                keys.append(f"{prefix}.conv{index}.weight")
                keys.extend(f"{prefix}.bn{index}.{entry}" for entry in BN_ENTRIES)
            if block == 0:
                keys.append(f"{prefix}.downsample.0.weight")
                keys.extend(f"{prefix}.downsample.1.{entry}" for entry in BN_ENTRIES)
    return [*keys, "fc.weight", "fc.bias"]


def perturbed_state(model: ResNeXt) -> dict[str, torch.Tensor]:
    """A copy of the model's state with non-trivial BatchNorm statistics, so loading shows."""
    generator = torch.Generator().manual_seed(1)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "bias")):
            value = torch.randn(value.shape, generator=generator) * 0.1
        elif key.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight")):
            value = 1.0 + torch.rand(value.shape, generator=generator) * 0.5
        elif key.endswith("num_batches_tracked"):
            value = torch.tensor(7)
        state[key] = value.clone()
    return state


def test_parameter_count_matches_torchvision(imagenet_model):
    assert parameter_count(imagenet_model) == TORCHVISION_PARAMETERS


def test_parameter_count_with_a_small_classifier():
    expected = TORCHVISION_PARAMETERS - 2048 * 1000 - 1000 + 2048 * 15 + 15
    assert parameter_count(resnext50_32x4d(num_classes=15)) == expected


def test_key_names_and_shapes_match_torchvision(imagenet_model):
    state = imagenet_model.state_dict()
    expected_shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.conv2.weight": (128, 4, 3, 3),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (256, 8, 3, 3),
        "layer3.5.bn3.running_mean": (1024,),
        "layer4.0.downsample.1.weight": (2048,),
        "layer4.2.conv3.weight": (2048, 1024, 1, 1),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert len(state) == TORCHVISION_STATE_ENTRIES == 320
    assert sorted(state) == sorted(torchvision_key_names())


def test_initialisation_follows_torchvision(imagenet_model):
    assert torch.all(imagenet_model.layer1[0].bn3.weight == 1)
    assert torch.all(imagenet_model.layer1[0].bn3.bias == 0)
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * kernel area)).
    weight = imagenet_model.layer4[0].conv1.weight
    expected_std = (2.0 / (weight.shape[0] * 1 * 1)) ** 0.5
    assert weight.std().item() == pytest.approx(expected_std, rel=0.05)


@pytest.mark.parametrize("height, width", [(400, 400), (224, 224), (97, 131)])
def test_forward_gives_logits_for_any_input_size(height, width):
    torch.manual_seed(0)
    model = resnext50_32x4d(num_classes=15).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, height, width))
    assert logits.shape == (2, 15)
    assert torch.isfinite(logits).all()


def test_replace_classifier_keeps_the_backbone():
    torch.manual_seed(0)
    model = resnext50_32x4d()
    backbone_before = {k: v.clone() for k, v in model.state_dict().items() if "fc." not in k}
    assert replace_classifier(model, 15) is model
    assert model.fc.weight.shape == (15, 2048)
    assert model.fc.bias.shape == (15,)
    for key, value in backbone_before.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_load_pretrained_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    source = resnext50_32x4d(num_classes=15)
    source.load_state_dict(perturbed_state(source))
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)

    torch.manual_seed(1)
    target = resnext50_32x4d(num_classes=15)
    assert load_pretrained(target, path) == []

    images = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(source.eval()(images), target.eval()(images))
    assert target.layer2[0].bn1.num_batches_tracked.item() == 7


def test_load_pretrained_skips_only_a_classifier_of_another_size(tmp_path, imagenet_model):
    imagenet_state = perturbed_state(imagenet_model)
    path = tmp_path / "imagenet.pth"
    torch.save(imagenet_state, path)

    torch.manual_seed(2)
    model = resnext50_32x4d(num_classes=15)
    classifier_before = model.fc.weight.clone(), model.fc.bias.clone()

    assert load_pretrained(model, path) == ["fc.weight", "fc.bias"]
    loaded = model.state_dict()
    for key, value in imagenet_state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert torch.equal(model.fc.weight, classifier_before[0])
    assert torch.equal(model.fc.bias, classifier_before[1])


def test_load_pretrained_tolerates_files_without_batch_counters(tmp_path, imagenet_model):
    """Checkpoints saved by old torch versions have no `num_batches_tracked` buffers."""
    state = {k: v for k, v in imagenet_model.state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    assert load_pretrained(resnext50_32x4d(), path) == []


def test_load_pretrained_names_a_renamed_key(tmp_path, imagenet_model):
    state = dict(imagenet_model.state_dict())
    state["layer2.1.bn2.gamma"] = state.pop("layer2.1.bn2.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)

    model = resnext50_32x4d()
    conv1_before = model.conv1.weight.clone()
    with pytest.raises(ValueError) as error:
        load_pretrained(model, path)
    assert "layer2.1.bn2.weight" in str(error.value)
    assert "layer2.1.bn2.gamma" in str(error.value)
    assert torch.equal(model.conv1.weight, conv1_before)


def test_load_pretrained_names_a_backbone_shape_mismatch(tmp_path, imagenet_model):
    state = dict(imagenet_model.state_dict())
    state["layer3.0.conv2.weight"] = torch.zeros(512, 8, 3, 3)
    path = tmp_path / "reshaped.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"layer3\.0\.conv2\.weight"):
        load_pretrained(resnext50_32x4d(), path)


def test_load_pretrained_rejects_a_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_pretrained(resnext50_32x4d(), path)
