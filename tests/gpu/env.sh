# shellcheck shell=bash
# Source this (bash) to build and run shoal with the Debian packages that
# tests/gpu/fetch-deps.sh unpacked into .gpu-deps, on a machine without them
# (the GPU machine: pass .gpu-deps in `carry`), or here to test that tree:
#   source tests/gpu/env.sh && cmake -S . -B build-gpu -G Ninja && ninja -C build-gpu
#   mpirun -np 2 build-gpu/shoal ...
# It sets PATH, LD_LIBRARY_PATH, CPATH, LIBRARY_PATH, PKG_CONFIG_PATH,
# CMAKE_PREFIX_PATH and MPI_HOME to the tree; OPAL_PREFIX, OPAL_SYSCONFDIR and
# PMIX_* so that the relocated Open MPI finds its plugins, help files
# and settings; lets mpirun run as root; and finds NCCL and cuBLAS, from the
# pip packages (nvidia-nccl-cu13, nvidia-cublas) where they are installed,
# else from /usr/local/cuda, exporting SHOAL_NCCL_INCLUDE / SHOAL_NCCL_LIB
# and SHOAL_CUBLAS_INCLUDE / SHOAL_CUBLAS_LIB (folders) for CMake.
#
# The libraries in .gpu-deps/fallback (gnutls, libudev, libprotobuf, ...)
# are put on LD_LIBRARY_PATH only where the system has no library of that
# soname, by links in $SHOAL_GPU_TMP (default /tmp/shoal-gpu-env), so that
# they never shadow a system's newer copy.
#
# It is sourced, so it does not `set -euo pipefail` (that would change the
# caller's shell, and an error would end it); it checks each step itself,
# says on stderr what it could not find, and returns non-zero only when
# .gpu-deps is missing. Sourcing it twice adds nothing twice.

