"""``python -m benchmark perf``: the harness's training iteration against the loop a researcher writes by hand.

Both sides train the same models on the same data with the same method and optimizer: by default the issue's
setting (CIRKD's DeepLabV3-R101 teacher, frozen, distilled into a DeepLabV3-R18 student by pixel KD at the
stride-8 logits, ``logits:pre_upsample``, plus CE and the auxiliary head's CE; real CamVid images through our
dataset and train transform, crop 128, batch 2). The harness side is :func:`benchmark.engine.train.run_training`
itself, with its loader, hooks, TensorBoard writer and log; the plain side is :func:`plain_loop`, written here as
a researcher would (a ``DataLoader`` over the dataset, forward hooks, an ``inference_mode`` teacher, the loss
spelled out), not a copy of ours. On CUDA both run in bf16 autocast with channels_last models and inputs.

What is timed is the marginal cost of N more iterations: each side trains N iterations to warm up (allocator,
cudnn autotuning, loader start, compilation), then N more, and only those count, so start-up and the final
evaluation do not. The harness is clocked at its ``ITERATION_LOG`` line (``log_every`` = N), which comes right
after the loop's one host sync; the plain loop synchronises where it stops. The sides alternate (harness first
in even repeats, plain first in odd ones) and repeat, since single measurements on a shared machine swing by
15%; each repeat gives a ratio, and the median of the ratios is the result. Then one more plain run is split into
phases (data, teacher forward, student forward, loss terms, backward, optimizer step): CUDA events on a GPU (no
host sync until read), ``perf_counter`` on a CPU. On CUDA also images/s and model FLOP utilisation: fvcore's
count of the teacher's forward and three student forwards per image (forward + backward), times 2 (fvcore counts
a multiply-add as one FLOP, a GPU's peak counts it as two), against the device's dense bf16 peak, and where the
harness waits for the GPU inside its timed iterations (CUDA's sync debug mode; the logging step's is expected).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import linecache
import logging
import math
import statistics
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmark.data.transforms import TrainTransform
from benchmark.registry import DATASETS, MODELS
from benchmark.suite import DatasetConfig, ScheduleConfig, SuiteError, expand_path

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets, by a part of
#: ``torch.cuda.get_device_name()``; the first match wins, so the specific names come first.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
KD_POINT = "logits:pre_upsample"
PHASES = ("data", "teacher forward", "student forward", "loss terms", "backward", "optimizer step")


@dataclass
class PerfSetting:
    student: str = "deeplabv3_r18"
    teacher: str = "deeplabv3_r101"
    dataset: str = "camvid"
    root: str | None = "data/CamVid"
    #: The first N images of each split (the timed iterations need batch x 2N; a small eval split keeps the
    #: harness's one final evaluation, which is not timed, short).
    subset: int | None = 64
    crop: tuple[int, int] = (128, 128)
    batch_size: int = 2
    iterations: int = 12
    repeats: int = 3
    device: str = "auto"
    num_workers: list[int] = field(default_factory=lambda: [0])
    compile: bool = False
    peak_tflops: float | None = None
    temperature: float = 1.0
    lr: float = 0.01


# --- the plain loop ---------------------------------------------------------------------------------


class TransformedSplit(Dataset):
    """A split with a train transform applied: the two lines a researcher writes around a dataset."""

    def __init__(self, split: Dataset, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.transform(*self.split[index])


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Pixel-wise KD as CIRKD's ``CriterionKD`` writes it: KL over classes, averaged over pixels, times T²."""
    classes = student_logits.shape[1]
    student_logits = student_logits.permute(0, 2, 3, 1).reshape(-1, classes)
    teacher_logits = teacher_logits.permute(0, 2, 3, 1).reshape(-1, classes)
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean") * temperature**2


class NoClock:
    def mark(self, phase: str) -> None:
        pass


