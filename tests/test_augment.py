"""`mltasks.augment`: batched random rotation and flips, and uint8 to float conversion."""

from __future__ import annotations

import pytest
import torch

from mltasks.augment import augment_batch, to_float


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def asymmetric_batch(count: int = 4, channels: int = 3, height: int = 8, width: int = 8):
    """Random images: no flip or rotation of one equals another by chance."""
    return torch.rand(count, channels, height, width, generator=seeded(123))


def test_shape_and_dtype_are_kept():
    images = asymmetric_batch(height=10, width=14)
    out = augment_batch(images, seeded(0))
    assert out.shape == images.shape
    assert out.dtype == images.dtype
    assert out is not images


def test_channels_last_layout_is_kept():
    images = asymmetric_batch().contiguous(memory_format=torch.channels_last)
    out = augment_batch(images, seeded(0))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_same_seed_same_output_other_seed_other_output():
    images = asymmetric_batch()
    first = augment_batch(images, seeded(5))
    assert torch.equal(first, augment_batch(images, seeded(5)))
    assert not torch.equal(first, augment_batch(images, seeded(6)))


def test_flips_only_give_one_of_the_four_flipped_images():
    images = asymmetric_batch(count=32)
    out = augment_batch(images, seeded(0), rotate=False, flip=True)
    seen = set()
    for image, result in zip(images, out, strict=True):
        variants = {
            "none": image,
            "horizontal": image.flip(-1),
            "vertical": image.flip(-2),
            "both": image.flip(-1).flip(-2),
        }
        matches = [name for name, variant in variants.items() if torch.equal(result, variant)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {"none", "horizontal", "vertical", "both"}


def test_nothing_enabled_returns_an_unchanged_copy():
    images = asymmetric_batch()
    out = augment_batch(images, seeded(0), rotate=False, flip=False)
    assert torch.equal(out, images)
    assert out.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("quarter_turns", [0, 1, 2, 3])
def test_quarter_turns_are_exact_and_counterclockwise(quarter_turns):
    """Positive angles turn the image counterclockwise as displayed, like `torch.rot90`."""
    images = asymmetric_batch(height=8, width=8)
    angles = torch.full((images.shape[0],), 90.0 * quarter_turns)
    out = augment_batch(images, flip=False, angles=angles)
    assert torch.equal(out, torch.rot90(images, quarter_turns, dims=(-2, -1)))


def test_quarter_turn_of_an_odd_sized_image_is_exact_to_float_round_off():
    images = asymmetric_batch(height=7, width=7)
    out = augment_batch(images, flip=False, angles=torch.full((images.shape[0],), 90.0))
    torch.testing.assert_close(out, torch.rot90(images, 1, dims=(-2, -1)), atol=1e-6, rtol=0)


def test_quarter_turn_direction_on_a_marked_pixel():
    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, 0, 3] = 1.0  # top right corner
    out = augment_batch(image, flip=False, fill=0.0, angles=torch.tensor([90.0]))
    assert out[0, 0, 0, 0] == 1.0  # counterclockwise: top right goes to top left
    assert out.sum() == 1.0


@pytest.mark.parametrize("fill", [1.0, 0.25])
def test_corners_of_a_45_degree_turn_take_the_fill(fill):
    images = torch.zeros(2, 3, 32, 32)
    out = augment_batch(images, flip=False, fill=fill, angles=torch.tensor([45.0, 225.0]))
    for row, column in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        assert torch.all(out[:, :, row, column] == fill)
    torch.testing.assert_close(out[:, :, 12:20, 12:20], torch.zeros(2, 3, 8, 8))


def test_random_rotation_fills_corners_of_most_images():
    images = torch.zeros(16, 1, 16, 16)
    out = augment_batch(images, seeded(3), flip=False)
    assert (out[:, 0, 0, 0] > 0).sum() >= 8


def test_to_float_from_channels_last_uint8():
    batch = torch.tensor([0, 128, 255], dtype=torch.uint8).expand(2, 5, 6, 3).contiguous()
    out = to_float(batch)
    assert out.shape == (2, 3, 5, 6)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.all(out[:, 0] == 0.0)
    assert torch.all(out[:, 1] == 128 / 255)
    assert torch.all(out[:, 2] == 1.0)


def test_to_float_from_channels_first_uint8():
    batch = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8, generator=seeded(0))
    batch[0, 0, 0, 0] = 255
    out = to_float(batch)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out[0, 0, 0, 0] == 1.0
    torch.testing.assert_close(out, batch.float() / 255)


@pytest.mark.parametrize(
    "batch",
    [
        torch.zeros(2, 3, 4, 3, dtype=torch.uint8),  # either axis could be channels
        torch.zeros(2, 5, 6, 7, dtype=torch.uint8),  # neither could
        torch.zeros(2, 3, 5, 6, dtype=torch.float32),
        torch.zeros(3, 5, 6, dtype=torch.uint8),
    ],
)
def test_to_float_rejects_what_it_cannot_read(batch):
    with pytest.raises(ValueError):
        to_float(batch)


def test_a_batch_of_full_size_patches():
    images = to_float(torch.randint(0, 256, (8, 400, 400, 3), dtype=torch.uint8))
    out = augment_batch(images, seeded(0))
    assert out.shape == (8, 3, 400, 400)
    assert out.min() >= 0.0
    assert out.max() <= 1.0 + 1e-6
