"""The training loop itself (``run_training`` on tiny models and synthetic data): the teacher's mode and
inference mode at every step, best-on-val selection from scripted scores (with ``best.pt`` on a separate split),
a resumed run that continues rather than restarts, and the lr the optimizer actually used."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch

import benchmark.engine.train as train_module
from benchmark.engine.checkpoint import load_checkpoint
from benchmark.engine.train import TrainJob, run_training
from benchmark.models.base import freeze
from benchmark.registry import MODELS
from benchmark.suite import Suite

NUM_CLASSES = 7  # the synthetic dataset's
VAL, TEST = 8, 12  # split sizes, so a scripted evaluation can tell the splits apart

SUITE = {
    "name": "loop",
    "dataset": {"name": "synthetic", "crop": [32, 32], "scale_range": [1.0, 1.0],
                "options": {"image_size": 32, "num_train": 16, "num_val": VAL, "num_test": TEST}},
    "schedule": {"iterations": 6, "batch_size": 4, "lr": 0.01, "eval_every": 0, "eval_batch_size": 8,
                 "checkpoint_every": 3, "log_every": 2},
    "students": [{"model": "tiny_student"}],
    "methods": [{"name": "none"}],
    "seeds": [0],
}
LOG = logging.getLogger("tests.training_loop")


def make_job(folder: Path, methods=None, teacher=None, dataset=None, **schedule) -> TrainJob:
    """A job exactly as the runner builds one from a validated suite."""
    data = copy.deepcopy(SUITE)
    data["schedule"].update(schedule)
    data["dataset"].update(dataset or {})
    suite = Suite(**data)
    return TrainJob(name="loop", folder=folder, dataset=suite.dataset.resolved(), dataset_root=suite.dataset.root,
                    schedule=suite.schedule, model_name="tiny_student", model_options={}, seed=0,
                    methods=methods or [{"name": "none", "hparams": {}}], teacher=teacher,
                    runtime=suite.runtime.model_dump())


def tiny_teacher(seed: int = 1):
    torch.manual_seed(seed)
    return freeze(MODELS.get("tiny_teacher")(NUM_CLASSES))


def record_teacher_calls(teacher) -> list[tuple[bool, bool]]:
    calls: list[tuple[bool, bool]] = []
    teacher.register_forward_pre_hook(
        lambda module, args: calls.append((module.training, torch.is_inference_mode_enabled())))
    return calls


# --- the teacher --------------------------------------------------------------------------------------------------

ATTNFD = {"teacher_attention": "untrained", "points": ["decoder:pre_relu"]}


@pytest.mark.parametrize("name,hparams,train_mode", [
    ("kd", {}, False),
    ("attnfd", {**ATTNFD, "teacher_mode": "eval"}, False),
    ("attnfd", {**ATTNFD, "teacher_mode": "train"}, True),  # the AttnFD code's batch-statistics teacher
], ids=["kd", "attnfd-eval", "attnfd-train"])
def test_teacher_runs_once_per_step_in_the_methods_mode_under_inference_mode(tmp_path, name, hparams, train_mode):
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    calls = record_teacher_calls(teacher)
    record = run_training(make_job(tmp_path, [{"name": name, "hparams": hparams}], teacher), torch.device("cpu"), LOG)
    assert len(calls) == record["iterations"] == 6, "one teacher forward per step, none at evaluation"
    assert calls == [(train_mode, True)] * 6, f"(teacher.training, inference mode) per step: {calls}"
    # batch statistics in train mode, but a teacher shared by many runs never moves its running statistics (only
    # BatchNorm's step counter counts, which nothing reads at a fixed momentum)
    moved = [k for k, v in teacher.state_dict().items() if not torch.equal(v, before[k])
             and not (train_mode and k.endswith("num_batches_tracked"))]
    assert not moved, f"the teacher changed: {moved}"
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_mode_of_a_combined_row_is_its_components(tmp_path):
    teacher = tiny_teacher()
    calls = record_teacher_calls(teacher)
    methods = [{"name": "kd", "hparams": {}},
               {"name": "attnfd", "hparams": {**ATTNFD, "teacher_mode": "train"}}]
    with pytest.raises(ValueError, match="disagree on the teacher's mode"):
        run_training(make_job(tmp_path, methods, teacher), torch.device("cpu"), LOG)
    assert not calls


# --- best-on-val selection ----------------------------------------------------------------------------------------


class ScriptedEvaluation:
    """Stands in for `evaluate`: returns the next scripted mIoU of the split it is given, and remembers the weights
    of each model it scored (so the test can tell which student was kept)."""

    def __init__(self, selection: list[float], final: list[float], selection_size: int = VAL):
        self.scores = {selection_size: list(selection), TEST if selection_size == VAL else VAL: list(final)}
        self.calls: list[tuple[int, float, dict]] = []

    def __call__(self, model, loader, *args, **kwargs):
        size = len(loader.dataset)
        miou = self.scores[size].pop(0)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.calls.append((size, miou, weights))
        return {"miou": miou, "pixel_accuracy": miou / 2, "per_class_iou": [miou] * NUM_CLASSES}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_on_val_on_the_evaluation_split_keeps_the_best_iteration(tmp_path, monkeypatch):
    """Selection split = evaluation split (val): scores at 2, 4, 6 and the final 8; the best (0.7 at 4) is kept."""
    scripted = ScriptedEvaluation(selection=[0.3, 0.7, 0.5, 0.4], final=[])
    monkeypatch.setattr(train_module, "evaluate", scripted)
    record = run_training(make_job(tmp_path, iterations=8, eval_every=2), torch.device("cpu"), LOG)
    assert [(size, miou) for size, miou, _ in scripted.calls] == [(VAL, 0.3), (VAL, 0.7), (VAL, 0.5), (VAL, 0.4)]
    assert record["final"]["miou"] == 0.4 and record["final"]["iteration"] == 8
    best = record["best"]
    assert (best["iteration"], best["miou"], best["selected_on"], best["split"]) == (4, 0.7, "val", "val")
    assert [h["iteration"] for h in record["history"]] == [2, 4, 6, 8]
    assert [h["miou"] for h in record["history"]] == [0.3, 0.7, 0.5, 0.4]
    assert not (tmp_path / "best.pt").exists(), "no separate weights needed when the scores are the split's own"


def test_best_on_a_separate_selection_split_is_scored_on_the_evaluation_split_from_best_pt(tmp_path, monkeypatch):
    """Selection on val, evaluation on test: the student of the best val score (iteration 4) is saved to best.pt and
    scored on test; the last student is scored on test as `final`."""
    scripted = ScriptedEvaluation(selection=[0.3, 0.7, 0.5, 0.4], final=[0.45, 0.66])
    monkeypatch.setattr(train_module, "evaluate", scripted)
    job = make_job(tmp_path, iterations=8, eval_every=2, dataset={"eval_split": "test", "selection_split": "val"})
    record = run_training(job, torch.device("cpu"), LOG)
    sizes = [size for size, _, _ in scripted.calls]
    assert sizes == [VAL, VAL, VAL, TEST, VAL, TEST], "val at 2, 4, 6; test (final); val at 8; test (best)"
    at_four = scripted.calls[1][2]
    best_weights = load_checkpoint(tmp_path / "best.pt")["model"]
    assert _same_weights(best_weights, at_four), "best.pt holds the student of the best selection score"
    assert _same_weights(scripted.calls[5][2], at_four), "the best student is the one scored on the evaluation split"
    assert not _same_weights(scripted.calls[3][2], at_four), "the final score is the last student's"
    assert record["final"] | {"per_class_iou": None} == {"split": "test", "iteration": 8, "miou": 0.45,
                                                         "pixel_accuracy": 0.225, "per_class_iou": None}
    best = record["best"]
    assert (best["selected_on"], best["split"], best["iteration"]) == ("val", "test", 4)
    assert (best["selection_miou"], best["miou"]) == (0.7, 0.66)


def test_when_the_last_student_is_best_its_final_scores_are_reused(tmp_path, monkeypatch):
    scripted = ScriptedEvaluation(selection=[0.3, 0.5, 0.6, 0.9], final=[0.8])
    monkeypatch.setattr(train_module, "evaluate", scripted)
    job = make_job(tmp_path, iterations=8, eval_every=2, dataset={"eval_split": "test", "selection_split": "val"})
    record = run_training(job, torch.device("cpu"), LOG)
    assert len(scripted.calls) == 5, "no second evaluation of the same student"
    assert (record["best"]["iteration"], record["best"]["miou"], record["best"]["selection_miou"]) == (8, 0.8, 0.9)


def test_selection_can_be_switched_off(tmp_path, monkeypatch):
    scripted = ScriptedEvaluation(selection=[], final=[0.5])
    monkeypatch.setattr(train_module, "evaluate", scripted)
    job = make_job(tmp_path, iterations=4, eval_every=2, dataset={"eval_split": "test", "selection_split": "none"})
    record = run_training(job, torch.device("cpu"), LOG)
    assert record["best"] is None and record["history"] == [] and len(scripted.calls) == 1


# --- resume and the optimizer's lr ----------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def interrupt_at(teacher, step: int) -> list:
    """Kill the run (an exception out of the loop) at the teacher forward of 0-based step ``step``."""
    calls = []

    def hook(module, args):
        calls.append(len(calls))
        if len(calls) == step + 1:
            raise Interrupt

    teacher.register_forward_pre_hook(hook)
    return calls


def test_a_resumed_run_continues_its_iterations_lr_and_optimizer_state(tmp_path):
    """Interrupted after the checkpoint at 3, the rerun trains steps 3..5 only and ends with exactly the weights and
    numbers of an uninterrupted run; a restart from 0, or a resume without the optimizer's momentum or the
    scheduler's position, ends elsewhere."""
    kd = [{"name": "kd", "hparams": {"temperature": 2.0}}]
    schedule = {"iterations": 6, "checkpoint_every": 3, "lr": 0.05, "warmup_iterations": 2}
    whole = run_training(make_job(tmp_path / "whole", kd, tiny_teacher(), **schedule), torch.device("cpu"), LOG)

    teacher = tiny_teacher()
    interrupt_at(teacher, 4)
    with pytest.raises(Interrupt):
        run_training(make_job(tmp_path / "cut", kd, teacher, **schedule), torch.device("cpu"), LOG)
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert saved["progress"]["iteration"] == 3
    # poly after a 2-step warm-up: the lr of step 3 is 0.05 * (1 - 3/6) ** 0.9
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.5**0.9, rel=1e-12)
    assert all("momentum_buffer" in state for state in saved["optimizer"]["state"].values())

    teacher = tiny_teacher()
    calls = record_teacher_calls(teacher)
    resumed = run_training(make_job(tmp_path / "cut", kd, teacher, **schedule), torch.device("cpu"), LOG)
    assert len(calls) == 3, f"the resumed run trained {len(calls)} steps, not the 3 left"
    assert resumed["timing"]["wall_seconds"] > saved["progress"]["elapsed"] > 0, "the first part's time counts too"
    for key in ("final", "best", "history", "iterations", "last_losses"):
        assert resumed[key] == whole[key], key
    assert _same_weights(resumed["student_model"].state_dict(), whole["student_model"].state_dict())
    end = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert end["progress"]["iteration"] == 6
    assert end["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-15)

    # the same three steps from a fresh optimizer (momentum lost) or a fresh scheduler (lr back at warm-up) differ
    for lose in ("optimizer", "scheduler"):
        folder = tmp_path / f"lost-{lose}"
        folder.mkdir()
        damaged = copy.deepcopy(saved)
        fresh = torch.optim.SGD(MODELS.get("tiny_student")(NUM_CLASSES).parameters(), lr=0.05, momentum=0.9)
        if lose == "optimizer":
            damaged["optimizer"]["state"] = {}
        else:
            damaged["scheduler"] = torch.optim.lr_scheduler.LambdaLR(fresh, lambda i: (i + 1) / 2).state_dict()
            damaged["optimizer"]["param_groups"][0]["lr"] = 0.025
        torch.save(damaged, folder / "checkpoint.pt")
        other = run_training(make_job(folder, kd, tiny_teacher(), **schedule), torch.device("cpu"), LOG)
        assert not _same_weights(other["student_model"].state_dict(), whole["student_model"].state_dict()), (
            f"the resume test cannot tell a lost {lose} state")


@pytest.mark.parametrize("schedule", [
    {"iterations": 8, "lr_schedule": "poly", "poly_power": 2.0},
    {"iterations": 8, "lr_schedule": "cosine", "min_lr": 0.001},
    {"iterations": None, "epochs": 2, "lr_schedule": "poly", "poly_power": 2.0},  # 24 images / batch 4: 12 steps
], ids=["poly", "cosine", "epochs"])
def test_the_optimizer_steps_with_the_scheduled_lr(tmp_path, monkeypatch, schedule):
    """The lr the loop leaves in the optimizer at each checkpoint, against the closed form over the whole run."""
    import math

    lr = 0.04
    total = schedule["iterations"] or 12
    job = make_job(tmp_path, lr=lr, checkpoint_every=2, dataset={"options": {**SUITE["dataset"]["options"],
                                                                           "num_train": 24}}, **schedule)
    seen = {}
    real_save = train_module.save_checkpoint

    def spy(path, state):
        if Path(path).name == "checkpoint.pt":
            seen[state["progress"]["iteration"]] = [g["lr"] for g in state["optimizer"]["param_groups"]]
        real_save(path, state)

    monkeypatch.setattr(train_module, "save_checkpoint", spy)
    run_training(job, torch.device("cpu"), LOG)
    assert sorted(seen) == list(range(2, total + 1, 2))
    for iteration, lrs in seen.items():
        progress = iteration / total
        if schedule["lr_schedule"] == "poly":
            expected = lr * (1 - progress) ** 2.0
        else:
            expected = 0.001 + (lr - 0.001) * 0.5 * (1 + math.cos(math.pi * progress))
        assert lrs == pytest.approx([expected] * len(lrs), rel=1e-9, abs=1e-15), iteration


# --- the optimizer as the schedule configures it -----------------------------------------------------------------


def _optimizer_state(folder: Path) -> dict:
    return load_checkpoint(folder / "checkpoint.pt")["optimizer"]


@pytest.mark.parametrize("fields", [
    {"optimizer": "sgd", "momentum": 0.8, "nesterov": True, "weight_decay": 5e-4},
    {"optimizer": "sgd", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    {"optimizer": "adamw", "weight_decay": 0.05},  # not AdamW's own default (0.01): the schedule's value must arrive
], ids=["sgd-nesterov", "sgd-plain", "adamw"])
def test_the_optimizer_is_the_schedules(tmp_path, fields):
    methods = [{"name": "ickd", "hparams": {}}]  # a method with its own trainable connector
    job = make_job(tmp_path, methods, tiny_teacher(), iterations=2, checkpoint_every=2, lr=0.02, method_lr_mult=10.0,
                   lr_schedule="constant", **fields)
    run_training(job, torch.device("cpu"), LOG)
    state = _optimizer_state(tmp_path)
    student_group, method_group = state["param_groups"]
    assert student_group["lr"] == pytest.approx(0.02) and method_group["lr"] == pytest.approx(0.2)
    for group in (student_group, method_group):
        assert group["weight_decay"] == fields["weight_decay"]
        if fields["optimizer"] == "sgd":
            assert (group["momentum"], group["nesterov"]) == (fields["momentum"], fields["nesterov"])
        else:
            assert "betas" in group and "momentum" not in group
    student_count = sum(p.numel() for p in MODELS.get("tiny_student")(NUM_CLASSES).parameters())
    assert len(student_group["params"]) == len(list(MODELS.get("tiny_student")(NUM_CLASSES).parameters()))
    assert student_count > 0 and len(method_group["params"]) > 0


def test_gradient_clipping_bounds_the_step(tmp_path):
    """One plain SGD step (lr 1, no momentum or decay) with the gradient norm clipped to 1e-3 moves the parameters
    by exactly 1e-3 in norm (the unclipped gradient is far larger)."""
    torch.manual_seed(0)
    initial = MODELS.get("tiny_student")(NUM_CLASSES).state_dict()
    moved = {}
    for clip in (1e-3, None):
        folder = tmp_path / str(clip)
        job = make_job(folder, iterations=1, checkpoint_every=1, lr=1.0, momentum=0.0, weight_decay=0.0,
                       lr_schedule="constant", grad_clip_norm=clip)
        student = run_training(job, torch.device("cpu"), LOG)["student_model"]
        steps = [(p.detach() - initial[name]).reshape(-1) for name, p in student.named_parameters()]
        moved[clip] = float(torch.cat(steps).norm())
    assert moved[1e-3] == pytest.approx(1e-3, rel=1e-3)
    assert moved[None] > 10 * 1e-3


def test_the_record_times_the_run(tmp_path):
    import resource
    import time

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    started = time.perf_counter()
    record = run_training(make_job(tmp_path, iterations=4), torch.device("cpu"), LOG)
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert record["timing"]["wall_seconds"] <= took, "a fresh run counts only its own time"
    assert before <= record["timing"]["peak_memory_bytes"] <= after, "peak memory is the process's max RSS in bytes"
    timing = record["timing"]
    assert timing["wall_seconds"] > 0 and timing["world_size"] == 1 and timing["device"] == "cpu"
    assert timing["device_hours"] == pytest.approx(timing["wall_seconds"] / 3600, rel=1e-12)
    assert timing["seconds_per_iteration"] == pytest.approx(timing["wall_seconds"] / 4, rel=1e-12)
    assert timing["peak_memory_bytes"] > 10 * 2**20 and "RSS" in timing["peak_memory_kind"]
    assert record["iterations"] == 4 and record["iterations_per_epoch"] == 4 and record["method_params"] == 0


def test_last_losses_are_the_mean_of_the_last_logging_window(tmp_path, monkeypatch):
    """A scripted cross-entropy (1, 2, ..., 6 at steps 1..6): with log_every 4 the stored means are those of steps 5-6
    (the last, shorter window), with log_every 3 those of steps 4-6."""
    from benchmark.engine import step as step_module

    for log_every, expected in ((4, (5 + 6) / 2), (3, (4 + 5 + 6) / 3)):
        calls = []
        real = step_module.segmentation_loss

        def scripted(student, logits, features, labels, ignore_index, calls=calls, real=real):
            terms = real(student, logits, features, labels, ignore_index)
            calls.append(None)
            return {"ce": terms["ce"] * 0 + len(calls)}

        monkeypatch.setattr(step_module, "segmentation_loss", scripted)
        record = run_training(make_job(tmp_path / str(log_every), log_every=log_every), torch.device("cpu"), LOG)
        assert record["last_losses"]["ce"] == pytest.approx(expected)
        assert record["last_losses"]["total"] == pytest.approx(expected)


def test_a_non_finite_loss_stops_the_run_at_the_next_log(tmp_path, monkeypatch):
    from benchmark.engine import step as step_module
    from benchmark.engine.train import NonFiniteLossError

    real = step_module.segmentation_loss
    monkeypatch.setattr(step_module, "segmentation_loss",
                        lambda *args: {"ce": real(*args)["ce"] * float("nan")})
    with pytest.raises(NonFiniteLossError, match="non-finite loss at iteration 2"):
        run_training(make_job(tmp_path, log_every=2), torch.device("cpu"), LOG)
    assert not (tmp_path / "checkpoint.pt").exists(), "nothing of a diverged run is kept to resume from"


def test_checkpoints_at_their_interval_and_at_the_end(tmp_path, monkeypatch):
    saved = []
    real_save = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda path, state: (saved.append((Path(path).name, state.get("progress", {}).get("iteration"))),
                                             real_save(path, state)))
    run_training(make_job(tmp_path, iterations=7, checkpoint_every=3), torch.device("cpu"), LOG)
    assert saved == [("checkpoint.pt", 3), ("checkpoint.pt", 6), ("checkpoint.pt", 7)]


# --- bf16 autocast and channels_last: on CUDA only, unless switched ---------------------------------------------------


@pytest.mark.parametrize("device,runtime,autocast", [
    ("cuda", {}, True), ("cuda", {"amp": "auto"}, True), ("cuda", {"amp": "bf16"}, True), ("cuda", {"amp": "off"}, False),
    ("cpu", {}, False), ("cpu", {"amp": "bf16"}, False),
])
def test_bf16_autocast_only_on_cuda(device, runtime, autocast):
    import contextlib
    import warnings

    from benchmark.engine.train import autocast_context

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CUDA is not available": the decision is what is tested
        context = autocast_context(torch.device(device), runtime)
    if autocast:
        assert isinstance(context, torch.autocast)
        assert (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)
    else:
        assert isinstance(context, contextlib.nullcontext)


@pytest.mark.parametrize("device,setting,expected", [
    ("cuda", None, True), ("cuda", "auto", True), ("cuda", "off", False), ("cuda", "on", True),
    ("cpu", None, False), ("cpu", "auto", False), ("cpu", "on", True), ("cpu", "off", False),
])
def test_channels_last_on_cuda_unless_switched(device, setting, expected):
    from benchmark.engine.train import use_channels_last

    runtime = {} if setting is None else {"channels_last": setting}
    assert use_channels_last(torch.device(device), runtime) is expected


def test_channels_last_on_cpu_gives_the_same_numbers(tmp_path):
    records = [run_training(make_job(tmp_path / setting, iterations=3), torch.device("cpu"), LOG)
               if setting == "off" else
               run_training(_with_runtime(make_job(tmp_path / setting, iterations=3), channels_last="on"),
                            torch.device("cpu"), LOG)
               for setting in ("off", "on")]
    assert records[0]["final"]["miou"] == pytest.approx(records[1]["final"]["miou"], abs=1e-6)
    assert records[0]["last_losses"]["ce"] == pytest.approx(records[1]["last_losses"]["ce"], rel=1e-4)


def _with_runtime(job: TrainJob, **runtime) -> TrainJob:
    job.runtime = {**job.runtime, **runtime}
    return job


# --- what else the loop promises --------------------------------------------------------------------------------------


def test_the_method_stage_runs_on_its_own_batches_before_training(tmp_path):
    """AttnFD's teacher-attention stage: ceil(0.5 epoch x 4 steps) = 2 teacher forwards with grad in eval mode, then
    one inference-mode forward per training step; the stage does not shift the student's data order."""
    teacher = tiny_teacher()
    calls = record_teacher_calls(teacher)
    stage = {"points": ["decoder:pre_relu"], "teacher_attention": "trained", "attention_epochs": 0.5}
    record = run_training(make_job(tmp_path, [{"name": "attnfd", "hparams": stage}], teacher), torch.device("cpu"),
                          LOG)
    assert calls == [(False, False)] * 2 + [(False, True)] * 6
    assert record["iterations_per_epoch"] == 4


def test_hooks_are_removed_after_the_run_and_the_teacher_can_serve_the_next(tmp_path):
    teacher = tiny_teacher()
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in teacher.modules())
    record = run_training(make_job(tmp_path, [{"name": "kd", "hparams": {}}], teacher), torch.device("cpu"), LOG)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in teacher.modules()) == hooks_before
    student = record["student_model"]
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in student.modules()) == 0


