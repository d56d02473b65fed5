#!/usr/bin/env python3
# A release of an app, for gsupervisor's deploy tests: it knows nothing of gsupervisor beyond the systemd protocol.
# It serves HTTP on the socket at fd 3 (LISTEN_FDS), reports READY=1 to NOTIFY_SOCKET, and answers every request
# with what a deploy should change, one "key=value" a line:
#   release=   the content of release.txt in its working directory (what a relative file of the release holds)
#   cwd=       its working directory, as getcwd() gives it
#   greeting=  the GREETING variable (what an edited environment file changes)
#   args=      its arguments (what `reload -- COMMAND` changes)
#   gen=       GSUPERVISOR_GENERATION
# It stops on SIGTERM once the request in hand is answered.
import http.server
import os
import signal
import socket
import sys

if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
    sys.exit("app.py: no socket at fd 3 (LISTEN_FDS)")
listener = socket.socket(fileno=3)

with open("release.txt") as f:  # relative: the release the working directory is in
    release = f.read().strip()
body = "\n".join([
    f"release={release}",
    f"cwd={os.getcwd()}",
    f"greeting={os.environ.get('GREETING', '')}",
    f"args={' '.join(sys.argv[1:])}",
    f"gen={os.environ.get('GSUPERVISOR_GENERATION', '')}",
]).encode() + b"\n"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.HTTPServer):
    def server_bind(self):
        pass  # the socket is bound and listening already

    def server_activate(self):
        pass


server = Server(("", 0), Handler, bind_and_activate=False)
server.socket = listener
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

notify = os.environ.get("NOTIFY_SOCKET")
if notify:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", "\0" + notify[1:] if notify.startswith("@") else notify)
server.serve_forever()
