"""TrainTransform / EvalTransform keep image and label aligned, pad with 0 / 255, resize labels by nearest only."""

from __future__ import annotations

import pytest
import torch
from fixtures_data import one_torch_thread  # noqa: F401 (autouse)
from torchvision import tv_tensors

from benchmark.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform

# Well separated, never black: a colour identifies its class even after bilinear blending inside a block,
# and black (the image padding) identifies no class.
COLOURS = torch.tensor(
    [[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40], [200, 40, 200], [40, 200, 200], [220, 220, 220]],
    dtype=torch.uint8,
)


def coded_sample(height: int = 96, width: int = 128, block: int = 16, seed: int = 0):
    """Label in uniform blocks (some ignore), image coloured by label: the image tells the label everywhere."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, len(COLOURS), (height // block, width // block), generator=generator)
    labels = grid.repeat_interleave(block, 0).repeat_interleave(block, 1)
    image = COLOURS[labels].permute(2, 0, 1).contiguous()
    mask = labels.clone()
    mask[labels == len(COLOURS) - 1] = 255  # the last colour is an "ignore" region of the label
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def decode(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float image -> (nearest class per pixel, distance to it, in 0..255 colour units)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image * std + mean) * 255  # [3, H, W]
    palette = torch.cat([COLOURS.float(), torch.zeros(1, 3)])  # index len(COLOURS) = padding (black)
    distance = ((rgb[:, :, :, None] - palette.T[:, None, None, :]) ** 2).sum(0)  # [H, W, colours]
    best, index = distance.min(-1)
    return index, best.sqrt()


def interior(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood holds one label: away from block edges, where blending is allowed."""
    padded = torch.nn.functional.pad(mask[None, None].float(), [radius] * 4, mode="replicate")[0, 0]
    same = torch.ones_like(mask, dtype=torch.bool)
    height, width = mask.shape
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy : dy + height, dx : dx + width] == mask.float()
    return same


def misaligned(image: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(pixels checked, pixels whose image colour contradicts the label) over interior pixels."""
    index, distance = decode(image)
    inner = interior(mask)
    labelled = inner & (mask != 255)
    wrong = labelled & ((index != mask) | (distance > 30))
    padding = inner & (index == len(COLOURS)) & (distance < 30)  # black: must be ignore in the label
    wrong_padding = padding & (mask != 255)
    return int(labelled.sum()), int(wrong.sum() + wrong_padding.sum())


@pytest.mark.parametrize("crop", [(64, 64), (160, 192)], ids=["crop-inside", "crop-with-padding"])
def test_train_transform_keeps_image_and_label_aligned(crop):
    transform = TrainTransform(crop, scale_range=(0.5, 2.0))
    checked_total, padded_seen = 0, 0
    for seed in range(12):
        torch.manual_seed(seed)
        image, mask = coded_sample(seed=seed)
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, *crop) and out_image.dtype == torch.float32
        assert out_mask.shape == crop and out_mask.dtype == torch.int64
        assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
        # nearest only: no value the label did not have (padding adds 255, which it has anyway)
        assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist()) | {255}
        checked, wrong = misaligned(out_image, out_mask)
        assert wrong == 0, f"seed {seed}: {wrong} of {checked} interior pixels disagree with their label"
        checked_total += checked
        index, distance = decode(out_image)
        padded_seen += int(((index == len(COLOURS)) & (distance < 1)).sum())
    assert checked_total > 0.3 * 12 * crop[0] * crop[1]  # the check looked at most pixels, not a vacuous few
    if crop == (160, 192):
        assert padded_seen > 0  # a crop larger than some scaled images: padding happened and was checked


def test_alignment_check_detects_a_misaligned_pair():
    """The detector above must fail when image and label disagree, or the alignment test proves nothing."""
    image, mask = coded_sample(seed=3)
    transform = TrainTransform((64, 64), scale_range=(1.0, 1.0), flip=False)
    torch.manual_seed(0)
    out_image, out_mask = transform(image, mask)
    _, wrong = misaligned(out_image.flip(-1), out_mask)
    assert wrong > 100
    _, wrong = misaligned(out_image, out_mask)
    assert wrong == 0


def test_padding_is_zero_in_image_and_ignore_in_label():
    image = tv_tensors.Image(torch.full((3, 20, 30), 255, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(20, 30, dtype=torch.int64))
    torch.manual_seed(0)
    out_image, out_mask = TrainTransform((40, 50), scale_range=(1.0, 1.0), flip=False)(image, mask)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    raw = ((out_image * std + mean) * 255).round()
    is_image = (raw == 255).all(0)
    assert int(is_image.sum()) == 20 * 30  # the whole image survived, unscaled
    assert is_image[:20, :30].all()  # padded bottom-right, as the papers' code does: the image sits top-left
    assert (raw[:, ~is_image] == 0).all()
    assert (out_mask[is_image] == 0).all() and (out_mask[~is_image] == 255).all()


def test_flip_happens_and_flips_both():
    image, mask = coded_sample(seed=5)
    transform = TrainTransform((96, 128), scale_range=(1.0, 1.0))
    outputs = set()
    for seed in range(16):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        flipped = torch.equal(out_mask, torch.as_tensor(mask).flip(-1))
        assert flipped or torch.equal(out_mask, torch.as_tensor(mask))
        assert misaligned(out_image, out_mask)[1] == 0
        outputs.add(flipped)
    assert outputs == {True, False}


def test_scale_range_is_respected():
    image, mask = coded_sample(seed=1)
    transform = TrainTransform((512, 512), scale_range=(2.0, 2.0), flip=False)  # crop bigger than 192x256
    torch.manual_seed(0)
    _, out_mask = transform(image, mask)
    assert int((out_mask != 255).sum()) + int((torch.as_tensor(mask) == 255).sum()) * 4 == 192 * 256


def test_eval_transform_full_resolution_and_resize():
    image, mask = coded_sample(seed=2)
    out_image, out_mask = EvalTransform()(image, mask)
    assert out_image.shape == (3, 96, 128) and torch.equal(out_mask, torch.as_tensor(mask).long())
    assert misaligned(out_image, out_mask)[1] == 0
    out_image, out_mask = EvalTransform(size=(48, 64))(image, mask)
    assert out_image.shape == (3, 48, 64) and out_mask.shape == (48, 64) and out_mask.dtype == torch.int64
    assert torch.equal(out_mask, torch.as_tensor(mask)[::2, ::2].long())  # nearest on a 2x grid: every other pixel
    out_image, _ = EvalTransform(size=48)(image, mask)
    assert out_image.shape == (3, 48, 64)  # int: short side


#: The published ImageNet statistics (torchvision's model docs; every seed paper's code uses them), written here so
#: that a wrong constant in the code under test cannot also be the expectation.
PUBLISHED_MEAN = (0.485, 0.456, 0.406)
PUBLISHED_STD = (0.229, 0.224, 0.225)


@pytest.mark.parametrize("value", [0, 128, 255])
def test_normalisation_is_imagenet(value):
    image = tv_tensors.Image(torch.full((3, 4, 4), value, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(4, 4, dtype=torch.int64))
    expected = torch.tensor([(value / 255 - m) / s for m, s in zip(PUBLISHED_MEAN, PUBLISHED_STD)])
    for transform in (EvalTransform(), EvalTransform(size=(4, 4)),
                      TrainTransform((4, 4), scale_range=(1.0, 1.0), flip=False)):
        out_image, _ = transform(image, mask)
        assert torch.allclose(out_image, expected.view(3, 1, 1).expand(3, 4, 4), atol=1e-6), type(transform).__name__
