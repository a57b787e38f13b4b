"""Aggregation: records -> one tidy DataFrame -> grouped views (per part × student × method), plus statistics.

Everything the renderers (HTML, Markdown, LaTeX, CSV) show is computed here once, so the three formats
always agree. Records store fractions; everything here is in percent (mIoU, pixel accuracy, per-class IoU).

Conventions (stated in the report too):
- mean ± sample std (ddof=1) over seeds; a single seed has no std.
- Δ none: difference of means against the no-distillation row ("none") of the same part and student.
- paired gain: mean over common seeds of (method_seed − none_seed), with a 95% t-interval (n−1 dof).
- a claim is compared with the checkpoint it states: "best" -> best-on-selection-split, else the last one.
- a reproduction is marked when it is outside the paper's ± or more than 1 mIoU from the claim.
- status: "reproduced" only where a claim exists and is met: with more than one seed, the claim lies within our 95%
  t-interval of the mean ("reproduced: within our 95% interval"; otherwise "below claim by 1.20: claim above our
  95% interval"); with one seed, the reproduction is not marked ("reproduced: within tolerance", "below claim by
  3.10: outside tolerance"); or "no claim", "not run", "failed" (see :func:`row_status`).
- paired tests against the baseline, Holm's correction, the minimal detectable effect: :mod:`.significance`.
- a claimed gain (``miou_delta``, points over ``none``) is compared with the reproduced paired gain on the
  checkpoint the claim states, with the same mark rule; Kendall's τ ranks only claims with an absolute mIoU.
- a row whose runs left their protocol (a record's ``protocol_deviations``: a setting that differs from the
  recipe or the suite file, :meth:`benchmark.suite.Suite.run_deviations`) is marked ‡ with its list wherever
  it is compared with a claim, and its status is "off protocol (...)" instead of "reproduced".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.report.significance import (
    ALPHA,
    CORRECTION,
    POWER,
    detectable_effect,
    finite,
    holm,
    paired_test,
    pooled_sd,
)
from benchmark.store import METRICS, read_json

#: A reproduction further than this from the claim (mIoU points) is marked, whatever the paper's ±.
TOLERANCE = 1.0
NOT_IMPLEMENTED = "not reproduced: method not implemented"
NOT_RUN = "not run"
NO_STUDENT = "not reproduced: student not in this suite"
NO_CLAIM = "no claim"
REPRODUCED = "reproduced"
#: The rule words after the status (which rule judged the claim): see :func:`row_status`.
IN_INTERVAL, IN_TOLERANCE, OUT_OF_TOLERANCE = "within our 95% interval", "within tolerance", "outside tolerance"
OFF_PROTOCOL = "off protocol"
#: The mark of a row whose runs left their protocol, next to every number compared with a claim.
DEVIATION_MARK = "‡"
#: The header words of the minimal detectable effect, in every format.
MDE_LABEL = f"Minimal detectable effect ({POWER:.0%} power, α = {ALPHA:g})"
MDE_COMPUTE_LABEL = "Minimal detectable effect at equal compute"
#: The numbers of each view in a side-by-side row (:func:`side_by_side`), in column order.
SIDE_BY_SIDE_KEYS = ("iterations", "miou", "gain", "p", "device_hours")
#: What a row's status can be, in the order the report counts them (``status_kind`` of a row).
STATUS_KINDS = ("reproduced", "below claim", "above claim", "not comparable", OFF_PROTOCOL, "no claim", "not run",
                "failed", "not implemented", "student not in suite")


# --- statistics -----------------------------------------------------------------------------------------


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; NaN for one value) and count of the finite values."""
    array = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = int(array.size)
    if n == 0:
        return math.nan, math.nan, 0
    return float(array.mean()), float(array.std(ddof=1)) if n > 1 else math.nan, n


