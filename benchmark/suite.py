"""Suite files: YAML -> validated, typed :class:`Suite` -> expanded :class:`RunSpec` grid with run keys.

A suite is plain data (``yaml.safe_load``; no tags, no code). Everything is checked at the door, before
any work: unknown keys, wrong types, impossible values, unknown dataset/model/method names, unknown
hyperparameters. A problem raises :class:`SuiteError` whose message names the file, the key path and
what was expected; the CLI prints it and exits with code 2.

Composition: ``extends: other.yaml`` deep-merges this file over another (recipe presets);
``include: [a.yaml, b.yaml]`` makes a collection whose parts are suites of their own (one per paper
table). Relative paths in ``extends``/``include`` are relative to the including file; a dataset
``root`` is relative to the working directory, with ``$VARS`` and ``~`` expanded.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from benchmark.registry import DATASETS, METHODS, MODELS, UnknownNameError, did_you_mean


class SuiteError(Exception):
    """A suite that cannot run; the message names the file, the key path and what was expected."""


def _lookup(registry, name: str):
    """Registry lookup for validators: pydantic reports a ValueError with its key path; a KeyError escapes."""
    try:
        return registry.get(name)
    except UnknownNameError as error:
        raise ValueError(str(error)) from None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(Strict):
    name: str
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    train_split: str | None = None
    eval_split: str | None = None
    #: Split that picks the best checkpoint; defaults to the dataset's (e.g. CamVid val). "none" disables.
    selection_split: str | None = None
    crop: tuple[StrictInt, StrictInt]
    scale_range: tuple[float, float] = (0.5, 2.0)
    #: "ratio": both sides times a factor from ``scale_range`` (CIRKD, mmseg); "short_side": the short side set to an
    #: integer in ``scale_range`` x ``base_size``, flipped before scaling, as pytorch-deeplab-xception's
    #: ``RandomHorizontalFlip`` + ``RandomScaleCrop`` (see :mod:`benchmark.data.transforms`).
    scale_mode: Literal["ratio", "short_side"] = "ratio"
    #: Draw the ratio from {low, low + step, ..., high} instead of uniformly (CIRKD: 0.1). None: uniform.
    scale_step: float | None = None
    #: The short side's base length in ``short_side`` mode (pytorch-deeplab-xception ``--base-size``: 513).
    base_size: StrictInt | None = None
    #: Colour of the image padding up to the crop: "black" (0), or "mean": the normalisation's mean colour, i.e. 0
    #: after normalisation (CIRKD pads after subtracting the mean).
    image_pad: Literal["black", "mean"] = "black"
    #: Label value of the padding: the ignore index (255), or a class (pytorch-deeplab-xception VOC pads with 0).
    label_pad: StrictInt = 255
    #: pytorch-deeplab-xception ``RandomGaussianBlur``: with probability 0.5, blur with sigma ~ U(0, 1).
    gaussian_blur: StrictBool = False
    #: Antialiased (PIL-like) bilinear resizing; False is OpenCV's ``INTER_LINEAR`` (CIRKD), which does not filter.
    resize_antialias: StrictBool = True
    flip: StrictBool = True
    #: Evaluation size: None = full resolution, an int = short side, [h, w] = exact.
    eval_size: StrictInt | tuple[StrictInt, StrictInt] | None = None
    absent_class_policy: Literal["nan_excluded", "zero_included"] = "nan_excluded"
    normalization: Literal["imagenet", "bgr_mean"] = "imagenet"

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        _lookup(DATASETS, name)
        return name

    @field_validator("crop")
    @classmethod
    def _positive_crop(cls, crop):
        if min(crop) <= 0:
            raise ValueError(f"crop must be two positive integers [height, width], got {list(crop)}")
        return crop

    @field_validator("scale_range")
    @classmethod
    def _scale_range(cls, value):
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _scaling(self):
        if self.scale_mode == "short_side":
            if self.base_size is None or self.base_size <= 0:
                raise ValueError("scale_mode short_side needs `base_size` (a positive integer, e.g. 513)")
            if self.scale_step is not None:
                raise ValueError("scale_step applies to scale_mode ratio; short_side draws an integer length")
        elif self.base_size is not None:
            raise ValueError("base_size applies only to scale_mode short_side")
        if self.scale_step is not None:
            low, high = self.scale_range
            steps = (high - low) / self.scale_step if self.scale_step > 0 else -1.0
            if steps < 0 or abs(steps - round(steps)) > 1e-6:
                raise ValueError(f"scale_step {self.scale_step} must be > 0 and divide scale_range {list(self.scale_range)}"
                                 f" into whole steps")
        if not 0 <= self.label_pad <= 255:
            raise ValueError(f"label_pad must be a label value in 0..255, got {self.label_pad}")
        return self

    @model_validator(mode="after")
    def _fits_dataset(self):
        if self.name not in DATASETS:
            return self  # already reported by the name check
        spec = DATASETS.get(self.name)
        if self.label_pad != spec.ignore_index and self.label_pad >= spec.num_classes:
            raise ValueError(f"label_pad {self.label_pad} is neither a class of {self.name} (0..{spec.num_classes - 1}) "
                             f"nor its ignore index {spec.ignore_index}")
        max_h, max_w = spec.max_crop
        if self.crop[0] > max_h or self.crop[1] > max_w:
            raise ValueError(f"crop {list(self.crop)} is larger than {self.name}'s largest allowed {[max_h, max_w]}")
        for key in ("train_split", "eval_split", "selection_split"):
            split = getattr(self, key)
            if split is None or (key == "selection_split" and split == "none"):
                continue
            for part in split.split("+"):
                if part not in spec.splits:
                    raise ValueError(f"{key} {split!r}: {self.name} has splits {list(spec.splits)}")
        known = spec.options()
        for key in self.options:
            if key not in known:
                raise ValueError(f"unknown option {key!r} for dataset {self.name}{did_you_mean(key, known)} "
                                 f"(known: {sorted(known)})")
        if spec.needs_root and not self.root:
            raise ValueError(f"dataset {self.name} needs `root`: the directory holding it")
        return self

    # Resolved with the dataset's defaults, so stored configs and run keys are explicit.
    def resolved(self) -> dict[str, Any]:
        spec = DATASETS.get(self.name)
        data = self.model_dump()
        data["options"] = {**spec.options(), **self.options}
        data["train_split"] = self.train_split or spec.train_split
        data["eval_split"] = self.eval_split or spec.eval_split
        selection = self.selection_split or spec.selection_split
        data["selection_split"] = None if selection == "none" else selection
        data["crop"] = list(self.crop)
        data["scale_range"] = list(self.scale_range)
        data["eval_size"] = list(self.eval_size) if isinstance(self.eval_size, tuple) else self.eval_size
        return data


def dataset_key_fields(resolved: dict[str, Any]) -> dict[str, Any]:
    """A resolved dataset configuration as run keys and stored configs hold it: everything but where it lives."""
    return {k: v for k, v in resolved.items() if k != "root"}


class ScheduleConfig(Strict):
    iterations: StrictInt | None = None
    epochs: StrictInt | None = None
    batch_size: StrictInt
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float
    momentum: float = 0.9
    nesterov: StrictBool = False
    weight_decay: float = 1e-4
    lr_schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = 0.9
    min_lr: float = 0.0
    warmup_iterations: StrictInt = 0
    #: Evaluate on the selection split every N iterations (0: only at the end).
    eval_every: StrictInt = 0
    eval_batch_size: StrictInt = 1
    checkpoint_every: StrictInt = 500
    log_every: StrictInt = 20
    #: Learning-rate multiplier for the method's own trainable parts (connectors): 1 = same as the student.
    method_lr_mult: float = 1.0
    #: Learning-rate multiplier of the model's head (``SegmentationModel.head_modules``: context module, decoder,
    #: classifier) over the backbone's: pytorch-deeplab-xception trains ASPP + decoder at 10x
    #: (``get_10x_lr_params``); CIRKD puts the whole model in one group (1).
    head_lr_mult: float = 1.0
    #: Cross-entropy = pixel mean / global batch size (pytorch-deeplab-xception ``SegmentationLosses``, whose
    #: ``batch_average=True`` divides the mean again by N); False: the plain pixel mean.
    ce_batch_average: StrictBool = False
    #: "extract_feature": in runs with a teacher, both networks bypass what their authors' distillation forward
    #: bypasses (``SegmentationModel.extract_feature_skips``: DeepLabV3+'s ASPP Dropout(0.5) in
    #: pytorch-deeplab-xception); baselines keep the plain forward. "forward": every run uses the plain forward.
    kd_forward: Literal["forward", "extract_feature"] = "forward"
    grad_clip_norm: float | None = None

    @model_validator(mode="after")
    def _check(self):
        if (self.iterations is None) == (self.epochs is None):
            raise ValueError("give exactly one of `iterations` or `epochs`")
        positive = {"batch_size": self.batch_size, "lr": self.lr, "checkpoint_every": self.checkpoint_every,
                    "log_every": self.log_every, "eval_batch_size": self.eval_batch_size,
                    "poly_power": self.poly_power, "method_lr_mult": self.method_lr_mult,
                    "head_lr_mult": self.head_lr_mult}
        if self.iterations is not None:
            positive["iterations"] = self.iterations
        if self.epochs is not None:
            positive["epochs"] = self.epochs
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"{key} must be > 0, got {value}")
        for key in ("weight_decay", "min_lr", "warmup_iterations", "eval_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.min_lr >= self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be below lr ({self.lr})")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be > 0, got {self.grad_clip_norm}")
        return self


class RuntimeConfig(Strict):
    """How to run, not what: never part of a run key (results must not depend on these)."""

    #: DataLoader workers; "auto": none on a CPU, up to 8 per GPU process (:func:`benchmark.engine.loader.worker_count`).
    num_workers: StrictInt | Literal["auto"] = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    #: ``torch.compile`` the student and the teacher (in place: hooks, state dicts and checkpoints as in eager).
    compile: StrictBool = False

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, value):
        if isinstance(value, int) and value < 0:
            raise ValueError(f"expected a number of workers >= 0 or 'auto', got {value}")
        return value

    @field_validator("amp", "channels_last", mode="before")
    @classmethod
    def _yaml_switch(cls, value, info):
        # YAML 1.1 reads an unquoted `off` / `on` as a boolean: `amp: off` means the word, as the docs write it.
        if value is False:
            return "off"
        return "on" if value is True and info.field_name == "channels_last" else value


class ReportConfig(Strict):
    """What the report shows besides numbers; never part of a run key (it changes no result)."""

    #: Evaluation-split images whose predictions every run stores (None: three spread over the split; []: none).
    qualitative_indices: list[StrictInt] | None = None
    #: Longest side in pixels of the stored prediction PNGs: small, so a report of many tables stays light.
    qualitative_max_side: StrictInt = 384

    @field_validator("qualitative_indices")
    @classmethod
    def _indices(cls, indices):
        if indices is not None and (len(set(indices)) != len(indices) or any(i < 0 for i in indices)):
            raise ValueError(f"expected distinct non-negative image indices of the evaluation split, got {indices}")
        return indices

    @field_validator("qualitative_max_side")
    @classmethod
    def _side(cls, side):
        if side < 16:
            raise ValueError(f"expected at least 16 pixels, got {side}")
        return side


class ResourcesConfig(Strict):
    """What one run's job needs from a cluster (``run --executor slurm``) or a device pool (``--executor
    local``). How to run, not what: never part of a run key. Times are minutes; ``plan`` suggests one from
    measured step times."""

    #: GPUs per run; a run given several trains as that many processes, one per GPU (on CPU: processes).
    gpus: StrictInt = Field(1, ge=0)
    #: Time limit of a student's job; a job past it is requeued and resumes from its checkpoint.
    time: StrictInt | None = Field(None, gt=0)
    #: Time limit of a teacher's job (default: ``time``).
    teacher_time: StrictInt | None = Field(None, gt=0)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    #: CPUs per process (data-loading workers + 1 is a good start).
    cpus: StrictInt | None = Field(None, gt=0)
    #: Memory per node in GB.
    mem_gb: float | None = Field(None, gt=0)
    #: Shell lines run before a job starts (``module load ...``, ``source venv/bin/activate``).
    setup: list[str] = Field(default_factory=list)
    #: At most this many jobs of one array run at once (the cluster's fair share).
    array_parallelism: StrictInt | None = Field(None, gt=0)
    #: How often a job may be requeued after reaching its time limit (preemptions do not count).
    max_timeouts: StrictInt = Field(10, ge=0)


def _check_model_options(name: str, options: dict[str, Any]) -> None:
    builder = _lookup(MODELS, name)
    parameters = inspect.signature(builder).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    known = [n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY]
    for key in options:
        if key not in known and not accepts_any:
            raise ValueError(f"unknown option {key!r} for model {name}{did_you_mean(key, known)} (known: {known})")


class ModelRef(Strict):
    model: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self):
        _check_model_options(self.model, self.options)
        return self


CheckpointFormat = Literal["ours", "cirkd", "deeplab_xception"]


class WeightsRef(ModelRef):
    #: Weights loaded strictly into the model: a teacher's instead of training it here, a student's initial weights.
    checkpoint: str | None = None
    #: How the file names its tensors: ``ours`` (this harness's), or an authors' release converted on load
    #: (``cirkd``, ``deeplab_xception``; see ``benchmark/convert.py``), which also fixes ``dataset.normalization``.
    checkpoint_format: CheckpointFormat = "ours"

    @model_validator(mode="after")
    def _format_needs_file(self):
        if self.checkpoint_format != "ours" and not self.checkpoint:
            raise ValueError(f"checkpoint_format {self.checkpoint_format!r} is given without a `checkpoint` file")
        return self


class TeacherConfig(WeightsRef):
    #: Overrides of the suite's schedule for training the teacher.
    schedule: dict[str, Any] = Field(default_factory=dict)
    #: Overrides of the suite's dataset keys for training the teacher (its training split, say: the
    #: pytorch-deeplab-xception teacher trains on train_aug, AttnFD's students on VOC train); never name or root.
    dataset: dict[str, Any] = Field(default_factory=dict)
    seed: StrictInt = 0

    @field_validator("dataset")
    @classmethod
    def _same_dataset(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted({"name", "root"} & set(overrides))
        if fixed:
            raise ValueError(f"dataset overrides of a teacher may not change {fixed}: a teacher trains on its suite's "
                             f"dataset")
        return overrides


class StudentConfig(WeightsRef):
    #: Which of the suite's teachers distils into this student (default: the only one).
    teacher: str | None = None


class MethodComponent(Strict):
    name: str
    hparams: dict[str, Any] = Field(default_factory=dict)
    #: Distinguishes two uses of one method in a row (CIRKD's CWD on a feature and on the logits).
    key: str | None = None

    @property
    def component_key(self) -> str:
        return self.key or self.name

    @model_validator(mode="after")
    def _known(self):
        defaults = _lookup(METHODS, self.name).hyperparameters()
        for key, value in self.hparams.items():
            if key not in defaults:
                raise ValueError(f"method {self.name} has no hyperparameter {key!r}{did_you_mean(key, defaults)} "
                                 f"(it has: {sorted(defaults)})")
            _check_hparam_type(self.name, key, value, defaults[key])
        return self

    def resolved_hparams(self) -> dict[str, Any]:
        return _jsonable({**METHODS.get(self.name).hyperparameters(), **self.hparams})


def _check_hparam_type(method: str, key: str, value: Any, default: Any) -> None:
    """The default's type is the contract: a suite must not pass "4" where 4.0 is meant."""
    if default is None or value is None:
        return
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (isinstance(value, int) or not isinstance(default, int) or float(value).is_integer())
        expected = "an integer" if isinstance(default, int) else "a number"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a string"
    elif isinstance(default, (tuple, list)):
        ok, expected = isinstance(value, (list, tuple)), "a list"
    else:
        ok, expected = True, ""
    if not ok:
        raise ValueError(f"method {method} hyperparameter {key!r}: expected {expected}, got {value!r}")


