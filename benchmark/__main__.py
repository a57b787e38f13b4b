"""``python -m benchmark``: run, status, report, plan, eval, list, models, data, convert-checkpoint,
check-reference, protocols.

Exit codes: 0 success; 1 a check found problems (a failed reference case, a dataset with problems, a
suite with failed runs); 2 bad input (a malformed suite, a missing file, an unknown name), reported in one
message with no traceback, in every subcommand. Output cut short by its reader (``plan ... | head``) ends
quietly with the shell's code for a closed pipe (141).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from benchmark.registry import UnknownNameError
from benchmark.suite import SuiteError, load_suite


class UsageError(Exception):
    """A command line that cannot be carried out as given (exit 2, one message)."""

EXAMPLES = """examples:
  python -m benchmark run suites/smoke.yaml
  python -m benchmark run suites/paper_tables.yaml --executor local          # one run per GPU of this machine
  python -m benchmark run suites/paper_tables.yaml --executor slurm --set resources.partition=gpu
  python -m benchmark status suites/paper_tables.yaml
  python -m benchmark plan suites/paper_tables.yaml
  python -m benchmark plan suites/paper_tables.yaml --preflight
  python -m benchmark plan suites/attnfd_table1_voc.yaml --json
  python -m benchmark report results/smoke
  python -m benchmark eval suites/cirkd_readme_cityscapes.yaml --checkpoint deeplabv3_resnet101_citys_best_model.pth \
      --format cirkd --model deeplabv3_r101
  python -m benchmark list
  python -m benchmark data check camvid --root ../shared/datasets/CamVid
  python -m benchmark convert-checkpoint deeplabv3_resnet101_citys_best_model.pth --format cirkd \
      --model deeplabv3_r101 --num-classes 19 --out weights/deeplabv3_r101_cirkd.pt
  python -m benchmark check-reference ../shared/reference/loss_vectors.json"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="SegKD-Bench: re-run knowledge-distillation tables for semantic segmentation under one protocol.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the version and the git commit, and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="validate a suite, train teachers and every student x method x seed, store results, report",
        description="Validate SUITE, check its datasets, train (or load) its teachers once, train every "
                    "student x method x seed run that is not finished (resuming interrupted ones), store each "
                    "result under RESULTS/<suite>/ and render REPORTS/<suite>/index.html. Finished runs are "
                    "never trained again or overwritten.")
    _suite_arguments(run)
    run.add_argument("--reports", default="reports", help="reports root folder (default: reports)")
    run.add_argument("--executor", choices=["inline", "local", "slurm"], default=None,
                     help="inline: one run after another in this process (the default, except after a Slurm "
                          "submission of the suite: then the report of what has finished); local: a pool of this "
                          "machine's devices, one run per GPU (on CPU one single-thread process per core); slurm: "
                          "submit teachers, then their students as job arrays depending on them, and return")
    run.add_argument("--workers", type=int, default=None, metavar="N",
                     help="--executor local: N runs at a time (default: the visible GPUs / resources.gpus, or the "
                          "CPU cores)")
    run.set_defaults(func=cmd_run)

    status = commands.add_parser(
        "status", help="every run and teacher of a suite: done, running where, queued, interrupted, failed",
        description="Read RESULTS/<suite>/ (and jobs.json, sacct for Slurm jobs) and print each teacher and run "
                    "with its state: done, running (host, pid, job, since when), queued (job id), interrupted, "
                    "failed (reason), pending; then the command that resumes the suite.")
    _suite_arguments(status)
    status.set_defaults(func=cmd_status)

    plan = commands.add_parser(
        "plan", help="print the expanded grid of a suite: runs, which are done, which teachers are needed",
        description="Expand SUITE into its runs without training anything: each run's key and state (done, "
                    "failed, interrupted, pending), the teachers needed, and dataset problems.")
    _suite_arguments(plan)
    plan.add_argument("--profile", action="store_true",
                      help="measure the step time of each student/teacher/method at the suite's crop and batch on "
                           "this machine's device (a few steps each) to estimate device-hours")
    plan.add_argument("--preflight", action="store_true",
                      help="first build every model (without weights) and every method on the students and teachers "
                           "it is paired with; exit 2 naming the suite file, the row and the reason on the first "
                           "failure (missing datasets and weights are listed, not errors)")
    plan.add_argument("--json", action="store_true",
                      help='print only {"runs": [{"key", "suite", "student", "method", "seed", "config"}]}, each config '
                           "the resolved configuration as the run's config.yaml stores it")
    plan.set_defaults(func=cmd_plan)

    protocols = commands.add_parser(
        "protocols", help="write docs/protocols.md from the protocol cards of suites/recipes/*.yaml",
        description="Render every recipe's protocol card (each fact, its value, its source and what the paper says "
                    "where it differs) as Markdown; --check exits 1 if the file is not what the cards give.")
    protocols.add_argument("--recipes", type=Path, default=Path("suites/recipes"), help="default: suites/recipes")
    protocols.add_argument("--out", type=Path, default=Path("docs/protocols.md"), help="default: docs/protocols.md")
    protocols.add_argument("--check", action="store_true", help="compare instead of writing")
    protocols.set_defaults(func=cmd_protocols)

    report = commands.add_parser(
        "report", help="re-render tables, plots and the HTML report from stored results alone",
        description="Render REPORTS/<name>/ (index.html, results.csv, tables.md, tables.tex) from RESULTS_DIR "
                    "(a suite's folder under results/) without running any model code.")
    report.add_argument("results_dir", type=Path, help="a suite's results folder, e.g. results/smoke")
    report.add_argument("--reports", default="reports", help="reports root folder (default: reports)")
    report.set_defaults(func=cmd_report)

    evaluation = commands.add_parser(
        "eval", help="score one checkpoint under a suite's dataset and evaluation protocol (e.g. a downloaded teacher)",
        description="Load FILE strictly into the model (ours, or an authors' release converted on load), score it on "
                    "the suite's evaluation split with the suite's preprocessing, evaluation size and absent-class "
                    "convention, the same metrics a run's record holds, and write the record to "
                    "RESULTS/<suite>/evals/<key>/metrics.json (never a run's folder; an existing record is shown, "
                    "not overwritten).")
    _suite_arguments(evaluation)
    evaluation.add_argument("--checkpoint", required=True, type=Path, metavar="FILE", help="the weights to score")
    evaluation.add_argument("--format", default="ours", choices=["ours", "cirkd", "deeplab_xception"],
                            help="how FILE names its tensors (default: ours; cirkd needs dataset.normalization: "
                                 "bgr_mean)")
    evaluation.add_argument("--model", metavar="NAME",
                            help="the model FILE holds (default: the suite's only teacher), with the options the suite "
                                 "gives it")
    evaluation.add_argument("--split", help="score this split instead of the suite's evaluation split")
    evaluation.add_argument("--json", action="store_true", help="print the record as JSON")
    evaluation.set_defaults(func=cmd_eval)

    listing = commands.add_parser(
        "list", help="registered datasets, models and methods, with methods' hyperparameters and defaults",
        description="List what suites can name: datasets (classes, splits), models, and methods with their paper, "
                    "hyperparameters and defaults.")
    listing.add_argument("kind", nargs="?", choices=["datasets", "models", "methods"], help="only this registry")
    listing.set_defaults(func=cmd_list)

    models = commands.add_parser(
        "models", help="each model's parameters, GFLOPs at an input size (fvcore) and feature points",
        description="Build each registered model (random weights) and print parameters, GFLOPs at --size "
                    "(fvcore: one multiply-add counts as one FLOP) and its feature points with channels and strides.")
    models.add_argument("names", nargs="*", help="model names (default: all)")
    models.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    models.add_argument("--num-classes", type=int, default=None, metavar="N",
                        help="count every model with N classes (default: each model's own, e.g. 21 for the VOC "
                             "models of pytorch-deeplab-xception, 19 for CIRKD's Cityscapes models and the tiny ones)")
    models.set_defaults(func=cmd_models)

    from benchmark.data.cli import add_data_parser
    from benchmark.perf import add_perf_parser

    add_data_parser(commands)
    add_perf_parser(commands)

    convert = commands.add_parser(
        "convert-checkpoint", help="convert an authors' released checkpoint (CIRKD, pytorch-deeplab-xception) into "
                                   "a zoo model's names, strictly",
        description="Rename every tensor of SRC into model NAME's names by the naming rules of its code base, set "
                    "aside what belongs elsewhere (AttnFD's CBAM modules, duplicate views), check every shape, check "
                    "that MODELS.get(NAME)(N) loads the result with strict=True, and write it to DST atomically. "
                    "Any tensor without a place, or any model tensor left unfilled, is an error naming the keys. "
                    "A cirkd checkpoint needs `dataset.normalization: bgr_mean` wherever it is used.")
    convert.add_argument("source", type=Path, metavar="SRC", help="the authors' file, e.g. "
                         "deeplabv3_resnet101_citys_best_model.pth")
    convert.add_argument("--format", required=True, choices=["cirkd", "deeplab_xception"],
                         help="cirkd: a bare state dict (winycg/CIRKD); deeplab_xception: {'state_dict': ...} "
                              "(jfzhang95/pytorch-deeplab-xception, Overhaul, AttnFD, AICSD)")
    convert.add_argument("--model", required=True, metavar="NAME", help="target zoo model, e.g. deeplabv3_r101")
    convert.add_argument("--num-classes", required=True, type=int, metavar="N")
    convert.add_argument("--out", required=True, type=Path, metavar="DST", help="where to write our state dict")
    convert.set_defaults(func=cmd_convert_checkpoint)

    reference = commands.add_parser(
        "check-reference", help="check every loss against the outputs of public reference implementations",
        description="For every case of a loss-vector file: compute our loss on the case's inputs with its "
                    "parameters and print case id, method, ours, reference, relative error, pass/fail. Exit 1 "
                    "if any case fails.")
    reference.add_argument("file", type=Path, help="e.g. ../shared/reference/loss_vectors.json")
    reference.set_defaults(func=cmd_check_reference)
    return parser