def paired_ci(differences, level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean of paired differences with a two-sided t confidence interval (n−1 dof): (mean, low, high, n).

    One difference has no interval: low and high are NaN.
    """
    array = np.asarray([d for d in differences if np.isfinite(d)], dtype=float)
    n = int(array.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(array.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * array.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def kendall(claimed, reproduced) -> tuple[float, float, int]:
    """Kendall's τ (scipy's tau-b) between two rankings given as scores: (tau, p-value, n). NaN when n < 2."""
    x = np.asarray(claimed, dtype=float)
    y = np.asarray(reproduced, dtype=float)
    n = int(x.size)
    if n < 2:
        return math.nan, math.nan, n
    result = stats.kendalltau(x, y)
    return float(result.statistic), float(result.pvalue), n


# --- formatting (shared by every renderer) --------------------------------------------------------------


def fmt(value, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if finite(value) else "–"


def fmt_signed(value, digits: int = 2) -> str:
    return f"{value:+.{digits}f}" if finite(value) else "–"


def fmt_pm(mean, std, n, digits: int = 2) -> str:
    """'72.35 ± 0.41 (n=3)'; one seed: '72.35 (n=1)'; none: '–'."""
    if not n or not finite(mean):
        return "–"
    if finite(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} (n={n})"


def fmt_ci(mean, low, high, n, digits: int = 2) -> str:
    """'+1.23 [0.45, 2.01] (n=3)'; one pair: 'n/a (1 seed)'."""
    if not n or not finite(mean):
        return "–"
    if n == 1:
        return "n/a (1 seed)"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] (n={n})"


def fmt_millions(value) -> str:
    return f"{value / 1e6:.2f}" if finite(value) else "–"


def fmt_count(value) -> str:
    if not finite(value):
        return "–"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{int(value)}"


def fmt_claim(claim: dict[str, Any] | None) -> str:
    """The claimed absolute mIoU ('72.50 ± 0.30'); '–' without a claim or when it states only a gain."""
    if not claim or not finite(claim.get("miou")):
        return "–"
    text = f"{claim['miou']:.2f}"
    if finite(claim.get("miou_pm")):
        text += f" ± {claim['miou_pm']:.2f}"
    return text


def fmt_claim_gain(claim: dict[str, Any] | None) -> str:
    """The claimed gain over the no-distillation row ('+5.79'); '–' when the claim states none."""
    if not claim or not finite(claim.get("miou_delta")):
        return "–"
    text = f"{claim['miou_delta']:+.2f}"
    if finite(claim.get("miou_pm")):
        text += f" ± {claim['miou_pm']:.2f}"
    return text


def fmt_deviation(deviation: dict[str, Any]) -> str:
    """``schedule.iterations 40000 → 100 (--set)``: one protocol setting a run changed, as its record holds it."""
    def value(v) -> str:
        return v if isinstance(v, str) else json.dumps(v)

    return f"{deviation.get('setting')} {value(deviation.get('reference'))} → {value(deviation.get('ran'))} " \
           f"({deviation.get('by', '?')})"


def fmt_gain(mean, low, high, n, digits: int = 2) -> str:
    """A reproduced paired gain: as :func:`fmt_ci`, but one pair still shows its value ('+1.23 (n=1, no CI)')."""
    if n == 1 and finite(mean):
        return f"{mean:+.{digits}f} (n=1, no CI)"
    return fmt_ci(mean, low, high, n, digits)


# --- records -> tidy frame ------------------------------------------------------------------------------


def _pct(value) -> float:
    return 100.0 * float(value) if finite(value) else math.nan


def _num(value) -> float:
    return float(value) if finite(value) else math.nan


RUN_COLUMNS = [
    "part", "table", "dataset", "student", "teacher", "method", "seed", "run_key",
    "final_split", "final_iteration", "final_miou", "final_pixel_accuracy",
    "best_selected_on", "best_split", "best_iteration", "best_miou", "best_pixel_accuracy",
    "params", "flops", "gflops", "flops_input_size", "method_params",
    "device_hours", "wall_seconds", "seconds_per_iteration", "peak_memory_bytes", "peak_memory_kind",
    "device", "world_size", "train_precision", "eval_precision", "iterations", "git_commit", "git_dirty",
    "torch_version", "teacher_key", "method_hparams", "protocol_deviations", "protocol_reference",
]


def tidy_runs(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished student run, flat columns, metrics in percent.

    Per-class IoU stays out of the flat columns here (class lists differ across datasets); it is kept in
    the ``per_class_iou`` / ``class_names`` object columns and flattened for the CSV by :func:`csv_frame`.
    """
    rows = []
    for record in records:
        if record.get("role", "student") != "student":
            continue
        final = record.get("final") or {}
        best = record.get("best") or {}
        timing = record.get("timing") or {}
        cost = record.get("cost") or {}
        env = record.get("environment") or {}
        size = cost.get("flops_input_size") or []
        flops = _num(cost.get("flops"))
        components = record.get("method_components") or []
        rows.append({
            "part": record.get("suite"),
            "table": record.get("table"),
            "dataset": record.get("dataset"),
            "student": record.get("student"),
            "teacher": record.get("teacher"),
            "method": record.get("method"),
            "seed": record.get("seed"),
            "run_key": record.get("run_key"),
            "final_split": final.get("split"),
            "final_iteration": final.get("iteration"),
            "final_miou": _pct(final.get("miou")),
            "final_pixel_accuracy": _pct(final.get("pixel_accuracy")),
            "best_selected_on": best.get("selected_on"),
            "best_split": best.get("split"),
            "best_iteration": best.get("iteration"),
            "best_miou": _pct(best.get("miou")),
            "best_pixel_accuracy": _pct(best.get("pixel_accuracy")),
            "params": _num(cost.get("params")),
            "flops": flops,
            "gflops": flops / 1e9 if finite(flops) else math.nan,
            "flops_input_size": "x".join(str(s) for s in size) if size else None,
            "method_params": _num(cost.get("method_params")),
            "device_hours": _num(timing.get("device_hours")),
            "wall_seconds": _num(timing.get("wall_seconds")),
            "seconds_per_iteration": _num(timing.get("seconds_per_iteration")),
            "peak_memory_bytes": _num(timing.get("peak_memory_bytes")),
            "peak_memory_kind": timing.get("peak_memory_kind"),
            "device": timing.get("device"),
            "world_size": timing.get("world_size"),
            "train_precision": (record.get("precision") or {}).get("train"),
            "eval_precision": (record.get("precision") or {}).get("eval"),
            "iterations": record.get("iterations"),
            "git_commit": env.get("git_commit"),
            "git_dirty": env.get("git_dirty"),
            "torch_version": (env.get("versions") or {}).get("torch"),
            "teacher_key": record.get("teacher_key"),
            "method_hparams": "; ".join(
                f"{c.get('name')}(" + ", ".join(f"{k}={v}" for k, v in sorted((c.get("hparams") or {}).items())) + ")"
                for c in components),
            "protocol_deviations": "; ".join(fmt_deviation(d) for d in record.get("protocol_deviations") or []),
            "protocol_reference": record.get("protocol_reference"),
            "class_names": list(record.get("class_names") or []),
            "per_class_iou": [_pct(v) for v in (final.get("per_class_iou") or [])],
            "history": list(record.get("history") or []),
            "qualitative": record.get("qualitative"),
        })
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS + ["class_names", "per_class_iou", "history", "qualitative"])
    if not frame.empty:
        frame = frame.sort_values(["part", "student", "method", "seed", "run_key"], kind="stable",
                                  na_position="last").reset_index(drop=True)
    return frame


def csv_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """The flat per-run table written to results.csv: every scalar column plus ``iou.<class>`` columns."""
    flat = runs[RUN_COLUMNS].copy()
    classes: list[str] = []
    for names in runs["class_names"]:
        for name in names:
            if name not in classes:
                classes.append(name)
    for name in classes:
        flat[f"iou.{name}"] = [
            values[names.index(name)] if name in names and names.index(name) < len(values) else math.nan
            for names, values in zip(runs["class_names"], runs["per_class_iou"])
        ]
    return flat


def load_teachers(results_dir: Path) -> list[dict[str, Any]]:
    """Teacher records (``teachers/<key>/metrics.json``), sorted by key."""
    folder = Path(results_dir) / "teachers"
    records = []
    for path in sorted(folder.glob(f"*/{METRICS}")) if folder.is_dir() else []:
        try:
            records.append(read_json(path))
        except (OSError, ValueError):
            continue
    return records