def test_history_names_the_split_that_scored_it(tmp_path, monkeypatch):
    scripted = ScriptedEvaluation(selection=[0.1, 0.2], final=[])
    monkeypatch.setattr(train_module, "evaluate", scripted)
    record = run_training(make_job(tmp_path, iterations=4, eval_every=2), torch.device("cpu"), LOG)
    assert record["history"] == [{"iteration": 2, "split": "val", "miou": 0.1},
                                 {"iteration": 4, "split": "val", "miou": 0.2}]


@pytest.mark.parametrize("save", [True, False])
def test_teachers_keep_their_final_weights(tmp_path, save):
    job = make_job(tmp_path, iterations=2)
    job.save_weights = save
    record = run_training(job, torch.device("cpu"), LOG)
    if save:
        assert _same_weights(load_checkpoint(tmp_path / "model.pt"), record["student_model"].state_dict())
    else:
        assert not (tmp_path / "model.pt").exists()


def test_a_method_that_rescales_the_task_loss_is_obeyed(tmp_path):
    """LFD's self-normalised task loss enters the total as 1 (CE / sg(CE)); the total is its terms plus that one."""
    record = run_training(make_job(tmp_path, [{"name": "lfd", "hparams": {"start_iter": 0}}], tiny_teacher(),
                                   log_every=1), torch.device("cpu"), LOG)
    losses = record["last_losses"]
    distill = sum(v for k, v in losses.items() if k not in ("ce", "aux_ce", "total"))
    assert losses["ce"] != pytest.approx(1.0, abs=1e-3)
    assert losses["total"] == pytest.approx(distill + 1.0, rel=1e-5)


