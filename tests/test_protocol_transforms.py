"""The authors' data-pipeline variants (``dataset.*`` protocol keys), on tiny tensors with hand-computed values."""

from __future__ import annotations

import pytest
import torch
from fixtures_data import one_torch_thread  # noqa: F401 (autouse)
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from benchmark.data.transforms import EvalTransform, RandomScale, RandomShortSide, TrainTransform, random_gaussian_blur


def sample(height: int, width: int, rgb=(10, 20, 30), label: int = 3):
    image = torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1).expand(3, height, width).contiguous()
    return tv_tensors.Image(image), tv_tensors.Mask(torch.full((height, width), label, dtype=torch.int64))


def fixed(crop, **options) -> TrainTransform:
    """No randomness left but the (trivial) crop offsets: scale 1, no flip."""
    return TrainTransform(crop, scale_range=(1.0, 1.0), flip=False, **options)


def test_bgr_mean_is_bgr_order_minus_cirkd_mean_without_std():
    image, mask = sample(2, 3, rgb=(10, 20, 30))
    out, _ = EvalTransform(normalization="bgr_mean")(image, mask)
    # Channel 0 is blue (30), 1 green (20), 2 red (10), each minus CIRKD's BGR mean (104.00698793, 116.66876762,
    # 122.67891434), not divided by anything.
    expected = torch.tensor([30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434]).view(3, 1, 1).expand(3, 2, 3)
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=1e-5)


def test_mean_padding_is_zero_after_bgr_mean_and_black_padding_is_normalised_black():
    image, mask = sample(2, 3, rgb=(10, 20, 30))
    out, labels = fixed((4, 5), normalization="bgr_mean", image_pad="mean")(image, mask)
    assert out.shape == (3, 4, 5) and labels.shape == (4, 5)
    assert torch.equal(out[:, 2:, :], torch.zeros(3, 2, 5)) and torch.equal(out[:, :, 3:], torch.zeros(3, 4, 2))
    torch.testing.assert_close(out[0, :2, :3], torch.full((2, 3), 30 - 104.00698793), rtol=0, atol=1e-5)
    assert (labels[:2, :3] == 3).all() and (labels[2:, :] == 255).all() and (labels[:, 3:] == 255).all()

    out, _ = fixed((4, 5))(image, mask)  # ImageNet normalisation, black padding: (0 - mean) / std per channel
    torch.testing.assert_close(out[:, 3, 4], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]))
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224,
                                                           (30 / 255 - 0.406) / 0.225]))


def test_label_padding_value():
    image, mask = sample(2, 2, label=4)
    _, labels = fixed((3, 3), label_pad=0)(image, mask)
    assert labels.tolist() == [[4, 4, 0], [4, 4, 0], [0, 0, 0]]


def test_discrete_ratios_are_the_step_grid_and_nothing_between():
    image, mask = sample(10, 10)
    heights = set()
    for seed in range(80):
        torch.manual_seed(seed)
        scaled, _ = RandomScale((0.5, 0.7), step=0.1)(image, mask)
        heights.add(scaled.shape[-2])
    assert heights == {5, 6, 7}  # 10 x {0.5, 0.6, 0.7}; the uniform draw would also give 5.5 -> 6 but also others
    torch.manual_seed(0)
    uniform = {RandomScale((0.5, 0.7))(sample(100, 100)[0], sample(100, 100)[1])[0].shape[-2] for _ in range(40)}
    assert len(uniform) > 3  # the default stays continuous: 50..70 pixels


def test_short_side_scaling_follows_random_scale_crop():
    # base 10, range [0.5, 2.0]: the short side is an integer in [5, 20]; the long side int(long * short / short_before)
    wide, wide_mask = sample(20, 40)
    tall, tall_mask = sample(30, 20)
    shorts = set()
    for seed in range(300):
        torch.manual_seed(seed)
        image, mask = RandomShortSide(10, (0.5, 2.0))(wide, wide_mask)
        height, width = image.shape[-2:]
        assert width == 2 * height and mask.shape[-2:] == (height, width)
        shorts.add(height)
        torch.manual_seed(seed)
        image, _ = RandomShortSide(10, (0.5, 2.0))(tall, tall_mask)
        height, width = image.shape[-2:]
        assert height == (30 * width) // 20  # floored, as int(1.0 * h * ow / w)
    assert shorts == set(range(5, 21))


