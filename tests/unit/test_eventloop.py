"""``serve --event-loop``: which loop each choice gives, that serve says which one runs, and that
the eager start of checks (extauthz.eager) keeps every task semantic on uvloop too."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest

from extauthz import eventloop
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from extauthz.cli import build_parser
from tests.support.abuse import check_request, http_check_bytes, start_server
from tests.unit import test_eager

uvloop = pytest.importorskip("uvloop")


def test_each_choice_gives_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    assert eventloop.loop_factory("asyncio") is None
    assert eventloop.loop_factory("uvloop") is uvloop.new_event_loop
    with pytest.raises(ValueError, match="expected one of"):
        eventloop.loop_factory("trio")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: import fails
    with pytest.raises(eventloop.Unavailable, match="needs uvloop"):
        eventloop.loop_factory("uvloop")
    assert eventloop.loop_factory("asyncio") is None


def test_the_option_and_its_environment_variable() -> None:
    parse = build_parser({}).parse_args
    assert parse(["serve", "--config", "c.yaml"]).event_loop == "asyncio"
    assert parse(["serve", "--config", "c.yaml", "--event-loop", "uvloop"]).event_loop == "uvloop"
    env = build_parser({"EXTAUTHZ_EVENT_LOOP": "uvloop"}).parse_args
    assert env(["serve", "--config", "c.yaml"]).event_loop == "uvloop"
    bad = build_parser({"EXTAUTHZ_EVENT_LOOP": "trio"}).parse_args(["serve", "--config", "c"])
    assert bad.env_error and "EXTAUTHZ_EVENT_LOOP" in bad.env_error


def test_serve_refuses_uvloop_when_it_is_not_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from extauthz.cli import main

    monkeypatch.setitem(sys.modules, "uvloop", None)
    config = tmp_path / "c.yaml"
    config.write_text("version: 1\n")
    assert main(["serve", "--config", str(config), "--event-loop", "uvloop"]) == 2
    assert "needs uvloop" in capsys.readouterr().err


@pytest.mark.parametrize(("choice", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_run_runs_on_the_chosen_loop_and_logs_it(choice: str, module: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    with caplog.at_level(logging.INFO, logger="extauthz.eventloop"):
        ran_on = eventloop.run(main(), eventloop.loop_factory(choice))
    assert ran_on.split(".")[0] == module
    assert f"event loop: {module}" in caplog.text


_EAGER_TESTS = [f for name, f in sorted(vars(test_eager).items())
                if name.startswith("test_") and inspect.iscoroutinefunction(f)]


@pytest.mark.parametrize("test", _EAGER_TESTS, ids=lambda f: f.__name__)
def test_the_eager_start_keeps_task_semantics_on_uvloop(
        test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Every async test of tests/unit/test_eager.py, run on uvloop's loop: current_task, the
    stand-in's cancellation forwarding, asyncio.timeout, nothing left as the current task."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test())


def _check_once(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(http_check_bytes())
        return conn.recv(65536)


@pytest.mark.parametrize(("choice", "grpc_server"),
                         [("asyncio", "native"), ("uvloop", "native"), ("uvloop", "grpcio"),
                          ("uvloop", "envoy")])
def test_serve_runs_on_the_chosen_loop_and_says_so(tmp_path: Path, choice: str,
                                                   grpc_server: str) -> None:
    """A real ``extauthz serve`` (gRPC, the HTTP transport, admin) on each loop: its log names
    the loop it runs on (from the running loop's type) and the gRPC server, and both
    transports answer a check."""
    server = start_server(tmp_path, ["--event-loop", choice, "--grpc-server", grpc_server])
    try:
        assert _check_once(server.authz_port).startswith(b"HTTP/1.1 200 ")
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            answer = external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                check_request(), timeout=10)
        assert answer.status.code == 0
    finally:
        server.stop()
    log = (tmp_path / "extauthz.log").read_text()
    assert f"event loop: {choice}" in log
    assert f"({grpc_server}) http=" in log
