"""AT, SP, ICKD, Overhaul, DIST, LAD, CWD: zero where the math says so, hand-computed values, option switches."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.models.base import FeaturePoint
from benchmark.registry import METHODS
from methods.at import at_loss
from methods.base import Batch
from methods.cwd import cwd_loss
from methods.dist import dist_loss
from methods.ickd import ickd_loss
from methods.lad import lad_loss
from methods.overhaul import bns_before_points, margin_from_bn, partial_l2
from methods.sp import sp_loss
from tests.method_utils import random_batch, tiny_pair

SQRT2 = math.sqrt(2.0)


def points(widths: dict[str, int], stride: int = 8) -> dict[str, FeaturePoint]:
    return {name: FeaturePoint(width, 1 if name == "logits" else stride, name) for name, width in widths.items()}


def dummy_batch() -> Batch:
    return Batch(images=torch.zeros(2, 3, 8, 8), labels=torch.zeros(2, 8, 8, dtype=torch.long))


def trainable(method) -> int:
    return sum(p.numel() for p in method.parameters() if p.requires_grad)


# --- AT ---------------------------------------------------------------------------------------------------

def test_at_zero_when_attention_maps_agree():
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    for variant in ("code", "paper"):
        assert at_loss(x, x, 2, variant) < 1e-5
        # A scaled teacher with its channels duplicated has the same normalised attention map.
        assert at_loss(x, 3 * torch.cat([x, x], dim=1), 2, variant) < 1e-5


def test_at_by_hand_and_variants():
    student = torch.tensor([[[[1.0, 0.0]]]])  # attention [1, 0]
    teacher = torch.tensor([[[[0.0, 2.0]]]])  # attention [0, 4] -> normalised [0, 1]
    assert at_loss(student, teacher, 2, "code").item() == pytest.approx(1.0)  # mean of (1, -1)^2
    assert at_loss(student, teacher, 2, "paper").item() == pytest.approx(SQRT2 / 2)  # ||(1, -1)||_2 / (B N)
    with pytest.raises(ValueError):
        at_loss(student, teacher, 2, "other")
    cls = METHODS.get("at")
    sp, tp = points({"backbone.4": 1}), points({"backbone.4": 3})
    for variant, expected in (("paper", 500 * SQRT2 / 2), ("code", 500.0)):
        method = cls(sp, tp, 6, variant=variant, points=("backbone.4",))
        terms = method({"backbone.4": student}, {"backbone.4": teacher.repeat(1, 3, 1, 1)}, dummy_batch())
        assert terms["at"].item() == pytest.approx(expected, rel=1e-6)
        assert trainable(method) == 0


def test_at_resizes_a_student_map_at_another_stride():
    loss = at_loss(torch.randn(2, 4, 4, 4), torch.randn(2, 8, 8, 8), 2, "code")
    assert torch.isfinite(loss)


# --- SP ---------------------------------------------------------------------------------------------------

def test_sp_zero_for_proportional_features_and_by_hand():
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    assert sp_loss(x, 2 * x) < 1e-12
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)  # G = I
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 1, 2, 1)  # G = all ones -> rows (1, 1)/sqrt2
    assert sp_loss(student, teacher).item() == pytest.approx(1 - SQRT2 / 2)
    method = METHODS.get("sp")(points({"backbone.4": 2}), points({"backbone.4": 1}), 6, gamma=3000.0)
    terms = method({"backbone.4": student}, {"backbone.4": teacher}, dummy_batch())
    assert terms["sp"].item() == pytest.approx(3000 * (1 - SQRT2 / 2), rel=1e-6)


# --- ICKD -------------------------------------------------------------------------------------------------

def test_ickd_by_hand_zero_and_grid():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # G = I
    teacher = torch.tensor([[1.0, 1.0], [1.0, 1.0]]).view(1, 2, 1, 2)  # rows (1, 1)/sqrt2
    assert ickd_loss(student, teacher).item() == pytest.approx((4 - 2 * SQRT2) / 2)
    x, y = torch.randn(2, 3, 4, 6, dtype=torch.float64), torch.randn(2, 3, 4, 6, dtype=torch.float64)
    assert ickd_loss(x, x) == 0
    # Grid 2x3: the mean over the six cells, each cell an extra sample.
    cells = [ickd_loss(x[..., i * 2:(i + 1) * 2, j * 2:(j + 1) * 2], y[..., i * 2:(i + 1) * 2, j * 2:(j + 1) * 2])
             for i in range(2) for j in range(3)]
    assert ickd_loss(x, y, (2, 3)).item() == pytest.approx(sum(cells).item() / 6)
    with pytest.raises(ValueError):
        ickd_loss(x, y, (3, 3))


def test_ickd_embedding_is_trained_and_sized_from_points():
    method = METHODS.get("ickd")(points({"decoder": 16}), points({"decoder": 32}), 6)
    assert trainable(method) == 16 * 32 + 2 * 32
    terms = method({"decoder": torch.randn(2, 16, 4, 4)}, {"decoder": torch.randn(2, 32, 4, 4)}, dummy_batch())
    terms["ickd"].backward()
    assert all(p.grad is not None for p in method.parameters())


# --- DIST -------------------------------------------------------------------------------------------------

def test_dist_zero_at_identity_and_by_hand():
    logits = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    assert dist_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    # Two pixels, two classes: correlations are +-1. Pixel 1 agrees (+1), pixel 2 disagrees (-1): inter = 1.
    # Class columns move in opposite directions in student and teacher: both -1, intra = 2.
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).t().reshape(1, 2, 1, 2)
    teacher = torch.tensor([[1.0, 0.0], [3.0, 0.0]]).t().reshape(1, 2, 1, 2)
    assert dist_loss(student, teacher, 1.0, 1.0, 1.0).item() == pytest.approx(3.0, rel=1e-6)
    assert dist_loss(student, teacher, 2.0, 0.5, 1.0).item() == pytest.approx(3.0, rel=1e-6)
    assert dist_loss(student, teacher, 1.0, 0.0, 1.0).item() == pytest.approx(1.0, rel=1e-6)
    # τ = 2 keeps the signs of the correlations here and multiplies by τ² = 4.
    assert dist_loss(student, teacher, 1.0, 1.0, 2.0).item() == pytest.approx(12.0, rel=1e-6)


def test_dist_method_defaults_and_points():
    cls = METHODS.get("dist")
    assert cls.hyperparameters() == {"beta": 1.0, "gamma": 1.0, "tau": 1.0, "point": "logits"}
    method = cls(points({"logits": 6}), points({"logits": 6}), 6)
    assert method.student_points == ["logits"] and trainable(method) == 0
    head = cls(points({"logits:pre_upsample": 6}), points({"logits:pre_upsample": 6}), 6, point="logits:pre_upsample")
    assert head.student_points == head.teacher_points == ["logits:pre_upsample"]
    with pytest.raises(ValueError, match="point must be"):
        cls(points({"decoder": 6}), points({"decoder": 6}), 6, point="decoder")


# --- CWD --------------------------------------------------------------------------------------------------

def test_cwd_by_hand_zero_and_temperature():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert cwd_loss(x, x, 4.0) == 0
    student = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    teacher = torch.tensor([math.log(3.0), 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL((3/4, 1/4) || (1/2, 1/2))
    assert cwd_loss(student, teacher, 1.0).item() == pytest.approx(expected)
    p = torch.tensor([math.log(3.0) / 2, 0.0]).softmax(0)
    expected_tau2 = 4 * float((p * (p / 0.5).log()).sum())
    assert cwd_loss(student, teacher, 2.0).item() == pytest.approx(expected_tau2, rel=1e-6)
    method = METHODS.get("cwd")(points({"logits": 1}), points({"logits": 1}), 1)
    assert method({"logits": student}, {"logits": teacher}, dummy_batch())["cwd"].item() == pytest.approx(
        3 * 16 * cwd_loss(student, teacher, 4.0).item() / 16)


def test_cwd_connector_only_when_channels_differ():
    cls = METHODS.get("cwd")
    assert trainable(cls(points({"logits": 6}), points({"logits": 6}), 6)) == 0
    method = cls(points({"encoder": 8}), points({"encoder": 16}), 6, points=("encoder",))
    assert trainable(method) == 8 * 16  # CIRKD's bias-free 1x1 conv (losses/cwd.py:57)


# --- LAD --------------------------------------------------------------------------------------------------

def test_lad_by_hand_zero_and_connectors():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert lad_loss(x, 5 * x).item() == pytest.approx(0.0, abs=1e-12)  # one norm for the whole batch
    student = torch.ones(2, 1, 1, 1)  # /sqrt2 each
    teacher = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    assert lad_loss(student, teacher).item() == pytest.approx((2 - SQRT2) / 2)
    cls = METHODS.get("lad")
    names = ("backbone.4:pre_relu", "encoder:pre_relu", "decoder:pre_relu")
    same = cls(points(dict.fromkeys(names, 8)), points(dict.fromkeys(names, 8)), 6)
    assert trainable(same) == 0
    wider = cls(points(dict.fromkeys(names, 8)), points({names[0]: 16, names[1]: 8, names[2]: 8}), 6, lad_lambda=2.0)
    assert trainable(wider) == 8 * 16 + 2 * 16
    student_feats = {name: torch.randn(2, 8, 4, 4) for name in names}
    teacher_feats = {name: student_feats[name].clone() for name in names[1:]}
    teacher_feats[names[0]] = torch.randn(2, 16, 4, 4)
    loss = wider(student_feats, teacher_feats, dummy_batch())["lad"]
    direct = 2.0 * lad_loss(wider.connectors["0"](student_feats[names[0]]), teacher_feats[names[0]])
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6)


# --- Overhaul ---------------------------------------------------------------------------------------------

def test_overhaul_margin_by_hand():
    margin = margin_from_bn(torch.tensor([1.0, -2.0, 1.0]), torch.tensor([0.0, 0.0, 5.0]))
    half_normal = -2 / math.sqrt(2 * math.pi)  # E[x | x < 0] for N(0, 1)
    assert margin.tolist() == pytest.approx([half_normal, 2 * half_normal, -3.0], rel=1e-6)
    assert margin.dtype == torch.float32


def test_overhaul_partial_l2_by_hand_and_zero():
    margin = torch.tensor([-1.0])
    teacher = torch.tensor([-2.0, -0.5, 1.0, -3.0]).view(1, 1, 1, 4)
    student = torch.tensor([0.0, -1.0, 3.0, -4.0]).view(1, 1, 1, 4)
    # t~ = (-1, -0.5, 1, -1): elements 0 (S > t~) and 2 (t~ > 0) count: 1 + 4.
    assert partial_l2(student, teacher, margin).item() == pytest.approx(5.0)
    assert partial_l2(teacher, teacher, margin).item() == 0.0
    below = torch.full((1, 1, 1, 4), -5.0)  # below a negative target costs nothing; a positive one still pulls
    assert partial_l2(below, teacher, margin).item() == pytest.approx((-5.0 - 1.0) ** 2)


def test_overhaul_prepare_finds_the_bn_before_each_pre_relu_point():
    student, teacher = tiny_pair()
    method = METHODS.get("overhaul")(student.feature_points, teacher.feature_points, student.num_classes)
    assert method.needs_prepare()
    with pytest.raises(RuntimeError):
        method({}, {}, random_batch())
    bns = bns_before_points(teacher, {n: teacher.point(n) for n in method.points}, torch.randn(1, 3, 32, 32))
    modules = {id(m): name for name, m in teacher.named_modules()}
    assert [modules[id(bns[n])] for n in method.points] == [
        "backbone.layer1.1.bn2", "backbone.layer2.1.bn2", "backbone.layer3.1.bn2", "backbone.layer4.1.bn2",
        "aspp.project.1", "fuse.1"]

    from benchmark.engine.prepare import run_prepare

    with torch.no_grad():
        for module in teacher.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-1, 1)
    run_prepare(method, teacher, lambda: random_batch(), num_classes=6, device="cpu")
    assert not method.needs_prepare()
    for name, margin in zip(method.points, method.margins()):
        assert torch.equal(margin, margin_from_bn(bns[name].weight, bns[name].bias))
        assert (margin < 0).all()
    restored = METHODS.get("overhaul")(student.feature_points, teacher.feature_points, 6)
    restored.load_state_dict(method.state_dict())
    assert not restored.needs_prepare()  # a resumed run does not recompute the margins


def test_overhaul_margin_from_teacher_features_and_weighting():
    student, teacher = tiny_pair()
    cls = METHODS.get("overhaul")
    method = cls(student.feature_points, teacher.feature_points, 6, margin_source="teacher_features",
                 points=("encoder:pre_relu",), loss_divider=(2.0,), alpha=0.5)
    from benchmark.engine.prepare import run_prepare

    run_prepare(method, teacher, lambda: random_batch(), num_classes=6, device="cpu")
    (margin,) = method.margins()
    assert (margin <= 0).all() and (margin < 0).any()
    s = torch.randn(2, 32, 4, 4)
    t = torch.randn(2, 64, 4, 4)
    loss = method({"encoder:pre_relu": s}, {"encoder:pre_relu": t}, dummy_batch())["overhaul"]
    expected = 0.5 * partial_l2(method.connectors[0](s), t, margin) / 2.0 / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError):
        cls(student.feature_points, teacher.feature_points, 6, loss_divider=(1.0,))
    with pytest.raises(ValueError):
        cls(student.feature_points, teacher.feature_points, 6, margin_source="guess")


# --- extra trainable parameters for the paper pair (DeepLabV3+ ResNet-18 <- ResNet-101) ------------------

def deeplab_points(widths: tuple[int, int, int, int]) -> dict[str, FeaturePoint]:
    result = {}
    for index, (width, stride) in enumerate(zip(widths, (4, 8, 16, 16)), start=1):
        result[f"backbone.{index}"] = FeaturePoint(width, stride, f"layer{index}")
        result[f"backbone.{index}:pre_relu"] = FeaturePoint(width, stride, f"layer{index}.relu", "input")
    for name, stride in (("encoder", 16), ("decoder", 4)):
        result[name] = FeaturePoint(256, stride, name)
        result[f"{name}:pre_relu"] = FeaturePoint(256, stride, f"{name}.relu", "input")
    result["logits"] = FeaturePoint(21, 1, "")
    return result


@pytest.mark.parametrize("name,expected", [
    ("at", 0), ("sp", 0), ("dist", 0), ("cwd", 0),
    ("ickd", 256 * 256 + 2 * 256),
    ("lad", 512 * 2048 + 2 * 2048),
    ("overhaul", sum(s * t + 2 * t for s, t in ((64, 256), (128, 512), (256, 1024), (512, 2048), (256, 256),
                                                (256, 256)))),
])
def test_extra_trainable_parameters_for_resnet18_from_resnet101(name, expected):
    method = METHODS.get(name)(deeplab_points((64, 128, 256, 512)), deeplab_points((256, 512, 1024, 2048)), 21)
    assert trainable(method) == expected
