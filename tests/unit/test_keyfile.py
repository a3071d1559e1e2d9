"""API keys streamed from a JSON Lines file (``api_key.keys_file``, extauthz/authn/keyfile.py).

No timing asserts (the machine is shared): the load is checked by counts and structure — every
key is indexed, one stored record per key, scope sets and consumer names shared. The time and
memory of 100 000 keys are measured by ``scripts/measure_apikeys.py`` (docs/memory.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from extauthz.authn import keyfile
from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.config.schema import ApiKeySpec, Consumer
from extauthz.errors import AuthenticationError, ConfigError, Reason
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.snapshot import load_snapshot
from tests.support.builders import make_ctx, make_view


def key_of(i: int) -> str:
    return f"eak_test-key-{i:08d}-0123456789abcdef"


def line(i: int, **extra: Any) -> str:
    doc = {"consumer": f"c{i % 50}", "id": f"k{i}", "hash": hash_api_key(key_of(i)),
           "scopes": ["orders:read"], **extra}
    return json.dumps(doc)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{text}\n" for text in lines))
    return path


def build(tmp_path: Path, lines: list[str], *, declared: list[Consumer] | None = None,
          **spec: Any) -> ApiKeyAuthenticator:
    write(tmp_path / "keys.jsonl", lines)
    return ApiKeyAuthenticator.from_spec(
        "keys", ApiKeySpec.model_validate({"keys_file": "keys.jsonl", **spec}),
        make_ctx(declared, base_dir=tmp_path))


async def identify(auth: ApiKeyAuthenticator, key: str) -> Any:
    return await auth.authenticate(make_view("/x", headers={"x-api-key": key}))


async def test_twenty_thousand_keys_load_and_each_authenticates(tmp_path: Path) -> None:
    count = 20_000
    auth = build(tmp_path, ["# generated", "", *(line(i) for i in range(count))])
    records = [r for v in auth._index.values() for r in (v if isinstance(v, tuple) else (v,))]
    assert len(records) == count  # one stored record per line, all indexed
    assert len({id(r.scopes) for r in records}) == 1  # one shared frozenset
    assert len({id(r.consumer) for r in records}) == 50  # one string per consumer
    assert all(len(r.digest) == 32 for r in records)  # only the SHA-256 is held
    for i in (0, 1, count // 2, count - 1):
        identity = await identify(auth, key_of(i))
        assert (identity.consumer, identity.key_id) == (f"c{i % 50}", f"k{i}")
        assert identity.scopes == frozenset({"orders:read"})
    with pytest.raises(AuthenticationError) as exc:
        await identify(auth, key_of(count))
    assert exc.value.reason is Reason.INVALID_API_KEY


async def test_expiry_disabled_and_the_consumer_filter(tmp_path: Path) -> None:
    past = "2020-01-01T00:00:00Z"
    auth = build(tmp_path, [line(1, expires_at=past), line(2, disabled=True), line(3)])
    for i, reason in ((1, Reason.KEY_EXPIRED), (2, Reason.KEY_DISABLED)):
        with pytest.raises(AuthenticationError) as exc:
            await identify(auth, key_of(i))
        assert exc.value.reason is reason
    assert (await identify(auth, key_of(3))).consumer == "c3"
    # ``consumers`` restricts the file's keys too (c1 is declared, so it may be named)
    declared = Consumer.model_validate({"name": "c1", "keys": []})
    only_c1 = build(tmp_path, [line(51), line(3)], declared=[declared], consumers=["c1"])
    assert (await identify(only_c1, key_of(51))).key_id == "k51"  # consumer c1 (51 % 50)
    with pytest.raises(AuthenticationError):
        await identify(only_c1, key_of(3))  # consumer c3: not in the filter


@pytest.mark.parametrize(("bad", "message"), [
    ("{not json", "not a JSON object"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"consumer": "c", "id": "k", "hash": "eak_plaintext-key-never-stored"}),
     "plaintext keys are never accepted"),
    (json.dumps({"consumer": "c", "hash": hash_api_key("x")}), "id: is required"),
    (json.dumps({"consumer": "bad name", "id": "k", "hash": hash_api_key("x")}), "consumer:"),
    (json.dumps({"consumer": "c", "id": "k", "hash": hash_api_key("x"), "key": "x"}),
     "unknown member(s) key"),
    (json.dumps({"consumer": "c", "id": "k", "hash": hash_api_key("x"), "scopes": "a"}),
     "scopes: must be a list"),
    (json.dumps({"consumer": "c", "id": "k", "hash": hash_api_key("x"),
                 "expires_at": "2030-01-01T00:00:00"}), "must include a timezone"),
    (json.dumps({"consumer": "c", "id": "k", "hash": hash_api_key("x"), "disabled": "no"}),
     "disabled: must be true or false"),
])
def test_a_bad_line_is_refused_with_its_file_and_line(tmp_path: Path, bad: str,
                                                      message: str) -> None:
    with pytest.raises(ValueError) as exc:
        build(tmp_path, [line(0), "", bad, line(1)])
    text = str(exc.value)
    assert f"{tmp_path / 'keys.jsonl'}:3: " in text
    assert message in text
    assert "plaintext-key" not in text and bad not in text  # never the line itself


@pytest.mark.parametrize(("second", "message"), [
    (line(0).replace('"k0"', '"other"'), "has the same hash as key c0/k0"),
    (line(1).replace('"k1"', '"k0"').replace('"c1"', '"c0"'),
     "consumer c0 already has a key with id k0"),
])
def test_duplicates_are_refused(tmp_path: Path, second: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        build(tmp_path, [line(0), second])
    assert "keys.jsonl:2" in str(exc.value) and message in str(exc.value)


def test_a_file_key_with_the_hash_of_a_configured_key_is_refused(tmp_path: Path) -> None:
    configured = Consumer.model_validate(
        {"name": "yaml", "keys": [{"id": "y1", "hash": hash_api_key(key_of(7))}]})
    with pytest.raises(ValueError, match="has the same hash as key yaml/y1"):
        build(tmp_path, [line(7)], declared=[configured])


def test_a_missing_file_is_a_config_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keys_file: cannot read"):
        ApiKeyAuthenticator.from_spec("keys", ApiKeySpec(keys_file="absent.jsonl"),
                                      make_ctx(base_dir=tmp_path))


def test_the_keys_file_is_watched_and_a_bad_line_is_a_located_config_error(
        tmp_path: Path) -> None:
    write(tmp_path / "keys.jsonl", [line(0)])
    config = tmp_path / "extauthz.yaml"
    config.write_text("""
