"""Reading CheckRequests: headers (map and raw forms), path/query split, host, peer, body."""

from __future__ import annotations

import pytest

from extauthz._proto.envoy.config.core.v3 import base_pb2
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.errors import BadRequestError
from extauthz.request import from_check_request, path_is_normalized, split_host


def request(**http: object) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    h = req.attributes.request.http
    for key, value in http.items():
        if key == "headers":
            h.headers.update(value)  # type: ignore[arg-type]
        else:
            setattr(h, key, value)
    return req


def test_envoy_style_request() -> None:
    req = request(
        method="POST", path="/v1/orders?limit=5&api_key=k&limit=9", host="API.Example.com:8443",
        scheme="https", protocol="HTTP/2",
        headers={":authority": "API.Example.com:8443", ":path": "/v1/orders?limit=5",
                 "x-request-id": "rid-1", "authorization": "Bearer t"},
        body="hello",
    )
    req.attributes.source.address.socket_address.address = "10.1.2.3"
    req.attributes.source.principal = "spiffe://td/ns/a/sa/b"
    req.attributes.source.certificate = "-----BEGIN%20CERTIFICATE-----"
    req.attributes.context_extensions["route"] = "orders"
    view = from_check_request(req)
    assert view.method == "POST"
    assert view.host == "api.example.com"
    assert view.path == "/v1/orders"
    assert view.raw_query == "limit=5&api_key=k&limit=9"
    assert view.query == {"limit": "5", "api_key": "k"}  # first occurrence wins
    assert view.scheme == "https"
    assert view.headers["Authorization"] == "Bearer t"
    assert view.request_id == "rid-1"
    assert view.source_address == "10.1.2.3"
    assert view.source_principal == "spiffe://td/ns/a/sa/b"
    assert view.peer_certificate.startswith("-----BEGIN")
    assert view.context_extensions == {"route": "orders"}
    assert view.body == b"hello"


def test_raw_header_map_form() -> None:
    """encode_raw_headers: true -> headers only in header_map with raw_value bytes."""
    req = request(method="GET", path="/x")
    hm = req.attributes.request.http.header_map
    hm.headers.append(base_pb2.HeaderValue(key="x-api-key", raw_value=b"k1"))
    hm.headers.append(base_pb2.HeaderValue(key="Accept", raw_value=b"a"))
    hm.headers.append(base_pb2.HeaderValue(key="accept", raw_value=b"b"))
    hm.headers.append(base_pb2.HeaderValue(key=":authority", raw_value=b"h.example"))
    view = from_check_request(req)
    assert view.headers["x-api-key"] == "k1"
    assert view.headers["accept"] == "a,b"
    assert view.host == "h.example"


def test_raw_body_preferred() -> None:
    req = request(method="PUT", path="/", raw_body=b"\x00\xffbin")
    assert from_check_request(req).body == b"\x00\xffbin"


def test_too_many_query_params_is_bad_request() -> None:
    path = "/?" + "&".join(f"p{i}=1" for i in range(1000))
    with pytest.raises(BadRequestError):
        from_check_request(request(method="GET", path=path))


@pytest.mark.parametrize(("authority", "host"), [
    ("Example.COM", "example.com"), ("example.com:80", "example.com"),
    ("[::1]:8080", "[::1]"), ("[::1]", "[::1]"), ("", ""),
])
def test_split_host(authority: str, host: str) -> None:
    assert split_host(authority) == host


@pytest.mark.parametrize(("path", "ok"), [
    ("/", True), ("/a/b.c/d..e", True), ("/a%20b", True),
    ("/a/../b", False), ("/a/./b", False), ("/a//b", False), ("/a/..", False),
    ("/a/%2e%2e/b", False), ("/a%2Fb", False), ("/a%5cb", False), ("/a\\b", False),
])
def test_path_normalization_check(path: str, ok: bool) -> None:
    assert path_is_normalized(path) is ok
