"""Properties of configuration loading: random YAML text, random documents, and the all-kinds
configuration with one node replaced by a random value, through the loader and the compiler.

Invariant: ``load_config`` / ``load_snapshot`` either succeed or raise ``ConfigError`` whose
issues each name where (a path such as ``routes[2].authn[0].jwt.issuer``, or the file) — never
another exception, and never an issue without a location.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from extauthz.config.loader import load_config
from extauthz.errors import ConfigError
from extauthz.metrics import Metrics
from extauthz.snapshot import load_snapshot
from tests.support.allkinds import config_data, write_all_kinds
from tests.support.hypo import budget

_YAML_PIECES = ["routes:", "\n", "- ", "name: a", "  ", "{", "}", "[", "]", ":", "&a ", "*a",
                "!!python/object:os.system", "!!binary", "? ", "|", ">", "'", '"', "#", "---",
                "...", "%YAML 1.1", "1e999", "0x1F", "2026-02-30", "~", "public: true",
                "authn: [x]", "settings:", "limits: {max_headers: -1}", "\t", "é", "\x00",
                "include: [nope.yaml]", "version: 9", "9" * 5000]
yaml_text = st.one_of(st.lists(st.sampled_from(_YAML_PIECES), max_size=25).map("".join),
                      st.text(max_size=200))

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                    st.sampled_from(["", "-1", "0", "none", "http://x", "/abs", "../x", "*",
                                     "RS256", "ES256", "allow", "all_of", 10**30, -1, 0, 1.5]))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("prop-config")
    write_all_kinds(directory)
    return directory


def _issues_have_locations(error: ConfigError) -> None:
    assert error.issues
    for issue in error.issues:
        assert issue.path, f"issue without a location: {issue}"
        assert issue.message


def _load(path: Path) -> None:
    try:
        snapshot = load_snapshot(path, Metrics())
    except ConfigError as exc:
        _issues_have_locations(exc)
        return
    # valid: nothing was started, nothing to close but the authenticators' own resources
    del snapshot


@budget(100)
@given(st.one_of(yaml_text, st.binary(max_size=120).map(lambda b: b.decode("latin-1"))))
def test_random_yaml_text(base_dir: Path, text: str) -> None:
    path = base_dir / "random.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    _load(path)


@budget(100)
@given(st.one_of(values, st.dictionaries(
    st.sampled_from(["version", "settings", "authenticators", "consumers", "routes", "include",
                     "authz", "x"]), values, max_size=5)))
def test_random_documents(base_dir: Path, document: Any) -> None:
    path = base_dir / "document.yaml"
    path.write_text(yaml.safe_dump(document))
    _load(path)


def _nodes(node: Any, where: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [where]
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_nodes(value, (*where, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.extend(_nodes(value, (*where, index)))
    return out


_BASE = config_data(introspection_endpoint="http://127.0.0.1:9/introspect")
_PATHS = [p for p in _nodes(_BASE) if p]


@budget(100)
@given(st.lists(st.tuples(st.sampled_from(_PATHS), values, st.booleans()), min_size=1,
                max_size=2))
def test_all_kinds_config_with_a_node_replaced(
    base_dir: Path, changes: list[tuple[tuple[Any, ...], Any, bool]]
) -> None:
    """Deep in the schema: each validator and the compiler see values of the wrong type/range."""
    data = copy.deepcopy(_BASE)
    for where, value, delete in changes:
        parent: Any = data
        try:
            for part in where[:-1]:
                parent = parent[part]
            if delete and isinstance(parent, dict):
                parent.pop(where[-1], None)
            else:
                parent[where[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this node
    path = base_dir / "mutated.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    _load(path)


def test_random_documents_reach_the_loader(base_dir: Path) -> None:
    """The base configuration the mutations start from is valid (else they test nothing)."""
    path = base_dir / "base.yaml"
    path.write_text(yaml.safe_dump(_BASE, sort_keys=False))
    assert load_config(path).main.routes


@pytest.mark.parametrize("entry", ["a" * 300, "dir/" * 2000 + "x", "nul\x00byte"])
def test_include_entries_the_os_refuses_are_config_errors(base_dir: Path, entry: str) -> None:
    """Regression (found with HYPOTHESIS_PROFILE=long): an include name too long for the file
    system raised OSError (ENAMETOOLONG) out of the loader instead of a ConfigError."""
    path = base_dir / "include.yaml"
    path.write_text(yaml.safe_dump({"include": [entry], "routes": []}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [issue.path for issue in info.value.issues] == ["include[0]"]