class PhaseClock:
    """Time between consecutive marks, charged to the phase named by the later mark.

    On CUDA each mark records an event on the stream (the GPU timestamps it when it gets there, the host never
    waits); the data phase is then the time the GPU waited for the batch. On a CPU, ``perf_counter``.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []
        self.mark("start")

    def mark(self, phase: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((phase, event))
        else:
            self.marks.append((phase, time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = defaultdict(float)
        for (_, before), (phase, after) in zip(self.marks, self.marks[1:]):
            totals[phase] += before.elapsed_time(after) / 1000 if self.cuda else after - before
        return dict(totals)


def plain_loop(student: nn.Module, teacher: nn.Module, batches: Iterator, optimizer: torch.optim.Optimizer,
               scheduler, iterations: int, device: torch.device, *, temperature: float, ignore_index: int,
               bf16: bool, channels_last: bool, clock: NoClock | PhaseClock | None = None) -> None:
    """``iterations`` steps of KD at the stride-8 logits + CE + aux CE, as a researcher writes them."""
    clock = clock or NoClock()
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda module, inputs, output: outputs.__setitem__(name, output)

    hooks = [module_of(student, KD_POINT).register_forward_hook(keep("student")),
             module_of(teacher, KD_POINT).register_forward_hook(keep("teacher"))]
    aux_weight = getattr(student, "aux_weight", 0.0)
    if aux_weight:
        hooks.append(student.aux_head.register_forward_hook(keep("aux")))
    student.train()
    for _ in range(iterations):
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        clock.mark("data")
        with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            with torch.inference_mode():
                teacher(images)
            target = outputs.pop("teacher").clone()  # an inference tensor cannot be saved for backward
            clock.mark("teacher forward")
            logits = student(images)
            clock.mark("student forward")
            loss = F.cross_entropy(logits, labels, ignore_index=ignore_index)
            if aux_weight:
                aux = F.interpolate(outputs.pop("aux"), size=labels.shape[-2:], mode="bilinear", align_corners=True)
                loss = loss + aux_weight * F.cross_entropy(aux, labels, ignore_index=ignore_index)
            loss = loss + kd_loss(outputs.pop("student"), target, temperature)
            clock.mark("loss terms")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clock.mark("backward")
        optimizer.step()
        scheduler.step()
        clock.mark("optimizer step")
    for hook in hooks:
        hook.remove()


def module_of(model: nn.Module, point: str) -> nn.Module:
    """The submodule whose output is ``point`` (the zoo declares it; a researcher would name it)."""
    return model.get_submodule(model.point(point).module)


# --- the two sides, timed ---------------------------------------------------------------------------


@dataclass
class Bench:
    """Everything both sides share: the setting, the resolved dataset, the device and the frozen teachers."""

    setting: PerfSetting
    dataset: dict[str, Any]
    device: torch.device
    num_classes: int
    ignore_index: int
    teacher: nn.Module
    student_has_aux: bool

    @property
    def bf16(self) -> bool:
        return self.device.type == "cuda"

    def schedule(self) -> ScheduleConfig:
        n = self.setting.iterations
        return ScheduleConfig(iterations=2 * n, batch_size=self.setting.batch_size, optimizer="sgd",
                              lr=self.setting.lr, momentum=0.9, weight_decay=1e-4, lr_schedule="poly",
                              log_every=n, eval_every=0, checkpoint_every=2 * n, eval_batch_size=8)

    def runtime(self, workers: int, compiled: bool) -> dict[str, Any]:
        return {"num_workers": workers, "amp": "auto", "channels_last": "auto", "compile": compiled}

    def method(self) -> list[dict[str, Any]]:
        return [{"name": "kd", "hparams": {"point": KD_POINT, "temperature": self.setting.temperature}}]

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class IterationClock(logging.Handler):
    """``perf_counter`` at each of the loop's ``ITERATION_LOG`` lines, by iteration. With ``audit`` (CUDA): CUDA's
    sync debug mode warns at every host sync between the lines of iterations ``audit[0]`` and ``audit[1]``."""

    def __init__(self, audit: tuple[int, int] | None = None):
        super().__init__()
        self.at: dict[int, float] = {}
        self.audit = audit

    def emit(self, record: logging.LogRecord) -> None:
        from benchmark.engine.train import ITERATION_LOG

        if record.msg == ITERATION_LOG:
            iteration = int(record.args[1])
            self.at[iteration] = time.perf_counter()
            if self.audit and iteration in self.audit:
                torch.cuda.set_sync_debug_mode("warn" if iteration == self.audit[0] else "default")


def harness_seconds(bench: Bench, teacher: nn.Module, workers: int, compiled: bool) -> float:
    """Seconds per iteration of ``run_training`` over iterations N+1..2N (a real run in a scratch folder)."""
    return _harness(bench, teacher, workers, compiled, IterationClock())


def sync_audit(bench: Bench, teacher: nn.Module, workers: int) -> Counter:
    """Where the harness waits for the GPU during iterations N+1..2N: ``file:line`` -> count, from CUDA's sync
    debug mode. The loop's one sync at the logging step (iteration 2N) is expected; any other is a finding."""
    clock = IterationClock(audit=(bench.setting.iterations, 2 * bench.setting.iterations))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _harness(bench, teacher, workers, False, clock)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    places = Counter()
    for warning in caught:
        if "synchroniz" in str(warning.message):
            places[f"{warning.filename}:{warning.lineno}"] += 1
    return places


