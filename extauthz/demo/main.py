"""``python -m extauthz.demo [--self-check]``: the whole stack on 127.0.0.1.

============================  ===========================================================
demo IdP (in this process)    http://127.0.0.1:18081  (discovery, /jwks.json, /demo/token)
echo upstream (in process)    http://127.0.0.1:18080
extauthz serve (child)        gRPC 127.0.0.1:9001, HTTP 127.0.0.1:9090 (/metrics, /readyz)
Envoy (child)                 listener http://127.0.0.1:10000, admin http://127.0.0.1:19901
============================  ===========================================================

Configuration: ``policies/extauthz.yaml`` and ``deploy/envoy/envoy.yaml``. Children log to
``.demo/*.log``. Everything is started in dependency order (the IdP before extauthz, which fetches
its keys at start; extauthz before Envoy) and stopped in reverse, by PID.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from extauthz.demo import DEMO_API_KEY, DEMO_ISSUER
from extauthz.demo.background import BackgroundApp
from extauthz.demo.echo import make_echo_app
from extauthz.demo.envoy import ENVOY_CONFIG, REPO_ROOT, find_envoy, start_envoy
from extauthz.demo.httpclient import Response, request
from extauthz.demo.idp import DemoIdP
from extauthz.demo.procs import (
    LOOPBACK,
    ManagedProcess,
    PortInUse,
    ProcessError,
    require_free_ports,
    start_extauthz,
)

POLICY = REPO_ROOT / "policies" / "extauthz.yaml"
WRONG_KEY = "eak_this_key_does_not_exist"


@dataclass(frozen=True, slots=True)
class DemoPorts:
    """The fixed demo ports (they are written in the two configuration files)."""

    idp: int = 18081
    echo: int = 18080
    grpc: int = 9001
    http: int = 9090
    listener: int = 10000
    admin: int = 19901

    def named(self) -> dict[str, int]:
        return {
            "demo IdP": self.idp,
            "echo upstream": self.echo,
            "extauthz gRPC": self.grpc,
            "extauthz HTTP": self.http,
            "Envoy listener": self.listener,
            "Envoy admin": self.admin,
        }


@dataclass(frozen=True, slots=True)
class Check:
    """One request the demo suggests (and the self-check sends), with its expected status."""

    title: str
    method: str
    url: str
    expected: int
    headers: tuple[tuple[str, str], ...] = ()
    reason: str | None = None  # expected problem+json reason, if any
    challenge: str | None = None  # expected prefix of a WWW-Authenticate value

    def curl(self, token: str | None = None) -> str:
        parts = ["curl", "-i"]
        if self.method != "GET":
            parts += ["-X", self.method]
        shown: list[str] = []
        for name, value in self.headers:
            if token and token in value:
                shown += ["-H", f'"{name}: {value.replace(token, "$TOKEN")}"']
            else:
                shown += ["-H", shlex.quote(f"{name}: {value}")]
        return " ".join([*parts, *shown, self.url])

    def verify(self, response: Response) -> list[str]:
        """What differs from the expectation (empty list: as expected)."""
        problems: list[str] = []
        if response.status != self.expected:
            problems.append(f"status {response.status}, expected {self.expected}")
        if self.reason is not None and response.reason != self.reason:
            problems.append(f"reason {response.reason!r}, expected {self.reason!r}")
        if self.challenge is not None:
            values = response.header_values("www-authenticate")
            if not any(v.startswith(self.challenge) for v in values):
                problems.append(f"WWW-Authenticate {values!r}, expected {self.challenge}...")
        return problems


@dataclass
class Demo:
    """The running stack; :meth:`start` and :meth:`stop` are idempotent."""

    config: Path = POLICY
    envoy_config: Path = ENVOY_CONFIG
    log_dir: Path = field(default_factory=lambda: Path(".demo"))
    ports: DemoPorts = field(default_factory=DemoPorts)
    startup_timeout: float = 20.0
    idp: DemoIdP | None = None
    echo: BackgroundApp | None = None
    extauthz: ManagedProcess | None = None
    envoy: ManagedProcess | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.listener}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.http}/metrics"

    def start(self, say: bool = True) -> None:
        """Start IdP, echo, extauthz, Envoy; on any failure stop what started and re-raise."""
        require_free_ports(self.ports.named())
        find_envoy()  # fail before starting anything if there is no Envoy
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._step(say, f"demo IdP      {DEMO_ISSUER}")
            self.idp = DemoIdP(LOOPBACK, self.ports.idp).start()
            self._step(say, f"echo upstream http://{LOOPBACK}:{self.ports.echo}")
            self.echo = BackgroundApp(make_echo_app, LOOPBACK, self.ports.echo, name="echo")
            self.echo.start()
            self._step(
                say,
                f"extauthz      grpc {LOOPBACK}:{self.ports.grpc}, "
                f"http {LOOPBACK}:{self.ports.http}  ({self.config})",
            )
            self.extauthz = start_extauthz(
                self.config, grpc_port=self.ports.grpc, http_port=self.ports.http,
                log_path=self.log_dir / "extauthz.log", timeout=self.startup_timeout,
            )  # fmt: skip
            self._step(
                say,
                f"envoy         {self.base_url} (admin {self.ports.admin})  ({self.envoy_config})",
            )
            self.envoy = start_envoy(
                self.envoy_config, admin_port=self.ports.admin,
                log_path=self.log_dir / "envoy.log", timeout=self.startup_timeout,
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _step(say: bool, text: str) -> None:
        if say:
            print(f"  starting {text}", flush=True)

    def stop(self) -> None:
        """Stop everything this demo started, in reverse order, by PID."""
        for proc in (self.envoy, self.extauthz):
            if proc is not None:
                proc.stop(timeout=5)
        for app in (self.echo, self.idp):
            if app is not None:
                app.close()
        self.envoy = self.extauthz = None
        self.echo = self.idp = None

    def dead_children(self) -> list[ManagedProcess]:
        return [p for p in (self.extauthz, self.envoy) if p is not None and not p.running]

    # -- what to try -----------------------------------------------------------------------

    def demo_token(self) -> str:
        if self.idp is None:
            raise RuntimeError("the demo is not started")
        return self.idp.mint(
            "alice",
            scopes=["orders:read", "profile"],
            expires_in=3600,
            extra={"email": "alice@example.com"},
        )

    def checks(self, token: str) -> list[Check]:
        u = self.base_url
        key = (("x-api-key", DEMO_API_KEY),)
        bearer = (("authorization", f"Bearer {token}"),)
        return [
            Check("public route, no credential", "GET", f"{u}/public/hello", 200),
            Check("ext_authz disabled in Envoy", "GET", f"{u}/static/logo.png", 200),
            Check("API key route without a key -> 401 + challenge", "GET", f"{u}/reports/q1",
                  401, reason="missing_credential", challenge="ApiKey"),
            Check("API key route with the demo key", "GET", f"{u}/reports/q1", 200, key),
            Check("wrong API key -> 401", "GET", f"{u}/reports/q1", 401,
                  (("x-api-key", WRONG_KEY),), reason="invalid_api_key"),
            Check("JWT route without a token -> 401 Bearer challenge", "GET",
                  f"{u}/profile/me", 401, reason="missing_credential",
                  challenge='Bearer realm="extauthz"'),
            Check("JWT route with the demo token", "GET", f"{u}/profile/me", 200, bearer),
            Check("path template, JWT with scope orders:read", "GET",
                  f"{u}/v1/users/alice/orders", 200, bearer),
            Check("path template, demo API key", "GET", f"{u}/v1/users/alice/orders", 200, key),
            Check("wrong scope -> 403", "GET", f"{u}/admin/stats", 403, key,
                  reason="insufficient_scope"),
            Check("no extauthz route for this path -> 403", "GET", f"{u}/unknown", 403,
                  reason="no_route"),
            Check("extauthz Prometheus metrics", "GET", self.metrics_url, 200),
        ]  # fmt: skip

    def instructions(self, token: str) -> str:
        lines = [
            "",
            "extauthz demo is running. Try (responses from the echo upstream show what it saw):",
            "",
            f"  export TOKEN='{token}'",
            f"  # (or a fresh one: export TOKEN=$(curl -s '{DEMO_ISSUER}/demo/token"
            "?sub=bob&scope=orders:read'))",
            "",
        ]
        for check in self.checks(token):
            lines.append(f"  # {check.title}  (expect {check.expected})")
            lines.append(f"  {check.curl(token)}")
        lines += [
            "",
            "  # what extauthz counted (decisions by route, method, outcome, reason)",
            f"  curl -s {self.metrics_url} | grep '^extauthz_'",
            "",
            f"  Demo API key: {DEMO_API_KEY}   (consumer demo-client; see policies/extauthz.yaml)",
            f"  Logs: {self.log_dir}/extauthz.log, {self.log_dir}/envoy.log;"
            f" Envoy admin http://{LOOPBACK}:{self.ports.admin}/",
            "",
            "Press Ctrl-C to stop.",
        ]
        return "\n".join(lines)

    def self_check(self, out: Callable[[str], None] | None = None) -> bool:
        """Send every suggested request; print expected vs actual; True when all match."""
        write = out or print
        ok = True
        for check in self.checks(self.demo_token()):
            try:
                response = request(check.method, check.url, check.headers, timeout=5)
                problems = check.verify(response)
                got = str(response.status)
            except OSError as exc:
                problems, got = [f"request failed: {exc}"], "---"
            ok = ok and not problems
            mark = "ok  " if not problems else "FAIL"
            path = check.url.split("//", 1)[1].split("/", 1)[1]
            write(
                f"  {mark} expected {check.expected} got {got}  {check.method} /{path}"
                f"  - {check.title}"
            )
            for problem in problems:
                write(f"         {problem}")
        return ok


class _Stop(Exception):
    """Raised by the SIGTERM handler to unwind into the cleanup code."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extauthz.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="send the demo requests, print expected vs actual, exit 0/1",
    )
    parser.add_argument("--config", type=Path, default=POLICY, help="extauthz configuration")
    parser.add_argument("--envoy-config", type=Path, default=ENVOY_CONFIG)
    parser.add_argument("--log-dir", type=Path, default=Path(".demo"))
    parser.add_argument("--startup-timeout", type=float, default=20.0)
    args = parser.parse_args(argv)

    demo = Demo(args.config, args.envoy_config, args.log_dir, startup_timeout=args.startup_timeout)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        print("extauthz demo: starting", flush=True)
        try:
            demo.start()
        except PortInUse as exc:
            print(f"extauthz demo: {exc}", file=sys.stderr)
            return 2
        except (ProcessError, FileNotFoundError, OSError) as exc:
            print(f"extauthz demo: startup failed: {exc}", file=sys.stderr)
            return 1
        if args.self_check:
            print("extauthz demo: self-check", flush=True)
            passed = demo.self_check()
            print(f"extauthz demo: self-check {'passed' if passed else 'FAILED'}", flush=True)
            if not passed:
                for proc in (demo.extauthz, demo.envoy):
                    if proc is not None:
                        print(proc.log_tail(20), file=sys.stderr)
            return 0 if passed else 1
        print(demo.instructions(demo.demo_token()), flush=True)
        while not (dead := demo.dead_children()):
            time.sleep(0.5)
        for proc in dead:
            print(
                f"extauthz demo: {proc.name} exited (code {proc.returncode})\n" + proc.log_tail(20),
                file=sys.stderr,
            )
        return 1
    except (KeyboardInterrupt, _Stop):
        print("\nextauthz demo: stopping", flush=True)
        return 0
    finally:
        demo.stop()
        signal.signal(signal.SIGTERM, previous)
