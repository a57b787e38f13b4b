"""docs/mutation_report.md from a finished mutmut run (see benchmarks/mutation.sh): counts per file and status, and
every survivor with its diff and, where it cannot change a stored number, the reason from mutation_explained.tsv.

    python benchmarks/mutation_report.py /tmp/segkd-mutation --explained benchmarks/mutation_explained.tsv
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def load_results(work: Path) -> dict[str, str]:
    results = {}
    for meta in sorted((work / "mutants").rglob("*.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            results[name] = status_by_exit_code[code]
    return results


def load_explained(path: Path | None) -> dict[str, str]:
    explained = {}
    if path is None or not path.is_file():
        return explained
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition("\t")
            explained[name.strip()] = reason.strip()
    return explained


def diff(work: Path, name: str) -> str:
    shown = subprocess.run(["mutmut", "show", name], cwd=work, capture_output=True, text=True, check=False).stdout
    lines = [line for line in shown.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    return " / ".join(line.strip() for line in lines)[:300]


def module_of(name: str) -> str:
    return name.split(".x")[0] if ".x" in name else name.rsplit(".", 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path, help="the folder mutmut ran in (holds mutants/)")
    parser.add_argument("--commit", default="?")
    parser.add_argument("--explained", type=Path)
    parser.add_argument("--note", default="", help="a paragraph on how complete the run was")
    args = parser.parse_args()
    results = load_results(args.work)
    explained = load_explained(args.explained)
    totals = Counter(results.values())
    per_module: dict[str, Counter] = {}
    for name, status in results.items():
        per_module.setdefault(module_of(name), Counter())[status] += 1
    survivors = sorted(name for name, status in results.items() if status == "survived")
    unexplained = [name for name in survivors if name not in explained]
    statuses = ["killed", "survived", "no tests", "timeout", "suspicious", "segfault", "skipped", "not checked"]

    print("# Mutation testing report\n")
    print(f"mutmut {_mutmut_version()} on commit `{args.commit}`, written by `benchmarks/mutation.sh` "
          "(configuration: `[tool.mutmut]` in `pyproject.toml`; how to read it: `docs/testing.md`).\n")
    print(f"**{len(results)} mutants: " + ", ".join(f"{totals[s]} {s}" for s in statuses if totals[s]) +
          f"; {len(survivors) - len(unexplained)} survivors explained, {len(unexplained)} not.**\n")
    if args.note:
        print(args.note + "\n")
    print("| module | " + " | ".join(s for s in statuses if totals[s]) + " |")
    print("|---|" + "---|" * sum(1 for s in statuses if totals[s]))
    for module, counts in sorted(per_module.items()):
        print(f"| `{module}` | " + " | ".join(str(counts[s]) for s in statuses if totals[s]) + " |")
    print("\n## Survivors\n")
    print("Each either has a test now (then it is not listed: the rerun killed it) or cannot change a stored number, "
          "for the reason given.\n")
    print("| mutant | change | why it cannot change a result |")
    print("|---|---|---|")
    for name in survivors:
        change = diff(args.work, name).replace("|", "\\|")
        reason = explained.get(name, "**not explained: needs a test or a reason**").replace("|", "\\|")
        print(f"| `{name}` | `{change}` | {reason} |")
    no_tests = sorted(name for name, status in results.items() if status == "no tests")
    if no_tests:
        print("\n## Not run by the selected tests\n")
        print("Functions no test of the mutation selection calls (they are covered, if at all, by the slower tests "
              "outside it):\n")
        for function, count in sorted(Counter(n.rsplit("__mutmut_", 1)[0] for n in no_tests).items()):
            print(f"- `{function}` ({count} mutants)")


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


if __name__ == "__main__":
    main()
