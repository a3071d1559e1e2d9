"""``extauthz test PATH...``: run policy test files against a configuration, like ``opa test``.

A test file (YAML; a directory is searched recursively for ``*_test.yaml`` / ``*_test.yml``)::

    config: ../extauthz.yaml          # the configuration under test, relative to this file
    mint_jwt: [demo-idp]              # optional: JWT authenticators whose tokens the runner mints
    tests:
    - name: the owner may read her orders
      request:                        # the fields of an `extauthz check` request file, plus jwt
        method: GET
        path: /v1/users/alice/orders
        headers: {x-tenant: acme}
        jwt:                          # mint a token (only for authenticators in mint_jwt)
          authenticator: demo-idp     # optional when mint_jwt names exactly one
          claims: {sub: alice, scope: orders:read}
      expect:                         # every key is optional; what is given must hold
        allowed: true
        status: 200
        reason: ok
        outcome: allow                # allow | deny | shadow_deny
        route: orders
        rule: rules[1]                # the policy rule that denied
        grpc_code: OK
        headers: {x-auth-subject: alice, x-auth-consumer: null}   # null: must not be set
        removed: [authorization]      # headers removed before the upstream sees the request
        removed_query: [api_key]
        response_headers: {www-authenticate: 'Bearer realm="extauthz"'}
      repeat: 1                       # send it N times, compare the last (e.g. a 429)

Minting JWTs: for each authenticator named in ``mint_jwt`` the runner generates a fresh key pair
(of the first algorithm the authenticator allows) and replaces that authenticator's ``jwks`` with
the public key, in memory, for this run only; everything else about the authenticator (issuer,
audiences, algorithms, leeway, claim mapping, token source) is used as configured. A request's
``jwt.claims`` are merged over defaults ``iss`` (the issuer), ``aud`` (the first audience),
``iat`` (now) and ``exp`` (now + 300 s); a claim set to ``null`` is left out. The token is placed
where the authenticator reads it (``Authorization: Bearer`` by default). No private key is ever
stored in a file, and a configuration's real key source is never contacted for those
authenticators. API keys are simply written in the request headers.

Each test runs through the same code path as a real Check (:func:`~extauthz.checktool
.build_check_request` -> the check edge, :class:`~extauthz.edge.CheckEdge`, reading it as the
gRPC transport does); a failing test prints what differed and the explain trace. The last line
is ``N passed, M failed``; the exit status is 0 when every test passed, 1 otherwise, 2 for a
usage error (no such path, no test files).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import jwt as pyjwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from extauthz.checktool import REQUEST_FIELDS, build_check_request, check_request_data
from extauthz.config.loader import LoadedConfig, issues_from_validation, load_config
from extauthz.config.schema import AuthnSpec, CredentialSource, JwksSpec, JwtSpec
from extauthz.decision import Decision
from extauthz.edge import DECISIONS, CheckEdge
from extauthz.errors import ConfigError
from extauthz.explain import Trace
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.snapshot import compile_config

TEST_FILE_PATTERNS = ("*_test.yaml", "*_test.yml")
#: the ``kid`` of minted tokens
TEST_KID = "extauthz-test"
TOKEN_LIFETIME = 300


# ------------------------------------------------------------------------------- file format


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JwtRequest(_Model):
    authenticator: str | None = None
    claims: dict[str, Any] = Field(default_factory=dict)


class Expect(_Model):
    allowed: bool | None = None
    status: int | None = None
    reason: str | None = None
    outcome: Literal["allow", "deny", "shadow_deny"] | None = None
    route: str | None = None
    rule: str | None = None
    grpc_code: str | None = None
    headers: dict[str, str | None] = Field(default_factory=dict)
    removed: list[str] = Field(default_factory=list)
    removed_query: list[str] = Field(default_factory=list)
    response_headers: dict[str, str] = Field(default_factory=dict)


class Case(_Model):
    name: str = Field(min_length=1)
    request: dict[str, Any]
    expect: Expect
    #: send the request this many times and compare the last decision (rate limits: the
    #: engine, and its in-memory counts, live for the whole file)
    repeat: int = Field(default=1, ge=1, le=100_000)


class TestFile(_Model):
    config: str
    mint_jwt: list[str] = Field(default_factory=list)
    tests: list[Case] = Field(min_length=1)


# ----------------------------------------------------------------------------------- results


@dataclass
class CaseResult:
    name: str
    failures: list[str]
    trace: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class FileResult:
    path: Path
    cases: list[CaseResult] = field(default_factory=list)
    #: a problem with the file itself (unreadable, invalid, configuration refused)
    errors: list[str] = field(default_factory=list)


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """Test files named by ``paths`` (files as given; directories searched recursively)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = {f for pattern in TEST_FILE_PATTERNS for f in path.rglob(pattern)}
            found.extend(sorted(files))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {raw}")
    return list(dict.fromkeys(found))