authenticators:
  keys: {api_key: {keys_file: keys.jsonl}}
routes:
- {name: all, match: {prefix: /}, authn: [keys]}
""")
    snapshot = load_snapshot(config, Metrics())
    assert tmp_path / "keys.jsonl" in snapshot.files
    write(tmp_path / "keys.jsonl", [line(0), '{"consumer": "c"}'])
    with pytest.raises(ConfigError) as exc:
        load_snapshot(config, Metrics())
    assert "keys.jsonl:2: id: is required" in str(exc.value)
    assert tmp_path / "keys.jsonl" in exc.value.files  # a fixed file is picked up again


def test_interned_consumer_names_are_shared_objects(tmp_path: Path) -> None:
    auth = build(tmp_path, [line(0), line(50)])
    first, second = (r for v in auth._index.values()
                     for r in (v if isinstance(v, tuple) else (v,)))
    assert first.consumer is second.consumer is sys.intern("c0")


def test_an_overlong_line_is_refused_at_its_line_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    path.write_bytes(b'{"consumer": "a", "id": "k1", "hash": "sha256:' + b"0" * 64 + b'"}\n'
                     + b"x" * (keyfile.MAX_LINE_BYTES * 3) + b"\n")
    with pytest.raises(keyfile.KeyFileError) as error:
        list(keyfile.read_key_file(path))
    assert str(error.value) == f"{path}:2: line longer than {keyfile.MAX_LINE_BYTES} bytes"
