#!/usr/bin/env bash
# What `make bench` needs beyond the .NET SDK and the build toolchain, installed from Debian's packages when
# missing: wrk (the load), start_server (libserver-starter-perl, one of the strategies compared), gnuplot
# (gnuplot-nox; its pngcairo terminal draws the picture without a display) and systemd-socket-activate
# (systemd; the baseline of the first-answer figure).
set -euo pipefail
exec "$(dirname "$0")/../packaging/need.sh" wrk:wrk start_server:libserver-starter-perl gnuplot:gnuplot-nox \
  systemd-socket-activate:systemd
