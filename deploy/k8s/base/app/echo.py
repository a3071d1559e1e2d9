"""Stand-in application for the Kubernetes manifests: answers every request with what it received.

It listens on loopback only (default ``127.0.0.1:8000``, or ``ECHO_ADDRESS``), so the only way to
reach it is through the Envoy container of the same pod, which asks extauthz first. The JSON it
returns shows what the application would see: the identity headers extauthz injected
(``x-auth-subject``, ``x-auth-consumer``, ...) and the absence of the credential it stripped.

Standard library only, so it runs on a bare ``python:3.11-slim`` image. Replace the ``app``
container with your application; keep it on loopback.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    """Reply with the method, path and headers of the request, as JSON."""

    server_version = "extauthz-demo-echo"

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 20))
        body = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": {name.lower(): value for name, value in self.headers.items()},
            },
            indent=2,
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _echo

    def log_message(self, format: str, *args: object) -> None:
        """Envoy already writes an access log; stay quiet."""


def main() -> int:
    host, _, port = os.environ.get("ECHO_ADDRESS", "127.0.0.1:8000").rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), EchoHandler)
    print(f"echo: listening on {host}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()  # SIGTERM (the default action) ends the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
