"""API keys from a streamed keys file (``api_key.keys_file``) through a real Envoy, on both
transports: client -> Envoy -> extauthz -> echo upstream.

A key of the file is allowed and identifies its consumer; a wrong key is refused: extauthz answers
UNAUTHENTICATED (gRPC) / 401 (HTTP ext_authz) and Envoy sends the client a 401 with the
problem+json body and the ApiKey challenge. Adding a line to the file (hot reload) lets its key
in without a restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extauthz.demo.background import BackgroundApp
from extauthz.keys import hash_api_key
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.processes import Stack
from tests.support.transports import TRANSPORTS, start_transport_stack

PATH = "/reports/q1"
CHALLENGE = 'ApiKey realm="extauthz", header="x-api-key"'
KEYS = [f"eak_streamed-e2e-key-{i:04d}-0123456789" for i in range(1000)]
LATE = "eak_streamed-e2e-key-added-later-0123456789"


def key_line(consumer: str, key_id: str, key: str) -> str:
    return json.dumps({"consumer": consumer, "id": key_id, "hash": hash_api_key(key),
                       "scopes": ["reports:read"]}) + "\n"


@pytest.fixture(scope="module", params=TRANSPORTS)
def stack(request: pytest.FixtureRequest, e2e_dir: Path, echo: BackgroundApp) -> Iterator[Stack]:
    base = e2e_dir / f"keysfile-{request.param}"
    base.mkdir()
    (base / "keys.jsonl").write_text(
        "".join(key_line(f"tenant-{i % 10}", f"k{i}", key) for i, key in enumerate(KEYS)))
    config = base / "extauthz.yaml"
    config.write_text("""
authenticators:
  keys: {api_key: {keys_file: keys.jsonl}}
routes:
- name: reports
  match: {prefix: /reports/}
  authn: [keys]
""")
    started = start_transport_stack(request.param, config, upstream_port=echo.port,
                                    log_dir=base / "logs")
    try:
        yield started
    finally:
        started.stop()


def test_a_key_from_the_file_is_allowed(stack: Stack) -> None:
    seen = upstream_headers(stack.get(PATH, {"x-api-key": KEYS[537]}))
    assert seen["x-auth-consumer"] == "tenant-7"
    assert seen["x-auth-method"] == "api_key"
    assert "x-api-key" not in seen


def test_a_wrong_key_is_401_through_envoy(stack: Stack) -> None:
    r = stack.get(PATH, {"x-api-key": "eak_not-in-the-file-0123456789"})
    assert_denied(r, 401, "invalid_api_key",
                  challenge_contains=(CHALLENGE, 'error="invalid_token"'))


def test_a_line_added_to_the_file_is_picked_up(stack: Stack) -> None:
    assert stack.get(PATH, {"x-api-key": LATE}).status == 401
    with (stack.config.parent / "keys.jsonl").open("a") as keys:
        keys.write(key_line("tenant-late", "late", LATE))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = stack.get(PATH, {"x-api-key": LATE})
        if response.status == 200:
            break
        time.sleep(0.2)
    assert upstream_headers(response)["x-auth-consumer"] == "tenant-late"
    assert upstream_headers(stack.get(PATH, {"x-api-key": KEYS[0]}))["x-auth-consumer"] == \
        "tenant-0"
