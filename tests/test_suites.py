"""Every suite file in ``suites/`` loads, plans offline, and keeps its claims honest; one paper suite runs end to end.

Recipe presets (``suites/recipes/``) are partial suites: they are validated through the suites that extend them.
"""

from __future__ import annotations

import csv
import html
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CAMVID_ROOT

from benchmark.report.tables import fmt_claim
from benchmark.suite import Suite, expand, load_suite

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "suites"
RECIPES = SUITES / "recipes"
SUITE_FILES = sorted(p for p in SUITES.rglob("*.yaml") if RECIPES not in p.parents)
PAPER_TABLES = SUITES / "paper_tables.yaml"

#: Claimed rows with no method row in their suite: methods we do not implement (the report lists them as
#: "not reproduced: method not implemented"). DSD: CIRKD README's Cityscapes table.
NOT_IMPLEMENTED = {"DSD"}


def _rel(path: Path) -> str:
    return str(path.relative_to(SUITES))


def _all_parts() -> list[tuple[Path, Suite]]:
    parts = []
    for path in SUITE_FILES:
        if "include" in yaml.safe_load(path.read_text()):
            continue  # collections: their parts are suite files of their own
        parts.extend((path, suite) for suite in load_suite(path).parts)
    return parts


@pytest.mark.parametrize("path", SUITE_FILES, ids=_rel)
def test_suite_file_loads_and_expands(path):
    suite_file = load_suite(path)
    assert suite_file.parts
    for suite in suite_file.parts:
        runs, teachers = expand(suite)
        assert runs
        assert len({run.key for run in runs}) == len(runs), "two runs of one suite share a key"
        for run in runs:
            if run.needs_teacher:
                assert run.teacher.key in {t.key for t in teachers.values()}


def test_every_recipe_is_extended_by_a_suite():
    extended = set()
    for path in SUITE_FILES:
        chain = path
        while True:
            base = yaml.safe_load(chain.read_text()).get("extends")
            if not base:
                break
            chain = (chain.parent / base).resolve()
            extended.add(chain)
    recipes = {p.resolve() for p in RECIPES.glob("*.yaml")}
    assert recipes, "no recipe presets found"
    assert recipes <= extended, f"recipes no suite extends (so never validated): {sorted(recipes - extended)}"


def test_claims_have_sources_and_known_methods():
    orphans = set()
    for path, suite in _all_parts():
        rows = {method.row_label for method in suite.methods}
        for claim in suite.claims:
            assert claim.source.strip(), f"{_rel(path)}: claim {claim.student} / {claim.method} has no source"
            if claim.method not in rows:
                orphans.add(claim.method)
    assert orphans == NOT_IMPLEMENTED


def test_no_cell_claimed_twice():
    for path, suite in _all_parts():
        cells = [(c.student, c.method) for c in suite.claims]
        assert len(cells) == len(set(cells)), f"{_rel(path)}: a (student, method) cell is claimed twice"


def test_paper_tables_includes_every_paper_suite():
    collection = load_suite(PAPER_TABLES)
    included = {suite.name for suite in collection.parts}
    papers = {suite.name for _, suite in _all_parts() if suite.table and suite.table.paper}
    assert papers <= included, f"paper suites missing from paper_tables.yaml: {sorted(papers - included)}"


def test_plan_paper_tables_offline(tmp_path):
    """Offline, with no dataset present (roots are relative to the working directory: run from an empty one)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "benchmark", "plan", str(PAPER_TABLES), "--results",
                             str(tmp_path / "results")], check=False, cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    for suite in load_suite(PAPER_TABLES).parts:
        assert suite.title in output
    assert "DATASET MISSING" in output
    # Device-hours for every run even with nothing measured: a FLOPs-based guess, labelled, and how to measure.
    total = next(line for line in output.splitlines() if line.startswith("total: "))
    assert "device-hours for 0 from measured step times" in total and "FLOPs-based guess" in total
    assert "not estimated" not in total
    assert "--profile` on the GPU you will train on" in output


# --- one paper suite, end to end, on the real CamVid (a few images, tiny models) ------------------------------------

E2E_SUITE = SUITES / "cirkd_readme_camvid.yaml"
#: The paper models are too slow on two CPU cores: swap in the smoke models (each claim re-pointed at the one that
#: stands for its student, by list index), keep everything else of the suite.
TINY = ["--set", "teachers={teacher: {model: tiny_teacher}}",
        "--set", "students=[{model: tiny_student}, {model: tiny_student_narrow}]",
        "--set", "claims.0.student=tiny_student", "--set", "claims.1.student=tiny_student",
        "--set", "claims.2.student=tiny_student_narrow", "--set", "claims.3.student=tiny_student_narrow"]


@pytest.mark.skipif(not os.path.isdir(CAMVID_ROOT), reason=f"CamVid not found at {CAMVID_ROOT}")
def test_paper_suite_end_to_end_on_camvid(tmp_path):
    from benchmark.__main__ import main

    results, reports = tmp_path / "results", tmp_path / "reports"
    overrides = ["--set", f"dataset.root={CAMVID_ROOT}", "--set", "dataset.options.subset=4",
                 "--set", "dataset.crop=[32, 32]", "--set", "dataset.eval_size=[48, 64]",
                 "--set", "dataset.selection_split=none",
                 "--set", "schedule.iterations=2", "--set", "schedule.batch_size=2", "--set", "schedule.eval_every=0",
                 "--set", "seeds=[0]", *TINY]
    code = main(["run", str(E2E_SUITE), "--results", str(results), "--reports", str(reports), *overrides])
    assert code == 0
    suite = load_suite(E2E_SUITE).parts[0]
    page = (reports / suite.name / "index.html").read_text()
    assert suite.claims
    for claim in suite.claims:
        text = fmt_claim(claim.model_dump())
        assert text in page or html.escape(text) in page, f"claim {claim.student} / {claim.method} ({text}) not shown"
    # Other students, a schedule of 2 iterations: every claimed row is compared, marked, and never "reproduced".
    rows = list(csv.DictReader((reports / suite.name / "tables.csv").open()))
    claimed = [row for row in rows if row["claim_miou"]]
    assert len(claimed) == 4 and all(row["status_kind"] == "off protocol" for row in claimed), claimed
    assert all("schedule.iterations 40000 → 2 (--set)" in row["protocol_deviations"] for row in claimed), claimed
