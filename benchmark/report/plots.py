"""Plots (matplotlib, Agg canvas, no pyplot state), each returned as a ``data:image/png;base64`` URI.

Figures are drawn on an explicit ``Figure`` + ``FigureCanvasAgg`` so rendering never touches a GUI
backend or global pyplot state; PNGs carry no software/date metadata so re-rendering is byte-identical.
Labels are plain text (mathtext off): a method named ``$x$`` is shown as written.
"""

from __future__ import annotations

import base64
import io
import math

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmark.report.tables import PartView, curve_series, finite, heatmap_matrix

RC = {"text.parse_math": False, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
      "svg.hashsalt": "segkd", "path.simplify": True}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _uri(figure: Figure) -> str:
    canvas = FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    canvas.print_png(buffer, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _short(label: str, width: int = 22) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def seed_spread(view: PartView) -> str | None:
    """mIoU (last checkpoint) per method: one point per seed, the mean as a bar, the claim as a cross."""
    frame = view.cells
    if frame.empty or not (frame["n"] > 0).any():
        return None
    runs = view.runs
    students = [s for s in dict.fromkeys(frame["student"]) if (frame[frame["student"] == s]["n"] > 0).any()]
    with matplotlib.rc_context(RC):
        width = max(4.0, min(14.0, 1.2 + 0.75 * len(view.info.methods) * len(students)))
        figure = Figure(figsize=(width, 3.6), layout="constrained")
        axes = figure.subplots(1, len(students), squeeze=False, sharey=True)[0]
        for ax, student in zip(axes, students):
            sub = frame[(frame["student"] == student) & frame["implemented"]].sort_values("order")
            for x, row in enumerate(sub.itertuples()):
                values = runs[(runs["student"] == student) & (runs["method"] == row.method)].sort_values("seed")
                ys = values["final_miou"].to_numpy()
                offsets = np.linspace(-0.12, 0.12, len(ys)) if len(ys) > 1 else np.zeros(len(ys))
                ax.scatter(x + offsets, ys, s=18, color=COLORS[0], alpha=0.75, zorder=3,
                           label="seed" if x == 0 else None)
                if finite(row.final_mean):
                    ax.hlines(row.final_mean, x - 0.28, x + 0.28, color="black", lw=2, zorder=4,
                              label="mean" if x == 0 else None)
                if finite(row.claim_miou):
                    ax.scatter([x], [row.claim_miou], marker="x", s=40, color=COLORS[1], zorder=5,
                               label="claimed")
            ax.set_xticks(range(len(sub)), [_short(m) for m in sub["method"]], rotation=30, ha="right")
            ax.set_title(_short(student, 40))
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel("mIoU (%) — last checkpoint")
        handles, labels = [], []
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
        axes[-1].legend(handles, labels, loc="best", fontsize=8)
        return _uri(figure)


def _scatter(view: PartView, x_column: str, x_label: str, log_x: bool = False) -> str | None:
    frame = view.cells
    frame = frame[(frame["n"] > 0) & frame[x_column].notna() & frame["final_mean"].notna()]
    if frame.empty:
        return None
    with matplotlib.rc_context(RC):
        figure = Figure(figsize=(5.6, 3.8), layout="constrained")
        ax = figure.subplots()
        for index, student in enumerate(dict.fromkeys(frame["student"])):
            sub = frame[frame["student"] == student]
            color = COLORS[index % len(COLORS)]
            ax.errorbar(sub[x_column], sub["final_mean"], yerr=sub["final_std"].fillna(0), fmt="o", ms=5,
                        color=color, capsize=2, label=_short(student, 30))
            for row in sub.itertuples():
                ax.annotate(_short(row.method, 16), (getattr(row, x_column), row.final_mean), fontsize=7,
                            xytext=(4, 3), textcoords="offset points", color=color)
        if log_x and (frame[x_column] > 0).all():
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel("mIoU (%) — mean ± std over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        return _uri(figure)


def miou_vs_gflops(view: PartView) -> str | None:
    return _scatter(view, "gflops", "GFLOPs at the input size (fvcore: 1 multiply-add = 1 FLOP)")


def miou_vs_device_hours(view: PartView) -> str | None:
    return _scatter(view, "device_hours", "device-hours of training per run (wall × processes)")


def heatmap(view: PartView, student: str) -> str | None:
    """Methods × classes per-class IoU (mean over seeds, last checkpoint); NaN cells are grey."""
    methods, classes, matrix = heatmap_matrix(view.runs, view.info, student)
    if not methods or not classes:
        return None
    with matplotlib.rc_context(RC):
        width = max(5.0, min(16.0, 2.0 + 0.42 * len(classes)))
        height = max(2.0, 1.0 + 0.32 * len(methods))
        figure = Figure(figsize=(width, height), layout="constrained")
        ax = figure.subplots()
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#cccccc")
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0, vmax=100, aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(len(classes)), [_short(c, 14) for c in classes], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(methods)), [_short(m, 24) for m in methods], fontsize=8)
        if matrix.size <= 600:
            for (i, j), value in np.ndenumerate(matrix):
                if math.isfinite(value):
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if value < 55 else "black")
        ax.set_title(f"{_short(student, 40)}: per-class IoU (%), mean over seeds")
        figure.colorbar(image, ax=ax, shrink=0.9, pad=0.01)
        return _uri(figure)


def training_curves(view: PartView) -> str | None:
    """Selection-split mIoU against iteration per method, one panel per student: mean over seeds, ± std band."""
    by_student = {s: curve_series(view.runs, view.info, s) for s in view.info.students}
    students = [s for s, series in by_student.items() if series]
    if not students:
        return None
    with matplotlib.rc_context(RC):
        figure = Figure(figsize=(min(14.0, 1.0 + 4.6 * len(students)), 3.6), layout="constrained")
        axes = figure.subplots(1, len(students), squeeze=False, sharey=True)[0]
        for ax, student in zip(axes, students):
            for index, line in enumerate(by_student[student]):
                color = COLORS[index % len(COLORS)]
                x, mean = np.asarray(line["iterations"]), np.asarray(line["mean"], dtype=float)
                std = np.nan_to_num(np.asarray(line["std"], dtype=float))
                seeds = max(line["n"])
                ax.plot(x, mean, marker="o", ms=3, lw=1.4, color=color,
                        label=f"{_short(line['method'])} (n={seeds})")
                if seeds > 1:
                    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, lw=0)
            ax.set_title(_short(student, 40))
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        split = view.info.selection_split or "evaluation split"
        axes[0].set_ylabel(f"mIoU (%) on {split}")
        return _uri(figure)


def part_plots(view: PartView) -> dict[str, str]:
    """Every plot of a part, keyed by name; a plot with nothing to show is left out."""
    plots = {
        "seed_spread": seed_spread(view),
        "miou_vs_gflops": miou_vs_gflops(view),
        "miou_vs_device_hours": miou_vs_device_hours(view),
        "curves": training_curves(view),
    }
    for student in dict.fromkeys(view.cells["student"]) if not view.cells.empty else []:
        plots[f"heatmap:{student}"] = heatmap(view, student)
    return {name: uri for name, uri in plots.items() if uri}
