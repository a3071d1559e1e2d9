"""The extauthz demo: Envoy + extauthz + an echo upstream + a tiny OIDC IdP, on one laptop.

``python -m extauthz.demo`` starts everything on 127.0.0.1 and prints curl commands to try;
``python -m extauthz.demo --self-check`` sends them itself and exits non-zero on any surprise.

Modules (the end-to-end tests reuse all of them):

* :mod:`~extauthz.demo.echo`       — the upstream that answers with what it received;
* :mod:`~extauthz.demo.idp`        — the OIDC issuer (discovery, JWKS, tokens, injectable faults);
* :mod:`~extauthz.demo.background` — runs those two on a background thread;
* :mod:`~extauthz.demo.procs`      — ports and child processes (start, readiness, stop by PID);
* :mod:`~extauthz.demo.envoy`      — the Envoy binary and config;
* :mod:`~extauthz.demo.httpclient` — a tiny blocking HTTP client;
* :mod:`~extauthz.demo.main`       — the demo itself.

The demo API keys below are public on purpose (policies/extauthz.yaml stores only their hashes).
"""

from __future__ import annotations

#: The demo consumer's key: scopes reports:read, orders:read.
DEMO_API_KEY = "eak_demo_key_for_local_use_only_0001"
#: A key of consumer expired-client (expired 2020-01-01).
EXPIRED_API_KEY = "eak_demo_expired_key_0002"
#: A key of consumer disabled-client (disabled).
DISABLED_API_KEY = "eak_demo_disabled_key_0003"
#: A key of consumer limited-client (no scopes).
LIMITED_API_KEY = "eak_demo_limited_key_0004"

#: The audience the demo IdP's tokens carry and policies/extauthz.yaml accepts.
DEMO_AUDIENCE = "extauthz-demo"
#: The demo IdP's issuer as written in policies/extauthz.yaml (tests substitute their own).
DEMO_ISSUER = "http://127.0.0.1:18081"
