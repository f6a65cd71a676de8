#!/usr/bin/env bash
# tests/gpu/run.sh — everything a session with a GPU runs, from the repo root,
# in one command:
#   1. build   tests/gpu/env.sh (when present: Open MPI, protobuf-c, ... from
#              .gpu-deps, NCCL and cuBLAS from pip), the machine (nvidia-smi,
#              tools), then cmake + ninja into build-gpu with CUDA for sm_90
#   2. ops     build-gpu/tests/test_backend_ops cuda: every op against the
#              CPU's (skipped, saying so, when the build has none)
#   3. model   pytest tests/gpu/test_gpu_model.py: whole runs against the
#              oracle, the CPU backend, and one rank
#   4. bench   bench/gpu/bench_gpu.py: decode and prompt tok/s, bandwidth;
#              its models are written (SHOAL_GPU_MODELS, default
#              /tmp/shoal-gpu-models) in the background during steps 2-3
# Each step's output goes to a file under $OUT (default /tmp/shoal-gpu-out):
# build.log, ops.log, model.log, bench.log, bench.md, bench.json, offload.md
# and summary.txt (the device tool returns at most 8 files). A failed step does
# not stop the others; the exit status is 1 when any failed. The whole run
# keeps within SHOAL_GPU_DEADLINE seconds (default 570: a device command may
# run 600): each step's time limit is cut to what is left.
#
#   5. offload bench/gpu/bench_offload_gpu.py: layers streamed from pinned host
#              memory against the copy bound (offload.md)
# usage: bash tests/gpu/run.sh [--quick] [--steps build,ops,model,bench,offload]
#   --quick          a shorter bench: the 1B shape only (default: 1B and 7B
#                    in f16, q8_0, q4_0, and 13B in q4_0),
#                    and the model tests without the ones named "slow"
#   --steps LIST     the steps to run (e.g. --steps bench after an earlier
#                    call built build-gpu on the same warm machine)
# environment: OUT, SHOAL_GPU_DEADLINE, SHOAL_GPU_BUILD (default build-gpu),
#   SHOAL_TESTDATA (default: ../shared/testdata, else shared/testdata or
#   .testdata in the repo, for stories260K), SHOAL_GPU_BENCH_ARGS and
#   SHOAL_GPU_PYTEST_ARGS (more flags for those steps).
set -uo pipefail

# ------------------------------------------------------------------ options
quick=0
steps=build,ops,model,bench,offload
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --steps) steps=${2:?--steps needs a list}; shift ;;
    --steps=*) steps=${1#--steps=} ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
want() { [[ ,$steps, == *,$1,* ]]; }

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
export OUT=${OUT:-/tmp/shoal-gpu-out}
mkdir -p "$OUT" || exit 2
BUILD=${SHOAL_GPU_BUILD:-build-gpu}
DEADLINE=${SHOAL_GPU_DEADLINE:-570}
MODELS=${SHOAL_GPU_MODELS:-/tmp/shoal-gpu-models}
export PYTHONUNBUFFERED=1
summary=$OUT/summary.txt
: >"$summary"
failed=0

# ------------------------------------------------------------------ helpers
left() { echo $((DEADLINE - SECONDS)); }

# budget MARGIN: seconds left less MARGIN, at least 30 (bench_gpu.py's --budget; 0 there means none)
budget() { local b=$(($(left) - $1)); [ "$b" -lt 30 ] && b=30; echo "$b"; }

note() { echo "$*" | tee -a "$summary"; }

# step NAME LOG LIMIT CMD...: runs CMD with its output appended to LOG (and
# shown), within LIMIT seconds or what is left of the deadline, whichever is
# less; records the result in the summary. Exit 77 counts as skipped.
step() {
  local name=$1 log=$2 limit=$3 t0=$SECONDS rc; shift 3
  local rest=$(($(left) - 10))
  [ "$rest" -lt "$limit" ] && limit=$rest
  if [ "$limit" -lt 10 ]; then
    note "== $name: not run, out of time (SHOAL_GPU_DEADLINE=$DEADLINE)"
    failed=1
    return 1
  fi
  echo "== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$log"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) note "== $name: ok in $((SECONDS - t0)) s" ;;
    77) note "== $name: skipped (exit 77) in $((SECONDS - t0)) s" ;;
    124|137) note "== $name: FAILED, timed out after ${limit}s (see $(basename "$log"))"; failed=1 ;;
    *) note "== $name: FAILED, exit $rc in $((SECONDS - t0)) s (see $(basename "$log"))"; failed=1 ;;
  esac
  return "$rc"
}