class MethodConfig(Strict):
    """One row of a table: a single method, or several combined (``components``) with a label."""

    name: str | None = None
    hparams: dict[str, Any] = Field(default_factory=dict)
    components: list[MethodComponent] | None = None
    label: str | None = None

    @model_validator(mode="after")
    def _one_form(self):
        if (self.name is None) == (self.components is None):
            raise ValueError("a method gives either `name` (+ `hparams`) or `components`, not both or neither")
        if self.name is not None:
            MethodComponent(name=self.name, hparams=self.hparams)
        elif not self.components:
            raise ValueError("`components` must list at least one method")
        elif len({c.component_key for c in self.components}) != len(self.components):
            raise ValueError("a method appears twice in `components`: give each use its own `key`")
        return self

    def parts(self) -> list[MethodComponent]:
        return self.components if self.components is not None else [MethodComponent(name=self.name,
                                                                                     hparams=self.hparams)]

    @property
    def row_label(self) -> str:
        return self.label or " + ".join(c.name for c in self.parts())

    @property
    def needs_teacher(self) -> bool:
        return any(c.name != "none" for c in self.parts())


class Claim(Strict):
    """A number a paper reports for one cell, with where it comes from.

    ``miou`` is the absolute number; ``miou_delta`` the gain in mIoU points over the same table's ``none`` row
    for the same student, for papers that state only a gain. At least one of them is given. The cell is one of the
    suite's students and one of its rows, named by the row's exact label; a row the paper reports for a method no
    row here runs is written with ``not_implemented: true`` and the paper's name for the method.
    """

    student: str
    method: str
    #: The paper's row is a method this suite does not run (``method`` is then the paper's name for it).
    not_implemented: StrictBool = False
    miou: float | None = None
    miou_delta: float | None = None
    miou_pm: float | None = None
    pixel_accuracy: float | None = None
    source: str
    checkpoint: Literal["best", "last", "unknown"] = "unknown"
    protocol: str | None = None
    eval_resolution: str | None = None
    note: str | None = None

    @field_validator("miou", "pixel_accuracy")
    @classmethod
    def _percent(cls, value):
        if value is not None and 0 <= value <= 1:
            raise ValueError(f"{value} looks like a fraction: claimed numbers are percentages in (1, 100] "
                             f"(write {100 * value:g} for {value})")
        if value is not None and not 1 < value <= 100:
            raise ValueError(f"claimed numbers are percentages in (1, 100], got {value}")
        return value

    @field_validator("miou_delta")
    @classmethod
    def _gain(cls, value):
        if value is not None and not -100 <= value <= 100:
            raise ValueError(f"a claimed gain is in percentage points in [-100, 100], got {value}")
        return value

    @model_validator(mode="after")
    def _some_number(self):
        if self.miou is None and self.miou_delta is None:
            raise ValueError("a claim gives `miou` (absolute), `miou_delta` (gain over the `none` row) or both")
        return self


