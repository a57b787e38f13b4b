"""The report package: a fake result store (records with the runner's field names) rendered end to end."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

import pytest
import yaml
from scipy import stats

from benchmark.report import render_report
from benchmark.report import tables as T
from benchmark.report.latex import tex

EVIL = "<b>evil</b> & co"
CLASSES = ["road", "sky", "car_&_truck"]
T_975_2DOF = 4.302652729911275  # t quantile 0.975 with 2 degrees of freedom

# Per-seed final mIoU (fractions) of the main part; best = final + 0.005.
MAIN = {
    ("resnet18", "none"): [0.700, 0.710, 0.705],
    ("resnet18", "kd"): [0.715, 0.722, 0.713],
    ("resnet18", EVIL): [0.690, 0.700, 0.720],
    ("mobilenet", "none"): [0.650, 0.655, 0.660],
    ("mobilenet", "kd"): [0.662, 0.668],  # seed 2 failed
    ("mobilenet", EVIL): [0.640, 0.650, 0.645],
}
METHOD_IDS = {"none": 0, "kd": 1, EVIL: 2}
COMPONENTS = {"none": [{"name": "none", "hparams": {}}],
              "kd": [{"name": "kd", "hparams": {"tau": 4.0, "alpha": 0.5}}],
              EVIL: [{"name": "cwd", "hparams": {"tau": 1.0}}, {"name": "kd", "hparams": {"tau": 4.0}}]}


def run_record(part: str, table: str, student: str, method: str, seed: int, miou: float, *,
               run_key: str | None = None, params: int = 11_000_000, flops: int = 25_000_000_000) -> dict:
    """A finished run's metrics.json with the runner's field names (benchmark/runner.py, engine/train.py)."""
    per_class = [miou + 0.05, float("nan"), miou - 0.05]
    return {
        "schema": 1, "role": "student", "suite": part, "table": table, "dataset": "camvid", "student": student,
        "teacher": None if method == "none" else "resnet101",
        "teacher_key": None if method == "none" else "teacher-abc",
        "method": method, "method_components": COMPONENTS.get(method, [{"name": method, "hparams": {}}]),
        "seed": seed, "run_key": run_key or f"{part}-{student}-{METHOD_IDS.get(method, 9)}-{seed}", "status": "done",
        "class_names": CLASSES,
        "final": {"split": "test", "iteration": 100, "miou": miou, "pixel_accuracy": miou + 0.2,
                  "per_class_iou": per_class},
        "best": {"selected_on": "val", "split": "test", "iteration": 80, "miou": miou + 0.005,
                 "pixel_accuracy": miou + 0.21, "per_class_iou": per_class, "selection_miou": miou},
        "history": [{"iteration": 50, "split": "val", "miou": miou - 0.01}], "iterations": 100,
        "iterations_per_epoch": 10, "last_losses": {"ce": 0.3},
        "timing": {"wall_seconds": 36.0 * (2 if method != "none" else 1), "device_hours": 0.01 * (2 if method != "none"
                                                                                                 else 1),
                   "seconds_per_iteration": 0.36, "peak_memory_bytes": 2 * 2**30,
                   "peak_memory_kind": "cuda max_memory_allocated", "device": "cuda:0", "world_size": 1},
        "cost": {"params": params if student == "resnet18" else params // 3, "flops": flops,
                 "flops_input_size": [360, 480], "flops_convention": "fvcore: one multiply-add counts as one FLOP",
                 "method_params": 0 if method in ("none", "kd") else 65_536},
        "environment": {"versions": {"python": "3.11.2", "torch": "2.4.0"}, "git_commit": "0123456789abcdef",
                        "git_dirty": False, "platform": "Linux", "cuda": "NVIDIA H200"},
        "config": {"dataset": {"name": "camvid", "eval_split": "test", "eval_size": None, "crop": [360, 480],
                               "absent_class_policy": "nan_excluded"},
                   "schedule": {"iterations": 100, "batch_size": 8}, "student": {"name": student, "options": {}},
                   "method": {"label": method, "components": COMPONENTS.get(method, [])}, "seed": seed},
    }


def write_run(root: Path, record: dict) -> None:
    folder = root / "runs" / record["run_key"]
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(record["config"]))
    (folder / "metrics.json").write_text(json.dumps(record))


def claim(student, method, miou, pm=None, checkpoint="unknown", protocol=None, miou_delta=None):
    return {"student": student, "method": method, "miou": miou, "miou_delta": miou_delta, "miou_pm": pm,
            "pixel_accuracy": None, "source": f"Table 2, {method}", "checkpoint": checkpoint, "protocol": protocol,
            "eval_resolution": None, "note": None}


def part_record(name, title, students, methods, seeds, claims, run_keys, protocol):
    return {"name": name, "title": title, "table": {"title": title, "paper": "Doe et al. 2024", "protocol": protocol,
                                                    "source": "arXiv:2401.00001"},
            "description": f"part {name}", "dataset": "camvid", "eval_split": "test", "selection_split": "val",
            "class_names": CLASSES, "students": students,
            "methods": [{"label": m, "components": [c["name"] for c in COMPONENTS[m]]} for m in methods],
            "seeds": seeds, "claims": claims, "run_keys": run_keys}


def build_store(root: Path) -> Path:
    """Write the fake suite's store under ``root``: suite.json, runs (one failed, one stale), a teacher."""
    keys = []
    for (student, method), values in MAIN.items():
        for seed, miou in enumerate(values):
            record = run_record("main", "Table 2: CamVid", student, method, seed, miou)
            write_run(root, record)
            keys.append(record["run_key"])
    # The failed run: status.json with a reason, no metrics.json.
    failed = root / "runs" / "main-failed"
    failed.mkdir(parents=True)
    (failed / "config.yaml").write_text(yaml.safe_dump({"student": {"name": "mobilenet", "options": {}},
                                                        "method": {"label": "kd"}, "seed": 2}))
    (failed / "status.json").write_text(json.dumps({"status": "failed",
                                                    "reason": "NonFiniteLossError: loss is nan at iteration 12"}))
    keys.append("main-failed")
    # A stale run: finished, but its key is no longer in the suite record.
    write_run(root, run_record("main", "Table 2: CamVid", "resnet18", "kd", 0, 0.999, run_key="main-stale"))
    # A one-seed part.
    one_keys = []
    for method, miou in (("none", 0.60), ("kd", 0.62)):
        record = run_record("single", "Table 3: one seed", "resnet18", method, 0, miou)
        write_run(root, record)
        one_keys.append(record["run_key"])
    claims = [claim("resnet18", "none", 70.0, checkpoint="last"),
              claim("resnet18", "kd", 72.5, pm=0.3, checkpoint="best"),
              claim("resnet18", EVIL, 69.0),
              claim("resnet18", "SKD", 73.0),
              claim("mobilenet", "none", 65.5, checkpoint="last"),
              claim("mobilenet", "kd", 66.6, checkpoint="last", protocol="multi-scale"),
              # A paper that states only a gain over none for this cell.
              claim("mobilenet", EVIL, None, checkpoint="last", miou_delta=0.8)]
    suite = {"name": "fake", "description": "A fake suite", "path": "suites/fake.yaml", "parts": [
        part_record("main", "Table 2: CamVid", ["resnet18", "mobilenet"], ["none", "kd", EVIL], [0, 1, 2], claims,
                    keys, "single-scale, test split"),
        # EVIL is a row here but never ran: its claim must read "not run".
        part_record("single", "Table 3: one seed", ["resnet18"], ["none", "kd", EVIL], [0],
                    [claim("resnet18", EVIL, 61.0)], one_keys, None)]}
    (root / "suite.json").write_text(json.dumps(suite))
    teacher = run_record("main", "", "resnet101", "none", 0, 0.78, run_key="teacher-abc", params=60_000_000)
    teacher.update(role="teacher", model="resnet101")
    (root / "teachers" / "teacher-abc").mkdir(parents=True)
    (root / "teachers" / "teacher-abc" / "metrics.json").write_text(json.dumps(teacher))
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("results") / "fake")


