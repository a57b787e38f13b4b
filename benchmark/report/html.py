"""index.html: one self-contained page (inline CSS, a few lines of inline JS, plots as data URIs).

Jinja2 renders with autoescape on, so every name from the store (methods, students, reasons) shows as
text; nothing in the page loads from the network.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import jinja2

from benchmark.report.markdown import FLOPS_NOTE
from benchmark.report.tables import (
    MDE_COMPUTE_LABEL,
    MDE_LABEL,
    TOLERANCE,
    Report,
    comparison_grid,
    compute_budget_text,
    fmt,
    fmt_millions,
    has_gain_claims,
    precision_text,
    side_by_side,
    tests_note,
)

TEMPLATES = Path(__file__).parent / "templates"
GENERATED_MARKER = "generated-at"


def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def part_context(view) -> dict:
    info = view.info
    students, grid = comparison_grid(view)
    cells = view.cells.to_dict("records") if not view.cells.empty else []
    results = []
    for student in students:
        if student not in info.students:
            continue
        rows = sorted((c for c in cells if c["student"] == student and c["implemented"]), key=lambda c: c["order"])
        selected = ", ".join(sorted({c["best_selected_on"] for c in rows if c["best_selected_on"]})) or "–"
        sizes = ", ".join(sorted({c["flops_input_size"] for c in rows if isinstance(c["flops_input_size"], str)}))
        sizes = sizes or "–"
        results.append({"student": student, "rows": rows, "selected_on": selected, "flops_size": sizes,
                        "side": side_by_side(view, student)})
    heatmaps = [(name.split(":", 1)[1], uri) for name, uri in view.plots.items() if name.startswith("heatmap:")]
    teachers = sorted({t for t in view.runs["teacher"].dropna()}) if not view.runs.empty else []
    states: dict[str, int] = {}
    for entry in view.unfinished:
        states[entry.get("status", "pending")] = states.get(entry.get("status", "pending"), 0) + 1
    not_started = len(info.run_keys or []) - len(view.runs) - len(view.unfinished)
    if info.run_keys is not None and not_started > 0:
        states["not started"] = not_started
    return {"info": info, "students": students, "grid": grid, "gains": has_gain_claims(view), "results": results,
            "rankings": view.rankings,
            "plots": view.plots, "heatmaps": heatmaps, "teachers": teachers, "n_runs": len(view.runs),
            "expected_runs": len(info.run_keys or []), "qualitative": view.qualitative,
            "states": ", ".join(f"{count} {name}" for name, count in sorted(states.items())),
            **statistics_context(view)}


def statistics_context(view) -> dict:
    """The table header's statistics (tests, correction, detectable effects) and the equal-compute view."""
    compute = view.compute
    return {"seed_count": view.seed_count, "tests_note": tests_note(view.seed_count), "effects": view.effects,
            "mde_label": MDE_LABEL, "mde_compute_label": MDE_COMPUTE_LABEL,
            "compute": compute, "compute_text": compute_budget_text(compute) if compute else "",
            "compute_effects": compute.effects if compute else []}


def run_rows(report: Report) -> list[dict]:
    rows = []
    for r in report.runs.to_dict("records"):
        rows.append({"part": r["part"], "student": r["student"], "method": r["method"], "seed": r["seed"],
                     "final": fmt(r["final_miou"]), "best": fmt(r["best_miou"]),
                     "best_iteration": r["best_iteration"] if r["best_iteration"] == r["best_iteration"] else "–",
                     "iterations": r["iterations"], "device_hours": fmt(r["device_hours"], 3),
                     "peak_memory": fmt(r["peak_memory_bytes"] / 2**30, 2) if r["peak_memory_bytes"] else "–",
                     "device": r["device"],
                     "precision": precision_text({"train": r["train_precision"], "eval": r["eval_precision"]}
                                                 if isinstance(r["train_precision"], str) else None),
                     "commit": (r["git_commit"] or "unknown")[:12] + (" *" if r["git_dirty"]
                                                                                              else ""),
                     "run_key": r["run_key"], "hparams": r["method_hparams"],
                     "params": fmt_millions(r["params"])})
    return rows


def render_html(report: Report, generated_at: datetime | None = None) -> str:
    generated_at = generated_at or datetime.now(UTC)
    failed = sum(1 for r in report.unfinished if r["status"] == "failed")
    context = {
        "report": report,
        "parts": [part_context(view) for view in report.parts],
        "runs": run_rows(report),
        "stale": report.stale.to_dict("records") if not report.stale.empty else [],
        "n_finished": len(report.runs) - len(report.stale),
        "n_failed": failed,
        "n_unfinished": len(report.unfinished) - failed,
        "has_predictions": any(view.qualitative for view in report.parts),
        "flops_note": FLOPS_NOTE,
        "tolerance": f"{TOLERANCE:g}",
        "generated_at": generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "marker": GENERATED_MARKER,
    }
    return environment().get_template("index.html").render(**context)
