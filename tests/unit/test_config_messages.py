"""Configuration errors in the project's words: through the loader and ``extauthz validate``."""

from __future__ import annotations

from pathlib import Path

import pytest

from extauthz.cli import main
from extauthz.config.loader import load_config
from extauthz.errors import ConfigError

JWT = ("{issuer: 'https://idp.example', audiences: [x], algorithms: [RS256], "
       "jwks: {url: 'https://idp.example/jwks'}}")

CASES = [
    # (file content, expected issue text), each a single problem
    ("routes:\n- {name: r, match: {prefix: /}, authn: [k], authz: {rules: notalist}}\n"
     "authenticators: {k: {api_key: {}}}\n",
     "routes[0].authz.rules: must be a list"),
    ("routes:\n- {name: r, match: {prefix: /}, authn: [{jwt: {issuer: 'https://i', "
     "audiences: [x], algorithms: [RS256]}}]}\n",
     "routes[0].authn[0].jwt.jwks: is required"),
    ("authenticators:\n  corp:\n    jwt: {issuer: 'https://idp.example', audience: [x], "
     "algorithms: [RS256], jwks: {url: 'https://idp.example/jwks'}}\n",
     "authenticators.corp.jwt.audience: unknown key; did you mean `audiences`?"),
    ("routes:\n- {name: r, match: {path_prefix: /}, public: true}\n",
     "routes[0].match.path_prefix: unknown key; did you mean `prefix`?"),
    ("setings: {}\n",
     "setings: unknown key; did you mean `settings`?"),
    ("routes:\n- {name: r, match: {prefix: /}, authn: [{oauth2: {}}]}\n",
     "routes[0].authn[0].oauth2: unknown authenticator kind `oauth2`; known kinds: api_key, "
     "jwt, mtls, basic, hmac, introspection"),
    ("authenticators:\n  x: {ldap: {}}\n",
     "authenticators.x.ldap: unknown authenticator kind `ldap`; known kinds: api_key, jwt,"),
    ("routes:\n  - name: r\n\t  public: true\n",
     "tab characters are not allowed in YAML (line 3)"),
    ("apiVersion: authorino.kuadrant.io/v1beta3\nkind: AuthConfig\nmetadata: {name: a}\n"
     "spec: {hosts: [x]}\n",
     "this is an Authorino AuthConfig (authorino.kuadrant.io/v1beta3), not an extauthz "
     "configuration"),
    ("apiVersion: v1\nkind: ConfigMap\ndata: {}\n",
     "this is a Kubernetes resource (v1 ConfigMap), not an extauthz configuration"),
    ("routes:\n- {name: r, match: {prefix: /}, authn: [{jwt: {issuer: 'http://idp.example.com',"
     " audiences: [x], algorithms: [RS256], jwks: {discovery: true}}}]}\n",
     "routes[0].authn[0].jwt: issuer (OIDC discovery): plain http to a non-loopback host"),
]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_loader_message(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        from extauthz.metrics import Metrics
        from extauthz.snapshot import load_snapshot

        load_snapshot(path, Metrics())
    joined = "\n".join(str(i) for i in caught.value.issues)
    assert expected in joined
    assert "Input should" not in joined and "Field required" not in joined
    assert "Extra inputs" not in joined


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_validate_exits_1_with_message(tmp_path: Path, text: str, expected: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, text)
    assert main(["validate", "--config", str(path)]) == 1
    assert expected in " ".join(capsys.readouterr().err.split())


def test_tab_inside_a_quoted_value_is_legal(tmp_path: Path) -> None:
    path = _write(tmp_path, 'routes:\n- {name: "r", match: {prefix: /}, public: true}\n'
                            '# a comment\t with a tab\n')
    assert load_config(path).main.routes[0].name == "r"


def test_no_suggestion_for_a_far_key_lists_the_known_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, "routes:\n- {name: r, match: {prefix: /, zzzzzz: 1}, public: true}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = caught.value.issues[0].message
    assert message.startswith("unknown key (known: ") and "prefix" in message


def test_authorino_hint_for_an_included_fragment(tmp_path: Path) -> None:
    (tmp_path / "frag.yaml").write_text("apiVersion: authorino.kuadrant.io/v1beta2\n"
                                        "kind: AuthConfig\n")
    path = _write(tmp_path, "include: [frag.yaml]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value.issues[0]).startswith("frag.yaml: this is an Authorino AuthConfig")