# ------------------------------------------------------------------ environment
buildlog=$OUT/build.log
: >"$buildlog"
if [ -f tests/gpu/env.sh ]; then
  # sourced without -u: it was written for interactive shells; it says itself what it misses
  set +u
  # shellcheck disable=SC1091
  source tests/gpu/env.sh >>"$buildlog" 2>&1 || echo "env.sh returned non-zero (see above)" >>"$buildlog"
  set -u
else
  echo "tests/gpu/env.sh absent: the system's libraries only" >>"$buildlog"
fi
if [ -z "${SHOAL_TESTDATA-}" ]; then
  for d in ../shared/testdata shared/testdata .testdata; do
    if [ -f "$d/stories260K.gguf" ]; then export SHOAL_TESTDATA=$PWD/$d; break; fi
  done
fi
{
  echo "== machine ($(date -u +%FT%TZ)), shoal $(git rev-parse --short HEAD 2>/dev/null)$(git status --porcelain -uno 2>/dev/null | grep -q . && echo +changes)"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1 \
    || echo "nvidia-smi: not available"
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  free -g | head -2
  df -h /tmp . 2>/dev/null
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
  echo "cmake: $(cmake --version 2>/dev/null | head -1); ninja $(ninja --version 2>/dev/null)"
  echo "mpirun: $(command -v mpirun || echo none) $(mpirun --version 2>/dev/null | head -1)"
  echo "python3: $(python3 --version 2>&1), pytest $(python3 -m pytest --version 2>&1 | tail -1)"
  echo "SHOAL_TESTDATA=${SHOAL_TESTDATA:-(none: the stories260K tests skip)}"
  echo "SHOAL_NCCL_LIB=${SHOAL_NCCL_LIB-} SHOAL_CUBLAS_LIB=${SHOAL_CUBLAS_LIB-}"
} >>"$buildlog" 2>&1
cat "$buildlog"

# A client that keeps the GPU open for the whole run: without persistence mode
# the driver tears the GPU's state down whenever no process has it open, and
# each of the ~100 short shoal processes of the tests would pay for setting it
# up again. Its samples (memory, clocks, use every 2 s) end bench.log.
smi_pid='' prep_pid=''
smi_csv=/tmp/shoal-gpu-smi.csv
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu,clocks.sm,clocks.mem,power.draw,temperature.gpu \
    --format=csv -l 2 >"$smi_csv" 2>&1 &
  smi_pid=$!
fi
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  [ -n "$smi_pid" ] && kill "$smi_pid" 2>/dev/null
  [ -n "$prep_pid" ] && kill "$prep_pid" 2>/dev/null
}
trap cleanup EXIT

# ------------------------------------------------------------------ 1. build
if want build; then
  # SHOAL_CUDA=ON: a machine without nvcc fails here rather than building a CPU-only shoal
  step "build: configure" "$buildlog" 120 \
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DSHOAL_CUDA=ON -DSHOAL_TESTS=ON
  step "build: ninja" "$buildlog" 420 ninja -C "$BUILD"
fi
if [ ! -x "$BUILD/shoal" ]; then
  note "== $BUILD/shoal is missing: the steps after the build fail"
  failed=1
fi
export SHOAL_BIN=$PWD/$BUILD/shoal