def test_evaluation_scores_every_image_of_the_split_once(tmp_path):
    """The loop's evaluation against an independent count (numpy, image by image) over all 8 validation images,
    with an evaluation batch that does not divide the split; the model comes back in the mode it was in."""
    import numpy as np

    from benchmark.data.transforms import EvalTransform
    from benchmark.engine.loader import eval_loader
    from benchmark.engine.train import evaluate
    from benchmark.registry import DATASETS

    spec = DATASETS.get("synthetic")
    split = spec.build("val", None, image_size=32, num_train=16, num_val=VAL, num_test=TEST)
    torch.manual_seed(0)
    model = MODELS.get("tiny_student")(NUM_CLASSES).train()
    scores = evaluate(model, eval_loader(split, EvalTransform(), 3, 0, False), NUM_CLASSES, 255, torch.device("cpu"),
                      {}, "nan_excluded")
    assert model.training
    model.eval()
    intersection, union = np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES)
    with torch.no_grad():
        for index in range(len(split)):
            image, label = EvalTransform()(*split[index])
            predicted = model(image[None]).argmax(1)[0].numpy()
            label = label.numpy()
            valid = label != 255
            for c in range(NUM_CLASSES):
                p, g = (predicted == c) & valid, (label == c) & valid
                intersection[c] += (p & g).sum()
                union[c] += (p | g).sum()
    with np.errstate(invalid="ignore"):
        iou = intersection / union
    assert scores["miou"] == pytest.approx(float(np.nanmean(iou)), abs=1e-12)
    assert scores["per_class_iou"] == pytest.approx(iou.tolist(), abs=1e-12, nan_ok=True)


