"""The run key changes with every field that changes a result and with nothing else (a property test).

A key that ignores a result field reuses an old result for a changed run; a key that includes a path, a worker
count or an executor retrains (and re-keys) results for nothing. Hypothesis draws a few changes at once from the
table below, writes the suite, and checks three keys: the teacher's, a KD run's (which names the teacher) and a
no-distillation run's (which does not). Every field of the suite's schema must be in the table: a new field fails
``test_every_suite_field_is_classified`` until someone decides whether it changes a result.
"""

from __future__ import annotations

import copy
import os
import tempfile
import typing
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from benchmark.suite import (
    DatasetConfig,
    MethodConfig,
    RuntimeConfig,
    ScheduleConfig,
    StudentConfig,
    Suite,
    SuiteError,
    TeacherConfig,
    expand,
    load_suite,
)

BASE = {
    "name": "keys",
    "dataset": {"name": "synthetic", "crop": [32, 32], "scale_range": [0.75, 1.25],
                "options": {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 8}},
    "schedule": {"iterations": 6, "batch_size": 4, "lr": 0.01, "eval_every": 3},
    "teachers": {"t": {"model": "tiny_teacher", "schedule": {"iterations": 4}}},
    "students": [{"model": "tiny_student"}],
    "methods": [{"name": "none"}, {"name": "kd", "hparams": {"temperature": 4.0}}],
    "seeds": [0],
}

TEACHER, KD, NONE = "teacher", "kd", "none"
ALL = frozenset({TEACHER, KD, NONE})
STUDENT_RUNS = frozenset({KD, NONE})


class Together(dict):
    """Several paths set at once, for a field that is valid only with another (``base_size`` needs ``short_side``)."""


def pos_int(low: int = 1, high: int = 10_000):
    return st.integers(low, high)


def pos_float(low: float = 1e-6, high: float = 10.0):
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