def _suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", type=Path, help="suite YAML file, e.g. suites/smoke.yaml")
    parser.add_argument("--results", default="results", help="results root folder (default: results)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a suite key, VALUE as YAML (repeatable), e.g. --set schedule.iterations=10")


def cmd_run(args) -> int:
    from benchmark.launch import run_with_executor

    suite_file = load_suite(args.suite, args.overrides)
    outcome = run_with_executor(args.executor, suite_file, args.overrides, args.results, args.reports, args.workers)
    if outcome.report is not None:
        print(f"report: {outcome.report.resolve()}")
    return 1 if outcome.failed else 0


def cmd_status(args) -> int:
    from benchmark.status import print_status

    return print_status(load_suite(args.suite, args.overrides), args.overrides, args.results)


def cmd_plan(args) -> int:
    from benchmark.plan import plan_json, print_plan, run_preflight

    suite_file = load_suite(args.suite, args.overrides)
    echo = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if args.preflight:
        run_preflight(suite_file, echo=echo)
    from benchmark.runner import Part, deviation_lines
    from benchmark.suite import expand

    for line in deviation_lines([Part(suite, *expand(suite)) for suite in suite_file.parts]):
        echo(line)
    if args.json:
        print(plan_json(suite_file))
        return 0
    return print_plan(suite_file, args.results, profile=args.profile)


