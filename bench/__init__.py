"""The extauthz benchmark: ``scripts/bench [--quick|--smoke] [--out DIR]``.

One run on one machine measures Envoy alone (``direct_response``) and Envoy + extauthz for each
scenario, side by side, so every ratio in the report comes from the same run on the same load.
Also the gRPC server directly (h2load with gRPC framing) and a scaling sweep. See
``docs/performance.md`` for what is measured, how, and the results.

Modules:

``tools``      locate (or install) wrk, h2load, matplotlib
``fixtures``   keys, tokens, certificates, signed requests and the extauthz configuration
``envoyconf``  the benchmark's Envoy configuration (one listener, one route per scenario)
``loadgen``    wrk (Lua scripts) and h2load runners and their parsers
``procstat``   CPU time and RSS of a process from ``/proc``
``grpcframe``  pre-serialized CheckRequests with the 5-byte gRPC message prefix
``runner``     the orchestration: processes, scenarios, sweep
``report``     Markdown table, JSON, PNG plot
``micro``      in-process per-stage cost of one check (no network, no gRPC)
``servers``    experimental server models (grpc.aio, grpc.aio + uvloop, sync grpc + threads)
``profile``    py-spy / cProfile of a running extauthz under load
"""