class TableInfo(Strict):
    title: str
    paper: str = ""
    protocol: str | None = None
    source: str = ""


class ProtocolFact(Strict):
    """One fact of a protocol: its value in the program that produced the claims, and where that is written.

    ``setting`` names the suite key that carries the fact (``dataset.train_split``, ``schedule.head_lr_mult``,
    ``teachers.teacher.model``); the suite must then hold exactly ``value`` there, so a card cannot drift from
    what runs. Facts without a setting are the ones no suite key expresses (a method's variant, the teacher's mode).
    """

    value: StrictBool | StrictInt | float | str | list[Any] | None
    source: str
    setting: str | None = None
    #: What the paper's text says, where it differs from the code.
    paper: str | None = None
    note: str | None = None

    @field_validator("source")
    @classmethod
    def _has_source(cls, source: str) -> str:
        if not source.strip():
            raise ValueError("every protocol fact needs a source (repository@commit:file:line or a paper section)")
        return source


class ProtocolCard(Strict):
    """A recipe's protocol: every fact that changes a number, with its source (docs/protocols.md is built from these)."""

    name: str
    title: str
    #: The program whose runs produced the claims: repository@commit, or a sentence saying there is none.
    code: str
    paper: str = ""
    facts: dict[str, ProtocolFact]

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", name):
            raise ValueError(f"a protocol name is lower-case letters, digits and '_' (a recipe's file stem), got {name!r}")
        return name