def cmd_protocols(args) -> int:
    from benchmark.protocols import render_protocols

    if not args.recipes.is_dir():
        raise UsageError(f"--recipes {args.recipes.resolve()}: no such folder (the recipes are in suites/recipes/)")
    text = render_protocols(args.recipes)
    out = args.out.resolve()
    if args.check:
        if not out.is_file() or out.read_text() != text:
            print(f"{out} is stale: run `python -m benchmark protocols` to regenerate it from {args.recipes.resolve()}",
                  file=sys.stderr)
            return 1
        print(f"{out} is up to date")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def cmd_report(args) -> int:
    from benchmark.report import render_report
    from benchmark.store import SUITE_RECORD

    results_dir = args.results_dir.expanduser().resolve()
    if not results_dir.exists():
        raise UsageError(f"{results_dir}: no such folder (a suite's results are in RESULTS/<suite name>/, e.g. "
                         "results/smoke, once `run` has stored them)")
    if not (results_dir / "runs").is_dir() and not (results_dir / SUITE_RECORD).is_file():
        raise UsageError(f"{results_dir}: not a suite's results folder (expected {results_dir}/runs/ or "
                         f"{results_dir}/{SUITE_RECORD})")
    print(f"report: {render_report(results_dir, (Path(args.reports) / results_dir.name).resolve())}")
    return 0


