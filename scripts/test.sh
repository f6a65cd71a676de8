#!/usr/bin/env bash
# Installs what is missing, builds shoal three times (Release; Debug with
# AddressSanitizer + UndefinedBehaviorSanitizer; ThreadSanitizer), and runs
# every test: all suites on the Release build; the C unit tests and the
# corruption test on the ASan build; the fuzz harnesses for a bounded time;
# the threads' shared steps (lanes) on the TSan build. Exits non-zero if
# anything fails.
#
# CI mode (SHOAL_CI_STRICT=1, below): what a suite needs -- MPI, the test data,
# the default model, the Gemma file, openai, gguf, protoc, the emulated LAN --
# is required, and its absence a failure that says why (configuring stops, or
# the tests fail), never a skip or a suite left out; skips that remain (no GPU,
# a SIMD level this processor lacks) print their reasons (pytest -rs).
set -euo pipefail
cd "$(dirname "$0")/.."
export SHOAL_CI_STRICT=1
# each part's header says when it started, in seconds from here (CI's budget is 20 minutes)
section() { echo "== $* [at ${SECONDS} s]"; }

section "installing what is missing"
bash scripts/install-deps.sh

jobs=$(nproc)
section "building: Release, ASan + UBSan, TSan"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j "$jobs"
# (-O1, as AddressSanitizer's own documentation advises: its unit tests took 227 s at -O0 in CI, 60 s so)
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_C_FLAGS_DEBUG=-g -O1" -DSHOAL_SANITIZE=ON \
  -DSHOAL_CUDA=OFF >/dev/null
ninja -C build-asan -j "$jobs"
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHOAL_CUDA=OFF \
  -DCMAKE_C_FLAGS=-fsanitize=thread -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread >/dev/null
ninja -C build-tsan -j "$jobs" shoal

section "all tests (Release build)"
(cd build && ctest --output-on-failure -j "$jobs")
# the GPU tests skip where there is no GPU: say why, not only that they did
(cd build && ctest -L gpu -V 2>&1 | grep -E "^[0-9]+: (skipped|SKIPPED)" | awk -F: "!seen[\$1]++" | sed "s/^/GPU test /") || true

# the one-call GPU check's script, as far as a machine without a GPU takes it: its
# steps with the CPU standing in for the GPU (the build step reuses build/)
section "tests/gpu/run.sh --dry-run --quick"
gpu_out=$(mktemp -d)
OUT=$gpu_out SHOAL_GPU_BUILD=build SHOAL_GPU_MODELS=$gpu_out/models bash tests/gpu/run.sh --dry-run --quick >"$gpu_out/run.log" 2>&1 \
  || { tail -n 60 "$gpu_out/run.log"; echo "tests/gpu/run.sh --dry-run failed (its summary: $gpu_out/summary.txt)"; exit 1; }
for s in "== build: configure: ok" "== build: ninja" "== ops: test_backend_ops cpu --quick: ok" \
         "== model: test_gpu_model cpu --quick: ok" "== ranks: pytest tests/gpu/test_gpu_model.py: ok" \
         "== bench: bench/gpu/bench_gpu.py: ok" "== offload: not run" "every step passed"; do
  grep -qF "$s" "$gpu_out/summary.txt" || { cat "$gpu_out/summary.txt"; echo "run.sh --dry-run: no '$s' in its summary"; exit 1; }
done
cat "$gpu_out/summary.txt"
rm -rf "$gpu_out"

section "unit tests and corruption test under ASan + UBSan"
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
(cd build-asan && ctest --output-on-failure -j "$jobs" -L unit)
SHOAL_BIN="$PWD/build-asan/shoal" python3 -m pytest -q -rs tests/fuzz

# libFuzzer harnesses (tests/fuzz/harness: GGUF, tokenizers, chat templates, shard manifests, host
# files, step messages, request bodies), each for a bounded time; any crash, sanitizer report,
# leak or input slower than 5 s fails (scripts/fuzz.sh --hours 1 is the long run)
section "fuzzing (scripts/fuzz.sh --ci)"
bash scripts/fuzz.sh --ci

# lanes: two threads each running a share of a step's tokens through every layer, meeting at
# a barrier per layer when a sequence spans both (a race there is a wrong answer now and then:
# TSan sees it every time)
section "lanes under ThreadSanitizer"
SHOAL_BIN="$PWD/build-tsan/shoal" TSAN_OPTIONS=halt_on_error=1 python3 -m pytest -q -rs tests/model/test_lanes.py \
  tests/server/test_serve.py -k lanes

section "all tests passed"