class CompareAtConfig(Strict):
    """The equal-compute reading of a table (``compare_at``): besides the suite's schedule, every method row is
    trained for the same compute budget, by an iteration count derived from its step time (arXiv 2604.25530: at
    equal wall-clock plain KD matches segmentation-specific losses). The step times are measured once before
    training by a short profile of each (student, teacher, method) on the device that trains, stored in
    ``results/<suite>/compute_profile.json`` and reused by every later command (:mod:`benchmark.compute`).
    How to compare, not a result: only the derived iteration count enters the runs' keys."""

    #: What is held equal per run: ``device_hours`` (wall time x processes) or ``wall_clock``.
    budget: Literal["device_hours", "wall_clock"] = "device_hours"
    #: A stated budget per run, in hours; None: what the reference row costs with the suite's schedule.
    hours: float | None = Field(None, gt=0)
    #: The row whose budget every row gets (default: the no-distillation row).
    reference: str | None = None
    #: Training steps timed per (student, teacher, method) in the profile, after one warm-up step.
    profile_steps: StrictInt = Field(10, ge=1)
    #: Derived iteration counts are rounded to a multiple of this (default: 1% of the schedule's iterations), so a
    #: step time measured again a little differently mostly yields the same count, hence the same run.
    round_to: StrictInt | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"budget": value} if isinstance(value, str) else value


