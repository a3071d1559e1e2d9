"""Basic authentication: strict parsing, htpasswd verification, cache, brute-force limit."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.authn import basic as basic_module
from extauthz.authn.basic import (
    MAX_CREDENTIALS_LENGTH,
    BasicAuthenticator,
    MalformedCredentials,
    parse_basic_credentials,
)
from extauthz.authn.htpasswd import check_bcrypt
from extauthz.clock import FixedClock
from extauthz.config.loader import load_config
from extauthz.config.schema import BasicSpec
from extauthz.decision import GrpcCode, Outcome
from extauthz.errors import AuthenticationError, Reason, TooManyAttempts
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.snapshot import compile_config
from extauthz.types import AuthMethod, RequestView
from tests.support.builders import NOW, make_ctx, make_view

ALICE_HASH = bcrypt.hashpw(b"alice-pw", bcrypt.gensalt(4)).decode()
SHA_BOB = "{SHA}" + base64.b64encode(hashlib.sha1(b"bob-pw").digest()).decode()
HTPASSWD = f"alice:{ALICE_HASH}\nbob:{SHA_BOB}\n"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def view(authorization: str | None, address: str = "10.0.0.1") -> RequestView:
    headers = {} if authorization is None else {"authorization": authorization}
    return dataclasses.replace(make_view("/x", headers=headers), source_address=address)


class BcryptCounter:
    """Wraps check_bcrypt to count calls (and optionally hold them until released)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.gate: threading.Event | None = None
        self._real = check_bcrypt

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls.append(hashed)
        if self.gate is not None:
            self.gate.wait(5)
        return self._real(password, hashed)


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[BcryptCounter]:
    counter = BcryptCounter()
    monkeypatch.setattr(basic_module, "check_bcrypt", counter)
    yield counter
    if counter.gate is not None:
        counter.gate.set()


def make(tmp_path: Path, clock: FixedClock | None = None, text: str = HTPASSWD,
         **spec: object) -> BasicAuthenticator:
    (tmp_path / "users.htpasswd").write_text(text)
    return BasicAuthenticator.from_spec(
        "basic", BasicSpec.model_validate({"htpasswd_file": "users.htpasswd", **spec}),
        make_ctx(clock=clock or FixedClock(NOW), base_dir=tmp_path),
    )


# -- parsing -----------------------------------------------------------------------------------

def test_parse_splits_at_the_first_colon() -> None:
    token = base64.b64encode("rené:pa:ss wörd".encode()).decode()
    assert parse_basic_credentials(token) == ("rené", "pa:ss wörd")
    assert parse_basic_credentials(base64.b64encode(b"u:").decode()) == ("u", "")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "empty"),
        ("!!!!", "not base64"),
        ("YWxpY2U6cHc", "not base64"),                     # missing padding
        ("YWxp Y2U6cHc=", "not base64"),                   # embedded space
        ("ÄÖÜ=", "not base64"),
        (base64.b64encode(b"no-colon").decode(), "no ':'"),
        (base64.b64encode(b"\xff\xfe:pw").decode(), "not UTF-8"),
        (base64.b64encode(b":pw").decode(), "empty user-id"),
        (base64.b64encode(b"u:p\x00w").decode(), "control characters"),
        (base64.b64encode(b"u\n:pw").decode(), "control characters"),
        ("A" * (MAX_CREDENTIALS_LENGTH + 4), "too long"),
    ],
)
def test_parse_refuses_malformed_tokens(token: str, message: str) -> None:
    with pytest.raises(MalformedCredentials, match=message):
        parse_basic_credentials(token)


@given(st.text(max_size=200))
@settings(max_examples=1000, deadline=None)
def test_parse_arbitrary_text_only_raises_malformed(token: str) -> None:
    try:
        user, _ = parse_basic_credentials(token)
    except MalformedCredentials:
        return
    assert user and ":" not in user


@given(st.binary(max_size=200))
@settings(max_examples=1000, deadline=None)
def test_parse_arbitrary_payload_only_raises_malformed(payload: bytes) -> None:
    try:
        user, password = parse_basic_credentials(base64.b64encode(payload).decode())
    except MalformedCredentials:
        return
    assert f"{user}:{password}".encode() == payload


# -- verification ------------------------------------------------------------------------------

async def test_bcrypt_user_allowed(tmp_path: Path) -> None:
    identity = await make(tmp_path).authenticate(view(basic("alice", "alice-pw")))
    assert identity is not None
    assert identity.method is AuthMethod.BASIC
    assert identity.subject == "alice" and identity.authenticator == "basic"


