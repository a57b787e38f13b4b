"""Baselines part B: skds, adversarial, ifvd, mgd, cirkd (reference vectors, hand values, memory, critic)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.models.base import FeaturePoint
from benchmark.registry import METHODS
from methods.base import Batch
from methods.cirkd import CIRKD, contrast_kd, minibatch_pixel_pair_loss
from methods.ifvd import ifv_loss
from methods.mgd import mgd_loss, random_spatial_mask
from methods.skds import SKDS, pairwise_similarity_loss, pixelwise_official_loss
from tests.conftest import REFERENCE_VECTORS
from tests.method_utils import Step, build_method, random_batch, tiny_pair

OURS = ("skds", "adversarial", "ifvd", "mgd", "cirkd")


def _cases():
    with open(REFERENCE_VECTORS) as handle:
        cases = json.load(handle)["cases"]
    owners = {ref: name for name in OURS for ref in METHODS.get(name).reference_names}
    return [(owners[c["method"]], c) for c in cases if c["method"] in owners]


def _points(backbone, strides, head, num_classes=19):
    points = {f"backbone.{i}": FeaturePoint(c, s, f"b{i}") for i, (c, s) in enumerate(zip(backbone, strides), 1)}
    points.update({"encoder": FeaturePoint(head, 16, "aspp"), "decoder": FeaturePoint(head, 4, "dec"),
                   "logits": FeaturePoint(num_classes, 1, ""), "logits:pre_upsample": FeaturePoint(num_classes, 4, "c")})
    return points


# DeepLabV3+-R18-like student and R101-like teacher, as declared in the report's table.
STUDENT_R18 = _points((64, 128, 256, 512), (4, 8, 16, 16), 256)
TEACHER_R101 = _points((256, 512, 1024, 2048), (4, 8, 16, 16), 256)


def _trainable(method) -> int:
    return sum(p.numel() for p in method.student_optimizer_parameters())


# --- reference vectors ------------------------------------------------------------------------------------


def test_every_case_of_ours_is_present():
    names = {c["method"] for _, c in _cases()}
    assert names == {"skds_pairwise", "skds_pixelwise", "cirkd", "ifvd"}


@pytest.mark.parametrize("owner,case", _cases(), ids=lambda x: x["id"] if isinstance(x, dict) else x)
def test_reference_case(owner, case):
    inputs = {k: torch.tensor(v, dtype=torch.int64 if k == "labels" else torch.float64)
              for k, v in case["inputs"].items()}
    ours = METHODS.get(owner).reference_loss(case["method"], inputs, case["params"])["loss"].item()
    expected = case["expected"]["loss"]
    assert abs(ours - expected) <= case["atol"] + case["rtol"] * abs(expected), (case["id"], ours, expected)


# --- zero at identity and hand-computed values --------------------------------------------------------------


@pytest.mark.parametrize("variant", ["skd_official_pool_scale", "cirkd_fixed_kernel"])
def test_skds_pairwise_zero_at_identity_and_channel_free(variant):
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    assert pairwise_similarity_loss(x, x.clone(), variant) == 0
    # a channel-repeated teacher has the same cosine graph: still zero although channel counts differ
    assert pairwise_similarity_loss(x, x.repeat(1, 2, 1, 1), variant).abs() < 1e-12


def test_skds_pairwise_hand_value():
    # two pooled nodes (kernel 1): student orthogonal (A = I), teacher parallel (A = 1): two off-diagonal
    # squared differences of 1 over B·N'² = 4 entries -> 0.5
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)
    t = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    assert pairwise_similarity_loss(s, t, "cirkd_fixed_kernel", pool_kernel=1).item() == pytest.approx(0.5)


def test_skds_pixelwise_variants_relation():
    s, t = torch.randn(3, 5, 4, 6, dtype=torch.float64), torch.randn(3, 5, 4, 6, dtype=torch.float64)
    p = F.softmax(t, 1)
    kl_mean = (p * (F.log_softmax(t, 1) - F.log_softmax(s, 1))).sum(1).mean()
    entropy_mean = -(p * F.log_softmax(t, 1)).sum(1).mean()
    # the official term is the cross-entropy divided by H·W only: B × (mean KL + mean teacher entropy)
    assert pixelwise_official_loss(s, t).item() == pytest.approx(3 * (kl_mean + entropy_mean).item(), rel=1e-10)
    method = SKDS(STUDENT_R18, TEACHER_R101, 19, lambda_pa=0, lambda_ho=0, pixelwise_variant="paper",
                  logits_point="logits")
    batch = Batch(images=torch.zeros(3, 3, 4, 6), labels=torch.zeros(3, 4, 6, dtype=torch.long))
    assert method({"logits": t}, {"logits": t}, batch)["pixelwise"].abs() < 1e-12  # paper's KL: 0 at identity
    assert method({"logits": s}, {"logits": t}, batch)["pixelwise"].item() == pytest.approx(10 * kl_mean.item())
    # the default is the authors' script: the H·W-divided cross-entropy, on the logits before upsampling
    default = SKDS(STUDENT_R18, TEACHER_R101, 19, lambda_pa=0, lambda_ho=0)
    value = default({"logits:pre_upsample": s}, {"logits:pre_upsample": t}, batch)["pixelwise"]
    assert value.item() == pytest.approx(10 * 3 * (kl_mean + entropy_mean).item(), rel=1e-10)


def test_ifvd_zero_at_identity_and_hand_value():
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 12, 12))
    labels[0, :4] = 255
    assert ifv_loss(x, x.clone(), labels, num_classes=3) == 0
    # one image, two pixels of class 0: centre = ((1+0)/2, (0+1)/2); cos = 1/√2 at both pixels for the
    # student; the teacher's two pixels are equal, cos = 1 -> loss (1/√2 − 1)²
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)
    t = torch.tensor([[[[2.0, 2.0]], [[1.0, 1.0]]]], dtype=torch.float64)
    y = torch.zeros(1, 1, 2, dtype=torch.long)
    expected = (1 / math.sqrt(2) - 1) ** 2
    assert ifv_loss(s, t, y, num_classes=2).item() == pytest.approx(expected, rel=1e-5)
    # an ignored pixel has similarity 1 in both networks and still counts in the divisor
    y_ignored = torch.tensor([[[0, 255]]])
    assert ifv_loss(s, t, y_ignored, num_classes=2).item() == pytest.approx(0.0, abs=1e-12)


def test_cirkd_minibatch_zero_at_identity_and_hand_value():
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    assert minibatch_pixel_pair_loss(x, x.clone(), 0.1).abs() < 1e-12
    # one image, two positions: teacher orthogonal (A_t = I), student parallel (A_s = 1, uniform rows)
    tau = 0.5
    t = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)
    s = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    p = torch.softmax(torch.tensor([1 / tau, 0.0], dtype=torch.float64), 0)
    expected = (p * (p.log() - math.log(0.5))).sum().item()  # same for both rows, mean over rows
    assert minibatch_pixel_pair_loss(s, t, tau).item() == pytest.approx(expected, rel=1e-10)


def test_cirkd_contrast_kd_zero_at_identity_and_temperature_scaling():
    logits = torch.randn(7, 11)
    assert contrast_kd(logits, logits.clone(), 1.0).abs() < 1e-6
    other = torch.randn(7, 11)
    plain = F.kl_div(F.log_softmax(other / 2, 1), F.softmax(logits / 2, 1), reduction="batchmean") * 4
    assert contrast_kd(other, logits, 2.0).item() == pytest.approx(plain.item(), rel=1e-5)


def test_mgd_mask_ratio_and_hand_value():
    torch.manual_seed(0)
    like = torch.zeros(1)
    mask = random_spatial_mask(8, 64, 64, 0.75, like)
    assert mask.shape == (8, 1, 64, 64)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (1 - mask.mean()).item() == pytest.approx(0.75, abs=0.02)  # λ is the masked fraction
    assert random_spatial_mask(2, 4, 4, 0.0, like).min() == 1  # λ = 0 masks nothing
    generated, teacher = torch.ones(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    assert mgd_loss(generated, teacher).item() == pytest.approx(24 / 2)  # Σ (G − T)² / B


def test_mgd_regenerates_masked_features_with_identity_generator():
    method = METHODS.get("mgd")({"backbone.4": FeaturePoint(4, 8, "x")}, {"backbone.4": FeaturePoint(4, 8, "x")},
                                6, lambda_mgd=0.0, alpha_mgd=1.0)
    assert isinstance(method.align, torch.nn.Identity)  # equal channels: no connector
    with torch.no_grad():  # make G the identity: conv1 = identity (features >= 0 pass the ReLU), conv2 = identity
        for conv in (method.generation[0], method.generation[2]):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(4)
    x = torch.rand(2, 4, 3, 3)
    batch = Batch(images=torch.zeros(2, 3, 24, 24), labels=torch.zeros(2, 24, 24, dtype=torch.long))
    assert method({"backbone.4": x}, {"backbone.4": x.clone()}, batch)["mgd"].abs() < 1e-10


# --- CIRKD memory ---------------------------------------------------------------------------------------------


def _small_cirkd(**overrides):
    s = {"decoder": FeaturePoint(3, 4, "d"), "logits": FeaturePoint(2, 1, "")}
    t = {"decoder": FeaturePoint(2, 4, "d"), "logits": FeaturePoint(2, 1, "")}
    args = {"pixel_memory_size": 5, "region_memory_size": 3, "pixel_update_freq": 2, "kd_point": "logits"} | overrides
    return CIRKD(s, t, 2, **args)


def test_cirkd_memory_fills_and_wraps():
    torch.manual_seed(0)
    method = _small_cirkd()
    assert method.teacher_pixel_queue.shape == (2, 5, 2) and method.teacher_segment_queue.shape == (2, 3, 2)
    # image: class 0 at 3 pixels (all the same direction), class 1 at 1 pixel, one ignored pixel
    feat = torch.tensor([[[1.0, 2.0, 3.0, 0.0, 5.0], [0.0, 0.0, 0.0, 4.0, 5.0]]]).view(1, 2, 1, 5)
    feat = F.normalize(feat, dim=1)
    labels = torch.tensor([[[0, 0, 0, 1, 255]]])
    method._dequeue_and_enqueue(feat, labels)
    assert method.pixel_queue_ptr.tolist() == [2, 1]  # min(3, freq 2) and min(1, 2)
    assert method.segment_queue_ptr.tolist() == [1, 1]
    assert torch.allclose(method.teacher_pixel_queue[0, :2], torch.tensor([[1.0, 0.0]] * 2))
    assert torch.allclose(method.teacher_pixel_queue[1, 0], torch.tensor([0.0, 1.0]))
    assert torch.allclose(method.teacher_segment_queue[0, 0], torch.tensor([1.0, 0.0]))
    before = method.teacher_pixel_queue[0, 2:].clone()
    method._dequeue_and_enqueue(feat, labels)  # class 0: ptr 2 + 2 < 5 -> slots 2, 3; ptr 4
    assert method.pixel_queue_ptr.tolist() == [4, 2]
    assert not torch.allclose(method.teacher_pixel_queue[0, 2:4], before[:2])
    method._dequeue_and_enqueue(feat, labels)  # class 0: 4 + 2 >= 5 -> the last 2 slots, ptr back to 0
    assert method.pixel_queue_ptr.tolist() == [0, 3]
    assert torch.allclose(method.teacher_pixel_queue[0, 3:], torch.tensor([[1.0, 0.0]] * 2))
    assert method.segment_queue_ptr.tolist() == [0, 0]  # region queue of 3 wrapped after three images


def test_cirkd_memory_is_in_the_checkpoint_and_updated_by_forward():
    torch.manual_seed(1)
    method = _small_cirkd()
    names = set(method.state_dict())
    assert {"teacher_pixel_queue", "pixel_queue_ptr", "teacher_segment_queue", "segment_queue_ptr"} <= names
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4)
    batch = Batch(images=torch.zeros(2, 3, 16, 16), labels=torch.randint(0, 2, (2, 16, 16)))
    terms = method({"decoder": s, "logits": torch.randn(2, 2, 16, 16)},
                   {"decoder": t, "logits": torch.randn(2, 2, 16, 16)}, batch)
    assert set(terms) == {"kd", "minibatch_pixel", "memory_pixel", "memory_region"}
    assert method.pixel_queue_ptr.sum() > 0 and method.segment_queue_ptr.sum() > 0
    fresh = _small_cirkd()
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.teacher_pixel_queue, method.teacher_pixel_queue)
    assert torch.equal(fresh.pixel_queue_ptr, method.pixel_queue_ptr)


def test_cirkd_options():
    no_memory = _small_cirkd(lambda_memory_pixel=0.0, lambda_memory_region=0.0)
    assert not hasattr(no_memory, "teacher_pixel_queue") and _trainable(no_memory) == 0
    only_kd = _small_cirkd(lambda_minibatch_pixel=0.0, lambda_memory_pixel=0.0, lambda_memory_region=0.0)
    assert only_kd.student_points == ["logits"]
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8)
    pooled = minibatch_pixel_pair_loss(F.avg_pool2d(x, 2, 2, ceil_mode=True), F.avg_pool2d(y, 2, 2, ceil_mode=True),
                                       0.1)
    method = _small_cirkd(minibatch_pool=2, lambda_kd=0.0, lambda_memory_pixel=0.0, lambda_memory_region=0.0)
    batch = Batch(images=torch.zeros(2, 3, 32, 32), labels=torch.zeros(2, 32, 32, dtype=torch.long))
    assert torch.allclose(method({"decoder": x}, {"decoder": y}, batch)["minibatch_pixel"], pooled)
    with pytest.raises(ValueError):
        _small_cirkd(contrast_temperature=0.0)
    all_ignored = _small_cirkd()
    batch = Batch(images=torch.zeros(1, 3, 16, 16), labels=torch.full((1, 16, 16), 255))
    terms = all_ignored({"decoder": torch.randn(1, 3, 4, 4), "logits": torch.randn(1, 2, 16, 16)},
                        {"decoder": torch.randn(1, 2, 4, 4), "logits": torch.randn(1, 2, 16, 16)}, batch)
    assert terms["memory_pixel"] == 0 and terms["memory_region"] == 0
    assert all_ignored.pixel_queue_ptr.sum() == 0  # nothing enqueued from ignored pixels


# --- the critic (skds holistic term, adversarial) -------------------------------------------------------------


@pytest.mark.parametrize("name,hparams", [("adversarial", {}), ("skds", {"lambda_pi": 0.0, "lambda_pa": 0.0})])
def test_critic_optimizer_updates_only_the_critic_and_is_checkpointed(name, hparams):
    student, teacher = tiny_pair()
    composite = build_method(name, student, teacher, **hparams)
    method = composite.components[name]
    critic = method.holistic.discriminator
    critic_ids = {id(p) for p in critic.parameters()}
    assert not critic_ids & {id(p) for p in method.student_optimizer_parameters()}
    step = Step(student, teacher, composite)
    batch = random_batch(2)
    terms, student_feats, teacher_feats = step(batch)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in critic.parameters()), "the student's backward wrote the critic's grads"
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    critic_before = [p.detach().clone() for p in critic.parameters()]
    logs = composite.separate_step({k: v.detach() for k, v in student_feats.items()}, teacher_feats, batch)
    assert f"{name}.d_loss" in logs and math.isfinite(logs[f"{name}.d_loss"])
    for key, value in student.state_dict().items():
        assert torch.equal(value, student_before[key]), f"separate_step changed the student's {key}"
    assert any(not torch.equal(p, q) for p, q in zip(critic.parameters(), critic_before))
    # the private optimizer's state travels with the method's state_dict
    state = composite.state_dict()
    extra = [k for k in state if k.endswith("_extra_state")]
    assert extra, "the critic's optimizer state is not in the checkpoint"
    fresh = build_method(name, student, teacher, **hparams)
    fresh.load_state_dict(state)
    opt_a = method.holistic.optimizer.state_dict()["state"]
    opt_b = fresh.components[name].holistic.optimizer.state_dict()["state"]
    assert opt_a.keys() == opt_b.keys() and len(opt_a) > 0
    for index in opt_a:
        for key, value in opt_a[index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b[index][key]))


def test_adversarial_options():
    points = {"logits": FeaturePoint(6, 1, "")}
    cls = METHODS.get("adversarial")
    plain = cls(points, points, 6, point="logits")
    conditional = cls(points, points, 6, condition_on_image=True, adv_loss="wgan-gp", d_optimizer="sgd",
                      point="logits")
    assert plain.holistic.discriminator.preprocess.num_features == 6
    assert conditional.holistic.discriminator.preprocess.num_features == 9  # logits + RGB
    assert isinstance(plain.holistic.optimizer, torch.optim.Adam)
    assert isinstance(conditional.holistic.optimizer, torch.optim.SGD)
    logits, images = torch.randn(2, 6, 32, 32), torch.randn(2, 3, 32, 32)
    assert plain.holistic.critic_input(logits, images).shape == (2, 6, 4, 4)  # stride-8 logits
    assert conditional.holistic.critic_input(logits, images).shape == (2, 9, 4, 4)
    torch.manual_seed(0)
    hinge = plain.holistic.critic_loss(logits, logits + 1, images)
    assert hinge.item() >= 0  # hinge terms are non-negative
    with pytest.raises(ValueError):
        cls(points, points, 6, adv_loss="lsgan")
    with pytest.raises(ValueError):
        cls(points, points, 6, d_optimizer="rmsprop")


def test_skds_options_and_points():
    default = SKDS(STUDENT_R18, TEACHER_R101, 19)
    assert default.student_points == ["decoder", "logits:pre_upsample"] and default.holistic is not None
    assert default.holistic.adv_loss == "wgan-gp" and not default.holistic.condition_on_image
    no_ho = SKDS(STUDENT_R18, TEACHER_R101, 19, lambda_ho=0.0)
    assert no_ho.holistic is None and _trainable(no_ho) == 0
    only_pa = SKDS(STUDENT_R18, TEACHER_R101, 19, lambda_pi=0.0, lambda_ho=0.0)
    assert only_pa.student_points == ["decoder"]
    x, y = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 8, 8)
    official = pairwise_similarity_loss(x, y, "skd_official_pool_scale", pool_scale=0.5)
    cirkd = pairwise_similarity_loss(x, y, "cirkd_fixed_kernel", pool_kernel=2)
    assert official.item() != pytest.approx(cirkd.item())
    batch = Batch(images=torch.zeros(2, 3, 32, 32), labels=torch.zeros(2, 32, 32, dtype=torch.long))
    switched = SKDS(STUDENT_R18, TEACHER_R101, 19, lambda_pi=0.0, lambda_ho=0.0, lambda_pa=1.0,
                    variant="cirkd_fixed_kernel")
    assert torch.allclose(switched({"decoder": x}, {"decoder": y}, batch)["pairwise"], cirkd)
    with pytest.raises(ValueError):
        SKDS(STUDENT_R18, TEACHER_R101, 19, variant="avg")
    with pytest.raises(ValueError):
        SKDS(STUDENT_R18, TEACHER_R101, 19, pixelwise_variant="kl")


# --- extra trainable parameters for DeepLabV3+-R18 <- R101 (the README table) -------------------------------


def test_extra_parameters_for_r18_from_r101():
    with torch.device("meta"):  # shapes only: no 76M-parameter initialisation, no 20000-slot random queues
        methods = {name: METHODS.get(name)(STUDENT_R18, TEACHER_R101, 19) for name in OURS}
    counts = {name: _trainable(method) for name, method in methods.items()}
    assert counts["ifvd"] == 0
    assert counts["skds"] == 0 and counts["adversarial"] == 0  # critics train on their own optimizer
    assert counts["mgd"] == (512 * 2048 + 2048) + 2 * (2048 * 2048 * 9 + 2048)
    assert counts["cirkd"] == 256 * 256 + 2 * 256 + 256 * 256
    critic_params = sum(p.numel() for p in methods["skds"].holistic.discriminator.parameters())
    assert critic_params == 3_191_721  # SAGAN critic, conv_dim 64, on the 19 logits alone (the code's input)