class Suite(Strict):
    name: str
    description: str = ""
    table: TableInfo | None = None
    #: The recipe's protocol card (inherited through ``extends``).
    protocol: ProtocolCard | None = None
    dataset: DatasetConfig
    schedule: ScheduleConfig
    teachers: dict[str, TeacherConfig] = Field(default_factory=dict)
    students: list[StudentConfig]
    methods: list[MethodConfig]
    seeds: list[StrictInt]
    claims: list[Claim] = Field(default_factory=list)
    runtime: RuntimeConfig = RuntimeConfig()
    report: ReportConfig = ReportConfig()
    resources: ResourcesConfig = ResourcesConfig()
    #: The equal-compute view: ``compare_at: device_hours`` (or a mapping, see :class:`CompareAtConfig`).
    compare_at: CompareAtConfig | None = None
    #: What the runs are compared with for protocol deviations (:meth:`run_deviations`), set by :func:`load_suite`:
    #: the suite's recipe, or the suite file as written; None where there is nothing to compare with.
    _reference: Suite | None = PrivateAttr(None)
    _reference_name: str | None = PrivateAttr(None)
    _overridden: tuple[str, ...] = PrivateAttr(())

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"name must be letters, digits, '_', '-', '.' (it names a folder), got {name!r}")
        return name

    @model_validator(mode="after")
    def _consistent(self):
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        if not self.students or not self.methods:
            raise ValueError("a suite needs at least one student and one method")
        labels = [m.row_label for m in self.methods]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"method rows must have distinct labels; repeated: {duplicates} (set `label`)")
        if any(m.needs_teacher for m in self.methods):
            for index, student in enumerate(self.students):
                teacher = student.teacher
                if teacher is None and len(self.teachers) != 1:
                    raise ValueError(f"students[{index}] ({student.model}) must name its teacher: "
                                     f"the suite has {len(self.teachers)} teachers ({sorted(self.teachers)})")
                if teacher is not None and teacher not in self.teachers:
                    raise ValueError(f"students[{index}].teacher {teacher!r} is not one of {sorted(self.teachers)}")
        for key, teacher in self.teachers.items():
            if teacher.schedule:
                self.teacher_schedule(key)
            if teacher.dataset:
                self.teacher_dataset(key)
        if self.protocol and self.table and self.table.protocol and self.table.protocol != self.protocol.name:
            raise ValueError(f"table.protocol {self.table.protocol!r} is not the suite's protocol card "
                             f"{self.protocol.name!r} (from its recipe); name the card")
        self.protocol_deviations()  # raises on a setting that names no key
        self._check_checkpoint_preprocessing()
        self._check_compare_at(labels)
        self._check_claims()
        return self

    def _check_compare_at(self, labels: list[str]) -> None:
        compare = self.compare_at
        if compare is None:
            return
        if compare.reference is not None and compare.reference not in labels:
            raise ValueError(f"compare_at.reference {compare.reference!r} is not a method row of this suite "
                             f"(rows: {labels})")
        if compare.reference is None and compare.hours is None and not any(
                [c.name for c in m.parts()] == ["none"] for m in self.methods):
            raise ValueError("compare_at needs a budget: a no-distillation row (method none), "
                             "compare_at.reference naming a row, or compare_at.hours")

    def _check_claims(self) -> None:
        """Every claim names a cell of this suite: one of its students, and one of its rows by the row's exact
        label, or a row of the paper that no method here runs (``not_implemented: true``); one claim per cell."""
        students = [s.model for s in self.students]
        labels = [m.row_label for m in self.methods]
        has_baseline = any([c.name for c in m.parts()] == ["none"] for m in self.methods)
        problems: list[str] = []
        seen: dict[tuple[str, str], int] = {}
        for index, claim in enumerate(self.claims):
            where = f"claims[{index}]"
            if claim.student not in students:
                problems.append(f"{where}.student: {claim.student!r} is not a student of this suite"
                                f"{did_you_mean(claim.student, students)} (students: {', '.join(students)})")
            if claim.not_implemented:
                if claim.method in labels:
                    problems.append(f"{where}.method: {claim.method!r} is a row of this suite; remove "
                                    "`not_implemented: true`")
            elif claim.method not in labels:
                problems.append(f"{where}.method: {claim.method!r} is not a row of this suite"
                                f"{did_you_mean(claim.method, labels)} (rows: {', '.join(map(repr, labels))}); name a "
                                "row by its exact label, or write a method the paper reports and no row runs with "
                                "`not_implemented: true`")
            if claim.miou_delta is not None and not claim.not_implemented and not has_baseline:
                problems.append(f"{where}.miou_delta: a gain over the no-distillation row needs a row of method "
                                "`none` in this suite")
            cell = (claim.student, claim.method)
            if cell in seen:
                problems.append(f"{where}: claims the same cell as claims[{seen[cell]}] ({claim.student} / "
                                f"{claim.method}); give one claim per cell")
            seen.setdefault(cell, index)
        if problems:
            raise ValueError("\n".join(problems))

    def settings(self) -> dict[str, Any]:
        """The keys a protocol fact may name, resolved as a run stores them."""
        return _jsonable({
            "dataset": dataset_key_fields(self.dataset.resolved()),
            "schedule": self.schedule.model_dump(),
            "teachers": {key: {**t.model_dump(), "schedule": self.teacher_schedule(key).model_dump(),
                               "dataset": dataset_key_fields(self.teacher_dataset(key).resolved())}
                         for key, t in self.teachers.items()},
        })

    def protocol_deviations(self) -> list[dict[str, Any]]:
        """Facts whose setting holds another value than the card states (e.g. after ``--set``)."""
        if self.protocol is None:
            return []
        settings, deviations = self.settings(), []
        for fact_name, fact in self.protocol.facts.items():
            if fact.setting is None:
                continue
            node: Any = settings
            for part in fact.setting.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise ValueError(f"protocol.facts.{fact_name}.setting {fact.setting!r} names no suite key "
                                     f"(it starts with dataset., schedule. or teachers.<name>.)")
                node = node[part]
            if node != _jsonable(fact.value):
                deviations.append({"fact": fact_name, "setting": fact.setting, "card": fact.value, "ran": node})
        return deviations

    @property
    def protocol_reference(self) -> str | None:
        """What :meth:`run_deviations` compares with: ``recipe FILE`` or ``suite file FILE`` (None: nothing)."""
        return self._reference_name

    def protocol_view(self, student: int | None = None, method: int | None = None,
                      teacher: str | None = None) -> dict[str, Any]:
        """The protocol settings of one run, flat (``schedule.lr``, ``methods.1.hparams.temperature``): every key of
        ``dataset`` but ``root``, of ``schedule`` but :data:`NOT_PROTOCOL`, of the run's teacher (its schedule and
        dataset resolved), student ``students.<i>`` and method row ``methods.<j>`` (resolved hyperparameters)."""
        view: dict[str, Any] = {}
        _flatten(view, "dataset", dataset_key_fields(self.dataset.resolved()))
        _flatten(view, "schedule", _protocol_schedule(self.schedule))
        if teacher is not None and teacher in self.teachers:
            config = self.teachers[teacher].model_dump()
            config["schedule"] = _protocol_schedule(self.teacher_schedule(teacher))
            config["dataset"] = dataset_key_fields(self.teacher_dataset(teacher).resolved())
            _flatten(view, f"teachers.{teacher}", config)
        if student is not None and student < len(self.students):
            _flatten(view, f"students.{student}", self.students[student].model_dump())
        if method is not None and method < len(self.methods):
            row = self.methods[method]
            for index, component in enumerate(row.parts()):
                prefix = f"methods.{method}" if row.components is None else f"methods.{method}.components.{index}"
                view[f"{prefix}.name"] = component.name
                if row.components is not None:
                    view[f"{prefix}.key"] = component.key
                _flatten(view, f"{prefix}.hparams", component.resolved_hparams())
        return _jsonable(view)

    def run_deviations(self, student: int | None = None, method: int | None = None,
                       teacher: str | None = None) -> list[dict[str, Any]]:
        """Where one run's protocol settings (:meth:`protocol_view`) differ from the reference's (the recipe's, or
        the suite file's: :attr:`protocol_reference`): ``{"setting", "reference", "ran", "by"}`` each, ``by`` being
        ``--set`` or ``suite file``, plus ``fact`` where the protocol card names that setting. A teacher's schedule
        or dataset key that only follows the suite's (the same difference) is listed once, under the suite's key."""
        if self._reference is None:
            return []
        ran = self.protocol_view(student, method, teacher)
        expected = self._reference.protocol_view(student, method, teacher)
        facts = {fact.setting: name for name, fact in (self.protocol.facts.items() if self.protocol else ())
                 if fact.setting}
        deviations = []
        for key in list(dict.fromkeys([*expected, *ran])):
            reference, value = expected.get(key, NOT_SET), ran.get(key, NOT_SET)
            if reference == value or (key.endswith(_WEIGHT_KEYS) and _same_weights(reference, value)):
                continue
            parts = key.split(".")
            if parts[0] == "teachers" and len(parts) > 3 and parts[2] in ("schedule", "dataset"):
                suite_key = ".".join(parts[2:])
                if (expected.get(suite_key, NOT_SET), ran.get(suite_key, NOT_SET)) == (reference, value):
                    continue
            by = "--set" if any(key == o or key.startswith(o + ".") for o in self._overridden) else "suite file"
            deviations.append({"setting": key, "reference": reference, "ran": value, "by": by,
                               **({"fact": facts[key]} if key in facts else {})})
        return deviations

    def protocol_record(self) -> dict[str, Any] | None:
        """The card as the report shows it: facts in order, each with the value this suite runs where it differs."""
        if self.protocol is None:
            return None
        ran = {d["fact"]: d["ran"] for d in self.protocol_deviations()}
        card = self.protocol.model_dump(exclude={"facts"})
        card["facts"] = [{"fact": name, **fact.model_dump(), **({"ran": ran[name]} if name in ran else {})}
                         for name, fact in self.protocol.facts.items()]
        return _jsonable(card)

    def model_refs(self) -> list[tuple[str, WeightsRef]]:
        """``(key path, entry)`` of every teacher and student, as messages name them (``teachers.t``, ``students[0]``)."""
        return ([(f"teachers.{key}", teacher) for key, teacher in self.teachers.items()]
                + [(f"students[{index}]", student) for index, student in enumerate(self.students)])

    def _check_checkpoint_preprocessing(self) -> None:
        """An authors' checkpoint is only right with the input preprocessing its code trained it with."""
        for where, ref in self.model_refs():
            problem = normalization_problem(f"{where}.checkpoint_format", ref.checkpoint_format,
                                            self.dataset.normalization)
            if problem:
                raise ValueError(problem)

    def teacher_for(self, student: StudentConfig) -> str | None:
        if student.teacher is not None:
            return student.teacher
        return next(iter(self.teachers)) if len(self.teachers) == 1 else None

    def teacher_schedule(self, key: str) -> ScheduleConfig:
        try:
            return ScheduleConfig(**{**self.schedule.model_dump(), **self.teachers[key].schedule})
        except ValidationError as error:
            raise ValueError(f"teachers.{key}.schedule: {_first_message(error)}") from None

    def teacher_dataset(self, key: str) -> DatasetConfig:
        if not self.teachers[key].dataset:
            return self.dataset
        try:
            return DatasetConfig(**{**self.dataset.model_dump(), **self.teachers[key].dataset})
        except ValidationError as error:
            raise ValueError(f"teachers.{key}.dataset: {_first_message(error)}") from None

    @property
    def title(self) -> str:
        return self.table.title if self.table else self.name