def _harness(bench: Bench, teacher: nn.Module, workers: int, compiled: bool, clock: IterationClock) -> float:
    from benchmark.engine.train import TrainJob, run_training

    n = bench.setting.iterations
    with tempfile.TemporaryDirectory(prefix="segkd-perf-") as folder:
        log = logging.getLogger(f"segkd.perf.{id(clock)}")
        log.setLevel(logging.INFO)
        log.propagate = False
        file_handler = logging.FileHandler(Path(folder) / "train.log")  # as a real run writes its train.log
        log.addHandler(file_handler)
        log.addHandler(clock)
        job = TrainJob(name="perf", folder=Path(folder), dataset=bench.dataset, dataset_root=bench.setting.root,
                       schedule=bench.schedule(), model_name=bench.setting.student, model_options={}, seed=0,
                       methods=bench.method(), teacher=teacher, runtime=bench.runtime(workers, compiled))
        try:
            run_training(job, bench.device, log)
        finally:
            for handler in (file_handler, clock):
                log.removeHandler(handler)
            file_handler.close()
    return (clock.at[2 * n] - clock.at[n]) / n


def plain_setup(bench: Bench, teacher: nn.Module, workers: int, compiled: bool):
    """The plain side's student, data, optimizer and schedule, built as a researcher builds them."""
    setting, device = bench.setting, bench.device
    torch.manual_seed(0)
    student = MODELS.get(setting.student)(bench.num_classes).to(device)
    if bench.bf16:
        student = student.to(memory_format=torch.channels_last)
    if compiled:  # both models, as the harness's runtime.compile does (each side has its own teacher copy)
        student.compile()
        teacher.compile()
    split = DATASETS.get(bench.dataset["name"]).build(bench.dataset["train_split"], _root(setting.root),
                                                     **bench.dataset["options"])
    loader = DataLoader(TransformedSplit(split, TrainTransform.from_config(bench.dataset, bench.ignore_index)),
                        batch_size=setting.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    fused = {"fused": True} if device.type == "cuda" else {}  # as the harness's optimizer: not what is compared
    optimizer = torch.optim.SGD(student.parameters(), lr=setting.lr, momentum=0.9, weight_decay=1e-4, **fused)
    total = 2 * setting.iterations
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1 - it / total) ** 0.9)
    return student, forever(loader), optimizer, scheduler


def forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def plain_seconds(bench: Bench, teacher: nn.Module, workers: int, compiled: bool,
                  clock: PhaseClock | None = None) -> float:
    """Seconds per iteration of :func:`plain_loop` over iterations N+1..2N."""
    student, batches, optimizer, scheduler = plain_setup(bench, teacher, workers, compiled)
    n = bench.setting.iterations
    options = {"temperature": bench.setting.temperature, "ignore_index": bench.ignore_index, "bf16": bench.bf16,
               "channels_last": bench.bf16}
    plain_loop(student, teacher, batches, optimizer, scheduler, n, bench.device, **options)
    bench.sync()
    started = time.perf_counter()
    if clock is not None:
        clock.marks.clear()
        clock.mark("start")
    plain_loop(student, teacher, batches, optimizer, scheduler, n, bench.device, clock=clock, **options)
    bench.sync()
    return (time.perf_counter() - started) / n


