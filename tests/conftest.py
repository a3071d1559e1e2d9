"""Fixtures shared by every test directory (helpers that are not fixtures live in tests/support/).

* ``redis_server``: one memory-only Redis (valkey-server, tests/support/redis_server.py) per test
  module, on 127.0.0.1, stopped after the module's last test. A test that must stop, freeze or
  restart Redis starts its own instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    running = RedisServer(data_dir=tmp_path_factory.mktemp("redis"), persist=False).start()
    try:
        yield running
    finally:
        running.stop()