async def test_sha_user_allowed_and_scheme_case_insensitive(tmp_path: Path) -> None:
    auth = make(tmp_path)
    header = basic("bob", "bob-pw").replace("Basic", "bAsIc")
    identity = await auth.authenticate(view(header))
    assert identity is not None and identity.subject == "bob"


async def test_absent_or_other_scheme_is_none(tmp_path: Path) -> None:
    auth = make(tmp_path)
    assert await auth.authenticate(view(None)) is None
    assert await auth.authenticate(view("Bearer abc.def.ghi")) is None
    assert await auth.authenticate(view("Basicx YWxpY2U6cHc=")) is None


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("bob", "wrong"),
                                                ("mallory", "alice-pw"), ("alice", "")])
async def test_wrong_password_and_unknown_user_look_the_same(
    tmp_path: Path, user: str, password: str
) -> None:
    with pytest.raises(AuthenticationError) as info:
        await make(tmp_path).authenticate(view(basic(user, password)))
    assert info.value.reason is Reason.INVALID_CREDENTIALS
    assert info.value.description == "invalid username or password"
    assert info.value.authenticator == "basic"
    assert password not in str(info.value) or not password


@pytest.mark.parametrize("header", ["Basic", "Basic   ", "Basic !!!", "Basic YWxpY2U=",
                                    "Basic " + base64.b64encode(b"\xc3(:x").decode()])