def check_compiled(bench: Bench, teacher: nn.Module) -> float:
    """Before timing compiled code: a compiled student's hooks capture the method's points and its loss terms
    equal eager's on one batch. Returns the largest relative difference of a term."""
    from benchmark.engine.step import step_losses, student_capture
    from benchmark.engine.train import autocast_context, build_method, compile_in_place
    from benchmark.models.hooks import FeatureCapture
    from methods.base import Batch

    runtime = bench.runtime(0, True)
    student, batches, _, _ = plain_setup(bench, teacher, 0, False)
    compiled = copy.deepcopy(student)
    compile_in_place(compiled, runtime)
    images, labels = next(batches)
    images, labels = images.to(bench.device), labels.to(bench.device)
    if bench.bf16:
        images = images.contiguous(memory_format=torch.channels_last)
    batch = Batch(images, labels, 0, 1, 1, bench.ignore_index)
    terms, points = {}, {}
    for name, model in (("eager", student), ("compiled", compiled)):
        torch.manual_seed(0)  # the same initial method modules (connectors) for both
        method = build_method(bench.method(), model, teacher).to(bench.device)
        with (student_capture(model, method) as hooks, FeatureCapture(teacher, method.teacher_points) as capture,
              autocast_context(bench.device, runtime)):
            terms[name], points[name], _ = step_losses(model, teacher, method, hooks, capture, batch)
    if set(points["compiled"]) != set(points["eager"]):
        raise RuntimeError(f"compiled student's hooks captured {sorted(points['compiled'])}, eager "
                           f"{sorted(points['eager'])}")
    worst = 0.0
    for term, value in terms["eager"].items():
        eager, other = value.float().item(), terms["compiled"][term].float().item()
        worst = max(worst, abs(eager - other) / max(abs(eager), 1e-12))
    tolerance = 2e-2 if bench.bf16 else 1e-4
    if worst > tolerance:
        raise RuntimeError(f"compiled loss terms differ from eager by {worst:.2e} (relative; tolerance {tolerance}): "
                           f"eager {_terms(terms['eager'])}, compiled {_terms(terms['compiled'])}")
    return worst