# bench sizes: the models are written by a background process while the GPU runs tests
bench_args=(--sizes "1b,7b,13b:q4_0" --types "f16,q8_0,q4_0")
[ "$quick" = 1 ] && bench_args=(--sizes "1b" --types "f16,q8_0,q4_0")
# shellcheck disable=SC2206  # word splitting wanted
bench_args+=(--models-dir "$MODELS" ${SHOAL_GPU_BENCH_ARGS-})
if want bench && [ -x "$SHOAL_BIN" ]; then
  echo "== bench: writing its models in the background ($(date +%T))" >"$OUT/bench.log"
  # it stops writing 150 s before the deadline: the bench's runs need ~1-2 min
  python3 bench/gpu/bench_gpu.py --prepare-only "${bench_args[@]}" --jobs 6 \
    --budget "$(budget 150)" >>"$OUT/bench.log" 2>&1 &
  prep_pid=$!
fi

# ------------------------------------------------------------------ 2. ops
if want ops; then
  : >"$OUT/ops.log"
  ops=
  for f in "$BUILD/tests/test_backend_ops" "$BUILD/test_backend_ops"; do
    [ -x "$f" ] && { ops=$f; break; }
  done
  if [ -n "$ops" ]; then
    step "ops: test_backend_ops cuda" "$OUT/ops.log" 150 "$ops" cuda
  else
    note "== ops: $BUILD/tests/test_backend_ops absent (not built): skipped"
    echo "$BUILD/tests/test_backend_ops absent (not built): skipped" >>"$OUT/ops.log"
  fi
fi

# ------------------------------------------------------------------ 3. model
if want model; then
  : >"$OUT/model.log"
  pyargs=(-v -rA)
  [ "$quick" = 1 ] && pyargs+=(-k "not slow")
  # shellcheck disable=SC2206
  pyargs+=(${SHOAL_GPU_PYTEST_ARGS-})
  # pytest exits 5 when it collected nothing: the module skipped (no CUDA device)
  # shellcheck disable=SC2016  # $@ and $? belong to the inner bash
  step "model: pytest tests/gpu/test_gpu_model.py" "$OUT/model.log" 330 \
    bash -c 'python3 -m pytest "$@"; rc=$?; [ "$rc" = 5 ] && exit 77; exit "$rc"' pytest \
      "${pyargs[@]}" tests/gpu/test_gpu_model.py
fi

# ------------------------------------------------------------------ 4. bench
if want bench; then
  if [ -n "$prep_pid" ]; then
    echo "== bench: waiting for its models ($(date +%T))" | tee -a "$OUT/bench.log"
    wait "$prep_pid"
    prep_pid=''
  fi
  # its own budget ends it cleanly (a model begun may take 30 s more) before the step's limit
  b=$(budget 60); [ "$b" -gt 360 ] && b=360
  step "bench: bench/gpu/bench_gpu.py" "$OUT/bench.log" 400 \
    python3 bench/gpu/bench_gpu.py "${bench_args[@]}" --out "$OUT" --tag bench --budget "$b"
fi

# ---------------------------------------------------------------- 5. offload
# decode with layers streamed from pinned host memory against the copy bound
# (bench/gpu/bench_offload_gpu.py), on the largest bench model written
if want offload; then
  om=""
  for f in synth-7b-4096x32-q8_0.gguf synth-1b-2048x22-f16.gguf synth-1b-2048x22-q8_0.gguf; do
    [ -f "$MODELS/$f" ] && { om=$MODELS/$f; break; }
  done
  if [ -n "$om" ]; then
    step "offload: bench/gpu/bench_offload_gpu.py" "$OUT/bench.log" 240 \
      python3 bench/gpu/bench_offload_gpu.py --model "$om" --shoal "$SHOAL_BIN" --n 32 --out "$OUT"
  else
    note "== offload: not run, no bench model in $MODELS"
  fi
fi

if [ -n "$smi_pid" ] && [ -f "$smi_csv" ]; then
  { echo "== nvidia-smi samples, the last 60 of the run"; tail -n 60 "$smi_csv"; } >>"$OUT/bench.log"
fi

# ------------------------------------------------------------------ summary
note "== total $SECONDS s; $([ "$failed" = 0 ] && echo 'every step passed' || echo 'FAILED steps above'); files in $OUT"
ls -l "$OUT"
exit "$failed"