async def test_malformed_header_is_401_malformed(tmp_path: Path, header: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        await make(tmp_path).authenticate(view(header))
    assert info.value.reason is Reason.MALFORMED_CREDENTIALS


async def test_unknown_user_spends_a_bcrypt_on_the_dummy_hash(
    tmp_path: Path, bcrypt_calls: BcryptCounter
) -> None:
    auth = make(tmp_path)
    with pytest.raises(AuthenticationError):
        await auth.authenticate(view(basic("mallory", "x")))
    assert bcrypt_calls.calls == [auth._dummy]
    assert auth._dummy is not None and auth._dummy.startswith(b"$2b$04$")


async def test_sha_user_among_bcrypt_users_also_spends_a_bcrypt(
    tmp_path: Path, bcrypt_calls: BcryptCounter
) -> None:
    auth = make(tmp_path)
    assert await auth.authenticate(view(basic("bob", "bob-pw"))) is not None
    assert len(bcrypt_calls.calls) == 1


async def test_sha_only_file_never_runs_bcrypt(
    tmp_path: Path, bcrypt_calls: BcryptCounter
) -> None:
    auth = make(tmp_path, text=f"bob:{SHA_BOB}\n")
    with pytest.raises(AuthenticationError):
        await auth.authenticate(view(basic("nobody", "x")))
    assert await auth.authenticate(view(basic("bob", "bob-pw"))) is not None
    assert bcrypt_calls.calls == []


async def test_overlong_password_never_matches(tmp_path: Path) -> None:
    pw = "p" * 72
    text = "carol:" + bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode() + "\n"
    auth = make(tmp_path, text=text)
    assert await auth.authenticate(view(basic("carol", pw))) is not None
    with pytest.raises(AuthenticationError):
        await auth.authenticate(view(basic("carol", pw + "suffix")))


# -- cache -------------------------------------------------------------------------------------

async def test_success_is_cached_so_bcrypt_runs_once(
    tmp_path: Path, bcrypt_calls: BcryptCounter
) -> None:
    clock = FixedClock(NOW)
    auth = make(tmp_path, clock)
    for _ in range(5):
        assert await auth.authenticate(view(basic("alice", "alice-pw"))) is not None
    assert len(bcrypt_calls.calls) == 1
    clock.advance(59)
    assert await auth.authenticate(view(basic("alice", "alice-pw"))) is not None
    assert len(bcrypt_calls.calls) == 1
    clock.advance(1)  # cache_ttl_seconds: 60 (default)
    assert await auth.authenticate(view(basic("alice", "alice-pw"))) is not None
    assert len(bcrypt_calls.calls) == 2


async def test_cache_never_answers_a_wrong_password(
    tmp_path: Path, bcrypt_calls: BcryptCounter
) -> None:
    auth = make(tmp_path)
    assert await auth.authenticate(view(basic("alice", "alice-pw"))) is not None
    with pytest.raises(AuthenticationError):
        await auth.authenticate(view(basic("alice", "alice-pw2")))
    assert len(bcrypt_calls.calls) == 2


async def test_cache_disabled_with_zero_ttl(tmp_path: Path, bcrypt_calls: BcryptCounter) -> None:
    auth = make(tmp_path, cache_ttl_seconds=0)
    for _ in range(3):
        assert await auth.authenticate(view(basic("alice", "alice-pw"))) is not None
    assert len(bcrypt_calls.calls) == 3


async def test_cache_keys_are_hmacs_not_passwords(tmp_path: Path) -> None:
    auth = make(tmp_path)
    await auth.authenticate(view(basic("alice", "alice-pw")))
    [key] = list(auth._cache)
    assert len(key) == 32
    assert b"alice-pw" not in key
    assert key != hashlib.sha256(b"alice\0alice-pw").digest()  # keyed, not a plain hash


async def test_concurrent_identical_attempts_share_one_bcrypt(
    tmp_path: Path, bcrypt_calls: BcryptCounter
) -> None:
    auth = make(tmp_path)
    results = await asyncio.gather(
        *(auth.authenticate(view(basic("alice", "alice-pw"))) for _ in range(20))
    )
    assert all(r is not None for r in results)
    assert len(bcrypt_calls.calls) == 1


async def test_bcrypt_runs_off_the_event_loop(tmp_path: Path, bcrypt_calls: BcryptCounter) -> None:
    auth = make(tmp_path)
    bcrypt_calls.gate = threading.Event()
    task = asyncio.create_task(auth.authenticate(view(basic("alice", "alice-pw"))))
    # While bcrypt is held in its worker thread, the loop keeps running other work.
    for _ in range(20):
        await asyncio.sleep(0.01)
        if bcrypt_calls.calls:
            break
    assert bcrypt_calls.calls and not task.done()
    bcrypt_calls.gate.set()
    assert await task is not None
    await auth.close()


# -- brute force -------------------------------------------------------------------------------

async def test_brute_force_is_429_before_bcrypt_runs(
    tmp_path: Path, bcrypt_calls: BcryptCounter
) -> None:
    auth = make(tmp_path, max_failures=3)
    for i in range(3):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(view(basic("alice", f"guess{i}")))
    assert len(bcrypt_calls.calls) == 3
    # Even the right password is refused now, and no bcrypt is spent on it.
    with pytest.raises(TooManyAttempts) as info:
        await auth.authenticate(view(basic("alice", "alice-pw")))
    assert info.value.reason is Reason.TOO_MANY_ATTEMPTS
    assert info.value.retry_after == 300
    assert len(bcrypt_calls.calls) == 3


async def test_limit_is_per_username_across_addresses(tmp_path: Path) -> None:
    auth = make(tmp_path, max_failures=2)
    for i in range(2):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(view(basic("alice", "x"), address=f"10.0.0.{i}"))
    with pytest.raises(TooManyAttempts):
        await auth.authenticate(view(basic("alice", "alice-pw"), address="10.9.9.9"))
    assert await auth.authenticate(view(basic("bob", "bob-pw"), address="10.9.9.9"))


async def test_limit_is_per_address_across_usernames(tmp_path: Path) -> None:
    auth = make(tmp_path, max_failures=2)
    for name in ("u1", "u2"):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(view(basic(name, "x"), address="192.0.2.7"))
    with pytest.raises(TooManyAttempts):
        await auth.authenticate(view(basic("alice", "alice-pw"), address="192.0.2.7"))
    assert await auth.authenticate(view(basic("alice", "alice-pw"), address="192.0.2.8"))


async def test_window_expiry_unblocks(tmp_path: Path) -> None:
    clock = FixedClock(NOW)
    auth = make(tmp_path, clock, max_failures=2, window_seconds=120)
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(view(basic("alice", "x")))
    clock.advance(119)
    with pytest.raises(TooManyAttempts) as info:
        await auth.authenticate(view(basic("alice", "alice-pw")))
    assert info.value.retry_after == 1
    clock.advance(1)
    assert await auth.authenticate(view(basic("alice", "alice-pw"))) is not None


async def test_success_resets_the_username_but_not_the_address(tmp_path: Path) -> None:
    auth = make(tmp_path, max_failures=2)
    with pytest.raises(AuthenticationError):
        await auth.authenticate(view(basic("alice", "x"), address="a"))
    assert await auth.authenticate(view(basic("alice", "alice-pw"), address="b"))
    with pytest.raises(AuthenticationError):
        await auth.authenticate(view(basic("alice", "y"), address="c"))
    # alice's count restarted after the success: one failure, not two
    assert await auth.authenticate(view(basic("alice", "alice-pw"), address="d"))
    with pytest.raises(AuthenticationError):
        await auth.authenticate(view(basic("zed", "x"), address="a"))
    # address "a" kept its earlier failure: two now
    with pytest.raises(TooManyAttempts):
        await auth.authenticate(view(basic("bob", "bob-pw"), address="a"))


async def test_parallel_guesses_cannot_outrun_the_limiter(
    tmp_path: Path, bcrypt_calls: BcryptCounter
) -> None:
    auth = make(tmp_path, max_failures=3)
    bcrypt_calls.gate = threading.Event()
    tasks = [asyncio.create_task(auth.authenticate(view(basic("alice", f"guess{i}"))))
             for i in range(10)]
    await asyncio.sleep(0.05)
    bcrypt_calls.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    limited = [r for r in results if isinstance(r, TooManyAttempts)]
    wrong = [r for r in results if isinstance(r, AuthenticationError)]
    assert len(wrong) == 3 and len(limited) == 7
    assert len(bcrypt_calls.calls) == 3
    await auth.close()


# -- configuration, challenge, pipeline --------------------------------------------------------

def test_challenge_and_credential_headers(tmp_path: Path) -> None:
    auth = make(tmp_path)
    assert auth.challenge() == 'Basic realm="extauthz", charset="UTF-8"'
    assert auth.challenge(AuthenticationError(Reason.INVALID_CREDENTIALS)) == auth.challenge()
    assert auth.credential_headers() == ("authorization",)


def test_from_spec_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"htpasswd_file: .*missing.*cannot read"):
        BasicAuthenticator.from_spec("b", BasicSpec(htpasswd_file="missing"),
                                     make_ctx(base_dir=tmp_path))
    (tmp_path / "bad").write_text(f"alice:{ALICE_HASH}\ncarol:hunter2\n")
    with pytest.raises(ValueError) as info:
        BasicAuthenticator.from_spec("b", BasicSpec(htpasswd_file="bad"),
                                     make_ctx(base_dir=tmp_path))
    assert "line 2: unsupported password format" in str(info.value)
    assert "hunter2" not in str(info.value)
    (tmp_path / "empty").write_text("# nobody\n")
    with pytest.raises(ValueError, match="no users"):
        BasicAuthenticator.from_spec("b", BasicSpec(htpasswd_file="empty"),
                                     make_ctx(base_dir=tmp_path))


