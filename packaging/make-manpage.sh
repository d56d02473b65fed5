#!/usr/bin/env bash
# Writes gsupervisor(1) from the binary's own --help, so the man page never disagrees with the program.
# Usage: packaging/make-manpage.sh PATH-TO-GSUPERVISOR > gsupervisor.1
set -euo pipefail
bin=$1
version=$("$bin" --version | awk '{print $2}')
escape() { sed -e 's/\\/\\\\/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\&'/"; }
cat <<HEAD
.TH GSUPERVISOR 1 "" "gsupervisor $version" "User Commands"
.SH NAME
gsupervisor \- zero-downtime restarts for network services
.SH SYNOPSIS
.B gsupervisor
[\fB\-\-listen\fR [\fINAME\fR=]\fIADDRESS\fR]... [\fIOPTIONS\fR] \fB\-\-\fR \fICOMMAND\fR [\fIARGS\fR...]
.br
.B gsupervisor status
[\fB\-\-json\fR] [\fB\-\-control\fR \fIPATH\fR]
.br
.B gsupervisor reload
[\fB\-\-wait\fR] [\fB\-\-timeout\fR \fIDURATION\fR] [\fB\-\-control\fR \fIPATH\fR]
.br
.B gsupervisor promote
[\fB\-\-control\fR \fIPATH\fR]
.br
.B gsupervisor rollback
[\fB\-\-control\fR \fIPATH\fR]
.br
.B gsupervisor upgrade
[\fB\-\-wait\fR] [\fB\-\-timeout\fR \fIDURATION\fR] [\fB\-\-all\fR | \fB\-\-control\fR \fIPATH\fR]
.br
.B gsupervisor stop
[\fB\-\-all\fR | \fB\-\-control\fR \fIPATH\fR]
.SH DESCRIPTION
gsupervisor binds the listening sockets, runs COMMAND as a child with them at fds 3.. (the systemd
LISTEN_FDS protocol, and over a handoff socket with SCM_RIGHTS), and on SIGUSR2, SIGHUP or
\fBgsupervisor reload\fR starts a new child on the same sockets, waits until it reports ready, then
stops the old one, so no connection is refused or reset. With \fB\-\-probation\fR \fID\fR the old one
serves beside the new one for D first, and serves on alone if the new one exits or reports failure
(WATCHDOG=trigger) in that time. \fBgsupervisor upgrade\fR makes the running
daemon re-execute its binary in place (same pid, children untouched, the new binary checked first);
installing the package does that for every running daemon.
.SH OPTIONS
.nf
HEAD
"$bin" --help | escape
cat <<'TAIL'
.fi
.SH CONTROL VERBS
.nf
TAIL
for verb in status reload promote rollback upgrade stop; do "$bin" "$verb" --help 2>&1 | escape; done
cat <<'TAIL'
.fi
.SH FILES
.TP
.I /usr/lib/systemd/system/gsupervisor@.service
template unit; configure an instance in /etc/gsupervisor/NAME.conf
.TP
.I /usr/share/doc/gsupervisor/examples/
example units: binding itself, socket-activated, Type=notify-reload
.SH SEE ALSO
.BR systemd.socket (5),
.BR sd_notify (3),
.BR sd_listen_fds (3)
TAIL
