#!/usr/bin/env bash
# Makes the Debian 12 root that the packaged-unit tests boot with systemd-nspawn (boot.sh): minbase plus
# systemd, dbus and curl, from Debian's mirror (about 300 MB, a minute or two). Made once; `make clean` removes it.
# Usage: tests/systemd/make-root.sh DIR      (as root)
set -euo pipefail
dir=$1
rm -rf "$dir.partial"
mkdir -p "$dir.partial"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl bookworm "$dir.partial/root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
  > "$dir.partial/debootstrap.log" 2>&1 || { tail -20 "$dir.partial/debootstrap.log" >&2; exit 1; }
# A machine id of its own, and no getty on a console nobody reads.
echo "gsupervisor-test" > "$dir.partial/root/etc/hostname"
rm -f "$dir.partial/root/etc/systemd/system/getty.target.wants/"* "$dir.partial/root/etc/machine-id"
rm -rf "$dir"
mv "$dir.partial" "$dir"
touch "$dir/.complete"