def _terms(terms: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={v.float().item():.6f}" for k, v in terms.items())


# --- the command ------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SuiteError(f"--device {name}: no CUDA device is visible here")
    return device


def _root(root: str | None) -> Path | None:
    return expand_path(root) if root else None


def build_bench(setting: PerfSetting) -> Bench:
    spec = DATASETS.get(setting.dataset)
    if setting.dataset == "synthetic":
        options = {"image_size": max(setting.crop), "num_train": 8 * setting.batch_size * setting.iterations,
                   "num_val": 8, "num_test": 8}
    else:
        options = {"subset": setting.subset}
    try:
        config = DatasetConfig(name=setting.dataset, root=setting.root, options=options, crop=setting.crop,
                               eval_size=setting.crop, selection_split="none")
    except ValueError as error:
        raise SuiteError(f"perf: dataset {setting.dataset}: {error}") from None
    report = spec.check(_root(setting.root), **config.options)
    if not report.ok:
        raise SuiteError(f"perf: dataset {setting.dataset} at {setting.root}: {report.message()} "
                         "(--root DIR, or --dataset synthetic for no files)")
    device = resolve_device(setting.device)
    torch.manual_seed(1)
    from benchmark.models.base import freeze

    teacher = freeze(MODELS.get(setting.teacher)(spec.num_classes).to(device))
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    has_aux = MODELS.get(setting.student)(spec.num_classes).aux_weight > 0
    return Bench(setting, config.resolved(), device, spec.num_classes, spec.ignore_index, teacher, has_aux)


def flops_per_image(bench: Bench) -> float:
    """Model FLOPs of one training image: the teacher's forward and the student's forward and backward (about
    three forwards), from fvcore's multiply-adds times 2. Inference forwards: the auxiliary head is not counted."""
    from benchmark.cost import count_flops

    student = MODELS.get(bench.setting.student)(bench.num_classes).to(bench.device)
    return 2.0 * (count_flops(bench.teacher, bench.setting.crop) + 3 * count_flops(student, bench.setting.crop))


def bf16_peak(name: str, given: float | None = None) -> tuple[float | None, str]:
    """The dense bf16 peak (TFLOP/s) of the GPU called ``name``, and where the number comes from."""
    if given:
        return given, "given by --peak-tflops"
    for part, tflops in BF16_PEAK_TFLOPS:
        if part in name:
            return tflops, f"{name}, dense bf16 data sheet peak"
    return None, name


def run_perf(setting: PerfSetting, echo=print) -> dict[str, Any]:
    """Measure, print, and return the numbers (per worker count and mode: per-repeat times and ratios)."""
    bench = build_bench(setting)
    device, n = bench.device, setting.iterations
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} thread(s)")
    echo(f"perf: {setting.teacher} (frozen) -> {setting.student}, kd at {KD_POINT} (T={setting.temperature:g}) + CE"
         f"{' + aux CE' if bench.student_has_aux else ''}; "
         f"{setting.dataset} (our dataset and train transform"
         f"{f', first {setting.subset} images' if setting.dataset != 'synthetic' and setting.subset else ''}), "
         f"crop {setting.crop[0]}x{setting.crop[1]}, batch {setting.batch_size}; {where}, "
         f"{'bf16 autocast, channels_last' if bench.bf16 else 'fp32'}")
    echo(f"each side: {n} warm-up iterations, then {n} timed; {setting.repeats} repeats, alternating which goes first")
    modes = [False, True] if setting.compile else [False]
    if setting.compile:
        echo(f"compile: hooks and loss terms of a compiled student match eager (largest relative difference "
             f"{check_compiled(bench, bench.teacher):.1e})")
    results: dict[str, Any] = {"setting": setting.__dict__, "device": where, "runs": []}
    for workers in setting.num_workers:
        for compiled in modes:
            # Each side its own copy of the teacher: compiling one in place must not change the other.
            teachers = {"harness": copy.deepcopy(bench.teacher), "plain": copy.deepcopy(bench.teacher)}
            label = f"num_workers {workers}, {'compiled' if compiled else 'eager'}"
            times: dict[str, list[float]] = {"harness": [], "plain": []}
            for repeat in range(setting.repeats):
                order = ("harness", "plain") if repeat % 2 == 0 else ("plain", "harness")
                for side in order:
                    measure = harness_seconds if side == "harness" else plain_seconds
                    times[side].append(measure(bench, teachers[side], workers, compiled))
                ratio = times["harness"][-1] / times["plain"][-1]
                echo(f"[{label}] repeat {repeat + 1}: harness {times['harness'][-1]:.4f} s/it, plain "
                     f"{times['plain'][-1]:.4f} s/it, harness/plain {ratio:.3f}")
            ratios = [h / p for h, p in zip(times["harness"], times["plain"])]
            harness, plain = statistics.median(times["harness"]), statistics.median(times["plain"])
            images = setting.batch_size / harness, setting.batch_size / plain
            echo(f"[{label}] median: harness {harness:.4f} s/it, plain {plain:.4f} s/it; harness/plain "
                 f"{statistics.median(ratios):.3f} (median of {len(ratios)}); images/s harness {images[0]:.1f}, "
                 f"plain {images[1]:.1f}")
            results["runs"].append({"num_workers": workers, "compiled": compiled, "harness_s": times["harness"],
                                    "plain_s": times["plain"], "ratios": ratios,
                                    "median_ratio": statistics.median(ratios), "images_per_s": images})
    _compare_modes(results, echo)
    _sweep_summary(results, echo)
    if device.type == "cuda":
        _utilisation(bench, results, echo)
        places = sync_audit(bench, copy.deepcopy(bench.teacher), setting.num_workers[-1])
        results["host_syncs"] = dict(places)
        echo(f"host syncs in the harness's timed iterations (CUDA sync debug mode; the logging step's .item() at "
             f"iteration {2 * n} is the expected one): " + ("none" if not places else ""))
        for place, count in places.most_common():
            filename, line = place.rsplit(":", 1)
            echo(f"  {count:4d} x {place}: {linecache.getline(filename, int(line)).strip()}")
    best = min(results["runs"], key=lambda r: statistics.median(r["harness_s"]))
    clock = PhaseClock(device)
    per_iteration = plain_seconds(bench, copy.deepcopy(bench.teacher), best["num_workers"], best["compiled"], clock)
    split = {phase: seconds / n for phase, seconds in clock.seconds().items() if phase != "start"}
    echo(f"time per iteration by phase (plain loop, num_workers {best['num_workers']}, "
         f"{'compiled' if best['compiled'] else 'eager'}; {'CUDA events' if device.type == 'cuda' else 'perf_counter'}):")
    for phase in PHASES:
        echo(f"  {phase:<16} {split.get(phase, 0.0):.4f} s  {100 * split.get(phase, 0.0) / per_iteration:3.0f}%")
    echo(f"  {'total':<16} {per_iteration:.4f} s")
    results["phases"] = split
    return results


def _compare_modes(results: dict[str, Any], echo) -> None:
    by_mode = defaultdict(dict)
    for run in results["runs"]:
        by_mode[run["num_workers"]][run["compiled"]] = run
    for workers, runs in by_mode.items():
        if True in runs and False in runs:
            for side in ("harness", "plain"):
                eager = statistics.median(runs[False][f"{side}_s"])
                compiled = statistics.median(runs[True][f"{side}_s"])
                echo(f"[num_workers {workers}] torch.compile, {side}: eager/compiled {eager / compiled:.3f}")


