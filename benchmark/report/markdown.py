"""tables.md: the same tables as the HTML, as GitHub-flavoured Markdown (text escaped, no raw HTML)."""

from __future__ import annotations

from benchmark.report.tables import (
    DEVIATION_MARK,
    MDE_COMPUTE_LABEL,
    MDE_LABEL,
    SIDE_BY_SIDE_KEYS,
    TOLERANCE,
    PartView,
    Report,
    comparison_grid,
    compute_budget_text,
    has_gain_claims,
    side_by_side,
    status_line,
    tests_note,
)

FLOPS_NOTE = "GFLOPs at the stated input size; fvcore counts one multiply-add as one FLOP."


def esc(text) -> str:
    """Escape Markdown table/inline syntax, links and HTML: the text shows as written, never as markup."""
    text = str(text)
    for char, repl in (("\\", "\\\\"), ("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("*", "\\*"),
                       ("_", "\\_"), ("`", "\\`"), ("](", "]\\("), ("\n", " ")):
        text = text.replace(char, repl)
    return text


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines + [""]


def comparison_lines(view: PartView) -> list[str]:
    students, rows = comparison_grid(view)
    if not view.info.claims:
        return ["The suite gives no paper numbers for this table.", ""]
    if not rows:
        return ["No claims and no runs.", ""]
    gains = has_gain_claims(view)
    header = ["Method"]
    for student in students:
        header += [f"{student}: claimed", f"{student}: reproduced", f"{student}: Δ"]
        if gains:
            header += [f"{student}: claimed gain", f"{student}: reproduced gain", f"{student}: Δ gain"]
    body = []
    for row in rows:
        line = [row["method"]]
        for cell in row["cells"]:
            if cell is None:
                line += ["", "", ""] + (["", "", ""] if gains else [])
                continue
            claimed = cell["claimed"] + (f" ({cell['checkpoint']})" if cell["claimed"] != "–" else "")
            reproduced = cell["reproduced"] + (" [best]" if cell["compared_on"] == "best" and cell["has_runs"] else "")
            reproduced += f" {DEVIATION_MARK}" if cell["deviations"] else ""
            delta = cell["delta"] + (" ⚠" if cell["flag"] else "")
            line += [claimed, reproduced, delta]
            if gains:
                claimed_gain = cell["claimed_gain"] + (f" ({cell['checkpoint']})"
                                                       if cell["claimed_gain"] not in ("", "–") else "")
                gain = cell["reproduced_gain"] + (" [best]" if cell["gain_compared_on"] == "best" else "")
                line += [claimed_gain, gain, cell["gain_delta"] + (" ⚠" if cell["gain_flag"] else "")]
        body.append(line)
    lines = table(header, body)
    notes = []
    for row in rows:
        for student, cell in zip(students, row["cells"]):
            if cell and cell["flag"]:
                notes.append(f"⚠ {row['method']} / {student}: {cell['flag']}.")
            if cell and cell["gain_flag"]:
                notes.append(f"⚠ {row['method']} / {student} (gain over none): {cell['gain_flag']}.")
            if cell and cell["protocol_differs"]:
                notes.append(f"{row['method']} / {student}: claim protocol differs: {cell['protocol']}.")
            if cell and cell["deviations"]:
                notes.append(f"{DEVIATION_MARK} {row['method']} / {student}: off protocol, not a reproduction (compared "
                             f"with the {cell['deviation_reference']}): {cell['deviations']}.")
    lines += [f"- {esc(n)}" for n in notes] + ([""] if notes else [])
    marked = any(cell and cell["deviations"] for row in rows for cell in row["cells"])
    lines += [esc(f"Δ = reproduced − claimed, on the checkpoint the claim states ([best] = best on the selection "
                  f"split, else last); ⚠ = outside the paper's ± or more than {TOLERANCE:g} mIoU away"
                  + (f"; {DEVIATION_MARK} = its runs left the protocol (listed above), so it is no reproduction."
                     if marked else ".")), ""]
    if gains:
        lines += [esc("Claimed gain: the paper's gain over the no-distillation row of the same student; reproduced "
                      "gain: paired gain over none (mean over seeds [95% CI]) on the checkpoint the claim states; "
                      "Δ gain = reproduced gain − claimed gain, marked by the same rule. Kendall's τ ranks only "
                      "claims with an absolute mIoU."), ""]
    for ranking in view.rankings:
        lines.append(esc(f"Ranking on {ranking['student']}: Kendall {ranking['text']}"))
        lines.append("")
    return lines


def results_lines(view: PartView, student: str) -> list[str]:
    frame = view.cells[(view.cells["student"] == student) & view.cells["implemented"]].sort_values("order")
    selected = ", ".join(sorted({s for s in frame["best_selected_on"] if s})) or "–"
    header = ["Method", "n", "mIoU last", "Δ none", "paired gain [95% CI]", "p (Holm)", "MDE",
              f"mIoU best ({selected})", "paired gain best", "p (Holm) best", "PixAcc", "Params (M)", "GFLOPs",
              "Extra params", "GPU-h", "Claimed", "Δ claim", "Status"]
    rows = [[r.method, str(r.n), r.final_text, r.delta_none_text, r.gain_text, r.p_text, r.mde_text, r.best_text,
             r.gain_best_text, r.p_best_text, r.pa_text, r.params_text, r.gflops_text, r.method_params_text,
             r.device_hours_text, r.claim_text,
             r.claim_delta_text + (" ⚠" if r.flag else "") + (f" {DEVIATION_MARK}" if r.deviations and r.n and r.claim else ""),
             r.status + (f" ({r.failed} failed)" if r.failed and r.n
                                                                         else "")] for r in frame.itertuples()]
    return table(header, rows)


def statistics_lines(view: PartView) -> list[str]:
    """The table header's statistics: tests and correction, detectable effects, the equal-compute budget."""
    lines = [esc(tests_note(view.seed_count)), ""]
    if view.seed_count > 1:
        lines += [esc(f"{MDE_LABEL}: " + ("; ".join(e["text"] for e in view.effects)
                                                                            or "–") + "."), ""]
    if view.compute is not None:
        lines += [esc(compute_budget_text(view.compute)), ""]
        if view.seed_count > 1:
            lines += [esc(f"{MDE_COMPUTE_LABEL}: " + ("; ".join(
                e["text"] for e in view.compute.effects) or "–") + "."), ""]
    return lines


def side_by_side_lines(view: PartView, student: str) -> list[str]:
    """Equal iterations next to equal compute, one line per method."""
    rows = side_by_side(view, student)
    if not rows:
        return []
    name = view.compute.title
    header = ["Method"] + [f"{what}: {column}" for what in ("equal iterations", name)
                           for column in ("iterations", "mIoU last", "paired gain [95% CI]", "p (Holm)", "GPU-h")]
    body = [[r["method"]] + [v[k] + (f" ({v['status']})" if k == "miou" and v["status"] else "")
                             for v in (r["iterations"], r["compute"])
                             for k in SIDE_BY_SIDE_KEYS] for r in rows]
    return [f"#### {esc(student)}: equal iterations vs {esc(name)}", ""] + table(header, body)


def render_markdown(report: Report) -> str:
    lines = [f"# {esc(report.name)}: results", ""]
    if report.description:
        lines += [esc(report.description), ""]
    lines += [esc(f"Suite: {report.suite_path}. {FLOPS_NOTE} mIoU and pixel accuracy in %, mean ± std over "
                  "seeds (n). Paired gain: mean over seeds of (method − none) with a 95% t-interval."), ""]
    lines += [esc(status_line(report)), ""]
    for view in report.parts:
        info = view.info
        lines += [f"## {esc(info.title)} ({esc(info.name)})", ""]
        table_info = info.table or {}
        meta = [f"Dataset: {info.dataset}", f"eval split: {info.eval_split}",
                f"selection split: {info.selection_split}"]
        if table_info.get("paper"):
            meta.append(f"paper: {table_info['paper']}")
        meta.append(f"paper protocol: {info.protocol or 'not stated'}")
        if table_info.get("source"):
            meta.append(f"source: {table_info['source']}")
        lines += [esc("; ".join(meta) + "."), ""]
        if info.reproduction:
            lines += [esc(f"Reproduction protocol: {info.reproduction}."), ""]
        lines += statistics_lines(view)
        lines += ["### Comparison with the paper", ""] + comparison_lines(view)
        for student in dict.fromkeys(view.cells["student"]) if not view.cells.empty else []:
            if student not in info.students:
                continue
            lines += [f"### {esc(student)}", ""] + results_lines(view, student) + side_by_side_lines(view, student)
    if report.teachers:
        lines += ["## Teachers", ""]
        lines += table(["Model", "Dataset", "Split", "mIoU", "PixAcc", "Params (M)", "GPU-h", "Key"],
                       [[t["model"], t["dataset"], t["split"], t["miou"], t["pixel_accuracy"], t["params"],
                         t["device_hours"], t["key"]] for t in report.teachers])
    if report.unfinished:
        lines += ["## Failed and unfinished runs", ""]
        lines += table(["Part", "Student", "Method", "Seed", "Status", "Reason", "Run key"],
                       [[r["part"], r["student"], r["method"], str(r["seed"]), r["status"], r["reason"],
                         r["run_key"]] for r in report.unfinished])
    return "\n".join(lines).rstrip() + "\n"
