"""Fixtures shared by every test directory (helpers that are not fixtures live in tests/support/).

* ``redis_server``: one memory-only Redis (valkey-server, tests/support/redis_server.py) per test
  module, on 127.0.0.1, stopped after the module's last test. A test that must stop, freeze or
  restart Redis starts its own instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    running = RedisServer(data_dir=tmp_path_factory.mktemp("redis"), persist=False).start()
    try:
        yield running
    finally:
        running.stop()


if os.environ.get("EXTAUTHZ_TEST_EVENT_LOOP") == "uvloop":
    # Every async test on uvloop's loop instead of asyncio's (what `extauthz serve` runs on by
    # default): EXTAUTHZ_TEST_EVENT_LOOP=uvloop .venv/bin/python -m pytest tests/unit/...
    # (pytest-asyncio's hook; defined only when asked, since defining it parametrizes every
    # async test)
    import uvloop

    def pytest_asyncio_loop_factories(config: pytest.Config,
                                      item: pytest.Item) -> dict[str, Any]:
        return {"uvloop": uvloop.new_event_loop}
