"""Fixtures for the end-to-end tests: real Envoy 1.40 -> extauthz -> echo upstream.

Scopes (a module gets one Envoy + extauthz pair; nothing listens on a fixed port):

``echo``             session   the echo upstream (:class:`~extauthz.demo.background.BackgroundApp`)
``idp``              module    a :class:`~extauthz.demo.idp.DemoIdP` of its own (tests may rotate
                               keys or break it without affecting other modules)
``e2e_dir``          module    a temporary directory for configs and logs
``extauthz_config``  module    ``policies/`` rendered for this module's IdP; a test module
                               overrides this fixture to run another configuration
``stack``            module    the running :class:`~tests.support.processes.Stack`
                               (``stack.get(path, headers)`` goes through Envoy)
``stack_transport``  module    how that stack serves gRPC: ``grpc`` (grpc.aio) by default; a
                               module with ``STACK_TRANSPORTS = GRPC_TRANSPORTS`` runs every test
                               that uses ``stack`` once per gRPC server, ``grpc-envoy`` included
                               (the supervised Envoy front, docs/grpc-front.md)

When a test that uses a :class:`Stack` fixture fails, the tails of its extauthz and Envoy logs
are attached to the report ("stack: extauthz/envoy logs" section).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from extauthz.demo.background import BackgroundApp
from extauthz.demo.echo import start_echo
from extauthz.demo.idp import DemoIdP
from tests.support.processes import Stack, render_policies, start_stack


@pytest.fixture(scope="session")
def echo() -> Iterator[BackgroundApp]:
    app = start_echo()
    yield app
    app.close()


@pytest.fixture(scope="module")
def idp(stack_transport: str) -> Iterator[DemoIdP]:
    # one per transport too: a test that rotates keys must not change the next stack's IdP
    with DemoIdP() as provider:
        yield provider


@pytest.fixture(scope="module")
def e2e_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, idp: DemoIdP) -> Path:
    return render_policies(e2e_dir / "policies", issuer=idp.issuer)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    transports = getattr(metafunc.module, "STACK_TRANSPORTS", None)
    if transports and "stack_transport" in metafunc.fixturenames:
        metafunc.parametrize("stack_transport", transports, scope="module")


@pytest.fixture(scope="module")
def stack_transport() -> str:
    """``grpc`` unless the module sets ``STACK_TRANSPORTS`` (then parametrized over them)."""
    return "grpc"


@pytest.fixture(scope="module")
def stack(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path,
          stack_transport: str) -> Iterator[Stack]:
    running = start_stack(extauthz_config, echo_port=echo.port,
                          log_dir=e2e_dir / f"logs-{stack_transport}", transport=stack_transport)
    try:
        yield running
    finally:
        running.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, Stack):
                report.sections.append((f"{name}: extauthz/envoy logs", value.log_tails()))
    return report