def teacher_rows(teachers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for record in teachers:
        final = record.get("final") or {}
        cost = record.get("cost") or {}
        rows.append({
            "model": record.get("model") or record.get("teacher") or "?",
            "key": record.get("teacher_key") or record.get("run_key") or "",
            "dataset": ((record.get("config") or {}).get("dataset") or {}).get("name", record.get("dataset") or ""),
            "split": final.get("split") or "",
            "miou": fmt(_pct(final.get("miou"))),
            "pixel_accuracy": fmt(_pct(final.get("pixel_accuracy"))),
            "params": fmt_millions(_num(cost.get("params"))),
            "device_hours": fmt(_num((record.get("timing") or {}).get("device_hours")), 3),
        })
    return rows


# --- parts ----------------------------------------------------------------------------------------------


@dataclass
class PartInfo:
    """One table of the suite: what it was meant to hold, independent of which runs finished."""

    name: str
    title: str
    table: dict[str, Any] | None
    description: str
    dataset: str
    eval_split: str | None
    selection_split: str | None
    class_names: list[str]
    students: list[str]
    methods: list[str]  # row labels, the suite's order
    method_components: dict[str, list[str]]
    seeds: list[int]
    claims: list[dict[str, Any]]
    run_keys: list[str] | None  # None: unknown (no suite record) -> every run of the part counts
    baseline: str | None = None  # the no-distillation row label
    protocol: str | None = None  # the table's (paper's) protocol
    reproduction: str = ""  # our protocol, from a run's resolved config
    protocol_card: dict[str, Any] | None = None  # the recipe's card (Suite.protocol_record), from the suite record
    compute: dict[str, Any] | None = None  # the equal-compute view (ComputeView.record), from the suite record

    @property
    def anchor(self) -> str:
        return "part-" + "".join(c if c.isalnum() else "-" for c in self.name)

    @property
    def compute_keys(self) -> list[str]:
        """The runs of the equal-compute view (their own keys, next to ``run_keys``)."""
        return list((self.compute or {}).get("run_keys") or [])

    @property
    def owned_keys(self) -> list[str]:
        """Every run key this table asks for: both views."""
        return (self.run_keys or []) + self.compute_keys


def _baseline(methods: list[str], components: dict[str, list[str]]) -> str | None:
    for label in methods:
        if components.get(label) == ["none"]:
            return label
    return "none" if "none" in methods else None


def parts_from(suite: dict[str, Any] | None, runs: pd.DataFrame) -> list[PartInfo]:
    """Parts from the suite record; without one, reconstructed from the finished runs (sorted)."""
    parts = []
    if suite:
        for part in suite.get("parts", []):
            methods = [m["label"] for m in part.get("methods", [])]
            components = {m["label"]: list(m.get("components", [])) for m in part.get("methods", [])}
            table = part.get("table")
            parts.append(PartInfo(
                name=part["name"], title=part.get("title") or (table or {}).get("title") or part["name"],
                table=table, description=part.get("description") or "", dataset=part.get("dataset") or "",
                eval_split=part.get("eval_split"), selection_split=part.get("selection_split"),
                class_names=list(part.get("class_names") or []), students=list(part.get("students") or []),
                methods=methods, method_components=components, seeds=list(part.get("seeds") or []),
                claims=list(part.get("claims") or []), run_keys=list(part.get("run_keys") or []),
                baseline=_baseline(methods, components), protocol=(table or {}).get("protocol"),
                protocol_card=part.get("protocol"), compute=part.get("compute")))
    else:
        for name in sorted(runs["part"].dropna().unique()):
            sub = runs[runs["part"] == name]
            methods = sorted(sub["method"].unique(), key=lambda m: (m != "none", m))
            parts.append(PartInfo(
                name=name, title=str(sub["table"].iloc[0] or name), table=None, description="",
                dataset=str(sub["dataset"].iloc[0]), eval_split=sub["final_split"].iloc[0],
                selection_split=sub["best_selected_on"].dropna().iloc[0] if sub["best_selected_on"].notna().any()
                else None, class_names=list(sub["class_names"].iloc[0]), students=sorted(sub["student"].unique()),
                methods=methods, method_components={}, seeds=sorted(int(s) for s in sub["seed"].unique()),
                claims=[], run_keys=None, baseline="none" if "none" in methods else None))
    return parts


def part_runs(runs: pd.DataFrame, part: PartInfo) -> pd.DataFrame:
    """The finished runs of a part that belong to its current configuration (run key in the suite record)."""
    if runs.empty:
        return runs
    sub = runs[runs["part"] == part.name]
    if part.run_keys is not None:
        sub = sub[sub["run_key"].isin(part.run_keys)]
    return sub


def stale_runs(runs: pd.DataFrame, parts: list[PartInfo]) -> pd.DataFrame:
    """Finished runs in the store that no current part asks for (an older configuration of the suite)."""
    if runs.empty:
        return runs
    keep = pd.Series(False, index=runs.index)
    for part in parts:
        keep |= runs.index.isin(part_runs(runs, part).index)
        if part.compute_keys:
            keep |= (runs["part"] == part.name) & runs["run_key"].isin(part.compute_keys)
    return runs[~keep]


def reproduction_protocol(records: list[dict[str, Any]], part: PartInfo) -> str:
    """Our evaluation protocol, read from the resolved config of the part's first finished run."""
    for record in records:
        if record.get("suite") != part.name or not record.get("config"):
            continue
        if part.run_keys is not None and record.get("run_key") not in part.run_keys:
            continue  # an older configuration, or a run of the equal-compute view (its own iterations)
        config = record["config"]
        dataset = config.get("dataset") or {}
        schedule = config.get("schedule") or {}
        size = dataset.get("eval_size")
        bits = [
            f"eval on {dataset.get('eval_split') or part.eval_split}",
            "full resolution" if size is None else f"eval size {size}",
            f"absent classes {dataset.get('absent_class_policy', '?')}",
            f"train crop {dataset.get('crop')}",
        ]
        if schedule.get("iterations"):
            bits.append(f"{schedule['iterations']} iterations")
        elif schedule.get("epochs"):
            bits.append(f"{schedule['epochs']} epochs")
        if schedule.get("batch_size"):
            bits.append(f"batch {schedule['batch_size']}")
        return ", ".join(str(b) for b in bits)
    return ""


# --- the per-cell view ----------------------------------------------------------------------------------


def _unfinished_counts(unfinished: list[dict[str, Any]], part: PartInfo) -> dict[tuple[str, str], dict[str, int]]:
    counts: dict[tuple[str, str], dict[str, int]] = {}
    keys = set(part.run_keys or [])
    for entry in unfinished:
        if part.run_keys is not None and entry.get("run_key") not in keys:
            continue
        config = entry.get("config") or {}
        student = (config.get("student") or {}).get("name")
        method = (config.get("method") or {}).get("label")
        if student is None or method is None:
            continue
        bucket = counts.setdefault((student, method), {})
        status = entry.get("status", "pending")
        bucket[status] = bucket.get(status, 0) + 1
    return counts


def cells(runs: pd.DataFrame, part: PartInfo, unfinished: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (student, method) of the part, suite order, plus claimed-only rows; numbers and status.

    Rows for claims whose method is not a row of the part come after the part's methods, flagged
    ``implemented=False``. Numeric columns are in percent; formatted strings are in ``*_text`` columns.
    """
    sub = part_runs(runs, part)
    waiting = _unfinished_counts(unfinished, part)
    claims = {(c["student"], c["method"]): c for c in part.claims}
    students = list(part.students)
    for claim in part.claims:
        if claim["student"] not in students:
            students.append(claim["student"])
    extra_methods = [c["method"] for c in part.claims if c["method"] not in part.methods]
    extra_methods = list(dict.fromkeys(extra_methods))
    rows = []
    for student in students:
        base = sub[(sub["student"] == student) & (sub["method"] == part.baseline)] if part.baseline else sub.iloc[0:0]
        base_final = dict(zip(base["seed"], base["final_miou"]))
        base_best = dict(zip(base["seed"], base["best_miou"]))
        base_mean = mean_std(base["final_miou"])[0]
        base_best_mean = mean_std(base["best_miou"])[0]
        for order, method in enumerate(part.methods + extra_methods):
            claim = claims.get((student, method))
            implemented = method in part.methods
            if not implemented and claim is None:
                continue
            own = sub[(sub["student"] == student) & (sub["method"] == method)].sort_values("seed")
            final = mean_std(own["final_miou"])
            best = mean_std(own["best_miou"])
            pa = mean_std(own["final_pixel_accuracy"])
            hours = mean_std(own["device_hours"])
            row: dict[str, Any] = {
                "part": part.name, "student": student, "method": method, "order": order,
                "implemented": implemented, "is_baseline": method == part.baseline,
                "seeds": [int(s) for s in own["seed"]], "n": final[2],
                "final_mean": final[0], "final_std": final[1],
                "best_mean": best[0], "best_std": best[1], "best_n": best[2],
                "best_selected_on": ", ".join(sorted(own["best_selected_on"].dropna().unique())),
                "pa_mean": pa[0], "pa_std": pa[1],
                "params": own["params"].iloc[0] if len(own) else math.nan,
                "gflops": own["gflops"].iloc[0] if len(own) else math.nan,
                "flops_input_size": own["flops_input_size"].iloc[0] if len(own) else None,
                "method_params": own["method_params"].iloc[0] if len(own) else math.nan,
                "device_hours": hours[0],
                # What its runs changed of their protocol (every seed's, once), and what they were compared with.
                "deviations": "; ".join(dict.fromkeys(d for text in own["protocol_deviations"] if text
                                                      for d in text.split("; "))),
                "deviation_reference": ", ".join(sorted({r for r in own["protocol_reference"] if r})),
                "delta_none": final[0] - base_mean if method != part.baseline else math.nan,
                "delta_none_best": best[0] - base_best_mean if method != part.baseline else math.nan,
            }
            # Paired per-seed gains over the baseline trained with the same seeds.
            if method != part.baseline and len(own):
                diffs = [m - base_final[s] for s, m in zip(own["seed"], own["final_miou"]) if s in base_final]
                diffs_best = [m - base_best[s] for s, m in zip(own["seed"], own["best_miou"]) if s in base_best]
                row["gain"], row["gain_low"], row["gain_high"], row["gain_n"] = paired_ci(diffs)
                g = paired_ci(diffs_best)
                row["gain_best"], row["gain_best_low"], row["gain_best_high"], row["gain_best_n"] = g
                row["differences"], row["differences_best"] = diffs, diffs_best
                row["p_value"] = paired_test(dict(zip(own["seed"], own["final_miou"])), base_final)[0]
                row["p_value_best"] = paired_test(dict(zip(own["seed"], own["best_miou"])), base_best)[0]
            else:
                row.update(gain=math.nan, gain_low=math.nan, gain_high=math.nan, gain_n=0, gain_best=math.nan,
                           gain_best_low=math.nan, gain_best_high=math.nan, gain_best_n=0)
                row.update(differences=[], differences_best=[], p_value=math.nan, p_value_best=math.nan)
            # The claim, compared with the checkpoint it states.
            row["claim"] = claim
            row["claim_miou"] = claim["miou"] if claim and finite(claim.get("miou")) else math.nan
            row["claim_pm"] = claim.get("miou_pm") if claim and finite(claim.get("miou_pm")) else math.nan
            row["claim_checkpoint"] = claim.get("checkpoint", "unknown") if claim else None
            row["claim_protocol"] = (claim.get("protocol") if claim else None) or part.protocol
            row["claim_resolution"] = claim.get("eval_resolution") if claim else None
            row["protocol_differs"] = bool(claim and claim.get("protocol") and part.protocol
                                           and claim["protocol"] != part.protocol)
            compare_best = bool(claim and claim.get("checkpoint") == "best" and finite(best[0]))
            row["compared_on"] = ("best" if compare_best else "last") if claim else None
            reproduced = best[0] if compare_best else final[0]
            row["reproduced"] = reproduced
            # The reproduced mean's 95% t-interval over seeds: the verdict's rule where there is more than one.
            _, row["reproduced_low"], row["reproduced_high"], row["reproduced_n"] = paired_ci(
                own["best_miou"] if compare_best else own["final_miou"])
            row["claim_delta"] = (reproduced - row["claim_miou"] if finite(row["claim_miou"]) and finite(reproduced)
                                  else math.nan)
            row["flag"] = _mark(row["claim_delta"], row["claim_pm"], "the claim")
            # A claimed gain over none, compared with the paired gain on the checkpoint the claim states.
            row["claim_gain"] = claim["miou_delta"] if claim and finite(claim.get("miou_delta")) else math.nan
            gain_best = bool(finite(row["claim_gain"]) and claim.get("checkpoint") == "best"
                             and finite(row["gain_best"]))
            row["gain_compared_on"] = ("best" if gain_best else "last") if finite(row["claim_gain"]) else None
            prefix = "gain_best" if gain_best else "gain"
            for suffix in ("", "_low", "_high", "_n"):
                row["reproduced_gain" + suffix] = row[prefix + suffix]
            row["gain_delta"] = (row["reproduced_gain"] - row["claim_gain"]
                                 if finite(row["claim_gain"]) and finite(row["reproduced_gain"]) else math.nan)
            row["gain_flag"] = _mark(row["gain_delta"], row["claim_pm"], "the claimed gain")
            # Status: what a reader should conclude about this cell.
            pending = waiting.get((student, method), {})
            expected = len(part.seeds) if part.seeds else final[2]
            row["status"], row["status_kind"] = row_status(row, implemented, student in part.students, expected,
                                                           pending)
            row["status_rule"] = verdict_rule(row)
            row["failed"] = pending.get("failed", 0)
            rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = add_text(add_tests(frame))
    return frame


def row_status(row: dict[str, Any], implemented: bool, in_suite: bool, expected: int,
               pending: dict[str, int]) -> tuple[str, str]:
    """(status text, kind) of one row: "reproduced" only where a claim is met, and the rule that says so.

    With more than one seed the claim must lie within our 95% t-interval (:func:`verdict_interval`); with one,
    within the tolerance: unmarked by :func:`_mark` (inside the paper's ± where it states one, and at most
    TOLERANCE mIoU away). An absolute claim is compared first; a claim stating only a gain compares the paired
    gain. Fewer finished seeds than the suite asks for are named after the words.
    """
    if not implemented:
        return NOT_IMPLEMENTED, "not implemented"
    if not in_suite:
        return NO_STUDENT, "student not in suite"
    n = row["n"]
    if n == 0:
        failed = pending.get("failed", 0)
        if failed:
            return ("failed" if failed >= expected else f"failed ({failed} of {expected} seeds)"), "failed"
        detail = ", ".join(f"{count} {name}" for name, count in sorted(pending.items()))
        return NOT_RUN + (f" ({detail})" if detail else ""), "not run"
    seeds = f" ({n} of {expected} seeds)" if n < expected else ""
    if row.get("deviations") and (finite(row["claim_miou"]) or finite(row["claim_gain"])):
        # Not the paper's protocol: the comparison is shown, marked, but never called a reproduction.
        text, kind = row_status({**row, "deviations": ""}, implemented, in_suite, expected, pending)
        if kind == "reproduced":
            text = text.replace(REPRODUCED, "matches the claim", 1)
        return f"{OFF_PROTOCOL}: {text}", OFF_PROTOCOL
    if finite(row["claim_miou"]):
        delta, flag, what, word = row["claim_delta"], row["flag"], "claim", REPRODUCED
    elif finite(row["claim_gain"]):
        delta, flag, what, word = row["gain_delta"], row["gain_flag"], "claimed gain", REPRODUCED + " (gain)"
    else:
        return NO_CLAIM + seeds, "no claim"
    if not finite(delta):
        reason = "no paired baseline run" if what == "claimed gain" else "no finite mIoU"
        return f"{what} not comparable: {reason}" + seeds, "not comparable"
    interval = verdict_interval(row)
    if interval is not None:
        claimed = row["claim_miou"] if what == "claim" else row["claim_gain"]
        low, high = interval
        if low <= claimed <= high:
            return f"{word}: {IN_INTERVAL}" + seeds, "reproduced"
        side = "below" if claimed > high else "above"
        return (f"{side} {what} by {abs(delta):.2f}: {what} {'above' if side == 'below' else 'below'} our 95% "
                f"interval" + seeds, f"{side} claim")
    if not flag:
        return f"{word}: {IN_TOLERANCE}" + seeds, "reproduced"
    side = "below" if delta < 0 else "above"
    return f"{side} {what} by {abs(delta):.2f}: {OUT_OF_TOLERANCE}" + seeds, f"{side} claim"


def verdict_interval(row: dict[str, Any]) -> tuple[float, float] | None:
    """The 95% t-interval a claim is judged by (the interval rule), or None where the tolerance rule applies.

    An absolute claim is judged by the interval of the reproduced mean over seeds, a claimed gain by that of the
    paired gain; with one seed (or one pair) there is no interval and the tolerance rule of :func:`_mark` decides.
    """
    if finite(row.get("claim_miou")):
        low, high, n = row.get("reproduced_low"), row.get("reproduced_high"), row.get("reproduced_n", 0)
    elif finite(row.get("claim_gain")):
        low, high, n = row.get("reproduced_gain_low"), row.get("reproduced_gain_high"), row.get("reproduced_gain_n", 0)
    else:
        return None
    if n is None or n < 2 or not finite(low) or not finite(high):
        return None
    return float(low), float(high)


def verdict_rule(row: dict[str, Any]) -> str:
    """Which rule gave a row's status: "interval" (n > 1), "tolerance" (one seed), "" (nothing compared)."""
    if row.get("status_kind") not in ("reproduced", "below claim", "above claim"):
        return ""
    return "interval" if verdict_interval(row) is not None else "tolerance"


def status_counts(views: list[PartView]) -> list[tuple[str, int]]:
    """How many rows of the report's tables have each status kind (nonzero ones, in STATUS_KINDS order)."""
    counts = dict.fromkeys(STATUS_KINDS, 0)
    for view in views:
        for kind in view.cells["status_kind"] if not view.cells.empty else []:
            counts[kind] += 1
    return [(kind, count) for kind, count in counts.items() if count]


def status_line(report: Report) -> str:
    """The summary sentence of every format: 'Table rows: 2 reproduced, 1 below claim, 3 no claim.'"""
    counts = ", ".join(f"{count} {kind}" for kind, count in report.status_counts) or "none"
    return (f"Table rows: {counts}. \"reproduced\" only where a claim lies within our 95% t-interval of the mean "
            f"over seeds (of the paired gain for a claimed gain), or, with one seed, within the paper's ± (where "
            f"stated) and {TOLERANCE:g} mIoU.")


def _mark(delta: float, pm: float, what: str) -> str:
    """Why a reproduction is marked ⚠ ('' when it is not): outside the paper's ± or more than TOLERANCE away."""
    flags = []
    if finite(delta):
        if finite(pm) and abs(delta) > pm:
            flags.append(f"outside the paper's ±{pm:.2f}")
        if abs(delta) > TOLERANCE:
            flags.append(f"more than {TOLERANCE:g} mIoU from {what}")
    return "; ".join(flags)


def add_tests(frame: pd.DataFrame) -> pd.DataFrame:
    """Per student of a table: Holm-adjusted p-values over its methods (the family: every method row with a test
    against the baseline), significance after adjustment, the pooled per-seed sd of the paired differences and
    each row's minimal detectable effect at its number of pairs; for the last and the best checkpoint."""
    frame = frame.copy()
    for suffix in ("", "_best"):
        frame["p_holm" + suffix] = math.nan
        frame["sd_pooled" + suffix] = math.nan
        frame["mde" + suffix] = math.nan
    for index in frame.groupby("student", sort=False).groups.values():
        sub = frame.loc[index]
        tested = sub[sub["implemented"] & ~sub["is_baseline"]]
        if tested.empty:
            continue
        for suffix, pairs in (("", "gain_n"), ("_best", "gain_best_n")):
            frame.loc[tested.index, "p_holm" + suffix] = holm(tested["p_value" + suffix])
            sd = pooled_sd(tested["differences" + suffix])[0]
            frame.loc[tested.index, "sd_pooled" + suffix] = sd
            frame.loc[tested.index, "mde" + suffix] = [detectable_effect(sd, int(n)) for n in tested[pairs]]
    for suffix in ("", "_best"):
        frame["significant" + suffix] = [bool(finite(p) and p < ALPHA) for p in frame["p_holm" + suffix]]
    return frame


def fmt_p(p: float, adjusted: float, significant: bool, pairs: int, is_baseline: bool) -> str:
    """'0.004 (0.012) *': the paired test's p, its Holm-adjusted p, * when significant after adjustment;
    'n/a (1 common seed)' where no test is possible."""
    if is_baseline:
        return "–"
    if not finite(p):
        if not pairs:
            return "–"
        return f"n/a ({pairs} common seed{'s' if pairs != 1 else ''})"

    def one(value: float) -> str:
        return "<0.001" if value < 0.001 else f"{value:.3f}"

    return f"{one(p)} ({one(adjusted)})" + (" *" if significant else "")


def detectable_effects(view_cells: pd.DataFrame, seeds: int) -> list[dict[str, Any]]:
    """Per student: the pooled sd of the paired differences and the minimal detectable effect at ``seeds`` seeds
    (last and best checkpoint), with the sentence the report's header shows."""
    out = []
    if view_cells.empty:
        return out
    for student in dict.fromkeys(view_cells["student"]):
        sub = view_cells[(view_cells["student"] == student) & view_cells["implemented"] & ~view_cells["is_baseline"]]
        sd, dof, used = pooled_sd(sub["differences"])
        sd_best, _, _ = pooled_sd(sub["differences_best"])
        mde, mde_best = detectable_effect(sd, seeds), detectable_effect(sd_best, seeds)
        if seeds < 2:
            text = f"{student}: n/a with {seeds} seed (a detectable effect needs at least two paired seeds)"
        elif not finite(sd):
            text = f"{student}: n/a (no method has two seeds paired with the baseline yet)"
        else:
            text = (f"{student}: {mde:.2f} mIoU at {seeds} seeds (last checkpoint; best {fmt(mde_best)}), from the sd "
                    f"of the paired differences {sd:.2f} pooled over {used} method{'s' if used != 1 else ''} "
                    f"({dof} dof)")
        out.append({"student": student, "sd": sd, "dof": dof, "methods": used, "seeds": seeds, "mde": mde,
                    "sd_best": sd_best, "mde_best": mde_best, "text": text})
    return out


def tests_note(seeds: int) -> str:
    """How the report tests, corrects and sizes: the sentence under every table of paired gains."""
    if seeds == 1:
        return ("Single-seed table: one run per cell, so no intervals, no paired tests and no detectable effect; "
                "claims are judged by the tolerance rule.")
    return (f"p (Holm): two-sided paired t-test against the no-distillation row over the seeds both ran "
            f"(scipy.stats.ttest_rel), then {CORRECTION}'s step-down correction over the methods of this table and "
            f"student; * = significant after correction (adjusted p < {ALPHA:g}); n/a with one common seed. "
            f"MDE: the smallest true gain this table detects with {POWER:.0%} power (two-sided α = {ALPHA:g}, paired "
            f"t, exact noncentral t) at its number of seeds, from the pooled per-seed sd of the paired differences.")


def add_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Formatted columns every renderer uses verbatim."""
    frame = frame.copy()
    frame["final_text"] = [fmt_pm(m, s, n) for m, s, n in zip(frame.final_mean, frame.final_std, frame.n)]
    frame["best_text"] = [fmt_pm(m, s, n) for m, s, n in zip(frame.best_mean, frame.best_std, frame.best_n)]
    frame["pa_text"] = [fmt(m) for m in frame.pa_mean]
    frame["delta_none_text"] = [fmt_signed(d) for d in frame.delta_none]
    frame["gain_text"] = [fmt_ci(*v) for v in zip(frame.gain, frame.gain_low, frame.gain_high, frame.gain_n)]
    frame["gain_best_text"] = [fmt_ci(*v) for v in zip(frame.gain_best, frame.gain_best_low, frame.gain_best_high,
                                                       frame.gain_best_n)]
    for suffix, pairs in (("", "gain_n"), ("_best", "gain_best_n")):
        frame["p" + suffix + "_text"] = [fmt_p(*v) for v in zip(frame["p_value" + suffix], frame["p_holm" + suffix],
                                                                 frame["significant" + suffix], frame[pairs],
                                                                 frame["is_baseline"])]
    frame["mde_text"] = [fmt(m) for m in frame.mde]
    frame["params_text"] = [fmt_millions(p) for p in frame.params]
    frame["gflops_text"] = [fmt(g) for g in frame.gflops]
    frame["method_params_text"] = [fmt_count(p) for p in frame.method_params]
    frame["device_hours_text"] = [fmt(h, 3) for h in frame.device_hours]
    frame["claim_text"] = [fmt_claim(c) for c in frame.claim]
    frame["claim_delta_text"] = [fmt_signed(d) for d in frame.claim_delta]
    frame["claim_gain_text"] = [fmt_claim_gain(c) for c in frame.claim]
    frame["reproduced_gain_text"] = [
        fmt_gain(*v) if finite(g) else "–" for g, *v in zip(frame.claim_gain, frame.reproduced_gain,
                                                            frame.reproduced_gain_low, frame.reproduced_gain_high,
                                                            frame.reproduced_gain_n)]
    frame["gain_delta_text"] = [fmt_signed(d) for d in frame.gain_delta]
    frame["reproduced_text"] = [
        (r.best_text if r.compared_on == "best" else r.final_text) if r.n else "–" for r in frame.itertuples()]
    return frame


def rankings(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Per student: methods having both a claim and a reproduction, ranked by each, with Kendall's τ."""
    out = []
    if frame.empty:
        return out
    for student in dict.fromkeys(frame["student"]):
        sub = frame[(frame["student"] == student) & frame["claim_miou"].notna() & frame["reproduced"].notna()]
        tau, p, n = kendall(sub["claim_miou"].tolist(), sub["reproduced"].tolist())
        methods = [m + (f" {DEVIATION_MARK}" if d else "") for m, d in zip(sub["method"], sub["deviations"])]
        claimed_rank = sub["claim_miou"].rank(ascending=False, method="min").astype(int).tolist()
        reproduced_rank = sub["reproduced"].rank(ascending=False, method="min").astype(int).tolist()
        rows = sorted(zip(claimed_rank, reproduced_rank, methods, sub["claim_miou"], sub["reproduced"]),
                      key=lambda r: (r[0], r[1], r[2]))
        if n >= 2 and finite(tau):
            text = f"τ = {tau:+.3f} (n={n} methods, p = {p:.3f})"
        else:
            text = f"τ: n/a (n={n} method{'s' if n != 1 else ''} with both a claim and a reproduction)"
        out.append({"student": student, "tau": tau, "p": p, "n": n, "text": text,
                    "rows": [{"claimed_rank": c, "reproduced_rank": r, "method": m, "claimed": fmt(cm),
                              "reproduced": fmt(rm)} for c, r, m, cm, rm in rows]})
    return out


def heatmap_matrix(runs: pd.DataFrame, part: PartInfo, student: str) -> tuple[list[str], list[str], np.ndarray]:
    """Methods × classes mean (over seeds, NaN-aware) per-class IoU in percent, last checkpoint."""
    sub = part_runs(runs, part)
    sub = sub[sub["student"] == student]
    classes = list(part.class_names) or (list(sub["class_names"].iloc[0]) if len(sub) else [])
    methods = [m for m in part.methods if (sub["method"] == m).any()]
    matrix = np.full((len(methods), len(classes)), np.nan)
    for i, method in enumerate(methods):
        values = [v for v in sub[sub["method"] == method]["per_class_iou"] if len(v) == len(classes)]
        if values:
            array = np.asarray(values, dtype=float)
            with np.errstate(all="ignore"):
                counts = np.isfinite(array).sum(axis=0)
                sums = np.nansum(array, axis=0)
                matrix[i] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return methods, classes, matrix


def curve_series(runs: pd.DataFrame, part: PartInfo, student: str) -> list[dict[str, Any]]:
    """Per method: selection-split mIoU (%) against iteration, mean over seeds with its sample std, from ``history``.

    At each iteration the mean is over the seeds that evaluated there (n per point); one seed has no std.
    """
    sub = part_runs(runs, part)
    sub = sub[sub["student"] == student] if not sub.empty else sub
    series = []
    for method in part.methods:
        own = sub[sub["method"] == method]
        by_iteration: dict[int, list[float]] = {}
        splits: set[str] = set()
        for history in own["history"]:
            for entry in history or []:
                if part.selection_split and entry.get("split") != part.selection_split:
                    continue
                splits.add(str(entry.get("split")))
                by_iteration.setdefault(int(entry["iteration"]), []).append(_pct(entry.get("miou")))
        if not by_iteration:
            continue
        iterations = sorted(by_iteration)
        stats_ = [mean_std(by_iteration[i]) for i in iterations]
        series.append({"method": method, "split": ", ".join(sorted(splits)), "iterations": iterations,
                       "mean": [m for m, _, _ in stats_], "std": [sd for _, sd, _ in stats_],
                       "n": [k for _, _, k in stats_]})
    return series


def rows_frame(report: Report) -> pd.DataFrame:
    """tables.csv: one line per table row (part × student × method) with its claim, reproduction and status."""
    columns = {"part": "part", "student": "student", "method": "method", "n": "n", "final_mean": "final_miou_mean",
               "final_std": "final_miou_std", "best_mean": "best_miou_mean", "best_std": "best_miou_std",
               "claim_miou": "claim_miou", "claim_pm": "claim_pm", "claim_gain": "claim_gain",
               "claim_checkpoint": "claim_checkpoint", "compared_on": "compared_on", "reproduced": "reproduced",
               "claim_delta": "claim_delta", "reproduced_gain": "reproduced_gain", "gain_delta": "gain_delta",
               "flag": "flag", "gain_flag": "gain_flag", "status": "status", "status_kind": "status_kind",
               "status_rule": "status_rule", "deviations": "protocol_deviations"}
    frames = []
    for view in report.parts:
        if view.cells.empty:
            continue
        frame = view.cells[list(columns)].rename(columns=columns)  # already in the table's order
        frame.insert(1, "table", view.info.title)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["part", "table", *list(columns.values())[1:]])
    return pd.concat(frames, ignore_index=True)


@dataclass
class PartView:
    info: PartInfo
    cells: pd.DataFrame
    rankings: list[dict[str, Any]]
    runs: pd.DataFrame
    plots: dict[str, str] = field(default_factory=dict)  # name -> data URI
    unfinished: list[dict[str, Any]] = field(default_factory=list)
    qualitative: list[dict[str, Any]] = field(default_factory=list)  # prediction panels (report/qualitative.py)
    effects: list[dict[str, Any]] = field(default_factory=list)  # per student: detectable_effects
    compute: ComputeView | None = None  # the equal-compute reading of the table (suite key compare_at)

    @property
    def seed_count(self) -> int:
        """The seeds the table asks for (the suite's), else the most any row finished."""
        if self.info.seeds:
            return len(self.info.seeds)
        return int(self.cells["n"].max()) if not self.cells.empty else 0


#: summary.csv: per (part, view, student, method), last checkpoint then the ``*_best`` columns for the best one.
SUMMARY_COLUMNS = ["part", "table", "view", "student", "method", "n", "mean", "std", "n_pairs", "gain", "ci_low",
                   "ci_high", "p_value", "p_holm", "significant", "mde"]
_SUMMARY_SOURCES = {"n": ("n", "best_n"), "mean": ("final_mean", "best_mean"), "std": ("final_std", "best_std"),
                    "n_pairs": ("gain_n", "gain_best_n"), "gain": ("gain", "gain_best"),
                    "ci_low": ("gain_low", "gain_best_low"), "ci_high": ("gain_high", "gain_best_high"),
                    "p_value": ("p_value", "p_value_best"), "p_holm": ("p_holm", "p_holm_best"),
                    "significant": ("significant", "significant_best"), "mde": ("mde", "mde_best")}


def summary_frame(report: Report) -> pd.DataFrame:
    """summary.csv: one row per (part, view, student, method) the suite trains, with the numbers the tables show:
    mean ± std over seeds, the paired gain over none with its 95% interval, the paired t-test p-value, its Holm
    adjustment over the methods of the (part, student), and the minimal detectable effect at the row's pairs."""
    columns = SUMMARY_COLUMNS + [c + "_best" for c in SUMMARY_COLUMNS[5:]] + ["correction"]
    rows = []
    for view in report.parts:
        readings = [("iterations", view.cells)]
        if view.compute is not None:
            readings.append((view.compute.budget, view.compute.cells))
        for name, frame in readings:
            if frame.empty:
                continue
            keep = frame[frame["implemented"] & frame["student"].isin(view.info.students)].sort_values(
                ["order"], kind="stable")
            for student in dict.fromkeys(keep["student"]):
                for r in keep[keep["student"] == student].to_dict("records"):
                    row = {"part": view.info.name, "table": view.info.title, "view": name, "student": student,
                           "method": r["method"]}
                    for column, (last, best) in _SUMMARY_SOURCES.items():
                        row[column], row[column + "_best"] = r[last], r[best]
                    row["correction"] = CORRECTION.lower()
                    rows.append(row)
    return pd.DataFrame(rows, columns=columns)


# --- the equal-compute view (suite key compare_at; benchmark/compute.py) ---------------------------------------


@dataclass
class ComputeView:
    """A table read at equal compute: the same rows and students, each trained for one budget."""

    budget: str  # "device_hours" or "wall_clock": the name of this view in summary.csv
    record: dict[str, Any]  # ComputeView.record of benchmark/compute.py, from the suite record
    info: PartInfo  # the table with this view's run keys and no claims (claims are of the paper's view)
    cells: pd.DataFrame
    runs: pd.DataFrame
    effects: list[dict[str, Any]]

    @property
    def title(self) -> str:
        return self.record.get("name") or self.budget

    def iterations(self, student: str, method: str) -> int | None:
        return (self.record.get("iterations") or {}).get(student, {}).get(method)


def compute_reading(runs: pd.DataFrame, part: PartInfo, unfinished: list[dict[str, Any]],
                    seeds: int) -> ComputeView | None:
    """The equal-compute view of a part (None without ``compare_at``): every statistic of the table, recomputed on
    the runs of that view. The papers' claims were measured at equal iterations, so they stay with the table."""
    if not part.compute:
        return None
    from dataclasses import replace

    info = replace(part, run_keys=part.compute_keys, claims=[])
    frame = cells(runs, info, unfinished)
    return ComputeView(budget=part.compute["budget"], record=part.compute, info=info, cells=frame,
                       runs=part_runs(runs, info), effects=detectable_effects(frame, seeds))


def compute_budget_text(view: ComputeView) -> str:
    """What the equal-compute view holds equal, and where its iteration counts come from."""
    record = view.record
    unit = {"device_hours": "device-hours", "wall_clock": "wall-clock hours"}.get(view.budget, view.budget)
    if record.get("reference"):
        budgets = ", ".join(f"{student} {fmt(hours, 4)} h" for student, hours in (record.get("budget_hours") or
                                                                                  {}).items())
        what = (f"the {unit} the {record['reference']} row costs at the schedule's "
                f"{record.get('reference_iterations')} iterations" + (f" ({budgets} per run)" if budgets else ""))
    else:
        what = f"{record.get('hours'):g} {unit} per run (stated in the suite)"
    devices = ", ".join(record.get("devices") or []) or "–"
    text = (f"Equal compute: every row trained for {what}; a row's iterations = budget / its step time, rounded to "
            f"a multiple of {record.get('round_to')}, from step times profiled once before training on {devices} "
            f"({record.get('profile_file')}). The paper compares at equal iterations (every method runs the "
            f"schedule): its claims are read against that view.")
    if record.get("pending"):
        text += f" Not yet profiled: {', '.join(record['pending'])}."
    return text


def side_by_side(view: PartView, student: str) -> list[dict[str, Any]]:
    """Rows of the two views of one student's table: per method, the equal-iterations and the equal-compute
    numbers (iterations, mIoU last, paired gain, p (Holm), device-hours)."""
    compute = view.compute
    if compute is None or view.cells.empty:
        return []
    reference_iterations = compute.record.get("reference_iterations")

    def texts(frame: pd.DataFrame, method: str, iterations) -> dict[str, str]:
        match = frame[(frame["student"] == student) & (frame["method"] == method)] if not frame.empty else frame
        if match.empty:
            return {"iterations": "–", "miou": "–", "gain": "–", "p": "–", "device_hours": "–", "status": ""}
        r = match.iloc[0]
        return {"iterations": str(iterations) if iterations is not None else "–", "miou": r["final_text"],
                "gain": r["gain_text"], "p": r["p_text"], "device_hours": r["device_hours_text"],
                "status": "" if r["n"] else r["status"]}

    rows = []
    own = view.cells[(view.cells["student"] == student) & view.cells["implemented"]].sort_values("order")
    for method, is_baseline in zip(own["method"], own["is_baseline"]):
        rows.append({"method": method, "is_baseline": bool(is_baseline),
                     "iterations": texts(view.cells, method, reference_iterations),
                     "compute": texts(compute.cells, method, compute.iterations(student, method))})
    return rows


# --- the whole report -----------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything the renderers need, computed from the result store alone."""

    name: str
    description: str
    suite_path: str
    parts: list[PartView]
    runs: pd.DataFrame
    stale: pd.DataFrame
    unfinished: list[dict[str, Any]]
    teachers: list[dict[str, Any]]
    provenance: dict[str, Any]
    hparams: list[dict[str, Any]]
    has_suite_record: bool
    status_counts: list[tuple[str, int]] = field(default_factory=list)  # (status kind, rows), see row_status


def unfinished_rows(unfinished: list[dict[str, Any]], parts: list[PartInfo]) -> list[dict[str, Any]]:
    owner = {key: part.name for part in parts for key in part.owned_keys}
    rows = []
    for entry in unfinished:
        config = entry.get("config") or {}
        rows.append({
            "part": owner.get(entry.get("run_key"), "(not in the current suite)"),
            "student": (config.get("student") or {}).get("name", "?"),
            "method": (config.get("method") or {}).get("label", "?"),
            "seed": config.get("seed", "?"),
            "status": entry.get("status", "pending"),
            "reason": entry.get("reason") or {"running": "in progress (or killed without a status update)",
                                               "interrupted": "stopped after a checkpoint; re-run to resume",
                                               "pending": "not started"}.get(entry.get("status"), ""),
            "run_key": entry.get("run_key", ""),
        })
    order = {"failed": 0, "interrupted": 1, "running": 2, "pending": 3}
    rows.sort(key=lambda r: (order.get(r["status"], 9), str(r["part"]), str(r["student"]), str(r["method"]),
                             str(r["seed"]), r["run_key"]))
    return rows


def provenance(records: list[dict[str, Any]], teachers: list[dict[str, Any]]) -> dict[str, Any]:
    """What a reviewer checks before trusting the numbers: code version, libraries, hardware, conventions."""
    def counted(values) -> list[tuple[str, int]]:
        counts: dict[str, int] = {}
        for value in values:
            counts[str(value)] = counts.get(str(value), 0) + 1
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))

    all_records = list(records) + list(teachers)
    envs = [r.get("environment") or {} for r in all_records]
    commits = counted(
        f"{e.get('git_commit') or 'unknown'}{' (dirty working tree)' if e.get('git_dirty') else ''}" for e in envs)
    packages = sorted({k for e in envs for k in (e.get("versions") or {})})
    versions = [(package, counted((e.get("versions") or {}).get(package) for e in envs)) for package in packages]
    timing = [r.get("timing") or {} for r in all_records]
    cost = [r.get("cost") or {} for r in all_records]
    return {
        "commits": commits,
        "versions": versions,
        "devices": counted(f"{t.get('device')} × {t.get('world_size')}" for t in timing),
        "cuda": counted(e.get("cuda") or "none (CPU)" for e in envs),
        "platforms": counted(e.get("platform") for e in envs),
        "memory_kinds": counted(t.get("peak_memory_kind") for t in timing if t.get("peak_memory_kind")),
        "precisions": counted(precision_text(r.get("precision")) for r in all_records),
        "flops_conventions": counted(c.get("flops_convention") for c in cost if c.get("flops_convention")),
        "schemas": counted(r.get("schema") for r in all_records),
        "records": len(all_records),
    }