# --- protocol deviations ---------------------------------------------------------------------------

#: Schedule keys that change no number (logging, and the resume point: a resumed run ends with the numbers of an
#: uninterrupted one), so they are not protocol settings.
NOT_PROTOCOL = frozenset({"log_every", "checkpoint_every"})
#: A key one side of a comparison does not have (a model option the other sets, say).
NOT_SET = "(not set)"
#: Settings naming a weights file: the same bytes under another path are the same weights.
_WEIGHT_KEYS = (".checkpoint", ".options.pretrained")


def _protocol_schedule(schedule: ScheduleConfig) -> dict[str, Any]:
    return {k: v for k, v in schedule.model_dump().items() if k not in NOT_PROTOCOL}


def _flatten(out: dict[str, Any], prefix: str, value: Any) -> None:
    """Nested mappings as dotted keys (lists stay whole values: a crop, a list of points)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(out, f"{prefix}.{key}", item)
    elif not isinstance(value, dict):
        out[prefix] = value


def _same_weights(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and _file_digest_cached(*_stat(a)) == _file_digest_cached(*_stat(b))


def expand_path(path: str) -> Path:
    """A path as the suite writes it, with ``~`` and ``$VARIABLES`` expanded (weights, checkpoints, roots)."""
    return Path(os.path.expanduser(os.path.expandvars(path)))


def _stat(path: str) -> tuple[str, int, int]:
    expanded = os.path.abspath(expand_path(path))
    try:
        stat = os.stat(expanded)
    except OSError:
        return expanded, -1, -1
    return expanded, stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _file_digest_cached(path: str, size: int, mtime_ns: int) -> str:
    """A file's digest, read once per (path, size, modification time); a missing file is its path."""
    return f"missing:{path}" if size < 0 or not os.path.isfile(path) else file_digest(path)


# --- run specs -------------------------------------------------------------------------------------


_NORMALIZATION_MEANING = {"bgr_mean": "BGR 0-255 minus the mean, no std", "imagenet": "RGB, ImageNet mean and std"}


def normalization_problem(where: str, checkpoint_format: str, normalization: str) -> str | None:
    """Why a checkpoint of ``checkpoint_format`` is wrong under ``dataset.normalization`` (None: it is right)."""
    from benchmark.convert import FORMAT_NORMALIZATION

    needed = FORMAT_NORMALIZATION.get(checkpoint_format)
    if needed is None or normalization == needed:
        return None
    return (f"{where} {checkpoint_format!r} needs dataset.normalization: {needed} ({_NORMALIZATION_MEANING[needed]}), "
            f"the input its authors' code trained it on; this suite has dataset.normalization: {normalization}. Set "
            f"`dataset.normalization: {needed}`.")


@dataclass(frozen=True)
class TeacherSpec:
    key: str
    label: str
    config: dict[str, Any]  # resolved; hashed into the key (checkpoint by content, not path)
    checkpoint: str | None


@dataclass(frozen=True)
class RunSpec:
    key: str
    suite: str
    table: str
    student: str
    method_label: str
    seed: int
    config: dict[str, Any]  # resolved: everything that changes the result
    teacher: TeacherSpec | None
    dataset_root: str | None
    runtime: dict[str, Any] = field(default_factory=dict)
    #: The student's initial weights: ``{"path", "format"}`` (None: the builder's own initialisation).
    student_checkpoint: dict[str, str] | None = None
    #: The student's builder options as the suite gives them (paths as paths); ``config`` holds them by content.
    student_options: dict[str, Any] = field(default_factory=dict)
    #: A run of the equal-compute view: how its iteration count was derived (:mod:`benchmark.compute`).
    compute: dict[str, Any] | None = None
    #: Where this run leaves its protocol (:meth:`Suite.run_deviations`) and what it was compared with; not part of
    #: the key (they describe the configuration, they do not change it).
    protocol_deviations: list[dict[str, Any]] = field(default_factory=list)
    protocol_reference: str | None = None

    @property
    def needs_teacher(self) -> bool:
        return self.teacher is not None

    @property
    def label(self) -> str:
        """How messages name the run: ``suite: student / method / seed N``."""
        return f"{self.suite}: {self.student} / {self.method_label} / seed {self.seed}"


