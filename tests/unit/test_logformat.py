"""Application logs as JSON lines: the formatter, the redaction, and a real ``serve`` process
whose stderr is JSON lines while the decision log stays on stdout."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from extauthz.demo.httpclient import request
from extauthz.demo.procs import LOOPBACK, free_ports, http_ok
from extauthz.keys import hash_api_key
from extauthz.logformat import JsonFormatter, make_formatter, redact

JWT = ("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9."
       "MEUCIQDx3y0zL9Pq3pZ0s1hG2bR0kqvN5Z2i8k9sW7eXcO4T6gIgYz")


@pytest.mark.parametrize(("raw", "secret"), [
    (f"token was {JWT}", JWT),
    ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
    ("got basic dXNlcjpwYXNz from client", "dXNlcjpwYXNz"),
    ("key eak_0123456789abcdefghijklmnop refused", "eak_0123456789abcdefghijklmnop"),
    ("password=hunter2 user=bob", "hunter2"),
    ('client_secret: "s3cr3t value"', "s3cr3t value"),
    ("x-api-key=k-123;", "k-123"),
    ("GET /v1/orders?access=abc123&page=2 failed", "abc123"),
    ("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----", "MIGHAgEAMBMG"),
])
def test_redact_blanks_credentials_and_query_values(raw: str, secret: str) -> None:
    out = redact(raw)
    assert secret not in out, out


def test_redact_keeps_ordinary_text_and_query_keys() -> None:
    assert redact("route orders reloaded (3 routes)") == "route orders reloaded (3 routes)"
    assert redact("GET /v1/orders?access=abc123&page=2") == "GET /v1/orders?access=&page="


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"bad token {JWT}")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("extauthz.test", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_json_formatter_one_line_with_fields_and_redacted_traceback() -> None:
    line = JsonFormatter().format(_record("multi\nline %s", "Bearer xyz", exc=True))
    assert "\n" not in line
    event = json.loads(line)
    assert event["level"] == "WARNING" and event["logger"] == "extauthz.test"
    assert event["message"] == "multi\nline Bearer [redacted]"
    assert "ValueError" in event["exception"] and JWT not in event["exception"]
    assert isinstance(event["time"], float)


def test_text_format_is_redacted_too_and_unknown_format_refused() -> None:
    text = make_formatter("text").format(_record("with %s", "Bearer xyz"))
    assert "xyz" not in text and "WARNING extauthz.test with Bearer [redacted]" in text
    with pytest.raises(ValueError):
        make_formatter("xml")


def test_handler_writes_json_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter("json"))
    logger = logging.getLogger("extauthz.test.jsonlines")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("first")
        logger.error("second %d", 2)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert [json.loads(x)["message"] for x in lines] == ["first", "second 2"]


@pytest.mark.parametrize(("flags", "env", "level"), [
    (["--log-format", "json", "--log-level", "info"], {}, "INFO"),
    ([], {"EXTAUTHZ_LOG_FORMAT": "json", "EXTAUTHZ_LOG_LEVEL": "warning"}, "WARNING"),
])
def test_serve_logs_json_on_stderr_and_decisions_on_stdout(
    tmp_path: Path, flags: list[str], env: dict[str, str], level: str
) -> None:
    key = "eak_logformat-test-key-0123456789a"
    config = tmp_path / "c.yaml"
    config.write_text(f"""
authenticators:
  keys: {{api_key: {{sources: [{{header: x-api-key}}]}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(key)}"}}]
routes:
- {{name: r, match: {{prefix: /}}, authn: [keys], authz: {{shadow: true}}}}
""")
    authz, admin = free_ports(2)
    stdout, stderr = tmp_path / "out", tmp_path / "err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "extauthz", *flags, "serve", "--config", str(config),
             "--grpc-address", "off",
             "--http-address", f"{LOOPBACK}:{admin}",
             "--http-authz-address", f"{LOOPBACK}:{authz}"],
            stdout=out, stderr=err, env={**os.environ, **env})
        try:
            deadline = time.monotonic() + 20
            while not http_ok(f"http://{LOOPBACK}:{admin}/readyz")():
                assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
                time.sleep(0.1)
            r = request("GET", f"http://{LOOPBACK}:{authz}/check/x?sig=abc",
                        {"x-api-key": "eak_wrong-key-000000000000000000"})
            assert r.status == 401
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
    events = [json.loads(line) for line in stderr.read_text().splitlines()]
    assert events and all(set(e) >= {"time", "level", "logger", "message"} for e in events)
    messages = [e["message"] for e in events]
    assert any("SHADOW mode" in m for m in messages)  # a WARNING at start
    if level == "INFO":
        assert "ready" in messages and "stopped" in messages
    else:
        assert {e["level"] for e in events} == {"WARNING"}
    decisions = [json.loads(line) for line in stdout.read_text().splitlines()]
    assert [d["reason"] for d in decisions] == ["invalid_api_key"]
    assert decisions[0]["path"] == "/x"  # no part of the query string (issue 12)
    assert "eak_wrong" not in stderr.read_text() + stdout.read_text()