async def test_pipeline_statuses(tmp_path: Path) -> None:
    (tmp_path / "users").write_text(HTPASSWD)
    (tmp_path / "c.yaml").write_text(
        "authenticators:\n"
        "  users: {basic: {htpasswd_file: users, max_failures: 2}}\n"
        "routes:\n"
        "- {name: r, authn: [users]}\n"
    )
    snapshot = compile_config(load_config(tmp_path / "c.yaml"), Metrics(),
                              registry={"basic": BasicAuthenticator.from_spec})
    engine = Engine(Metrics(), snapshot)
    ok = await engine.check(view(basic("alice", "alice-pw")))
    assert ok.outcome is Outcome.ALLOW and ok.grpc_code is GrpcCode.OK
    assert dict(ok.upstream_headers)["x-auth-subject"] == "alice"
    assert dict(ok.upstream_headers)["x-auth-method"] == "basic"
    assert "authorization" in ok.remove_headers
    missing = await engine.check(view(None))
    assert (missing.http_status, missing.grpc_code) == (401, GrpcCode.UNAUTHENTICATED)
    assert ("www-authenticate", 'Basic realm="extauthz", charset="UTF-8"') in (
        missing.response_headers)
    for _ in range(2):
        bad = await engine.check(view(basic("alice", "nope")))
        assert (bad.http_status, bad.grpc_code) == (401, GrpcCode.UNAUTHENTICATED)
        assert bad.reason is Reason.INVALID_CREDENTIALS
    limited = await engine.check(view(basic("alice", "alice-pw")))
    assert (limited.http_status, limited.grpc_code) == (429, GrpcCode.RESOURCE_EXHAUSTED)
    assert ("retry-after", "300") in limited.response_headers
    malformed = await engine.check(view("Basic %%%"))
    assert (malformed.http_status, malformed.reason) == (401, Reason.MALFORMED_CREDENTIALS)


def test_htpasswd_file_is_watched_for_reload(tmp_path: Path) -> None:
    assert make(tmp_path).surface.source_files == (tmp_path / "users.htpasswd",)