def precision_text(precision: dict[str, str] | None) -> str:
    """``"bf16"`` when a run trained and evaluated in one precision, ``"train bf16, eval fp32"`` otherwise."""
    if not precision:
        return "not recorded"
    train, evaluation = precision.get("train"), precision.get("eval")
    return str(train) if train == evaluation else f"train {train}, eval {evaluation}"


def hparam_rows(records: list[dict[str, Any]], parts: list[PartInfo]) -> list[dict[str, Any]]:
    """The resolved hyperparameters of every method row, as stored with its runs (one line per distinct set)."""
    order = {(p.name, m): (i, j) for i, p in enumerate(parts) for j, m in enumerate(p.methods)}
    seen: dict[tuple, dict[str, Any]] = {}
    for record in records:
        if record.get("role", "student") != "student":
            continue
        components = record.get("method_components") or []
        text = "; ".join(
            f"{c.get('name')}(" + ", ".join(f"{k}={v}" for k, v in sorted((c.get("hparams") or {}).items())) + ")"
            for c in components)
        key = (record.get("suite"), record.get("method"), text)
        seen.setdefault(key, {"part": key[0], "method": key[1], "hparams": text, "students": set()})
        seen[key]["students"].add(record.get("student"))
    rows = [dict(v, students=", ".join(sorted(str(s) for s in v["students"]))) for v in seen.values()]
    rows.sort(key=lambda r: (order.get((r["part"], r["method"]), (999, 999)), str(r["part"]), str(r["method"]),
                             r["hparams"]))
    return rows


