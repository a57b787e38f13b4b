"""Preflight: every pairing a suite trains, built before anything trains, with errors naming file, suite and row.

For each table (part) of a suite file: every student and teacher is built, and every method row on every
student with the teacher it is paired with; the protocol settings that need something of a model (a head for
``schedule.head_lr_mult``) are checked against it. ``plan --preflight`` builds the models without their weights,
on PyTorch's ``meta`` device (shapes only: a ResNet-101 costs no memory and a fraction of a second), so it checks
structure only, offline; ``run`` builds them as they will train, weights included. Missing datasets and weight
files are not errors here: ``plan`` lists them (:func:`missing_weights`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmark.models.base import SegmentationModel
from benchmark.registry import DATASETS, MODELS
from benchmark.suite import Suite, SuiteError, expand_path

#: (model name, options, num_classes) -> the built model
ModelBuilder = Callable[[str, dict[str, Any], int], SegmentationModel]


class PreflightError(SuiteError):
    """A suite that validated but cannot run (a method that cannot be built on its models, a missing file...)."""


def without_weights(options: dict[str, Any]) -> dict[str, Any]:
    """A model's options with ``pretrained`` switched off (where it has one): no ImageNet download, offline too."""
    return {**options, "pretrained": False} if "pretrained" in options else options


def structure_builder() -> ModelBuilder:
    """Models without weights on the meta device, each built once per call of the returned function's owner."""
    cache: dict[str, SegmentationModel] = {}

    def build(name: str, options: dict[str, Any], num_classes: int) -> SegmentationModel:
        options = without_weights(options)
        key = json.dumps([name, options, num_classes], sort_keys=True, default=str)
        if key not in cache:
            with torch.device("meta"):
                cache[key] = MODELS.get(name)(num_classes, **options)
        return cache[key]

    return build


def check_pairings(path: Path | str, suite: Suite, build: ModelBuilder) -> int:
    """Build every student, teacher and (student, method, teacher) of ``suite``; return how many methods were built.

    Raises :class:`PreflightError` on the first failure: ``FILE: suite NAME: ROW: reason``.
    """
    from benchmark.engine.train import build_method

    where = f"{path}: suite {suite.name}"
    num_classes = DATASETS.get(suite.dataset.name).num_classes

    def model(config, role: str, schedule) -> SegmentationModel:
        try:
            built = build(config.model, dict(config.options), num_classes)
        except Exception as error:  # noqa: BLE001 - any build failure (bad option, offline weights) stops the suite
            raise PreflightError(f"{where}: {role} ({config.model}, options {dict(config.options)}): "
                                 f"{_reason(error)}") from None
        if schedule.head_lr_mult != 1 and not built.head_parameters():
            raise PreflightError(f"{where}: {role} ({config.model}): schedule.head_lr_mult is "
                                 f"{schedule.head_lr_mult} but the model declares no head modules")
        return built

    teachers = {label: model(config, f"teachers.{label}", suite.teacher_schedule(label))
                for label, config in suite.teachers.items()}
    built_methods = 0
    for s_index, student_config in enumerate(suite.students):
        student = model(student_config, f"students[{s_index}]", suite.schedule)
        teacher_label = suite.teacher_for(student_config)
        teacher = teachers.get(teacher_label) if teacher_label is not None else None
        for m_index, method in enumerate(suite.methods):
            row = (f"{where}: methods[{m_index}] ({method.row_label}) on students[{s_index}] ({student_config.model})"
                   + (f" with teachers.{teacher_label} ({suite.teachers[teacher_label].model})" if teacher else ""))
            if method.needs_teacher and teacher is None:
                raise PreflightError(f"{row}: the method needs a teacher and the student has none")
            components = [{"name": c.name, "key": c.component_key, "hparams": c.resolved_hparams()}
                          for c in method.parts()]
            try:
                with torch.device(next(student.parameters()).device):
                    build_method(components, student, teacher if method.needs_teacher else None)
            except (ValueError, KeyError, TypeError, NotImplementedError) as error:
                owners = [("student", student_config.model, student)]
                if teacher is not None:
                    owners.append(("teacher", suite.teachers[teacher_label].model, teacher))
                raise PreflightError(f"{row}: {_reason(error, owners)}") from None
            built_methods += 1
    return built_methods


def _reason(error: BaseException, owners: list[tuple[str, str, SegmentationModel]] = ()) -> str:
    """The error's message; a bare missing point name (a method indexing a points dict) says whose point it is."""
    if not isinstance(error, KeyError) or not error.args:
        return str(error)
    name = error.args[0]
    for role, model_name, owner in owners:
        if isinstance(name, str) and name not in owner.feature_points:
            return (f"feature point {name!r} is not declared by the {role} {model_name} "
                    f"(it declares: {', '.join(sorted(owner.feature_points))})")
    return str(name)


def missing_weights(suite: Suite) -> list[str]:
    """Weight files a suite names that are not on this machine (checkpoints, ``pretrained:`` paths)."""
    missing = []
    for role, config in suite.model_refs():
        if config.checkpoint and not expand_path(config.checkpoint).is_file():
            missing.append(f"{role}.checkpoint: {config.checkpoint}")
        weights = config.options.get("pretrained")
        if isinstance(weights, str) and not expand_path(weights).exists():
            missing.append(f"{role}.options.pretrained ({config.model}): {weights}")
    return missing