#: path in the suite -> (strategy for a new value, which keys it must change). An empty set: it changes no key.
FIELDS: dict[str, tuple[st.SearchStrategy, frozenset]] = {
    # dataset: every protocol setting changes every key; where the data lives changes none
    "dataset.root": (st.sampled_from(["/data/a", "~/b", "$HOME/c", "relative/d"]), frozenset()),
    "dataset.options.image_size": (st.integers(33, 64), ALL),
    "dataset.options.num_train": (st.integers(17, 64), ALL),
    "dataset.options.num_val": (st.integers(9, 64), ALL),
    "dataset.options.num_test": (st.integers(9, 64), ALL),
    "dataset.options.seed": (st.integers(1, 100), ALL),
    "dataset.train_split": (st.sampled_from(["train+val", "val"]), ALL),
    "dataset.eval_split": (st.sampled_from(["test", "train"]), ALL),
    "dataset.selection_split": (st.sampled_from(["test", "none", "train"]), ALL),
    "dataset.crop": (st.tuples(st.integers(8, 32), st.integers(8, 32)).map(list).filter(lambda c: c != [32, 32]), ALL),
    "dataset.scale_range": (st.tuples(pos_float(0.1, 1.0), pos_float(1.0, 3.0)).map(sorted)
                            .filter(lambda r: r != [0.75, 1.25]), ALL),
    "dataset.flip": (st.just(False), ALL),
    "dataset.eval_size": (st.one_of(st.integers(8, 64), st.tuples(st.integers(8, 64), st.integers(8, 64)).map(list)),
                          ALL),
    "dataset.absent_class_policy": (st.just("zero_included"), ALL),
    "dataset.scale_mode": (st.integers(16, 64).map(lambda n: Together({"dataset.scale_mode": "short_side",
                                                                        "dataset.base_size": n})), ALL),
    "dataset.base_size": (st.integers(16, 64).map(lambda n: Together({"dataset.scale_mode": "short_side",
                                                                       "dataset.base_size": n})), ALL),
    "dataset.scale_step": (st.sampled_from([0.25, 0.125, 0.05]), ALL),
    "dataset.image_pad": (st.just("mean"), ALL),
    "dataset.label_pad": (st.integers(0, 6), ALL),
    "dataset.gaussian_blur": (st.just(True), ALL),
    "dataset.resize_antialias": (st.just(False), ALL),
    "dataset.normalization": (st.just("bgr_mean"), ALL),
    # the student schedule; the teacher inherits every field it does not override (it overrides `iterations`)
    "schedule.iterations": (pos_int(7), STUDENT_RUNS),
    "schedule.batch_size": (st.integers(5, 64), ALL),
    "schedule.optimizer": (st.just("adamw"), ALL),
    "schedule.lr": (pos_float(0.011, 1.0), ALL),
    "schedule.momentum": (st.floats(0.0, 0.99).filter(lambda m: m != 0.9), ALL),
    "schedule.nesterov": (st.just(True), ALL),
    "schedule.weight_decay": (pos_float(1e-6, 1e-2).filter(lambda w: w != 1e-4), ALL),
    "schedule.lr_schedule": (st.sampled_from(["cosine", "constant"]), ALL),
    "schedule.poly_power": (pos_float(0.1, 3.0).filter(lambda p: p != 0.9), ALL),
    "schedule.min_lr": (pos_float(1e-7, 1e-3), ALL),
    "schedule.warmup_iterations": (pos_int(1, 100), ALL),
    "schedule.eval_every": (st.integers(0, 100).filter(lambda e: e != 3), ALL),
    "schedule.eval_batch_size": (st.integers(2, 64), ALL),
    # logging and checkpoint intervals: `last_losses` (stored) depends on log_every; checkpoint_every is in the key
    # on purpose, so results stored under today's keys stay addressable
    "schedule.checkpoint_every": (st.integers(1, 499), ALL),
    "schedule.log_every": (st.integers(1, 19), ALL),
    "schedule.method_lr_mult": (pos_float(1.1, 10.0), ALL),
    "schedule.grad_clip_norm": (pos_float(0.1, 10.0), ALL),
    "schedule.head_lr_mult": (pos_float(1.1, 10.0), ALL),
    "schedule.ce_batch_average": (st.just(True), ALL),
    "schedule.kd_forward": (st.just("extract_feature"), ALL),
    # the teacher: its own key, and the key of every run it distils into
    "teachers.t.model": (st.just("tiny_student"), frozenset({TEACHER, KD})),
    "teachers.t.seed": (st.integers(1, 100), frozenset({TEACHER, KD})),
    "teachers.t.schedule.iterations": (st.integers(5, 100), frozenset({TEACHER, KD})),
    "teachers.t.schedule.lr": (pos_float(0.011, 1.0), frozenset({TEACHER, KD})),
    "teachers.t.dataset": (st.sampled_from([{"train_split": "train+val"}, {"crop": [16, 16]}]),
                           frozenset({TEACHER, KD})),
    # the student
    "students.0.model": (st.just("tiny_student_narrow"), STUDENT_RUNS),
    # the method: its hyperparameters, its row label (stored in the record as `method`) and its component key
    "methods.1.hparams.temperature": (pos_float(0.1, 10.0).filter(lambda t: t != 4.0), frozenset({KD})),
    "methods.1.hparams.loss_weight": (pos_float(0.1, 10.0).filter(lambda w: w != 1.0), frozenset({KD})),
    "methods.1.hparams.point": (st.just("logits:pre_upsample"), frozenset({KD})),
    "methods.1.label": (st.sampled_from(["KD (τ=4)", "pixel KD"]), frozenset({KD})),
    "seeds": (st.integers(1, 1000).map(lambda s: [s]), STUDENT_RUNS),
    # how to run, not what: never in a key
    # the equal-compute view adds runs of its own (keyed by their derived iterations, tests/test_stats.py); the runs
    # of the equal-iterations view keep their keys
    "compare_at": (st.sampled_from(["device_hours", "wall_clock"]), frozenset()),
    "runtime.num_workers": (st.integers(1, 16), frozenset()),
    "runtime.amp": (st.sampled_from(["bf16", "off"]), frozenset()),
    "runtime.channels_last": (st.sampled_from(["on", "off"]), frozenset()),
    "runtime.compile": (st.just(True), frozenset()),
    "resources.gpus": (st.integers(2, 8), frozenset()),
    "resources.time": (st.integers(1, 10_000), frozenset()),
    "resources.partition": (st.sampled_from(["gpu", "long"]), frozenset()),
    "resources.cpus": (st.integers(1, 32), frozenset()),
    "resources.max_timeouts": (st.integers(0, 9), frozenset()),
    "report.qualitative_indices": (st.lists(st.integers(0, 7), max_size=3, unique=True), frozenset()),
    "report.qualitative_max_side": (st.integers(16, 1024).filter(lambda v: v != 384), frozenset()),
    # presentation: names, words and claims
    "name": (st.sampled_from(["other", "keys-v2"]), frozenset()),
    "description": (st.text(max_size=20), frozenset()),
    "table": (st.just({"title": "Table 9", "paper": "x"}), frozenset()),
    "claims": (st.just([{"student": "tiny_student", "method": "kd", "miou": 50.0, "source": "Tab. 1"}]), frozenset()),
}

