#!/usr/bin/env bash
# Boots a copy of the test root (make-root.sh) with systemd as PID 1 inside systemd-nspawn; runs in the
# foreground until the container shuts down (SIGTERM to this process halts it). Never boot systemd outside
# a container: its boot-time cleanup would wipe this machine's /tmp.
#
# nspawn runs in a mount namespace of its own with a tmpfs on /run/systemd, where it keeps its propagation
# directory and finds the inaccessible nodes it masks /proc files with: this host's /run is a disk directory
# (no systemd here), which nspawn refuses to clean. --keep-unit and --register=no: there is no system bus.
# Usage: tests/systemd/boot.sh ROOT [NSPAWN-OPTIONS...]      (as root)
set -euo pipefail
root=$1
shift
mkdir -p /run/systemd
exec unshare --mount --propagation private -- /bin/sh -c '
  set -e
  mount -t tmpfs -o mode=0755 tmpfs /run/systemd
  mkdir -p /run/systemd/nspawn /run/systemd/inaccessible/dir
  : > /run/systemd/inaccessible/reg
  chmod 0000 /run/systemd/inaccessible/reg /run/systemd/inaccessible/dir
  exec systemd-nspawn --quiet --boot --register=no --keep-unit --private-network --console=passive -D "$@"
' boot.sh "$root" "$@"
