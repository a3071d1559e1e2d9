"""One request over HTTP/1.1 or HTTP/2 (cleartext, prior knowledge) with the system ``curl``.

The end-to-end tests' own client (:mod:`extauthz.demo.httpclient`) speaks HTTP/1.1 only; the
parity table needs the same request over both versions, byte for byte (header names with ``_``
and ``.``, UTF-8 values, repeated ``cookie`` headers), so it uses ``curl`` (Debian ``curl``,
built with nghttp2). curl's own ``user-agent`` and ``accept`` are suppressed; the path is sent as
given (``--path-as-is``, no globbing).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from extauthz.demo.httpclient import Response

CURL = shutil.which("curl") or "curl"
HTTP_VERSIONS = ("1.1", "2")
#: the status reported for an HTTP/2 stream the server reset (curl exit code 92): how Envoy
#: refuses an HTTP/2 request it rejects outright (e.g. a header name with "_")
STREAM_RESET = 0
_CURL_HTTP2_STREAM_ERROR = 92


def curl_request(
    url: str,
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    version: str = "1.1",
    timeout: float = 10.0,
) -> Response:
    """Send one request on a fresh connection; the response as the client saw it.

    ``version``: ``"1.1"`` or ``"2"`` (h2c with prior knowledge). For ``HEAD`` curl reads no body.
    A reset HTTP/2 stream is a response with status :data:`STREAM_RESET` and no headers.
    """
    if version not in HTTP_VERSIONS:
        raise ValueError(f"HTTP version {version!r}: use one of {HTTP_VERSIONS}")
    with tempfile.TemporaryDirectory(prefix="curl-") as tmp:
        head_file, body_file = Path(tmp) / "head", Path(tmp) / "body"
        argv = [CURL, "-sS", "--path-as-is", "-g", "-m", str(timeout),
                "--http1.1" if version == "1.1" else "--http2-prior-knowledge",
                "-D", str(head_file), "-o", str(body_file),
                "-H", "user-agent:", "-H", "accept:"]
        argv += ["--head"] if method == "HEAD" else ["-X", method]
        for name, value in headers:
            argv += ["-H", f"{name}: {value}"]
        argv.append(url)
        done = subprocess.run(argv, capture_output=True, timeout=timeout + 5, check=False)
        if done.returncode == _CURL_HTTP2_STREAM_ERROR and version == "2":
            return Response(status=STREAM_RESET, headers=(), body=b"")
        if done.returncode != 0:
            raise RuntimeError(f"curl failed ({done.returncode}): {done.stderr.decode()[-500:]}")
        # with --head curl writes the headers to -o as well: a HEAD response has no body
        body = body_file.read_bytes() if body_file.exists() and method != "HEAD" else b""
        return _parse(head_file.read_bytes(), body)


def _parse(head: bytes, body: bytes) -> Response:
    """curl's ``-D`` dump: the last response's status line and headers (1xx ones skipped)."""
    blocks = [b for b in head.replace(b"\r\n", b"\n").split(b"\n\n") if b.strip()]
    lines = blocks[-1].decode("utf-8", "surrogateescape").split("\n")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip().lower(), value.strip()))
    return Response(status=status, headers=tuple(headers), body=body)
