"""A minimal ``envoy.service.ratelimit.v3.RateLimitService`` for tests, run as its own process.

``python -m tests.support.fake_rls PORT RECORD_FILE OVER_LIMIT_FLAG`` listens on 127.0.0.1:PORT;
every ``ShouldRateLimit`` request is appended to RECORD_FILE as one JSON line
(``{"domain": ..., "descriptors": [[[key, value], ...], ...]}``); it answers OVER_LIMIT while the
file OVER_LIMIT_FLAG exists, else OK. A separate process because a test process that hosts a gRPC
server and then forks children (Envoy, extauthz) can make them abort (gRPC's poller, EBADF).
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc


class Service:
    """Records requests; OVER_LIMIT while the flag file exists."""

    def __init__(self, record: Path, flag: Path) -> None:
        self.record = record
        self.flag = flag
        self.lock = threading.Lock()

    def ShouldRateLimit(self, request: Any, context: Any) -> Any:  # the gRPC method name
        line = {"domain": request.domain,
                "descriptors": [[[e.key, e.value] for e in d.entries]
                                for d in request.descriptors]}
        with self.lock, self.record.open("a") as out:
            out.write(json.dumps(line) + "\n")
        code = (rls_pb2.RateLimitResponse.OVER_LIMIT if self.flag.exists()
                else rls_pb2.RateLimitResponse.OK)
        return rls_pb2.RateLimitResponse(overall_code=code)


def main() -> None:
    port, record, flag = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(  # type: ignore[no-untyped-call]
        Service(record, flag), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
