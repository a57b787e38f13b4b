"""LFD: the masks, the self-normalised feature term, the shared head and the delayed KL, by hand and by switch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.models.base import FeaturePoint
from methods.base import Batch
from methods.lfd import LFD, class_weights, pixel_discrepancy, spatial_mask, weighted_ce
from tests.method_utils import Step, build_method, random_batch, tiny_pair

K = 3
SIZE = 16


def points(channels=8, stride=4):
    return {"decoder": FeaturePoint(channels, stride, "dec"), "logits": FeaturePoint(K, 1, "")}


def batch(iteration=0, size=SIZE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (2, size, size), generator=generator)
    labels[:, 0] = 255
    return Batch(images=torch.zeros(2, 3, size, size), labels=labels, iteration=iteration)


def features(pts, seed=0, size=SIZE, grad=False):
    generator = torch.Generator().manual_seed(seed)
    feats = {name: torch.randn(2, p.channels, size // p.stride, size // p.stride, generator=generator)
             for name, p in pts.items()}
    return {k: v.requires_grad_(grad) for k, v in feats.items()}


def make_lfd(student_points, teacher_points, num_classes, **hparams) -> LFD:
    """LFD on the upsampled logits of these hand-built points, without the script's self-normalised KD term,
    unless a test asks for them."""
    return LFD(student_points, teacher_points, num_classes,
               **{"logits_point": "logits", "self_normalized_kd": False, **hparams})


def identity_adapter(method: LFD) -> LFD:
    with torch.no_grad():
        method.adapter.weight.copy_(torch.eye(method.adapter.weight.shape[0]).view_as(method.adapter.weight))
    return method


def test_defaults_and_points():
    assert LFD.hyperparameters() == {
        "use_feature": True, "use_spatial_mask": True, "use_shared_head": True, "use_class_mask": True,
        "use_kl": True, "lambda_feature": 1.0, "lambda_aux": 0.1, "lambda_kd": 1.0, "kd_temperature": 1.0,
        "start_iter": 1000, "self_normalize": True, "self_normalize_task": True, "self_normalized_kd": True,
        "aux_mid_channels": 128, "feature_point": "decoder", "logits_point": "logits:pre_upsample"}
    method = make_lfd(points(4), points(8), K)
    assert method.student_points == method.teacher_points == ["decoder", "logits"]
    assert method.adapter.weight.shape == (8, 4, 1, 1) and method.adapter.bias is None
    assert method.aux_head.conv[0].weight.shape == (128, 8, 3, 3)
    assert method.aux_head.classifier.weight.shape == (K, 128, 1, 1)


def test_zero_gap_when_student_equals_teacher():
    pts = points()
    method = identity_adapter(make_lfd(pts, pts, K, start_iter=0))
    feats = features(pts)
    terms = method(feats, {k: v.clone() for k, v in feats.items()}, batch())
    assert terms["feature"].item() == 0.0  # 0 / clamp(0) rather than 0/0
    assert terms["kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["aux_kd"].item() == pytest.approx(0.0, abs=1e-6)
    # one head reading identical features: the student's and the teacher's auxiliary CE coincide
    assert terms["aux_student"].item() == pytest.approx(terms["aux_teacher"].item(), rel=1e-6)


def test_pixel_discrepancy_by_hand():
    teacher = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)
    student = torch.zeros(1, 2, 1, 1, requires_grad=True)
    d = pixel_discrepancy(student, teacher, 1.0)
    assert d.shape == (1, 1, 1) and not d.requires_grad
    assert d.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5)


def test_spatial_mask_by_hand():
    d = torch.tensor([[[1.0, 3.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]]])  # [1, 2, 4]
    mask = spatial_mask(d, (1, 2))  # averages 1x2 blocks: 2 and 0, mean 1 over the grid
    assert torch.allclose(mask.flatten(), torch.tensor([2.0, 0.0]), atol=1e-6)
    assert torch.allclose(spatial_mask(torch.zeros(2, 4, 4), (2, 2)), torch.ones(2, 1, 2, 2))


def test_class_weights_by_hand():
    d = torch.tensor([[[1.0, 3.0], [6.0, 9.0]]])
    labels = torch.tensor([[[0, 0], [1, 255]]])
    # class 0: mean 2, class 1: mean 6 (the ignored pixel's 9 counts nowhere), class 2 absent
    assert torch.allclose(class_weights(d, labels, 3, 255), torch.tensor([0.5, 1.5, 1.0]), atol=1e-6)
    assert torch.allclose(class_weights(d, torch.full_like(labels, 255), 3, 255), torch.ones(3))


def test_weighted_ce_by_hand():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 0] = math.log(3.0)  # p(class 0) = 3/4 at pixel 0, uniform at pixel 1
    labels = torch.tensor([[[0, 1]]])
    weights = torch.tensor([2.0, 1.0])
    expected = (2.0 * -math.log(0.75) + 1.0 * math.log(2.0)) / 2
    assert weighted_ce(logits, labels, weights, 255).item() == pytest.approx(expected, rel=1e-6)
    assert weighted_ce(logits, torch.tensor([[[0, 255]]]), None, 255).item() == pytest.approx(-math.log(0.75))
    assert weighted_ce(logits, torch.full((1, 1, 2), 255), weights, 255).item() == 0.0


def test_feature_term_by_hand_masked_and_unmasked():
    pts = points(channels=1, stride=1)
    student = {"decoder": torch.zeros(1, 1, 1, 2), "logits": torch.zeros(1, K, 1, 2)}
    teacher = {"decoder": torch.ones(1, 1, 1, 2), "logits": torch.zeros(1, K, 1, 2)}
    teacher["logits"][0, 0, 0, 0] = 5.0  # only pixel 0 disagrees: the mask is (2, 0)
    b = Batch(images=torch.zeros(1, 3, 1, 2), labels=torch.zeros(1, 1, 2, dtype=torch.long))
    masked = identity_adapter(make_lfd(pts, pts, K, use_shared_head=False, use_class_mask=False, self_normalize=False,
                                  use_kl=False, lambda_feature=3.0))
    assert masked(student, teacher, b)["feature"].item() == pytest.approx(3.0 * (2.0 * 1 + 0.0 * 1) / 2, rel=1e-5)
    teacher["decoder"][0, 0, 0, 1] = 5.0  # the masked-out pixel's gap does not count
    assert masked(student, teacher, b)["feature"].item() == pytest.approx(3.0, rel=1e-5)
    plain = identity_adapter(make_lfd(pts, pts, K, use_spatial_mask=False, use_shared_head=False, use_class_mask=False,
                                 self_normalize=False, use_kl=False))
    assert plain(student, teacher, b)["feature"].item() == pytest.approx((1 + 25) / 2, rel=1e-5)
    assert plain.student_points == ["decoder"]  # no mask, no KL: the logits are not captured


def test_self_normalisation_keeps_the_direction_and_divides_by_the_value():
    pts = points()
    grads = {}
    for normalise in (True, False):
        torch.manual_seed(0)
        method = make_lfd(pts, pts, K, use_shared_head=False, use_class_mask=False, use_kl=False, lambda_feature=2.0,
                     self_normalize=normalise)
        student = features(pts, seed=1, grad=True)
        term = method(student, features(pts, seed=2), batch())["feature"]
        term.backward()
        grads[normalise] = (term.item(), student["decoder"].grad.clone())
    value, grad = grads[True]
    raw_value, raw_grad = grads[False]
    assert value == pytest.approx(2.0)
    assert torch.allclose(grad, raw_grad / (raw_value / 2.0), rtol=1e-4, atol=1e-8)


def test_kl_switches_on_at_start_iter():
    pts = points()
    method = make_lfd(pts, pts, K, start_iter=5)
    student, teacher = features(pts, seed=1, grad=True), features(pts, seed=2)
    before = method(student, teacher, batch(iteration=4))["kl"]
    assert before.item() == 0.0 and not before.requires_grad
    after = method(student, teacher, batch(iteration=5))["kl"]
    expected = F.kl_div(F.log_softmax(student["logits"], 1), F.log_softmax(teacher["logits"], 1), reduction="none",
                        log_target=True).sum(1).mean()
    assert after.item() == pytest.approx(expected.item(), rel=1e-5) and after.item() > 0


def test_class_mask_switch():
    pts = points()
    student, teacher = features(pts, seed=1), features(pts, seed=2)
    values = {}
    for use in (True, False):
        torch.manual_seed(0)
        method = make_lfd(pts, pts, K, use_class_mask=use)
        values[use] = method(student, teacher, batch())["aux_student"].item()
    assert values[True] != pytest.approx(values[False], rel=1e-4)
    # off: exactly λ_aux · plain cross-entropy of the head on the adapted student feature
    torch.manual_seed(0)
    method = make_lfd(pts, pts, K, use_class_mask=False)
    logits = method.aux_head(method.adapter(student["decoder"]))
    logits = F.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    expected = 0.1 * F.cross_entropy(logits, batch().labels, ignore_index=255)
    assert values[False] == pytest.approx(expected.item(), rel=1e-5)


def test_shared_head_gradients():
    pts = points()
    method = make_lfd(pts, pts, K)
    student, teacher = features(pts, seed=1, grad=True), features(pts, seed=2, grad=True)
    terms = method(student, teacher, batch())
    terms["aux_teacher"].backward(retain_graph=True)
    # the teacher-side CE trains the shared head and nothing on the student's side
    assert method.aux_head.classifier.weight.grad.abs().sum() > 0
    assert method.adapter.weight.grad is None and student["decoder"].grad is None
    method.zero_grad(set_to_none=True)
    teacher["decoder"].grad = None
    terms["aux_kd"].backward()
    # the teacher branch is the target: no gradient flows back through it
    assert teacher["decoder"].grad is None
    assert method.adapter.weight.grad.abs().sum() > 0


def test_shared_head_switches_off():
    pts = points()
    method = make_lfd(pts, pts, K, use_shared_head=False, use_class_mask=False)
    assert not hasattr(method, "aux_head")
    terms = method(features(pts, 1), features(pts, 2), batch())
    assert set(terms) == {"feature", "kl"}
    only_kl = make_lfd(pts, pts, K, use_feature=False, use_spatial_mask=False, use_shared_head=False,
                  use_class_mask=False)
    assert not hasattr(only_kl, "adapter") and only_kl.student_points == ["logits"]


def test_different_strides_resize_the_student():
    student_pts, teacher_pts = points(4, stride=8), points(8, stride=4)
    method = make_lfd(student_pts, teacher_pts, K, start_iter=0)
    student = features(student_pts, seed=1, grad=True)
    terms = method(student, features(teacher_pts, seed=2), batch())
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert method.adapter.weight.grad.abs().sum() > 0


def test_on_the_tiny_pair_after_start_iter():
    student, teacher = tiny_pair()
    method = build_method("lfd", student, teacher)
    terms, _, _ = Step(student, teacher, method)(random_batch(iteration=1000))
    assert terms["lfd.feature"].item() == pytest.approx(1.0)
    assert all(terms[f"lfd.{k}"].item() > 0 for k in ("aux_student", "aux_teacher", "aux_kd", "kl"))


@pytest.mark.parametrize("kwargs,message", [
    ({"use_feature": False, "use_spatial_mask": False, "use_shared_head": False, "use_class_mask": False,
      "use_kl": False}, "every component is off"),
    ({"use_feature": False}, "set use_spatial_mask=false too"),
    ({"use_shared_head": False}, "set use_class_mask=false too"),
    ({"kd_temperature": 0.0}, "kd_temperature must be > 0"),
    ({"lambda_aux": -0.1}, "lambda_aux must be >= 0"),
    ({"start_iter": -1}, "start_iter must be >= 0"),
    ({"aux_mid_channels": 0}, "aux_mid_channels must be >= 1"),
    ({"feature_point": "logits"}, "must be a feature layer"),
    ({"feature_point": "encoder"}, "has no feature point 'encoder'"),
])
def test_validation_errors_are_clear(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_lfd(points(), points(), K, **kwargs)


def test_task_loss_is_self_normalised_as_the_script_does():
    student, teacher = tiny_pair()
    on = build_method("lfd", student, teacher)
    off = build_method("lfd", student, teacher, self_normalize_task=False)
    batch = random_batch()
    ce = torch.tensor(2.5, requires_grad=True)
    scaled = on.scale_task_loss(ce, batch)
    scaled.backward()
    assert scaled.item() == pytest.approx(1.0) and ce.grad.item() == pytest.approx(1 / 2.5)
    assert off.scale_task_loss(ce, batch) is ce
