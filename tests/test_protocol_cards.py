"""Protocol cards, docs/protocols.md, ``plan --preflight`` and ``plan --json`` over every suite file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from benchmark.__main__ import main
from benchmark.plan import run_preflight
from benchmark.preflight import PreflightError
from benchmark.protocols import recipe_cards, render_protocols
from benchmark.suite import SuiteError, expand, load_suite

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "suites"
RECIPES = SUITES / "recipes"
SUITE_FILES = sorted(p for p in SUITES.rglob("*.yaml") if RECIPES not in p.parents)
CARDS = {path.stem: card for path, card in recipe_cards(RECIPES)}
#: What every card a suite runs must state (issue 10's list of protocol facts).
REQUIRED_FACTS = {"model", "teacher", "teacher_mode", "train_split", "crop", "scales", "normalization",
                  "image_padding", "label_padding", "augmentation", "batch", "iterations", "lr", "lr_multipliers",
                  "schedule", "ce_reduction", "eval_size", "eval_split", "selection"}
DEEPLAB_XCEPTION_VOC = SUITES / "attnfd_table1_voc.yaml"


def _rel(path: Path) -> str:
    return str(path.relative_to(SUITES))


def _parts():
    for path in SUITE_FILES:
        if "include" not in yaml.safe_load(path.read_text()):
            for suite in load_suite(path).parts:
                yield path, suite


def _plan_json(path: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["plan", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# --- cards and docs -------------------------------------------------------------------------------------------------


def test_docs_protocols_md_is_generated_from_the_cards():
    assert (ROOT / "docs" / "protocols.md").read_text() == render_protocols(RECIPES), (
        "docs/protocols.md is stale: run `python -m benchmark protocols`")


def test_every_recipe_has_a_card_named_after_it_and_in_the_docs():
    text = (ROOT / "docs" / "protocols.md").read_text()
    assert set(CARDS) == {p.stem for p in RECIPES.glob("*.yaml")}
    for stem, card in CARDS.items():
        assert card.name == stem
        assert f"\n## {stem}\n" in text
        for fact in card.facts.values():
            assert fact.source.strip()


def test_cards_a_suite_runs_state_every_protocol_fact():
    for path, suite in _parts():
        if suite.protocol is None:
            continue
        missing = REQUIRED_FACTS - set(suite.protocol.facts)
        assert not missing, f"{_rel(path)}: card {suite.protocol.name} lacks {sorted(missing)}"


def test_every_claim_and_table_names_a_recipe_card():
    for path, suite in _parts():
        for claim in suite.claims:
            assert claim.protocol in CARDS, f"{_rel(path)}: claim {claim.student} / {claim.method}: {claim.protocol!r}"
        if suite.claims:
            assert suite.table.protocol == suite.protocol.name, _rel(path)


def test_code_sources_name_repository_at_commit_file_and_line():
    pattern = re.compile(r"[\w.-]+/[\w.-]+@[0-9a-f]{7}:[\w./-]+:\d+")
    for stem, card in CARDS.items():
        if card.code.startswith("none public"):
            continue
        for name, fact in card.facts.items():
            if "arXiv" in fact.source or "section" in fact.source:
                continue  # a paper's statement
            assert pattern.search(fact.source), f"{stem}.{name}: {fact.source!r} names no repository@commit:file:line"


def _mini_suite(tmp_path: Path, **changes) -> Path:
    data = {
        "name": "mini",
        "dataset": {"name": "synthetic", "crop": [32, 32], "options": {"image_size": 32}},
        "schedule": {"iterations": 2, "batch_size": 2, "lr": 0.01},
        "students": [{"model": "tiny_student"}], "methods": [{"name": "none"}], "seeds": [0],
        "protocol": {"name": "mini", "title": "a test card", "code": "example/repo@0123456",
                     "facts": {"crop": {"value": [32, 32], "setting": "dataset.crop", "source": "repo@0123456:a.py:1"},
                               "lr": {"value": 0.01, "setting": "schedule.lr", "source": "repo@0123456:a.py:2"}}},
    }
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_suite_contradicting_its_card_does_not_load(tmp_path):
    path = _mini_suite(tmp_path, **{"schedule.lr": 0.02})
    with pytest.raises(SuiteError, match=r"protocol.facts.lr: the card says 0.01 but schedule.lr is 0.02"):
        load_suite(path)


def test_an_override_leaves_the_card_and_the_record_says_what_ran(tmp_path):
    suite = load_suite(_mini_suite(tmp_path), ["schedule.lr=0.05"]).parts[0]
    facts = {f["fact"]: f for f in suite.protocol_record()["facts"]}
    assert facts["lr"]["ran"] == 0.05 and facts["lr"]["value"] == 0.01 and "ran" not in facts["crop"]


def test_a_fact_naming_no_suite_key_is_an_error(tmp_path):
    path = _mini_suite(tmp_path, **{"protocol.facts.lr.setting": "schedule.learning_rate"})
    with pytest.raises(SuiteError, match="schedule.learning_rate"):
        load_suite(path)


def test_a_table_naming_another_protocol_than_its_card_is_an_error(tmp_path):
    path = _mini_suite(tmp_path, table={"title": "T", "protocol": "other"})
    with pytest.raises(SuiteError, match="table.protocol 'other'"):
        load_suite(path)


# --- plan --json ----------------------------------------------------------------------------------------------------


def test_plan_json_on_attnfd_voc_runs_the_codes_protocol(capsys):
    runs = _plan_json(DEEPLAB_XCEPTION_VOC, capsys)["runs"]
    assert runs and {tuple(sorted(r)) for r in runs} == {("config", "key", "method", "seed", "student", "suite")}
    for run in runs:
        dataset, schedule_ = run["config"]["dataset"], run["config"]["schedule"]
        assert dataset["train_split"] == "train" and dataset["eval_size"] == 513
        assert schedule_["lr_schedule"] == "poly" and schedule_["nesterov"] is True
        assert schedule_["head_lr_mult"] == 10 and schedule_["ce_batch_average"] is True
    # config is exactly what config.yaml stores: yaml.safe_dump(run.config), read back
    expanded = {run.key: run.config for run in expand(load_suite(DEEPLAB_XCEPTION_VOC).parts[0])[0]}
    for run in runs:
        assert run["config"] == yaml.safe_load(yaml.safe_dump(expanded[run["key"]]))


CIRKD_SUITES = [p for p in SUITE_FILES if re.search(r"^extends: recipes/(cirkd|lgad|acfd)", p.read_text(), re.MULTILINE)]


@pytest.mark.parametrize("path", CIRKD_SUITES, ids=_rel)
def test_plan_json_on_cirkd_suites_feeds_bgr_mean_input(path, capsys):
    runs = _plan_json(path, capsys)["runs"]
    assert runs and all(r["config"]["dataset"]["normalization"] == "bgr_mean" for r in runs)
    assert all(r["config"]["schedule"]["head_lr_mult"] == 1 for r in runs)


# --- plan --preflight -----------------------------------------------------------------------------------------------


def _paired_suite(tmp_path: Path, name: str, teacher: dict, student: dict, methods: list[dict]) -> Path:
    suite = {"name": name, "dataset": {"name": "synthetic", "crop": [32, 32], "options": {"image_size": 32}},
             "schedule": {"iterations": 2, "batch_size": 2, "lr": 0.01}, "teachers": {"teacher": teacher},
             "students": [student], "methods": methods, "seeds": [0]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.parametrize("path", SUITE_FILES, ids=_rel)
def test_preflight_builds_every_pairing_of_every_suite(path):
    """Every model (no weights, meta device) and every method on the students and teachers it is paired with."""
    run_preflight(load_suite(path), echo=lambda line: None)


def test_preflight_names_suite_row_and_the_point_a_student_lacks(tmp_path, capsys):
    # PSPNet's pyramid pooling ends in a concat: it declares no encoder:pre_relu point.
    path = _paired_suite(tmp_path, "bad_points", {"model": "deeplabv3_r101"}, {"model": "pspnet_r18"},
                         [{"name": "none"}, {"name": "attnfd", "label": "AttnFD",
                                             "hparams": {"points": ["encoder:pre_relu"]}}])
    capsys.readouterr()
    assert main(["plan", str(path), "--preflight", "--results", str(tmp_path / "results")]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and "suite bad_points" in error
    assert "methods[1] (AttnFD) on students[0] (pspnet_r18)" in error and "encoder:pre_relu" in error
    with pytest.raises(PreflightError):
        run_preflight(load_suite(path), echo=lambda line: None)


def test_preflight_lists_missing_weights_without_failing(tmp_path, capsys):
    path = _paired_suite(tmp_path, "weights", {"model": "deeplabv3_r101", "checkpoint": str(tmp_path / "absent.pth")},
                         {"model": "deeplabv3_r18", "options": {"pretrained": str(tmp_path / "absent-imagenet.pth")}},
                         [{"name": "kd"}])
    capsys.readouterr()
    assert main(["plan", str(path), "--preflight", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "WEIGHTS MISSING: teachers.teacher.checkpoint" in out and "absent-imagenet.pth" in out


# --- the report -----------------------------------------------------------------------------------------------------


def test_the_report_shows_each_tables_card_from_the_store_alone(tmp_path):
    from benchmark.report import render_report
    from benchmark.runner import make_plan, suite_record

    suite_file = load_suite(_mini_suite(tmp_path, table={"title": "Mini table", "protocol": "mini"}),
                            ["schedule.lr=0.05"])
    plan = make_plan(suite_file, tmp_path / "results")
    plan.store.root.mkdir(parents=True)
    plan.store.write_suite_record(suite_record(plan))
    page = render_report(plan.store.root, tmp_path / "reports" / "mini").read_text()
    card = page[page.index("Protocol card"):]
    assert "<code>mini</code>" in card and "a test card" in card and "example/repo@0123456" in card
    assert "repo@0123456:a.py:1" in card and "<code>dataset.crop</code>" in card
    assert "(ran 0.05)" in card and "lr ran 0.05 (card: 0.01)" in card  # the override is shown, not hidden


# --- the new keys are validated at the door -------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "message"), [
    ("dataset.scale_mode", "short_side", "scale_mode short_side needs `base_size`"),
    ("dataset.base_size", 513, "base_size applies only to scale_mode short_side"),
    ("dataset.scale_step", 0.4, "scale_step 0.4 must be > 0 and divide scale_range"),
    ("dataset.label_pad", 300, "label_pad must be a label value in 0..255"),
    ("dataset.label_pad", 40, "label_pad 40 is neither a class of synthetic"),
    ("dataset.normalization", "rgb", "dataset.normalization"),
    ("schedule.head_lr_mult", 0, "head_lr_mult must be > 0"),
    ("schedule.kd_forward", "extract", "schedule.kd_forward"),
])
def test_protocol_keys_are_checked(tmp_path, key, value, message):
    path = _mini_suite(tmp_path, **{key: value})
    with pytest.raises(SuiteError, match=re.escape(message)):
        load_suite(path)


def test_a_teacher_may_train_on_another_split_and_that_enters_only_its_key(tmp_path):
    base = {"teachers": {"t": {"model": "tiny_teacher"}}, "methods": [{"name": "none"}, {"name": "kd"}]}
    plain = load_suite(_mini_suite(tmp_path, **base)).parts[0]
    base["teachers"]["t"]["dataset"] = {"train_split": "val"}
    other = load_suite(_mini_suite(tmp_path, **base)).parts[0]
    (plain_runs, plain_teachers), (other_runs, other_teachers) = expand(plain), expand(other)
    assert other_teachers["t"].config["dataset"]["train_split"] == "val"
    assert plain_teachers["t"].key != other_teachers["t"].key
    assert other_runs[0].config["dataset"]["train_split"] == "train"  # the students' split is the suite's
    assert plain_runs[0].key == other_runs[0].key  # the baseline run does not depend on the teacher
    base["teachers"]["t"]["dataset"] = {"name": "camvid"}
    with pytest.raises(SuiteError, match="may not change"):
        load_suite(_mini_suite(tmp_path, **base))
