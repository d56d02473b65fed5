#!/usr/bin/env bash
# Reloads a fast child N times and prints the supervisor's fd count, RSS and CPU before and after,
# plus idle CPU over a quiet period. Usage: bench/reload-soak.sh [RELOADS] [IDLE_SECONDS]   (after make build)
set -euo pipefail
cd "$(dirname "$0")/.."
reloads=${1:-300}
idle=${2:-20}
config=${CONFIG:-Release}
sup=src/GSupervisor.Daemon/bin/$config/net10.0/gsupervisor
log=$(mktemp)
trap 'kill $pid 2>/dev/null || true; rm -f $log' EXIT

"$sup" --listen 127.0.0.1:0 --ready delay:1ms --stop-timeout 5s -- /bin/sh -c 'exec sleep 3600' 2>"$log" &
pid=$!
wait_for() { # pattern, count
  for _ in $(seq 1000); do [ "$(grep -c "$1" "$log")" -ge "$2" ] && return 0; sleep 0.01; done
  echo "timed out waiting for $2 x '$1'" >&2; tail -5 "$log" >&2; exit 1
}
figures() {
  local fds rss ticks
  fds=$(ls /proc/$pid/fd | wc -l)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  ticks=$(awk '{print $14+$15}' /proc/$pid/stat)
  echo "$fds $rss $ticks"
}
wait_for "is ready" 1
# Warm-up: the runtime loads some code lazily on the first reloads (an assembly it maps shows as an fd).
warmup=50
for i in $(seq 2 $((warmup + 1))); do
  kill -USR2 $pid
  wait_for "reload succeeded: generation $i " 1
done
wait_for "exited with signal SIGTERM" "$warmup"
read -r fds0 rss0 ticks0 < <(figures)
start=$(date +%s.%N)
for i in $(seq $((warmup + 2)) $((warmup + reloads + 1))); do
  kill -USR2 $pid
  wait_for "reload succeeded: generation $i " 1
  if [ "$i" -eq $((warmup + reloads / 2 + 1)) ]; then read -r _ rsshalf _ < <(figures); fi
done
wait_for "exited with signal SIGTERM" "$((warmup + reloads))"
end=$(date +%s.%N)
read -r fds1 rss1 ticks1 < <(figures)
zombies=$(ps --ppid $pid -o stat= | grep -c Z || true)
children=$(ps --ppid $pid -o pid= | wc -l)
sleep "$idle"
read -r _ _ ticks2 < <(figures)
hz=$(getconf CLK_TCK)
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
echo "reloads:            $reloads (after $warmup to warm up) in $(calc %.1f "$end - $start") s ($(calc %.1f "($end - $start) * 1000 / $reloads") ms each, child ready delay 1ms)"
echo "supervisor fds:     $fds0 before, $fds1 after"
echo "supervisor RSS:     $((rss0 / 1024)) MiB before, $((rsshalf / 1024)) MiB half way, $((rss1 / 1024)) MiB after"
echo "supervisor CPU:     $(calc %.2f "($ticks1 - $ticks0) / $hz") s for the reloads"
echo "idle CPU:           $(calc %.2f "($ticks2 - $ticks1) / $hz") s over ${idle} s"
echo "children left:      $children (zombies: $zombies)"
