#!/usr/bin/env bash
# Installs what is missing, builds shoal, and runs the main job: two ranks
# under mpirun, tensor parallel, on ../shared/testdata/stories260K.gguf when
# it is there, else on a small synthetic model written by `shoal synth`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j "$(nproc)"

model=../shared/testdata/stories260K.gguf
if [ ! -f "$model" ]; then
  echo "($model not found: using a synthetic model with random weights)" >&2
  model=build/demo-synthetic.gguf
  [ -f "$model" ] || ./build/shoal synth -o "$model" --dim 256 --layers 4 --type q8_0
fi
# as root, Open MPI wants --allow-run-as-root; --oversubscribe lets two ranks
# share a machine with fewer cores
mpirun --allow-run-as-root --oversubscribe -np 2 \
  ./build/shoal run -m "$model" --tp 2 -p "Once upon a time" -n 200 --temp 0
