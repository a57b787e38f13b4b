"""tables.tex: booktabs tabulars a paper can ``\\input`` (needs ``\\usepackage{booktabs}``), text escaped."""

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

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
            ">": r"\textgreater{}", "|": r"\textbar{}", "\n": " "}
_UNICODE = {"±": r"$\pm$", "–": "--", "−": "$-$", "…": r"\ldots{}", "τ": r"$\tau$", "Δ": r"$\Delta$",
            "×": r"$\times$", "⚠": r"$^{\dagger}$", "‡": r"$^{\ddagger}$", "→": r"$\rightarrow$", "α": r"$\alpha$"}


def tex(text) -> str:
    """Escape LaTeX specials, then spell the report's own symbols (±, –, τ, Δ) in math mode."""
    out = "".join(_SPECIAL.get(char, char) for char in str(text)).replace("--", "-{}-")  # `--set`, not an en dash
    for char, repl in _UNICODE.items():
        out = out.replace(char, repl)
    return "{}" + out if out.startswith("[") else out  # "\\ [" would read as a row-spacing argument


def comparison_tabular(view: PartView) -> list[str]:
    students, rows = comparison_grid(view)
    if not rows or not view.info.claims:
        return [f"% {tex(view.info.title)} ({tex(view.info.name)}): no paper numbers in the suite", ""]
    info = view.info
    gains = has_gain_claims(view)
    width = 6 if gains else 3
    lines = [f"% {tex(info.title)} ({tex(info.name)}): claimed vs reproduced",
             f"% paper protocol: {tex(info.protocol or 'not stated')}; reproduction: {tex(info.reproduction)}",
             r"\begin{tabular}{l" + ("rlrrlr" if gains else "rlr") * len(students) + "}", r"\toprule"]
    lines.append("Method & " + " & ".join(rf"\multicolumn{{{width}}}{{c}}{{{tex(s)}}}" for s in students) + r" \\")
    lines.append(" ".join(rf"\cmidrule(lr){{{2 + width * i}-{1 + width * (i + 1)}}}" for i in range(len(students))))
    header = "Claimed & Reproduced & $\\Delta$" + (" & Claimed gain & Reproduced gain & $\\Delta$ gain" if gains else "")
    lines.append(" & " + " & ".join([header] * len(students)) + r" \\")
    lines.append(r"\midrule")
    for row in rows:
        parts = [tex(row["method"])]
        for cell in row["cells"]:
            if cell is None:
                parts += [""] * width
                continue
            reproduced = cell["reproduced"] + (" [best]" if cell["compared_on"] == "best" and cell["has_runs"] else "")
            reproduced += f" {DEVIATION_MARK}" if cell["deviations"] else ""
            parts += [tex(cell["claimed"]), tex(reproduced), tex(cell["delta"] + (" ⚠" if cell["flag"] else ""))]
            if gains:
                gain = cell["reproduced_gain"] + (" [best]" if cell["gain_compared_on"] == "best" else "")
                parts += [tex(cell["claimed_gain"]), tex(gain),
                          tex(cell["gain_delta"] + (" ⚠" if cell["gain_flag"] else ""))]
        lines.append(" & ".join(parts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    note = (f"Reproduced: mean ± std over seeds (n). Δ = reproduced − claimed on the checkpoint the claim states "
            f"([best] = best on the selection split, else last). ⚠: outside the paper's ± or more than "
            f"{TOLERANCE:g} mIoU away.")
    if gains:
        note += (" Claimed gain: the paper's gain over the no-distillation row of the same student; reproduced gain: "
                 "paired gain over none (mean over seeds [95% CI]) on the same checkpoint; Δ gain = reproduced gain "
                 "− claimed gain, marked by the same rule. Kendall's τ ranks only claims with an absolute mIoU.")
    deviating = [f"{row['method']} / {student}: {cell['deviations']} (compared with the {cell['deviation_reference']})"
                 for row in rows for student, cell in zip(students, row["cells"]) if cell and cell["deviations"]]
    if deviating:
        note += f" {DEVIATION_MARK}: off protocol, not a reproduction: " + "; ".join(deviating) + "."
    taus = "; ".join(f"{r['student']}: Kendall {r['text']}" for r in view.rankings)
    lines += [r"\par\smallskip", r"{\footnotesize " + tex(note) + (" " + tex(taus) if taus else "") + "}",
              r"\par\medskip", ""]
    return lines


def results_tabular(view: PartView, student: str) -> list[str]:
    frame = view.cells[(view.cells["student"] == student) & view.cells["implemented"]].sort_values("order")
    lines = [f"% {tex(view.info.title)} ({tex(view.info.name)}), student {tex(student)}",
             r"\begin{tabular}{lrlrlllrrrrrrl}", r"\toprule",
             f"Method ({tex(student)})" + (r" & $n$ & mIoU (last) & $\Delta$ none & Paired gain [95\% CI] & "
                                           r"$p$ (Holm) & MDE & mIoU (best) & PixAcc & Params (M) & GFLOPs & "
                                           r"Extra params & GPU-h & Status \\"),
             r"\midrule"]
    for r in frame.itertuples():
        lines.append(" & ".join(tex(v) for v in (r.method, r.n, r.final_text, r.delta_none_text, r.gain_text,
                                                r.p_text, r.mde_text, r.best_text, r.pa_text, r.params_text, r.gflops_text,
                                                r.method_params_text, r.device_hours_text,
                                                r.status + (f" ({r.failed} failed)" if r.failed and r.n else ""))) + r" \\")
    effects = [e["text"] for e in view.effects if e["student"] == student and view.seed_count > 1]
    note = tests_note(view.seed_count) + "".join(f" {MDE_LABEL}: {e}."
                                                 for e in effects)
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"{\footnotesize " + tex(note) + "}",
              r"\par\medskip", ""]
    return lines + side_by_side_tabular(view, student)


def side_by_side_tabular(view: PartView, student: str) -> list[str]:
    """Equal iterations next to equal compute (suite key compare_at), one row per method."""
    rows = side_by_side(view, student)
    if not rows:
        return []
    name = view.compute.title
    lines = [(f"% {tex(view.info.title)} ({tex(view.info.name)}), student {tex(student)}: equal iterations vs "
             f"{tex(name)}"), r"\begin{tabular}{lrlllrrlllr}", r"\toprule",
             rf"& \multicolumn{{5}}{{c}}{{Equal iterations (the paper's view)}} & \multicolumn{{5}}{{c}}{{{tex(name)}}} \\",
             r"\cmidrule(lr){2-6} \cmidrule(lr){7-11}",
             "Method" + r" & Iterations & mIoU (last) & Paired gain & $p$ (Holm) & GPU-h" * 2 + r" \\", r"\midrule"]
    for r in rows:
        values = [r["method"]] + [v[k] for v in (r["iterations"], r["compute"])
                                  for k in SIDE_BY_SIDE_KEYS]
        lines.append(" & ".join(tex(v) for v in values) + r" \\")
    effects = [e["text"] for e in view.compute.effects if e["student"] == student and view.seed_count > 1]
    note = compute_budget_text(view.compute) + "".join(f" {MDE_COMPUTE_LABEL}: {e}."
                                                       for e in effects)
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"{\footnotesize " + tex(note) + "}",
              r"\par\medskip", ""]
    return lines


def render_latex(report: Report) -> str:
    lines = [f"% SegKD-Bench tables for suite {tex(report.name)}; requires \\usepackage{{booktabs}}.",
             "% mIoU and pixel accuracy in %; GFLOPs: fvcore counts one multiply-add as one FLOP.",
             f"% {tex(status_line(report))}", ""]
    for view in report.parts:
        lines += comparison_tabular(view)
        for student in dict.fromkeys(view.cells["student"]) if not view.cells.empty else []:
            if student in view.info.students:
                lines += results_tabular(view, student)
    return "\n".join(lines).rstrip() + "\n"
