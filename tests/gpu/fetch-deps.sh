#!/usr/bin/env bash
# Fetches, on a Debian 12 machine with apt and a network, the Debian packages
# that building and running shoal needs on the GPU machine, which has neither
# apt nor a network: protobuf-c (protoc-c too), xxHash, cJSON, libmicrohttpd
# and Open MPI 4.1 with the libraries it loads. Nothing is installed: each
# .deb is fetched with `apt-get download` into a cache outside the repo
# ($SHOAL_DEB_CACHE, default ~/.cache/shoal-gpu-debs) and unpacked with
# `dpkg -x` into
#   .gpu-deps/root      what env.sh always puts first on the search paths;
#   .gpu-deps/fallback  general-purpose libraries (gnutls, libudev,
#                       libprotobuf, ...) that env.sh uses only where the
#                       system lacks them, so as not to shadow newer copies.
# Then it makes both trees relocatable (absolute symlinks made relative, the
# links that Debian's update-alternatives would make, .pc files relative to
# ${pcfiledir}), drops docs, man pages, locales and static libraries, and
# checks with ldd that every library the unpacked programs need is in the
# trees or is one that any glibc system has.
#
# Pass .gpu-deps in `carry` and source tests/gpu/env.sh there. Safe to run
# again: fetched .debs are kept, the trees are rebuilt (a few seconds).
# Usage: tests/gpu/fetch-deps.sh [--refetch] [--with-fabrics]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
deps=$repo/.gpu-deps
debs=${SHOAL_DEB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shoal-gpu-debs}
root=$deps/root
fallback=$deps/fallback
arch=x86_64-linux-gnu

# --------------------------------------------------------------- packages
# Always used.
main_pkgs=(
  protobuf-c-compiler libprotobuf-c-dev libprotobuf-c1
  libxxhash-dev libxxhash0
  libcjson-dev libcjson1
  libmicrohttpd-dev libmicrohttpd12
  openmpi-bin openmpi-common libopenmpi-dev libopenmpi3
  libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7 libmunge2
)
# Used only where the system has no library of that soname (env.sh decides).
fallback_pkgs=(
  libprotoc32 libprotobuf32                   # protoc-c
  libgnutls30 libnettle8 libhogweed6 libgmp10 # libmicrohttpd
  libidn2-0 libunistring2 libtasn1-6 libp11-kit0 libffi8
  libudev1                                    # libhwloc
)
# Open MPI's plugins for InfiniBand, Omni-Path, EFA and UCX, and the
# libraries they link (found with ldd on the unpacked files). The GPU machine
# is one host with none of these networks, where ranks talk through shared
# memory (btl vader) and TCP, so by default these plugins are deleted and the
# libraries not fetched: 9 MiB less, and nothing that probes for hardware.
# --with-fabrics keeps them.
fabric_pkgs=(
  libfabric1 libucx0 libpsm2-2 libpsm-infinipath1
  libibverbs1 ibverbs-providers librdmacm1 libnl-3-200 libnl-route-3-200
)
fabric_fallback_pkgs=(libnuma1 libuuid1 libatomic1)
fabric_plugins=(
  openmpi/lib/openmpi3/mca_{btl_ofi,btl_openib,mtl_ofi,mtl_psm,mtl_psm2,osc_ucx,pml_ucx,reachable_netlink}.so
  libmca_common_{ofi,ucx,verbs}.so*
)
# What any glibc system has; the check at the end does not ask for these.
base_libs='^(ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libresolv|libutil|libgcc_s|libstdc\+\+|libz)\.so'

if [ "$(dpkg --print-architecture)" != amd64 ]; then
  echo "fetch-deps: this machine is $(dpkg --print-architecture); the GPU machine is amd64" >&2
  exit 1
fi
fabrics=0
for a in "$@"; do
  case $a in
    --refetch) rm -rf "$debs" ;;
    --with-fabrics) fabrics=1 ;;
    *) echo "usage: $0 [--refetch] [--with-fabrics]" >&2; exit 2 ;;
  esac
done
if [ $fabrics -eq 1 ]; then
  main_pkgs+=("${fabric_pkgs[@]}")
  fallback_pkgs+=("${fabric_fallback_pkgs[@]}")
fi
mkdir -p "$debs"