#: Fields of the schema whose effect is covered by other entries or other tests (not drawn here).
NOT_DRAWN = {
    "dataset": "drawn per field below",
    "schedule": "drawn per field below",
    "dataset.name": "another dataset: other splits and crop limits; changes every key (test below)",
    "dataset.options": "drawn per option above",
    "schedule.epochs": "the alternative to iterations; test below",
    "teachers": "drawn per field above",
    "teachers.t.options": "tiny models take only `pretrained`: by content when a path (test below)",
    "teachers.t.checkpoint": "by content, not by path: test below",
    "teachers.t.schedule": "drawn per field above",
    "students": "drawn per field above",
    "students.0.options": "tiny models take only `pretrained`: by content when a path (test below)",
    "students.0.teacher": "the only teacher, named or not: the same run (test below)",
    "methods": "drawn per field above",
    "methods.1.name": "another method is another row",
    "methods.1.hparams": "drawn per hyperparameter above",
    "methods.1.components": "test below",
    "runtime": "drawn per field above",
    "resources": "drawn per field above (how to run on a cluster: never in a key)",
    "resources.teacher_time": "as resources.time",
    "resources.account": "as resources.partition",
    "resources.qos": "as resources.partition",
    "resources.constraint": "as resources.partition",
    "resources.mem_gb": "as resources.cpus",
    "resources.setup": "shell lines before a job: how to run",
    "resources.array_parallelism": "as resources.cpus",
    "report": "drawn per field above (what the report shows: never in a key)",
    "protocol": "the recipe's protocol card: words for the report, no setting of the run",
    "students.0.checkpoint": "a student's initial weights: by content, needs a file (tests of the models helper)",
    "students.0.checkpoint_format": "needs a checkpoint file",
    "teachers.t.checkpoint_format": "needs a checkpoint file",
}

_BASE_SUITE = None


def write(data: dict, folder: Path) -> Path:
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def set_path(data: dict, path: str, value) -> None:
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[keys[-1]] = value


def keys_of(data: dict) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as folder:
        suite = load_suite(write(data, Path(folder))).parts[0]
    runs, teachers = expand(suite)
    kd = next(r for r in runs if r.needs_teacher)
    none = next(r for r in runs if not r.needs_teacher)
    return {TEACHER: teachers["t"].key, KD: kd.key, NONE: none.key}


BASE_KEYS = keys_of(BASE)


#: Fewer examples per mutant in the mutation run (benchmarks/mutation.sh), where this test runs hundreds of times.
EXAMPLES = int(os.environ.get("SEGKD_HYPOTHESIS_EXAMPLES", "150"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True).flatmap(
    lambda paths: st.tuples(*(st.tuples(st.just(p), FIELDS[p][0]) for p in paths))))
def test_run_key_changes_exactly_with_the_fields_that_change_a_result(changes):
    data = copy.deepcopy(BASE)
    for path, value in changes:
        for target, item in (value.items() if isinstance(value, Together) else [(path, value)]):
            set_path(data, target, item)
    try:
        keys = keys_of(data)
    except SuiteError:
        assume(False)  # an invalid combination (e.g. min_lr above lr): not a run at all
    for observed in (TEACHER, KD, NONE):
        must_change = [path for path, _ in changes if observed in FIELDS[path][1]]
        if must_change:
            assert keys[observed] != BASE_KEYS[observed], f"{observed} key ignores {must_change}: {changes}"
        else:
            assert keys[observed] == BASE_KEYS[observed], f"{observed} key depends on {changes}"


@pytest.mark.parametrize("path", sorted(FIELDS))
@settings(max_examples=max(3, EXAMPLES // 30), deadline=None, suppress_health_check=[HealthCheck.filter_too_much,
                                                                                    HealthCheck.too_slow])
@given(data=st.data())
def test_each_field_alone_changes_exactly_its_keys(path, data):
    """Every field on its own, so none depends on the draws above (a key that hashes the dataset root fails here)."""
    test_run_key_changes_exactly_with_the_fields_that_change_a_result.hypothesis.inner_test(
        ((path, data.draw(FIELDS[path][0], label=path)),))


def _schema_fields() -> set[str]:
    """Every field path of the suite schema, as the table above names them."""
    fields = {f"{name}" for name in Suite.model_fields}
    for prefix, model in (("dataset", DatasetConfig), ("schedule", ScheduleConfig), ("runtime", RuntimeConfig),
                          ("teachers.t", TeacherConfig), ("students.0", StudentConfig), ("methods.1", MethodConfig)):
        fields |= {f"{prefix}.{name}" for name in model.model_fields}
    from benchmark.suite import ReportConfig, ResourcesConfig

    fields |= {f"resources.{name}" for name in ResourcesConfig.model_fields}
    fields |= {f"report.{name}" for name in ReportConfig.model_fields}
    return fields - {"teachers.t", "students.0", "methods.1"}


def test_every_suite_field_is_classified():
    unclassified = sorted(_schema_fields() - set(FIELDS) - set(NOT_DRAWN))
    assert not unclassified, (f"suite fields with no entry in tests/test_run_key.py FIELDS: {unclassified}; add each "
                              "with the keys it must change (or an empty set if it changes no result)")
    assert typing.get_args(ScheduleConfig.model_fields["lr_schedule"].annotation) == ("poly", "cosine", "constant")


