"""LGAD: the local/global block split by hand, the block attention loss by hand, CWD at one block, and switches."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmark.models.base import FeaturePoint
from methods.base import Batch
from methods.lgad import (
    LGAD,
    block_attention_kl,
    block_log_softmax,
    global_block_ids,
    local_block_ids,
    local_global_terms,
)
from tests.conftest import REFERENCE_VECTORS

LN3 = math.log(3.0)
# KL((3/4, 1/4) ‖ (1/2, 1/2)): a two-position block whose teacher logits are (ln 3, 0) against a flat student.
PAIR_KL = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)


def points(channels: int = 3, stride: int = 4, classes: int = 3) -> dict[str, FeaturePoint]:
    return {"decoder": FeaturePoint(channels, stride, "fuse"), "encoder": FeaturePoint(channels, 8, "aspp"),
            "logits": FeaturePoint(classes, 1, "")}


def batch() -> Batch:
    return Batch(images=torch.zeros(1, 3, 8, 8), labels=torch.zeros(1, 8, 8, dtype=torch.long))


def test_block_split_by_hand():
    local = local_block_ids(4, 4, 2).reshape(4, 4)
    assert local.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    glob = global_block_ids(4, 4, 2).reshape(4, 4)
    assert glob.tolist() == [[0, 1, 0, 1], [2, 3, 2, 3], [0, 1, 0, 1], [2, 3, 2, 3]]
    # Sizes P does not divide: near-equal contiguous bands (rows 0-2 | 3-4); groups still by parity. One column
    # occupies only the left blocks (ids row_block·P + 0).
    assert local_block_ids(5, 1, 2).tolist() == [0, 0, 0, 2, 2]
    assert global_block_ids(5, 1, 2).tolist() == [0, 2, 0, 2, 0]
    assert torch.equal(local_block_ids(3, 3, 1), torch.zeros(9, dtype=torch.long))


def test_block_softmax_normalises_each_block():
    x = torch.randn(2, 3, 6 * 4)
    ids = local_block_ids(6, 4, 2)
    probs = block_log_softmax(x, ids, 4).exp()
    sums = torch.zeros(2, 3, 4).scatter_add(2, ids.expand_as(probs), probs)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6)
    # Inside one block it is the ordinary softmax of that block's values.
    block0 = x[..., ids == 0]
    assert torch.allclose(probs[..., ids == 0], block0.softmax(dim=-1), atol=1e-6)


def test_local_and_global_terms_by_hand():
    """A 3-channel 2x4 map with 2x2 blocks: each local block is a 1x2 window, each global block two pixels two
    columns apart. Channel 0 differs from the flat student inside two local windows only, channel 1 inside two
    global groups only, channel 2 nowhere: both terms are 2·KL_pair / (B·C·blocks) = 2·KL_pair / 12."""
    teacher = torch.zeros(1, 3, 2, 4)
    teacher[0, 0, 0] = torch.tensor([LN3, 0.0, LN3, 0.0])  # windows (ln3, 0) twice; groups (ln3, ln3), (0, 0)
    teacher[0, 1, 0] = torch.tensor([LN3, LN3, 0.0, 0.0])  # windows (ln3, ln3), (0, 0); groups (ln3, 0) twice
    student = torch.zeros_like(teacher)
    terms = local_global_terms(student, teacher, P=2, G=2, temperature=1.0)
    assert terms["local"].item() == pytest.approx(2 * PAIR_KL / 12, rel=1e-6)
    assert terms["global"].item() == pytest.approx(2 * PAIR_KL / 12, rel=1e-6)
    # Which channel feeds which term: drop channel 1 and the global term vanishes; drop channel 0, the local one.
    only_local = local_global_terms(student[:, :1], teacher[:, :1], P=2, G=2, temperature=1.0)
    assert only_local["local"].item() == pytest.approx(2 * PAIR_KL / 4, rel=1e-6)
    assert only_local["global"].item() == pytest.approx(0.0, abs=1e-7)
    only_global = local_global_terms(student[:, 1:2], teacher[:, 1:2], P=2, G=2, temperature=1.0)
    assert only_global["local"].item() == pytest.approx(0.0, abs=1e-7)
    assert only_global["global"].item() == pytest.approx(2 * PAIR_KL / 4, rel=1e-6)


def test_empty_blocks_do_not_dilute_the_mean():
    # A one-row map with P = G = 2 has two occupied blocks of the four: the channel-0 map of the hand test's first
    # row gives KL_pair in both local windows, so the mean over the occupied blocks is KL_pair.
    teacher = torch.tensor([[[[LN3, 0.0, LN3, 0.0]]]])
    terms = local_global_terms(torch.zeros_like(teacher), teacher, P=2, G=2, temperature=1.0)
    assert terms["local"].item() == pytest.approx(PAIR_KL, rel=1e-6)
    assert terms["global"].item() == pytest.approx(0.0, abs=1e-7)


def test_temperature_softens_and_scales_by_tau_squared():
    teacher = torch.zeros(1, 1, 1, 2)
    teacher[0, 0, 0, 0] = 2 * LN3  # at τ = 2 the block sees (ln 3, 0)
    value = block_attention_kl(torch.zeros_like(teacher), teacher, torch.zeros(2, dtype=torch.long), 1, 2.0)
    assert value.item() == pytest.approx(4 * PAIR_KL, rel=1e-6)


def test_one_block_is_channel_wise_distillation():
    """P = G = 1: both terms reduce to CWD; checked against the `cwd` reference vectors (CIRKD / mmrazor)."""
    with open(REFERENCE_VECTORS) as handle:
        cases = [c for c in json.load(handle)["cases"] if c["method"] == "cwd"]
    assert cases
    for case in cases:
        s = torch.tensor(case["inputs"]["student_feat"], dtype=torch.float64)
        t = torch.tensor(case["inputs"]["teacher_feat"], dtype=torch.float64)
        terms = local_global_terms(s, t, P=1, G=1, temperature=case["params"]["temperature"])
        expected = case["expected"]["loss"]
        for value in terms.values():
            assert abs(value.item() - expected) <= case["atol"] + case["rtol"] * abs(expected), case["id"]


def test_more_blocks_differ_from_one_block():
    torch.manual_seed(3)
    s, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    values = {p: local_global_terms(s, t, P=p, G=p, temperature=1.0) for p in (1, 2, 4)}
    assert values[1]["local"].item() == pytest.approx(values[1]["global"].item(), rel=1e-6)
    assert values[2]["local"].item() != pytest.approx(values[2]["global"].item(), rel=1e-3)
    assert values[4]["local"].item() != pytest.approx(values[2]["local"].item(), rel=1e-3)


def test_zero_when_student_equals_teacher():
    method = LGAD(points(), points(), 3)
    assert isinstance(method.connector, torch.nn.Identity)
    feats = {"decoder": torch.randn(2, 3, 6, 6), "logits": torch.randn(2, 3, 24, 24)}
    terms = method(feats, {k: v.clone() for k, v in feats.items()}, batch())
    assert set(terms) == {"lafd", "gafd", "laod", "gaod"}
    for value in terms.values():
        assert value.item() == pytest.approx(0.0, abs=1e-6)


def test_weights_and_connector():
    torch.manual_seed(0)
    method = LGAD(points(channels=2), points(channels=5), 3, lambda1=30.0, lambda2=3.0, temperature=1.0)
    assert isinstance(method.connector, torch.nn.Conv2d) and method.connector.weight.shape == (5, 2, 1, 1)
    s = {"decoder": torch.randn(1, 2, 3, 3), "logits": torch.randn(1, 3, 12, 12)}
    t = {"decoder": torch.randn(1, 5, 6, 6), "logits": torch.randn(1, 3, 12, 12)}
    terms = method(s, t, batch())
    # The student's feature is projected, then resized (3x3 -> 6x6) to the teacher's before the blocks.
    projected = torch.nn.functional.interpolate(method.connector(s["decoder"]), size=(6, 6), mode="bilinear",
                                                align_corners=False)
    raw = local_global_terms(projected, t["decoder"], 2, 2, 1.0)
    assert terms["lafd"].item() == pytest.approx(30 * raw["local"].item(), rel=1e-5)
    assert terms["gafd"].item() == pytest.approx(30 * raw["global"].item(), rel=1e-5)
    out = local_global_terms(s["logits"], t["logits"], 2, 2, 1.0)
    assert terms["laod"].item() == pytest.approx(3 * out["local"].item(), rel=1e-5)
    assert terms["gaod"].item() == pytest.approx(3 * out["global"].item(), rel=1e-5)
    sum(terms.values()).backward()
    assert method.connector.weight.grad is not None


@pytest.mark.parametrize("switches", [
    {"lafd": False}, {"gafd": False}, {"laod": False}, {"gaod": False},
    {"lafd": False, "gafd": False}, {"laod": False, "gaod": False}, {"laod": False, "gaod": False, "gafd": False},
])
def test_each_term_switches_off(switches):
    method = LGAD(points(channels=2), points(channels=4), 3, **switches)
    s = {"decoder": torch.randn(1, 2, 4, 4), "logits": torch.randn(1, 3, 8, 8)}
    t = {"decoder": torch.randn(1, 4, 4, 4), "logits": torch.randn(1, 3, 8, 8)}
    expected = {"lafd", "gafd", "laod", "gaod"} - set(switches)
    assert set(method(s, t, batch())) == expected
    features_on = bool(expected & {"lafd", "gafd"})
    outputs_on = bool(expected & {"laod", "gaod"})
    assert ("decoder" in method.student_points) == features_on == ("decoder" in method.teacher_points)
    assert ("logits" in method.student_points) == outputs_on
    assert (method.connector is not None) == features_on, "a switched-off feature term must build nothing"


def test_feature_point_is_a_hyperparameter():
    method = LGAD(points(), points(), 3, feature_point="encoder")
    assert method.student_points == ["encoder", "logits"]


@pytest.mark.parametrize("kwargs,message", [
    ({"P": 0}, "P \\(blocks per side\\) must be an integer >= 1"),
    ({"G": 1.5}, "G \\(blocks per side\\) must be an integer >= 1"),
    ({"P": True}, "P \\(blocks per side\\) must be an integer >= 1"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"lambda1": -1.0}, "lambda1 and lambda2 must be >= 0"),
    ({"lafd": False, "gafd": False, "laod": False, "gaod": False}, "all four terms"),
    ({"feature_point": "backbone.9"}, "feature_point 'backbone.9' is not a student feature point"),
])
def test_hyperparameter_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LGAD(points(), points(), 3, **kwargs)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="lgad: student"):
        block_attention_kl(torch.zeros(1, 2, 4), torch.zeros(1, 3, 4), torch.zeros(4, dtype=torch.long), 1, 1.0)