# ------------------------------------------------------------------------------- JWT minting


@dataclass(frozen=True)
class Minter:
    """Mints tokens for one JWT authenticator with a key generated for this run."""

    spec: JwtSpec
    alg: str
    private_key: Any
    public_jwk: dict[str, Any]

    @classmethod
    def generate(cls, spec: JwtSpec) -> Minter:
        alg = spec.algorithms[0]
        key: Any
        if alg.startswith(("RS", "PS")):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        elif alg.startswith("ES"):
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(),
                     "ES512": ec.SECP521R1()}[alg]
            key = ec.generate_private_key(curve)
            jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        else:  # EdDSA
            key = ed25519.Ed25519PrivateKey.generate()
            jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk = {**jwk, "kid": TEST_KID, "alg": alg, "use": "sig"}
        return cls(spec, alg, key, jwk)

    def with_test_keys(self) -> JwtSpec:
        return self.spec.model_copy(update={"jwks": JwksSpec(inline={"keys": [self.public_jwk]})})

    def mint(self, claims: dict[str, Any]) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"iss": self.spec.issuer, "aud": self.spec.audiences[0],
                                   "iat": now, "exp": now + TOKEN_LIFETIME}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return pyjwt.encode(payload, self.private_key, algorithm=self.alg,
                            headers={"kid": TEST_KID})

    def place(self, token: str, request: dict[str, Any]) -> None:
        """Put ``token`` where the authenticator reads it."""
        source: CredentialSource = self.spec.source
        headers = request.setdefault("headers", {})
        if source.authorization:
            headers["authorization"] = f"{source.authorization} {token}"
        elif source.header:
            headers[source.header] = token
        elif source.query:
            path = str(request.get("path", "/"))
            request["path"] = f"{path}{'&' if '?' in path else '?'}{source.query}={token}"
        elif source.cookie:
            cookie = headers.get("cookie")
            headers["cookie"] = f"{cookie}; {source.cookie}={token}" if cookie else (
                f"{source.cookie}={token}")


def with_minted_keys(loaded: LoadedConfig, names: Sequence[str]
                     ) -> tuple[LoadedConfig, dict[str, Minter]]:
    """Replace the key source of the named JWT authenticators by a generated test key."""
    minters: dict[str, Minter] = {}
    main = loaded.main
    fragments = list(loaded.fragments)
    for name in names:
        where: int | None = None
        spec = main.authenticators.get(name)
        if spec is None:
            for i, fragment in enumerate(fragments):
                if name in fragment.data.authenticators:
                    spec, where = fragment.data.authenticators[name], i
                    break
        if spec is None or spec.jwt is None:
            raise ValueError(f"mint_jwt: {name!r} is not a named jwt authenticator of the "
                             "configuration")
        minter = Minter.generate(spec.jwt)
        minters[name] = minter
        replaced = AuthnSpec(jwt=minter.with_test_keys())
        if where is None:
            main = main.model_copy(update={"authenticators": {**main.authenticators,
                                                              name: replaced}})
        else:
            data = fragments[where].data
            fragments[where] = dataclasses.replace(fragments[where], data=data.model_copy(
                update={"authenticators": {**data.authenticators, name: replaced}}))
    return dataclasses.replace(loaded, main=main, fragments=tuple(fragments)), minters


# ------------------------------------------------------------------------------------ running


def compare(expect: Expect, decision: Decision) -> list[str]:
    """What differs between ``expect`` and ``decision`` (empty: the test passed)."""
    failures: list[str] = []

    def check(what: str, expected: Any, got: Any) -> None:
        if expected is not None and expected != got:
            failures.append(f"{what}: expected {expected!r}, got {got!r}")

    check("allowed", expect.allowed, decision.allowed)
    check("status", expect.status, decision.http_status)
    check("reason", expect.reason, decision.reason.value)
    check("outcome", expect.outcome, decision.outcome.value)
    check("route", expect.route, decision.route)
    check("rule", expect.rule, decision.rule)
    check("grpc_code", expect.grpc_code, decision.grpc_code.name)
    added = dict(decision.upstream_headers)
    for name, value in expect.headers.items():
        got = added.get(name.lower())
        if value is None and got is not None:
            failures.append(f"header {name}: expected not set, got {got!r}")
        elif value is not None and got != value:
            failures.append(f"header {name}: expected {value!r}, got {got!r}")
    for name in expect.removed:
        if name.lower() not in decision.remove_headers:
            failures.append(f"removed: expected {name} to be removed "
                            f"(removed: {list(decision.remove_headers)})")
    for name in expect.removed_query:
        if name not in decision.remove_query:
            failures.append(f"removed_query: expected {name} to be removed "
                            f"(removed: {list(decision.remove_query)})")
    for name, value in expect.response_headers.items():
        values = [v for k, v in decision.response_headers if k == name.lower()]
        if value not in values:
            failures.append(f"response header {name}: expected {value!r}, got {values!r}")
    return failures


