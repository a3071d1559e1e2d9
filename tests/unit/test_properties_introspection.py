"""Properties of RFC 7662 introspection responses: any JSON document (and any bytes) the endpoint
returns.

Invariants: a response document is either an outcome (identity or refusal reason) or "the
endpoint gave no usable answer" (``_EndpointError`` -> 503), nothing else; through the real HTTP
client, the authenticator raises only ``AuthenticationError`` or ``DependencyUnavailable``, and
allows only a response with ``"active": true`` and a subject.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extauthz.authn.introspection import IntrospectionAuthenticator, _EndpointError
from extauthz.errors import AuthenticationError, DependencyUnavailable
from extauthz.types import Headers, RequestView
from tests.support.allkinds import AllKinds, IntrospectionStub, Running, write_all_kinds
from tests.support.hypo import budget

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from([10**400, -(10**30), 1e308, -1e308, 0]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
_MEMBERS = ["active", "sub", "client_id", "scope", "exp", "nbf", "iat", "aud", "iss",
            "username", "token_type"]
documents = st.dictionaries(st.sampled_from(_MEMBERS), json_values, max_size=7)


@pytest.fixture(scope="module")
def stub() -> Iterator[IntrospectionStub]:
    with IntrospectionStub() as running_stub:
        yield running_stub


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory, stub: IntrospectionStub) -> AllKinds:
    return write_all_kinds(tmp_path_factory.mktemp("prop-introspection"),
                           introspection_endpoint=stub.endpoint)


@pytest.fixture(scope="module")
def running(kinds: AllKinds) -> Iterator[Running]:
    with Running(kinds) as started:
        yield started


def _introspection(running: Running) -> IntrospectionAuthenticator:
    authenticator = running.snapshot.authenticators["opaque"]
    assert isinstance(authenticator, IntrospectionAuthenticator)
    return authenticator


@budget(200)
@given(st.one_of(documents, documents.map(lambda d: {"active": True, "sub": "u", **d})))
def test_any_document_is_an_outcome_or_an_endpoint_error(running: Running,
                                                         doc: dict[str, Any]) -> None:
    try:
        result = _introspection(running)._evaluate(doc)
    except _EndpointError:
        return
    if result.identity is not None:
        assert doc.get("active") is True
        assert result.identity.subject


_bodies = st.one_of(
    documents.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
    st.sampled_from([b'{"active": true, "sub": "u", "exp": NaN}', b'{"active": true, "exp": 1e999,'
                     b' "sub": "u"}', b"[" * 3000, b'{"active": "true"}', b"\xff\xfe{}",
                     b'{"active": true, "sub": "u", "exp": ' + b"9" * 5000 + b"}"]),
)


@budget(60)
@given(_bodies, st.sampled_from([200, 200, 200, 500, 404]))
def test_any_endpoint_response_is_a_clean_decision(
    running: Running, stub: IntrospectionStub, body: bytes, status: int
) -> None:
    stub.status, stub.body = status, body
    view = RequestView(method="GET", host="h", path="/",
                       headers=Headers({"authorization": "Bearer opaque-token-123"}))
    try:
        identity = running.run(_introspection(running).authenticate(view))
    except (AuthenticationError, DependencyUnavailable):
        return
    assert identity is not None and status == 200
    doc = json.loads(body)
    assert doc["active"] is True
