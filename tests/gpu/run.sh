#!/usr/bin/env bash
# tests/gpu/run.sh — what a session with a GPU runs, from the repo root, in one
# command (GPU time comes by chance and is short: it goes to measuring):
#   build   tests/gpu/env.sh (when .gpu-deps is there: Open MPI, protobuf-c, ...;
#           NCCL and cuBLAS from pip), nvcc from /usr/local/cuda/bin when not on
#           PATH, then cmake + ninja into build-gpu for the GPU's own compute
#           capability (nvidia-smi; else CMake's default list): only the targets
#           the steps below use
#   ops     test_backend_ops cuda: every op against the CPU's scalar kernels
#   model   test_gpu_model cuda: stories260K against run.c, synthetic models of
#           every type against the CPU, offload budgets: one process, models in
#           memory
#   ranks   pytest tests/gpu/test_gpu_model.py: ranks sharing the GPU under
#           mpirun against one rank (tp 2 over MPI, tp 2 over NCCL), offload
#           groups
#   bench   bench/gpu/bench_gpu.py: decode and prompt tok/s, bandwidth against
#           the GPU's peak; its models are written into memory (/dev/shm) in the
#           background while the steps before run
#   offload bench/gpu/bench_offload_gpu.py: layers streamed from pinned host
#           memory against the copy bound
# Each step's output goes to a file under $OUT (default /tmp/shoal-gpu-out), and
# summary.txt says what passed, what failed, and the figures. A failed step does
# not stop the others; the exit status is 1 when any failed. The whole run keeps
# within SHOAL_GPU_DEADLINE seconds (default 570: a device command may run 600):
# each step's limit is cut to what is left.
#
# usage: bash tests/gpu/run.sh [--quick] [--steps LIST] [--dry-run]
#   --quick     the first call of a session, within 8 minutes: the whole op
#               sweep, the model cases but the long context, 2-rank tp runs
#               over MPI and over NCCL and an offload group, the bench's 1B
#               shape (f16, q8_0, q4_0); no offload bench
#   (default)   everything: all sizes and cases, the bench's 1B, 7B and 13B
#               shapes, the offload bench
#   --steps L   the steps to run, e.g. `--steps bench,offload` for the second call
#               of a session, on the same warm machine (build-gpu is kept there)
#   --dry-run   on a machine without a GPU: the same steps with the CPU standing
#               in for the GPU (test_backend_ops cpu, test_gpu_model cpu, the
#               multi-rank tests against the CPU backend, the bench's tiny shape
#               on the CPU), so that everything but the GPU itself is proven;
#               the offload bench, which needs a GPU, says so and is not run.
#               CI runs it (scripts/test.sh).
# environment: OUT, SHOAL_GPU_DEADLINE, SHOAL_GPU_BUILD (default build-gpu),
#   SHOAL_GPU_MODELS (the bench's models; default /dev/shm/shoal-gpu-models, else
#   /tmp), SHOAL_TESTDATA (default: ../shared/testdata, else shared/testdata or
#   .testdata in the repo, for stories260K), SHOAL_GPU_BENCH_ARGS and
#   SHOAL_GPU_PYTEST_ARGS (more flags for those steps).
set -uo pipefail

# ------------------------------------------------------------------ options
quick=0 dry=0
steps=build,ops,model,ranks,bench,offload
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --dry-run) dry=1 ;;
    --steps) steps=${2:?--steps needs a list}; shift ;;
    --steps=*) steps=${1#--steps=} ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for s in ${steps//,/ }; do
  case $s in build|ops|model|ranks|bench|offload) ;;
    *) echo "run.sh: unknown step '$s' (build, ops, model, ranks, bench, offload)" >&2; exit 2 ;;
  esac
