#!/usr/bin/env bash
# Fuzz attnkit's readers of untrusted bytes with libFuzzer + AddressSanitizer (tests/fuzz).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Builds the `fuzz` preset (clang; out/fuzz, or $ATTNKIT_FUZZ_BUILD), writes the seed corpus
# (scripts/fuzz_corpus.py), then runs each target (default: all five, 60 s each) starting from the
# seeds, the regression inputs and what earlier runs found (out/fuzz/corpus/TARGET, kept between
# runs). Any crash, sanitizer report, out-of-memory or timeout is saved as
# out/fuzz/crashes/TARGET-*; the script ends non-zero when one was found. Copy such a file into
# tests/fuzz/regressions/TARGET once the reader is fixed: CTest's fuzz.TARGET case then replays it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
[[ $# -gt 0 ]] && shift
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(checkpoint state_dict safetensors idx image_list)
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: SECONDS_PER_TARGET must be a positive number, got '$seconds'" >&2; exit 2; }
python="${ATTNKIT_VENV:-$HOME/.cache/attnkit/venv}/bin/python"
build="${ATTNKIT_FUZZ_BUILD:-$root/out/fuzz}"
work="$build/fuzz-runs"

cd "$root"
if [[ -z "${ATTNKIT_FUZZ_BUILD:-}" ]]; then
  cmake --preset fuzz > /dev/null
fi
cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/fuzz_}"
"$python" scripts/fuzz_corpus.py --out "$work/seeds" > /dev/null
mkdir -p "$work/crashes"

# LibTorch maps its shadow-gap memory and never frees some globals: both are not attnkit's bugs.
export ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
status=0
for t in "${targets[@]}"; do
  corpus="$work/corpus/$t"
  mkdir -p "$corpus"
  dirs=("$corpus" "$work/seeds/$t")
  [[ -d "tests/fuzz/regressions/$t" ]] && dirs+=("tests/fuzz/regressions/$t")
  log="$work/$t.log"
  echo "fuzz_$t: ${seconds}s (log: $log)"
  # -rss_limit_mb also bounds any single malloc: a small file that asks for gigabytes is a finding.
  if ! "$build/bin/fuzz_$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=3072 -print_final_stats=1 \
       -artifact_prefix="$work/crashes/$t-" "${dirs[@]}" > "$log" 2>&1; then
    status=1
    echo "  FOUND: $(grep -m1 -E 'ERROR|==[0-9]+==|Test unit written' "$log" || tail -1 "$log")"
  fi
  execs=$(grep -m1 -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)
  echo "  $execs runs, ${cov:-cov: ?} edges, corpus $(ls "$corpus" | wc -l) inputs"
done
ls "$work/crashes" | sed 's/^/  crash: /' || true
exit $status
