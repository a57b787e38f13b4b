"""The authors'-code variants of the methods: each option by hand on tiny tensors, and the paper suites' rows.

Sources of the facts are in docs/method_protocols.md; the expected values here are worked out by hand.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.engine.train import TrainJob, group_lr_lambdas, make_optimizer, run_training, seed_everything
from benchmark.models.base import FeaturePoint
from benchmark.registry import METHODS, MODELS
from benchmark.suite import ScheduleConfig, expand, load_suite
from methods.attnfd import CBAM, CODE_PRESET, AttnFD
from methods.base import Batch, CompositeMethod, frozen_forward
from methods.cirkd import CIRKD, grouped_minibatch_pixel_pair_loss, minibatch_pixel_pair_loss
from methods.lad import LAD
from methods.lfd import LFD
from methods.overhaul import Overhaul
from methods.skds import SKDS
from tests.method_utils import build_method, tiny_pair

ROOT = Path(__file__).resolve().parent.parent
SIGMOID = torch.sigmoid


def points(channels: int = 2, stride: int = 4, **extra) -> dict[str, FeaturePoint]:
    spec = {"encoder": FeaturePoint(channels, stride, "aspp"), "decoder": FeaturePoint(channels, stride, "fuse")}
    spec.update(extra)
    return spec


def batch_at(epoch: int, per_epoch: int = 10, total: int = 100, size: int = 8) -> Batch:
    return Batch(images=torch.zeros(1, 3, size, size), labels=torch.zeros(1, size, size, dtype=torch.long),
                 iteration=epoch * per_epoch, total_iterations=total, iterations_per_epoch=per_epoch)


# --- shared building blocks ----------------------------------------------------------------------------------------


def test_frozen_forward_passes_gradients_to_the_input_only_and_keeps_batch_statistics():
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1))
    with torch.no_grad():
        module[0].weight.fill_(2.0)
    x = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2).requires_grad_(True)
    out = frozen_forward(module, x)
    # conv doubles to (2, 6): batch mean 4, biased variance 4, so the BN output is (-1, 1) (eps aside)
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, 1.0]), atol=1e-5)
    assert module[1].running_mean.item() == pytest.approx(0.1 * 4.0)  # momentum 0.1 from 0: still updated
    (out * torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in module.parameters())


def test_method_lr_follows_the_methods_epoch_table():
    schedule = ScheduleConfig(iterations=12, batch_size=2, lr=0.01, lr_schedule="constant", method_lr_mult=10.0)
    student, teacher = tiny_pair()
    method = build_method("overhaul", student, teacher, connector_warmup_epochs=1)
    optimizer = make_optimizer(schedule, student, method)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, group_lr_lambdas(schedule, 12, 5, method, optimizer))
    seen = []
    for _ in range(12):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    # epoch 0 (iterations 0-4): connectors at 1x the base lr, as the code's one-group init optimizer; then 10x
    assert seen[0] == pytest.approx([0.01, 0.01]) and seen[4] == pytest.approx([0.01, 0.01])
    assert seen[5] == pytest.approx([0.01, 0.1]) and seen[11] == pytest.approx([0.01, 0.1])


def test_combined_methods_must_agree_on_their_modules_lr():
    student, teacher = tiny_pair()
    cls = METHODS.get("overhaul")
    warm = cls(student.feature_points, teacher.feature_points, 6, connector_warmup_epochs=1, warmup_lr_mult=1.0)
    other = cls(student.feature_points, teacher.feature_points, 6, connector_warmup_epochs=1, warmup_lr_mult=2.0)
    assert CompositeMethod({"a": warm, "b": warm}).lr_multiplier(0) == 1.0
    assert CompositeMethod({"a": warm, "kd": METHODS.get("kd")(student.feature_points, teacher.feature_points, 6)}
                           ).lr_multiplier(0) == 1.0  # kd has no modules: it has no say
    with pytest.raises(ValueError, match="different learning rates"):
        CompositeMethod({"a": warm, "b": other}).lr_multiplier(0)


# --- AttnFD ---------------------------------------------------------------------------------------------------------


def _pinned_cbam(layout: str, pick: int) -> CBAM:
    """A 2-channel CBAM whose channel gate is σ(0) = 1/2 and whose 7x7 conv copies pooled map ``pick``."""
    cbam = CBAM(2, ratio=1, layout=layout)
    with torch.no_grad():
        for conv in (cbam.mlp[0], cbam.mlp[2]):
            conv.weight.zero_()
            conv.bias.zero_()
        cbam.spatial.weight.zero_()
        cbam.spatial.weight[0, pick, 3, 3] = 1.0
        if cbam.spatial.bias is not None:
            cbam.spatial.bias.zero_()
    return cbam


def test_cbam_code_layout_by_hand():
    # x: channel 0 = (1, 3), channel 1 = (2, 0) at two positions; the channel gate halves it: (0.5, 1.5), (1, 0).
    x = torch.tensor([[[[1.0, 3.0]], [[2.0, 0.0]]]])
    half = 0.5 * x
    # code: pooled maps in the order [max_c, mean_c]; pick 0 = max_c = (1, 1.5); BN over the 2 positions: (-1, 1)
    out = _pinned_cbam("code", pick=0)(x)
    expected = half * SIGMOID(torch.tensor([-1.0, 1.0])).view(1, 1, 1, 2)
    assert torch.allclose(out, expected, atol=1e-4)
    # paper: the order is [mean_c, max_c], no BN: pick 0 = mean_c = (0.75, 0.75), the raw gate σ(0.75)
    out = _pinned_cbam("paper", pick=0)(x)
    assert torch.allclose(out, half * SIGMOID(torch.tensor(0.75)), atol=1e-6)
    code = CBAM(16, layout="code")
    assert code.spatial.bias is None and code.spatial_bn.momentum == 0.01
    assert CBAM(16).spatial.bias is not None and not hasattr(CBAM(16), "spatial_bn")


def test_code_student_cbam_trains_only_its_spatial_gate():
    method = AttnFD(points(2), points(4), 6, points=("decoder",), cbam_layout="code", student_attention_mlp="frozen",
                    teacher_attention="untrained")
    trainable = {id(p) for p in method.student_optimizer_parameters()}
    attention = method.student_attention[0]
    assert not any(id(p) in trainable for p in attention.mlp.parameters())
    for module in (attention.spatial, attention.spatial_bn):
        assert all(id(p) in trainable for p in module.parameters())
    assert not any(id(p) in trainable for p in method.teacher_attention.parameters())
    # the teacher-side CBAM is the full code CBAM (MLP and BN), at its initialisation
    assert hasattr(method.teacher_attention[0], "spatial_bn") and hasattr(method.teacher_attention[0], "mlp")


def test_connectors_train_in_the_warmup_only_then_stay_fixed():
    method = AttnFD(points(2), points(4), 6, points=("decoder",), connector="conv_bn", connector_warmup_epochs=1,
                    connector_training="warmup_only", teacher_attention="untrained")
    connector = method.connectors[0]
    assert method.lr_multiplier(0) == 1.0 and method.lr_multiplier(1) is None
    for epoch, student_learns in ((0, False), (1, True), (5, True)):
        method.zero_grad(set_to_none=True)
        feature = torch.randn(2, 2, 4, 4, requires_grad=True)
        method({"decoder": feature}, {"decoder": torch.randn(2, 4, 4, 4)}, batch_at(epoch))["attnfd"].backward()
        connector_learns = connector[0].weight.grad is not None
        assert connector_learns == (epoch == 0), f"epoch {epoch}"
        assert (feature.grad is not None) == student_learns
        assert method.student_frozen(batch_at(epoch)) == (epoch == 0)
    with pytest.raises(ValueError, match="needs connector_warmup_epochs"):
        AttnFD(points(), points(), 6, points=("decoder",), connector_training="warmup_only")


def test_code_preset_is_exactly_the_attnfd_rows_of_the_paper_suites():
    checked = 0
    for path in sorted((ROOT / "suites").glob("attnfd_*.yaml")):
        for suite in load_suite(path).parts:
            for row in suite.methods:
                if row.name != "attnfd":
                    continue
                hparams = row.parts()[0].resolved_hparams()
                if row.row_label.startswith("AttnFD (paper variant)"):
                    defaults = AttnFD.hyperparameters()
                    assert {k: v for k, v in hparams.items() if k != "alpha"} == {
                        k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items() if k != "alpha"}
                    continue
                checked += 1
                for key, value in CODE_PRESET.items():
                    if key == "points":  # Table 3: a subset of the code's points, in the code's order
                        assert hparams[key] == [p for p in CODE_PRESET["points"] if p in hparams[key]], row.row_label
                    else:
                        assert hparams[key] == value, f"{path.name}: {row.row_label}: {key}"
    assert checked == 1 + 1 + 7  # Tables 1 and 2, and the seven rows of Table 3


# --- Overhaul and LAD -------------------------------------------------------------------------------------------------


def test_overhaul_warmup_trains_the_connectors_alone_and_the_teacher_mode_option():
    method = Overhaul(points(2), points(4), 6, points=("decoder",), loss_divider=(1.0,), connector_warmup_epochs=1,
                      teacher_mode="train")
    method.margins_ready.fill_(True)
    assert method.teacher_train_mode and Overhaul(points(), points(), 6, points=("decoder",),
                                                  loss_divider=(1.0,)).teacher_train_mode is False
    for epoch in (0, 1):
        method.zero_grad(set_to_none=True)
        feature = torch.randn(2, 2, 4, 4, requires_grad=True)
        method({"decoder": feature}, {"decoder": torch.rand(2, 4, 4, 4)}, batch_at(epoch))["overhaul"].backward()
        assert method.connectors[0][0].weight.grad is not None
        assert (feature.grad is not None) == (epoch == 1)
    assert method.lr_multiplier(0) == 1.0 and method.lr_multiplier(1) is None
    with pytest.raises(ValueError, match="teacher_mode must be one of"):
        Overhaul(points(), points(), 6, points=("decoder",), loss_divider=(1.0,), teacher_mode="frozen")


def test_lad_warmup_with_equal_widths_trains_nothing():
    method = LAD(points(3), points(3), 6, points=("decoder",), connector_warmup_epochs=1, teacher_mode="train")
    feature = torch.randn(2, 3, 4, 4, requires_grad=True)
    term = method({"decoder": feature}, {"decoder": torch.randn(2, 3, 4, 4)}, batch_at(0))["lad"]
    assert not term.requires_grad and method.student_frozen(batch_at(0)) and method.teacher_train_mode
    assert method({"decoder": feature}, {"decoder": torch.randn(2, 3, 4, 4)}, batch_at(1))["lad"].requires_grad


def test_a_train_mode_teacher_keeps_its_statistics_and_a_frozen_epoch_keeps_the_student(tmp_path):
    """LAD on the logits (equal widths, no connector) with the AICSD code's epoch 0: four steps that train
    nothing, then two normal ones; the shared teacher runs in train mode without moving its running statistics."""
    data = {
        "name": "mini", "seeds": [0],
        "dataset": {"name": "synthetic", "crop": [32, 32], "scale_range": [1.0, 1.0],
                    "options": {"image_size": 32, "num_train": 16, "num_val": 4, "num_test": 4}},
        "schedule": {"iterations": 4, "batch_size": 4, "lr": 0.01, "log_every": 2, "checkpoint_every": 100},
        "teachers": {"t": {"model": "tiny_teacher"}}, "students": [{"model": "tiny_student"}],
        "methods": [{"name": "lad", "hparams": {"points": ["logits:pre_upsample"], "teacher_mode": "train",
                                                "connector_warmup_epochs": 1}}],
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(data))
    suite = load_suite(path).parts[0]
    run = expand(suite)[0][0]
    _, teacher = tiny_pair(num_classes=7)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items() if "num_batches" not in k}
    job = TrainJob(name="lad", folder=tmp_path / "run", dataset=suite.dataset.resolved(), dataset_root=None,
                   schedule=suite.schedule, model_name="tiny_student", model_options={}, seed=0,
                   methods=run.config["method"]["components"], teacher=teacher)
    job.folder.mkdir()
    record = run_training(job, torch.device("cpu"), logging.getLogger("test"))
    assert teacher.training
    for key, value in teacher_before.items():
        assert torch.equal(teacher.state_dict()[key], value), f"the shared teacher's {key} moved"
    seed_everything(0)
    initial = MODELS.get("tiny_student")(7)
    trained = record["student_model"]
    for (name, before), after in zip(initial.named_parameters(), trained.parameters()):
        assert torch.equal(before, after), f"the student's {name} changed in its frozen epoch"


# --- CIRKD ----------------------------------------------------------------------------------------------------------


def _one_channel(values) -> torch.Tensor:
    """[B, 1, 1, 2] maps: one channel, two positions (normalised per position, so only signs matter)."""
    return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1, 2)


def test_minibatch_pairs_are_formed_within_groups_by_hand():
    # Teacher maps (1, 1): every similarity 1, uniform rows. Student image 0 = (1, -1), image 1 = (1, 1):
    # pairs (0,0) and (1,0) have rows softmax(±(1, -1)) -> KL(uniform ‖ (σ(2), σ(-2))) = k each; (0,1), (1,1): 0.
    k = -math.log(2) - 0.5 * (math.log(torch.sigmoid(torch.tensor(2.0)).item())
                              + math.log(torch.sigmoid(torch.tensor(-2.0)).item()))
    student, teacher = _one_channel([[1, -1], [1, 1]]), _one_channel([[1, 1], [1, 1]])
    assert minibatch_pixel_pair_loss(student, teacher, 1.0).item() == pytest.approx(2 * k / 4, rel=1e-6)
    # A second group where student = teacher adds 0: the mean over the two groups is k / 4.
    four_s = torch.cat([student, _one_channel([[1, 1], [-1, 1]])])
    four_t = torch.cat([teacher, _one_channel([[1, 1], [-1, 1]])])
    assert grouped_minibatch_pixel_pair_loss(four_s, four_t, 1.0, 2).item() == pytest.approx(k / 4, rel=1e-6)
    assert grouped_minibatch_pixel_pair_loss(four_s, four_t, 1.0, 0).item() == pytest.approx(
        minibatch_pixel_pair_loss(four_s, four_t, 1.0).item())


def test_pairs_across_groups_do_not_count():
    # Within a group the student is the teacher up to one channel rotation per group: every in-group similarity
    # is the teacher's (loss 0), while pairs across the two groups would differ.
    torch.manual_seed(0)
    teacher = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    rotate = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    student = teacher.clone()
    student[2:] = torch.einsum("dc,bchw->bdhw", rotate, teacher[2:])
    assert grouped_minibatch_pixel_pair_loss(student, teacher, 0.1, 2).item() == pytest.approx(0.0, abs=1e-9)
    assert grouped_minibatch_pixel_pair_loss(student, teacher, 0.1, 0).item() > 1e-3


def test_cirkd_code_defaults():
    student = points(3, 8, **{"logits:pre_upsample": FeaturePoint(2, 8, "cls"), "logits": FeaturePoint(2, 1, "")})
    method = CIRKD(student, student, 2, pixel_memory_size=4, region_memory_size=2, pixel_update_freq=2)
    assert method.minibatch_group_size == 2 and method.student_points == ["decoder", "logits:pre_upsample"]
    with pytest.raises(ValueError, match="minibatch_group_size"):
        CIRKD(student, student, 2, minibatch_group_size=-1)


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        spec = points(2, 4, logits=FeaturePoint(2, 1, ""))
        method = CIRKD(spec, spec, 2, pixel_memory_size=4, region_memory_size=3, pixel_update_freq=1,
                       kd_point="logits")
        # one image per process, two pixels of class 0: rank 0 points along (1, 0), rank 1 along (0, 1)
        direction = torch.tensor([1.0, 0.0]) if rank == 0 else torch.tensor([0.0, 1.0])
        embed = direction.view(1, 2, 1, 1).expand(1, 2, 1, 2).contiguous()
        method._dequeue_and_enqueue(embed, torch.zeros(1, 1, 2, dtype=torch.long))
        torch.save({"segment": method.teacher_segment_queue[0, :2].clone(), "ptr": method.segment_queue_ptr.clone(),
                    "pixel_ptr": method.pixel_queue_ptr.clone()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_memory_enqueues_every_process_embeddings_in_rank_order(tmp_path):
    import torch.multiprocessing as mp

    # fork: the workers inherit the imported modules (spawn would re-import torch and the zoo, ~30 s on 2 cores)
    mp.start_processes(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    for rank in (0, 1):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        # both processes hold both images' class means, rank 0's first, whichever process they ran on
        assert torch.allclose(state["segment"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        assert state["ptr"].tolist() == [2, 0] and state["pixel_ptr"].tolist() == [2, 0]


# --- SKDS and the critic --------------------------------------------------------------------------------------------


def test_skds_critic_follows_the_scripts_poly_lr_and_weight_decay():
    spec = {"decoder": FeaturePoint(4, 8, "d"), "logits:pre_upsample": FeaturePoint(3, 8, "c")}
    method = SKDS(spec, spec, 3)
    optimizer = method.holistic.optimizer
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["weight_decay"] == 5e-4
    logits = {"logits:pre_upsample": torch.randn(2, 3, 4, 4), "decoder": torch.randn(2, 4, 4, 4)}
    batch = Batch(images=torch.zeros(2, 3, 32, 32), labels=torch.zeros(2, 32, 32, dtype=torch.long), iteration=4,
                  total_iterations=10)
    method.separate_step(logits, logits, batch)
    # the script's step is 1-based: lr_d (1 - 5/10)^0.9
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4e-4 * 0.5 ** 0.9)
    adversarial = METHODS.get("adversarial")(spec, spec, 3)
    adversarial.separate_step(logits, logits, batch)
    assert adversarial.holistic.optimizer.param_groups[0]["lr"] == 4e-4  # CIRKD: constant Adam, no decay
    assert adversarial.holistic.optimizer.param_groups[0]["weight_decay"] == 0.0


def test_the_critic_sees_the_stride8_logits_unchanged():
    spec = {"logits:pre_upsample": FeaturePoint(3, 8, "c"), "logits": FeaturePoint(3, 1, "")}
    term = METHODS.get("adversarial")(spec, spec, 3).holistic
    images = torch.zeros(2, 3, 32, 32)
    stride8 = torch.randn(2, 3, 4, 4)
    assert term.critic_input(stride8, images) is stride8  # already 1/8 of the image: fed as is, as CIRKD does
    full = torch.randn(2, 3, 32, 32)
    assert term.critic_input(full, images).shape == (2, 3, 4, 4)


# --- LFD ------------------------------------------------------------------------------------------------------------


def test_lfd_adds_the_scripts_self_normalised_kd_by_hand():
    spec = {"decoder": FeaturePoint(2, 1, "d"), "logits:pre_upsample": FeaturePoint(2, 1, "c")}
    method = LFD(spec, spec, 2, use_feature=False, use_spatial_mask=False, use_shared_head=False,
                 use_class_mask=False, use_kl=False)
    student = torch.zeros(1, 2, 1, 1, requires_grad=True)
    teacher = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)  # p = (3/4, 1/4), q = (1/2, 1/2)
    terms = method({"logits:pre_upsample": student}, {"logits:pre_upsample": teacher},
                   Batch(images=torch.zeros(1, 3, 1, 1), labels=torch.zeros(1, 1, 1, dtype=torch.long)))
    assert set(terms) == {"kd"} and terms["kd"].item() == pytest.approx(1.0)
    terms["kd"].backward()
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    # ∂KL/∂s = q − p = (−1/4, 1/4), divided by the detached KL
    assert torch.allclose(student.grad.flatten(), torch.tensor([-0.25, 0.25]) / kl, rtol=1e-5)
