#!/usr/bin/env python3
# An HTTP app written for Server::Starter or for einhorn, for gsupervisor's drop-in tests. It knows nothing of
# gsupervisor and reads only its own supervisor's variables:
#   app.py server-starter   SERVER_STARTER_PORT=ADDRESS=FD;...  (as start_server sets it; Starlet, Go's server-starter)
#   app.py einhorn          EINHORN_FD_COUNT=N, EINHORN_FD_0=FD  (as einhorn sets them)
# It serves HTTP/1.1 with keep-alive ("pid=P" in the body) on the first socket, and drains on SIGTERM as such apps
# do: stop accepting, answer with "Connection: close" so keep-alive clients move on, and exit once no connection
# is left (after a second at least, ten at most).
import http.server
import os
import signal
import socket
import sys
import threading
import time

mode = sys.argv[1]
if mode == "server-starter":
    first = os.environ["SERVER_STARTER_PORT"].split(";")[0]
    address, fd = first.rsplit("=", 1)
elif mode == "einhorn":
    if int(os.environ["EINHORN_FD_COUNT"]) < 1:
        sys.exit("no socket from einhorn")
    address, fd = "einhorn fd 0", os.environ["EINHORN_FD_0"]
else:
    sys.exit(f"unknown mode {mode}")

draining = threading.Event()
body = f"pid={os.getpid()}\n".encode()
open_connections = 0
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if draining.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def setup(self):
        global open_connections
        with lock:
            open_connections += 1
        super().setup()

    def finish(self):
        global open_connections
        try:
            super().finish()
        finally:
            with lock:
                open_connections -= 1

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=int(fd))
server.daemon_threads = True


def drain():
    server.shutdown()  # no more accepts; the socket itself is the supervisor's and stays open
    started = time.monotonic()
    while time.monotonic() - started < 10:
        with lock:
            left = open_connections
        if left == 0 and time.monotonic() - started >= 1:
            break
        time.sleep(0.05)  # the drain's own pace: check the open connections twenty times a second
    os._exit(0)


signal.signal(signal.SIGTERM, lambda *_: (draining.set(), threading.Thread(target=drain).start()))
print(f"{mode} app pid {os.getpid()} serving on {address} (fd {fd})", flush=True)
server.serve_forever(poll_interval=0.1)
threading.Event().wait()  # serve_forever returned: drain() ends the process
