#!/usr/bin/env bash
# Installs from Debian's packages whatever of the given tools is missing. Each argument is WHAT:PACKAGE,
# WHAT being a command on PATH or an absolute path to a file. Uses sudo when not root; says what it installs.
# Usage: packaging/need.sh gcc:gcc /usr/include/stdio.h:libc6-dev wrk:wrk
set -euo pipefail

present() { if [[ $1 == /* ]]; then [ -e "$1" ]; else command -v "$1" >/dev/null; fi; }

missing=()
for pair in "$@"; do
  present "${pair%%:*}" || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need: missing Debian packages ${missing[*]}; install them as root" >&2; exit 1; }
  sudo=(sudo)
fi
echo "installing from Debian's packages: ${missing[*]}"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
for pair in "$@"; do
  present "${pair%%:*}" || { echo "need: ${pair%%:*} is still missing after installing ${pair#*:}" >&2; exit 1; }
done
