#!/usr/bin/env bash
# Mutation testing of the harness core with mutmut 3 (config: [tool.mutmut] in pyproject.toml). Not part of CI: on
# two cores it takes about an hour. It mutates a frozen copy of the committed tree (HEAD), so work in progress
# neither leaks into the run nor is disturbed by it, then writes docs/mutation_report.md from the results.
#
#   bash benchmarks/mutation.sh                  # the whole run, then the report
#   bash benchmarks/mutation.sh 'benchmark.store.*'   # only these mutants (names as in the report), then the report
#   MUTATION_JOBS=2 bash benchmarks/mutation.sh  # parallel mutants on a quiet machine
#
# Survivors are explained in benchmarks/mutation_explained.tsv (mutant name <TAB> why it cannot change a stored
# number); every other survivor needs a test.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${MUTATION_WORKDIR:-${TMPDIR:-/tmp}/segkd-mutation}"
if [[ $# -eq 0 || ! -d "$work/mutants" ]]; then
    rm -rf "$work" && mkdir -p "$work"
    git -C "$repo" archive HEAD | tar -x -C "$work"
else  # a partial rerun keeps the other mutants' results; refresh the tests and the code under test
    git -C "$repo" archive HEAD | tar -x -C "$work"
fi
export SEGKD_SHARED="${SEGKD_SHARED:-$(cd "$repo/.." && pwd)/shared}"
export OMP_NUM_THREADS=1 SEGKD_TEST_THREADS=1 SEGKD_HYPOTHESIS_EXAMPLES="${SEGKD_HYPOTHESIS_EXAMPLES:-40}"
cd "$work"
started=$(date +%s)
mutmut run --max-children "${MUTATION_JOBS:-1}" "$@" || true
echo "mutation run: $(( $(date +%s) - started )) s"
python "$repo/benchmarks/mutation_report.py" "$work" --commit "$(git -C "$repo" rev-parse --short HEAD)" \
    --explained "$repo/benchmarks/mutation_explained.tsv" > "$repo/docs/mutation_report.md"
echo "report: $repo/docs/mutation_report.md"
