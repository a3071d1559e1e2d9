"""Process lifecycle through the real Envoy: SIGTERM drains, readiness, liveness.

Checks are made slow on purpose: route ``slow`` authenticates bearer tokens at an introspection
endpoint the test runs (:class:`SlowAS`) that answers after :data:`SLOW` seconds, so several
checks are in flight inside extauthz when the test sends SIGTERM. Envoy's ext_authz timeout is
raised to 5 s for this module (the deploy file's 1 s would cut the slow checks off).

What SIGTERM must do (``extauthz/server.py``), and what is asserted:

1. gRPC health turns NOT_SERVING (seen on a ``Health/Watch`` stream opened before the signal) and
   ``/readyz`` answers 503 while the process is still running and before the in-flight checks
   finish; ``/healthz`` (liveness) stays 200 throughout.
2. The gRPC server stops taking new checks: a request that arrives through Envoy during the drain
   gets Envoy's own fail-closed answer (``failure_mode_allow: false``, ``status_on_error``: 503,
   empty body), and so does every request after the process has exited.
3. Every check in flight completes with its own decision (200 with the identity, or 401 for an
   inactive token) — none is dropped or turned into an error.
4. The process exits with code 0 within ``--grace-seconds``; a check that takes longer than the
   grace period is cut off at the grace period (Envoy fails it closed, 503), the exit is still 0.

Readiness: a configuration that fails validation at start is fatal (exit code 1, never ready);
with a remote JWKS, ``/readyz`` stays 503 (health NOT_SERVING) until the first successful fetch,
and stays ready through a later IdP outage; ``/healthz`` is 200 regardless.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz.demo.background import BackgroundApp
from extauthz.demo.httpclient import Response, request
from extauthz.demo.idp import DemoIdP
from extauthz.keys import hash_api_key
from tests.e2e.helpers import PROBLEM_JSON, assert_denied, upstream_headers
from tests.support.load import metric, spawn_extauthz, start_stack_with
from tests.support.processes import LOOPBACK, Stack, free_ports, http_status, write_config

API_KEY = "eak_lifecycle-test-key-0123456789abcdef"
SLOW = 1.0  # seconds the introspection endpoint takes
GRACE = 4.0  # --grace-seconds of the drain tests
IN_FLIGHT = 6  # concurrent slow checks when SIGTERM arrives
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class SlowAS:
    """An introspection endpoint that answers after ``delay`` seconds: tokens ``active-<sub>-*``
    are active for ``<sub>``, anything else inactive. Counts the calls it received."""

    delay: float = SLOW
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: BackgroundApp | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"{self.server.base_url}/introspect"

    def count(self) -> int:
        with self._lock:
            return self.calls

    async def _introspect(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", ""))
        with self._lock:
            self.calls += 1
            delay = self.delay
        await asyncio.sleep(delay)
        if token.startswith("active-"):
            sub = token.split("-")[1]
            return web.json_response({"active": True, "sub": sub, "exp": int(time.time()) + 60})
        return web.json_response({"active": False})

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/introspect", self._introspect)
        return app


@pytest.fixture(scope="module")
def slow_as() -> Iterator[SlowAS]:
    fake = SlowAS()
    fake.server = BackgroundApp(fake.make_app, name="slow-introspection").start()
    try:
        yield fake
    finally:
        fake.server.close()


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, slow_as: SlowAS) -> Path:
    secret = e2e_dir / "client.secret"
    secret.write_text("lifecycle-client-secret\n")
    return write_config(
        e2e_dir / "extauthz-lifecycle.yaml",
        {
            "version": 1,
            "authenticators": {
                "keys": {"api_key": {"sources": [{"header": "x-api-key"}]}},
                "slow": {"introspection": {
                    "endpoint": slow_as.endpoint, "client_id": "extauthz",
                    "client_secret_file": str(secret), "timeout_seconds": 3,
                    "cache_max_ttl_seconds": 0, "negative_cache_ttl_seconds": 0,
                }},
            },
            "consumers": [{"name": "ops", "keys": [{"id": "k1", "hash": hash_api_key(API_KEY)}]}],
            "routes": [
                {"name": "stable", "match": {"prefix": "/stable/"}, "authn": ["keys"]},
                {"name": "slow", "match": {"prefix": "/slow/"}, "authn": ["slow"]},
            ],
        },
    )  # fmt: skip


def _start(config: Path, echo: BackgroundApp, log_dir: Path, grace: float) -> Stack:
    return start_stack_with(
        config, echo_port=echo.port, log_dir=log_dir, ext_authz_timeout="5s",
        extra_args=["--grace-seconds", str(grace), "--no-decision-log"],
    )  # fmt: skip


@pytest.fixture
def stack(
    extauthz_config: Path, echo: BackgroundApp, tmp_path: Path, slow_as: SlowAS
) -> Iterator[Stack]:
    """A fresh extauthz + Envoy per test (each test ends extauthz)."""
    slow_as.delay = SLOW
    running = _start(extauthz_config, echo, tmp_path / "logs", GRACE)
    try:
        yield running
    finally:
        running.stop()


def assert_envoy_failed_closed(r: Response) -> None:
    """Envoy's own answer when extauthz cannot be asked (failure_mode_allow: false)."""
    detail = f"{r.status} {r.headers} {r.text[:200]}"
    assert r.status == 503, detail
    assert r.header("content-type") != PROBLEM_JSON, detail
    assert r.body == b"", detail


