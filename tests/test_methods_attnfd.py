"""AttnFD: the two normalisations by hand, CBAM, the teacher-attention stage, and every switch."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmark.engine.prepare import run_prepare
from benchmark.models.base import FeaturePoint
from methods.attnfd import CBAM, CODE_PRESET, AttnFD, channel_normalized_mse, tensor_normalized_sse
from methods.base import Batch, CompositeMethod
from tests.conftest import REFERENCE_VECTORS
from tests.method_utils import Step, build_method, random_batch, tiny_pair


def points(channels: int = 3, stride: int = 8, **extra) -> dict[str, FeaturePoint]:
    spec = {"encoder": FeaturePoint(channels, stride, "aspp"), "decoder": FeaturePoint(channels, stride, "fuse")}
    spec.update(extra)
    return spec


def batch(epoch: int = 0) -> Batch:
    return Batch(images=torch.zeros(1, 3, 8, 8), labels=torch.zeros(1, 8, 8, dtype=torch.long),
                 iteration=epoch * 10, iterations_per_epoch=10)


# Positions (row-major) of a 3-channel 2x2 map, as channel vectors:
#   student (1,0,0) (0,2,0) (0,0,3) (1,1,0)      teacher (1,0,0) (1,0,0) (0,0,1) (0,1,0)
STUDENT = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 1.0]], [[0.0, 0.0], [3.0, 0.0]]])[None]
TEACHER = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])[None]


def test_channel_normalisation_by_hand():
    # Unit vectors per position; squared distances 0, 2, 0 and (1/√2)² + (1/√2 − 1)² = 2 − √2; mean over 4 positions.
    expected = (2 + 2 - math.sqrt(2)) / 4
    assert channel_normalized_mse(STUDENT, TEACHER).item() == pytest.approx(expected, rel=1e-6)
    # Per-position normalisation: scaling one position of one map changes nothing; a second identical image neither.
    scaled = STUDENT.clone()
    scaled[..., 1, 0] *= 7
    assert channel_normalized_mse(scaled, TEACHER).item() == pytest.approx(expected, rel=1e-6)
    two = channel_normalized_mse(STUDENT.repeat(2, 1, 1, 1), TEACHER.repeat(2, 1, 1, 1))
    assert two.item() == pytest.approx(expected, rel=1e-6)


def test_tensor_normalisation_by_hand():
    # ‖S‖ = 4 and ‖T‖ = 2 over the whole tensor; squared differences of S/4 and T/2 per channel:
    # c0: .0625 + .25 + 0 + .0625, c1: .25 + .0625, c2: .0625  -> 0.75, divided by B = 1.
    assert tensor_normalized_sse(STUDENT, TEACHER).item() == pytest.approx(0.75, rel=1e-6)
    # Two identical images: the norm grows by √2 so the sum stays 0.75, then divided by B = 2.
    two = tensor_normalized_sse(STUDENT.repeat(2, 1, 1, 1), TEACHER.repeat(2, 1, 1, 1))
    assert two.item() == pytest.approx(0.375, rel=1e-6)
    # The norm is over the whole tensor: rescaling one position changes the value (unlike the paper's variant).
    scaled = STUDENT.clone()
    scaled[..., 1, 0] *= 7
    assert tensor_normalized_sse(scaled, TEACHER).item() != pytest.approx(0.75, rel=1e-3)


def test_tensor_normalisation_matches_code_reference_vectors():
    """The authors' code expression is the reference README's `lad` definition: check every `lad` case."""
    with open(REFERENCE_VECTORS) as handle:
        cases = [c for c in json.load(handle)["cases"] if c["method"] == "lad"]
    assert cases
    for case in cases:
        s = torch.tensor(case["inputs"]["student_feat"], dtype=torch.float64)
        t = torch.tensor(case["inputs"]["teacher_feat"], dtype=torch.float64)
        ours = case["params"]["lad_lambda"] * tensor_normalized_sse(s, t).item()
        expected = case["expected"]["loss"]
        assert abs(ours - expected) <= case["atol"] + case["rtol"] * abs(expected), case["id"]


def test_method_uses_the_chosen_normalisation():
    for normalization, expected in (("channel", (4 - math.sqrt(2)) / 4), ("tensor", 0.75)):
        method = AttnFD(points(), points(), 6, points=("decoder",), normalization=normalization)
        assert method.distance(STUDENT, TEACHER).item() == pytest.approx(expected, rel=1e-6)


def test_parameter_free_cbam_by_hand():
    # One channel, one pixel, value 1: channel scale σ(avg + max) = σ(2); then spatial scale σ(mean + max) = σ(2·x').
    x = torch.ones(1, 1, 1, 1)
    first = torch.sigmoid(torch.tensor(2.0))
    expected = first * torch.sigmoid(2 * first)
    assert CBAM(1, parameter_free=True)(x).item() == pytest.approx(expected.item(), rel=1e-6)
    assert not list(CBAM(4, parameter_free=True).parameters())


def test_learned_cbam_shapes_and_gates():
    cbam = CBAM(32, ratio=16)
    assert cbam.mlp[0].out_channels == 2 and cbam.spatial.kernel_size == (7, 7)
    x = torch.randn(2, 32, 5, 6)
    out = cbam(x)
    assert out.shape == x.shape
    # Both gates are in (0, 1): the refined map never exceeds the input in magnitude.
    assert (out.abs() <= x.abs() + 1e-6).all()


@pytest.mark.parametrize("normalization", ["channel", "tensor"])
def test_zero_when_student_equals_teacher(normalization):
    method = AttnFD(points(), points(), 6, points=("encoder", "decoder"), normalization=normalization,
                    teacher_attention="untrained")
    assert all(isinstance(c, torch.nn.Identity) for c in method.connectors)
    method.student_attention.load_state_dict(method.teacher_attention.state_dict())
    feats = {"encoder": torch.randn(2, 3, 4, 4), "decoder": torch.randn(2, 3, 4, 4)}
    loss = method(feats, {k: v.clone() for k, v in feats.items()}, batch())["attnfd"]
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_student_map_is_resized_to_the_teacher():
    # A constant student map at stride 16 upsampled to the teacher's 4x4: equal unit vectors everywhere, zero loss.
    method = AttnFD(points(stride=16), points(stride=8), 6, points=("decoder",), teacher_attention="parameter_free")
    method.student_attention[0] = CBAM(3, parameter_free=True)
    loss = method({"decoder": torch.ones(1, 3, 2, 2)}, {"decoder": torch.ones(1, 3, 4, 4)}, batch())["attnfd"]
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_weights_the_loss_and_layers_are_summed():
    feats = {"encoder": torch.randn(2, 3, 4, 4), "decoder": torch.randn(2, 3, 4, 4)}
    target = {"encoder": torch.randn(2, 3, 4, 4), "decoder": torch.randn(2, 3, 4, 4)}
    torch.manual_seed(1)
    one = AttnFD(points(), points(), 6, points=("encoder", "decoder"), teacher_attention="untrained")
    torch.manual_seed(1)
    ten = AttnFD(points(), points(), 6, points=("encoder", "decoder"), teacher_attention="untrained", alpha=10.0)
    value = one(feats, target, batch())["attnfd"]
    assert ten(feats, target, batch())["attnfd"].item() == pytest.approx(10 * value.item(), rel=1e-5)
    parts = sum(one.distance(one.refine_student(i, feats[n]), one.teacher_attention[i](target[n]))
                for i, n in enumerate(("encoder", "decoder")))
    assert value.item() == pytest.approx(parts.item(), rel=1e-6)


def test_connector_options():
    student, teacher = points(channels=3), points(channels=5)
    paper = AttnFD(student, teacher, 6, points=("decoder",))
    assert isinstance(paper.connectors[0], torch.nn.Conv2d) and paper.student_attention[0].mlp[0].in_channels == 3
    code = AttnFD(points(channels=5), teacher, 6, points=("decoder",), connector="conv_bn")
    assert isinstance(code.connectors[0][1], torch.nn.BatchNorm2d), "the code's connector is conv + BN even 5 -> 5"
    before = AttnFD(student, teacher, 6, points=("decoder",), connector_position="before_attention")
    assert before.student_attention[0].mlp[0].in_channels == 5
    out = before.refine_student(0, torch.randn(2, 3, 4, 4))
    assert out.shape == (2, 5, 4, 4)


def test_teacher_mode_option_reaches_the_harness():
    assert AttnFD(points(), points(), 6, points=("decoder",)).teacher_train_mode is False
    method = AttnFD(points(), points(), 6, points=("decoder",), teacher_mode="train")
    assert method.teacher_train_mode is True
    assert CompositeMethod({"attnfd": method}).teacher_train_mode is True


def test_connector_warmup_stops_the_gradient_at_the_connectors():
    method = AttnFD(points(3), points(5), 6, points=("decoder",), connector_warmup_epochs=1,
                    teacher_attention="untrained")
    for epoch, reaches_student in ((0, False), (1, True)):
        method.zero_grad(set_to_none=True)
        feature = torch.randn(2, 3, 4, 4, requires_grad=True)
        method({"decoder": feature}, {"decoder": torch.randn(2, 5, 4, 4)}, batch(epoch))["attnfd"].backward()
        assert method.connectors[0].weight.grad is not None
        student_attention_grad = method.student_attention[0].spatial.weight.grad
        assert (feature.grad is not None) == reaches_student
        assert (student_attention_grad is not None) == reaches_student


def test_points_select_what_is_captured_and_distilled():
    student, teacher = tiny_pair()
    for chosen in (("backbone.4:pre_relu",), ("encoder:pre_relu", "decoder:pre_relu"), CODE_PRESET["points"]):
        method = AttnFD(student.feature_points, teacher.feature_points, 6, points=chosen,
                        teacher_attention="parameter_free")
        assert method.student_points == list(chosen) == method.teacher_points
        assert len(method.connectors) == len(chosen)


def test_code_preset_builds_and_runs():
    student, teacher = tiny_pair()
    method = build_method("attnfd", student, teacher, **CODE_PRESET)
    assert not method.needs_prepare() and method.teacher_train_mode
    terms, _, _ = Step(student, teacher, method)(random_batch())
    assert torch.isfinite(terms["attnfd.attnfd"])


def test_teacher_attention_kinds():
    untrained = AttnFD(points(), points(), 6, points=("decoder",), teacher_attention="untrained")
    assert not untrained.needs_prepare()
    assert all(not p.requires_grad for p in untrained.teacher_attention.parameters())
    free = AttnFD(points(), points(), 6, points=("decoder",), teacher_attention="parameter_free")
    assert not free.needs_prepare() and not list(free.teacher_attention.parameters())
    trained = AttnFD(points(), points(), 6, points=("decoder",))
    assert trained.needs_prepare()
    names = {id(p) for p in trained.student_optimizer_parameters()}
    assert not any(id(p) in names for p in trained.teacher_attention.parameters())


def test_prepare_trains_teacher_attention_only_and_is_remembered():
    student, teacher = tiny_pair()
    method = build_method("attnfd", student, teacher, attention_epochs=0.3)  # 3 iterations of 10 per epoch
    inner = method.components["attnfd"]
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    attention_before = {k: v.clone() for k, v in inner.teacher_attention.state_dict().items()}
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        output_before = teacher(images)
    logs = []
    run_prepare(method, teacher, lambda: random_batch(), num_classes=6, device="cpu", log=logs.append)
    assert logs and "3/3" in logs[-1]
    assert not method.needs_prepare() and bool(inner.prepared)
    changed = [k for k, v in inner.teacher_attention.state_dict().items() if not torch.equal(v, attention_before[k])]
    assert changed, "the teacher's attention did not train"
    assert all(not p.requires_grad and p.grad is None for p in inner.teacher_attention.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), f"teacher {key} changed"
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())
    with torch.no_grad():
        assert torch.equal(teacher(images), output_before), "a hook was left on the teacher"
    # The flag travels with the checkpoint: a resumed run skips the stage.
    resumed = build_method("attnfd", student, teacher, attention_epochs=0.3)
    assert resumed.needs_prepare()
    resumed.load_state_dict(method.state_dict())
    assert not resumed.needs_prepare()
    assert torch.equal(resumed.components["attnfd"].teacher_attention[0].spatial.weight,
                       inner.teacher_attention[0].spatial.weight)


@pytest.mark.parametrize("kwargs,message", [
    ({"normalization": "batch"}, "normalization must be one of"),
    ({"connector": "mlp"}, "connector must be one of"),
    ({"connector_position": "middle"}, "connector_position must be one of"),
    ({"teacher_attention": "learned"}, "teacher_attention must be one of"),
    ({"teacher_mode": "bn"}, "teacher_mode must be one of"),
    ({"points": ("backbone.9",)}, "'backbone.9' is not a student feature point"),
    ({"points": ()}, "non-empty list"),
    ({"points": "decoder"}, "non-empty list"),
    ({"points": ("decoder", "decoder")}, "duplicates"),
    ({"alpha": -1.0}, "alpha must be >= 0"),
    ({"attention_epochs": 0}, "attention_epochs and attention_lr must be > 0"),
    ({"connector_warmup_epochs": -1}, "connector_warmup_epochs must be >= 0"),
    ({"reduction_ratio": 0}, "reduction_ratio must be >= 1"),
])
def test_hyperparameter_validation(kwargs, message):
    kwargs = {"points": ("decoder",), **kwargs}
    with pytest.raises(ValueError, match=message):
        AttnFD(points(), points(), 6, **kwargs)


def test_teacher_only_point_is_reported():
    with pytest.raises(ValueError, match="'logits' is not a teacher feature point"):
        AttnFD(points(logits=FeaturePoint(6, 1, "")), points(), 6, points=("logits",))
