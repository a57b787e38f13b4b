"""Issue 14: seeds in recipes, paired tests with Holm's correction, minimal detectable effects, claim verdicts by
interval, summary.csv, ``plan``'s seeds and device-hours, and the equal-compute view end to end in miniature.

Records are written straight into a temporary store (the runner's field names) wherever the answer is known by hand;
only the equal-compute test trains (the smoke suite in miniature, a few seconds).
"""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from scipy import stats

from benchmark.__main__ import main
from benchmark.compute import COMPUTE_PROFILE, compute_view, measure_profile, pair_key, rounded
from benchmark.report import render_report
from benchmark.report import significance as S
from benchmark.report import tables as T
from benchmark.report.latex import tex
from benchmark.report.markdown import esc
from benchmark.suite import SuiteError, _compose, _read_yaml, expand, load_suite

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "suites" / "recipes"
SMOKE = ROOT / "suites" / "smoke.yaml"


# --- seeds ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_defaults_to_at_least_three_seeds(path):
    composed = _compose(path, _read_yaml(path), seen=(path.resolve(),))
    assert len(composed.get("seeds", [])) >= 3, f"{path.name}: seeds {composed.get('seeds')}"


def test_paper_suites_run_three_seeds_unless_they_say_fewer():
    for suite in load_suite(ROOT / "suites" / "paper_tables.yaml").parts:
        assert len(suite.seeds) >= 3, suite.name


# --- the statistics on their own --------------------------------------------------------------------------------


def test_holm_matches_a_hand_worked_step_down():
    # Sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to the running max 0.06.
    assert S.holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    # A method without a test is not in the family: the other two are adjusted as a family of two.
    adjusted = S.holm([0.04, math.nan, 0.01])
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.04) and adjusted[2] == pytest.approx(0.02)
    assert S.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert S.holm([]) == []


def _power(d: float, n: int, alpha: float = 0.05) -> float:
    """Two-sided paired t-test power at standardised effect d with n pairs: noncentral t, by scipy alone."""
    critical = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = d * math.sqrt(n)
    return stats.nct.sf(critical, n - 1, nc) + stats.nct.cdf(-critical, n - 1, nc)


@pytest.mark.parametrize("pairs", [2, 3, 5, 10])
def test_detectable_effect_has_80_percent_power_by_the_noncentral_t(pairs):
    sd = 0.7
    effect = S.detectable_effect(sd, pairs)
    assert _power(effect / sd, pairs) == pytest.approx(0.80, abs=1e-6)
    # Not the normal approximation (z_0.975 + z_0.8) / sqrt(n), which is too optimistic with few seeds.
    normal = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / math.sqrt(pairs) * sd
    assert effect > normal * 1.05
    assert math.isnan(S.detectable_effect(sd, 1)) and math.isnan(S.detectable_effect(math.nan, 3))


def test_seeds_to_resolve_is_the_fewest_that_detect_the_gain():
    sd, gain = 0.5, 0.6
    needed = S.seeds_to_resolve(gain, sd)
    assert S.detectable_effect(sd, needed) <= gain < S.detectable_effect(sd, needed - 1)
    assert S.seeds_to_resolve(-gain, sd) == needed  # a claimed loss is resolved the same way
    assert S.seeds_to_resolve(100.0, sd) == 2
    assert S.seeds_to_resolve(0.0, sd) is None and S.seeds_to_resolve(1e-4, sd) is None  # > MAX_SEEDS


def test_pooled_sd_weights_groups_by_their_degrees_of_freedom():
    a, b = [1.0, 2.0, 3.0], [0.0, 4.0]
    expected = math.sqrt((2 * stats.tvar(a) + 1 * stats.tvar(b)) / 3)
    assert S.pooled_sd([a, b, [5.0]]) == pytest.approx((expected, 3, 2))
    assert math.isnan(S.pooled_sd([[1.0], []])[0])


