"""check-reference against the shared reference vectors: our methods and the metrics pass; tampered,
missing or malformed files fail with the right exit code."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmark.reference import ReferenceFileError, add_parser, check_reference, main
from tests.conftest import REFERENCE_VECTORS

# Cases answered by this change (plus kd and the metrics); other methods' cases are checked by their tests.
CHECKED = {"at", "sp", "ickd", "overhaul", "dist", "lad", "cwd", "kd", "miou"}


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["check-reference", *argv])


@pytest.fixture(scope="module")
def vectors() -> dict:
    with open(REFERENCE_VECTORS) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def rows():
    return check_reference(REFERENCE_VECTORS)


def test_every_case_of_our_methods_and_the_metrics_passes(rows, vectors):
    ours = [row for row in rows if row.method in CHECKED]
    failed = [(r.case_id, r.quantity, r.ours, r.reference, r.note) for r in ours if not r.passed]
    assert not failed, failed
    expected_cases = {case["id"] for case in vectors["cases"] if case["method"] in CHECKED}
    assert {row.case_id for row in ours} == expected_cases
    assert len(expected_cases) == 29  # 3 per method (kd, cwd, at, sp, dist, ickd, lad, overhaul) + 5 miou
    quantities = {(row.case_id, row.quantity) for row in ours}
    assert ("overhaul_pub_3", "margin") in quantities
    assert {("miou_pub_4", q) for q in ("miou", "pixel_acc", "per_class_iou")} <= quantities


def test_every_case_gets_a_row(rows, vectors):
    assert {row.case_id for row in rows} == {case["id"] for case in vectors["cases"]}


def test_a_tampered_file_fails_with_exit_1(tmp_path, vectors, capsys):
    tampered = json.loads(json.dumps(vectors))
    case = next(c for c in tampered["cases"] if c["id"] == "at_pub_1")
    case["expected"]["loss"] *= 1.01
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(tampered))
    assert main(cli(str(path))) == 1
    output = capsys.readouterr().out
    assert "at_pub_1" in output and "FAILED" in output
    (row,) = [r for r in check_reference(path) if r.case_id == "at_pub_1"]
    assert not row.passed and row.rel_error == pytest.approx(0.01 / 1.01, rel=1e-3)


def test_a_case_no_method_answers_is_a_failed_row(tmp_path, vectors):
    data = {"format": 1, "cases": [dict(vectors["cases"][0], id="ghost_1", method="ghost")]}
    path = tmp_path / "ghost.json"
    path.write_text(json.dumps(data))
    (row,) = check_reference(path)
    assert not row.passed and row.note == "no method answers 'ghost'"
    assert main(cli(str(path))) == 1


def test_a_clean_subset_exits_0(tmp_path, vectors):
    data = {"format": 1, "cases": [c for c in vectors["cases"] if c["method"] in ("lad", "miou")]}
    path = tmp_path / "subset.json"
    path.write_text(json.dumps(data))
    assert main(cli(str(path))) == 0


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 1}), json.dumps([1, 2]),
                                     json.dumps({"format": 1, "cases": [{"id": "x"}]}),
                                     json.dumps({"format": 99, "cases": []})])
def test_a_malformed_file_exits_2(tmp_path, content, capsys):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ReferenceFileError):
        check_reference(path)
    assert main(cli(str(path))) == 2
    assert "check-reference:" in capsys.readouterr().err


def test_a_missing_file_exits_2(tmp_path, capsys):
    assert main(cli(str(tmp_path / "absent.json"))) == 2
    assert "no such file" in capsys.readouterr().err