@pytest.fixture(scope="module")
def rendered(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports") / "fake"
    index = render_report(store, out)
    assert index == out / "index.html"
    return out


def pct(values):
    return [100 * v for v in values]


def test_files_exist(rendered):
    for name in ("index.html", "results.csv", "tables.csv", "tables.md", "tables.tex"):
        assert (rendered / name).is_file() and (rendered / name).stat().st_size > 0, name


def test_html_shows_claims_and_reproduced_means(rendered):
    html = (rendered / "index.html").read_text()
    for text in ("72.50 ± 0.30", "70.00", "69.00", "73.00", "65.50", "66.60"):
        assert text in html, text
    mean, std = statistics.mean(pct(MAIN[("resnet18", "none")])), statistics.stdev(pct(MAIN[("resnet18", "none")]))
    assert f"{mean:.2f} ± {std:.2f} (n=3)" in html
    kd = pct(MAIN[("mobilenet", "kd")])
    assert f"{statistics.mean(kd):.2f} ± {statistics.stdev(kd):.2f} (n=2)" in html
    assert "NonFiniteLossError: loss is nan at iteration 12" in html  # the failed run and its reason
    assert "fvcore counts one multiply-add as one FLOP" in html
    assert "0123456789abcdef" in html and "suites/fake.yaml" in html  # provenance
    assert "resnet101" in html and "78.00" in html  # teachers table
    assert "single-scale, test split" in html and "multi-scale" in html  # protocols shown
    assert html.count("data:image/png;base64,") >= 4


def test_escaping(rendered):
    html = (rendered / "index.html").read_text()
    assert "<b>evil</b>" not in html
    assert "&lt;b&gt;evil&lt;/b&gt; &amp; co" in html
    latex = (rendered / "tables.tex").read_text()
    assert r"\textless{}b\textgreater{}evil\textless{}/b\textgreater{} \& co" in latex
    assert "car_&_truck" not in latex
    markdown = (rendered / "tables.md").read_text()
    assert "<b>evil</b>" not in markdown
    assert tex("50% of $x_1$ {a} #1 ~ ^ \\") == (r"50\% of \$x\_1\$ \{a\} \#1 \textasciitilde{} "
                                                 r"\textasciicircum{} \textbackslash{}")


def test_paired_gain_matches_hand_computation(rendered):
    diffs = [m - n for m, n in zip(pct(MAIN[("resnet18", "kd")]), pct(MAIN[("resnet18", "none")]))]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = T_975_2DOF * sd / math.sqrt(3)
    expected = f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (n=3)"
    assert T.paired_ci(diffs)[1] == pytest.approx(mean - half, abs=1e-9)
    for name in ("index.html", "tables.md"):
        assert expected in (rendered / name).read_text(), name
    # mobilenet kd: only seeds 0 and 1 pair with the baseline.
    diffs = [m - n for m, n in zip(pct(MAIN[("mobilenet", "kd")]), pct(MAIN[("mobilenet", "none")])[:2])]
    mean, sd = sum(diffs) / 2, abs(diffs[0] - diffs[1]) / math.sqrt(2)
    half = 12.706204736174707 * sd / math.sqrt(2)
    assert f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (n=2)" in (rendered / "index.html").read_text()
    assert "n/a (1 seed)" in (rendered / "index.html").read_text()  # the one-seed part


def test_kendall_matches_scipy(store, rendered):
    claimed = [70.0, 72.5, 69.0]  # none (last), kd (best), evil (unknown -> last)
    reproduced = [statistics.mean(pct(MAIN[("resnet18", "none")])),
                  statistics.mean(pct(MAIN[("resnet18", "kd")])) + 0.5,
                  statistics.mean(pct(MAIN[("resnet18", EVIL)]))]
    expected = stats.kendalltau(claimed, reproduced).statistic
    report = T.collect(store)
    ranking = next(r for r in report.parts[0].rankings if r["student"] == "resnet18")
    assert ranking["n"] == 3 and ranking["tau"] == pytest.approx(expected)
    assert f"τ = {expected:+.3f} (n=3 methods" in (rendered / "index.html").read_text()


def test_claim_statuses_and_flags(store, rendered):
    report = T.collect(store)
    frame = report.parts[0].cells
    skd = frame[frame["method"] == "SKD"].iloc[0]
    assert skd["status"] == T.NOT_IMPLEMENTED and not skd["implemented"]
    kd = frame[(frame["student"] == "resnet18") & (frame["method"] == "kd")].iloc[0]
    assert kd["compared_on"] == "best" and "outside the paper's ±0.30" in kd["flag"]
    none = frame[(frame["student"] == "resnet18") & (frame["method"] == "none")].iloc[0]
    assert none["flag"] == ""  # 70.50 vs 70.00: within 1 mIoU, no ± stated
    mobilenet_kd = frame[(frame["student"] == "mobilenet") & (frame["method"] == "kd")].iloc[0]
    assert mobilenet_kd["status"] == "reproduced (2 of 3 seeds)"  # 66.50 vs 66.60, seed 2 failed
    single = report.parts[1].cells
    assert single[single["method"] == EVIL].iloc[0]["status"] == T.NOT_RUN
    for name in ("index.html", "tables.md", "tables.tex"):
        assert "not reproduced: method not implemented" in (rendered / name).read_text(), name
        assert "not run" in (rendered / name).read_text(), name


def test_claimed_gain_only(store, rendered):
    """A claim with only miou_delta: claimed mIoU '–', the claimed gain next to the paired gain and their Δ."""
    diffs = [m - n for m, n in zip(pct(MAIN[("mobilenet", EVIL)]), pct(MAIN[("mobilenet", "none")]))]
    assert diffs == pytest.approx([-1.0, -0.5, -1.5])
    mean = sum(diffs) / 3
    half = T_975_2DOF * math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2) / math.sqrt(3)
    gain = f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (n=3)"
    assert gain == "-1.00 [-2.24, +0.24] (n=3)"
    delta = f"{mean - 0.8:+.2f}"
    assert delta == "-1.80"
    frame = T.collect(store).parts[0].cells
    cell = frame[(frame["student"] == "mobilenet") & (frame["method"] == EVIL)].iloc[0]
    assert cell["claim_text"] == "–" and cell["claim_gain_text"] == "+0.80"
    assert cell["reproduced_gain_text"] == gain and cell["gain_delta"] == pytest.approx(mean - 0.8)
    assert cell["gain_compared_on"] == "last" and "more than 1 mIoU from the claimed gain" in cell["gain_flag"]
    assert cell["flag"] == ""  # no absolute claim, nothing to compare
    markdown = (rendered / "tables.md").read_text()
    assert "mobilenet: claimed gain" in markdown and "mobilenet: Δ gain" in markdown
    assert f"| +0.80 (last) | {gain} | {delta} ⚠ |" in markdown
    assert "(gain over none): more than 1 mIoU from the claimed gain" in markdown
    html = (rendered / "index.html").read_text()
    assert "Claimed gain" in html and "Δ gain" in html
    assert re.search(r">\+0\.80\s*<span class=\"tag\">last</span></td>\s*<td>" + re.escape(gain) +
                     r"</td>\s*<td class=\"off\"[^>]*>" + re.escape(delta) + " ⚠</td>", html), "gain cells not in HTML"
    latex = (rendered / "tables.tex").read_text()
    assert " & ".join(tex(t) for t in ("+0.80", gain, delta + " ⚠")) in latex
    assert "Claimed gain & Reproduced gain & $\\Delta$ gain" in latex
    # Kendall's τ ranks only the claims with an absolute mIoU.
    ranking = next(r for r in T.collect(store).parts[0].rankings if r["student"] == "mobilenet")
    assert ranking["n"] == 2 and EVIL not in [row["method"] for row in ranking["rows"]]


