"""Malformed suites: each gets one clear message naming the file, the key path and what was expected,
exit code 2, and no traceback, before anything runs."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from benchmark.__main__ import main
from benchmark.suite import SuiteError, expand, load_suite

VALID = {
    "name": "mini",
    "dataset": {"name": "synthetic", "crop": [32, 32], "options": {"image_size": 32, "num_train": 16,
                                                                   "num_val": 8}},
    "schedule": {"iterations": 4, "batch_size": 4, "lr": 0.01},
    "teachers": {"t": {"model": "tiny_teacher"}},
    "students": [{"model": "tiny_student"}],
    "methods": [{"name": "none"}, {"name": "kd", "hparams": {"temperature": 4.0}}],
    "seeds": [0],
}


def write(tmp_path, data, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def mutate(change):
    data = copy.deepcopy(VALID)
    change(data)
    return data


MALFORMED = [
    ("unknown top-level key", mutate(lambda d: d.update(sedes=[0])), ["sedes", "unknown key"]),
    ("negative lr", mutate(lambda d: d["schedule"].update(lr=-0.1)), ["schedule", "lr must be > 0"]),
    ("seeds not integers", mutate(lambda d: d.update(seeds=[0, "one"])), ["seeds[1]", "integer"]),
    ("float seed", mutate(lambda d: d.update(seeds=[1.5])), ["seeds[0]", "integer"]),
    ("unknown method", mutate(lambda d: d["methods"].append({"name": "kdd"})),
     ["methods[2]", "unknown method 'kdd'", "did you mean 'kd'"]),
    ("unknown model", mutate(lambda d: d["students"][0].update(model="tiny_studnet")),
     ["students[0]", "unknown model 'tiny_studnet'"]),
    ("unknown dataset", mutate(lambda d: d["dataset"].update(name="cityscape")),
     ["dataset.name", "unknown dataset 'cityscape'"]),
    ("crop larger than allowed", mutate(lambda d: d["dataset"].update(crop=[2048, 64])),
     ["dataset", "crop [2048, 64] is larger"]),
    ("wrong type", mutate(lambda d: d["schedule"].update(batch_size="eight")), ["schedule.batch_size", "integer"]),
    ("unknown hyperparameter", mutate(lambda d: d["methods"][1]["hparams"].update(temprature=2.0)),
     ["methods[1]", "no hyperparameter 'temprature'"]),
    ("hyperparameter of wrong type", mutate(lambda d: d["methods"][1]["hparams"].update(temperature="hot")),
     ["methods[1]", "'temperature': expected a number"]),
    ("both iterations and epochs", mutate(lambda d: d["schedule"].update(epochs=3)),
     ["schedule", "exactly one of `iterations` or `epochs`"]),
    ("missing key", mutate(lambda d: d.pop("schedule")), ["schedule", "required key is missing"]),
    ("duplicate seeds", mutate(lambda d: d.update(seeds=[1, 1])), ["seeds must be distinct"]),
    ("unknown teacher of a student", mutate(lambda d: d["students"][0].update(teacher="big")),
     ["students[0].teacher 'big'"]),
    ("bad lr schedule", mutate(lambda d: d["schedule"].update(lr_schedule="step")),
     ["schedule.lr_schedule", "'poly', 'cosine' or 'constant'"]),
    ("momentum out of range", mutate(lambda d: d["schedule"].update(momentum=1.5)), ["momentum must be in [0, 1)"]),
    ("unknown model option", mutate(lambda d: d["students"][0].update(options={"output_strid": 8})),
     ["students[0]", "unknown option 'output_strid'"]),
    ("claim out of range", mutate(lambda d: d.update(claims=[{"student": "tiny_student", "method": "kd",
                                                             "miou": 170.0, "source": "x"}])),
     ["claims[0].miou", "percentages"]),
    ("claim with neither miou nor miou_delta",
     mutate(lambda d: d.update(claims=[{"student": "tiny_student", "method": "kd", "source": "x"}])),
     ["claims[0]", "`miou` (absolute), `miou_delta` (gain over the `none` row) or both"]),
    ("claimed gain out of range",
     mutate(lambda d: d.update(claims=[{"student": "tiny_student", "method": "kd", "miou_delta": 120.0,
                                        "source": "x"}])),
     ["claims[0].miou_delta", "[-100, 100]"]),
    ("not a mapping", "- just\n- a list\n", ["expected a mapping"]),
    ("invalid yaml", "name: [unclosed\n", ["not valid YAML"]),
    ("python tag (no code in config)", "name: !!python/object/apply:os.system ['true']\n", ["not valid YAML"]),
]


@pytest.mark.parametrize("label,data,expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_suite_exits_2_with_one_clear_message(tmp_path, capsys, label, data, expected):
    path = write(tmp_path, data)
    results = tmp_path / "results"
    code = main(["run", str(path), "--results", str(results), "--reports", str(tmp_path / "reports")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert str(path) in err, err
    for fragment in expected:
        assert fragment in err, f"{label}: {fragment!r} not in {err!r}"
    assert not results.exists(), "nothing may be written for a suite that fails validation"


def test_valid_suite_expands_to_student_method_seed_grid(tmp_path):
    data = mutate(lambda d: d.update(seeds=[0, 1]))
    suite = load_suite(write(tmp_path, data)).parts[0]
    runs, _ = expand(suite)
    assert len(runs) == 1 * 2 * 2
    assert len({r.key for r in runs}) == 4
    assert [r.needs_teacher for r in runs] == [False, False, True, True]
    kd = next(r for r in runs if r.method_label == "kd")
    assert kd.config["method"]["components"][0]["hparams"] == {"temperature": 4.0, "loss_weight": 1.0, "point": "logits"}


def test_run_key_ignores_paths_and_workers_but_not_hyperparameters(tmp_path):
    """(The property over every field is tests/test_run_key.py.)"""
    camvid = {"name": "camvid", "root": "/data/CamVid", "crop": [32, 32]}
    base = load_suite(write(tmp_path, mutate(lambda d: d.update(dataset=camvid)))).parts[0]
    moved = load_suite(write(tmp_path, mutate(lambda d: d.update(dataset={**camvid, "root": "~/elsewhere/CamVid"},
                                                                runtime={"num_workers": 3})), "b.yaml")).parts[0]
    changed = load_suite(write(tmp_path, mutate(lambda d: (d.update(dataset=camvid),
                                                           d["methods"][1]["hparams"].update(temperature=2.0))),
                               "c.yaml")).parts[0]
    keys = lambda s: {r.method_label: r.key for r in expand(s)[0]}
    assert base.dataset.root != moved.dataset.root and base.runtime != moved.runtime
    assert keys(base) == keys(moved)
    assert keys(base)["kd"] != keys(changed)["kd"] and keys(base)["none"] == keys(changed)["none"]


def test_extends_and_overrides(tmp_path):
    write(tmp_path, mutate(lambda d: d.pop("name")), "base.yaml")
    child = write(tmp_path, {"extends": "base.yaml", "name": "child", "schedule": {"lr": 0.5}}, "child.yaml")
    suite = load_suite(child, overrides=["schedule.iterations=7", "seeds=[3, 4]"]).parts[0]
    assert suite.name == "child" and suite.schedule.lr == 0.5 and suite.schedule.batch_size == 4
    assert suite.schedule.iterations == 7 and suite.seeds == [3, 4]


def test_extends_merges_mappings_deeply_and_replaces_lists(tmp_path):
    """A recipe's nested settings survive a child that sets one key beside them; lists are replaced whole; the base
    file is not modified by the merge (two children of one recipe see the same recipe)."""
    base = mutate(lambda d: (d.pop("name"), d["dataset"].update(scale_range=[0.5, 2.0], flip=False)))
    write(tmp_path, base, "recipe.yaml")
    write(tmp_path, {"extends": "recipe.yaml", "dataset": {"options": {"num_val": 4}}, "seeds": [7]}, "middle.yaml")
    child = write(tmp_path, {"extends": "middle.yaml", "name": "child", "dataset": {"crop": [16, 16]},
                             "methods": [{"name": "kd"}]}, "child.yaml")
    suite = load_suite(child).parts[0]
    assert suite.dataset.crop == (16, 16) and suite.dataset.scale_range == (0.5, 2.0) and suite.dataset.flip is False
    assert suite.dataset.options == {"image_size": 32, "num_train": 16, "num_val": 4}
    assert [m.name for m in suite.methods] == ["kd"] and suite.seeds == [7]
    sibling = write(tmp_path, {"extends": "recipe.yaml", "name": "sibling"}, "sibling.yaml")
    assert load_suite(sibling).parts[0].dataset.options == VALID["dataset"]["options"]
    cycle = write(tmp_path, {"extends": "cycle.yaml", "name": "c"}, "cycle.yaml")
    with pytest.raises(SuiteError, match="cycle"):
        load_suite(cycle)


@pytest.mark.parametrize("override,check", [
    ("schedule.iterations=12", lambda s: s.schedule.iterations == 12),
    ("schedule.lr=5e-3", lambda s: s.schedule.lr == 0.005),
    ("dataset.options.num_val=3", lambda s: s.dataset.options == {"image_size": 32, "num_train": 16, "num_val": 3}),
    ("dataset.eval_size=[24, 40]", lambda s: s.dataset.eval_size == (24, 40)),
    ("dataset.eval_size=null", lambda s: s.dataset.eval_size is None),
    ("runtime.num_workers=2", lambda s: s.runtime.num_workers == 2),
    ("teachers.t.schedule.iterations=3", lambda s: s.teacher_schedule("t").iterations == 3),
    ("seeds=[5]", lambda s: s.seeds == [5]),
])
def test_set_overrides_one_key_with_a_yaml_value(tmp_path, override, check):
    suite = load_suite(write(tmp_path, VALID), overrides=[override]).parts[0]
    assert check(suite)
    assert suite.students == load_suite(write(tmp_path, VALID, "again.yaml")).parts[0].students


@pytest.mark.parametrize("override,fragment", [("schedule.iterations", "expected KEY.PATH=VALUE"),
                                               ("schedule.lr=[1, 2", "not valid YAML")])
def test_a_malformed_override_is_refused(tmp_path, override, fragment):
    with pytest.raises(SuiteError, match=re.escape(fragment)):
        load_suite(write(tmp_path, VALID), overrides=[override])


def test_include_rejects_a_cell_defined_twice(tmp_path, capsys):
    write(tmp_path, mutate(lambda d: d.update(table={"title": "Table 1"})), "a.yaml")
    write(tmp_path, mutate(lambda d: d.update(name="b", table={"title": "Table 1"})), "b.yaml")
    collection = write(tmp_path, {"name": "all", "include": ["a.yaml", "b.yaml"]}, "all.yaml")
    assert main(["plan", str(collection), "--results", str(tmp_path / "r")]) == 2
    assert "defined twice" in capsys.readouterr().err
