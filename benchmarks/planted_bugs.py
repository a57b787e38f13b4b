"""Plant each bug of issue 16 by hand, one at a time, run the tests that should catch it, and put the code back.

Every bug here once survived the test suite while silently changing reproduced numbers. For each: the source file
is edited in place (one exact replacement), the named tests run, and the original bytes are restored whatever
happens. A bug is "caught" when the tests fail; "NOT CAUGHT" means a test lost its teeth; "pattern gone" means the
code moved on and the replacement below needs updating. Prints the table of docs/testing.md.

    python benchmarks/planted_bugs.py            # all of them (minutes; not part of CI)
    python benchmarks/planted_bugs.py 4 7        # only these
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bug:
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = [
    Bug("the teacher left in train mode during student training", "benchmark/engine/train.py",
        "teacher.train(method.teacher_train_mode)", "teacher.train(True)",
        ("tests/test_training_loop.py::test_teacher_runs_once_per_step_in_the_methods_mode_under_inference_mode",)),
    Bug("KD ignoring its configured temperature (always 1)", "methods/kd.py",
        'pixel_kd(student[self.point], teacher[self.point], self.temperature)',
        'pixel_kd(student[self.point], teacher[self.point], 1.0)',
        ("tests/test_method_hyperparameters.py::test_every_numeric_hyperparameter_reaches_the_loss[kd.temperature]",)),
    Bug("the run key including the dataset root", "benchmark/suite.py",
        '    return {k: v for k, v in resolved.items() if k != "root"}', "    return dict(resolved)",
        ("tests/test_run_key.py",)),
    Bug("the run key excluding the schedule", "benchmark/suite.py",
        '"schedule": suite.schedule.model_dump(),\n                    "student"', '"student"',
        ("tests/test_run_key.py",)),
    Bug("the poly power ignored in the lr schedule", "benchmark/engine/train.py",
        "(1 - progress) ** schedule.poly_power", "(1 - progress) ** 0.9",
        ("tests/test_schedule_and_order.py", "tests/test_training_loop.py::test_the_optimizer_steps_with_the_scheduled_lr")),
    Bug("best-on-val selection keeping the worst checkpoint", "benchmark/engine/train.py",
        'if best is None or scores["miou"] > best["selection_miou"]:',
        'if best is None or scores["miou"] < best["selection_miou"]:',
        ("tests/test_training_loop.py",)),
    Bug("the same data order every epoch", "benchmark/engine/loader.py",
        "manual_seed(self.seed * 1_000_003 + epoch)", "manual_seed(self.seed * 1_000_003)",
        ("tests/test_schedule_and_order.py",)),
    Bug("torchrun without the gradient all-reduce", "benchmark/engine/train.py",
        "        distributed.average_gradients(", "        (lambda *_: None)(",
        ("tests/test_distributed.py::test_two_gloo_processes_make_the_updates_of_one_process_on_the_whole_batch",)),
    Bug("the atomic write replaced by a plain write", "benchmark/atomic.py",
        '    handle, temp = create_temp(path.parent, prefix=f".{path.name}.")\n',
        "    path.write_bytes(data)\n    return\n",
        ("tests/test_store.py",)),
    Bug("a feature method whose student feature is detached (LAD)", "methods/lad.py",
        "feature = student[name].detach() if warmup else student[name]",
        "feature = student[name].detach()",
        ("tests/test_method_contract.py::test_each_distillation_term_alone_sends_gradient_into_the_student[lad]",)),
    Bug("a wrong ImageNet mean", "benchmark/data/transforms.py",
        "IMAGENET_MEAN = (0.485, 0.456, 0.406)", "IMAGENET_MEAN = (0.485, 0.456, 0.460)",
        ("tests/test_data_transforms.py::test_normalisation_is_imagenet",)),
    Bug("the teacher forward without inference_mode", "benchmark/engine/step.py",
        "    with torch.inference_mode(), authors_kd_forward(", "    with torch.no_grad(), authors_kd_forward(",
        ("tests/test_training_loop.py::test_teacher_runs_once_per_step_in_the_methods_mode_under_inference_mode",)),
]


def check(bug: Bug) -> tuple[str, str]:
    path = ROOT / bug.file
    original = path.read_bytes()
    text = original.decode()
    if text.count(bug.old) != 1:
        return "pattern gone", f"{bug.old!r} occurs {text.count(bug.old)} times in {bug.file}"
    try:
        path.write_text(text.replace(bug.old, bug.new))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "SEGKD_TEST_THREADS": "1"}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *bug.tests],
                              cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
    finally:
        path.write_bytes(original)
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in done.stdout.splitlines() if line.startswith("FAILED")]
    if done.returncode == 1 and failed:
        return "caught", f"{', '.join(failed)} ({elapsed:.0f} s)"
    if done.returncode == 0:
        return "NOT CAUGHT", "the tests passed with the bug in place"
    return f"error (exit {done.returncode})", done.stdout[-300:] + done.stderr[-300:]


def main(selected: list[int]) -> int:
    print("| # | planted bug | where | caught by | result |")
    print("|---|---|---|---|---|")
    bad = 0
    for number, bug in enumerate(BUGS, start=1):
        if selected and number not in selected:
            continue
        result, detail = check(bug)
        bad += result != "caught"
        print(f"| {number} | {bug.what} | `{bug.file}` | {detail} | {result} |", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]]))
