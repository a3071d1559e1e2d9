"""The route index gives the same answer as walking the routes in order, without the walk."""

from __future__ import annotations

import random
import re
from types import MappingProxyType

import pytest

from extauthz.authz.policy import Policy
from extauthz.routing import (
    HostMatcher,
    PathMatcher,
    Route,
    RouteMatch,
    RouteTable,
    compile_template,
    literal_prefix,
)
from extauthz.types import RequestView


def route(name: str, path: PathMatcher, hosts: tuple[str, ...] = (),
          methods: frozenset[str] = frozenset()) -> Route:
    return Route(name=name, hosts=HostMatcher.build(hosts), path=path, methods=methods,
                 public=True, authenticators=(), policy=Policy(), strip_credentials=True)


def view(path: str, host: str = "api.example.com", method: str = "GET") -> RequestView:
    return RequestView(method=method, host=host, path=path,
                       context_extensions=MappingProxyType({}))


def linear(routes: list[Route], v: RequestView) -> str | None:
    """The reference semantics: the first route, in order, that matches."""
    for r in routes:
        if r.match(v) is not None:
            return r.name
    return None


def name_of(found: RouteMatch | None) -> str | None:
    return found.route.name if found is not None else None


@pytest.mark.parametrize(("template", "literal"), [
    ("/v1/users/{id}/orders", "/v1/users/"),
    ("/{x}", "/"),
    ("/a.b/{x}", "/a.b/"),
    ("/static/file.txt", "/static/file.txt"),
])
def test_literal_prefix_of_templates(template: str, literal: str) -> None:
    assert literal_prefix(compile_template(template)) == literal


@pytest.mark.parametrize(("pattern", "literal"), [
    ("^/ab*", "/a"),            # a quantifier makes the character before it optional
    ("^/a\\d", "/a"),           # a class is not a literal
    ("^/a\\.b(x)", "/a.b"),
    ("/unanchored", ""),
    ("^/x|^/y", ""),            # alternatives: no single prefix
])
def test_literal_prefix_is_conservative_for_hand_written_patterns(pattern: str,
                                                                  literal: str) -> None:
    assert literal_prefix(re.compile(pattern)) == literal


def test_literal_prefix_ignores_case_insensitive_patterns() -> None:
    assert literal_prefix(re.compile("^/Abc", re.IGNORECASE)) == ""


def test_configuration_order_wins_across_index_buckets() -> None:
    routes = [
        route("catch-all-first", PathMatcher(prefix="/api/")),
        route("exact-later", PathMatcher(exact="/api/users")),
        route("template", PathMatcher(template=compile_template("/api/users/{id}"))),
        route("anything", PathMatcher()),
    ]
    table = RouteTable(routes, "route")
    assert name_of(table.match(view("/api/users"))) == "catch-all-first"
    assert name_of(table.match(view("/api/users/7"))) == "catch-all-first"
    assert name_of(table.match(view("/other"))) == "anything"
    # hosts and methods are still checked on the candidates
    table2 = RouteTable([
        route("post-only", PathMatcher(exact="/x"), methods=frozenset({"POST"})),
        route("other-host", PathMatcher(exact="/x"), hosts=("b.example.com",)),
        route("fallback", PathMatcher(prefix="/")),
    ], "route")
    assert name_of(table2.match(view("/x"))) == "fallback"
    assert name_of(table2.match(view("/x", method="POST"))) == "post-only"
    assert name_of(table2.match(view("/x", host="b.example.com"))) == "other-host"


def test_no_candidate_no_match() -> None:
    table = RouteTable([route("a", PathMatcher(exact="/a")),
                        route("b", PathMatcher(prefix="/b/"))], "route")
    assert table.match(view("/c")) is None
    assert table.match(view("/b")) is None
    assert list(table.candidates("/zzz")) == []


def test_thousand_routes_look_at_one_candidate() -> None:
    routes = [route(f"r{i}", PathMatcher(prefix=f"/svc/r{i:04d}/")) for i in range(1000)]
    table = RouteTable(routes, "route")
    assert list(table.candidates("/svc/r0999/orders")) == [999]
    assert name_of(table.match(view("/svc/r0999/orders"))) == "r999"


def test_index_agrees_with_the_linear_walk_on_random_tables() -> None:
    rng = random.Random(5)
    segments = ["a", "b", "api", "v1", "users", "x.y"]

    def rand_path(depth: int) -> str:
        return "/" + "/".join(rng.choice(segments) for _ in range(depth))

    for _ in range(200):
        routes: list[Route] = []
        for i in range(rng.randint(1, 12)):
            kind = rng.choice(["exact", "prefix", "template", "any", "prefix-raw"])
            hosts = rng.choice([(), ("api.example.com",), ("*.example.com",), ("b.test",)])
            methods = rng.choice([frozenset(), frozenset({"GET"}), frozenset({"POST"})])
            if kind == "exact":
                pm = PathMatcher(exact=rand_path(rng.randint(1, 3)))
            elif kind == "prefix":
                pm = PathMatcher(prefix=rand_path(rng.randint(0, 2)).rstrip("/") + "/")
            elif kind == "prefix-raw":  # a prefix that is not a whole segment
                pm = PathMatcher(prefix=rand_path(rng.randint(1, 2))[:-1])
            elif kind == "template":
                parts = [rng.choice([*segments, "{p}"]) for _ in range(rng.randint(1, 3))]
                seen = False
                for j, part in enumerate(parts):
                    if part == "{p}":
                        if seen:
                            parts[j] = "a"
                        seen = True
                pm = PathMatcher(template=compile_template("/" + "/".join(parts)))
            else:
                pm = PathMatcher()
            routes.append(route(f"r{i}", pm, hosts, methods))
        table = RouteTable(routes, "route")
        for _ in range(30):
            v = view(rand_path(rng.randint(0, 4)) or "/",
                     host=rng.choice(["api.example.com", "b.test", "c.example.com"]),
                     method=rng.choice(["GET", "POST"]))
            assert name_of(table.match(v)) == linear(routes, v), (v.path, routes)
