"""Every method each suite file pairs with a real student and teacher builds on them with its resolved
hyperparameters (random weights, nothing downloaded, models on the meta device: construction reads only declared
feature points), so a paper table cannot fail at its first step for a missing point or a bad hyperparameter.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from benchmark.engine.train import build_method
from benchmark.registry import DATASETS, MODELS
from benchmark.suite import load_suite

SUITES = sorted((Path(__file__).resolve().parent.parent / "suites").glob("*.yaml"))


@functools.cache
def model(name: str, num_classes: int, options: tuple) -> torch.nn.Module:
    with torch.device("meta"):
        return MODELS.get(name)(num_classes, **{**dict(options), "pretrained": False})


def pairings(path: Path) -> list[tuple]:
    """(student, teacher, method row, components) of every cell of the suite, each distinct one once."""
    cells = {}
    for suite in load_suite(path).parts:
        classes = DATASETS.get(suite.dataset.name).num_classes
        for student in suite.students:
            teacher = suite.teachers.get(suite.teacher_for(student)) if suite.teacher_for(student) else None
            for method in suite.methods:
                components = [{"name": c.name, "key": c.component_key, "hparams": c.resolved_hparams()}
                              for c in method.parts()]
                pair = ((student.model, classes, tuple(sorted(student.options.items()))),
                        (teacher.model, classes, tuple(sorted(teacher.options.items())))
                        if teacher is not None and method.needs_teacher else None)
                cells.setdefault(repr((pair, components)), (pair, method.row_label, components))
    return list(cells.values())


def test_the_paper_suites_pair_methods_with_mobilenet_v2_students():
    students = {pair[0][0] for path in SUITES for pair, _, _ in pairings(path)}
    assert {"deeplabv3plus_mbv2", "deeplabv3_mbv2"} <= students


@functools.cache
def build_problem(student_ref: tuple, teacher_ref: tuple | None, label: str, components: str) -> str | None:
    """Why the cell's method does not build on its models (None: it does). Cached: suites share many cells."""
    student = model(*student_ref)
    teacher = model(*teacher_ref) if teacher_ref else None
    try:
        with torch.device("meta"):
            method = build_method(json.loads(components), student, teacher)
    except (ValueError, KeyError, TypeError) as error:
        return f"{label} on {student_ref[0]}: {error}"
    missing = [p for p in method.student_points if p not in student.feature_points]
    missing += [p for p in method.teacher_points if teacher is None or p not in teacher.feature_points]
    return f"{label} on {student_ref[0]}: points {missing} not declared" if missing else None


@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_every_method_builds_on_the_models_its_suite_pairs_it_with(path):
    problems = [build_problem(*pair, label, json.dumps(components, sort_keys=True))
                for pair, label, components in pairings(path)]
    failures = [problem for problem in problems if problem]
    assert not failures, "\n".join(failures)

@pytest.mark.parametrize("name", ["attnfd", "overhaul", "lad"])
def test_feature_methods_train_a_mobilenet_v2_student_on_its_code_points(name):
    """AttnFD Table 1's MobileNetV2 rows with the methods' defaults: the points are the code's for that backbone
    (AttnFD / LAD: the linear 320-channel output; Overhaul: the 144/192/576 expansions and the 320 output)."""
    from benchmark.engine.prepare import run_prepare
    from benchmark.models.base import freeze
    from tests.method_utils import Step, build_method, random_batch

    torch.manual_seed(0)
    student, teacher = MODELS.get("deeplabv3plus_mbv2")(21), freeze(MODELS.get("deeplabv3plus_r101")(21))
    method = build_method(name, student, teacher)
    expected = {"attnfd": [320, 256, 256], "lad": [320, 256, 256], "overhaul": [144, 192, 576, 320, 256, 256]}[name]
    points = method.components[name].points
    assert [student.point(p).channels for p in points] == expected
    batch = random_batch(batch_size=2, size=64, num_classes=21)
    if method.needs_prepare():
        run_prepare(method, teacher, lambda: batch, 21, "cpu", log=lambda message: None)
    terms, _, _ = Step(student, teacher, method)(batch)
    loss = terms[f"{name}.{name}"]
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert student.backbone.conv_stem.weight.grad.abs().sum() > 0
