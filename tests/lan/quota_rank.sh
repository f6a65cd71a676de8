#!/bin/sh
# quota_rank.sh CGROUP HOST -- CMD...: runs CMD, first moving itself into the cgroup v1 cpu
# group CGROUP (a name under the cpu hierarchy, made by the caller with its quota) when it
# runs on fake host HOST (lan.sh's hostname lanID-hHOST). `ip netns exec` gives each fake
# host's processes a /sys of their own, without the cgroup mounts: the cpu hierarchy is
# mounted again on a temporary directory for the move, and let go at once.
set -eu
group=$1 host=$2
shift 2
[ "${1:-}" = "--" ] && shift
case $(hostname) in
*-h"$host")
  d=$(mktemp -d)
  mount -t cgroup -o cpu cgroup "$d"
  echo $$ > "$d/$group/cgroup.procs" || { umount -l "$d"; rmdir "$d"; exit 1; }
  umount -l "$d"
  rmdir "$d"
  ;;
esac
exec "$@"
