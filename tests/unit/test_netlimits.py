"""The resource bounds' plumbing: descriptor budget, flags, grpc options, sweeper, logging."""

from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter

from extauthz.cli import build_parser, main
from extauthz.http_authz import HttpLimits
from extauthz.logsetup import NonBlockingHandler
from extauthz.netlimits import (
    FD_RESERVE,
    AdminLimits,
    DeadlineSweeper,
    GrpcLimits,
    check_fd_budget,
    raise_nofile_limit,
)

REPO = Path(__file__).resolve().parents[2]


def test_fd_budget_refuses_caps_that_do_not_fit_the_open_file_limit() -> None:
    check_fd_budget({"http_authz": 256, "grpc": 32, "admin": 64}, 1024)
    with pytest.raises(ValueError, match=r"RLIMIT_NOFILE 479") as info:
        check_fd_budget({"http_authz": 256, "grpc": 32, "admin": 64}, 352 + FD_RESERVE - 1)
    assert "http_authz 256" in str(info.value)


def test_defaults_fit_the_common_1024_descriptor_limit() -> None:
    caps = {"http_authz": HttpLimits().max_connections, "grpc": GrpcLimits().max_connections,
            "admin": AdminLimits().max_connections}
    check_fd_budget(caps, 1024)


def test_nofile_soft_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_nofile_limit() == (hard, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_every_bound_has_a_serve_flag_and_zero_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(["serve", "--config", "x", "--grpc-max-concurrent-streams",
                                      "10", "--http-authz-head-timeout", "2.5"])
    assert args.grpc_max_concurrent_streams == 10 and args.http_authz_head_timeout == 2.5
    assert args.admin_max_connections is None  # default: the dataclass's
    assert main(["serve", "--config", "x", "--http-authz-max-connections", "0"]) == 2
    assert "--http-authz-max-connections must be positive" in capsys.readouterr().err


def test_grpc_options_advertise_the_stream_and_connection_bounds() -> None:
    options = dict(GrpcLimits(max_concurrent_streams=7, max_connections=3).channel_options())
    assert options["grpc.max_concurrent_streams"] == 7
    assert options["grpc.max_allowed_incoming_connections"] == 3
    assert options["grpc.max_receive_message_length"] == 4 * 1024 * 1024  # what settings.limits
    # are validated against


class _Conn:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False

    def expire(self, now: float) -> str | None:
        self.expired = True
        return "idle_timeout"


def test_sweeper_closes_only_connections_past_their_deadline() -> None:
    closed = Counter("c", "c", ["port", "reason"], registry=CollectorRegistry())
    old, fresh = _Conn(10.0), _Conn(30.0)
    sweeper = DeadlineSweeper(lambda: [old, fresh], 1.0, closed, "http_authz")
    assert sweeper.sweep(20.0) == 1
    assert old.expired and not fresh.expired
    assert closed.labels("http_authz", "idle_timeout")._value.get() == 1


def test_shipped_envoy_closes_idle_connections_before_extauthz_does() -> None:
    config = yaml.safe_load((REPO / "deploy/envoy/envoy-http-authz.yaml").read_text())
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "extauthz"]
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    envoy_idle = float(options["common_http_protocol_options"]["idle_timeout"].rstrip("s"))
    assert envoy_idle < HttpLimits().idle_timeout


def test_log_handler_drops_and_counts_instead_of_blocking() -> None:
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(write_end, True)
        handler = NonBlockingHandler(write_end, max_queue=10)
        counter = Counter("d", "d", registry=CollectorRegistry())
        handler.attach_counter(counter)
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "y" * 4096, None, None)
        for _ in range(200):  # 800 KiB into a 64 KiB pipe nobody reads: never waits
            handler.emit(record)
        time.sleep(0.2)  # the writer has filled the pipe and is stuck in write()
        for _ in range(100):
            handler.emit(record)
        assert handler.dropped > 0
        assert counter._value.get() == handler.dropped
        assert not handler.flush_pending(timeout=0.1)  # the writer is stuck; we are not
    finally:
        os.close(read_end)  # the stuck writer gets EPIPE and gives up


def test_serve_refuses_to_start_when_the_caps_do_not_fit_the_descriptor_limit(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        ["prlimit", "--nofile=200:200", "--", sys.executable, "-m", "extauthz", "serve",
         "--config", str(tmp_path / "unused.yaml"), "--grpc-address", "127.0.0.1:0",
         "--http-address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "exceed the open-file limit (RLIMIT_NOFILE 200)" in result.stderr
