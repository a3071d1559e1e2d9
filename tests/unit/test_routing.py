"""Route selection: names from Envoy, hosts, paths, templates, methods."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from extauthz.authz.policy import Policy
from extauthz.routing import HostMatcher, PathMatcher, Route, RouteTable, compile_template
from extauthz.types import RequestView


def route(name: str, **kw: object) -> Route:
    defaults: dict[str, object] = dict(
        hosts=HostMatcher.build([]), path=PathMatcher(), methods=frozenset(), public=True,
        authenticators=(), policy=Policy(), strip_credentials=True,
    )
    defaults.update(kw)
    return Route(name=name, **defaults)  # type: ignore[arg-type]


def view(path: str = "/", host: str = "api.example.com", method: str = "GET",
         ext: dict[str, str] | None = None) -> RequestView:
    return RequestView(method=method, host=host, path=path,
                       context_extensions=MappingProxyType(ext or {}))


def test_template_captures_parameters() -> None:
    rx = compile_template("/v1/users/{user_id}/orders/{order_id}")
    m = rx.match("/v1/users/u-42/orders/7")
    assert m is not None and m.groupdict() == {"user_id": "u-42", "order_id": "7"}
    assert rx.match("/v1/users/u-42/orders") is None
    assert rx.match("/v1/users//orders/7") is None
    assert rx.match("/v1/users/a/b/orders/7") is None


@pytest.mark.parametrize("bad", ["/v1/{a}{b}", "/v1/x{a}", "/v1/{a}/{a}", "/v1/{a", "/v1/a}"])
def test_malformed_templates_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        compile_template(bad)


def test_template_literals_are_escaped() -> None:
    rx = compile_template("/v1.0/{id}")
    assert rx.match("/v1.0/x") and not rx.match("/v1x0/x")


def test_host_wildcard_needs_a_label() -> None:
    m = HostMatcher.build(["api.example.com", "*.svc.example.com"])
    assert m.matches("api.example.com")
    assert m.matches("a.svc.example.com")
    assert not m.matches("svc.example.com")
    assert not m.matches("evil-svc.example.com")
    assert not m.matches("other.example.com")


def test_first_matching_route_wins_in_order() -> None:
    table = RouteTable([
        route("orders", path=PathMatcher(template=compile_template("/v1/users/{user_id}/orders")),
              methods=frozenset({"GET"})),
        route("v1", path=PathMatcher(prefix="/v1/")),
        route("exact", path=PathMatcher(exact="/health")),
    ], "route")
    m = table.match(view("/v1/users/bob/orders"))
    assert m is not None and m.route.name == "orders" and m.params == {"user_id": "bob"}
    m = table.match(view("/v1/users/bob/orders", method="POST"))
    assert m is not None and m.route.name == "v1"
    m = table.match(view("/health"))
    assert m is not None and m.route.name == "exact"
    assert table.match(view("/healthz")) is None


def test_context_extension_names_route() -> None:
    table = RouteTable([route("a", path=PathMatcher(exact="/a")), route("b")], "route")
    m = table.match(view("/a", ext={"route": "b"}))
    assert m is not None and m.route.name == "b"


def test_unknown_route_name_matches_nothing() -> None:
    """Envoy and extauthz disagree: never fall back to path matching (fail closed)."""
    table = RouteTable([route("catch-all")], "route")
    assert table.match(view("/", ext={"route": "typo"})) is None


def test_named_route_still_captures_template_params() -> None:
    table = RouteTable(
        [route("o", path=PathMatcher(template=compile_template("/u/{id}")))], "route")
    m = table.match(view("/u/7", ext={"route": "o"}))
    assert m is not None and m.params == {"id": "7"}


def test_named_route_still_enforces_methods() -> None:
    table = RouteTable([route("docs", methods=frozenset({"GET", "PUT"}))], "route")
    assert table.match(view("/d", method="GET", ext={"route": "docs"})) is not None
    assert table.match(view("/d", method="DELETE", ext={"route": "docs"})) is None
