"""ACFD: each component against a hand computation, the zero-gap case, the switches and the validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.models.base import FeaturePoint
from methods.acfd import ACFD, channel_correlation, channel_self_attention, softmax_kl
from methods.base import Batch
from tests.method_utils import Step, build_method, random_batch, tiny_pair

K = 3


def points(backbone=(8, 8), encoder=(6, 8)):
    return {
        "backbone.4": FeaturePoint(backbone[0], backbone[1], "b4"),
        "encoder": FeaturePoint(encoder[0], encoder[1], "enc"),
        "decoder": FeaturePoint(6, 4, "dec"),
        "logits": FeaturePoint(K, 1, ""),
    }


def batch(size=16):
    return Batch(images=torch.zeros(2, 3, size, size), labels=torch.zeros(2, size, size, dtype=torch.long))


def features(pts, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(2, p.channels, size // p.stride, size // p.stride, generator=generator)
            for name, p in pts.items()}


def identity_connectors(method: ACFD) -> ACFD:
    for name in ("afd_connector", "ccd_connector"):
        if hasattr(method, name):
            setattr(method, name, nn.Identity())
    return method


def test_defaults_and_points():
    assert ACFD.hyperparameters() == {
        "use_afd": True, "use_ccd": True, "use_csd": True, "lambda_afd": 50.0, "lambda_ccd": 1.0, "lambda_csd": 3.0,
        "temperature": 4.0, "afd_self_attention": True, "afd_softmax": "spatial", "backbone_point": "backbone.4",
        "fusion_point": "encoder"}
    method = ACFD(points(), points((16, 8), (12, 8)), K)
    assert method.student_points == method.teacher_points == ["backbone.4", "encoder", "logits"]
    assert method.afd_connector[0].weight.shape == (16, 8, 1, 1)
    assert method.ccd_connector[0].weight.shape == (12, 6, 1, 1)


def test_zero_when_student_equals_teacher_with_identity_connectors():
    pts = points()
    method = identity_connectors(ACFD(pts, pts, K))
    feats = features(pts)
    terms = method(feats, {k: v.clone() for k, v in feats.items()}, batch())
    assert set(terms) == {"afd", "ccd", "csd"}
    for name, value in terms.items():
        assert abs(value.item()) < 1e-5, (name, value)


def test_softmax_kl_by_hand():
    # teacher distribution (3/4, 1/4) at τ=2 from logits (2 ln 3, 0); student uniform
    teacher = torch.tensor([[[2 * math.log(3.0), 0.0]]])
    student = torch.zeros(1, 1, 2)
    expected = 4 * (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5))
    assert softmax_kl(student, teacher, 2.0, dim=2).item() == pytest.approx(expected, rel=1e-5)
    # the same pair along the channel axis: two channels at one position
    assert softmax_kl(student.transpose(1, 2), teacher.transpose(1, 2), 2.0, dim=1).item() == pytest.approx(
        expected, rel=1e-5)
    # mean over the B·C distributions: a second, identical channel pair adds nothing to the mean
    both = softmax_kl(torch.cat([student, student], 1), torch.cat([teacher, student], 1), 2.0, dim=2)
    assert both.item() == pytest.approx(expected / 2, rel=1e-5)


def test_channel_self_attention_by_hand():
    x = torch.tensor([[[1.0], [0.0]]])  # two channels, one position
    out = channel_self_attention(x)
    e = math.e
    assert out[0, 0, 0].item() == pytest.approx(1 + e / (e + 1), rel=1e-6)
    assert out[0, 1, 0].item() == pytest.approx(0.5, rel=1e-6)


def test_channel_correlation_by_hand_and_scale_free():
    x = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]).view(1, 2, 1, 2)
    expected = torch.tensor([[[1.0, 2**-0.5], [2**-0.5, 1.0]]])
    assert torch.allclose(channel_correlation(x), expected, atol=1e-6)
    assert torch.allclose(channel_correlation(7.0 * x), expected, atol=1e-6)


def test_ccd_value_by_hand():
    pts = points(encoder=(2, 8))
    method = identity_connectors(ACFD(pts, pts, K, use_afd=False, use_csd=False, lambda_ccd=2.0))
    student = {"encoder": torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]).view(1, 2, 1, 2)}
    teacher = {"encoder": torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).view(1, 2, 1, 2)}
    # G_s off-diagonals 1/√2, G_t off-diagonals 0: two squared gaps of 1/2 over four entries, times λ=2
    assert method(student, teacher, batch())["ccd"].item() == pytest.approx(2.0 * (2 * 0.5) / 4, rel=1e-6)


def test_csd_is_cwd_on_logits_by_hand():
    pts = points()
    method = ACFD(pts, pts, K, use_afd=False, use_ccd=False, temperature=1.0, lambda_csd=1.0)
    teacher = torch.zeros(1, K, 1, 2)
    teacher[0, 0, 0, 0] = math.log(3.0)
    student = torch.zeros(1, K, 1, 2)
    expected = (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / K  # one of K class channels differs
    assert method({"logits": student}, {"logits": teacher}, batch())["csd"].item() == pytest.approx(expected, rel=1e-5)


def test_afd_switches_change_the_value():
    pts = points()
    feats_s, feats_t = features(pts, seed=1), features(pts, seed=2)

    def afd(**kw):
        torch.manual_seed(0)
        method = ACFD(pts, pts, K, use_ccd=False, use_csd=False, **kw).eval()
        return method(feats_s, feats_t, batch())["afd"].item()

    base = afd()
    assert afd(afd_self_attention=False) != pytest.approx(base, rel=1e-3)
    assert afd(afd_softmax="channel") != pytest.approx(base, rel=1e-3)
    # without attention, with an identity connector, the term is exactly softmax_kl on the raw maps
    method = identity_connectors(ACFD(pts, pts, K, use_ccd=False, use_csd=False, afd_self_attention=False))
    expected = 50.0 * softmax_kl(feats_s["backbone.4"].flatten(2), feats_t["backbone.4"].flatten(2), 4.0, dim=1)
    method.afd_softmax_dim = 1
    assert method(feats_s, feats_t, batch())["afd"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("off", ["use_afd", "use_ccd", "use_csd"])
def test_each_component_switches_off(off):
    pts = points()
    method = ACFD(pts, pts, K, **{off: False})
    term = {"use_afd": "afd", "use_ccd": "ccd", "use_csd": "csd"}[off]
    point = {"use_afd": "backbone.4", "use_ccd": "encoder", "use_csd": "logits"}[off]
    terms = method(features(pts), features(pts, seed=3), batch())
    assert term not in terms and len(terms) == 2
    assert point not in method.student_points and point not in method.teacher_points
    module = {"use_afd": "afd_connector", "use_ccd": "ccd_connector"}.get(off)
    if module:
        assert not hasattr(method, module)


def test_heterogeneous_widths_and_strides_train_the_connectors():
    student_pts, teacher_pts = points((8, 8), (6, 8)), points((16, 16), (12, 16))
    method = ACFD(student_pts, teacher_pts, K)
    student = {k: v.requires_grad_() for k, v in features(student_pts, size=32).items()}
    terms = method(student, features(teacher_pts, size=32, seed=4), batch(32))
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    for connector in (method.afd_connector, method.ccd_connector):
        assert connector[0].weight.grad is not None and connector[0].weight.grad.abs().sum() > 0


def test_on_the_tiny_pair_the_terms_are_positive_and_named():
    student, teacher = tiny_pair()
    method = build_method("acfd", student, teacher)
    terms, _, _ = Step(student, teacher, method)(random_batch())
    assert {"acfd.afd", "acfd.ccd", "acfd.csd"} <= set(terms)
    assert all(terms[k].item() > 0 for k in ("acfd.afd", "acfd.ccd", "acfd.csd"))


@pytest.mark.parametrize("kwargs,message", [
    ({"use_afd": False, "use_ccd": False, "use_csd": False}, "every component is off"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"lambda_ccd": -1.0}, "lambda_ccd must be >= 0"),
    ({"afd_softmax": "pixel"}, "afd_softmax must be one of"),
    ({"backbone_point": "encoder"}, "backbone_point must be a backbone stage"),
    ({"backbone_point": "backbone.2"}, "has no feature point 'backbone.2'"),
    ({"fusion_point": "logits"}, "fusion_point must be a feature layer"),
])
def test_validation_errors_are_clear(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ACFD(points(), points(), K, **kwargs)
