#!/usr/bin/env bash
# lan.sh: emulate N hosts on a switched LAN inside this one machine, for
# multi-rank Open MPI tests and benchmarks of shoal.
#
# Each host is a network namespace with one link (eth0, a veth) to a bridge
# that lives in its own namespace (the switch). Each link is shaped with tbf
# in both directions (host egress, and the switch port's egress = host
# ingress) and gets a one-way delay from an NFQUEUE rule plus one delayq
# process per host namespace (the kernel here has no netem). Addresses are
# 10.77.0.(i+1)/24, visible only inside the namespaces of one instance, so
# several instances can run at once. The root namespace is not touched beyond
# creating and deleting namespaces: veth pairs are created inside them.
#
# It does not emulate loss, jitter, or per-host CPUs: every host sees the
# machine's cores.
#
# Usage: lan.sh help    (exit codes: 0 ok, 1 error, 2 usage, 77 cannot run here)
set -euo pipefail

readonly EXIT_SKIP=77
readonly SUBNET=10.77.0          # host i is $SUBNET.(i+1)
readonly CIDR=10.77.0.0/24
readonly IFACE=eth0              # the link interface inside every host namespace
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
readonly HERE SELF
readonly STATE_ROOT=${SHOAL_LAN_STATE_ROOT:-/tmp}

# ------------------------------------------------------------------------
# Helpers

die()  { echo "lan.sh: $*" >&2; exit 1; }
skip() { echo "lan.sh: cannot emulate a LAN here: $*" >&2; exit $EXIT_SKIP; }
usage_error() { echo "lan.sh: $*" >&2; echo "run 'lan.sh help' for usage" >&2; exit 2; }

usage() {
  cat <<'EOF'
lan.sh - N fake hosts on a shaped LAN (network namespaces + bridge + tbf + delayq)

  lan.sh check
      Can this machine do it (root, ip netns, veth, tbf, NFQUEUE, a C compiler
      with libnetfilter_queue)? Exit 0, or 77 with the reason; 1 when they
      are all there but delayq.c does not compile (a bug, not a skip).
  lan.sh up N [--rate 1gbit] [--delay-ms 1] [--slots 1] [--id ID] [--owner PID]
              [--shape both|egress|none] [--no-rt]
      Create hosts 0..N-1 (10.77.0.1 ..) and print SHOAL_LAN_ID=.. and
      SHOAL_LAN_STATE=.. (eval-able). --rate 0 or --shape none: no tbf;
      --delay-ms 0: no NFQUEUE/delayq. --owner PID: a watcher tears the
      instance down when PID exits (even by SIGKILL). ID defaults to this PID.
      If setup fails or is interrupted, everything it made is removed.
      --shape both: tbf on both directions of each link (egress: only on
      what the host sends). --no-rt: delayq without SCHED_FIFO.
      --no-check: skip the 'check' probe (0.2 s).
  lan.sh run ID [--] MPIRUN-ARGS...
      mpirun inside host 0, launching orted on the other hosts through an
      rsh agent that enters their namespaces. Adds the hostfile, the agent,
      --bind-to none, --allow-run-as-root, pml ob1, btl tcp,vader,self
      ($SHOAL_LAN_BTL overrides; vader only joins ranks on the same fake
      host), oob/btl restricted to 10.77.0.0/24, and mpi_yield_when_idle
      when hosts x slots exceed the cores. Each host has its own hostname
      (lanID-hI). With --slots > 1 add --map-by node to spread ranks.
      Example: lan.sh run $ID -np 3 ./a.out
  lan.sh exec ID HOST [--] CMD...
      Run CMD inside host HOST's namespace (HOST = index, e.g. 0).
  lan.sh counters ID
      One line per host: host ip tx_bytes rx_bytes tx_packets rx_packets
      (of the host's eth0; "# ..." header first).
  lan.sh down ID
      Remove the instance: processes in its namespaces, delayq, namespaces,
      state dir. Idempotent.
  lan.sh session N [up options] -- CMD...
      up, run CMD with SHOAL_LAN_ID/SHOAL_LAN_STATE exported, down; the
      instance is removed also when CMD fails or the session is interrupted.
  lan.sh list
      Instances present (from their namespaces and state dirs).

Environment: SHOAL_LAN_STATE_ROOT (default /tmp), SHOAL_DELAYQ (a prebuilt
delayq binary; otherwise it is compiled into the state dir), SHOAL_LAN_BTL.
EOF
}

valid_id() { [[ $1 =~ ^[A-Za-z0-9_]{1,24}$ ]]; }
state_dir() { echo "$STATE_ROOT/shoal-lan-$1"; }
ns_host() { echo "shoal-$1-h$2"; }
ns_switch() { echo "shoal-$1-sw"; }
host_ip() { echo "$SUBNET.$(($1 + 1))"; }

# Namespaces that belong to instance $1 (exact prefix "shoal-ID-").
instance_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^shoal-$1-(h[0-9]+|sw)\$" || true
}