shoal_gpu_env() {
  local here repo deps usr arch=x86_64-linux-gnu tmp d f so name
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) || return 1
  repo=$(cd "$here/../.." && pwd) || return 1
  deps=$repo/.gpu-deps
  usr=$deps/root/usr
  tmp=${SHOAL_GPU_TMP:-/tmp/shoal-gpu-env}

  # prepend VAR DIR: put DIR first in the colon list VAR, once
  prepend() {
    local cur=${!1-}
    case ":$cur:" in *":$2:"*) return 0 ;; esac
    export "$1=$2${cur:+:$cur}"
  }
  # append VAR DIR: put DIR last in the colon list VAR, once
  append() {
    local cur=${!1-}
    case ":$cur:" in *":$2:"*) return 0 ;; esac
    export "$1=${cur:+$cur:}$2"
  }

  # ------------------------------------------------------------- NCCL, cuBLAS
  # The pip packages' folders: nvidia/nccl/{include,lib} for NCCL, and for
  # CUDA 13's cuBLAS nvidia/cu13/{include,lib} (nvidia/cublas before it).
  # Their lib folders hold only libX.so.N; CMake's find_library wants libX.so,
  # so links to both go in $tmp/<name>/lib.
  local nv_dirs=""
  if command -v python3 >/dev/null 2>&1; then
    nv_dirs=$(python3 -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null || true)
  fi
  # pip_lib NAME LIB HEADER SUBDIR...: looks in each nvidia/SUBDIR for
  # include/HEADER and lib/libLIB.so.N; sets pip_inc, pip_lib (the folder of
  # links for the linker) and pip_real (the package's lib folder, for the
  # loader), or leaves pip_inc empty.
  local pip_inc pip_lib pip_real
  pip_lib() {
    local name=$1 lib=$2 header=$3 base sub real; shift 3
    pip_inc="" pip_lib="" pip_real=""
    while IFS= read -r base; do
      [ -n "$base" ] || continue
      for sub in "$@"; do
        real=$(compgen -G "$base/$sub/lib/lib$lib.so.[0-9]*" | sort -V | head -n1)
        if [ -n "$real" ] && [ -f "$base/$sub/include/$header" ]; then
          mkdir -p "$tmp/$name/lib" || return 1
          ln -sfn "$real" "$tmp/$name/lib/lib$lib.so"
          ln -sfn "$real" "$tmp/$name/lib/$(basename "$real")"
          pip_inc=$base/$sub/include pip_lib=$tmp/$name/lib pip_real=$base/$sub/lib
          return 0
        fi
      done
    done <<<"$nv_dirs"
  }
  local cuda=${CUDA_HOME:-/usr/local/cuda} cuda_lib
  cuda_lib=$cuda/lib64; [ -d "$cuda_lib" ] || cuda_lib=$cuda/lib

  pip_lib nccl nccl nccl.h nccl
  if [ -n "${SHOAL_NCCL_LIB-}" ]; then
    : # the caller's choice stands
  elif [ -n "$pip_inc" ]; then
    export SHOAL_NCCL_INCLUDE=$pip_inc SHOAL_NCCL_LIB=$pip_lib
    prepend LD_LIBRARY_PATH "$pip_real"
  elif [ -f "$cuda/include/nccl.h" ] && compgen -G "$cuda_lib/libnccl.so*" >/dev/null; then
    export SHOAL_NCCL_INCLUDE=$cuda/include SHOAL_NCCL_LIB=$cuda_lib
  else
    echo "env.sh: no NCCL (neither the pip package nvidia-nccl-cu13 nor $cuda/include/nccl.h)" >&2
  fi

  if [ -n "${SHOAL_CUBLAS_LIB-}" ]; then
    :
  elif [ -f "$cuda/include/cublas_v2.h" ] && [ -e "$cuda_lib/libcublas.so" ]; then
    export SHOAL_CUBLAS_INCLUDE=$cuda/include SHOAL_CUBLAS_LIB=$cuda_lib
  else
    pip_lib cublas cublas cublas_v2.h cu13 cublas
    if [ -n "$pip_inc" ]; then
      export SHOAL_CUBLAS_INCLUDE=$pip_inc SHOAL_CUBLAS_LIB=$pip_lib
      # cublasLt beside it: libcublas.so.N needs it at run time
      f=$(compgen -G "$pip_real/libcublasLt.so.[0-9]*" | sort -V | head -n1)
      [ -z "$f" ] || ln -sfn "$f" "$pip_lib/libcublasLt.so"
      prepend LD_LIBRARY_PATH "$pip_real"
      # so that FindCUDAToolkit's CUDA::cublas is found without a CMake
      # change: find_library searches CMAKE_LIBRARY_PATH, and nvcc
      # preprocesses with the host compiler, which reads CPATH (last, so
      # that the toolkit's own headers, named with -I, come first)
      prepend CMAKE_LIBRARY_PATH "$pip_lib"
      append CPATH "$pip_inc"
    else
      echo "env.sh: no cuBLAS (neither in $cuda nor the pip package nvidia-cublas)" >&2
    fi
  fi

  # ------------------------------------------------------------- .gpu-deps
  if [ ! -d "$usr/lib/$arch/openmpi" ]; then
    echo "env.sh: $deps is missing or incomplete: run tests/gpu/fetch-deps.sh on a Debian" \
         "machine and pass .gpu-deps in carry" >&2
    return 1
  fi

  # Fallback libraries: linked into $tmp/fallback only where neither the
  # loader's cache, the usual folders nor LD_LIBRARY_PATH has that soname.
  local cache sysdirs
  cache=$( { ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | awk '{print $1}')
  sysdirs="/lib/$arch:/usr/lib/$arch:/lib64:/usr/lib64:/lib:/usr/lib:${LD_LIBRARY_PATH-}"
  rm -rf "$tmp/fallback" && mkdir -p "$tmp/fallback" || return 1
  for so in "$deps/fallback/usr/lib/$arch/"lib*.so.*; do
    name=$(basename "$so")
    # only sonames (libfoo.so.N), not the versioned files they point to
    [[ $name =~ ^lib.+\.so\.[0-9]+$ ]] || continue
    grep -qxF "$name" <<<"$cache" && continue
    local found=0 IFS_old=$IFS
    IFS=:
    for d in $sysdirs; do [ -n "$d" ] && [ -e "$d/$name" ] && { found=1; break; }; done
    IFS=$IFS_old
    [ $found -eq 1 ] || ln -sfn "$(readlink -f "$so")" "$tmp/fallback/$name"
  done
  if compgen -G "$tmp/fallback/*" >/dev/null; then
    prepend LD_LIBRARY_PATH "$tmp/fallback"
  fi

  # in case the copy to the GPU machine lost the execute bits
  [ -x "$usr/bin/orterun" ] || chmod u+x "$usr"/bin/* 2>/dev/null || true
  prepend PATH "$usr/bin"
  # UCX's plugins (fetch-deps.sh --with-fabrics) have a RUNPATH in /usr
  [ ! -d "$usr/lib/$arch/ucx" ] || prepend LD_LIBRARY_PATH "$usr/lib/$arch/ucx"
  prepend LD_LIBRARY_PATH "$usr/lib/$arch"
  prepend LIBRARY_PATH "$usr/lib/$arch"
  prepend CPATH "$usr/lib/$arch/openmpi/include"
  prepend CPATH "$usr/include"
  prepend PKG_CONFIG_PATH "$usr/share/pkgconfig"
  prepend PKG_CONFIG_PATH "$usr/lib/$arch/pkgconfig"
  prepend CMAKE_PREFIX_PATH "$usr"
  # FindMPI looks for $MPI_HOME/bin/mpicc first
  export MPI_HOME=$usr

  # Open MPI was built for /usr: these move its install folders (plugins in
  # lib/$arch/openmpi/lib/openmpi3, help texts in share/openmpi, the wrapper
  # data for mpicc) into the tree; Debian's openmpi-mca-params.conf (which
  # turns off the InfiniBand and UCX transports) comes from the tree's etc.
  export OPAL_PREFIX=$usr
  export OPAL_SYSCONFDIR=$deps/root/etc/openmpi
  # Debian built PMIx with absolute lib and data folders, which PMIX_PREFIX
  # alone does not move: its plugins and help texts need PMIX_LIBDIR and
  # PMIX_DATADIR.
  local pmix=$usr/lib/$arch/pmix2
  export PMIX_PREFIX=$pmix PMIX_EXEC_PREFIX=$pmix PMIX_LIBDIR=$pmix/lib \
         PMIX_DATAROOTDIR=$pmix/share PMIX_DATADIR=$pmix/share
  # The GPU machine runs commands as root.
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  # Shared-memory transfers without cross-memory attach, which sandboxes
  # (gVisor, containers without CAP_SYS_PTRACE) refuse; set it to cma to try.
  export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
  export SHOAL_GPU_DEPS=$deps
  return 0
}
shoal_gpu_env
_shoal_gpu_env_rc=$?
unset -f shoal_gpu_env prepend append pip_lib
# shellcheck disable=SC2317  # return works when sourced, exit when run
return "$_shoal_gpu_env_rc" 2>/dev/null || exit "$_shoal_gpu_env_rc"