def cmd_eval(args) -> int:
    from benchmark.convert import describe_weights
    from benchmark.evaluation import evaluate_checkpoint

    suite_file = load_suite(args.suite, args.overrides)
    record, path, new = evaluate_checkpoint(suite_file, args.checkpoint, args.format, args.model, args.split,
                                            args.results, echo=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True, default=str))
        return 0
    final = record["final"]
    print(f"{record['model']}: {describe_weights(record['checkpoint'])}")
    print(f"{record['dataset']} {final['split']}: mIoU {100 * final['miou']:.2f}, pixel accuracy "
          f"{100 * final['pixel_accuracy']:.2f} ({record['suite']}'s evaluation protocol)")
    print("per-class IoU: " + ", ".join(f"{name} {100 * iou:.2f}"
                                        for name, iou in zip(record["class_names"], final["per_class_iou"])))
    print(f"record: {path}" + ("" if new else " (evaluated before with the same checkpoint and protocol; delete it "
                                              "to evaluate again)"))
    return 0


def cmd_list(args) -> int:
    from benchmark.listing import print_listing

    print_listing(args.kind)
    return 0


def cmd_models(args) -> int:
    from benchmark.listing import print_models

    if min(args.size) <= 0:
        raise UsageError(f"--size {args.size[0]} {args.size[1]}: expected a positive height and width")
    if args.num_classes is not None and args.num_classes <= 0:
        raise UsageError(f"--num-classes {args.num_classes}: expected a positive number of classes")
    return print_models(args.names, tuple(args.size), args.num_classes)


def cmd_convert_checkpoint(args) -> int:
    from benchmark.convert import convert_checkpoint, describe_weights
    from benchmark.engine.checkpoint import CheckpointError

    if args.out.resolve() == args.source.resolve():
        raise UsageError(f"--out {args.out.resolve()}: would overwrite the source checkpoint; choose another file")
    try:
        conversion = convert_checkpoint(args.source.resolve(), args.format, args.model, args.num_classes, args.out)
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    print(describe_weights(conversion.summary()))
    print(f"wrote {args.out.resolve()} ({args.model}, {args.num_classes} classes; load with checkpoint_format: ours)")
    return 0


def cmd_check_reference(args) -> int:
    from benchmark.reference import main as check_reference

    return check_reference(args)


class _Version(argparse.Action):
    """``--version``, computed only when asked for (it runs git)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def version_text() -> str:
    """``segkd-bench 0.1.0 (git abc123def456, modified)``: the package version and the checkout it runs."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("segkd-bench")
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"segkd-bench {version}" + (f" (git {commit}{', modified' if dirty else ''})" if commit else "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except (SuiteError, UsageError, UnknownNameError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader has gone (`plan ... | head`): nothing more to say, and nothing more can be flushed to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