def config_key(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def expand(suite: Suite) -> tuple[list[RunSpec], dict[str, TeacherSpec]]:
    """Every student × method × seed of a suite, and the teachers they need, keyed by resolved config."""
    dataset = suite.dataset.resolved()
    dataset_in_key = dataset_key_fields(dataset)
    teachers: dict[str, TeacherSpec] = {}
    for label, teacher in suite.teachers.items():
        teacher_dataset = dataset_key_fields(suite.teacher_dataset(label).resolved())
        config = {"dataset": teacher_dataset, "model": teacher.model, "model_options": options_in_key(teacher.options),
                  "seed": teacher.seed}
        if teacher.checkpoint:
            config["checkpoint_sha256"] = _checkpoint_digest(teacher.checkpoint)
            if teacher.checkpoint_format != "ours":  # only then, so keys of existing teachers stay as they were
                config["checkpoint_format"] = teacher.checkpoint_format
        else:
            config["schedule"] = suite.teacher_schedule(label).model_dump()
        teachers[label] = TeacherSpec(key="teacher-" + config_key(config), label=label, config=config,
                                      checkpoint=teacher.checkpoint)
    runs = []
    for s_index, student in enumerate(suite.students):
        student_config: dict[str, Any] = {"name": student.model, "options": options_in_key(student.options)}
        initial = None
        if student.checkpoint:  # the initial weights change the result: in the key by content and format
            student_config["checkpoint"] = {"sha256": _checkpoint_digest(student.checkpoint),
                                            "format": student.checkpoint_format}
            initial = {"path": student.checkpoint, "format": student.checkpoint_format}
        for m_index, method in enumerate(suite.methods):
            teacher = teachers[suite.teacher_for(student)] if method.needs_teacher else None
            deviations = suite.run_deviations(s_index, m_index, teacher.label if teacher else None)
            for seed in suite.seeds:
                config = {
                    "dataset": dataset_in_key,
                    "schedule": suite.schedule.model_dump(),
                    "student": copy.deepcopy(student_config),
                    "teacher": teacher.key if teacher else None,
                    "method": {"label": method.row_label,
                               "components": [{"name": c.name, "key": c.component_key,
                                               "hparams": c.resolved_hparams()} for c in method.parts()]},
                    "seed": seed,
                }
                runs.append(RunSpec(key=config_key(config), suite=suite.name, table=suite.title,
                                    student=student.model, method_label=method.row_label, seed=seed, config=config,
                                    teacher=teacher, dataset_root=suite.dataset.root,
                                    runtime=suite.runtime.model_dump(), student_checkpoint=initial,
                                    student_options=_jsonable(student.options),
                                    protocol_deviations=deviations, protocol_reference=suite.protocol_reference))
    return runs, teachers


def options_in_key(options: dict[str, Any]) -> dict[str, Any]:
    """A model's builder options as they enter a run key: ImageNet weights given as a path are named by content, so
    moving the file keeps the key and replacing the weights at the same path changes it."""
    options = _jsonable(options)
    weights = options.get("pretrained")
    if isinstance(weights, str):
        options["pretrained"] = _weights_identity(weights)
    return options


def _weights_identity(weights: str) -> dict[str, str] | str:
    """A weights file by its digest; a cache directory by the names and sizes of the weight files it holds (the
    Hugging Face cache names its blobs by their sha256, so for a hub cache this is content too)."""
    path = expand_path(weights)
    if path.is_file():
        return {"sha256": _file_digest_cached(*_stat(str(path)))}
    if path.is_dir():
        listing = sorted((str(f.relative_to(path)), f.stat().st_size) for f in path.rglob("*")
                         if f.is_file() and f.suffix in (".pth", ".pt", ".bin", ".safetensors", "") and
                         not f.name.startswith("."))
        return {"directory_sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]}
    return f"missing:{path}"


def _checkpoint_digest(checkpoint: str) -> str:
    path = str(expand_path(checkpoint))
    # read once per process: a plan expands its suite several times, and checkpoints are hundreds of MB
    return _file_digest_cached(*_stat(path)) if os.path.isfile(path) else f"missing:{path}"


# --- loading ---------------------------------------------------------------------------------------


@dataclass
class SuiteFile:
    """What a suite path holds: one suite, or a collection of parts (``include``)."""

    path: Path
    name: str
    parts: list[Suite]
    description: str = ""


def load_suite(path: str | os.PathLike, overrides: list[str] | None = None) -> SuiteFile:
    """Read, compose, override and validate a suite file; raise :class:`SuiteError` on any problem."""
    path = Path(path).expanduser().resolve()  # messages and records name the file absolutely
    raw = _read_yaml(path)
    if "include" in raw:
        extra = sorted(set(raw) - {"include", "name", "description"})
        if extra:
            raise SuiteError(f"{path}: a collection holds only `name`, `description` and `include`; "
                             f"move {extra} into the included suites")
        name = raw.get("name", path.stem)
        if not isinstance(raw["include"], list) or not raw["include"]:
            raise SuiteError(f"{path}: include: expected a non-empty list of suite files")
        parts: list[Suite] = []
        for item in raw["include"]:
            child = _resolve(path, item, "include")
            parts.extend(load_suite(child, overrides).parts)
        _check_distinct_cells(path, parts)
        return SuiteFile(path=path, name=name, parts=parts, description=raw.get("description", ""))
    data = _compose(path, raw, seen=(path,))
    data.setdefault("name", path.stem)
    file_data = data
    if not overrides:
        suite = _validate(path, data)
        _check_card(path, suite)
    else:
        try:
            base = _validate(path, data)
        except SuiteError:
            base = None  # a file completed only by its overrides (say, a root given with --set): validated below
        if base is not None:
            _check_card(path, base)
        # An override may leave the recipe's protocol on purpose (a quick try); the card then records what ran.
        data = copy.deepcopy(data)
        for override in overrides:
            _apply_override(path, data, override)
        try:
            suite = _validate(path, data)
        except SuiteError as error:
            if base is None or "claims[" not in str(error):
                raise
            raise SuiteError(f"{error}\n(the suite file's claims name cells that --set removed; to try other "
                             "students or rows without the paper's numbers, add --set claims=[])") from None
    _attach_reference(path, raw, file_data, data, suite, overrides or [])
    return SuiteFile(path=path, name=suite.name, parts=[suite], description=suite.description)


#: The suite keys protocol settings live under; a recipe states the first three (students and methods are the
#: table's own, compared with the suite file).
_RECIPE_BLOCKS = ("dataset", "schedule", "teachers")
_PROTOCOL_BLOCKS = (*_RECIPE_BLOCKS, "students", "methods")


def _attach_reference(path: Path, raw: dict[str, Any], file_data: dict[str, Any], data: dict[str, Any], suite: Suite,
                      overrides: list[str]) -> None:
    """Give ``suite`` what its runs are compared with for protocol deviations: its recipe (the nearest file up the
    ``extends`` chain that states a ``protocol:`` card, else the file it extends) for the dataset, schedule and
    teachers, and the suite file for its students and method rows; a suite without a recipe but with claims is
    compared with the suite file alone; one with neither, with nothing."""
    recipe = _recipe_of(path, raw)
    if recipe is None and not suite.claims:
        return
    reference = copy.deepcopy(data)  # the non-protocol keys (name, runtime, ...) as they run
    reference["claims"] = []  # they name cells of the suite as it runs, and change no setting
    for block in _PROTOCOL_BLOCKS:
        if block in file_data:
            reference[block] = copy.deepcopy(file_data[block])
        else:
            reference.pop(block, None)
    name = f"suite file {path}"
    if recipe is not None:
        recipe_path, recipe_data = recipe
        name = f"recipe {recipe_path}"
        for block in _RECIPE_BLOCKS:
            if block not in recipe_data:
                continue
            if block == "teachers":  # a teacher the recipe does not name is the suite's own
                reference[block] = {label: copy.deepcopy(recipe_data[block].get(label, teacher))
                                    for label, teacher in (reference.get(block) or {}).items()}
            else:
                reference[block] = copy.deepcopy(recipe_data[block])
    if isinstance(reference.get("dataset"), dict):  # where the data lies is not protocol
        reference["dataset"]["root"] = (data.get("dataset") or {}).get("root")
    try:
        suite._reference = Suite(**reference)
    except (ValidationError, UnknownNameError) as error:
        detail = _format_validation(path, error) if isinstance(error, ValidationError) else str(error)
        raise SuiteError(f"{path}: its runs cannot be compared with the {name} they should follow, which does not "
                         f"validate with the suite's students and methods:\n{detail}") from None
    suite._reference_name = name
    suite._overridden = tuple(o.partition("=")[0] for o in overrides)


def _recipe_of(path: Path, raw: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """(file, composed data) of a suite's recipe: the nearest file up its ``extends`` chain whose own text states a
    ``protocol:`` card, else the file it extends; None for a suite that extends nothing."""
    first = None
    current_path, current = path, raw
    seen = (path,)
    while current.get("extends") is not None:
        base_path = _resolve(current_path, current["extends"], "extends")
        if base_path in seen:
            break  # a cycle: _compose has reported it
        seen += (base_path,)
        base = _read_yaml(base_path)
        if first is None:
            first = base_path, base
        if "protocol" in base:
            return base_path, _compose(base_path, base, seen=(base_path,))
        current_path, current = base_path, base
    return (first[0], _compose(first[0], first[1], seen=(first[0],))) if first else None


def _validate(path: Path, data: dict[str, Any]) -> Suite:
    try:
        return Suite(**data)
    except ValidationError as error:
        raise SuiteError(_format_validation(path, error)) from None
    except UnknownNameError as error:
        raise SuiteError(f"{path}: {error}") from None


def _check_card(path: Path, suite: Suite) -> None:
    """A suite file must run the protocol its card states: a contradiction is an error in the file."""
    for deviation in suite.protocol_deviations():
        raise SuiteError(f"{path}: protocol.facts.{deviation['fact']}: the card says {deviation['card']!r} but "
                         f"{deviation['setting']} is {deviation['ran']!r}; change one of them")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SuiteError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: expected a mapping of suite keys at the top level, got {type(data).__name__}")
    return data


def _resolve(path: Path, item: Any, key: str) -> Path:
    if not isinstance(item, str):
        raise SuiteError(f"{path}: {key}: expected a file path, got {item!r}")
    child = (path.parent / item).resolve()
    if not child.is_file():
        raise SuiteError(f"{path}: {key}: no such file {item!r} (looked for {child})")
    return child


def _compose(path: Path, raw: dict[str, Any], seen: tuple[Path, ...]) -> dict[str, Any]:
    raw = dict(raw)
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base_path = _resolve(path, base_name, "extends")
    if base_path in seen:
        raise SuiteError(f"{path}: extends: {base_name!r} extends itself (cycle)")
    base = _compose(base_path, _read_yaml(base_path), seen + (base_path,))
    return _deep_merge(base, raw)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _apply_override(path: Path, data: dict[str, Any], override: str) -> None:
    """``a.b.c=VALUE`` with VALUE parsed as YAML (so ``2``, ``[64, 64]``, ``null`` keep their types); a list is
    indexed by position (``methods.1.hparams.temperature=4``)."""
    key_path, _, text = override.partition("=")
    keys = key_path.split(".")
    if "=" not in override or not all(keys):
        raise SuiteError(f"--set {override!r}: expected KEY.PATH=VALUE, e.g. schedule.iterations=100")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SuiteError(f"--set {override!r}: value is not valid YAML: {error}") from None
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            where = ".".join(keys[:depth])
            if not key.isdigit():
                raise SuiteError(f"--set {override!r}: {where} is a list; index it by position (0 to "
                                 f"{len(node) - 1}), not {key!r}")
            if int(key) >= len(node):
                raise SuiteError(f"--set {override!r}: index {key} is out of range: {where} has {len(node)} "
                                 f"item(s) (0 to {len(node) - 1})")
            key = int(key)
        if last:
            node[key] = value
        else:
            if not isinstance(node[key] if isinstance(node, list) else node.get(key), (dict, list)):
                node[key] = {}
            node = node[key]


def _check_distinct_cells(path: Path, parts: list[Suite]) -> None:
    names: dict[str, int] = {}
    cells: dict[tuple, str] = {}
    for suite in parts:
        names[suite.name] = names.get(suite.name, 0) + 1
        for student in suite.students:
            for method in suite.methods:
                cell = (suite.title, suite.dataset.name, student.model, method.row_label)
                if cell in cells:
                    raise SuiteError(f"{path}: cell {cell[2]} / {cell[3]} of table {cell[0]!r} is defined twice "
                                     f"(in suites {cells[cell]!r} and {suite.name!r})")
                cells[cell] = suite.name
    repeated = sorted(n for n, count in names.items() if count > 1)
    if repeated:
        raise SuiteError(f"{path}: suites included twice or sharing a name: {repeated}")


def _format_validation(path: Path, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        location = _location(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            hint = did_you_mean(str(item["loc"][-1]), _allowed_keys(item["loc"]))
            message = f"unknown key{hint} (not allowed here; check its spelling and indentation)"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif "input" in item and item["type"] not in ("value_error",):
            message = f"{message}, got {item['input']!r}"
        if location:
            lines.append(f"{path}: {location}: {message}")
        else:  # a check across keys: its message names the key path of each problem, one per line
            lines += [f"{path}: {line}" for line in message.splitlines()]
    return "\n".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys a suite may write where ``loc`` (a pydantic error location, ending in the unknown key) points."""
    annotation: Any = Suite
    for part in loc[:-1]:
        if isinstance(part, str) and part.startswith(("function-", "tagged")):
            continue
        model = _model_in(annotation)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            annotation = model.model_fields[part].annotation
            continue
        containers = [arg for arg in _union_args(annotation) if get_origin(arg) in (list, dict)]
        if not containers:
            return []
        annotation = get_args(containers[0])[-1]  # list[X] by position, dict[str, X] by key
    model = _model_in(annotation)
    return list(model.model_fields) if model is not None else []


def _union_args(annotation: Any) -> tuple:
    return get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for arg in _union_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _first_message(error: ValidationError) -> str:
    item = error.errors()[0]
    return f"{_location(item['loc'])}: {item['msg'].removeprefix('Value error, ')}"


def _location(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("function-after[_check(), ScheduleConfig]",) or str(part).startswith(("function-", "tagged")):
            continue
        else:
            text += ("." if text else "") + str(part)
    return text


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))
