"""ResNeXt-50 32x4d in plain torch, with torchvision's parameter and buffer names and shapes.

The layout mirrors torchvision's `resnet.py` (stem, four stages of `Bottleneck` blocks, global
average pool, `fc`) so that an ImageNet `resnext50_32x4d` state dict from torchvision loads with
`load_state_dict(strict=True)`, without depending on torchvision itself.

    model = resnext50_32x4d()
    load_pretrained(model, "resnext50_32x4d-imagenet.pth")
    replace_classifier(model, num_classes=15)

Only torch: no Django.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

CLASSIFIER_KEYS = ("fc.weight", "fc.bias")

GROUPS = 32
WIDTH_PER_GROUP = 4
STAGE_DEPTHS = (3, 4, 6, 3)
STAGE_PLANES = (64, 128, 256, 512)
STEM_CHANNELS = 64


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A padded 3x3 convolution without bias (a BatchNorm follows it)."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=1,
        groups=groups,
        bias=False,
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A 1x1 convolution without bias, for changing the channel count (and the stride)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 grouped convolution (carrying the stride), 1x1 expand, plus a shortcut.

    The shortcut is the identity, or `downsample` (1x1 convolution and BatchNorm) where the
    stride or the channel count changes.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = GROUPS,
        width_per_group: int = WIDTH_PER_GROUP,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride=stride, groups=groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNeXt(nn.Module):
    """A ResNeXt of `Bottleneck` stages; adaptive pooling lets it take any input of >= 32 px."""

    def __init__(
        self,
        stage_depths: tuple[int, ...] = STAGE_DEPTHS,
        num_classes: int = 1000,
        groups: int = GROUPS,
        width_per_group: int = WIDTH_PER_GROUP,
    ) -> None:
        super().__init__()
        self.groups = groups
        self.width_per_group = width_per_group
        self.in_channels = STEM_CHANNELS
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_stage(STAGE_PLANES[0], stage_depths[0], stride=1)
        self.layer2 = self._make_stage(STAGE_PLANES[1], stage_depths[1], stride=2)
        self.layer3 = self._make_stage(STAGE_PLANES[2], stage_depths[2], stride=2)
        self.layer4 = self._make_stage(STAGE_PLANES[3], stage_depths[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(STAGE_PLANES[3] * Bottleneck.expansion, num_classes)
        self._init_weights()

    @property
    def num_features(self) -> int:
        """The width of the pooled features that `fc` classifies."""
        return self.fc.in_features

    def _make_stage(self, planes: int, depth: int, stride: int) -> nn.Sequential:
        """`depth` blocks; the first one strides and projects the shortcut where needed."""
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(
                conv1x1(self.in_channels, out_channels, stride=stride),
                nn.BatchNorm2d(out_channels),
            )
        blocks = [
            Bottleneck(
                self.in_channels,
                planes,
                stride=stride,
                downsample=downsample,
                groups=self.groups,
                width_per_group=self.width_per_group,
            )
        ]
        self.in_channels = out_channels
        blocks.extend(
            Bottleneck(
                out_channels,
                planes,
                groups=self.groups,
                width_per_group=self.width_per_group,
            )
            for _ in range(1, depth)
        )
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        """torchvision's initialisation: Kaiming normal (fan_out) convolutions, BN as identity."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnext50_32x4d(num_classes: int = 1000) -> ResNeXt:
    """ResNeXt-50 with 32 groups of width 4 (25,028,904 parameters at 1000 classes)."""
    return ResNeXt(STAGE_DEPTHS, num_classes=num_classes, groups=32, width_per_group=4)


def replace_classifier(model: ResNeXt, num_classes: int) -> ResNeXt:
    """Give `model` a freshly initialised `fc` for `num_classes`, for fine-tuning; keeps the rest.

    The new layer lands on the old one's device and dtype.
    """
    old = model.fc
    model.fc = nn.Linear(
        old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype
    )
    return model


def load_pretrained(model: ResNeXt, path: str | os.PathLike) -> list[str]:
    """Load a torchvision-format state dict file into `model`; return the keys it skipped.

    A classifier of another size (ImageNet's 1000 classes into a fine-tuning model) is left as
    the model has it and `["fc.weight", "fc.bias"]` comes back; otherwise nothing is skipped.
    Missing `num_batches_tracked` buffers (files saved by old torch versions lack them) keep the
    model's values, as torch's own BatchNorm loading does. Any other missing or unexpected key,
    or shape mismatch, raises `ValueError` naming the keys, and the model is left unchanged.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{os.fspath(path)!r} holds a {type(state).__name__}, not a state dict")
    own = model.state_dict()

    missing = [key for key in own if key not in state and not key.endswith(".num_batches_tracked")]
    unexpected = [key for key in state if key not in own]
    if missing or unexpected:
        raise ValueError(
            f"state dict keys do not match the model: missing {missing}, unexpected {unexpected}"
        )

    mismatched = [key for key in state if tuple(state[key].shape) != tuple(own[key].shape)]
    skipped: list[str] = []
    if mismatched and set(mismatched) <= set(CLASSIFIER_KEYS):
        skipped = list(CLASSIFIER_KEYS)
    elif mismatched:
        shapes = {key: (tuple(state[key].shape), tuple(own[key].shape)) for key in mismatched}
        raise ValueError(f"state dict shapes do not match the model (file, model): {shapes}")

    merged = dict(own)
    merged.update((key, value) for key, value in state.items() if key not in skipped)
    model.load_state_dict(merged, strict=True)
    return skipped
