"""The one training loop: data, student, (teacher), method -> train -> evaluate -> record.

Read it top to bottom: set-up, resume, the optional method stage, the loop, the final evaluation.
Host syncs happen only at logging, evaluation and checkpoint steps, never inside the step itself.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import convert_sync_batchnorm
from torch import nn
from tqdm import tqdm

from benchmark.convert import describe_weights, load_weights
from benchmark.data.transforms import EvalTransform, TrainTransform
from benchmark.engine import distributed
from benchmark.engine.board import RunBoard, folder_name
from benchmark.engine.checkpoint import (
    check_precision,
    load_checkpoint,
    load_state_strict,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from benchmark.engine.loader import eval_loader, iterations_per_epoch, train_loader, worker_count
from benchmark.engine.predictions import QualitativePlan, save_predictions
from benchmark.engine.prepare import run_prepare
from benchmark.engine.step import step_losses
from benchmark.engine.step import student_capture as make_student_capture
from benchmark.metrics import ConfusionMatrix
from benchmark.models.base import SegmentationModel
from benchmark.models.hooks import FeatureCapture
from benchmark.registry import DATASETS, METHODS, MODELS
from benchmark.suite import ScheduleConfig
from methods.base import Batch, CompositeMethod

TASK_TERMS = ("ce", "aux_ce")
#: The loop's log line at every ``log_every`` step, right after its one host sync (``perf`` clocks the loop by it).
ITERATION_LOG = "%s: iteration %d/%d lr %.3g %s"


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainJob:
    """Everything one run needs; built by the runner from a RunSpec (or a teacher spec)."""

    name: str
    folder: Path
    dataset: dict[str, Any]  # resolved DatasetConfig
    dataset_root: str | None
    schedule: ScheduleConfig
    model_name: str
    model_options: dict[str, Any]
    seed: int
    methods: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "hparams"}]
    teacher: SegmentationModel | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    save_weights: bool = False  # teachers keep their final weights for the runs that use them
    board_name: str = ""  # the run's TensorBoard folder under tb/ (default: from `name`)
    qualitative: QualitativePlan | None = None  # prediction PNGs after training (None: none)
    initial_weights: dict[str, str] | None = None  # {"path", "format"}: the student starts from this file


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_method(components: list[dict[str, Any]], student: SegmentationModel,
                 teacher: SegmentationModel | None) -> CompositeMethod:
    teacher_points = teacher.feature_points if teacher is not None else {}
    built = {}
    for component in components:
        cls = METHODS.get(component["name"])
        built[component.get("key", component["name"])] = cls(student.feature_points, teacher_points, student.num_classes,
                                       **component["hparams"])
    return CompositeMethod(built)


def lr_lambda(schedule: ScheduleConfig, total: int):
    """Multiplier of the base lr at an iteration: linear warm-up, then poly / cosine / constant."""
    floor = schedule.min_lr / schedule.lr

    def factor(iteration: int) -> float:
        if iteration < schedule.warmup_iterations:
            return (iteration + 1) / schedule.warmup_iterations
        progress = min(iteration / max(total, 1), 1.0)
        if schedule.lr_schedule == "poly":
            return floor + (1 - floor) * (1 - progress) ** schedule.poly_power
        if schedule.lr_schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def make_optimizer(schedule: ScheduleConfig, student: SegmentationModel, method: CompositeMethod,
                   device: torch.device | None = None):
    """SGD or AdamW over the student's (and the method's) parameter groups; on CUDA the fused kernels where this
    torch has them (a few launches for all parameters instead of several per tensor; the same update rule)."""
    trainable = [p for p in student.parameters() if p.requires_grad]
    head = {id(p) for p in student.head_parameters()} if schedule.head_lr_mult != 1 else set()
    if schedule.head_lr_mult != 1 and not head:
        raise ValueError(f"schedule.head_lr_mult {schedule.head_lr_mult}: {type(student).__name__} declares no head "
                         f"modules (SegmentationModel.head_modules)")
    groups = [{"params": [p for p in trainable if id(p) not in head], "lr": schedule.lr, "name": "student"}]
    if head:  # pytorch-deeplab-xception get_1x_lr_params / get_10x_lr_params (modeling/deeplab.py:47-65)
        groups.append({"params": [p for p in trainable if id(p) in head], "lr": schedule.lr * schedule.head_lr_mult,
                       "name": "head"})
    method_params = list(method.student_optimizer_parameters())
    if method_params:
        groups.append({"params": method_params, "lr": schedule.lr * schedule.method_lr_mult, "name": "method"})
    kind = torch.optim.SGD if schedule.optimizer == "sgd" else torch.optim.AdamW
    on_cuda = device is not None and device.type == "cuda"
    fused = {"fused": True} if on_cuda and "fused" in inspect.signature(kind).parameters else {}
    if schedule.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=schedule.lr, momentum=schedule.momentum, nesterov=schedule.nesterov,
                               weight_decay=schedule.weight_decay, **fused)
    return torch.optim.AdamW(groups, lr=schedule.lr, weight_decay=schedule.weight_decay, **fused)


def group_lr_lambdas(schedule: ScheduleConfig, total: int, per_epoch: int, method: CompositeMethod, optimizer):
    """One lr multiplier per parameter group: the schedule's, and for the method's group also the method's own
    per-epoch lr (``lr_multiplier``; e.g. connectors at 1x in a warm-up epoch, at ``method_lr_mult`` after).
    The table is built before training, so a method asking for conflicting rates fails before any step."""
    base = lr_lambda(schedule, total)
    epochs = total // max(per_epoch, 1) + 1
    scale = []
    for epoch in range(epochs):
        asked = method.lr_multiplier(epoch)
        scale.append(1.0 if asked is None else asked / schedule.method_lr_mult)

    def method_factor(iteration: int) -> float:
        return base(iteration) * scale[min(iteration // max(per_epoch, 1), epochs - 1)]

    return [method_factor if group.get("name") == "method" else base for group in optimizer.param_groups]


def resolved_precision(device: torch.device, runtime: dict[str, Any]) -> str:
    """``"bf16"`` (autocast) on CUDA unless ``runtime.amp`` is ``off``, else ``"fp32"``; never ``"auto"``.

    bf16 and fp32 give different numbers, so the record and the checkpoint store this resolved value. The key of a
    run leaves ``runtime.amp`` out (a suite has the same keys on a CPU login node and a GPU job), so a resume checks
    it instead. On a CPU every setting computes in fp32.
    """
    return "bf16" if device.type == "cuda" and runtime.get("amp", "auto") in ("auto", "bf16") else "fp32"


def autocast_context(device: torch.device, runtime: dict[str, Any]):
    if resolved_precision(device, runtime) == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(device: torch.device, runtime: dict[str, Any]) -> bool:
    setting = runtime.get("channels_last", "auto")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


#: torch.compile's backend for ``runtime.compile`` (tests use "aot_eager": the same graphs without code generation).
COMPILE_BACKEND = "inductor"


def compile_in_place(model: nn.Module, runtime: dict[str, Any]) -> None:
    """``runtime.compile``: :meth:`torch.nn.Module.compile`, which keeps the module itself, so its state dict keys,
    checkpoints and feature hooks are those of eager. Dynamo traces the hooks present at a call and compiles again
    for a new set of them (another method's points) or another mode (training, evaluation)."""
    if runtime.get("compile"):
        model.compile(backend=COMPILE_BACKEND)


@torch.inference_mode()
def evaluate(model: SegmentationModel, loader, num_classes: int, ignore_index: int, device: torch.device,
             runtime: dict[str, Any], absent_class_policy: str, description: str = "eval") -> dict[str, Any]:
    """One confusion matrix over the whole split (summed across processes), then the scores."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index, device=device)
    channels_last = use_channels_last(device, runtime)
    for images, labels in tqdm(loader, desc=description, leave=False, disable=None):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast_context(device, runtime):
            logits = model(images)
        # The class from float32 logits whatever dtype autocast left them in: one argmax for every precision.
        matrix.update(logits.float().argmax(dim=1), labels)
    distributed.all_reduce_sum(matrix.matrix)
    model.train(was_training)
    return matrix.compute(absent_class_policy).as_dict()


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process max RSS (CPU; whole process)"


def run_training(job: TrainJob, device: torch.device, log: logging.Logger) -> dict[str, Any]:
    """Train one run to the end (resuming from its checkpoint if any) and return its record.

    Its TensorBoard events are flushed and closed however the run ends, a failure included.
    """
    with RunBoard(job.folder, job.board_name or folder_name(job.name), enabled=distributed.is_main()) as board:
        return _train_run(job, device, log, board)


def _train_run(job: TrainJob, device: torch.device, log: logging.Logger, board: RunBoard) -> dict[str, Any]:
    rank, world = distributed.rank(), distributed.world_size()
    dataset_cfg, schedule = job.dataset, job.schedule
    spec = DATASETS.get(dataset_cfg["name"])
    root = Path(job.dataset_root).expanduser() if job.dataset_root else None

    def split(name: str):
        return spec.build(name, root, **dataset_cfg["options"])

    train_set = split(dataset_cfg["train_split"])
    eval_split = dataset_cfg["eval_split"]
    selection_split = dataset_cfg["selection_split"]
    per_epoch = iterations_per_epoch(len(train_set), schedule.batch_size, world)
    total = schedule.iterations or schedule.epochs * per_epoch
    log.info("%s: %d training images, %d iterations (%d per epoch), batch %d x %d process(es)", job.name,
             len(train_set), total, per_epoch, schedule.batch_size, world)

    seed_everything(job.seed)
    student = MODELS.get(job.model_name)(spec.num_classes, **job.model_options)
    initial = None
    if job.initial_weights:
        initial = load_weights(student, Path(job.initial_weights["path"]).expanduser(), job.initial_weights["format"],
                               "the student's initial weights")
        log.info("%s: initial weights %s", job.name, describe_weights(initial))
    if distributed.initialized() and device.type == "cuda":
        # Batch statistics over the global batch, as the papers' multi-GPU runs compute them (CUDA only). timm's
        # conversion keeps the activation inside BatchNormAct2d (MobileNetV2's ReLU6); torch's would drop it.
        student = convert_sync_batchnorm(student)
    student = student.to(device)
    teacher = job.teacher
    method = build_method(job.methods, student, teacher).to(device)
    channels_last = use_channels_last(device, job.runtime)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
        if teacher is not None:  # in place; the teacher is shared by this process's runs, converting twice is a no-op
            teacher.to(memory_format=torch.channels_last)
    compile_in_place(student, job.runtime)
    if teacher is not None:
        compile_in_place(teacher, job.runtime)
    optimizer = make_optimizer(schedule, student, method, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, group_lr_lambdas(schedule, total, per_epoch, method,
                                                                              optimizer))

    checkpoint_path = job.folder / "checkpoint.pt"
    best_path = job.folder / "best.pt"
    precision = resolved_precision(device, job.runtime)
    state = {"iteration": 0, "elapsed": 0.0, "best": None, "history": []}
    if checkpoint_path.is_file():
        saved = load_checkpoint(checkpoint_path)
        check_precision(job.name, checkpoint_path, saved.get("precision"), precision)
        load_state_strict(student, saved["model"], checkpoint_path, "the student")
        load_state_strict(method, saved["method"], checkpoint_path, "the method's modules")
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        state = saved["progress"]
        log.info("%s: resumed from %s at iteration %d", job.name, checkpoint_path, state["iteration"])
    board.start(state["iteration"])
    if teacher is not None:
        teacher.train(method.teacher_train_mode)
        if method.teacher_train_mode:
            # Batch statistics as the authors' code, but the shared teacher's running statistics must not move:
            # later runs (eval mode) read them. Momentum is unused in eval mode, so nothing needs restoring.
            for module in teacher.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = 0.0

    train_transform = TrainTransform.from_config(dataset_cfg, spec.ignore_index)
    eval_transform = EvalTransform.from_config(dataset_cfg)
    authors_forward = schedule.kd_forward == "extract_feature" and teacher is not None
    # pytorch-deeplab-xception divides the pixel-mean CE by the batch the loss sees (utils/loss.py:30-31): all of it.
    task_divisor = schedule.batch_size * world if schedule.ce_batch_average else 1
    log.info("%s: input %s, scale %s, pad image %s / label %d, blur %s; head lr x%g, CE%s, %s forward", job.name,
             dataset_cfg["normalization"], dataset_cfg["scale_mode"], dataset_cfg["image_pad"],
             dataset_cfg["label_pad"], dataset_cfg["gaussian_blur"], schedule.head_lr_mult,
             f" / {task_divisor} (batch average)" if task_divisor != 1 else " pixel mean",
             "authors' KD" if authors_forward else "plain")
    num_workers = worker_count(job.runtime.get("num_workers", 0), device.type)
    pin = device.type == "cuda"
    log.info("%s: trains and evaluates in %s on %s%s%s, %d loader worker(s)", job.name, precision, device,
             ", channels_last" if channels_last else "", ", compiled" if job.runtime.get("compile") else "",
             num_workers)

    def batches(seed: int, start: int, stop: int):
        loader = train_loader(train_set, train_transform, schedule.batch_size, seed, stop, start, num_workers, pin,
                              rank, world)
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels.to(device, non_blocking=True)

    if method.needs_prepare():
        log.info("%s: method stage before student training", job.name)
        # A seed stream of its own, so the student's data order does not depend on the stage's length.
        prepare_batches = (Batch(images, labels, 0, total, per_epoch, spec.ignore_index)
                           for images, labels in batches(job.seed + 7919, 0, 10**9))
        run_prepare(method, teacher, prepare_batches, spec.num_classes, device, log=log.info)

    def evaluate_on(split_name: str, model: SegmentationModel) -> dict[str, Any]:
        loader = eval_loader(split(split_name), eval_transform, schedule.eval_batch_size, num_workers, pin, rank,
                             world)
        return evaluate(model, loader, spec.num_classes, spec.ignore_index, device, job.runtime,
                        dataset_cfg["absent_class_policy"], description=f"eval {split_name}")

    def save(iteration: int) -> None:
        if not distributed.is_main():
            return
        save_checkpoint(checkpoint_path, {
            "model": student.state_dict(), "method": method.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng_state(), "scaler": None, "precision": precision,
            "progress": {**state, "iteration": iteration},
        })

    def select(iteration: int) -> None:
        """Evaluate on the selection split; keep the best student (its weights too, if scored elsewhere)."""
        scores = evaluate_on(selection_split, student)
        state["history"].append({"iteration": iteration, "split": selection_split, "miou": scores["miou"]})
        board.evaluation(iteration, selection_split, scores["miou"])
        log.info("%s: iteration %d: %s mIoU %.2f%%", job.name, iteration, selection_split, 100 * scores["miou"])
        best = state["best"]
        if best is None or scores["miou"] > best["selection_miou"]:
            state["best"] = {"iteration": iteration, "selection_miou": scores["miou"], "scores": scores}
            if selection_split != eval_split and distributed.is_main():
                save_checkpoint(best_path, {"model": student.state_dict()})

    student_hooks = make_student_capture(student, method)
    teacher_capture = FeatureCapture(teacher, method.teacher_points) if teacher is not None else None
    student.train()
    start_iteration = state["iteration"]
    started = time.perf_counter()
    elapsed_before = state["elapsed"]
    running: dict[str, torch.Tensor] = {}
    progress = tqdm(total=total, initial=start_iteration, desc=job.name, disable=None if rank == 0 else True)
    iteration = start_iteration
    for images, labels in batches(job.seed, start_iteration, total):
        batch = Batch(images, labels, iteration, total, per_epoch, spec.ignore_index)
        with autocast_context(device, job.runtime):
            terms, student_feats, teacher_feats = step_losses(student, teacher, method, student_hooks,
                                                              teacher_capture, batch, authors_forward)
        if task_divisor != 1:
            terms.update({k: terms[k] / task_divisor for k in TASK_TERMS if k in terms})
        frozen = method.student_frozen(batch)
        loss = sum(v for k, v in terms.items() if k not in TASK_TERMS)
        if not frozen:
            loss = loss + method.scale_task_loss(sum(terms[k] for k in TASK_TERMS if k in terms), batch)
        optimizer.zero_grad(set_to_none=True)
        if not frozen or loss.requires_grad:  # a frozen step may have nothing to train (the AICSD code's LAD epoch 0)
            loss.backward()
        if frozen:  # only the method's modules step; SGD and AdamW skip parameters without a gradient
            for parameter in student.parameters():
                parameter.grad = None
        distributed.average_gradients(itertools.chain(student.parameters(), method.student_optimizer_parameters()))
        if schedule.grad_clip_norm:
            nn.utils.clip_grad_norm_(list(student.parameters()) + list(method.student_optimizer_parameters()),
                                     schedule.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        method.separate_step({k: v.detach() for k, v in student_feats.items()}, teacher_feats, batch)
        for name, value in terms.items():
            running[name] = running.get(name, 0.0) + value.detach().float()
        running["total"] = running.get("total", 0.0) + loss.detach().float()
        iteration += 1
        progress.update(1)

        if iteration % schedule.log_every == 0 or iteration == total:
            count = schedule.log_every if iteration % schedule.log_every == 0 else iteration % schedule.log_every
            means = {name: value.item() / count for name, value in running.items()}  # the only sync of the loop
            running.clear()
            if not all(math.isfinite(v) for v in means.values()):
                raise NonFiniteLossError(f"non-finite loss at iteration {iteration}: {means}")
            state["last_losses"] = means
            progress.set_postfix(loss=f"{means['total']:.4f}")
            log.info(ITERATION_LOG, job.name, iteration, total, scheduler.get_last_lr()[0],
                     " ".join(f"{k}={v:.4f}" for k, v in means.items()))
            board.training(iteration, means, optimizer)
        state["elapsed"] = elapsed_before + time.perf_counter() - started
        if selection_split and schedule.eval_every and iteration % schedule.eval_every == 0 and iteration < total:
            select(iteration)
        if iteration % schedule.checkpoint_every == 0 or iteration == total:
            state["elapsed"] = elapsed_before + time.perf_counter() - started
            save(iteration)
    progress.close()
    student_hooks.remove()
    if teacher_capture is not None:
        teacher_capture.remove()
    if iteration != total:
        raise RuntimeError(f"the loader stopped at iteration {iteration} of {total}")

    final = evaluate_on(eval_split, student)
    log.info("%s: final %s mIoU %.2f%%, pixel accuracy %.2f%%", job.name, eval_split, 100 * final["miou"],
             100 * final["pixel_accuracy"])
    best_record = None
    if selection_split:
        if selection_split == eval_split:
            state["history"].append({"iteration": total, "split": eval_split, "miou": final["miou"]})
            board.evaluation(total, eval_split, final["miou"])
            best = state["best"]
            if best is None or final["miou"] > best["selection_miou"]:
                best = {"iteration": total, "selection_miou": final["miou"], "scores": final}
            best_record = {"selected_on": selection_split, "split": eval_split, "iteration": best["iteration"],
                           **best["scores"]}
        else:
            select(total)
            best = state["best"]
            if best["iteration"] == total:
                scores = final
            else:
                best_model = MODELS.get(job.model_name)(spec.num_classes, **job.model_options).to(device)
                load_state_strict(best_model, load_checkpoint(best_path)["model"], best_path, "the best student")
                scores = evaluate_on(eval_split, best_model)
            best_record = {"selected_on": selection_split, "split": eval_split, "iteration": best["iteration"],
                           "selection_miou": best["selection_miou"], **scores}
    wall = elapsed_before + time.perf_counter() - started
    memory, memory_kind = peak_memory(device)
    board.scores(total, {"split": eval_split, **final}, best_record, spec.class_names)
    qualitative = None
    if job.qualitative is not None and distributed.is_main():
        qualitative = save_predictions(student, split(eval_split), eval_split, eval_transform, spec, job.folder,
                                       job.qualitative, device, job.runtime)
    if job.save_weights and distributed.is_main():
        save_checkpoint(job.folder / "model.pt", student.state_dict())
    return {
        "final": {"split": eval_split, "iteration": total, **final},
        "best": best_record,
        "history": state["history"],
        "iterations": total,
        "iterations_per_epoch": per_epoch,
        "last_losses": state.get("last_losses", {}),
        "qualitative": qualitative,
        "precision": {"train": precision, "eval": precision},
        "timing": {
            "wall_seconds": wall,
            "device_hours": wall * world / 3600,
            "seconds_per_iteration": wall / max(total, 1),
            "peak_memory_bytes": memory,
            "peak_memory_kind": memory_kind,
            "device": str(device),
            "world_size": world,
        },
        "method_params": sum(p.numel() for p in method.student_optimizer_parameters()),
        **({"student_checkpoint": initial} if initial else {}),
        "student_model": student,
    }