def test_a_method_used_twice_in_a_row_keeps_both_uses(tmp_path):
    """CIRKD's CWD on a feature and on the logits: two components of one method, told apart by their keys."""
    methods = [{"name": "cwd", "key": "cwd_feature", "hparams": {"points": ["decoder"]}},
               {"name": "cwd", "key": "cwd_logits", "hparams": {}}]
    record = run_training(make_job(tmp_path, methods, tiny_teacher(), log_every=1), torch.device("cpu"), LOG)
    terms = set(record["last_losses"]) - {"ce", "total"}
    assert terms == {"cwd_feature.cwd", "cwd_logits.cwd"}
    assert record["last_losses"]["cwd_feature.cwd"] != record["last_losses"]["cwd_logits.cwd"]
    assert record["method_params"] > 0, "the feature use has its own 1x1 connector"


def test_a_dataset_on_disk_is_read_from_its_root(tmp_path, monkeypatch):
    """CamVid's layout in a temporary home folder, named as `~/CamVid`: the root reaches every split."""
    from fixtures_data import make_camvid

    monkeypatch.setenv("HOME", str(tmp_path))
    make_camvid(tmp_path / "CamVid", {"train": 4, "val": 2, "test": 3})
    data = copy.deepcopy(SUITE)
    data["dataset"] = {"name": "camvid", "root": "~/CamVid", "crop": [32, 32], "eval_size": [36, 48],
                       "eval_split": "test", "selection_split": "val"}
    suite = Suite(**data)
    job = TrainJob(name="camvid", folder=tmp_path / "run", dataset=suite.dataset.resolved(),
                   dataset_root=suite.dataset.root, schedule=suite.schedule, model_name="tiny_student",
                   model_options={}, seed=0, methods=[{"name": "none", "hparams": {}}],
                   runtime=suite.runtime.model_dump())
    record = run_training(job, torch.device("cpu"), LOG)
    assert record["iterations_per_epoch"] == 1 and len(record["final"]["per_class_iou"]) == 11
    assert record["final"]["split"] == "test" and record["best"]["selected_on"] == "val"