def test_no_external_resources(rendered):
    html = (rendered / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", html, re.IGNORECASE)
    assert not re.search(r"<link[^>]+href=", html, re.IGNORECASE)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    assert "@import" not in html and "url(http" not in html


def test_csv_one_row_per_current_run(rendered):
    with open(rendered / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(v) for v in MAIN.values()) + 2 + 1  # + one-seed part + the stale run
    assert {"final_miou", "best_miou", "gflops", "device_hours", "iou.road", "iou.car_&_truck"} <= set(rows[0])


def test_stale_run_left_out_of_tables(store):
    report = T.collect(store)
    assert list(report.stale["run_key"]) == ["main-stale"]
    assert "main-stale" not in set(report.parts[0].runs["run_key"])


def test_rerender_is_deterministic(store, rendered, tmp_path):
    again = render_report(store, tmp_path / "again").parent

    def content(path: Path) -> str:
        text = path.read_text()
        return "\n".join(line for line in text.splitlines() if "generated-at" not in line)

    for name in ("index.html", "results.csv", "tables.csv", "tables.md", "tables.tex"):
        assert content(rendered / name) == content(again / name), name


def test_without_suite_record(store, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    (copy / "suite.json").unlink()
    html = render_report(copy, tmp_path / "out").read_text()
    assert "no suite record" in html and "&lt;b&gt;evil" in html


def test_empty_store(tmp_path):
    (tmp_path / "empty").mkdir()
    assert render_report(tmp_path / "empty", tmp_path / "out").is_file()


# --- status words (issue 13) -------------------------------------------------------------------------------------


def test_status_words_say_what_the_comparison_found(store):
    report = T.collect(store)
    statuses = {(view.info.name, r["student"], r["method"]): (r["status"], r["status_kind"])
                for view in report.parts for r in view.cells.to_dict("records")}
    assert statuses == {
        ("main", "resnet18", "none"): ("reproduced", "reproduced"),  # 70.50 vs 70.00, no ± stated
        ("main", "resnet18", "kd"): ("below claim by 0.33", "below claim"),  # best 72.17 vs 72.50 ± 0.30
        ("main", "resnet18", EVIL): ("above claim by 1.33", "above claim"),  # 70.33 vs 69.00
        ("main", "resnet18", "SKD"): (T.NOT_IMPLEMENTED, "not implemented"),
        ("main", "mobilenet", "none"): ("reproduced", "reproduced"),
        ("main", "mobilenet", "kd"): ("reproduced (2 of 3 seeds)", "reproduced"),
        ("main", "mobilenet", EVIL): ("below claimed gain by 1.80", "below claim"),  # gain −1.00 vs +0.80
        ("single", "resnet18", "none"): ("no claim", "no claim"),
        ("single", "resnet18", "kd"): ("no claim", "no claim"),
        ("single", "resnet18", EVIL): ("not run", "not run"),
    }
    assert report.status_counts == [("reproduced", 3), ("below claim", 2), ("above claim", 1), ("no claim", 2),
                                    ("not run", 1), ("not implemented", 1)]


def test_row_status_names_failed_and_partial_runs():
    row = {"n": 0, "claim_miou": 70.0, "claim_gain": math.nan, "claim_delta": math.nan, "flag": ""}
    assert T.row_status(row, True, True, 3, {"failed": 3}) == ("failed", "failed")
    assert T.row_status(row, True, True, 3, {"failed": 1, "pending": 2}) == ("failed (1 of 3 seeds)", "failed")
    assert T.row_status(row, True, True, 3, {"interrupted": 1}) == ("not run (1 interrupted)", "not run")
    row.update(n=1, claim_delta=0.4)
    assert T.row_status(row, True, True, 3, {}) == ("reproduced (1 of 3 seeds)", "reproduced")
    row.update(claim_delta=-3.1, flag="more than 1 mIoU from the claim")
    assert T.row_status(row, True, True, 1, {}) == ("below claim by 3.10", "below claim")
    row.update(claim_miou=math.nan)
    assert T.row_status(row, True, True, 1, {}) == ("no claim", "no claim")


def _html_status(html: str, part: str, student: str, method: str) -> str:
    start = html.index(f'<section id="part-{part}">')
    body = html[start:html.index("</section>", start)]
    body = body[body.index(f"<h3>{student} <small>"):]
    body = body[:body.index("</table>")]
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.DOTALL):
        if f'<td class="method">{method}</td>' in row:
            return re.sub(r"<[^>]+>", "", re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)[-1]).strip()
    raise AssertionError(f"no row {method} in the HTML results table of {part} / {student}")


