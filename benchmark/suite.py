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
import hashlib
import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from benchmark.registry import DATASETS, METHODS, MODELS, UnknownNameError


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
                raise ValueError(f"unknown option {key!r} for dataset {self.name} (known: {sorted(known)})")
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
            raise ValueError(f"unknown option {key!r} for model {name} (known: {known})")


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
                raise ValueError(f"method {self.name} has no hyperparameter {key!r} (it has: {sorted(defaults)})")
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
    for the same student, for papers that state only a gain. At least one of them is given.
    """

    student: str
    method: str
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
        if value is not None and not 0 <= value <= 100:
            raise ValueError(f"claimed numbers are percentages in [0, 100], got {value}")
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
        return self

    def settings(self) -> dict[str, Any]:
        """The keys a protocol fact may name, resolved as a run stores them."""
        return _jsonable({
            "dataset": {k: v for k, v in self.dataset.resolved().items() if k != "root"},
            "schedule": self.schedule.model_dump(),
            "teachers": {key: {**t.model_dump(), "schedule": self.teacher_schedule(key).model_dump(),
                               "dataset": {k: v for k, v in self.teacher_dataset(key).resolved().items() if k != "root"}}
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

    def protocol_record(self) -> dict[str, Any] | None:
        """The card as the report shows it: facts in order, each with the value this suite runs where it differs."""
        if self.protocol is None:
            return None
        ran = {d["fact"]: d["ran"] for d in self.protocol_deviations()}
        card = self.protocol.model_dump(exclude={"facts"})
        card["facts"] = [{"fact": name, **fact.model_dump(), **({"ran": ran[name]} if name in ran else {})}
                         for name, fact in self.protocol.facts.items()]
        return _jsonable(card)

    def _check_checkpoint_preprocessing(self) -> None:
        """An authors' checkpoint is only right with the input preprocessing its code trained it with."""
        from benchmark.convert import FORMAT_NORMALIZATION

        refs = [(f"teachers.{key}", teacher) for key, teacher in self.teachers.items()]
        refs += [(f"students[{index}]", student) for index, student in enumerate(self.students)]
        for where, ref in refs:
            needed = FORMAT_NORMALIZATION.get(ref.checkpoint_format)
            if needed is not None and self.dataset.normalization != needed:
                raise ValueError(
                    f"{where}.checkpoint_format {ref.checkpoint_format!r} needs dataset.normalization: {needed} "
                    f"({_NORMALIZATION_MEANING[needed]}), the input its authors' code trained it on; this suite has "
                    f"dataset.normalization: {self.dataset.normalization}. Set `dataset.normalization: {needed}`.")

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


# --- run specs -------------------------------------------------------------------------------------


_NORMALIZATION_MEANING = {"bgr_mean": "BGR 0-255 minus the mean, no std", "imagenet": "RGB, ImageNet mean and std"}


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

    @property
    def needs_teacher(self) -> bool:
        return self.teacher is not None


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
    dataset_in_key = {k: v for k, v in dataset.items() if k != "root"}
    teachers: dict[str, TeacherSpec] = {}
    for label, teacher in suite.teachers.items():
        teacher_dataset = {k: v for k, v in suite.teacher_dataset(label).resolved().items() if k != "root"}
        config = {"dataset": teacher_dataset, "model": teacher.model, "model_options": _jsonable(teacher.options),
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
    for student in suite.students:
        student_config: dict[str, Any] = {"name": student.model, "options": _jsonable(student.options)}
        initial = None
        if student.checkpoint:  # the initial weights change the result: in the key by content and format
            student_config["checkpoint"] = {"sha256": _checkpoint_digest(student.checkpoint),
                                            "format": student.checkpoint_format}
            initial = {"path": student.checkpoint, "format": student.checkpoint_format}
        for method in suite.methods:
            teacher = teachers[suite.teacher_for(student)] if method.needs_teacher else None
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
                                    runtime=suite.runtime.model_dump(), student_checkpoint=initial))
    return runs, teachers


def _checkpoint_digest(checkpoint: str) -> str:
    path = os.path.expanduser(os.path.expandvars(checkpoint))
    return file_digest(path) if os.path.isfile(path) else f"missing:{path}"


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
    path = Path(path)
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
    data = _compose(path, raw, seen=(path.resolve(),))
    data.setdefault("name", path.stem)
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
        suite = _validate(path, data)
    return SuiteFile(path=path, name=suite.name, parts=[suite], description=suite.description)


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
    """``a.b.c=VALUE`` with VALUE parsed as YAML (so ``2``, ``[64, 64]``, ``null`` keep their types)."""
    if "=" not in override:
        raise SuiteError(f"--set {override!r}: expected KEY.PATH=VALUE")
    key_path, _, text = override.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SuiteError(f"--set {override!r}: value is not valid YAML: {error}") from None
    node = data
    keys = key_path.split(".")
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


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
            message = "unknown key (not allowed here; check its spelling and indentation)"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif "input" in item and item["type"] not in ("value_error",):
            message = f"{message}, got {item['input']!r}"
        lines.append(f"{path}: {location or '(top level)'}: {message}")
    return "\n".join(lines)


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
