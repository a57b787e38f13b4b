#!/usr/bin/env bash
# Mutation testing of the harness core with mutmut 3 (config: [tool.mutmut] in pyproject.toml). Not part of CI: on
# two shared cores it takes hours. It mutates a frozen copy of the committed tree (HEAD), so work in progress
# neither leaks into the run nor is disturbed by it, then writes docs/mutation_report.md from the results.
#
#   bash benchmarks/mutation.sh                        # everything, module by module, then the report
#   bash benchmarks/mutation.sh 'benchmark.store.*'    # only these mutants (names as in the report), then the report
#   MUTATION_JOBS=2 bash benchmarks/mutation.sh        # two mutants at a time (a quiet machine)
#
# Module by module, so that a run cut short still holds whole modules; the report is rewritten after each.
# Survivors are explained in benchmarks/mutation_explained.tsv (mutant name <TAB> why it cannot change a stored
# number); every other survivor needs a test.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${MUTATION_WORKDIR:-${TMPDIR:-/tmp}/segkd-mutation}"
# The training loop first: it is where most numbers come from, and the slowest to test.
ORDER=('benchmark.engine.train.*' 'benchmark.engine.step.*' 'benchmark.suite.*' 'benchmark.store.*' 'benchmark.atomic.*'
       'benchmark.engine.checkpoint.*' 'methods.base.*' 'benchmark.metrics.*' 'benchmark.engine.loader.*'
       'benchmark.engine.distributed.*' 'benchmark.engine.prepare.*')
if [[ $# -eq 0 || ! -d "$work/mutants" ]]; then
    rm -rf "$work" && mkdir -p "$work"
fi
git -C "$repo" archive HEAD | tar -x -C "$work"  # a rerun of some mutants sees the current tests and code
git -C "$repo" rev-parse --short HEAD > "$work/COMMIT"
patterns=("$@")
[[ $# -eq 0 ]] && patterns=("${ORDER[@]}")
export SEGKD_SHARED="${SEGKD_SHARED:-$(cd "$repo/.." && pwd)/shared}"
export OMP_NUM_THREADS=1 SEGKD_TEST_THREADS=1 SEGKD_HYPOTHESIS_EXAMPLES="${SEGKD_HYPOTHESIS_EXAMPLES:-40}"
cd "$work"
for pattern in "${patterns[@]}"; do
    started=$(date +%s)
    mutmut run --max-children "${MUTATION_JOBS:-1}" "$pattern" || true
    echo "mutants $pattern: $(( $(date +%s) - started )) s"
    python "$repo/benchmarks/mutation_report.py" "$work" --commit "$(cat "$work/COMMIT")" \
        --explained "$repo/benchmarks/mutation_explained.tsv" > "$repo/docs/mutation_report.md"
done
echo "report: $repo/docs/mutation_report.md"
