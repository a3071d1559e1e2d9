"""``extauthz check``: decide one request described in a YAML/JSON file, offline.

The request file is turned into a real CheckRequest, so the decision goes through exactly the
code path Envoy's calls take (:func:`extauthz.edge.decide`: the check edge of the gRPC
transport, rendering the Decision itself). Fields::

    method: GET                     # default GET
    path: /v1/orders?limit=5        # default /; may include the query string
    host: api.example.com           # default localhost
    scheme: https                   # default http
    headers: {authorization: "Bearer ..."}
    body: "..."                     # optional
    client_cert: "-----BEGIN CERTIFICATE-----..."   # optional PEM, or URL-encoded PEM as Envoy
                                                    # sends it (source.certificate, XFCC Cert)
    source_address: 10.0.0.7        # optional
    context_extensions: {route: orders}

``--explain`` adds a trace (:mod:`extauthz.explain`): the route and why, each authentication
method's result, each policy rule's verdict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import yaml

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.decision import Decision

#: the fields of a request description (``extauthz test`` files use the same ones, plus ``jwt``)
REQUEST_FIELDS = frozenset({"method", "path", "host", "scheme", "headers", "body", "client_cert",
                            "source_address", "context_extensions"})


def load_request_file(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a request description; raises ValueError with a clear message."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError("the request file must be a mapping")
    check_request_data(data)
    return data


def check_request_data(data: dict[str, Any], extra: frozenset[str] = frozenset()) -> None:
    """Raise ValueError for unknown fields or mis-typed mappings."""
    unknown = sorted(set(data) - REQUEST_FIELDS - extra)
    if unknown:
        raise ValueError(f"unknown request field(s): {', '.join(unknown)}")
    for key in ("headers", "context_extensions"):
        if key in data and not isinstance(data[key], dict):
            raise ValueError(f"{key} must be a mapping")


def build_check_request(data: dict[str, Any]) -> Any:
    """Build the CheckRequest Envoy would send for the described request."""
    request = external_auth_pb2.CheckRequest()
    attrs = request.attributes
    http = attrs.request.http
    method = str(data.get("method", "GET")).upper()
    path = str(data.get("path", "/"))
    host = str(data.get("host", "localhost"))
    scheme = str(data.get("scheme", "http"))
    http.method, http.path, http.host, http.scheme = method, path, host, scheme
    http.protocol = "HTTP/1.1"
    headers = {str(k).lower(): str(v) for k, v in (data.get("headers") or {}).items()}
    headers.update({":method": method, ":path": path, ":authority": host, ":scheme": scheme})
    http.headers.update(headers)
    if "body" in data:
        http.body = str(data["body"])
        http.size = len(http.body.encode())
    if "client_cert" in data:
        attrs.source.certificate = peer_certificate_field(str(data["client_cert"]))
    attrs.source.address.socket_address.address = str(data.get("source_address", "127.0.0.1"))
    attrs.context_extensions.update(
        {str(k): str(v) for k, v in (data.get("context_extensions") or {}).items()}
    )
    return request


def peer_certificate_field(cert: str) -> str:
    """``source.certificate`` as Envoy fills it (URL-encoded PEM) from ``cert``: a PEM, or a PEM
    already URL-encoded (copied from an Envoy log or an XFCC ``Cert``), which is kept as is."""
    mark = "-----BEGIN CERTIFICATE-----"
    if mark not in cert and mark in unquote(cert):
        return cert.strip()
    return quote(cert, safe="")


def decision_to_json(decision: Decision) -> dict[str, Any]:
    """The decision as a JSON-able dict (no credential values: only header names are removed)."""
    identity = decision.identity
    out: dict[str, Any] = {
        "allowed": decision.allowed,
        "http_status": decision.http_status,
        "grpc_code": decision.grpc_code.name,
        "reason": decision.reason.value,
        "route": decision.route,
        "outcome": decision.outcome.value,
        "headers_added": dict(decision.upstream_headers),
        "headers_removed": list(decision.remove_headers),
        "query_removed": list(decision.remove_query),
        "response_headers": [list(h) for h in decision.response_headers],
        "identity": None,
    }
    if decision.rule:
        out["rule"] = decision.rule
    if not decision.allowed:
        out["body"] = json.loads(decision.body) if decision.body else None
    if identity is not None:
        out["identity"] = {
            "method": identity.method.value,
            "subject": identity.subject,
            "authenticator": identity.authenticator,
            "consumer": identity.consumer,
            "scopes": sorted(identity.scopes),
        }
    return out
