"""Rate limits and quotas per credential (docs/ratelimit.md).

::

    compile.py      rate_limiting + consumers[].plan/limits + routes[].limits -> RateLimiter
    limiter.py      RateLimiter.apply: an allowed Decision -> it (+ RateLimit fields), 429 or 503
    keys.py         who is counted: consumer, subject, api_key, client_address, route, ..., CEL
    gcra.py         the algorithm (GCRA) and its bound; the maths both stores share
    memory.py       one replica's counts (bounded LRU table)
    redis_store.py  every replica's counts: one Lua script per limit, Redis or Redis Cluster
    headers.py      RateLimit-Policy / RateLimit (draft-ietf-httpapi-ratelimit-headers-10)
    metrics.py      extauthz_ratelimit_checks_total{limit,result}
"""
