"""The command line: validate, check, keys generate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from extauthz.cli import main
from extauthz.config.loader import load_config
from extauthz.keys import hash_api_key
from tests.support.configs import api_key_config

KEY = "eak_cli-test-key-abcdefghijklmnop"
CONFIG = api_key_config(KEY)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def test_validate_ok(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(config)]) == 0
    assert "ok (1 routes" in capsys.readouterr().out


def test_validate_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n- {name: a}\n- {name: b, public: true, authn: [x]}\n")
    assert main(["validate", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert "routes[0]: authn: required" in err
    assert "routes[1]: a public route takes no authn" in err


def write_request(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "request.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_check_allow_prints_decision(config: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    req = write_request(tmp_path, {"method": "GET", "path": "/api/x?y=1",
                                   "headers": {"x-api-key": KEY, "x-auth-subject": "evil"}})
    assert main(["check", "--config", str(config), "--request", str(req)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["allowed"] is True and out["http_status"] == 200
    assert out["headers_added"]["x-auth-subject"] == "alice"
    assert "x-api-key" in out["headers_removed"]
    assert out["identity"]["consumer"] == "alice"
    assert KEY not in json.dumps(out)


def test_check_deny(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    req = write_request(tmp_path, {"path": "/api/x", "headers": {"x-api-key": "eak_wrong"}})
    assert main(["check", "--config", str(config), "--request", str(req)]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["allowed"] is False and out["http_status"] == 401
    assert out["reason"] == "invalid_api_key" and out["body"]["status"] == 401


def test_check_rejects_unknown_request_fields(config: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    req = write_request(tmp_path, {"pth": "/api/x"})
    assert main(["check", "--config", str(config), "--request", str(req)]) == 2
    assert "unknown request field(s): pth" in capsys.readouterr().err


def test_keys_generate_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--consumer", "bob"]) == 0
    captured = capsys.readouterr()
    key = re.search(r"(eak_[A-Za-z0-9_-]+)", captured.err)
    assert key is not None
    snippet = yaml.safe_load(captured.out)
    assert snippet[0]["keys"][0]["hash"] == hash_api_key(key.group(1))
    # the printed entry is a valid consumers list
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"consumers": snippet, "routes": []}))
    assert load_config(cfg).main.consumers[0].name == "bob"


def test_keys_generate_needs_consumer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate"]) == 2


def test_validate_prints_the_identity_header_regex_for_disabled_routes(
        capsys: pytest.CaptureFixture[str]) -> None:
    policies = Path(__file__).resolve().parents[2] / "policies" / "extauthz.yaml"
    assert main(["validate", "--config", str(policies), "--strip-regex"]) == 0
    regex = capsys.readouterr().out.strip().splitlines()[-1]
    for name in ("x-auth-subject", "x_auth_subject", "x-auth.email", "x-envoy-auth-partial-body"):
        assert re.fullmatch(regex, name), (regex, name)
    assert not re.fullmatch(regex, "x-authority")