def test_model_options_reach_the_model(tmp_path):
    job = make_job(tmp_path)
    job.model_options = {"pretrained": True}  # the tiny models have no weights to load: they must say so
    with pytest.raises(ValueError, match="has no pretrained weights"):
        run_training(job, torch.device("cpu"), LOG)


@pytest.mark.parametrize("flip", [True, False])
def test_the_dataset_config_reaches_the_train_transform(flip):
    """The resolved `flip`, crop and padding arrive: an asymmetric image flips in some draws iff flip is on, and a crop
    larger than the image pads the label with the ignore index."""
    from torchvision import tv_tensors

    from benchmark.data.transforms import TrainTransform

    data = copy.deepcopy(SUITE)
    data["dataset"].update(flip=flip, crop=[8, 12])
    transform = TrainTransform.from_config(Suite(**data).dataset.resolved(), 255)
    image = tv_tensors.Image(torch.arange(8 * 10, dtype=torch.uint8).reshape(1, 8, 10).repeat(3, 1, 1))
    mask = tv_tensors.Mask(torch.arange(10).repeat(8, 1))
    flipped = set()
    for seed in range(12):
        torch.manual_seed(seed)
        _, labels = transform(image, mask)
        assert labels.shape == (8, 12) and int((labels == 255).sum()) == 8 * 2, "padding is ignored, never a class"
        row = [v for v in labels[0].tolist() if v != 255]
        assert row in (list(range(10)), list(range(9, -1, -1)))
        flipped.add(row[0] == 9)
    assert flipped == ({True, False} if flip else {False})
