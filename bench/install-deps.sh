#!/usr/bin/env bash
# What `make bench` needs beyond the .NET SDK, installed from Debian's packages when missing: wrk (the
# load), start_server (libserver-starter-perl, one of the strategies compared) and gnuplot (gnuplot-nox;
# its pngcairo terminal draws the picture without a display). Uses sudo when not root.
set -euo pipefail

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v start_server >/dev/null || missing+=(libserver-starter-perl)
command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
echo "bench: installing ${missing[*]} from Debian's packages"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
for tool in wrk start_server gnuplot; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is still missing after the install" >&2; exit 1; }
done