# --------------------------------------------------------------- download
# apt-get download writes into the current folder and fetches the candidate
# version; the lists are refreshed once if a package is unknown.
fetch() {
  (cd "$debs" && apt-get -q=2 -o APT::Sandbox::User=root download "$@")
}
missing=()
for p in "${main_pkgs[@]}" "${fallback_pkgs[@]}"; do
  compgen -G "$debs/${p}_*.deb" >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "fetch-deps: downloading ${missing[*]}"
  if ! fetch "${missing[@]}"; then
    echo "fetch-deps: apt-get update, then again"
    apt-get -q=2 update
    fetch "${missing[@]}"
  fi
fi

# --------------------------------------------------------------- unpack
rm -rf "$root" "$fallback"
mkdir -p "$root" "$fallback"
unpack() { # dest pkg...
  local dest=$1 p f; shift
  for p in "$@"; do
    f=$(compgen -G "$debs/${p}_*.deb" | sort -V | tail -n1)
    dpkg -x "$f" "$dest"
    printf '  %-28s %-30s %6s KiB\n' "$p" "$(dpkg-deb -f "$f" Version)" $(( $(stat -c %s "$f") / 1024 ))
  done
}
echo "fetch-deps: unpacking into $root"
unpack "$root" "${main_pkgs[@]}"
echo "fetch-deps: unpacking into $fallback"
unpack "$fallback" "${fallback_pkgs[@]}"
# Some packages still install into /lib: merge that into /usr/lib, as on a
# merged-/usr system, so that one library folder holds everything.
for t in "$root" "$fallback"; do
  if [ -d "$t/lib" ] && [ ! -L "$t/lib" ]; then
    mkdir -p "$t/usr/lib"
    cp -a "$t/lib/." "$t/usr/lib/"
    rm -rf "${t:?}/lib"
  fi
done

# --------------------------------------------------------------- trim
for t in "$root" "$fallback"; do
  rm -rf "$t"/usr/share/{doc,doc-base,man,info,locale,lintian,bug,bash-completion,gdb}
  # static libraries and libtool archives: shoal links the shared ones
  find "$t" \( -name '*.a' -o -name '*.la' \) -delete
done
# Fortran and OpenSHMEM halves of Open MPI, and the headers for building
# Open MPI plugins: shoal is C, calls MPI through mpi.h, and needs none.
ompi_lib=$root/usr/lib/$arch/openmpi/lib
ompi_inc=$root/usr/lib/$arch/openmpi/include
rm -f "$root"/usr/bin/{mpif77,mpif90,mpifort,oshcc,oshfort,oshrun,shmemcc,shmemfort,shmemrun,oshmem_info,oshCC,oshc++,shmemCC,shmemc++}*
rm -f "$root"/usr/lib/$arch/{libmpi_mpifh,libmpi_usempi,liboshmem}*.so* "$ompi_lib"/{libmpi_mpifh,libmpi_usempi,liboshmem}*.so
rm -rf "$ompi_lib"/*.mod "$root"/usr/lib/$arch/fortran
rm -f "$ompi_lib"/openmpi3/mca_{atomic,memheap,scoll,spml,sshmem}_*.so
rm -rf "$ompi_inc"/{mpif*.h,mpp,openshmem,shmem*,pshmem*} "$ompi_inc"/openmpi/{opal,orte,oshmem}
find "$ompi_inc/openmpi/ompi" -mindepth 1 -maxdepth 2 ! -path '*/ompi/mpi' ! -path '*/ompi/mpi/cxx' -exec rm -rf {} +
rm -f "$root"/usr/lib/$arch/pkgconfig/{ompi-fort,oshmem}.pc
rm -f "$root"/usr/lib/$arch/libmpi_java.so* "$root"/usr/share/java/mpi.jar
if [ $fabrics -eq 0 ]; then
  # shellcheck disable=SC2086  # the names hold globs (libmca_common_ofi.so*)
  for f in "${fabric_plugins[@]}"; do rm -f "$root/usr/lib/$arch/"$f; done
fi
rm -f "$root"/usr/share/openmpi/{mpif77,mpif90,mpifort,shmemcc,shmemfort,oshcc,oshfort,shmemCC,shmemc++,oshCC,oshc++}-wrapper-data.txt
# --------------------------------------------------------------- relocate
# Absolute links (libfoo.so -> /usr/lib/...) would leave the tree: make them
# relative to the link's own folder.
for t in "$root" "$fallback"; do
  find "$t" -type l -lname '/*' -print0 | while IFS= read -r -d '' l; do
    ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$t$(readlink "$l")")" "$l"
  done