class HealthWatch:
    """A ``grpc.health.v1.Health/Watch`` stream on extauthz, read in a thread; records
    (status, monotonic time, extauthz still running) per update."""

    def __init__(self, stack: Stack) -> None:
        self._channel = grpc.insecure_channel(f"{LOOPBACK}:{stack.ports.extauthz}")
        stub = health_pb2_grpc.HealthStub(self._channel)
        self._call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        self.updates: list[tuple[int, float, bool]] = []
        self._stack = stack
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for response in self._call:
                with self._changed:
                    running = self._stack.extauthz.running
                    self.updates.append((response.status, time.monotonic(), running))
                    self._changed.notify_all()
        except grpc.RpcError:
            pass

    def wait_for(self, status: int, timeout: float) -> tuple[float, bool]:
        with self._changed:
            ok = self._changed.wait_for(lambda: any(u[0] == status for u in self.updates), timeout)
            assert ok, f"health never became {status}: {self.updates}"
            (found,) = [u for u in self.updates if u[0] == status][:1]
            return found[1], found[2]

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)
        self._channel.close()


def _wait_calls(slow_as: SlowAS, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while slow_as.count() < count:
        assert time.monotonic() < deadline, f"only {slow_as.count()} of {count} checks arrived"
        time.sleep(0.01)


def test_sigterm_drains_in_flight_checks_and_exits_cleanly(stack: Stack, slow_as: SlowAS) -> None:
    watch = HealthWatch(stack)
    try:
        watch.wait_for(SERVING, 5)
        assert http_status(stack.extauthz_url + "/readyz") == 200
        before = slow_as.count()
        subjects = [f"user{i}" for i in range(IN_FLIGHT - 2)]
        tokens = [f"active-{s}-{i}" for i, s in enumerate(subjects)] + ["revoked-1", "revoked-2"]
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures: list[Future[tuple[Response, float]]] = [
                pool.submit(_timed_get, stack, "/slow/x", {"authorization": f"Bearer {t}"})
                for t in tokens
            ]
            _wait_calls(slow_as, before + IN_FLIGHT)  # every check is inside extauthz now
            proc = stack.extauthz
            assert proc.popen is not None
            sent = time.monotonic()
            proc.signal(signal.SIGTERM)

            # 1. NOT_SERVING and /readyz 503 first, while the process runs and checks are in flight
            not_serving_at, running = watch.wait_for(NOT_SERVING, 2)
            assert running, "NOT_SERVING was only seen after the process exited"
            watch.close()  # (an open Watch stream would otherwise hold the drain until the grace)
            readyz, healthz = _admin_statuses(stack)
            assert proc.running, "the drain was over before /readyz could be asked"
            assert readyz == 503
            assert healthz == 200  # liveness does not depend on readiness

            # 2. A new request during the drain is not checked: Envoy fails it closed.
            assert_envoy_failed_closed(stack.get("/stable/x", {"x-api-key": API_KEY}))

            # 3. Every in-flight check completes with its own decision.
            results = [f.result(timeout=10) for f in futures]
        for (response, _), token in zip(results, tokens, strict=True):
            if token.startswith("active-"):
                seen = upstream_headers(response)
                assert seen["x-auth-subject"] == token.split("-")[1]
                assert seen["x-auth-method"] == "introspection"
            else:
                assert_denied(response, 401, "inactive_token")
        assert not_serving_at < min(done for _, done in results)

        # 4. Exit 0 within the grace period.
        code = proc.popen.wait(GRACE + 5)
        exited = time.monotonic() - sent
        print(f"\nSIGTERM -> NOT_SERVING {not_serving_at - sent:.3f}s, exit {exited:.3f}s")
        assert code == 0, proc.log_tail()
        assert exited < GRACE
        assert "stopped" in proc.log_text()
    finally:
        watch.close()
    # After exit: Envoy fails every request closed.
    assert_envoy_failed_closed(stack.get("/stable/x", {"x-api-key": API_KEY}))


def test_a_check_longer_than_the_grace_period_is_cut_off_at_the_grace_period(
    extauthz_config: Path, echo: BackgroundApp, tmp_path: Path, slow_as: SlowAS
) -> None:
    grace = 1.0
    slow_as.delay = 3.0
    stack = _start(extauthz_config, echo, tmp_path / "logs", grace)
    try:
        before = slow_as.count()
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(_timed_get, stack, "/slow/x", {"authorization": "Bearer active-x"})
            _wait_calls(slow_as, before + 1)
            assert stack.extauthz.popen is not None
            sent = time.monotonic()
            stack.extauthz.signal(signal.SIGTERM)
            code = stack.extauthz.popen.wait(grace + 5)
            exited = time.monotonic() - sent
            response, _ = future.result(timeout=10)
        assert code == 0, stack.extauthz.log_tail()
        print(f"\ncheck longer than the grace ({grace}s): exit after {exited:.3f}s")
        assert grace * 0.9 <= exited < grace + 2.0, exited  # the grace, plus closing the rest
        assert_envoy_failed_closed(response)
    finally:
        slow_as.delay = SLOW
        stack.stop()


def test_invalid_configuration_at_start_is_fatal_and_never_ready(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("version: 1\nroutes:\n- name: r\n  authn: [nobody]\n")
    grpc_port, http_port = free_ports(2)
    proc = spawn_extauthz(
        config, grpc_port=grpc_port, http_port=http_port, log_path=tmp_path / "extauthz.log"
    )
    try:
        assert proc.popen is not None
        deadline = time.monotonic() + 15
        while proc.running:
            assert http_status(f"http://{LOOPBACK}:{http_port}/readyz") != 200
            assert time.monotonic() < deadline, "still running with an invalid configuration"
            time.sleep(0.05)
        assert proc.returncode == 1
        assert "refused" in proc.log_text()
        assert "routes[0].authn[0]" in proc.log_text()
    finally:
        proc.stop()


def _timed_get(stack: Stack, path: str, headers: dict[str, str]) -> tuple[Response, float]:
    response = stack.get(path, headers, timeout=10)
    return response, time.monotonic()


def _admin_statuses(stack: Stack) -> tuple[int | None, int | None]:
    return (
        http_status(stack.extauthz_url + "/readyz"),
        http_status(stack.extauthz_url + "/healthz"),
    )


# -- readiness waits for the first JWKS fetch ------------------------------------------------


def _grpc_health(port: int) -> int:
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
        return status


def test_readiness_waits_for_the_first_jwks_fetch_liveness_does_not(
    tmp_path: Path, idp: DemoIdP
) -> None:
    config = write_config(
        tmp_path / "jwt.yaml",
        {
            "version": 1,
            "authenticators": {"idp": {"jwt": {
                "issuer": idp.issuer, "audiences": [idp.audience], "algorithms": ["RS256"],
                "jwks": {"discovery": True}, "refresh_interval_seconds": 1,
                "fetch_timeout_seconds": 0.3, "min_refetch_interval_seconds": 0.5,
            }}},
            "routes": [{"name": "me", "match": {"prefix": "/me/"}, "authn": ["idp"]}],
        },
    )  # fmt: skip
    grpc_port, http_port = free_ports(2)
    base = f"http://{LOOPBACK}:{http_port}"
    idp.down()
    proc = spawn_extauthz(
        config, grpc_port=grpc_port, http_port=http_port, log_path=tmp_path / "extauthz.log"
    )
    try:
        # Up and alive, but not ready while no JWKS fetch has succeeded: wait for two failed
        # fetches (the one at start and one retry), checking readiness all along.
        deadline = time.monotonic() + 15
        while True:
            healthz = http_status(base + "/healthz")
            if healthz == 200:
                text = _metrics(base)
                assert http_status(base + "/readyz") == 503
                assert metric(text, "extauthz_ready") == 0
                assert _grpc_health(grpc_port) == NOT_SERVING
                failed = metric(text, "extauthz_jwks_fetches_total",
                                {"issuer": idp.issuer, "result": "error"})  # fmt: skip
                if failed >= 2:
                    break
            assert proc.running, proc.log_tail()
            assert time.monotonic() < deadline, proc.log_tail()
            time.sleep(0.05)
        # The IdP comes up: ready within a retry interval (plus jitter).
        idp.up()
        start = time.monotonic()
        while http_status(base + "/readyz") != 200:
            assert time.monotonic() - start < 5, proc.log_tail()
            time.sleep(0.05)
        assert _grpc_health(grpc_port) == SERVING
        assert metric(_metrics(base), "extauthz_ready") == 1
        # A later outage does not make the replica unready (max_stale_seconds governs it).
        idp.down()
        fails = metric(_metrics(base), "extauthz_jwks_fetches_total",
                       {"issuer": idp.issuer, "result": "error"})  # fmt: skip
        start = time.monotonic()
        while metric(_metrics(base), "extauthz_jwks_fetches_total",
                     {"issuer": idp.issuer, "result": "error"}) <= fails:  # fmt: skip
            assert time.monotonic() - start < 5, proc.log_tail()
            time.sleep(0.05)
        assert http_status(base + "/readyz") == 200
        assert http_status(base + "/healthz") == 200
    finally:
        idp.up()
        proc.stop()


def _metrics(base: str) -> str:
    return request("GET", base + "/metrics").text
