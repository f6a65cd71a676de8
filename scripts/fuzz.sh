#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz/harness/, listed in
# harnesses.txt; clang with -fsanitize=fuzzer,address,undefined) in
# build-fuzz/ and runs each on its seed corpus (tests/fuzz/corpus/NAME/,
# crash reproducers there included). Any crash, sanitizer report, leak,
# input slower than the per-input limit (a quadratic case), or allocation
# past the memory limit fails the run: the script exits non-zero and names
# the input that did it. Per harness it prints the executions, the coverage
# (libFuzzer's cov: and ft:) and the crash file, if any.
#
#   scripts/fuzz.sh --ci            every harness for a bounded time: 160 s in
#                                   all (at most 60 s each), a harness a core
#                                   at once, the grown corpus thrown away
#   scripts/fuzz.sh --hours 1       a long run, the time shared among the
#   scripts/fuzz.sh --seconds 600   harnesses; the grown corpus and any crash
#                                   kept in the work folder (--work DIR,
#                                   default ~/.cache/shoal-fuzz), so that the
#                                   next long run goes on from it
# Options: --only NAME[,NAME..]  these harnesses only; --jobs N  N harnesses at
# once (default 1; with --ci, the cores); --timeout S  the per-input limit (default 5 s);
# --no-build  use build-fuzz/ as it is.
#
# To reproduce a failure: build-fuzz/fuzz_NAME FILE (runs FILE once). A real
# bug's input is kept as tests/fuzz/corpus/NAME/crash-WHAT, so every later
# run tries it first.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="" total=0 only="" jobs="" per_input=5 build=1
work="${SHOAL_FUZZ_WORK:-$HOME/.cache/shoal-fuzz}"
ci_total=160 ci_each=60
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) mode=ci ;;
    --hours) mode=long; total=$(awk -v h="${2:?--hours H}" 'BEGIN { printf "%d", h * 3600 }'); shift ;;
    --seconds) mode=long; total=${2:?--seconds S}; shift ;;
    --only) only=${2:?--only NAME}; shift ;;
    --jobs) jobs=${2:?--jobs N}; shift ;;
    --timeout) per_input=${2:?--timeout S}; shift ;;
    --work) work=${2:?--work DIR}; shift ;;
    --no-build) build=0 ;;
    -h|--help) usage ;;
    *) echo "fuzz.sh: unknown argument '$1'" >&2; usage 2 >&2 ;;
  esac
  shift
done
[ -n "$mode" ] || { echo "fuzz.sh: say --ci, --hours H or --seconds S" >&2; exit 2; }
[ "$total" -ge 0 ] 2>/dev/null || { echo "fuzz.sh: not a number of seconds: $total" >&2; exit 2; }
# CI: a harness a core at once (each still its share of the time); otherwise one at a time
[ -n "$jobs" ] || { [ "$mode" = ci ] && jobs=$(nproc); } || jobs=1
[ "$jobs" -ge 1 ] 2>/dev/null || { echo "fuzz.sh: --jobs wants a number from 1: $jobs" >&2; exit 2; }

# ---------------------------------------------------------------- clang and libFuzzer
have_libfuzzer() {
  command -v clang >/dev/null || return 1
  local t; t=$(mktemp -d)
  printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n' >"$t/f.c"
  clang -fsanitize=fuzzer,address,undefined "$t/f.c" -o "$t/f" >/dev/null 2>&1; local rc=$?
  rm -rf "$t"
  return $rc
}
if ! have_libfuzzer; then
  echo "== clang with libFuzzer not found: apt-get install -y clang"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y clang >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y clang >/dev/null; } || true
  fi
  have_libfuzzer || { echo "fuzz.sh: clang with libFuzzer (-fsanitize=fuzzer) is needed and could not be" \
                           "installed: apt-get install clang (as root), then run this again" >&2; exit 1; }
fi

# ---------------------------------------------------------------- the harnesses
names=() lens=()
while read -r name len _; do
  case "$name" in ''|\#*) continue ;; esac
  if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
  names+=("$name"); lens+=("$len")