def _markdown_status(markdown: str, title: str, student: str, method: str) -> str:
    body = markdown[markdown.index(f"## {title}"):]
    body = body[body.index(f"### {student}"):]
    for line in body.splitlines():
        if line.startswith(f"| {method} |"):
            return line.strip("| ").split(" | ")[-1]
    raise AssertionError(f"no row {method} in the Markdown table of {title} / {student}")


def _latex_status(latex: str, title: str, student: str, method: str) -> str:
    body = latex[latex.index(f"% {tex(title)}"):]
    body = body[body.index(f"student {tex(student)}"):body.index(r"\end{tabular}", body.index(f"student {tex(student)}"))]
    for line in body.splitlines():
        if line.startswith(f"{tex(method)} & "):
            return line.removesuffix(r" \\").split(" & ")[-1]
    raise AssertionError(f"no row {method} in the LaTeX table of {title} / {student}")


def test_a_row_without_a_claim_is_never_called_reproduced_in_any_format(rendered):
    html = (rendered / "index.html").read_text()
    markdown = (rendered / "tables.md").read_text()
    latex = (rendered / "tables.tex").read_text()
    with open(rendered / "tables.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    csv_status = {(r["part"], r["student"], r["method"]): r["status"] for r in rows}
    # claimed and within tolerance; claimed nothing (same numbers shape, one seed)
    for part, title, method, word in (("main", "Table 2: CamVid (main)", "none", "reproduced"),
                                      ("single", "Table 3: one seed (single)", "none", "no claim"),
                                      ("single", "Table 3: one seed (single)", "kd", "no claim")):
        assert _html_status(html, part, "resnet18", method) == word, (part, method)
        assert _markdown_status(markdown, title, "resnet18", method) == word, (part, method)
        assert _latex_status(latex, title.split(" (")[0], "resnet18", method) == word, (part, method)
        assert csv_status[(part, "resnet18", method)] == word, (part, method)
    for row in rows:
        if not row["claim_miou"] and not row["claim_gain"]:
            assert "reproduced" not in row["status"] and row["status_kind"] != "reproduced", row
    summary = "3 reproduced, 2 below claim, 1 above claim, 2 no claim, 1 not run, 1 not implemented"
    assert summary in markdown and summary in latex
    assert re.search(r"Table rows: <b[^>]*>3</b> reproduced · <b[^>]*>2</b> below claim", html)


def test_training_curves_are_seed_means_of_the_history(store, rendered):
    report = T.collect(store)
    main = report.parts[0]
    series = {s["method"]: s for s in T.curve_series(main.runs, main.info, "resnet18")}
    assert list(series) == ["none", "kd", EVIL]
    values = [100 * (v - 0.01) for v in MAIN[("resnet18", "none")]]
    assert series["none"]["iterations"] == [50] and series["none"]["n"] == [3]
    assert series["none"]["mean"][0] == pytest.approx(statistics.mean(values))
    assert series["none"]["std"][0] == pytest.approx(statistics.stdev(values))
    assert series["none"]["split"] == "val"
    assert "Training curves: mIoU on the selection split (val)" in (rendered / "index.html").read_text()
