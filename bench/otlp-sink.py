#!/usr/bin/env python3
"""An OTLP/HTTP endpoint that takes span exports and drops them: for measuring what tracing costs the
engine without a collector (`baton bench --otlp-endpoint http://127.0.0.1:4318`). Prints, on exit, how
many export requests and bytes it took.

    python3 bench/otlp-sink.py [PORT]     (default 4318)
"""
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

requests = 0
received = 0


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global requests, received
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        requests += 1
        received += length
        json = "json" in self.headers.get("Content-Type", "")
        body = b"{}" if json else b""
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if json else "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 4318
    server = ThreadingHTTPServer(("127.0.0.1", port), Sink)

    def stop(*_):
        print(f"otlp-sink: {requests} export requests, {received} bytes", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"otlp-sink: listening on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
