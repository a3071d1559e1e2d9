"""Every CLI option explains itself; every serve option has an ``EXTAUTHZ_*`` variable."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

from extauthz.cli import build_parser, env_name, iter_parsers, main
from extauthz.demo.procs import LOOPBACK, ManagedProcess, free_ports, http_ok, http_status

MINIMAL = "routes:\n- {name: open, match: {prefix: /}, public: true}\n"


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if a.option_strings and not isinstance(a, (argparse._HelpAction,
                                                         argparse._VersionAction))]


def _serve(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return next(p for p in iter_parsers(parser) if p.prog.endswith(" serve"))


def test_every_option_of_every_subcommand_has_help_and_a_shown_default() -> None:
    parser = build_parser({})
    missing = []
    for each in iter_parsers(parser):
        assert each.formatter_class.__name__ == "_HelpFormatter", each.prog
        text = each.format_help()
        for action in _options(each):
            flag = action.option_strings[-1]
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{each.prog} {flag}: no help")
                continue
            rendered = each._get_formatter()._get_help_string(action) or ""
            if not any(w in rendered for w in ("default", "required")):
                missing.append(f"{each.prog} {flag}: no default shown")
        assert "%(default)" not in text
    assert len(iter_parsers(parser)) >= 10
    assert missing == []


def test_every_serve_option_names_its_environment_variable() -> None:
    serve = _serve(build_parser({}))
    options = _options(serve)
    assert len(options) > 30  # the resource bounds are included
    text = serve.format_help().replace("\n", " ").replace("  ", " ")
    for action in options:
        name = env_name(action.option_strings[-1])
        assert f"[env {name}]" in action.help, action.option_strings
        assert name.replace("_", "") in text.replace("_", "").replace(" ", ""), name


def test_env_name_convention() -> None:
    assert env_name("--http-authz-address") == "EXTAUTHZ_HTTP_AUTHZ_ADDRESS"


def _parse(env: dict[str, str], argv: list[str]) -> argparse.Namespace:
    return build_parser(env).parse_args(["serve", *argv])


def test_env_sets_every_kind_of_serve_option_and_flags_win() -> None:
    env = {"EXTAUTHZ_CONFIG": "/etc/extauthz/config.yaml",
           "EXTAUTHZ_HTTP_ADDRESS": "0.0.0.0:9191",
           "EXTAUTHZ_HTTP_AUTHZ_PATH_PREFIX": "/authz",
           "EXTAUTHZ_GRACE_SECONDS": "2.5",
           "EXTAUTHZ_GRPC_MAX_CONCURRENT_STREAMS": "64",
           "EXTAUTHZ_NO_DECISION_LOG": "Yes",
           "EXTAUTHZ_HTTP_AUTHZ_METADATA": "0",
           "EXTAUTHZ_LOG_QUERY_PARAM": "page, sort"}
    args = _parse(env, [])
    assert args.env_error is None
    assert args.config == "/etc/extauthz/config.yaml"  # --config no longer required
    assert args.http_address == "0.0.0.0:9191"
    assert args.http_authz_path_prefix == "/authz"
    assert args.grace_seconds == 2.5
    assert args.grpc_max_concurrent_streams == 64
    assert args.no_decision_log is True
    assert args.http_authz_metadata is False
    assert args.log_query_param == ["page", "sort"]
    assert args.grpc_address == "127.0.0.1:9001"  # not in the environment: the default
    flags = _parse(env, ["--config", "c.yaml", "--http-address", "127.0.0.1:1",
                         "--grace-seconds", "1", "--log-query-param", "q"])
    assert (flags.config, flags.http_address, flags.grace_seconds) == ("c.yaml", "127.0.0.1:1", 1)
    assert flags.log_query_param == ["q"]  # a flag replaces the environment's list


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "Yes"])
def test_env_boolean_true(raw: str) -> None:
    assert _parse({"EXTAUTHZ_HTTP_AUTHZ_COOKIE_FORWARDED": raw},
                  ["--config", "c"]).http_authz_cookie_forwarded is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "no"])
def test_env_boolean_false(raw: str) -> None:
    assert _parse({"EXTAUTHZ_HTTP_AUTHZ_COOKIE_FORWARDED": raw},
                  ["--config", "c"]).http_authz_cookie_forwarded is False


@pytest.mark.parametrize(("name", "raw", "says"), [
    ("EXTAUTHZ_NO_DECISION_LOG", "maybe", "expected 1/true/yes or 0/false/no"),
    ("EXTAUTHZ_NO_DECISION_LOG", "", "expected 1/true/yes or 0/false/no"),
    ("EXTAUTHZ_GRACE_SECONDS", "ten", "EXTAUTHZ_GRACE_SECONDS='ten'"),
    ("EXTAUTHZ_GRPC_MAX_CONNECTIONS", "1.5", "EXTAUTHZ_GRPC_MAX_CONNECTIONS='1.5'"),
])
def test_bad_env_value_is_a_clear_error_when_serving(
        name: str, raw: str, says: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(MINIMAL)
    monkeypatch.setenv(name, raw)
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert says in err and name in err
    # other commands do not read serve's variables
    assert main(["validate", "--config", str(config)]) == 0


def test_path_prefix_help_explains_the_check_default() -> None:
    serve = _serve(build_parser({}))
    text = " ".join(serve.format_help().split())
    assert "GET /api becomes GET /check/api" in text
    assert "(default: /check)" in text


def test_serve_configured_only_by_environment_answers_healthz(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(MINIMAL)
    grpc_port, http_port, authz_port = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXTAUTHZ_")}
    env.update({"EXTAUTHZ_CONFIG": str(config),
                "EXTAUTHZ_GRPC_ADDRESS": f"{LOOPBACK}:{grpc_port}",
                "EXTAUTHZ_HTTP_ADDRESS": f"{LOOPBACK}:{http_port}",
                "EXTAUTHZ_HTTP_AUTHZ_ADDRESS": f"{LOOPBACK}:{authz_port}",
                "EXTAUTHZ_NO_DECISION_LOG": "true"})
    proc = ManagedProcess("extauthz", [sys.executable, "-m", "extauthz", "serve"],
                          tmp_path / "extauthz.log", env=env).start()
    try:
        proc.wait_ready(http_ok(f"http://{LOOPBACK}:{http_port}/healthz"), 30)
        assert http_status(f"http://{LOOPBACK}:{http_port}/healthz") == 200
        # the HTTP ext_authz listener came from the environment too: the public route allows
        assert http_status(f"http://{LOOPBACK}:{authz_port}/check/anything", timeout=5) == 200
        # ...and a path without the /check prefix is what README says: refused with 400
        assert http_status(f"http://{LOOPBACK}:{authz_port}/anything", timeout=5) == 400
    finally:
        proc.stop()