def _sweep_summary(results: dict[str, Any], echo) -> None:
    """The fewest workers within 5% of the fastest harness time (more workers cost CPU and memory for nothing)."""
    eager = [r for r in results["runs"] if not r["compiled"]]
    if len({r["num_workers"] for r in eager}) < 2:
        return
    fastest = min(statistics.median(r["harness_s"]) for r in eager)
    enough = min(r["num_workers"] for r in eager if statistics.median(r["harness_s"]) <= 1.05 * fastest)
    results["workers_needed"] = enough
    times = ", ".join(f"{r['num_workers']}: {statistics.median(r['harness_s']):.4f} s/it" for r in eager)
    echo(f"num_workers sweep: {enough} worker(s) are within 5% of the fastest ({times})")


def _utilisation(bench: Bench, results: dict[str, Any], echo) -> None:
    flops = flops_per_image(bench)
    peak, source = bf16_peak(torch.cuda.get_device_name(bench.device), bench.setting.peak_tflops)
    results["flops_per_image"] = flops
    for run in results["runs"]:
        if peak is None:
            continue
        run["mfu"] = [rate * flops / (peak * 1e12) for rate in run["images_per_s"]]
    if peak is None:
        echo(f"model FLOP utilisation: no known bf16 peak for {source}; give it with --peak-tflops")
        return
    echo(f"model FLOPs per training image {flops / 1e9:.1f} G (teacher forward + 3 x student forward, fvcore "
         f"multiply-adds x 2); peak {peak:g} TFLOP/s ({source})")
    for run in results["runs"]:
        echo(f"[num_workers {run['num_workers']}, {'compiled' if run['compiled'] else 'eager'}] MFU: harness "
             f"{100 * run['mfu'][0]:.1f}%, plain {100 * run['mfu'][1]:.1f}%")


def add_perf_parser(commands: argparse._SubParsersAction) -> None:
    defaults = PerfSetting()
    perf = commands.add_parser(
        "perf", help="time the harness's training iteration against a plain hand-written loop (same models, data, "
                     "method); print both and their ratio",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    perf.add_argument("--student", default=defaults.student)
    perf.add_argument("--teacher", default=defaults.teacher)
    perf.add_argument("--dataset", default=defaults.dataset, help="default: camvid (real images); synthetic: no files")
    perf.add_argument("--root", default=defaults.root, help=f"dataset root (default: {defaults.root})")
    perf.add_argument("--subset", type=int, default=defaults.subset,
                      help=f"the first N images of each split (default: {defaults.subset})")
    perf.add_argument("--crop", type=int, nargs=2, default=list(defaults.crop), metavar=("H", "W"))
    perf.add_argument("--batch", type=int, default=defaults.batch_size)
    perf.add_argument("--iterations", type=int, default=defaults.iterations,
                      help=f"timed iterations per side and repeat, after as many to warm up (default: "
                           f"{defaults.iterations})")
    perf.add_argument("--repeats", type=int, default=defaults.repeats)
    perf.add_argument("--device", default=defaults.device, help="auto (CUDA when visible), cpu, cuda, cuda:1")
    perf.add_argument("--num-workers", type=int, nargs="+", default=defaults.num_workers, metavar="N",
                      help="DataLoader workers; several values sweep them (default: 0)")
    perf.add_argument("--compile", action="store_true",
                      help="also measure both sides with torch.compile (student and teacher) and compare with eager")
    perf.add_argument("--peak-tflops", type=float, default=None,
                      help="the device's dense bf16 peak in TFLOP/s (default: from a table of known GPUs)")
    perf.set_defaults(func=cmd_perf)


def cmd_perf(args) -> int:
    for name in ("batch", "iterations", "repeats", "subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SuiteError(f"--{name} must be >= 1, got {value}")
    if any(w < 0 for w in args.num_workers):
        raise SuiteError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.peak_tflops is not None and not (args.peak_tflops > 0 and math.isfinite(args.peak_tflops)):
        raise SuiteError(f"--peak-tflops must be a positive number, got {args.peak_tflops}")
    for name in (args.student, args.teacher):
        if name not in MODELS:
            raise SuiteError(f"unknown model {name!r} (python -m benchmark list models)")
    if args.dataset not in DATASETS:
        raise SuiteError(f"unknown dataset {args.dataset!r} (python -m benchmark list datasets)")
    run_perf(PerfSetting(student=args.student, teacher=args.teacher, dataset=args.dataset, root=args.root,
                         subset=args.subset, crop=tuple(args.crop), batch_size=args.batch, iterations=args.iterations,
                         repeats=args.repeats, device=args.device, num_workers=list(args.num_workers),
                         compile=args.compile, peak_tflops=args.peak_tflops))
    return 0
