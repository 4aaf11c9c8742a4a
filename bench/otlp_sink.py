"""A local OTLP/HTTP trace sink for the benchmark: accepts ``POST /v1/traces``, reads the body,
answers 200 with an empty ``ExportTraceServiceResponse`` (an empty body is one), and keeps
only counts. ``GET /stats`` answers ``{"posts": N, "bytes": N}``.

The ``full`` scenario's gateway exports its sampled spans here, so the gateway pays for the
whole export path (encoding, the POST, the collector's answer) as it would against a real
collector, while the sink does as little as possible: it never decodes, and the bench measures
it as a helper process of its own (``otlp_cpu_us_per_request``), apart from the gateway.

Run: ``python -m bench.otlp_sink [--host 127.0.0.1] [--port 0]``; it prints
``otlp sink listening on HOST:PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

MAX_BODY_BYTES: Final = 64 * 1024 * 1024
READY_PATTERN: Final = r"otlp sink listening on [0-9.]+:(\d+)"


class Sink(ThreadingHTTPServer):
    daemon_threads = True  # one thread per exporting worker's kept-alive connection

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.lock = threading.Lock()
        self.posts = 0
        self.bytes = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Sink

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        if length > MAX_BODY_BYTES:
            self.send_error(413)
            return
        body = self.rfile.read(length)
        with self.server.lock:
            self.server.posts += 1
            self.server.bytes += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path != "/stats":
            self.send_error(404)
            return
        with self.server.lock:
            data = json.dumps({"posts": self.server.posts, "bytes": self.server.bytes}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per POST would cost more than the sink itself


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = Sink((args.host, args.port))
    host, port = server.server_address[:2]
    print(f"otlp sink listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