def test_paired_test_is_ttest_rel_over_common_seeds():
    method, base = {0: 71.0, 1: 72.5, 2: 70.0, 5: 99.0}, {0: 70.0, 1: 70.5, 2: 69.8}
    p, pairs = S.paired_test(method, base)
    assert pairs == 3 and p == pytest.approx(stats.ttest_rel([71.0, 72.5, 70.0], [70.0, 70.5, 69.8]).pvalue)
    assert S.paired_test({0: 71.0}, base) == (pytest.approx(math.nan, nan_ok=True), 1)


# --- a hand-made store: summary.csv against scipy and Holm ------------------------------------------------------

CLASSES = ["road", "car"]
#: Per-seed final mIoU in percent (written as fractions; exact in results.csv's six significant digits).
FINAL = {
    ("tab", "r18", "none"): {0: 70.0, 1: 70.5, 2: 71.0},
    ("tab", "r18", "kd"): {0: 71.5, 1: 71.75, 2: 72.75},
    ("tab", "r18", "cwd"): {0: 70.25, 1: 71.5, 2: 70.75},
    ("tab", "r18", "ifvd"): {1: 73.0},  # one common seed: no test, not in the Holm family
    ("tab", "mbv2", "none"): {0: 60.0, 1: 61.0, 2: 60.25},
    ("tab", "mbv2", "kd"): {0: 63.0, 1: 64.5, 2: 63.25},
    ("tab", "mbv2", "cwd"): {0: 59.5, 1: 60.5, 2: 60.25},
    ("tab", "mbv2", "ifvd"): {0: 60.5, 2: 60.0},
    ("one", "r18", "none"): {0: 50.0},
    ("one", "r18", "kd"): {0: 52.0},
}
BEST_BONUS = {"none": 0.25, "kd": 0.5, "cwd": 0.0, "ifvd": 0.75}
METHODS = ["none", "kd", "cwd", "ifvd"]


def record(part: str, student: str, method: str, seed: int, miou: float, iterations: int = 100,
           run_key: str | None = None, hours: float = 0.01) -> dict:
    best = miou + BEST_BONUS[method]
    return {
        "schema": 1, "role": "student", "suite": part, "table": f"Table {part}", "dataset": "camvid",
        "student": student, "teacher": None if method == "none" else "r101", "method": method,
        "method_components": [{"name": method, "hparams": {}}], "seed": seed,
        "run_key": run_key or f"{part}-{student}-{method}-{seed}", "status": "done", "class_names": CLASSES,
        "final": {"split": "test", "iteration": iterations, "miou": miou / 100, "pixel_accuracy": 0.9,
                  "per_class_iou": [miou / 100, miou / 100]},
        "best": {"selected_on": "val", "split": "test", "iteration": iterations, "miou": best / 100,
                 "pixel_accuracy": 0.9, "per_class_iou": [best / 100, best / 100]},
        "history": [], "iterations": iterations,
        "timing": {"wall_seconds": 3600 * hours, "device_hours": hours, "seconds_per_iteration": 36 * hours,
                   "device": "cuda:0", "world_size": 1},
        "cost": {"params": 1e6, "flops": 1e9, "flops_input_size": [360, 480], "method_params": 0},
        "environment": {"git_commit": "abc", "git_dirty": False, "versions": {}},
        "config": {"dataset": {"eval_split": "test", "crop": [360, 480]},
                   "schedule": {"iterations": iterations, "batch_size": 8}, "seed": seed},
    }


def write_record(root: Path, rec: dict) -> str:
    folder = root / "runs" / rec["run_key"]
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(rec))
    return rec["run_key"]


def part_record(name: str, students: list[str], seeds: list[int], run_keys: list[str], claims=(), compute=None):
    return {"name": name, "title": f"Table {name}",
            "table": {"title": f"Table {name}", "paper": "Doe 2025", "protocol": None, "source": "arXiv:2501.00001"},
            "description": "", "dataset": "camvid", "eval_split": "test", "selection_split": "val",
            "class_names": CLASSES, "students": students,
            "methods": [{"label": m, "components": [m]} for m in METHODS], "seeds": seeds,
            "claims": list(claims), "run_keys": run_keys, "compute": compute}