done
want() { [[ ,$steps, == *,$1,* ]]; }

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
export OUT=${OUT:-/tmp/shoal-gpu-out}
mkdir -p "$OUT" || exit 2
BUILD=${SHOAL_GPU_BUILD:-build-gpu}
DEADLINE=${SHOAL_GPU_DEADLINE:-570}
if [ -z "${SHOAL_GPU_MODELS-}" ]; then
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then SHOAL_GPU_MODELS=/dev/shm/shoal-gpu-models
  else SHOAL_GPU_MODELS=/tmp/shoal-gpu-models; fi
fi
MODELS=$SHOAL_GPU_MODELS
export PYTHONUNBUFFERED=1
summary=$OUT/summary.txt
: >"$summary"
failed=0
# the device under test, and what a dry run says in place of a GPU's figures
DEV=cuda
[ "$dry" = 1 ] && DEV=cpu

# ------------------------------------------------------------------ helpers
left() { echo $((DEADLINE - SECONDS)); }

# budget MARGIN: seconds left less MARGIN, at least 30 (bench_gpu.py's --budget)
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

# figures LOG REGEX [MAX]: the log's lines that match, into the summary, indented
figures() {
  grep -E "$2" "$1" 2>/dev/null | head -n "${3:-40}" | sed 's/^/    /' >>"$summary"
}

# a program of the build (CMake puts the tests under tests/)
prog() {
  local f
  for f in "$BUILD/tests/$1" "$BUILD/$1"; do [ -x "$f" ] && { echo "$f"; return 0; }; done
  return 1
}

# ------------------------------------------------------------------ environment
if want build || [ ! -f "$OUT/build.log" ]; then buildlog=$OUT/build.log; else buildlog=$OUT/env.log; fi
: >"$buildlog"
if [ -f tests/gpu/env.sh ] && [ -d .gpu-deps ]; then
  # sourced without -u: it was written for interactive shells; it says itself what it misses
  set +u
  # shellcheck disable=SC1091
  source tests/gpu/env.sh >>"$buildlog" 2>&1 || echo "env.sh returned non-zero (see above)" >>"$buildlog"
  set -u
else
  echo "no .gpu-deps: the system's libraries only (no Open MPI there: the ranks step skips)" >>"$buildlog"
fi
# nvcc where the toolkit puts it, when the PATH lacks it
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=$PATH:/usr/local/cuda/bin
fi
if [ -z "${SHOAL_TESTDATA-}" ]; then
  for d in ../shared/testdata shared/testdata .testdata; do
    if [ -f "$d/stories260K.gguf" ]; then export SHOAL_TESTDATA=$PWD/$d; break; fi
  done
fi
# the GPU's compute capability ("9.0" -> 90), for a build of that architecture alone
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')
[[ $arch =~ ^[0-9]+$ ]] || arch=
{
  echo "== machine ($(date -u +%FT%TZ)), shoal $(git rev-parse --short HEAD 2>/dev/null)$(git status --porcelain -uno 2>/dev/null | grep -q . && echo +changes)$([ "$dry" = 1 ] && echo ', DRY RUN: the CPU stands in for the GPU')"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version,compute_cap,clocks.max.sm,clocks.max.mem --format=csv 2>&1 \
    || echo "nvidia-smi: not available"
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  free -g | head -2
  df -h /tmp . "$(dirname "$MODELS")" 2>/dev/null
  echo "nvcc: $(command -v nvcc || echo none) $(nvcc --version 2>/dev/null | tail -1)"
  echo "cmake: $(cmake --version 2>/dev/null | head -1); ninja $(ninja --version 2>/dev/null)"
  echo "mpirun: $(command -v mpirun || echo none) $(mpirun --version 2>/dev/null | head -1)"
  echo "python3: $(python3 --version 2>&1), pytest $(python3 -m pytest --version 2>&1 | tail -1)"
  echo "CUDA architectures: ${arch:-the default list of CMakeLists.txt (no GPU answered nvidia-smi)}"
  echo "SHOAL_TESTDATA=${SHOAL_TESTDATA:-(none: the stories260K cases skip)}"
  echo "SHOAL_NCCL_LIB=${SHOAL_NCCL_LIB-} SHOAL_CUBLAS_LIB=${SHOAL_CUBLAS_LIB-}"
} >>"$buildlog" 2>&1
cat "$buildlog"
grep -m1 '^== machine' "$buildlog" >>"$summary"
grep -m1 -A1 '^index, name' "$buildlog" | tail -n 1 | sed 's/^/    GPU: /' >>"$summary"

