"""The command line never misleads: claims checked at the door, exit codes, file permissions, runs that leave their
protocol marked in records and every report format, ``eval``, ``--set`` list indices, messages (issue 15)."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.__main__ import main
from benchmark.store import atomic_write_bytes, load_records
from benchmark.suite import SuiteError, expand, load_suite
from tests.test_runner import MINI as RUNNER_MINI
from tests.test_runner import write_suite

ROOT = Path(__file__).resolve().parent.parent

#: The runner's tiny suite, with a claim for its kd row and one for a method it does not run.
MINI = {**RUNNER_MINI, "claims": [
    {"student": "tiny_student", "method": "kd", "miou": 42.0, "source": "made up for a test"},
    {"student": "tiny_student", "method": "SKD", "not_implemented": True, "miou": 41.0, "source": "made up for a test"}]}


def cli(folder: Path, *argv: str) -> int:
    return main([*argv, "--results", str(folder / "results")]
                + (["--reports", str(folder / "reports")] if argv[0] == "run" else []))


def subprocess_cli(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "benchmark", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False, **kwargs)


# --- claims validated at the door -------------------------------------------------------------------------------


def _claim(**fields) -> dict:
    return {"student": "tiny_student", "method": "kd", "miou": 42.0, "source": "made up", **fields}


@pytest.mark.parametrize(("claims", "expected"), [
    ([_claim(method="cwd")], "claims[0].method: 'cwd' is not a row of this suite"),
    ([_claim(student="tiny_studnet")], ("claims[0].student: 'tiny_studnet' is not a student of this suite; "
                                        "did you mean 'tiny_student'?")),
    ([_claim(method="KD")], "claims[0].method: 'KD' is not a row of this suite; did you mean 'kd'?"),
    ([_claim(miou=0.62)], "claims[0].miou: 0.62 looks like a fraction"),
    ([_claim(), _claim(miou=43.0)], "claims[1]: claims the same cell as claims[0]"),
    ([_claim(not_implemented=True)], "claims[0].method: 'kd' is a row of this suite; remove `not_implemented"),
], ids=["method-not-a-row", "student-typo", "label-case", "fraction", "same-cell", "implemented-marked-not"])
@pytest.mark.parametrize("command", ["plan", "run", "status"])
def test_a_claim_mistake_exits_2_naming_file_and_key_before_anything_is_written(tmp_path, capsys, claims, expected,
                                                                               command):
    path = write_suite(tmp_path, {**MINI, "claims": claims})
    assert cli(tmp_path, command, str(path)) == 2
    err = capsys.readouterr().err
    assert f"{path}: {expected}" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()


def test_a_claimed_row_we_do_not_implement_is_written_explicitly():
    suite = load_suite(ROOT / "suites" / "cirkd_readme_cityscapes.yaml").parts[0]
    dsd = [c for c in suite.claims if c.method == "DSD"]
    assert dsd and all(c.not_implemented for c in dsd)
    assert all(c.method in {m.row_label for m in suite.methods} for c in suite.claims if not c.not_implemented)


def test_claims_orphaned_by_set_say_how_to_try_without_them(tmp_path):
    path = write_suite(tmp_path, MINI)
    with pytest.raises(SuiteError, match=r"(?s)claims\[0\]\.student.*\n\(.*add --set claims=\[\]\)"):
        load_suite(path, ["students=[{model: tiny_student_narrow}]"])
    assert load_suite(path, ["students=[{model: tiny_student_narrow}]", "claims=[]"]).parts[0].claims == []


# --- --set and messages -------------------------------------------------------------------------------------------


def test_set_indexes_lists_and_refuses_an_index_out_of_range(tmp_path):
    path = write_suite(tmp_path, MINI)
    suite = load_suite(path, ["methods.1.hparams.temperature=2.0"]).parts[0]
    assert suite.methods[1].hparams == {"temperature": 2.0}
    with pytest.raises(SuiteError, match=r"index 2 is out of range: methods has 2 item\(s\) \(0 to 1\)"):
        load_suite(path, ["methods.2.hparams.temperature=2.0"])
    with pytest.raises(SuiteError, match="methods is a list; index it by position"):
        load_suite(path, ["methods.kd.hparams.temperature=2.0"])


@pytest.mark.parametrize(("override", "expected"), [
    ("methods.1.hparams.temprature=2.0", "has no hyperparameter 'temprature'; did you mean 'temperature'"),
    ("schedule.iteratons=3", "schedule.iteratons: unknown key; did you mean 'iterations'"),
    ("teachers.t.schedul={}", "teachers.t.schedul: unknown key; did you mean 'schedule'"),
    ("dataset.options.image_sise=32", "unknown option 'image_sise' for dataset synthetic; did you mean 'image_size'"),
    ("students.0.options.pretraned=false", ("unknown option 'pretraned' for model tiny_student; did you mean "
                                            "'pretrained'")),
])
def test_misspelled_keys_hyperparameters_and_options_get_did_you_mean(tmp_path, override, expected):
    with pytest.raises(SuiteError, match=expected):
        load_suite(write_suite(tmp_path, MINI), [override])


def test_messages_name_paths_resolved_and_absolute(tmp_path, monkeypatch, capsys):
    write_suite(tmp_path, {**MINI, "claims": [_claim(method="cwd")]})
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "mini.yaml"]) == 2
    assert f"error: {tmp_path / 'mini.yaml'}: claims[0]" in capsys.readouterr().err
    assert main(["report", "nowhere"]) == 2
    assert f"{tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err


def test_data_check_without_a_root_uses_the_readme_location(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "check", "camvid"]) == 1
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert f"default location data/CamVid ({tmp_path / 'data' / 'CamVid'})" in output
    assert f"root {tmp_path / 'data' / 'CamVid'} is not a directory" in output
    assert "at None" not in output and "data.root" not in output and "dataset.root" in output


def test_help_texts_are_plain_text_and_version_names_the_commit(capsys):
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    text = capsys.readouterr().out
    assert "Check a dataset copy" in text and "``" not in text and ":func:" not in text
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("segkd-bench ")


def test_models_uses_each_models_own_class_count(capsys):
    assert main(["models", "deeplabv3plus_mbv2", "tiny_student", "--size", "32", "32"]) == 0
    out = capsys.readouterr().out
    assert "deeplabv3plus_mbv2 (21 classes)" in out and "tiny_student (19 classes)" in out
    assert "logits                      21 channels" in out


# --- exit codes -------------------------------------------------------------------------------------------------


def test_unknown_model_in_models_exits_2_without_a_traceback():
    result = subprocess_cli("models", "resnet18")
    assert result.returncode == 2, result.stderr
    assert "unknown model 'resnet18'; did you mean" in result.stderr and "Traceback" not in result.stderr


def test_a_closed_pipe_ends_quietly():
    suite = str(ROOT / "suites" / "paper_tables.yaml")
    shell = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m benchmark plan {suite} | head -1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert shell.stdout.startswith("suite paper_tables") and shell.stdout.count("\n") == 1
    assert "Traceback" not in shell.stderr and "BrokenPipeError" not in shell.stderr, shell.stderr
    assert shell.returncode in (0, 141)
    # Deterministically: the reader is gone before the first line is written.
    process = subprocess.Popen([sys.executable, "-m", "benchmark", "list"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 141 and stderr == "", stderr


def test_a_failed_run_makes_run_exit_1_and_names_it_and_its_log(tmp_path, capsys):
    data = {**MINI, "teachers": {}, "methods": [{"name": "none"}], "claims": [],
            "schedule": {**MINI["schedule"], "lr": 1e30, "iterations": 2, "eval_every": 0}}
    assert cli(tmp_path, "run", str(write_suite(tmp_path, data))) == 1
    out = capsys.readouterr().out
    _, finished, unfinished = load_records(tmp_path / "results" / "mini")
    assert not finished and unfinished[0]["status"] == "failed"
    log = tmp_path / "results" / "mini" / "runs" / unfinished[0]["run_key"] / "train.log"
    summary = out.split("1 run(s) failed:")[1]
    assert "mini: tiny_student / none / seed 0: NonFiniteLossError" in summary and f"(log: {log})" in summary


def test_a_failed_run_makes_run_exit_1_with_the_local_executor_too(tmp_path, capsys):
    data = {**MINI, "teachers": {}, "methods": [{"name": "none"}], "claims": [],
            "schedule": {**MINI["schedule"], "lr": 1e30, "iterations": 2, "eval_every": 0}}
    assert cli(tmp_path, "run", str(write_suite(tmp_path, data)), "--executor", "local", "--workers", "1") == 1
    out = capsys.readouterr().out
    key = load_records(tmp_path / "results" / "mini")[2][0]["run_key"]
    summary = out.split("1 run(s) failed:")[1]
    assert "mini: tiny_student / none / seed 0: " in summary and "non-finite loss" in summary
    assert f"(log: {tmp_path / 'results' / 'mini' / 'runs' / key / 'train.log'})" in summary


# --- files readable as the umask says -------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_and_locks_keep_the_umask_permissions(tmp_path, umask, mode):
    from benchmark import lock

    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a" / "metrics.json", b"{}")
        token = lock.acquire(tmp_path / "a" / "lock")
        lock_mode = stat.S_IMODE((tmp_path / "a" / "lock").stat().st_mode)
        lock.release(tmp_path / "a" / "lock", token)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a" / "metrics.json").stat().st_mode) == mode
    assert lock_mode == mode
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["metrics.json"], "no temporary file is left behind"


# --- protocol deviations, eval: one trained suite ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """MINI run as its file states it, then again with --set schedule.iterations=4, under umask 022."""
    folder = tmp_path_factory.mktemp("cli")
    suite = write_suite(folder, MINI)
    previous = os.umask(0o022)
    try:
        assert cli(folder, "run", str(suite)) == 0
        assert cli(folder / "set", "run", str(suite), "--set", "schedule.iterations=4") == 0
    finally:
        os.umask(previous)
    return folder, suite


def test_files_written_under_umask_022_are_readable_by_others(trained):
    folder, _ = trained
    written = [p for p in (folder / "results").rglob("*") if p.is_file() and ".submitit" not in p.parts]
    written += [p for p in (folder / "reports").rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"metrics.json", "config.yaml", "checkpoint.pt", "model.pt", "suite.json", "index.html", "tables.csv"} <= names
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written
            if stat.S_IMODE(p.stat().st_mode) != 0o644} == {}


def test_a_set_run_on_a_suite_with_claims_is_marked_off_protocol_everywhere(trained):
    folder, suite = trained
    results, reports = folder / "set" / "results" / "mini", folder / "set" / "reports" / "mini"
    _, finished, _ = load_records(results)
    kd = next(r for r in finished if r["method"] == "kd")
    assert kd["protocol_deviations"] == [{"setting": "schedule.iterations", "reference": 6, "ran": 4, "by": "--set"}]
    assert kd["protocol_reference"] == f"suite file {suite}"
    text = "schedule.iterations 6 → 4 (--set)"
    rows = {r["method"]: r for r in csv.DictReader((reports / "tables.csv").open())}
    assert rows["kd"]["status_kind"] == "off protocol" and rows["kd"]["status"].startswith("off protocol: ")
    assert rows["kd"]["protocol_deviations"] == text
    assert rows["SKD"]["status"] == "not reproduced: method not implemented" and not rows["SKD"]["protocol_deviations"]
    runs = list(csv.DictReader((reports / "results.csv").open()))
    assert {r["protocol_deviations"] for r in runs} == {text}
    markdown = (reports / "tables.md").read_text()
    assert "‡ kd / tiny\\_student: off protocol, not a reproduction" in markdown and text in markdown
    latex = (reports / "tables.tex").read_text()
    assert r"$^{\ddagger}$: off protocol, not a reproduction: " in latex
    assert r"schedule.iterations 6 $\rightarrow$ 4 (-{}-set)" in latex
    page = (reports / "index.html").read_text()
    assert 'class="off-protocol" title="off protocol: schedule.iterations 6 → 4 (--set)"' in page
    body = page.split("</style>")[1]
    assert "‡ kd / tiny_student: off protocol, not a reproduction" in body
    assert "status-off-protocol" in body and "status-reproduced" not in body
    # The same suite as its file states it: nothing is marked, the claim is compared as usual.
    plain = {r["method"]: r for r in csv.DictReader((folder / "reports" / "mini" / "tables.csv").open())}
    assert plain["kd"]["status_kind"] == "below claim" and not plain["kd"]["protocol_deviations"]
    assert "‡" not in (folder / "reports" / "mini" / "tables.md").read_text()
    assert "off-protocol" not in (folder / "reports" / "mini" / "index.html").read_text().split("</style>")[1]


def test_train_log_writes_miou_in_percent(trained):
    folder, _ = trained
    _, finished, _ = load_records(folder / "results" / "mini")
    record = next(r for r in finished if r["method"] == "kd")
    log = (folder / "results" / "mini" / "runs" / record["run_key"] / "train.log").read_text()
    assert f"final val mIoU {100 * record['final']['miou']:.2f}%" in log


def test_eval_on_a_trained_teacher_reproduces_its_record(trained, capsys):
    folder, suite = trained
    teacher = next((folder / "results" / "mini" / "teachers").iterdir())
    stored = json.loads((teacher / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(suite), "--checkpoint", str(teacher / "model.pt"), "--results",
                 str(folder / "results"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["role"] == "eval" and record["model"] == "tiny_teacher"
    assert record["precision"] == {"eval": stored["precision"]["eval"]} == {"eval": "fp32"}
    assert record["final"]["split"] == stored["final"]["split"] == "val"
    assert record["final"]["miou"] == pytest.approx(stored["final"]["miou"], abs=1e-12)
    assert record["final"]["per_class_iou"] == pytest.approx(stored["final"]["per_class_iou"], abs=1e-12, nan_ok=True)
    assert record["checkpoint"]["sha256"] and record["cost"]["params"] == stored["cost"]["params"]
    path = folder / "results" / "mini" / "evals" / record["eval_key"] / "metrics.json"
    assert json.loads(path.read_text())["final"] == record["final"]
    # Evaluated once: the record is shown again, not overwritten; runs and the report do not see it.
    mtime = path.stat().st_mtime_ns
    assert main(["eval", str(suite), "--checkpoint", str(teacher / "model.pt"), "--results",
                 str(folder / "results")]) == 0
    out = capsys.readouterr().out
    assert f"val: mIoU {100 * stored['final']['miou']:.2f}" in out and "evaluated before" in out
    assert path.stat().st_mtime_ns == mtime
    assert len(load_records(folder / "results" / "mini")[1]) == 2
    # A checkpoint the model cannot load is bad input, named, with no traceback.
    assert main(["eval", str(suite), "--checkpoint", str(teacher / "model.pt"), "--model", "tiny_student",
                 "--results", str(folder / "results")]) == 2
    assert "model tiny_student does not match" in capsys.readouterr().err


# --- protocol deviations: what counts, against what ----------------------------------------------------------------


RECIPE = {
    "dataset": MINI["dataset"],
    "schedule": MINI["schedule"],
    "teachers": MINI["teachers"],
    "seeds": [0],
    "protocol": {"name": "mini", "title": "a made-up recipe", "code": "none",
                 "facts": {"iterations": {"value": 6, "setting": "schedule.iterations", "source": "made up"}}},
}


def _deviations(path: Path, overrides: list[str] | None = None) -> dict[tuple[str, str], list[dict]]:
    suite = load_suite(path, overrides).parts[0]
    return {(run.method_label, run.student): run.protocol_deviations for run in expand(suite)[0]}


def test_a_suite_leaving_its_recipe_is_marked_and_runtime_settings_are_not_protocol(tmp_path):
    write_suite(tmp_path, RECIPE, "recipe.yaml")
    suite = {"extends": "recipe.yaml", "name": "mini", "students": MINI["students"], "methods": MINI["methods"],
             "schedule": {"lr": 0.02, "log_every": 3, "checkpoint_every": 2}, "runtime": {"num_workers": 2}}
    path = write_suite(tmp_path, suite)
    found = _deviations(path, ["schedule.iterations=4", "teachers.t.model=tiny_student", "methods.1.hparams.temperature=4"])
    assert load_suite(path).parts[0].protocol_reference == f"recipe {tmp_path / 'recipe.yaml'}"
    common = [{"setting": "schedule.lr", "reference": 0.01, "ran": 0.02, "by": "suite file"},
              {"setting": "schedule.iterations", "reference": 6, "ran": 4, "by": "--set", "fact": "iterations"}]
    assert sorted(found[("none", "tiny_student")], key=str) == sorted(common, key=str)  # no teacher, no kd row
    kd = {d["setting"]: d for d in found[("kd", "tiny_student")]}
    assert set(kd) == {"schedule.lr", "schedule.iterations", "teachers.t.model", "methods.1.hparams.temperature"}
    assert kd["methods.1.hparams.temperature"] == {"setting": "methods.1.hparams.temperature", "reference": 1.0,
                                                   "ran": 4, "by": "--set"}
    # The teacher's own iterations (4) stay; its lr follows the suite's and is listed once, as schedule.lr.
    assert not any(key.startswith("teachers.t.schedule") for key in kd)


def test_no_deviation_without_a_reference_or_for_the_same_weights_under_another_path(tmp_path):
    assert _deviations(write_suite(tmp_path, {**MINI, "claims": []}), ["schedule.iterations=4"]) == {
        ("none", "tiny_student"): [], ("kd", "tiny_student"): []}  # no recipe, no claims: nothing to leave
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"same bytes")
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "w.pt").write_bytes(b"same bytes")
    data = {**MINI, "students": [{"model": "tiny_student", "checkpoint": str(weights)}]}
    path = write_suite(tmp_path, data)
    assert not any(_deviations(path, [f"students.0.checkpoint={tmp_path / 'copy' / 'w.pt'}"]).values())
    (tmp_path / "copy" / "w.pt").write_bytes(b"other bytes")
    changed = _deviations(path, [f"students.0.checkpoint={tmp_path / 'copy' / 'w.pt'}"])
    assert [d["setting"] for d in changed[("kd", "tiny_student")]] == ["students.0.checkpoint"]


def test_every_suite_loads_and_follows_its_recipe():
    for path in sorted((ROOT / "suites").glob("*.yaml")):
        for suite in load_suite(path).parts:
            assert not any(run.protocol_deviations for run in expand(suite)[0]), f"{path.name}: {suite.name}"