# Is pid $1 alive and is its command line one containing $2?
pid_matches() {
  local pid=$1 want=$2 cmd
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ $cmd == *"$want"* ]]
}

# Running, not a zombie? (Our daemons are reparented to init, which here
# reaps late, so 'kill -0' alone would wait for exited processes.)
running() {
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

proc_start() { # start time of pid $1 (clock ticks), empty if gone
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 0
  stat=${stat##*) }
  local f
  read -r -a f <<<"$stat"
  echo "${f[19]}"
}

# Send TERM to pids, wait up to ~2 s, then KILL what is left.
stop_pids() {
  local pids=("$@") p i
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do
    local alive=0
    for p in "${pids[@]}"; do running "$p" && alive=1; done
    ((alive)) || return 0
    sleep 0.05
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

elapsed() { # seconds since $EPOCHREALTIME value $1, 2 decimals
  awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'
}

build_delayq() { # $1: output path
  if [[ -n ${SHOAL_DELAYQ:-} ]]; then
    [[ -x $SHOAL_DELAYQ ]] || die "SHOAL_DELAYQ=$SHOAL_DELAYQ is not an executable"
    cp "$SHOAL_DELAYQ" "$1"
    return
  fi
  "${CC:-cc}" -O2 -Wall -o "$1" "$HERE/delayq.c" -lnetfilter_queue
}

# ------------------------------------------------------------------------
# check

# Prints nothing and returns 0 when the machine can do it; otherwise exits 77
# (or 1, an error, when delayq.c does not compile where it should).
check_env() {
  [[ $(id -u) == 0 ]] || skip "needs root (CAP_NET_ADMIN for ip netns, tc, iptables); running as uid $(id -u)"
  local t
  for t in ip tc iptables unshare setsid "${CC:-cc}"; do
    command -v "$t" >/dev/null || skip "'$t' not found in PATH"
  done
  echo '#include <libnetfilter_queue/libnetfilter_queue.h>' | "${CC:-cc}" -E -x c - >/dev/null 2>&1 ||
    skip "libnetfilter_queue headers missing (apt-get install libnetfilter-queue-dev)"

  local ns=shoal-check$$-h0 tmp err
  tmp=$(mktemp -d /tmp/shoal-lan-check.XXXXXX)
  # Remove the probe namespace whatever happens (also on ^C).
  CHECK_NS=$ns CHECK_TMP=$tmp
  trap 'ip netns del "$CHECK_NS" 2>/dev/null; rm -rf "$CHECK_TMP"' EXIT
  if ! err=$(ip netns add "$ns" 2>&1); then
    rm -rf "$tmp"; trap - EXIT
    skip "'ip netns add' failed: $err"
  fi
  local why= broken=
  if ! err=$(ip -n "$ns" link add "$IFACE" type veth peer name peer0 2>&1); then
    why="cannot create a veth pair inside a namespace: $err"
  elif ! err=$(ip -n "$ns" link set lo up 2>&1 && ip -n "$ns" link set "$IFACE" up 2>&1); then
    why="cannot bring links up in a namespace: $err"
  elif ! err=$(ip -n "$ns" link add br0 type bridge 2>&1); then
    why="cannot create a bridge: $err"
  elif ! err=$(ip netns exec "$ns" tc qdisc add dev "$IFACE" root tbf rate 1gbit burst 128kb latency 10ms 2>&1); then
    why="tc tbf qdisc not available: $err"
  elif ! err=$(ip netns exec "$ns" iptables -w -A OUTPUT -o "$IFACE" -j NFQUEUE --queue-num 0 2>&1); then
    why="iptables NFQUEUE target not available: $err"
  elif ! err=$(build_delayq "$tmp/delayq" 2>&1); then
    # the compiler and the headers are there (checked above): our own helper not
    # building is a failure to report, never a reason to skip
    broken="tests/lan/delayq.c does not build: $err"
  elif ! err=$(ip netns exec "$ns" "$tmp/delayq" --queue 0 --probe 2>&1); then
    why="cannot bind an NFQUEUE queue: $err"
  fi
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$tmp"
  trap - EXIT
  [[ -z $broken ]] || die "$broken"
  [[ -z $why ]] || skip "$why"
}

# ------------------------------------------------------------------------
# down

teardown() { # $1: id; never fails
  local id=$1 st ns pids f p
  st=$(state_dir "$id")
  # The watcher first, so that it does not race us (unless we are it).
  if [[ -f $st/reaper.pid ]]; then
    p=$(<"$st/reaper.pid")
    if [[ $p != "$$" ]] && pid_matches "$p" "_reap $id"; then kill -TERM "$p" 2>/dev/null || true; fi
  fi
  # Marked torn under the lock that the command of 'lan.sh session' registers
  # under: one that registers later never starts, one that registered before
  # is in session-cmd.pid (else a command forked just before its session's
  # shell was killed could register after the check below and outlive us).
  if [[ -d $st ]]; then
    (exec 9>>"$st/lock" && flock 9 && : >"$st/torn") 2>/dev/null || true
  fi
  # Every process still inside our namespaces (ranks, orted, delayq) was
  # started through this tool for this instance: stop them by pid.
  pids=()
  for ns in $(instance_namespaces "$id"); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do [[ $p != "$$" ]] && pids+=("$p"); done
  done
  # The command of 'lan.sh session', if it still runs (same pid, same start).
  if [[ -f $st/session-cmd.pid ]] && read -r p f <"$st/session-cmd.pid" &&
    [[ -n $p && $(proc_start "$p") == "$f" ]] && running "$p"; then
    pids+=("$p")
  fi
  # delayq by its pidfile too, in case it is no longer seen in the namespace.
  for f in "$st"/delayq-h*.pid; do
    [[ -f $f ]] || continue
    p=$(<"$f")
    pid_matches "$p" "$st/" && pids+=("$p")
  done
  stop_pids "${pids[@]}"
  for ns in $(instance_namespaces "$id"); do
    ip netns del "$ns" 2>/dev/null || echo "lan.sh: warning: could not delete namespace $ns" >&2
  done
  rm -rf "$st"
}

cmd_down() {
  (($# == 1)) || usage_error "usage: lan.sh down ID"
  valid_id "$1" || usage_error "bad ID '$1'"
  teardown "$1"
}

# ------------------------------------------------------------------------
# up

# tbf parameters for a rate such as 1gbit/100mbit/500kbit: burst of about
# 1 ms at that rate, at least 64 KiB (a whole GSO packet, so tbf does not have
# to split it) and a queue of about 20 ms (a switch port's buffer).
tbf_args() {
  local rate=$1 bps
  bps=$(rate_bps "$rate") || die "cannot parse rate '$rate' (e.g. 1gbit, 100mbit)"
  local burst=$((bps / 8 / 1000)) limit
  ((burst >= 65536)) || burst=65536
  limit=$((bps / 8 / 50 + burst))
  echo "rate $rate burst $burst limit $limit"
}

rate_bps() { # 1gbit -> 1000000000
  local r=${1,,} n unit
  [[ $r =~ ^([0-9]+)(bit|kbit|mbit|gbit)$ ]] || return 1
  n=${BASH_REMATCH[1]} unit=${BASH_REMATCH[2]}
  case $unit in
    bit) echo "$n" ;; kbit) echo $((n * 1000)) ;; mbit) echo $((n * 1000000)) ;; gbit) echo $((n * 1000000000)) ;;
  esac
}

write_agent() { # $1 id, $2 n, $3 path
  local id=$1 n=$2 out=$3 i
  {
    echo '#!/bin/sh'
    echo "# Open MPI rsh agent for lan.sh instance $id: 'agent [opts] HOST CMD...' runs CMD"
    echo "# (a shell command line, as ssh would) inside HOST's namespace, with its own"
    echo "# UTS namespace whose hostname names the fake host."
    echo 'while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done'
    echo 'host=$1; shift'
    echo 'case "$host" in'
    for ((i = 0; i < n; i++)); do
      echo "  $(host_ip $i)|lan$id-h$i) ns=$(ns_host "$id" $i); name=lan$id-h$i ;;"
    done
    echo '  *) echo "lan.sh agent: unknown host $host (instance '"$id"')" >&2; exit 255 ;;'
    echo 'esac'
    echo 'exec ip netns exec "$ns" unshare --uts /bin/sh -c '"'"'echo "$1" > /proc/sys/kernel/hostname && exec /bin/sh -c "$2"'"'"' agent "$name" "$*"'
  } >"$out"
  chmod +x "$out"
}

# Start delayq in host namespace $2 and wait until it has bound the queue.
start_delayq() { # $1 state dir, $2 ns, $3 host index, $4 delay ms, $5 rt flag
  local st=$1 ns=$2 i=$3 d=$4 rt=$5 pidf=$1/delayq-h$3.pid k
  rm -f "$pidf"
  # setsid -f: its own session, so a terminal's ^C or hangup does not reach it.
  setsid -f ip netns exec "$ns" "$st/delayq" --queue 0 --delay-ms "$d" ${rt:+"$rt"} \
    --pidfile "$pidf" </dev/null >"$st/delayq-h$i.log" 2>&1
  for ((k = 0; k < 100; k++)); do
    [[ -s $pidf ]] && return 0
    sleep 0.02
  done
  die "delayq in $ns did not start: $(cat "$st/delayq-h$i.log" 2>/dev/null)"
}

up_failed() { # runs from the EXIT/INT/TERM/HUP trap of cmd_up
  local rc=$1
  trap - INT TERM HUP EXIT
  echo "lan.sh: up failed or was interrupted (status $rc); removing instance $UP_ID" >&2
  teardown "$UP_ID"
  exit $((rc == 0 ? 1 : rc))
}

UP_ID=
cmd_up() {
  local n='' rate=1gbit delay=1 slots=1 id=$$ owner='' shape=both rt=--rt check=1
  while (($#)); do
    case $1 in
      --rate) rate=${2:?}; shift 2 ;;
      --delay-ms) delay=${2:?}; shift 2 ;;
      --slots) slots=${2:?}; shift 2 ;;
      --id) id=${2:?}; shift 2 ;;
      --owner) owner=${2:?}; shift 2 ;;
      --shape) shape=${2:?}; shift 2 ;;
      --no-rt) rt=; shift ;;
      --no-check) check=0; shift ;;
      -*) usage_error "up: unknown option $1" ;;
      *) [[ -z $n ]] || usage_error "up: N given twice"; n=$1; shift ;;
    esac
  done
  if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1 || n > 250)); then usage_error "up: N must be 1..250"; fi
  if ! [[ $slots =~ ^[0-9]+$ ]] || ((slots < 1)); then usage_error "up: --slots must be >= 1"; fi
  [[ $delay =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage_error "up: --delay-ms must be a number >= 0"
  [[ $shape == both || $shape == egress || $shape == none ]] || usage_error "up: --shape both|egress|none"
  [[ $rate == 0 ]] && shape=none
  [[ $shape == none ]] || rate_bps "$rate" >/dev/null || usage_error "up: bad --rate '$rate' (e.g. 1gbit, 100mbit)"
  [[ -z $owner ]] || kill -0 "$owner" 2>/dev/null || usage_error "up: --owner $owner is not a live process"
  valid_id "$id" || usage_error "up: ID must be 1-24 of [A-Za-z0-9_]"
  ((check)) && check_env

  local st sw i ns ip tbf=()
  st=$(state_dir "$id")
  [[ -z $(instance_namespaces "$id") ]] || die "instance $id already has namespaces (lan.sh down $id)"
  mkdir "$st" 2>/dev/null || die "state dir $st exists: instance $id is up (lan.sh down $id)"
  UP_ID=$id
  # Any failure below (set -e, die) exits through here and removes what was made.
  trap 'up_failed $?' EXIT
  trap 'up_failed 130' INT
  trap 'up_failed 143' TERM HUP
  local t0=$EPOCHREALTIME
  [[ $shape == none ]] || read -r -a tbf <<<"$(tbf_args "$rate")"
  if [[ $delay != 0 && $delay != 0.0 ]]; then build_delayq "$st/delayq"; fi

  # The switch: a bridge in its own namespace.
  sw=$(ns_switch "$id")
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ip netns exec "$sw" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$sw" link add br0 type bridge stp_state 0 forward_delay 0
  ip -n "$sw" link set br0 up

  : >"$st/hostfile"
  : >"$st/hosts"
  for ((i = 0; i < n; i++)); do
    ns=$(ns_host "$id" $i)
    ip=$(host_ip $i)
    ip netns add "$ns"
    # No IPv6: no router solicitations or DAD in the counters.
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$ns" link set lo up
    # Created inside the host namespace, the peer end placed in the switch's.
    ip -n "$ns" link add "$IFACE" type veth peer name "p$i" netns "$sw"
    ip -n "$ns" addr add "$ip/24" dev "$IFACE"
    ip -n "$ns" link set "$IFACE" up
    ip -n "$sw" link set "p$i" master br0
    ip -n "$sw" link set "p$i" up
    if ((${#tbf[@]})); then
      ip netns exec "$ns" tc qdisc add dev "$IFACE" root tbf "${tbf[@]}"
      [[ $shape == egress ]] || ip netns exec "$sw" tc qdisc add dev "p$i" root tbf "${tbf[@]}"
    fi
    if [[ -f $st/delayq ]]; then
      start_delayq "$st" "$ns" $i "$delay" "$rt"
      ip netns exec "$ns" iptables -w -A OUTPUT -o "$IFACE" -j NFQUEUE --queue-num 0
    fi
    echo "$ip slots=$slots" >>"$st/hostfile"
    echo "$i $ip $ns lan$id-h$i" >>"$st/hosts"
  done
  write_agent "$id" "$n" "$st/agent"
  {
    echo "id=$id"
    echo "hosts=$n"
    echo "slots=$slots"
    echo "rate=$rate"
    echo "shape=$shape"
    echo "delay_ms=$delay"
    echo "switch=$sw"
    echo "created=$(date +%s)"
  } >"$st/info"

  if [[ -n $owner ]]; then
    echo "owner=$owner" >>"$st/info"
    setsid -f "$SELF" _reap "$id" "$owner" </dev/null >/dev/null 2>&1
  fi
  trap - EXIT INT TERM HUP
  echo "lan.sh: instance $id up: $n hosts, shaping $([[ $shape == none ]] && echo none || echo "$rate $shape"), delay ${delay} ms, in $(elapsed "$t0") s" >&2
  echo "SHOAL_LAN_ID=$id"
  echo "SHOAL_LAN_STATE=$st"
}

# Watcher started by 'up --owner': tears the instance down when the owner dies.
cmd_reap() {
  local id=$1 owner=$2 st
  st=$(state_dir "$id")
  echo $$ >"$st/reaper.pid"
  trap 'exit 0' TERM
  while running "$owner" && [[ -d $st ]]; do sleep 0.5; done
  [[ -d $st ]] && teardown "$id"
  exit 0
}

# ------------------------------------------------------------------------
# run, exec, counters, list

need_instance() {
  valid_id "$1" || usage_error "bad ID '$1'"
  [[ -f $(state_dir "$1")/hosts ]] || die "no instance '$1' (no $(state_dir "$1")/hosts); see 'lan.sh list'"
}

cmd_run() {
  (($# >= 1)) || usage_error "usage: lan.sh run ID [--] MPIRUN-ARGS..."
  local id=$1 st n ns0 name0 extra=()
  shift
  [[ ${1:-} == -- ]] && shift
  need_instance "$id"
  st=$(state_dir "$id")
  n=$(wc -l <"$st/hosts")
  ns0=$(ns_host "$id" 0)
  name0=lan$id-h0
  local total=$((n * $(awk -F= '$1=="slots"{print $2}' "$st/info")))
  # Ranks outnumbering cores would starve each other while busy-polling.
  ((total > $(nproc))) && extra+=(--mca mpi_yield_when_idle 1)
  [[ -n ${PATH:-} ]] && extra+=(-x PATH)
  [[ -n ${LD_LIBRARY_PATH:-} ]] && extra+=(-x LD_LIBRARY_PATH)
  # mpirun in host 0, in its own UTS namespace named after host 0; exec all
  # the way down so that signals sent to this script reach mpirun.
  exec ip netns exec "$ns0" unshare --uts /bin/sh -c \
    'echo "$1" > /proc/sys/kernel/hostname && shift && exec "$@"' sh "$name0" \
    mpirun --allow-run-as-root \
    --hostfile "$st/hostfile" \
    --mca plm_rsh_agent "$st/agent" \
    --mca plm_rsh_no_tree_spawn 1 \
    --mca oob_tcp_if_include "$CIDR" \
    --mca btl_tcp_if_include "$CIDR" \
    --mca pml ob1 --mca btl "${SHOAL_LAN_BTL:-tcp,vader,self}" \
    --bind-to none \
    "${extra[@]}" "$@"
}

cmd_exec() {
  (($# >= 3)) || usage_error "usage: lan.sh exec ID HOST [--] CMD..."
  local id=$1 h=$2
  shift 2
  [[ ${1:-} == -- ]] && shift
  need_instance "$id"
  if ! [[ $h =~ ^[0-9]+$ ]] || ((h >= $(wc -l <"$(state_dir "$id")/hosts"))); then
    usage_error "exec: no host '$h' in instance $id"
  fi
  exec ip netns exec "$(ns_host "$id" "$h")" "$@"
}

cmd_counters() {
  (($# == 1)) || usage_error "usage: lan.sh counters ID"
  local id=$1 i ip ns
  need_instance "$id"
  echo "# host ip tx_bytes rx_bytes tx_packets rx_packets"
  while read -r i ip ns _; do
    # sysfs as seen from inside the namespace ('ip netns exec' remounts it).
    ip netns exec "$ns" sh -c 'cd /sys/class/net/'"$IFACE"'/statistics &&
      echo "$(cat tx_bytes) $(cat rx_bytes) $(cat tx_packets) $(cat rx_packets)"' |
      sed "s/^/host$i $ip /"
  done <"$(state_dir "$id")/hosts"
}

cmd_list() {
  local ids
  ids=$( (ip netns list 2>/dev/null | awk '{print $1}' | sed -nE 's/^shoal-([A-Za-z0-9_]+)-(h[0-9]+|sw)$/\1/p'
          for d in "$STATE_ROOT"/shoal-lan-*; do [[ -d $d ]] && echo "${d##*/shoal-lan-}"; done) | sort -u)
  local id
  for id in $ids; do
    local st; st=$(state_dir "$id")
    echo "$id namespaces=$(instance_namespaces "$id" | wc -l) state=$([[ -d $st ]] && echo "$st" || echo none)"
  done
}

# ------------------------------------------------------------------------
# session: up, run a command, down, whatever happens

SESSION_ID='' SESSION_CHILD=
session_stop() { # trap of cmd_session: $1 exit status
  trap - INT TERM HUP
  # The child is 'up' (whose own trap then removes what it made) or CMD.
  [[ -n $SESSION_CHILD ]] && stop_pids "$SESSION_CHILD"
  teardown "$SESSION_ID"
  exit "$1"
}

cmd_session() {
  local up_args=() i rc=0
  while (($#)) && [[ $1 != -- ]]; do up_args+=("$1"); shift; done
  (($# >= 2)) || usage_error "usage: lan.sh session N [up options] -- CMD..."
  shift
  SESSION_ID=$$
  for ((i = 0; i < ${#up_args[@]}; i++)); do
    [[ ${up_args[i]} == --id ]] && SESSION_ID=${up_args[i + 1]:-}
  done
  valid_id "$SESSION_ID" || usage_error "session: bad --id"
  # Traps first: a signal during 'up' must also remove the instance. Children
  # run in the background so that a signal is handled at once.
  trap 'session_stop 130' INT
  trap 'session_stop 143' TERM HUP
  # --owner: if this shell is SIGKILLed, the watcher removes the instance.
  "$SELF" up "${up_args[@]}" --id "$SESSION_ID" --owner $$ >/dev/null &
  SESSION_CHILD=$!
  wait "$SESSION_CHILD" || rc=$?
  SESSION_CHILD=
  ((rc == 0)) || exit "$rc"
  SHOAL_LAN_ID=$SESSION_ID
  SHOAL_LAN_STATE=$(state_dir "$SESSION_ID")
  export SHOAL_LAN_ID SHOAL_LAN_STATE
  # The command records itself (pid, start time) before it starts, so that a
  # teardown, the watcher's too, can end it; with no state dir, or once a
  # teardown has begun (teardown's lock and mark), it never starts.
  (
    exec 9>>"$SHOAL_LAN_STATE/lock"
    flock 9
    [[ ! -e $SHOAL_LAN_STATE/torn ]] || exit 143
    # (this subshell's pid read here: inside the $(...) below, BASHPID is the
    # substitution's own child, whose start time can be a tick later)
    me=$BASHPID
    echo "$me $(proc_start "$me")" >"$SHOAL_LAN_STATE/session-cmd.pid"
    exec 9>&-
    exec "$@"
  ) &
  SESSION_CHILD=$!
  wait "$SESSION_CHILD" || rc=$?
  SESSION_CHILD=
  trap - INT TERM HUP
  teardown "$SESSION_ID"
  exit "$rc"
}

# ------------------------------------------------------------------------

main() {
  (($#)) || { usage >&2; exit 2; }
  local cmd=$1
  shift
  case $cmd in
    check) check_env; echo "lan.sh: ok: root, ip netns, veth, bridge, tbf, NFQUEUE and delayq all work here" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    run) cmd_run "$@" ;;
    exec) cmd_exec "$@" ;;
    counters) cmd_counters "$@" ;;
    session) cmd_session "$@" ;;
    list) cmd_list ;;
    _reap) cmd_reap "$@" ;;
    help | -h | --help) usage ;;
    *) usage_error "unknown command '$cmd'" ;;
  esac
}

main "$@"
