"""The report's predictions: image, ground truth, teacher and each method's student, read from the store alone.

Per table and student, one seed (the one with the most methods stored, the lowest on a tie) shows every
method's last-checkpoint prediction next to the image, its ground truth and the teacher's prediction. The
PNGs are embedded as data URIs (the page stays one file); the legend is the dataset's palette as the runs
recorded it (``qualitative`` in ``metrics.json``). Layout of the files: :mod:`benchmark.qualitative`.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from benchmark.qualitative import SAMPLES, prediction_path, sample_paths
from benchmark.report.tables import PartView


def _uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def _seed(runs, seeds: list[int]) -> int | None:
    """The seed with the most methods that stored predictions; the suite's first such seed on a tie."""
    stored = runs[runs["qualitative"].notna()]
    if stored.empty:
        return None
    order = [s for s in seeds if s in set(stored["seed"])] or sorted(stored["seed"].unique())
    return max(order, key=lambda s: ((stored["seed"] == s).sum(), -order.index(s)))


def legend(block: dict[str, Any], class_names: list[str]) -> list[dict[str, str]]:
    entries = [{"name": name, "color": _hex(rgb)} for name, rgb in zip(class_names, block.get("palette") or [])]
    if block.get("ignore_rgb") is not None:
        entries.append({"name": f"ignored ({block.get('ignore_index')}, not scored)",
                        "color": _hex(block["ignore_rgb"])})
    return entries


def qualitative_panels(results_dir: Path, view: PartView) -> list[dict[str, Any]]:
    """One panel per student of the part with stored predictions: columns, rows of data URIs, legend."""
    results_dir = Path(results_dir)
    info, panels = view.info, []
    if view.runs.empty:
        return panels
    for student in dict.fromkeys(view.runs["student"]):
        runs = view.runs[view.runs["student"] == student]
        seed = _seed(runs, info.seeds)
        if seed is None:
            continue
        chosen = runs[(runs["seed"] == seed) & runs["qualitative"].notna()]
        by_method = {row["method"]: row for _, row in chosen.iterrows()}
        methods = [m for m in info.methods if m in by_method] + [m for m in by_method if m not in info.methods]
        first = by_method[info.baseline] if info.baseline in by_method else by_method[methods[0]]
        block = first["qualitative"]
        split, samples = block["split"], results_dir / SAMPLES / block["sample_key"]
        teacher_row = next((by_method[m] for m in methods if isinstance(by_method[m]["teacher_key"], str)), None)
        columns = ["Image", "Ground truth"]
        if teacher_row is not None:
            columns.append(f"Teacher ({teacher_row['teacher']})")
        columns += methods
        rows = []
        for index in block["indices"]:
            image, label = sample_paths(samples, split, index)
            cells = [_uri(image), _uri(label)]
            if teacher_row is not None:
                cells.append(_uri(prediction_path(results_dir / "teachers" / teacher_row["teacher_key"], split,
                                                  index)))
            cells += [_uri(prediction_path(results_dir / "runs" / by_method[m]["run_key"], split, index))
                      for m in methods]
            rows.append({"index": index, "cells": cells})
        panels.append({"student": student, "seed": int(seed), "split": split, "checkpoint": block.get("checkpoint"),
                       "columns": columns, "rows": rows,
                       "legend": legend(block, list(first["class_names"]) or list(info.class_names))})
    return panels
