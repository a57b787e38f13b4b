"""``check-reference``: our losses and metrics against the reference vectors (``loss_vectors.json``).

Each case of the file names a ``method``; the registered class whose ``reference_names`` contains it
answers through its ``reference_loss`` classmethod (the parameter-free part of its loss, on the case's
inputs). ``miou`` cases are answered by :mod:`benchmark.metrics`. Every checked quantity becomes one
:class:`ResultRow` that passes when ``|ours - expected| <= atol + rtol * |expected|`` (the file's own
tolerances, elementwise for lists; a ``null`` reference stands for NaN and matches only NaN). A case no
registered method answers is a failed row, never a skipped one: a vector nobody checks is a silent gap.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.metrics import ConfusionMatrix

FORMAT = 1


class ReferenceFileError(ValueError):
    """The reference file is missing, not JSON, or not in the expected format."""


@dataclass
class ResultRow:
    case_id: str
    method: str
    quantity: str  # "loss", "margin", "miou", "pixel_acc", "per_class_iou"
    ours: float | list[float] | None
    reference: float | list[float] | None
    rel_error: float | None  # max over elements for lists; None where nothing was computed
    passed: bool
    note: str = ""


def load_cases(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ReferenceFileError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReferenceFileError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise ReferenceFileError(f"{path}: expected an object with a 'cases' list")
    if data.get("format") != FORMAT:
        raise ReferenceFileError(f"{path}: key 'format' is {data.get('format')!r}, expected {FORMAT}")
    for index, case in enumerate(data["cases"]):
        where = f"{path}: cases[{index}]"
        if not isinstance(case, dict):
            raise ReferenceFileError(f"{where}: expected an object")
        for key, kind in (("id", str), ("method", str), ("inputs", dict), ("expected", dict)):
            if not isinstance(case.get(key), kind):
                raise ReferenceFileError(f"{where}: key {key!r} missing or not a {kind.__name__}")
        for key in ("rtol", "atol"):
            if not isinstance(case.get(key), (int, float)):
                raise ReferenceFileError(f"{where} ({case['id']}): key {key!r} missing or not a number")
        if not isinstance(case.get("params", {}), dict):
            raise ReferenceFileError(f"{where} ({case['id']}): key 'params' is not an object")
    return data["cases"]


def to_tensor(value: Any) -> torch.Tensor:
    """Nested lists -> tensor: float64 for real values (exactly what the reference saw), int64 for integers."""
    tensor = torch.tensor(value)
    return torch.tensor(value, dtype=torch.float64) if tensor.is_floating_point() else tensor


def case_inputs(case: dict) -> dict[str, Any]:
    inputs = {}
    for key, value in case["inputs"].items():
        inputs[key] = [to_tensor(v) for v in value] if key.endswith("_batches") else to_tensor(value)
    return inputs


def method_answerers() -> dict[str, type]:
    """Case method name -> the registered class that answers it (through ``reference_names``)."""
    from benchmark.registry import METHODS

    answerers: dict[str, type] = {}
    for registered in METHODS.names():
        cls = METHODS.get(registered)
        for name in getattr(cls, "reference_names", ()):
            if name in answerers and answerers[name] is not cls:
                raise ValueError(f"reference case method {name!r} is answered by both "
                                 f"{answerers[name].__name__} and {cls.__name__}")
            answerers[name] = cls
    return answerers


def _as_floats(value: Any) -> float | list[float]:
    if isinstance(value, torch.Tensor):
        value = value.detach().double().cpu()
        return value.item() if value.dim() == 0 else value.flatten().tolist()
    if isinstance(value, (list, tuple)):
        return [float("nan") if v is None else float(v) for v in value]
    return float(value)


def compare(ours: Any, reference: Any, rtol: float, atol: float) -> tuple[float | None, bool, str]:
    """(max relative error, pass, note); lists compare elementwise, ``None``/NaN only matches NaN."""
    ours_list = ours if isinstance(ours, list) else [ours]
    ref_list = reference if isinstance(reference, list) else [reference]
    if len(ours_list) != len(ref_list):
        return None, False, f"length {len(ours_list)} != reference {len(ref_list)}"
    worst, passed = 0.0, True
    for mine, theirs in zip(ours_list, ref_list):
        theirs = float("nan") if theirs is None else float(theirs)
        if math.isnan(theirs) or math.isnan(mine):
            passed &= math.isnan(theirs) and math.isnan(mine)
            continue
        error = abs(mine - theirs)
        worst = max(worst, error / abs(theirs) if theirs != 0 else error)
        passed &= error <= atol + rtol * abs(theirs)
    return worst, passed, ""


def miou_outputs(inputs: dict, params: dict) -> dict[str, Any]:
    matrix = ConfusionMatrix(int(params["num_classes"]), int(params.get("ignore_index", 255)))
    for logits, labels in zip(inputs["logits_batches"], inputs["labels_batches"]):
        matrix.update(logits.argmax(dim=1), labels)
    scores = matrix.compute(params.get("absent_class_policy", "nan_excluded"))
    return {"miou": scores.miou, "pixel_acc": scores.pixel_accuracy, "per_class_iou": scores.per_class_iou}


def check_case(case: dict, answerers: dict[str, type]) -> list[ResultRow]:
    case_id, method, expected = case["id"], case["method"], case["expected"]
    rtol, atol = float(case["rtol"]), float(case["atol"])

    def failed(note: str) -> list[ResultRow]:
        return [ResultRow(case_id, method, quantity, None, _as_floats(value), None, False, note)
                for quantity, value in expected.items()]

    try:
        inputs, params = case_inputs(case), case.get("params", {})
        if method == "miou":
            outputs = miou_outputs(inputs, params)
        elif method in answerers:
            with torch.no_grad():
                outputs = answerers[method].reference_loss(method, inputs, params)
        else:
            return failed(f"no method answers {method!r}")
    except Exception as error:  # noqa: BLE001 - a broken case or method is a failed row, the others still run
        return failed(f"{type(error).__name__}: {error}")
    rows = []
    for quantity, reference in expected.items():
        if quantity not in outputs:
            rows.append(ResultRow(case_id, method, quantity, None, _as_floats(reference), None, False,
                                  f"{method} returned no {quantity!r}"))
            continue
        ours, theirs = _as_floats(outputs[quantity]), _as_floats(reference)
        rel_error, passed, note = compare(ours, theirs, rtol, atol)
        rows.append(ResultRow(case_id, method, quantity, ours, theirs, rel_error, passed, note))
    return rows


def check_reference(path: str | Path) -> list[ResultRow]:
    """Every case of the file, each checked quantity one row. Raises :class:`ReferenceFileError` when the
    file is missing or malformed."""
    cases = load_cases(path)
    answerers = method_answerers()
    return [row for case in cases for row in check_case(case, answerers)]


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return f"[{len(value)} values]"
    return f"{value:.10g}"


def format_table(rows: list[ResultRow]) -> str:
    header = ("case", "method", "quantity", "ours", "reference", "rel.err", "status")
    lines = [header]
    for row in rows:
        rel = "-" if row.rel_error is None else f"{row.rel_error:.2e}"
        status = "ok" if row.passed else "FAILED" + (f" ({row.note})" if row.note else "")
        lines.append((row.case_id, row.method, row.quantity, _short(row.ours), _short(row.reference), rel, status))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
                     for line in lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "check-reference", help="check our losses and metrics against a loss_vectors.json file",
        description="Run every case of a reference-vector file through the registered method that answers it "
                    "(or the metrics for 'miou' cases); exit 1 if any case fails, 2 if the file is unusable.")
    parser.add_argument("file", help="path to loss_vectors.json")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        rows = check_reference(args.file)
    except ReferenceFileError as error:
        print(f"check-reference: {error}", file=sys.stderr)
        return 2
    print(format_table(rows))
    failed = [row for row in rows if not row.passed]
    cases = {row.case_id for row in rows}
    failed_cases = {row.case_id for row in failed}
    print(f"\n{len(cases) - len(failed_cases)}/{len(cases)} cases passed"
          + (f"; failed: {', '.join(sorted(failed_cases))}" if failed_cases else ""))
    return 1 if failed else 0