def collect(results_dir: Path) -> Report:
    """Read the store (suite record, finished and unfinished runs, teachers) and aggregate every view."""
    from benchmark.store import load_records

    results_dir = Path(results_dir)
    suite, records, unfinished = load_records(results_dir)
    records = [r for r in records if r.get("role", "student") == "student"]
    teachers = load_teachers(results_dir)
    runs = tidy_runs(records)
    parts = parts_from(suite, runs)
    views = []
    for part in parts:
        part.reproduction = reproduction_protocol(records, part)
        frame = cells(runs, part, unfinished)
        owner_keys = set(part.owned_keys)
        view = PartView(info=part, cells=frame, rankings=rankings(frame), runs=part_runs(runs, part),
                        unfinished=[u for u in unfinished if u.get("run_key") in owner_keys])
        view.effects = detectable_effects(frame, view.seed_count)
        view.compute = compute_reading(runs, part, unfinished, view.seed_count)
        views.append(view)
    return Report(
        name=(suite or {}).get("name") or results_dir.name,
        description=(suite or {}).get("description") or "",
        suite_path=(suite or {}).get("path") or "(no suite record: parts reconstructed from the runs)",
        parts=views, runs=runs, stale=stale_runs(runs, parts), unfinished=unfinished_rows(unfinished, parts),
        teachers=teacher_rows(teachers), provenance=provenance(records, teachers),
        hparams=hparam_rows(records, parts), has_suite_record=suite is not None, status_counts=status_counts(views))


