"""The method interface: the contract every distillation method in ``methods/`` implements.

A method is an ``nn.Module`` registered by name (``@METHODS.register("kd")``). It is built from the
feature points of the student and the teacher (channels and stride, known before any forward), the
number of classes, and its hyperparameters, whose names and defaults are the paper's and live in the
constructor's signature (the one source of truth; suites override them, runs store the resolved values).

At construction it sets ``student_points`` and ``teacher_points``: the names it needs captured. Its
learnable parts (connectors, attention modules) are submodules and train with the student's optimizer;
anything the paper freezes has ``requires_grad=False``. ``forward`` receives the captured features and
the batch and returns a flat dict of named loss terms, each already multiplied by its weight. The
harness adds cross-entropy, sums everything, and logs each term. A method never touches the optimizer,
the data loader, the teacher's parameters or the result store.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.base import FeaturePoint

# --- building blocks shared by methods ---------------------------------------------------------------


def feature_connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """Overhaul's connector (also the one of the ICKD / AICSD / AttnFD code bases): 1x1 conv (no bias) + BN,
    student channels -> teacher channels; conv init N(0, 2 / (k*k*out)), BN weight 1, bias 0."""
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # std sqrt(2 / (k*k*out))
    bn = nn.BatchNorm2d(teacher_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


def resize_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``reference``'s spatial size (identity when they already match)."""
    if x.shape[-2:] == reference.shape[-2:]:
        return x
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class PointConnectors(nn.ModuleDict):
    """One connector per distilled point whose student channels differ from the teacher's, keyed by the
    point's position in ``points``; :meth:`align` maps a student map onto its teacher's channels and size."""

    def __init__(self, points, student_points: dict, teacher_points: dict, make=feature_connector):
        super().__init__({
            str(index): make(student_points[name].channels, teacher_points[name].channels)
            for index, name in enumerate(points)
            if student_points[name].channels != teacher_points[name].channels
        })

    def align(self, index: int, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if str(index) in self:
            student = self[str(index)](student)
        return resize_to(student, teacher)


def frozen_forward(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """``module(*inputs)`` with its parameters held fixed: gradients flow to the inputs, never to the parameters,
    so the optimizer skips them (weight decay and momentum included). Buffers stay the module's own (a BatchNorm
    in train mode still normalises with batch statistics and updates its running ones), as a module that is
    simply left out of the optimizer behaves (e.g. the AttnFD code's connectors after its first epoch)."""
    detached = {name: parameter.detach() for name, parameter in module.named_parameters()}
    return torch.func.functional_call(module, detached, inputs)


TEACHER_MODES = ("eval", "train")


def teacher_train_mode_flag(method: str, value: str) -> bool:
    """``teacher_mode`` of the methods whose authors' code runs the teacher in ``train()`` (batch-statistics BN)."""
    if value not in TEACHER_MODES:
        raise ValueError(f"{method}: teacher_mode must be one of {', '.join(map(repr, TEACHER_MODES))}, got {value!r}")
    return value == "train"


LOGIT_POINTS = ("logits", "logits:pre_upsample")


def check_logits_point(method: str, point: str) -> str:
    """Logit-based losses run on the upsampled output or, as the CIRKD code base does, before upsampling."""
    if point not in LOGIT_POINTS:
        raise ValueError(f"{method}: point must be 'logits' or 'logits:pre_upsample', got {point!r}")
    return point


def check_points(method: str, points, student_points: dict, teacher_points: dict) -> None:
    """A method's points must exist on both models; say which are missing, and what the models have."""
    missing = [name for name in points if name not in student_points or name not in teacher_points]
    if missing:
        available = sorted(set(student_points) & set(teacher_points))
        raise KeyError(f"{method}: points {missing} missing from the student or the teacher (both have: {available})")


@dataclass
class Batch:
    """What a method sees of the current step besides features.

    ``labels`` are ``[B, H, W]`` int64 at input resolution with ``ignore_index`` for unlabelled pixels.
    ``iteration`` counts from 0; ``iterations_per_epoch`` lets epoch-based schedules (e.g. "connectors
    only in the first epoch") be expressed.
    """

    images: torch.Tensor
    labels: torch.Tensor
    iteration: int = 0
    total_iterations: int = 1
    iterations_per_epoch: int = 1
    ignore_index: int = 255

    @property
    def epoch(self) -> int:
        return self.iteration // max(self.iterations_per_epoch, 1)


@dataclass
class PrepareContext:
    """Given to :meth:`DistillationMethod.prepare`, for methods with a stage before student training.

    ``teacher_features(images)`` runs the frozen teacher once and returns the method's teacher points
    (under ``torch.no_grad``, so the returned tensors can feed a trainable teacher-side module).
    ``batches`` is an endless iterator of training :class:`Batch` objects on ``device``.
    """

    teacher: nn.Module
    teacher_features: Any
    batches: Iterator[Batch]
    num_classes: int
    device: torch.device
    log: Any = print
    extra: dict[str, Any] = field(default_factory=dict)


class DistillationMethod(nn.Module):
    """Base class of all methods. Subclasses set the class attributes and implement ``forward``."""

    #: Full citation of the paper the method follows, and the equations implemented.
    paper: ClassVar[str] = ""
    #: ``method`` values of ``loss_vectors.json`` cases this method answers in :meth:`reference_loss`.
    reference_names: ClassVar[tuple[str, ...]] = ()
    #: Run the teacher in train mode (batch-statistics BatchNorm). Only for reproducing authors' code.
    teacher_train_mode: bool = False
    #: Hyperparameters that cannot change the terms on fixed inputs with the other defaults, each with the reason
    #: (tests/test_method_hyperparameters.py checks that every other numeric hyperparameter does).
    hyperparameters_without_effect: ClassVar[dict[str, str]] = {}
    #: Terms that, as in the paper, train only the method's own modules and send no gradient into the student, each
    #: with the reason (tests/test_method_contract.py checks that every other term does, with CE switched off).
    terms_without_student_gradient: ClassVar[dict[str, str]] = {}

    student_points: list[str]
    teacher_points: list[str]

    def __init__(
        self,
        student_points: dict[str, FeaturePoint],
        teacher_points: dict[str, FeaturePoint],
        num_classes: int,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.student_points = []
        self.teacher_points = []

    def forward(
        self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # --- optional hooks -------------------------------------------------------------------------------

    def prepare(self, context: PrepareContext) -> None:
        """A stage run once before student training (e.g. AttnFD trains the teacher's attention, then
        freezes it). Must leave the method in a state that :meth:`state_dict` captures, so a resumed run
        does not repeat it; the harness calls it only when ``needs_prepare()`` is true."""

    def needs_prepare(self) -> bool:
        return False

    def separate_step(
        self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], batch: Batch
    ) -> dict[str, float]:
        """Called after the student's optimizer step, with detached student features, for parts trained
        by the method's own optimizer (adversarial discriminators). Returns scalars to log, as 0-dim tensors
        (a Python float would need a host sync inside the step)."""
        return {}

    def student_optimizer_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters trained by the student's optimizer: by default every trainable parameter."""
        return (p for p in self.parameters() if p.requires_grad)

    def scale_task_loss(self, task_loss: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The harness's cross-entropy (plus auxiliary CE) as it enters the total: identity by default. A method
        whose authors reweight the task loss (LFD's script divides it by its own detached value) says so here."""
        return task_loss

    def student_frozen(self, batch: Batch) -> bool:
        """True for steps where only the method's own modules train (e.g. the AttnFD code's first epoch, which
        trains the connectors alone): the harness then leaves the task loss out and the student unchanged."""
        return False

    def lr_multiplier(self, epoch: int) -> float | None:
        """The learning rate of this method's student-optimizer parameters in ``epoch``, relative to the schedule's
        base lr, where it differs from the suite's ``schedule.method_lr_mult`` (``None``: that value). The AttnFD,
        Overhaul and AICSD codes train their connectors in epoch 0 with a separate one-group optimizer, which their
        lr scheduler sets to the base lr (AmirMansurian/AttnFD@f090bbe utils/lr_scheduler.py:63-65), and at 10x after."""
        return None

    @classmethod
    def reference_loss(cls, case_method: str, inputs: dict[str, torch.Tensor], params: dict[str, Any]) -> dict:
        """The parameter-free part of the loss on a ``loss_vectors.json`` case's inputs.

        Returns ``{"loss": tensor}`` (plus e.g. ``"margin"`` where the case checks it)."""
        raise NotImplementedError(f"{cls.__name__} answers no reference cases")

    # --- introspection for suites, `list` and the report -------------------------------------------

    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """The paper-named hyperparameters and their defaults, read from the constructor's signature."""
        signature = inspect.signature(cls.__init__)
        skip = {"self", "student_points", "teacher_points", "num_classes"}
        return {
            name: (None if parameter.default is inspect.Parameter.empty else parameter.default)
            for name, parameter in signature.parameters.items()
            if name not in skip and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        }

    @classmethod
    def summary(cls) -> str:
        doc = inspect.getdoc(cls) or ""
        return " ".join(doc.split("\n\n")[0].split()) if doc else cls.__name__


class ConnectorWarmup:
    """The connector-only warm-up of the pytorch-deeplab-xception KD codes (AttnFD, Overhaul, AICSD): for the first
    ``connector_warmup_epochs`` the student stays out of the steps (:meth:`DistillationMethod.student_frozen`) and
    the connectors train at ``warmup_lr_mult`` x the base lr (:meth:`DistillationMethod.lr_multiplier`).
    A mixin placed before :class:`DistillationMethod`; the method sets both attributes in its constructor."""

    #: For ``hyperparameters_without_effect``: the multiplier changes nothing while the warm-up is off (the default).
    WARMUP_LR_MULT_WITHOUT_EFFECT: ClassVar[dict[str, str]] = {
        "warmup_lr_mult": "the connectors' lr multiplier in the connector-only warm-up epochs, which "
                          "connector_warmup_epochs (0 by default) switches on"}
    connector_warmup_epochs: int = 0
    warmup_lr_mult: float = 1.0

    def student_frozen(self, batch: Batch) -> bool:
        return batch.epoch < self.connector_warmup_epochs

    def lr_multiplier(self, epoch: int) -> float | None:
        return self.warmup_lr_mult if epoch < self.connector_warmup_epochs else None


class CompositeMethod(nn.Module):
    """Several methods in one run (e.g. ``cwd + kd``, as some papers' baseline rows are): the union of
    their points, their terms prefixed by component label. Built by the harness, not registered."""

    def __init__(self, components: dict[str, DistillationMethod]):
        super().__init__()
        self.components = nn.ModuleDict(components)
        self.student_points = sorted({p for m in components.values() for p in m.student_points})
        self.teacher_points = sorted({p for m in components.values() for p in m.teacher_points})
        modes = {m.teacher_train_mode for m in components.values()}
        if len(modes) > 1:
            raise ValueError("combined methods disagree on the teacher's mode (train vs eval)")
        self.teacher_train_mode = modes.pop() if modes else False

    def forward(self, student, teacher, batch: Batch) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for label, method in self.components.items():
            for name, value in method(student, teacher, batch).items():
                terms[f"{label}.{name}"] = value
        return terms

    def needs_prepare(self) -> bool:
        return any(m.needs_prepare() for m in self.components.values())

    def prepare(self, context: PrepareContext) -> None:
        for method in self.components.values():
            if method.needs_prepare():
                method.prepare(context)

    def separate_step(self, student, teacher, batch: Batch) -> dict[str, float]:
        logs: dict[str, float] = {}
        for label, method in self.components.items():
            for name, value in method.separate_step(student, teacher, batch).items():
                logs[f"{label}.{name}"] = value
        return logs

    def student_optimizer_parameters(self) -> Iterable[nn.Parameter]:
        for method in self.components.values():
            yield from method.student_optimizer_parameters()

    def student_frozen(self, batch: Batch) -> bool:
        return any(method.student_frozen(batch) for method in self.components.values())

    def lr_multiplier(self, epoch: int) -> float | None:
        """One parameter group holds every component's modules: components that have any must agree."""
        asked = {method.lr_multiplier(epoch) for method in self.components.values()
                 if any(p.requires_grad for p in method.student_optimizer_parameters())}
        asked.discard(None)
        if len(asked) > 1:
            raise ValueError(f"combined methods ask for different learning rates for their modules in epoch {epoch}: "
                             f"{sorted(asked)}")
        return asked.pop() if asked else None

    def scale_task_loss(self, task_loss: torch.Tensor, batch: Batch) -> torch.Tensor:
        for method in self.components.values():
            task_loss = method.scale_task_loss(task_loss, batch)
        return task_loss