def test_short_side_mode_flips_before_padding_so_the_padding_stays_bottom_right():
    image, mask = sample(4, 4, label=1)
    short_side = TrainTransform((6, 6), scale_range=(1.0, 1.0), scale_mode="short_side", base_size=4)
    ratio = TrainTransform((6, 6), scale_range=(1.0, 1.0))
    left_padding_seen = False
    for seed in range(20):
        torch.manual_seed(seed)
        _, labels = short_side(image, mask)
        assert (labels[:4, :4] == 1).all() and (labels[:, 4:] == 255).all() and (labels[4:, :] == 255).all()
        torch.manual_seed(seed)
        _, labels = ratio(image, mask)  # CIRKD order: flip after the crop, so the strip may land on the left
        left_padding_seen |= bool((labels[:, :2] == 255).all())
    assert left_padding_seen


def test_resize_without_antialias_is_unfiltered_like_opencv_inter_linear():
    # Columns 0 0 255 255 0 0 255 255: halving samples between two equal pixels without a filter, so only 0 and 255;
    # the antialiased resize averages over a wider window and gives values in between.
    row = torch.tensor([0, 0, 255, 255] * 2, dtype=torch.uint8)
    image = tv_tensors.Image(row.view(1, 1, 8).expand(3, 8, 8).contiguous())
    mask = tv_tensors.Mask(torch.zeros(8, 8, dtype=torch.int64))
    plain, _ = RandomScale((0.5, 0.5), antialias=False)(image, mask)
    filtered, _ = RandomScale((0.5, 0.5), antialias=True)(image, mask)
    assert set(plain.unique().tolist()) == {0, 255}
    assert any(0 < v < 255 for v in filtered.unique().tolist())


def test_gaussian_blur_half_of_the_time_keeps_the_mass_and_spreads_a_point():
    image = torch.zeros(1, 9, 9)
    image[0, 4, 4] = 1.0
    untouched, spread = 0, 0
    for seed in range(40):
        torch.manual_seed(seed)
        out = random_gaussian_blur(image)
        if torch.equal(out, image):
            untouched += 1  # p = 0.5 of no blur (or a sigma too small to move 8-bit values)
            continue
        assert out.sum().item() == pytest.approx(1.0, abs=1e-5)  # a normalised kernel
        assert out[0, 4, 4] <= 1.0 and out[0, 4, 5] >= 0 and torch.equal(out, out.flip(-1))
        spread += bool(out[0, 4, 5] > 0.01)
    assert untouched >= 10 and spread >= 10


def test_eval_short_side_keeps_the_aspect_ratio():
    image, mask = sample(20, 40)
    out, labels = EvalTransform(10)(image, mask)
    assert out.shape == (3, 10, 20) and labels.shape == (10, 20)


def test_default_pipeline_is_torchvision_pad_random_crop_flip():
    """The default keys are today's pipeline: bottom-right pad (image 0, label 255), v2.RandomCrop, v2 flip, v2
    Normalize, drawing the generator in the same order (so existing runs' augmentation is unchanged)."""
    generator = torch.Generator().manual_seed(0)
    for seed in range(10):
        height, width = (int(v) for v in torch.randint(20, 60, (2,), generator=generator))
        image = tv_tensors.Image(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator))
        mask = tv_tensors.Mask(torch.randint(0, 5, (height, width), generator=generator))
        crop = [40, 48]
        torch.manual_seed(seed)
        ours = TrainTransform(crop, (0.5, 2.0))(image, mask)
        torch.manual_seed(seed)
        scaled, scaled_mask = RandomScale((0.5, 2.0))(image, tv_tensors.Mask(mask.to(torch.uint8)))
        pad = [0, 0, max(0, crop[1] - scaled.shape[-1]), max(0, crop[0] - scaled.shape[-2])]
        scaled, scaled_mask = F.pad(scaled, pad, fill=0), F.pad(scaled_mask, pad, fill=255)
        cropped = v2.Compose([v2.RandomCrop(crop), v2.RandomHorizontalFlip()])(scaled, scaled_mask)
        reference = v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(F.to_dtype(cropped[0], torch.float32,
                                                                                           scale=True))
        assert torch.equal(ours[0], reference.as_subclass(torch.Tensor))
        assert torch.equal(ours[1], cropped[1].as_subclass(torch.Tensor).long())


def test_eval_size_513_is_attnfds_fixed_resize():
    # AttnFD's FixedResize is torchvision Resize(513): short side 513, long side int(500 * 513 / 366) = 700 (floored).
    image, mask = sample(366, 500)
    out, labels = EvalTransform(513)(image, mask)
    assert out.shape == (3, 513, 700) and labels.shape == (513, 700)