done
# The links Debian's update-alternatives makes at install time.
ln -sfn mpirun.openmpi "$root/usr/bin/mpirun"
ln -sfn mpiexec.openmpi "$root/usr/bin/mpiexec"
ln -sfn mpicc.openmpi "$root/usr/bin/mpicc"
mkdir -p "$root/usr/include/$arch"
ln -sfn ../../lib/$arch/openmpi/include "$root/usr/include/$arch/mpi"
ln -sfn openmpi/lib/libmpi.so "$root/usr/lib/$arch/libmpi.so"
for c in "" -c; do ln -sfn ompi$c.pc "$root/usr/lib/$arch/pkgconfig/mpi$c.pc"; done
psm=$(compgen -G "$root/usr/lib/libpsm1/libpsm_infinipath.so.1.*" || true)
[ -z "$psm" ] || ln -sfn "../libpsm1/$(basename "$psm")" "$root/usr/lib/$arch/libpsm_infinipath.so.1"
# links the deletions above left dangling (now that all links are relative)
find "$root" "$fallback" -xtype l -delete
# pkg-config files name /usr: make them relative to their own folder
# (${pcfiledir} is the folder pkg-config found the file in, so linked .pc
# files become copies first). Requires.private names packages (gnutls) whose
# .pc files are not here, and matters only for static linking: dropped.
find "$root" "$fallback" -name '*.pc' -type l -print0 | while IFS= read -r -d '' pc; do
  cp --remove-destination "$(readlink -f "$pc")" "$pc"
done
find "$root" "$fallback" -name '*.pc' -type f -print0 | while IFS= read -r -d '' pc; do
  rel=$(realpath -m --relative-to="$(dirname "$pc")" "${pc%%/usr/*}/usr")
  sed -i -E -e "s#(^[a-z_]+=|-I|-L|[ =])/usr(/|\$| )#\1\${pcfiledir}/$rel\2#g" \
            -e '/^Requires\.private:/d' "$pc"
done
# CMake package files (cJSON's) name /usr too.
find "$root" -path '*/cmake/*' -name '*.cmake' -type f -print0 | while IFS= read -r -d '' cm; do
  rel=$(realpath -m --relative-to="$(dirname "$cm")" "$root/usr")
  sed -i -E "s#\"/usr(/|\")#\"\${CMAKE_CURRENT_LIST_DIR}/$rel\1#g" "$cm"
done

# --------------------------------------------------------------- check
# Every ELF file's libraries, looked up the way env.sh arranges it, must
# resolve inside the trees or to a base library.
libdirs="$root/usr/lib/$arch:$root/usr/lib/$arch/openmpi/lib:$root/usr/lib/$arch/pmix2/lib:$fallback/usr/lib/$arch"
[ $fabrics -eq 0 ] || libdirs+=":$root/usr/lib/$arch/ucx" # its plugins' RUNPATH is /usr/...
bad=0
while IFS= read -r -d '' f; do
  head -c4 "$f" | grep -q $'\x7fELF' || continue
  while read -r name _ path _; do
    [ "$path" != not ] || path="nowhere"
    case "$path" in
      "$deps"/*) ;;
      *) if ! [[ "$name" =~ $base_libs ]]; then
           echo "fetch-deps: $f needs $name, found $path" >&2; bad=1
         fi ;;
    esac
  done < <(LD_LIBRARY_PATH=$libdirs ldd "$f" 2>/dev/null | grep '=>' || true)
  objdump -T "$f" 2>/dev/null | grep -oE 'GLIBC_[0-9.]+' >>"$deps/.glibc" || true
done < <(find "$root" "$fallback" -type f \( -perm -u+x -o -name '*.so*' \) -print0)
[ $bad -eq 0 ] || echo "fetch-deps: some libraries above resolve outside .gpu-deps" >&2
# Debian 12's glibc is 2.36; the GPU machine's must be as new as the newest
# version these files ask for (libevent asks for 2.36's arc4random).
echo "fetch-deps: the files need glibc >= $(sort -uV "$deps/.glibc" | tail -n1 | cut -d_ -f2)"
rm -f "$deps/.glibc"

# .gpu-deps must stay out of git (it travels with `carry`)
grep -qxF '/.gpu-deps/' "$repo/.gitignore" || echo '/.gpu-deps/' >>"$repo/.gitignore"

size() { du -sh --apparent-size "$1" | cut -f1; }
echo "fetch-deps: root $(size "$root"), fallback $(size "$fallback"), total $(size "$deps");" \
     "the .debs are in $debs"
exit $bad