def test_explicit_defaults_are_the_same_run():
    """The key hashes the resolved configuration, not its spelling."""
    spelled = copy.deepcopy(BASE)
    spelled["dataset"].update(train_split="train", eval_split="val", selection_split="val", flip=True,
                              absent_class_policy="nan_excluded")
    spelled["dataset"]["options"]["seed"] = 0
    spelled["schedule"].update(momentum=0.9, weight_decay=1e-4, lr_schedule="poly", poly_power=0.9, optimizer="sgd")
    spelled["methods"][1]["hparams"].update(loss_weight=1.0, point="logits")
    spelled["students"][0]["teacher"] = "t"
    spelled["methods"][1] = {"components": [{"name": "kd", "hparams": spelled["methods"][1]["hparams"]}]}
    assert keys_of(spelled) == BASE_KEYS


def test_epochs_instead_of_iterations_and_another_dataset_are_other_runs():
    by_epochs = copy.deepcopy(BASE)
    by_epochs["schedule"].pop("iterations")
    by_epochs["schedule"]["epochs"] = 2
    by_epochs["teachers"]["t"]["schedule"] = {"iterations": 4, "epochs": None}
    keys = keys_of(by_epochs)
    assert keys[KD] != BASE_KEYS[KD] and keys[NONE] != BASE_KEYS[NONE]
    camvid = copy.deepcopy(BASE)
    camvid["dataset"] = {"name": "camvid", "root": "/data/CamVid", "crop": [32, 32]}
    camvid_keys = keys_of(camvid)
    assert all(camvid_keys[k] != BASE_KEYS[k] for k in ALL)
    camvid["dataset"]["root"] = "/elsewhere/CamVid"
    assert keys_of(camvid) == camvid_keys, "where CamVid lives is not part of the run"


def test_teacher_checkpoint_is_keyed_by_content_not_path(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "a.pt")
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "b.pt").write_bytes((tmp_path / "a.pt").read_bytes())
    torch.save({"w": torch.zeros(3)}, tmp_path / "other.pt")

    def with_checkpoint(path: Path, **teacher) -> dict:
        data = copy.deepcopy(BASE)
        data["teachers"]["t"] = {"model": "tiny_teacher", "checkpoint": str(path), **teacher}
        return keys_of(data)

    original = with_checkpoint(tmp_path / "a.pt")
    assert with_checkpoint(tmp_path / "moved" / "b.pt") == original
    assert with_checkpoint(tmp_path / "a.pt", schedule={"iterations": 99}) == original, (
        "a loaded teacher is not trained: its schedule changes nothing")
    other = with_checkpoint(tmp_path / "other.pt")
    assert other[TEACHER] != original[TEACHER] and other[KD] != original[KD] and other[NONE] == original[NONE]


@pytest.mark.parametrize("role", ["students", "teachers"])
def test_imagenet_weights_given_as_a_path_are_keyed_by_content_not_path(tmp_path, role):
    torch.save({"w": torch.ones(3)}, tmp_path / "a.pth")
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "b.pth").write_bytes((tmp_path / "a.pth").read_bytes())

    def with_weights(path: Path) -> dict:
        data = copy.deepcopy(BASE)
        if role == "students":
            data["students"][0]["options"] = {"pretrained": str(path)}
        else:
            data["teachers"]["t"]["options"] = {"pretrained": str(path)}
        return keys_of(data)

    original = with_weights(tmp_path / "a.pth")
    assert with_weights(tmp_path / "moved" / "b.pth") == original, "moving the weights file keeps every key"
    torch.save({"w": torch.zeros(3)}, tmp_path / "a.pth")  # other weights at the same path
    replaced = with_weights(tmp_path / "a.pth")
    changed = {TEACHER, KD} if role == "teachers" else {KD, NONE}
    assert {name for name in ALL if replaced[name] != original[name]} == changed


@pytest.mark.parametrize("change", ["order", "key"])
def test_components_of_a_combined_row(change):
    base = copy.deepcopy(BASE)
    base["methods"][1] = {"label": "kd+cwd", "components": [{"name": "kd"}, {"name": "cwd"}]}
    other = copy.deepcopy(base)
    if change == "order":  # the same loss terms summed in another order: the same run only if keyed so
        other["methods"][1]["components"].reverse()
        assert keys_of(other)[KD] != keys_of(base)[KD]
    else:
        other["methods"][1]["components"][1]["hparams"] = {"temperature": 1.0}
        assert keys_of(other)[KD] != keys_of(base)[KD] and keys_of(other)[NONE] == keys_of(base)[NONE]
