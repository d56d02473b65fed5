#!/usr/bin/env bash
# make soak: reloads a fast child N times under gsupervisor and then under Server::Starter, and prints each
# supervisor's fd count, RSS and CPU before and after (after a warm-up of 50 reloads), plus idle CPU over a
# quiet period. The child is `sh -c 'exec sleep 3600'`; gsupervisor waits 1 ms for readiness and start_server
# runs with --interval=0, so the figures are the supervisors' own.
# Usage: bench/reload-soak.sh [RELOADS] [IDLE_SECONDS]   (SUPERVISOR=path of gsupervisor; make soak sets it)
set -euo pipefail
cd "$(dirname "$0")/.."
reloads=${1:-300}
idle=${2:-20}
sup=${SUPERVISOR:-out/publish/gsupervisor}
warmup=50
log=$(mktemp)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -f $log' EXIT
[ -x "$sup" ] || { echo "soak: $sup is missing; run make publish (make soak does)" >&2; exit 1; }

wait_for() { # pattern, count
  for _ in $(seq 3000); do [ "$(grep -c "$1" "$log")" -ge "$2" ] && return 0; sleep 0.01; done
  echo "soak: timed out waiting for $2 x '$1'" >&2; tail -5 "$log" >&2; exit 1
}
figures() {
  local fds rss ticks
  fds=$(ls /proc/$pid/fd | wc -l)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  ticks=$(awk '{print $14+$15}' /proc/$pid/stat)
  echo "$fds $rss $ticks"
}
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
mib() { calc %.1f "$1 / 1024"; }

# soak NAME UP-PATTERN DONE-PATTERN OLD-GONE-PATTERN COMMAND...: the first child serves once UP-PATTERN
# matched; reload i is done when DONE-PATTERN has matched i times (the new child serves) and OLD-GONE-PATTERN
# i times (the old one has exited).
soak() {
  local name=$1 up=$2 done=$3 gone=$4
  shift 4
  : > "$log"
  "$@" 2>>"$log" >>"$log" &
  pid=$!
  wait_for "$up" 1
  reload() {
    kill -"$1" $pid
    wait_for "$done" "$2"
  }
  local signal=USR2 i
  [ "$name" = "Server::Starter" ] && signal=HUP
  for i in $(seq 1 $warmup); do reload $signal $i; done
  wait_for "$gone" "$warmup"
  read -r fds0 rss0 ticks0 < <(figures)
  local start end rsshalf
  start=$(date +%s.%N)
  for i in $(seq $((warmup + 1)) $((warmup + reloads))); do
    reload $signal $i
    if [ "$i" -eq $((warmup + reloads / 2)) ]; then read -r _ rsshalf _ < <(figures); fi
  done
  wait_for "$gone" "$((warmup + reloads))"
  end=$(date +%s.%N)
  read -r fds1 rss1 ticks1 < <(figures)
  local zombies children
  zombies=$(ps --ppid $pid -o stat= | grep -c Z || true)
  children=$(ps --ppid $pid -o pid= | wc -l)
  sleep "$idle"
  read -r _ _ ticks2 < <(figures)
  local hz
  hz=$(getconf CLK_TCK)
  echo "$name"
  echo "  reloads:          $reloads (after $warmup to warm up) in $(calc %.1f "$end - $start") s ($(calc %.1f "($end - $start) * 1000 / $reloads") ms each)"
  echo "  fds:              $fds0 before, $fds1 after"
  echo "  RSS:              $(mib $rss0) MiB before, $(mib "$rsshalf") MiB half way, $(mib $rss1) MiB after ($(calc %+.1f "($rss1 - $rss0) / 1024") MiB)"
  echo "  CPU:              $(calc %.2f "($ticks1 - $ticks0) / $hz") s for the reloads"
  echo "  idle CPU:         $(calc %.2f "($ticks2 - $ticks1) / $hz") s over ${idle} s"
  echo "  children left:    $children (zombies: $zombies)"
  kill $pid
  wait $pid 2>/dev/null || true
  pid=
}

soak gsupervisor "is ready" "reload succeeded: generation" "exited with signal SIGTERM" \
  "$sup" --listen 127.0.0.1:0 --ready delay:1ms --stop-timeout 5s --control "$(dirname "$log")/soak-$$.sock" -- /bin/sh -c 'exec sleep 3600'
if command -v start_server >/dev/null; then
  port=$(awk 'BEGIN { srand(); print 20000 + int(rand() * 20000) }')
  soak "Server::Starter" "starting new worker" "new worker is now running" "old worker .* died" \
    start_server --port=127.0.0.1:$port --interval=0 -- /bin/sh -c 'exec sleep 3600'
else
  echo "Server::Starter: not installed (bench/install-deps.sh installs libserver-starter-perl)"
fi
