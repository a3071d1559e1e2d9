"""The authenticator contract (extauthz/authn/base.py): every built-in method conforms, declares
the credential surface it really reads, and nothing outside the methods probes them."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from extauthz.authn.base import (
    Authenticator,
    AuthenticatorBase,
    Challenges,
    CredentialSurface,
    Declares,
    HasLifecycle,
    Verifies,
)
from extauthz.authn.registry import BUILT_IN, default_registry
from extauthz.authn.reload_state import ReloadState
from extauthz.clock import FixedClock
from extauthz.config.schema import AuthnSpec
from extauthz.decision import GrpcCode, from_error
from extauthz.errors import (
    AuthenticationError,
    AuthorizationError,
    BadRequestError,
    CheckError,
    DependencyUnavailable,
    Reason,
    TooManyAttempts,
)
from extauthz.metrics import Metrics
from extauthz.snapshot import Snapshot, load_snapshot
from extauthz.state.redis import StateHub
from extauthz.types import AuthMethod, RequestView
from tests.support.allkinds import write_all_kinds
from tests.support.builders import make_view

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def snapshot(tmp_path: Path) -> AsyncIterator[Snapshot]:
    """Every kind, HMAC in both profiles (tests/support/allkinds.py), started."""
    built = load_snapshot(write_all_kinds(tmp_path).config, Metrics())
    await built.start()
    try:
        yield built
    finally:
        await built.close()


# ------------------------------------------------------------------ conformance


def test_every_configuration_kind_has_a_built_in_authenticator() -> None:
    kinds = {k for k in AuthnSpec.model_fields if k != "ref"}
    assert set(BUILT_IN) == kinds == set(default_registry())


async def test_every_built_authenticator_conforms_to_every_capability(
    snapshot: Snapshot,
) -> None:
    built = snapshot.authenticators
    assert {a.kind for a in built.values()} == set(AuthMethod)
    for name, authenticator in built.items():
        assert authenticator.name == name
        for capability in (Verifies, Challenges, Declares, HasLifecycle, Authenticator):
            assert isinstance(authenticator, capability), (name, capability.__name__)
        assert isinstance(authenticator, AuthenticatorBase)  # the defaults, not copies of them
        assert isinstance(authenticator.surface, CredentialSurface)
        surface = authenticator.surface
        assert authenticator.credential_headers() == surface.headers
        assert authenticator.credential_query_params() == surface.query_params
        assert authenticator.credential_cookies() == surface.cookies
        assert authenticator.ready()
        assert all(h == h.lower() for h in surface.headers + surface.injected_headers)


def test_each_module_declares_its_static_conformance_check() -> None:
    """mypy (tests/unit/test_lint.py) checks ``_: type[Authenticator] = <class>`` in each."""
    for cls in BUILT_IN.values():
        source = Path(__import__(cls.__module__, fromlist=["_"]).__file__ or "").read_text()
        assert f"_: type[Authenticator] = {cls.__name__}" in source, cls.__module__


# ------------------------------------------------------------------ the declared surface

#: (where, name, value) a credential could be put; junk values, each malformed for any method
#: that reads that place (an Authorization value per scheme the built-in methods know)
PROBES: tuple[tuple[str, str, str], ...] = (
    *(("header", "authorization", f"{scheme} junk!")
      for scheme in ("Bearer", "Basic", "ApiKey", "Signature", "hmac", "JWT")),
    ("header", "x-api-key", "junk"),
    ("header", "signature", "junk"),
    ("header", "signature-input", "junk"),
    ("header", "x-forwarded-client-cert", "junk"),
    ("header", "x-jwt-assertion", "junk"),
    ("query", "api_key", "junk"),
    ("query", "access_token", "junk"),
    ("cookie", "ak", "junk"),
    ("cookie", "session", "junk"),
)


def _probe(where: str, name: str, value: str) -> RequestView:
    if where == "header":
        return make_view(headers={name: value})
    if where == "query":
        return make_view(query={name: value})
    return make_view(headers={"cookie": f"{name}={value}"})


def _declares(surface: CredentialSurface, where: str, name: str) -> bool:
    places = {"header": surface.headers, "query": surface.query_params,
              "cookie": surface.cookies}
    return name in places[where]


async def _reads(authenticator: Authenticator, view: RequestView) -> bool:
    """Whether the method saw a credential in ``view`` (an identity or a refusal)."""
    try:
        return await authenticator.authenticate(view) is not None
    except CheckError:
        return True


async def test_no_method_reads_a_place_it_does_not_declare(snapshot: Snapshot) -> None:
    for authenticator in snapshot.authenticators.values():
        for where, name, value in PROBES:
            if _declares(authenticator.surface, where, name):
                continue
            assert not await _reads(authenticator, _probe(where, name, value)), (
                authenticator.name, where, name, value)


async def test_every_declared_place_is_read(snapshot: Snapshot) -> None:
    for authenticator in snapshot.authenticators.values():
        surface = authenticator.surface
        declared = ([("header", h) for h in surface.headers]
                    + [("query", q) for q in surface.query_params]
                    + [("cookie", c) for c in surface.cookies])
        for where, name in declared:
            values = [v for w, n, v in PROBES if (w, n) == (where, name)] or ["junk"]
            seen = [await _reads(authenticator, _probe(where, name, v)) for v in values]
            assert any(seen), (authenticator.name, where, name)


async def test_the_declared_surfaces(snapshot: Snapshot) -> None:
    """The table of what each method declares (tests/support/allkinds.py configures them)."""
    surfaces = {name: a.surface for name, a in snapshot.authenticators.items()}
    assert surfaces["keys"] == CredentialSurface(
        headers=("x-api-key",), query_params=("api_key",), cookies=("ak",))
    assert surfaces["idp"] == CredentialSurface(
        headers=("authorization",), injected_headers=("x-auth-email", "x-auth-roles"),
        issuer=surfaces["idp"].issuer)
    assert surfaces["idp"].issuer
    assert surfaces["opaque"] == CredentialSurface(headers=("authorization",))
    assert surfaces["certs"] == CredentialSurface(
        headers=("x-forwarded-client-cert",),
        injected_headers=("x-auth-spiffe-id", "x-auth-cert-sha256"),
        source_files=surfaces["certs"].source_files, token_size_limited=False)
    assert [p.name for p in surfaces["certs"].source_files] == ["ca.pem"]
    assert surfaces["users"].headers == ("authorization",)
    assert [p.name for p in surfaces["users"].source_files] == ["htpasswd"]
    assert surfaces["signed"] == CredentialSurface(
        headers=("signature", "signature-input"), injected_headers=("x-auth-key-id",),
        signature_components_limited=True)
    assert surfaces["signed-cavage"].headers == ("authorization", "signature")
    assert surfaces["signed-cavage"].signature_components_limited
    assert set(snapshot.files) >= {p for s in surfaces.values() for p in s.source_files}


# ------------------------------------------------------------------ challenges


async def test_only_bearer_methods_answer_a_scope_403_with_a_challenge(
    snapshot: Snapshot,
) -> None:
    scope = AuthorizationError(Reason.INSUFFICIENT_SCOPE, scope='read "all"')
    other = AuthorizationError(Reason.FORBIDDEN)
    for authenticator in snapshot.authenticators.values():
        assert authenticator.forbidden_challenge(other) is None
        challenge = authenticator.forbidden_challenge(scope)
        if authenticator.kind in (AuthMethod.JWT, AuthMethod.INTROSPECTION):
            assert challenge == ('Bearer realm="extauthz", error="insufficient_scope", '
                                 'scope="read all"')
        else:
            assert challenge is None, authenticator.name


# ------------------------------------------------------------------ errors carry their status


@pytest.mark.parametrize(("error", "status", "code", "extra"), [
    (AuthenticationError(Reason.BAD_SIGNATURE), 401, GrpcCode.UNAUTHENTICATED, ()),
    (AuthorizationError(Reason.FORBIDDEN), 403, GrpcCode.PERMISSION_DENIED, ()),
    (BadRequestError(Reason.BAD_REQUEST), 400, GrpcCode.INVALID_ARGUMENT, ()),
    (TooManyAttempts(Reason.TOO_MANY_ATTEMPTS, retry_after=7), 429,
     GrpcCode.RESOURCE_EXHAUSTED, (("retry-after", "7"),)),
    (DependencyUnavailable(Reason.JWKS_UNAVAILABLE), 503, GrpcCode.UNAVAILABLE, ()),
    (CheckError(Reason.FORBIDDEN), 403, GrpcCode.PERMISSION_DENIED, ()),
    (RuntimeError("boom"), 503, GrpcCode.UNAVAILABLE, ()),
])
def test_the_error_to_outcome_mapping_is_a_lookup_on_the_error(
    error: BaseException, status: int, code: GrpcCode, extra: tuple[tuple[str, str], ...]
) -> None:
    decision = from_error(error, "r")
    assert (decision.http_status, decision.grpc_code) == (status, code)
    assert decision.response_headers == (("content-type", "application/problem+json"), *extra)
    if isinstance(error, CheckError):
        assert (error.http_status, GrpcCode(error.grpc_status)) == (status, code)


def test_a_policy_denial_carries_its_rule_as_a_typed_attribute() -> None:
    assert AuthorizationError(Reason.FORBIDDEN).rule == ""
    assert AuthorizationError(Reason.FORBIDDEN, rule="rules[2]").rule == "rules[2]"


# ------------------------------------------------------------------ reload state


def test_reload_state_cells_are_shared_by_key_and_typed() -> None:
    state = ReloadState()
    first = state.cell(AuthMethod.HMAC, "sig", dict, dict)
    assert state.cell(AuthMethod.HMAC, "sig", dict, dict) is first
    assert state.cell(AuthMethod.JWT, "sig", dict, dict) is not first  # keyed by kind too
    assert state.cell(AuthMethod.HMAC, "other", dict, dict) is not first
    replaced = state.cell(AuthMethod.HMAC, "sig", list, list)  # another type: a fresh cell
    assert replaced == [] and state.cell(AuthMethod.HMAC, "sig", list, list) is replaced


def test_the_state_hubs_in_memory_state_lives_in_the_reload_state() -> None:
    """One place per process: the in-memory replay cache and Basic failure counts of the state
    hub are cells of the same ReloadState the authenticators use (the server passes its own)."""
    state = ReloadState()
    first, second = StateHub(Metrics(), state), StateHub(Metrics(), state)
    clock = FixedClock(0)
    assert first.local.nonce_store(clock) is second.local.nonce_store(clock)
    a, b = (hub.local.attempt_limiter("users", max_failures=3, window_seconds=60.0,
                                      max_keys=10, clock=clock) for hub in (first, second))
    assert a._failures is b._failures
    assert StateHub(Metrics()).local.nonce_store(clock) is not first.local.nonce_store(clock)


# ------------------------------------------------------------------ no probing


#: the modules that hold authenticators (or errors) without knowing their class: whatever they
#: need is a member of the contract. A grep, not a type analysis: these modules use no
#: getattr/hasattr at all, so any new one is reviewed against the contract.
HANDLERS = (
    "extauthz/pipeline.py",
    "extauthz/snapshot.py",
    "extauthz/server.py",
    "extauthz/hygiene.py",
    "extauthz/decision.py",
    "extauthz/authn/dispatch.py",
    "extauthz/authn/registry.py",
    "extauthz/authn/base.py",
    "extauthz/authn/context.py",
    "extauthz/authn/reload_state.py",
    "extauthz/authn/introspection.py",
    "extauthz/authn/jwt.py",
    "extauthz/authn/hmac_sig.py",
)
_PROBE = re.compile(r"\b(getattr|hasattr)\(")
#: reviewed exceptions: (module, the line) — none of them touches an authenticator or an error
_NOT_PROBING = {
    # the one set field of a validated AuthnSpec (a configuration model)
    ("extauthz/snapshot.py", "inner = getattr(spec, spec.kind)"),
    # copying the fields of an Identity (a value, not an authenticator) on a JWT cache hit
    ("extauthz/authn/jwt.py", "_set(copy, name, getattr(identity, name))"),
}


@pytest.mark.parametrize("module", HANDLERS)
def test_no_getattr_probing_in_modules_that_handle_authenticators(module: str) -> None:
    path = REPO / module
    if not path.exists():  # a module split into a package: scan every file of it
        files = sorted((REPO / module.removesuffix(".py")).glob("*.py"))
        assert files, module
    else:
        files = [path]
    for file in files:
        where = str(file.relative_to(REPO))
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if (where, line.strip()) in _NOT_PROBING:
                continue
            assert not _PROBE.search(line), f"{where}:{number}: {line.strip()}"


def test_the_generic_pipeline_names_no_authenticator_kind() -> None:
    """Size limits and 403 challenges come from the declared surface / the method itself."""
    for module in ("extauthz/pipeline.py", "extauthz/snapshot.py", "extauthz/server.py"):
        assert "AuthMethod" not in (REPO / module).read_text(), module


def test_no_authenticator_imports_the_registry() -> None:
    """The registry imports the authenticators; BuildContext lives in authn/context.py so
    nothing imports the registry back (the import cycle of issue 15)."""
    authn = REPO / "extauthz" / "authn"
    for file in sorted(authn.rglob("*.py")):
        if file.name == "registry.py":
            continue
        assert "extauthz.authn.registry" not in file.read_text(), file.relative_to(REPO)