def claim(student, method, miou=None, delta=None, pm=None):
    return {"student": student, "method": method, "miou": miou, "miou_delta": delta, "miou_pm": pm,
            "pixel_accuracy": None, "source": "Table 1", "checkpoint": "last", "protocol": None,
            "eval_resolution": None, "note": None}


def hand_store(root: Path, claims=()) -> Path:
    keys: dict[str, list[str]] = {"tab": [], "one": []}
    for (part, student, method), values in FINAL.items():
        for seed, miou in values.items():
            keys[part].append(write_record(root, record(part, student, method, seed, miou)))
    suite = {"name": "hand", "description": "", "path": "suites/hand.yaml", "parts": [
        part_record("tab", ["r18", "mbv2"], [0, 1, 2], keys["tab"], claims),
        part_record("one", ["r18"], [0], keys["one"])]}
    (root / "suite.json").write_text(json.dumps(suite))
    return root


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    store = hand_store(tmp_path_factory.mktemp("results") / "hand")
    out = tmp_path_factory.mktemp("reports") / "hand"
    render_report(store, out)
    return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _number(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def _holm_by_hand(p_values: list[float]) -> list[float]:
    """Holm (1979): sort ascending, multiply the i-th smallest by (m − i), running maximum, cap at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def test_summary_p_values_are_ttest_rel_on_results_csv_and_holm_over_each_part_and_student(rendered):
    results = _read_csv(rendered / "results.csv")
    summary = _read_csv(rendered / "summary.csv")
    assert list(summary[0])[:16] == T.SUMMARY_COLUMNS
    assert {"n_best", "mean_best", "p_value_best", "p_holm_best", "mde_best", "correction"} <= set(summary[0])
    per_seed: dict[tuple, dict[int, float]] = {}
    for row in results:
        per_seed.setdefault((row["part"], row["student"], row["method"]), {})[int(row["seed"])] = float(
            row["final_miou"])
    rows = {(r["part"], r["student"], r["method"]): r for r in summary if r["view"] == "iterations"}
    assert len(rows) == len(summary) == 2 * 4 + 4  # every (part, student, method) the suite trains
    for (part, student) in (("tab", "r18"), ("tab", "mbv2")):
        base = per_seed[(part, student, "none")]
        expected = {}
        for method in METHODS[1:]:
            own = per_seed[(part, student, method)]
            seeds = sorted(set(own) & set(base))
            row = rows[(part, student, method)]
            assert int(row["n_pairs"]) == len(seeds)
            if len(seeds) < 2:
                assert row["p_value"] == "" and row["p_holm"] == "" and row["mde"] == ""
                continue
            p = stats.ttest_rel([own[s] for s in seeds], [base[s] for s in seeds]).pvalue
            assert _number(row["p_value"]) == pytest.approx(p, rel=1e-4)
            expected[method] = p
        holm = dict(zip(expected, _holm_by_hand(list(expected.values()))))
        for method, adjusted in holm.items():
            assert _number(rows[(part, student, method)]["p_holm"]) == pytest.approx(adjusted, rel=1e-4)
            assert rows[(part, student, method)]["significant"] == str(adjusted < 0.05)
    # r18: ifvd has one common seed, so the family is kd and cwd only.
    assert len([m for m in METHODS[1:] if rows[("tab", "r18", m)]["p_holm"]]) == 2
    assert rows[("tab", "r18", "none")]["p_value"] == ""  # the baseline is not tested against itself


def test_summary_means_gains_intervals_and_mde_match_the_tables(rendered):
    summary = {(r["part"], r["student"], r["method"]): r for r in _read_csv(rendered / "summary.csv")}
    kd, none = FINAL[("tab", "mbv2", "kd")], FINAL[("tab", "mbv2", "none")]
    diffs = [kd[s] - none[s] for s in sorted(kd)]
    row = summary[("tab", "mbv2", "kd")]
    mean, low, high, n = T.paired_ci(diffs)
    assert (_number(row["gain"]), _number(row["ci_low"]), _number(row["ci_high"])) == pytest.approx(
        (mean, low, high), rel=1e-5)
    assert _number(row["mean"]) == pytest.approx(sum(kd.values()) / 3, rel=1e-6)
    assert _number(row["std"]) == pytest.approx(stats.tstd(list(kd.values())), rel=1e-5)
    # MDE: the pooled sd of the paired differences over mbv2's methods, at each row's pairs.
    groups = [[FINAL[("tab", "mbv2", m)][s] - none[s] for s in sorted(FINAL[("tab", "mbv2", m)])]
              for m in METHODS[1:]]
    sd = S.pooled_sd(groups)[0]
    assert _number(row["mde"]) == pytest.approx(S.detectable_effect(sd, 3), rel=1e-5)
    assert _number(summary[("tab", "mbv2", "ifvd")]["mde"]) == pytest.approx(S.detectable_effect(sd, 2), rel=1e-5)
    # Best checkpoint: its own paired test (the best mIoU is final + a per-method bonus here).
    best = [kd[s] + BEST_BONUS["kd"] for s in sorted(kd)], [none[s] + BEST_BONUS["none"] for s in sorted(kd)]
    assert _number(row["p_value_best"]) == pytest.approx(stats.ttest_rel(*best).pvalue, rel=1e-4)
    # The same numbers in every format.
    markdown = (rendered / "tables.md").read_text()
    html = (rendered / "index.html").read_text()
    latex = (rendered / "tables.tex").read_text()
    gain = T.fmt_ci(mean, low, high, n)
    p = T.fmt_p(_number(row["p_value"]), _number(row["p_holm"]), row["significant"] == "True", 3, False)
    for text in (gain, p, f"{_number(row['mde']):.2f}"):
        assert esc(text) in markdown and text in html and tex(text) in latex, text


def test_headers_name_the_correction_the_detectable_effect_and_single_seed_tables(rendered):
    for name in ("index.html", "tables.md", "tables.tex"):
        text = (rendered / name).read_text().replace("\\_", "_")
        assert "Holm's step-down correction" in text or "Holm" in text, name
        assert "Single-seed table" in text, name  # part "one"
        assert "r18: " in text and "mIoU at 3 seeds" in text, name  # the MDE of part "tab"


def test_significant_only_after_correction(tmp_path):
    """mbv2 kd: p < 0.05 before and after Holm; a p just under 0.05 raw is not significant once adjusted."""
    view = T.collect(hand_store(tmp_path / "hand")).parts[0]
    cells = view.cells.set_index(["student", "method"])
    kd = cells.loc[("mbv2", "kd")]
    assert kd["p_value"] < 0.05 and kd["significant"] == (kd["p_holm"] < 0.05)
    for _, row in cells.iterrows():
        if row["significant"]:
            assert row["p_holm"] < 0.05
        if math.isfinite(row["p_value"]) and row["p_value"] < 0.05 <= row["p_holm"]:
            assert not row["significant"]


# --- claim verdicts ---------------------------------------------------------------------------------------------


def test_verdicts_use_the_interval_with_seeds_and_the_tolerance_with_one(tmp_path):
    none, kd = FINAL[("tab", "r18", "none")], FINAL[("tab", "r18", "kd")]
    _, low, high, _ = T.paired_ci(list(none.values()))
    kd_mean, _, kd_high, _ = T.paired_ci(list(kd.values()))
    claims = [claim("r18", "none", miou=(low + high) / 2 + 0.01),  # inside our interval
              claim("r18", "kd", miou=kd_high + 0.5),  # above it: we are below the claim
              claim("r18", "cwd", miou=10.0),  # far below it
              claim("mbv2", "kd", delta=30.0)]  # a claimed gain above the paired gain's interval
    view = T.collect(hand_store(tmp_path / "hand", claims)).parts[0]
    status = {(r["student"], r["method"]): (r["status"], r["status_kind"], r["status_rule"])
              for r in view.cells.to_dict("records")}
    assert status[("r18", "none")] == (f"reproduced: {T.IN_INTERVAL}", "reproduced", "interval")
    assert status[("r18", "kd")] == (f"below claim by {kd_high + 0.5 - kd_mean:.2f}: claim above our 95% interval",
                                     "below claim", "interval")
    assert status[("r18", "cwd")][1:] == ("above claim", "interval")
    assert status[("r18", "cwd")][0].endswith("claim below our 95% interval")
    assert status[("mbv2", "kd")][0].endswith("claimed gain above our 95% interval")
    assert status[("r18", "ifvd")][0] == "no claim (1 of 3 seeds)"


def test_single_seed_verdicts_use_the_tolerance_rule(tmp_path):
    claims = [claim("r18", "none", miou=50.5), claim("r18", "kd", miou=54.0)]
    store = hand_store(tmp_path / "hand")
    suite = json.loads((store / "suite.json").read_text())
    suite["parts"][1]["claims"] = claims
    (store / "suite.json").write_text(json.dumps(suite))
    view = T.collect(store).parts[1]
    status = {r["method"]: (r["status"], r["status_rule"]) for r in view.cells.to_dict("records") if r["n"]}
    assert status == {"none": (f"reproduced: {T.IN_TOLERANCE}", "tolerance"),
                      "kd": (f"below claim by 2.00: {T.OUT_OF_TOLERANCE}", "tolerance")}
    rows = T.rows_frame(T.collect(store))  # tables.csv
    assert set(rows[(rows["part"] == "one") & rows["method"].isin(["none", "kd"])]["status_rule"]) == {"tolerance"}


# --- plan: device-hours and the seeds a claimed gain needs ---------------------------------------------------------

PLAN_SUITE = {
    "name": "hand",
    "table": {"title": "Table tab"},
    "dataset": {"name": "synthetic", "crop": [32, 32], "scale_range": [1.0, 1.0],
                "options": {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 8}},
    "schedule": {"iterations": 8, "batch_size": 4, "lr": 0.01, "eval_every": 4, "eval_batch_size": 8,
                 "checkpoint_every": 4, "log_every": 2},
    "teachers": {"t": {"model": "tiny_teacher", "schedule": {"iterations": 4}}},
    "students": [{"model": "tiny_student"}],
    "methods": [{"name": "none"}, {"name": "kd"}],
    "seeds": [0, 1, 2],
    "report": {"qualitative_indices": []},
}


def test_plan_prints_seed_cost_flops_guess_and_the_seeds_each_claimed_gain_needs(tmp_path, capsys):
    suite_path = tmp_path / "hand.yaml"
    suite_path.write_text(yaml.safe_dump({**PLAN_SUITE, "name": "tab"}))
    # The store of a table that has run (hand-made records under the suite's name), with two claims.
    claims = [claim("r18", "none", miou=70.0), claim("r18", "kd", miou=71.2), claim("mbv2", "kd", delta=0.4)]
    hand_store(tmp_path / "results" / "tab", claims)
    assert main(["plan", str(suite_path), "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "FLOPs-based guess" in out and "at 3 seeds" in out and "per seed" in out
    assert "device-hours to train 1 teacher(s)" in out
    view = T.collect(tmp_path / "results" / "tab").parts[0]
    effects = {e["student"]: e for e in view.effects}
    for student, method, gain in (("r18", "kd", 71.2 - 70.0), ("mbv2", "kd", 0.4)):
        needed = S.seeds_to_resolve(gain, effects[student]["sd"])
        assert f"{student} / {method}: claimed {gain:+.2f}" in out
        assert f"{needed} seeds (sd {effects[student]['sd']:.2f}" in out


def test_plan_prices_every_run_without_a_measurement(capsys, tmp_path, monkeypatch):
    """Nothing measured: a FLOPs-based guess for every run, labelled as one, and how to measure."""
    monkeypatch.chdir(tmp_path)  # no dataset roots resolve: the plan must still price every run
    assert main(["plan", str(ROOT / "suites" / "cirkd_readme_camvid.yaml"), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("total: "))
    assert "device-hours for 0 from measured step times" in total
    assert "device-hours for 12 without one (FLOPs-based guess)" in total
    assert "plan" in out and "--profile" in out and "assumed 50 T multiply-adds/s" in out


# --- the equal-compute view ---------------------------------------------------------------------------------------

MINI = ["--set", "dataset.options={image_size: 32, num_train: 16, num_val: 8, num_test: 8}",
        "--set", "dataset.crop=[32, 32]", "--set", "schedule.iterations=8", "--set", "schedule.batch_size=4",
        "--set", "schedule.eval_every=4", "--set", "schedule.checkpoint_every=4", "--set", "schedule.log_every=2",
        "--set", "schedule.warmup_iterations=0", "--set", "teachers.teacher.schedule={iterations: 4}",
        "--set", "students=[{model: tiny_student}]", "--set", "methods=[{name: none}, {name: kd}]",
        "--set", "seeds=[0, 1]", "--set", "report={qualitative_indices: []}",
        "--set", "compare_at={budget: device_hours, profile_steps: 2}"]


def test_equal_compute_view_end_to_end_on_the_smoke_suite_in_miniature(tmp_path, capsys):
    results, reports = tmp_path / "results", tmp_path / "reports"
    args = ["--results", str(results), *MINI]
    assert main(["run", str(SMOKE), "--reports", str(reports), *args]) == 0
    out = capsys.readouterr().out
    assert "equal-compute view (equal device-hours): profiling 2 (student, teacher, method) pair(s)" in out
    profile_path = results / "smoke" / COMPUTE_PROFILE
    profile = json.loads(profile_path.read_text())
    assert len(profile) == 2 and {e["steps"] for e in profile.values()} == {2}
    suite = load_suite(SMOKE, MINI[1::2]).parts[0]
    runs = expand(suite)[0]
    none, kd = (next(r for r in runs if r.method_label == m) for m in ("none", "kd"))
    ratio = profile[pair_key(suite, none)]["seconds_per_iteration"] / profile[pair_key(suite, kd)]["seconds_per_iteration"]
    iterations = rounded(8 * ratio, 1)
    records = [json.loads(p.read_text()) for p in (results / "smoke" / "runs").glob("*/metrics.json")]
    derived = [r for r in records if "compute_budget" in r]
    if iterations == 8:  # kd as fast as none: its equal-compute runs are its ordinary ones
        assert not derived and len(records) == 4
    else:
        assert len(derived) == 2 and len(records) == 6
        for rec in derived:
            assert rec["method"] == "kd" and rec["iterations"] == iterations
            assert rec["config"]["schedule"]["iterations"] == iterations
            assert rec["compute_budget"]["reference"] == "none" and rec["compute_budget"]["iterations"] == iterations
            assert rec["compute_budget"]["profile"]["device"] == "cpu"
    suite_record = json.loads((results / "smoke" / "suite.json").read_text())["parts"][0]
    assert set(suite_record["compute"]["run_keys"]) >= {r.key for r in runs if r.method_label == "none"}
    assert suite_record["compute"]["iterations"]["tiny_student"] == {"none": 8, "kd": iterations}
    # Both views in the report, side by side, and in summary.csv.
    page = (reports / "smoke" / "index.html").read_text()
    assert "equal iterations vs equal device-hours" in page and "The paper compares at equal iterations" in page
    assert "equal iterations vs equal device-hours" in (reports / "smoke" / "tables.md").read_text()
    views = {r["view"] for r in _read_csv(reports / "smoke" / "summary.csv")}
    assert views == {"iterations", "device_hours"}
    # A rerun measures nothing again and trains nothing: the stored profile gives the same keys.
    before = profile_path.read_text()
    assert main(["run", str(SMOKE), "--reports", str(reports), *args]) == 0
    out = capsys.readouterr().out
    assert "profiling" not in out and "0 to train" in out and profile_path.read_text() == before
    assert main(["plan", str(SMOKE), *args]) == 0
    assert f"tiny_student: none 8, kd {iterations} iterations" in capsys.readouterr().out


def _profiled_suite(tmp_path: Path, steps: dict[str, float], **compare) -> tuple:
    overrides = [o for o in MINI[1::2] if not o.startswith("compare_at")]
    overrides += ["methods=[{name: none}, {name: kd}, {name: lgad}]", "schedule.iterations=150",
                  f"compare_at={json.dumps({'budget': 'device_hours', **compare})}"]
    suite = load_suite(SMOKE, overrides).parts[0]
    runs = expand(suite)[0]
    profile = {pair_key(suite, run): {"seconds_per_iteration": steps[run.method_label], "device": "cuda:0",
                                      "device_type": "cuda", "steps": 10, "measured": "2026-01-01"}
               for run in runs if run.method_label in steps}
    return suite, runs, profile


def test_derived_iterations_follow_the_step_time_ratio_rounded(tmp_path):
    suite, runs, profile = _profiled_suite(tmp_path, {"none": 0.010, "kd": 0.021, "lgad": 0.0101})
    view = compute_view(suite, runs, profile)
    assert view.round_to == 2  # 1% of 150, rounded
    # kd: 150 x 0.010 / 0.021 = 71.4 -> 72 (a multiple of 2); lgad: 148.5 -> 148; none: its schedule.
    assert view.iterations["tiny_student"] == {"none": 150, "kd": 72, "lgad": 148}
    assert view.budget_hours["tiny_student"] == pytest.approx(150 * 0.010 / 3600)
    assert len(view.extra) == 2 * 2 and all(r.config["schedule"]["iterations"] in (72, 148) for r in view.extra)
    assert {r.key for r in view.runs if r.method_label == "none"} == {r.key for r in runs if r.method_label == "none"}
    # A step time measured again a little differently keeps the counts, hence the keys.
    wobble = {k: {**v, "seconds_per_iteration": v["seconds_per_iteration"] * 1.004} for k, v in profile.items()}
    wobble[pair_key(suite, runs[0])] = profile[pair_key(suite, runs[0])]
    assert [r.key for r in compute_view(suite, runs, wobble).extra] == [r.key for r in view.extra]
    # A stated budget: every row derived from it, the none row too.
    suite, runs, profile = _profiled_suite(tmp_path, {"none": 0.010, "kd": 0.020, "lgad": 0.040}, hours=0.0005,
                                           round_to=5)
    view = compute_view(suite, runs, profile)
    assert view.iterations["tiny_student"] == {"none": 180, "kd": 90, "lgad": 45}


def test_rows_without_a_profiled_step_time_wait_and_another_device_is_refused(tmp_path):
    suite, runs, profile = _profiled_suite(tmp_path, {"none": 0.010, "kd": 0.021})
    view = compute_view(suite, runs, profile)
    assert view.pending == ["tiny_student / lgad"] and all(r.method_label != "lgad" for r in view.runs)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / COMPUTE_PROFILE).write_text(json.dumps(profile))
    collection = copy.copy(load_suite(SMOKE, MINI[1::2]))
    collection.parts = [suite]
    import torch

    with pytest.raises(SuiteError, match="measured on \\['cuda'\\], this process has cpu"):
        measure_profile(collection, tmp_path / "results", torch.device("cpu"), echo=lambda line: None)


def test_compare_at_is_validated_at_the_door(tmp_path):
    assert load_suite(SMOKE, ["compare_at=wall_clock"]).parts[0].compare_at.budget == "wall_clock"
    with pytest.raises(SuiteError, match="compare_at.reference 'sd' is not a method row"):
        load_suite(SMOKE, ["compare_at={reference: sd}"])
    with pytest.raises(SuiteError, match="compare_at.budget"):
        load_suite(SMOKE, ["compare_at=gpu_hours"])
    with pytest.raises(SuiteError, match="compare_at needs a budget"):
        load_suite(SMOKE, ["methods=[{name: kd}]", "compare_at=device_hours"])
