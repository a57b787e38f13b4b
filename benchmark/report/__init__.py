"""The report: re-rendered from a suite's result store alone (no model code runs).

``render_report(results_dir, reports_dir)`` writes ``index.html`` (self-contained), ``results.csv`` (one line
per run), ``tables.csv`` (one line per table row, with its status), ``tables.md`` and ``tables.tex`` into
``reports_dir`` and returns the path of ``index.html``. Every file
is written whole (temp file + rename) and, apart from the one "Generated ..." line of the HTML, is
byte-identical when re-rendered from the same store.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.store import atomic_write_bytes


def render_report(results_dir: Path, reports_dir: Path) -> Path:
    """Render the report of the suite stored in ``results_dir`` into ``reports_dir``; return index.html's path."""
    from benchmark.report.html import render_html
    from benchmark.report.latex import render_latex
    from benchmark.report.markdown import render_markdown
    from benchmark.report.plots import part_plots
    from benchmark.report.qualitative import qualitative_panels
    from benchmark.report.tables import collect, csv_frame, rows_frame

    results_dir, reports_dir = Path(results_dir), Path(reports_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: no such results folder (run the suite first)")
    report = collect(results_dir)
    for view in report.parts:
        view.plots = part_plots(view)
        view.qualitative = qualitative_panels(results_dir, view)
    reports_dir.mkdir(parents=True, exist_ok=True)
    csv_text = csv_frame(report.runs).to_csv(index=False, float_format="%.6g", lineterminator="\n")
    atomic_write_bytes(reports_dir / "results.csv", csv_text.encode())
    rows_text = rows_frame(report).to_csv(index=False, float_format="%.6g", lineterminator="\n")
    atomic_write_bytes(reports_dir / "tables.csv", rows_text.encode())
    atomic_write_bytes(reports_dir / "tables.md", render_markdown(report).encode())
    atomic_write_bytes(reports_dir / "tables.tex", render_latex(report).encode())
    index = reports_dir / "index.html"
    atomic_write_bytes(index, render_html(report).encode())
    return index


__all__ = ["render_report"]