async def run_file(path: Path, name_filter: re.Pattern[str] | None = None) -> FileResult:
    """Run one test file."""
    result = FileResult(path)
    try:
        raw = yaml.safe_load(path.read_text())
        spec = TestFile.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        result.errors.append(f"cannot read the test file: {exc}")
        return result
    except ValidationError as exc:
        result.errors.extend(str(i) for i in issues_from_validation(exc))
        return result
    for i, case in enumerate(spec.tests):
        try:
            check_request_data(case.request, frozenset({"jwt"}))
        except ValueError as exc:
            result.errors.append(f"tests[{i}].request: {exc}")
    if result.errors:
        return result
    try:
        loaded = load_config(path.parent / spec.config)
        loaded, minters = with_minted_keys(loaded, spec.mint_jwt)
        metrics = Metrics()
        snapshot = compile_config(loaded, metrics)
    except ConfigError as exc:
        result.errors.append(f"configuration {spec.config} refused:")
        result.errors.extend(f"  {issue}" for issue in exc.issues)
        return result
    except ValueError as exc:
        result.errors.append(str(exc))
        return result
    await snapshot.start()
    try:
        edge = CheckEdge(Engine(metrics, snapshot), DECISIONS)
        for i, case in enumerate(spec.tests):
            if name_filter is not None and not name_filter.search(case.name):
                continue
            try:
                request = _request(case, minters)
            except ValueError as exc:
                result.cases.append(CaseResult(case.name, [f"tests[{i}].request.jwt: {exc}"]))
                continue
            check_request = build_check_request(request)
            for _ in range(case.repeat - 1):
                await edge.answer(check_request)
            trace = Trace()
            decision = await edge.answer(check_request, trace)
            failures = compare(case.expect, decision)
            result.cases.append(CaseResult(case.name, failures,
                                           trace.render() if failures else ""))
    finally:
        await snapshot.close()
    return result


def _request(case: Case, minters: dict[str, Minter]) -> dict[str, Any]:
    request = {k: v for k, v in case.request.items() if k in REQUEST_FIELDS}
    request["headers"] = dict(request.get("headers") or {})
    if "jwt" not in case.request:
        return request
    jwt_request = JwtRequest.model_validate(case.request["jwt"])
    name = jwt_request.authenticator
    if name is None:
        if len(minters) != 1:
            raise ValueError("name the authenticator (mint_jwt lists "
                             f"{len(minters)} authenticators)")
        name = next(iter(minters))
    minter = minters.get(name)
    if minter is None:
        raise ValueError(f"{name!r} is not listed in mint_jwt")
    minter.place(minter.mint(jwt_request.claims), request)
    return request


def report(results: Sequence[FileResult], out: IO[str], *, verbose: bool = False) -> bool:
    """Print results; returns True when everything passed."""
    passed = failed = 0
    for file in results:
        lines: list[str] = []
        for error in file.errors:
            lines.append(f"  ERROR {error}")
        if file.errors:
            failed += 1
        for case in file.cases:
            if case.passed:
                passed += 1
                if verbose:
                    lines.append(f"  PASS  {case.name}")
                continue
            failed += 1
            lines.append(f"  FAIL  {case.name}")
            lines.extend(f"        {f}" for f in case.failures)
            if case.trace:
                lines.append("        trace:")
                lines.extend(f"          {t}" for t in case.trace.splitlines())
        if lines:
            print(f"{file.path}:", file=out)
            for line in lines:
                print(line, file=out)
    print(f"{passed} passed, {failed} failed", file=out)
    return failed == 0


def run_paths(paths: Sequence[str | Path], *, verbose: bool = False,
              name_filter: str | None = None, out: IO[str] | None = None) -> int:
    """The ``extauthz test`` command: 0 all passed, 1 failures, 2 usage error."""
    stream = out if out is not None else sys.stdout
    try:
        files = discover(paths)
    except FileNotFoundError as exc:
        print(f"extauthz: {exc}", file=sys.stderr)
        return 2
    if not files:
        print(f"extauthz: no test files ({' or '.join(TEST_FILE_PATTERNS)}) under "
              f"{', '.join(str(p) for p in paths)}", file=sys.stderr)
        return 2
    try:
        pattern = re.compile(name_filter) if name_filter else None
    except re.error as exc:
        print(f"extauthz: --run: invalid regular expression: {exc}", file=sys.stderr)
        return 2

    async def run_all() -> list[FileResult]:
        return [await run_file(f, pattern) for f in files]

    results = asyncio.run(run_all())
    return 0 if report(results, stream, verbose=verbose) else 1