# A client that keeps the GPU open for the whole run: without persistence mode
# the driver tears the GPU's state down whenever no process has it open, and
# each short process would pay for setting it up again. Its samples (memory,
# clocks, use every 2 s) end bench.log.
smi_pid='' prep_pid=''
smi_csv=/tmp/shoal-gpu-smi.csv
if [ "$dry" = 0 ] && command -v nvidia-smi >/dev/null 2>&1; then
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
  cfg=(-S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHOAL_TESTS=ON)
  # SHOAL_CUDA=ON: a machine without nvcc fails here rather than building a CPU-only shoal
  cfg+=(-DSHOAL_CUDA=ON)
  [ -n "$arch" ] && cfg+=("-DCMAKE_CUDA_ARCHITECTURES=$arch")
  step "build: configure" "$buildlog" 120 cmake "${cfg[@]}"
  targets=(shoal shoal_cuda test_backend_ops test_gpu_model)
  grep -q '^build h2d_bw' "$BUILD/build.ninja" 2>/dev/null && targets+=(h2d_bw)
  step "build: ninja ${targets[*]}" "$buildlog" 420 ninja -C "$BUILD" "${targets[@]}"
fi
if [ ! -x "$BUILD/shoal" ]; then
  note "== $BUILD/shoal is missing: the steps after the build fail"
  failed=1
fi
export SHOAL_BIN=$PWD/$BUILD/shoal

# bench sizes; the models are written by a background process while the tests run
if [ "$dry" = 1 ]; then
  bench_args=(--device cpu --sizes tiny --types q8_0,q4_0 --n-gen 16)
elif [ "$quick" = 1 ]; then
  bench_args=(--sizes 1b --types f16,q8_0,q4_0)
else
  bench_args=(--sizes "1b,7b,13b:q4_0" --types f16,q8_0,q4_0)
fi
# shellcheck disable=SC2206  # word splitting wanted
bench_args+=(--models-dir "$MODELS" ${SHOAL_GPU_BENCH_ARGS-})
if want bench && [ -x "$SHOAL_BIN" ]; then
  echo "== bench: writing its models into $MODELS in the background ($(date +%T))" >"$OUT/bench.log"
  # it stops writing 150 s before the deadline: the bench's runs need ~1-2 min
  python3 bench/gpu/bench_gpu.py --prepare-only "${bench_args[@]}" --jobs 6 \
    --budget "$(budget 150)" --shoal "$SHOAL_BIN" >>"$OUT/bench.log" 2>&1 &
  prep_pid=$!
fi

# ------------------------------------------------------------------ 2. ops
if want ops; then
  : >"$OUT/ops.log"
  if ops=$(prog test_backend_ops); then
    oargs=("$DEV")
    [ "$dry" = 1 ] && oargs+=(--quick) # the whole sweep takes seconds on a GPU (its reference is the CPU)
    step "ops: test_backend_ops ${oargs[*]}" "$OUT/ops.log" 150 "$ops" "${oargs[@]}"
    figures "$OUT/ops.log" '^test_backend_ops: .*cases|^  FAILED|not checked'
  else
    note "== ops: FAILED, $BUILD/tests/test_backend_ops was not built"
    failed=1
  fi
fi

# ------------------------------------------------------------------ 3. model
if want model; then
  : >"$OUT/model.log"
  if tm=$(prog test_gpu_model); then
    margs=("$DEV")
    [ "$dry" = 1 ] && margs+=(--quick)
    [ "$quick" = 0 ] && [ "$dry" = 0 ] && margs+=(--slow)
    step "model: test_gpu_model ${margs[*]}" "$OUT/model.log" 240 "$tm" "${margs[@]}"
    figures "$OUT/model.log" '^test_gpu_model: |^FAIL|^PASS (offload|stories)'
  else
    note "== model: FAILED, $BUILD/tests/test_gpu_model was not built"
    failed=1
  fi
