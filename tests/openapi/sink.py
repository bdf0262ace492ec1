"""A delivery destination for tests/openapi/schemathesis.sh.

Listens on 127.0.0.1, port 0, prints `listening on 127.0.0.1:PORT` once ready, and
answers every POST in a fixed cycle: 200, 410, 200, 500. So deliveries end
PROCESSED (2xx), FAILED at once (410) and retried (500), the attempts have
every outcome a reachable destination gives, and no ten failures come in a
row, so the breaker never pauses delivery for the whole run.
"""

import itertools
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CYCLE = itertools.cycle([200, 410, 200, 500])
LOCK = threading.Lock()
MAX_BODY = 1 << 20


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, as webhookd's client expects of a real destination.
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(min(length, MAX_BODY))
        with LOCK:
            status = next(CYCLE)
        body = f"sink answered {status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    host, port = server.server_address
    print(f"listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