done <tests/fuzz/harness/harnesses.txt
[ ${#names[@]} -gt 0 ] || { echo "fuzz.sh: no harness named '$only' in tests/fuzz/harness/harnesses.txt" >&2; exit 2; }

if [ "$build" = 1 ]; then
  echo "== build (build-fuzz)"
  mkdir -p build-fuzz
  if ! { cmake -S tests/fuzz -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang &&
         ninja -C build-fuzz "${names[@]/#/fuzz_}"; } >build-fuzz/build.log 2>&1; then
    tail -n 40 build-fuzz/build.log
    echo "fuzz.sh: the build failed (build-fuzz/build.log)" >&2
    exit 1
  fi
  tail -n 1 build-fuzz/build.log
fi

n=${#names[@]}
if [ "$mode" = ci ]; then
  each=$(( ci_total / n < ci_each ? ci_total / n : ci_each ))
  work=$(mktemp -d /tmp/shoal-fuzz-ci.XXXXXX)
  trap 'rm -rf "$work"' EXIT
else
  each=$(( total * jobs / n ))
  [ "$each" -ge 1 ] || each=1
  mkdir -p "$work"
fi
echo "== ${n} harnesses, ${each} s each, at most ${per_input} s an input, ${jobs} at once (work: $work)"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

# One harness's run; its log in $work/NAME/log, a one-line summary in $work/NAME/summary.
run_one() {
  local name=$1 len=$2 dir="$work/$1"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  local dict=() seeds=()
  [ -f "tests/fuzz/harness/fuzz_$name.dict" ] && dict=(-dict="tests/fuzz/harness/fuzz_$name.dict")
  [ -d "tests/fuzz/corpus/$name" ] && seeds=("tests/fuzz/corpus/$name")
  local rc=0
  "build-fuzz/fuzz_$name" "$dir/corpus" "${seeds[@]}" "${dict[@]}" -max_total_time="$each" -timeout="$per_input" \
    -rss_limit_mb=2048 -max_len="$len" -print_final_stats=1 -artifact_prefix="$dir/artifacts/" \
    >"$dir/log" 2>&1 || rc=$?
  local execs cov ft crash
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -n 1)
  [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$dir/log" | tail -n 1 | tr -d '#')
  cov=$(grep -oE 'cov: [0-9]+' "$dir/log" | tail -n 1 | cut -d' ' -f2)
  ft=$(grep -oE 'ft: [0-9]+' "$dir/log" | tail -n 1 | cut -d' ' -f2)
  crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$dir/log" | tail -n 1)
  local status=ok
  if [ "$rc" != 0 ] || grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer)|runtime error:|SUMMARY: ' "$dir/log"; then
    status="FAILED (exit $rc)"
  fi
  printf '%-16s %-18s execs %-10s cov %-6s ft %-7s %s\n' "$name" "$status" "${execs:-?}" "${cov:-?}" \
    "${ft:-?}" "${crash:+crash: $crash}" >"$dir/summary"
}

pids=()
for i in "${!names[@]}"; do
  run_one "${names[$i]}" "${lens[$i]}" &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
done
wait

echo "== results"
failed=0
for name in "${names[@]}"; do
  cat "$work/$name/summary"
  if ! grep -q '^[a-z0-9_]* *ok ' "$work/$name/summary"; then
    failed=1
    echo "---- fuzz_$name: the end of its log ($work/$name/log)"
    grep -vE '^#[0-9]+ +(NEW|REDUCE|pulse)' "$work/$name/log" | tail -n 60 | sed 's/^/    /'
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$work/$name/log" | tail -n 1)
    if [ -n "$crash" ]; then
      mkdir -p build-fuzz/crashes
      cp "$crash" "build-fuzz/crashes/$name-$(basename "$crash")"
      echo "---- reproduce: build-fuzz/fuzz_$name build-fuzz/crashes/$name-$(basename "$crash")"
    fi
  fi
done
if [ "$failed" = 1 ]; then echo "== fuzzing found a failure"; exit 1; fi
echo "== every harness ran clean"