fi

# ------------------------------------------------------------------ 4. ranks
if want ranks; then
  : >"$OUT/ranks.log"
  if command -v mpirun >/dev/null 2>&1; then
    pyargs=(-v -rA)
    # quick: one 2-rank tp run through MPI, the NCCL ones (f64 and f32 sums), one offload group
    [ "$quick" = 1 ] && pyargs+=(-k "q8_0-2-1-mpi or nccl or group and 2")
    # shellcheck disable=SC2206
    pyargs+=(${SHOAL_GPU_PYTEST_ARGS-})
    penv=()
    [ "$dry" = 1 ] && penv=(SHOAL_GPU_TEST_DEVICE=cpu)
    # pytest exits 5 when it collected nothing
    # shellcheck disable=SC2016  # $@ and $? belong to the inner bash
    step "ranks: pytest tests/gpu/test_gpu_model.py" "$OUT/ranks.log" 240 \
      env "${penv[@]}" bash -c 'python3 -m pytest "$@"; rc=$?; [ "$rc" = 5 ] && exit 77; exit "$rc"' pytest \
        "${pyargs[@]}" tests/gpu/test_gpu_model.py
    figures "$OUT/ranks.log" 'ids identical|ids part|XFAIL|xfail|^FAILED|passed|failed'
  else
    note "== ranks: skipped: no mpirun (carry .gpu-deps: tests/gpu/fetch-deps.sh)"
  fi
fi

# ------------------------------------------------------------------ 5. bench
if want bench; then
  if [ -n "$prep_pid" ]; then
    echo "== bench: waiting for its models ($(date +%T))" | tee -a "$OUT/bench.log"
    wait "$prep_pid"
    prep_pid=''
  fi
  # its own budget ends it cleanly (a model begun may take 30 s more) before the step's limit
  b=$(budget 60); [ "$b" -gt 360 ] && b=360
  step "bench: bench/gpu/bench_gpu.py" "$OUT/bench.log" 400 \
    python3 bench/gpu/bench_gpu.py "${bench_args[@]}" --out "$OUT" --tag bench --budget "$b" --shoal "$SHOAL_BIN"
  [ -f "$OUT/bench.md" ] && sed 's/^/    /' "$OUT/bench.md" >>"$summary"
fi

# ---------------------------------------------------------------- 6. offload
# decode with layers streamed from pinned host memory against the copy bound,
# on the largest bench model written
if want offload; then
  if [ "$dry" = 1 ]; then
    note "== offload: not run: it measures a GPU's host-to-device copies (dry run)"
  else
    om=""
    for f in synth-7b-4096x32-q8_0.gguf synth-1b-2048x22-f16.gguf synth-1b-2048x22-q8_0.gguf; do
      [ -f "$MODELS/$f" ] && { om=$MODELS/$f; break; }
    done
    if [ -n "$om" ]; then
      step "offload: bench/gpu/bench_offload_gpu.py" "$OUT/bench.log" 240 \
        python3 bench/gpu/bench_offload_gpu.py --model "$om" --shoal "$SHOAL_BIN" --n 32 --out "$OUT"
      [ -f "$OUT/offload.md" ] && sed 's/^/    /' "$OUT/offload.md" >>"$summary"
    else
      note "== offload: not run, no bench model in $MODELS (run the bench step first)"
    fi
  fi
fi

if [ -n "$smi_pid" ] && [ -f "$smi_csv" ]; then
  { echo "== nvidia-smi samples, the last 60 of the run"; tail -n 60 "$smi_csv"; } >>"$OUT/bench.log"
fi

# ------------------------------------------------------------------ summary
note "== total $SECONDS s; $([ "$failed" = 0 ] && echo 'every step passed' || echo 'FAILED steps above'); files in $OUT"
ls -l "$OUT"
exit "$failed"