def comparison_grid(view: PartView) -> tuple[list[str], list[dict[str, Any]]]:
    """The paper's layout: rows = methods (suite order, then claimed-only ones), columns = students.

    Each cell: claimed, reproduced (on the checkpoint the claim states), Δ, mark, status, and for a claimed
    gain over none (see :func:`has_gain_claims`) the claimed gain, the reproduced paired gain, their Δ and
    mark; None where the part has neither a claim nor a row for that student.
    """
    frame = view.cells
    if frame.empty:
        return [], []
    students = list(dict.fromkeys(frame["student"]))
    methods = list(dict.fromkeys(frame.sort_values(["order"], kind="stable")["method"]))
    rows = []
    for method in methods:
        cells_ = []
        for student in students:
            match = frame[(frame["student"] == student) & (frame["method"] == method)]
            if match.empty:
                cells_.append(None)
                continue
            r = match.iloc[0]
            has_runs = r["n"] > 0
            cells_.append({
                "claimed": r["claim_text"],
                "checkpoint": r["claim_checkpoint"],
                "protocol": r["claim_protocol"],
                "protocol_differs": bool(r["protocol_differs"]),
                "source": (r["claim"] or {}).get("source", "") if r["claim"] else "",
                "note": "; ".join(x for x in ((r["claim"] or {}).get("note"), r["claim_resolution"] and
                                              f"eval resolution {r['claim_resolution']}") if x) if r["claim"] else "",
                "reproduced": r["reproduced_text"] if has_runs and r["claim"] else r["final_text"] if has_runs
                else r["status"],
                "compared_on": r["compared_on"],
                "delta": r["claim_delta_text"] if r["claim"] else "",
                "flag": r["flag"],
                "claimed_gain": r["claim_gain_text"] if r["claim"] else "",
                "reproduced_gain": r["reproduced_gain_text"] if r["claim"] else "",
                "gain_compared_on": r["gain_compared_on"],
                "gain_delta": r["gain_delta_text"] if r["claim"] else "",
                "gain_flag": r["gain_flag"],
                "status": r["status"],
                "has_runs": bool(has_runs),
                "deviations": r["deviations"] if has_runs else "",
                "deviation_reference": r["deviation_reference"] if has_runs else "",
            })
        implemented = bool(frame[frame["method"] == method]["implemented"].iloc[0])
        rows.append({"method": method, "implemented": implemented, "cells": cells_})
    return students, rows


def has_gain_claims(view: PartView) -> bool:
    """Whether a claim of this part states a gain over none: the comparison then shows the gain columns."""
    return any(finite(c.get("miou_delta")) for c in view.info.claims)
