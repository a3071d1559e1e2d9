"""``extauthz test``: the shipped policy tests pass (CI runs them here), failures are reported
with what differed and a trace, file problems are errors, JWTs are minted where the
authenticator reads them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from extauthz.cli import main
from extauthz.keys import hash_api_key
from extauthz.policytest import discover

REPO = Path(__file__).resolve().parents[2]
KEY = "eak_policytest-key-000000000000000"


def test_shipped_policy_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["test", str(REPO / "policies" / "tests")])
    out = capsys.readouterr().out
    assert code == 0, out
    last = out.strip().splitlines()[-1]
    passed = int(last.split()[0])
    assert last == f"{passed} passed, 0 failed" and passed >= 20


CONFIG = f"""
authenticators:
  keys: {{api_key: {{}}}}
  idp:
    jwt:
      issuer: https://idp.test
      audiences: [api]
      algorithms: [ES256]
      jwks: {{url: "https://idp.test/jwks"}}
  query-idp:
    jwt:
      issuer: https://other.test
      audiences: [api]
      algorithms: [EdDSA]
      jwks: {{discovery: true}}
      source: {{query: access_token}}
  cookie-idp:
    jwt:
      issuer: https://cookie.test
      audiences: [api]
      algorithms: [RS256]
      jwks: {{inline: {{keys: []}}}}
      source: {{cookie: session}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}", scopes: [read]}}]
routes:
- name: keyed
  match: {{prefix: /k/}}
  authn: [keys]
  authz: {{rules: [{{scopes_all: [read]}}]}}
- name: bearer
  match: {{prefix: /b/}}
  authn: [idp]
  authz: {{rules: [{{claim: {{path: tenant, equals: acme}}}}]}}
- name: query
  match: {{prefix: /q/}}
  authn: [query-idp]
- name: cookie
  match: {{prefix: /c/}}
  authn: [cookie-idp]
"""


def write(tmp_path: Path, tests: str, *, name: str = "x_test.yaml",
          mint: str = "[idp, query-idp, cookie-idp]") -> Path:
    (tmp_path / "config.yaml").write_text(CONFIG)
    path = tmp_path / name
    path.write_text(f"config: config.yaml\nmint_jwt: {mint}\ntests:\n"
                    + textwrap.indent(textwrap.dedent(tests), ""))
    return path


def test_jwt_minted_per_token_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """\
    - name: bearer header
      request: {path: /b/x, jwt: {authenticator: idp, claims: {sub: a, tenant: acme}}}
      expect: {allowed: true, headers: {x-auth-subject: a}, removed: [authorization]}
    - name: bearer wrong tenant
      request: {path: /b/x, jwt: {authenticator: idp, claims: {sub: a, tenant: x}}}
      expect: {allowed: false, status: 403, reason: forbidden, rule: 'rules[0]'}
    - name: query parameter
      request: {path: '/q/x?page=2', jwt: {authenticator: query-idp, claims: {sub: q}}}
      expect: {allowed: true, headers: {x-auth-subject: q}, removed_query: [access_token]}
    - name: cookie
      request:
        path: /c/x
        headers: {cookie: theme=dark}
        jwt: {authenticator: cookie-idp, claims: {sub: c}}
      expect: {allowed: true, headers: {x-auth-subject: c, cookie: theme=dark}}
    - name: a claim set to null is left out
      request: {path: /b/x, jwt: {authenticator: idp, claims: {sub: a, exp: null}}}
      expect: {allowed: false, status: 401, reason: missing_claim}
    - name: api key
      request: {path: /k/x, headers: {x-api-key: KEY}}
      expect: {allowed: true, grpc_code: OK, outcome: allow}
    """.replace("KEY", KEY))
    assert main(["test", "-v", str(path)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "PASS  cookie" in out and out.strip().endswith("6 passed, 0 failed")


def test_failures_are_reported_with_a_trace(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """\
    - name: expects the wrong status
      request: {path: /k/x}
      expect: {allowed: true, status: 200, response_headers: {www-authenticate: nope}}
    - name: passes
      request: {path: /k/x}
      expect: {status: 401}
    """)
    assert main(["test", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  expects the wrong status" in out
    assert "allowed: expected True, got False" in out
    assert "status: expected 200, got 401" in out
    assert "response header www-authenticate: expected 'nope'" in out
    assert "keys [api_key]: absent" in out  # the trace
    assert "PASS" not in out  # passes are listed only with -v
    assert out.strip().endswith("1 passed, 1 failed")


def test_run_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """\
    - name: alpha
      request: {path: /k/x}
      expect: {status: 401}
    - name: beta
      request: {path: /k/x}
      expect: {status: 200}
    """)
    assert main(["test", "--run", "^alp", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith("1 passed, 0 failed")


@pytest.mark.parametrize(("content", "message"), [
    ("config: config.yaml\ntests: []\n", "tests: must have at least 1 item"),
    ("config: config.yaml\ntests:\n- {name: a, request: {pth: /}, expect: {}}\n",
     "tests[0].request: unknown request field(s): pth"),
    ("config: config.yaml\nmint_jwt: [keys]\ntests:\n- {name: a, request: {}, expect: {}}\n",
     "'keys' is not a named jwt authenticator"),
    ("config: missing.yaml\ntests:\n- {name: a, request: {}, expect: {}}\n",
     "configuration missing.yaml refused"),
    ("config: config.yaml\ntests:\n- {name: a, request: {}, expect: {stauts: 1}}\n",
     "tests[0].expect.stauts: unknown key"),
])
def test_file_errors_count_as_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       content: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG)
    path = tmp_path / "bad_test.yaml"
    path.write_text(content)
    assert main(["test", str(path)]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and message in out, out
    assert out.strip().endswith("0 passed, 1 failed")


def test_jwt_for_an_authenticator_not_minted(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """\
    - name: needs a name
      request: {path: /b/x, jwt: {claims: {sub: a}}}
      expect: {}
    - name: unknown
      request: {path: /b/x, jwt: {authenticator: keys, claims: {sub: a}}}
      expect: {}
    """)
    assert main(["test", str(path)]) == 1
    out = capsys.readouterr().out
    assert "name the authenticator (mint_jwt lists 3 authenticators)" in out
    assert "'keys' is not listed in mint_jwt" in out


def test_discovery_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a_test.yaml").write_text("")
    (tmp_path / "b_test.yml").write_text("")
    (tmp_path / "config.yaml").write_text("")
    assert discover([tmp_path]) == [tmp_path / "b_test.yml", tmp_path / "sub" / "a_test.yaml"]
    assert main(["test", str(tmp_path / "nope")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["test", str(empty)]) == 2
    assert "no test files" in capsys.readouterr().err
