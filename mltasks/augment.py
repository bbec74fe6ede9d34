"""The original study's training augmentation, applied to whole batches on their own device.

Each image is rotated by an angle uniform in [0, 360) degrees and flipped horizontally and
vertically with probability 0.5 each. Working on a (N, C, H, W) batch where it already lies (a
GPU, typically) keeps the accelerator from waiting on per-image CPU transforms in the loader.

    images = to_float(uint8_batch.to(device, non_blocking=True))
    images = augment_batch(images, generator)

Only torch: no Django.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FLIP_PROBABILITY = 0.5
# Rotation matrix entries closer to zero than this are float64 round-off (cos 90 degrees is
# 6e-17); zeroing them keeps quarter turns exact.
ROUND_OFF = 1e-12


def to_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) or (N, C, H, W) uint8 -> (N, C, H, W) float32 in [0, 1], channels_last.

    The layout is told by where the channel axis (1, 3 or 4 wide) is; a shape where either axis
    could be it raises `ValueError`. The conversion runs on the batch's own device.
    """
    if batch_uint8.dtype != torch.uint8 or batch_uint8.dim() != 4:
        raise ValueError(
            f"expected a 4-D uint8 batch, got {batch_uint8.dtype} of shape "
            f"{tuple(batch_uint8.shape)}"
        )
    channel_counts = (1, 3, 4)
    last_is_channels = batch_uint8.shape[-1] in channel_counts
    second_is_channels = batch_uint8.shape[1] in channel_counts
    if last_is_channels == second_is_channels:
        raise ValueError(
            f"cannot tell the channel axis of a batch of shape {tuple(batch_uint8.shape)}"
        )
    nchw = batch_uint8.permute(0, 3, 1, 2) if last_is_channels else batch_uint8
    return nchw.to(torch.float32).div_(255.0).contiguous(memory_format=torch.channels_last)


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    rotate: bool = True,
    flip: bool = True,
    fill: float = 1.0,
    angles: torch.Tensor | None = None,
) -> torch.Tensor:
    """Randomly rotate and flip each image of a float (N, C, H, W) batch; returns a new batch.

    Rotation is bilinear (`affine_grid` + `grid_sample`) about the image centre, positive
    angles counterclockwise as displayed (row 0 at the top), so 90 degrees equals
    `torch.rot90(image, 1, dims=(-2, -1))`. Corners that rotate in from outside the image take
    `fill` (default 1.0, the patches' white background). Horizontal and vertical flips come
    after the rotation, each with probability 0.5.

    The random draws (angles, then flips) come from `generator` on its own device, and are the
    same whatever `rotate` and `flip` say, so one seed gives one sequence of transforms.
    `angles` (degrees, one per image) replaces the random angles, for tests; it implies
    rotation. The output keeps the input's shape, dtype, device and channels_last layout.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"expected a float (N, C, H, W) batch, got {images.dtype} of shape "
            f"{tuple(images.shape)}"
        )
    count = images.shape[0]
    draw_device = generator.device if generator is not None else images.device
    random_angles = torch.rand(count, generator=generator, device=draw_device) * 360.0
    flips = torch.rand(count, 2, generator=generator, device=draw_device) < FLIP_PROBABILITY

    out = images
    if angles is not None:
        out = _rotate(images, angles.to(images.device), fill)
    elif rotate:
        out = _rotate(images, random_angles.to(images.device), fill)
    if flip:
        flips = flips.to(images.device)
        out = torch.where(flips[:, 0, None, None, None], out.flip(-1), out)
        out = torch.where(flips[:, 1, None, None, None], out.flip(-2), out)
    if out is images:
        out = images.clone()
    if images.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _rotate(images: torch.Tensor, angles_degrees: torch.Tensor, fill: float) -> torch.Tensor:
    """Rotate each image counterclockwise (as displayed) by its angle, padding with `fill`."""
    count, _, height, width = images.shape
    radians = angles_degrees.to(torch.float64).reshape(count) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    cos = torch.where(cos.abs() < ROUND_OFF, torch.zeros_like(cos), cos)
    sin = torch.where(sin.abs() < ROUND_OFF, torch.zeros_like(sin), sin)
    # The grid maps each output pixel to where it samples the input, in coordinates normalised
    # to [-1, 1] per axis; the aspect ratio terms keep the rotation rigid in pixels.
    zeros = torch.zeros_like(cos)
    theta = torch.stack(
        [
            torch.stack([cos, -sin * (height / width), zeros], dim=1),
            torch.stack([sin * (width / height), cos, zeros], dim=1),
        ],
        dim=1,
    ).to(images.dtype)
    grid = F.affine_grid(theta, [count, 1, height, width], align_corners=False)
    rotated = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    if fill == 0.0:
        return rotated
    # How much of each output pixel came from inside the image: 1 inside, 0 in the corners
    # that rotated in, in between along the edges. The rest of the pixel is `fill`.
    inside = F.grid_sample(
        images.new_ones(count, 1, height, width),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return rotated + (1.0 - inside) * fill
