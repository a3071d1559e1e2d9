"""HTTP Basic authentication (RFC 7617) against an htpasswd file.

One check, in this order:

1. ``Authorization: Basic <token68>`` is parsed strictly (:func:`parse_basic_credentials`): strict
   base64 with padding, UTF-8 (the challenge advertises ``charset="UTF-8"``), a ``:`` separating a
   non-empty user-id from the password, no control characters. Anything else is a 401
   ``malformed_credentials``. Another scheme in ``Authorization`` means "absent" (another method
   may own it).
2. The brute-force limiter (:mod:`extauthz.authn.attempts`) is consulted for the username and the
   source address **before** any password work: a blocked key is a 429 with ``Retry-After``.
3. A recent success with the same user and password is answered from a cache keyed by
   HMAC-SHA256("user\\0password") under a random per-process key (the password itself is never
   stored); ``cache_ttl_seconds`` bounds how long a changed password keeps working (a reload
   builds a fresh cache). A success from the cache resets the username's count like any other.
4. Otherwise one attempt is **reserved** against both keys (counted as a failure before the
   password is looked at; refused with 429 if either key has no attempt left), so under any
   concurrency at most ``max_failures`` verifications per window run per username and per
   address. The password is then verified off the event loop (bcrypt takes tens of milliseconds)
   on a small thread pool. Concurrent identical attempts share one verification. An unknown user,
   or a ``{SHA}`` user in a file that also has bcrypt users, costs one bcrypt against a dummy hash
   of the file's usual cost, so timing does not reveal which usernames exist.
5. A failure keeps its reservation and is answered 401 ``invalid_credentials`` (the same for
   unknown user and wrong password). A success resets the username's count and gives the
   address's reservation back (the address's earlier failures stay: a client spraying usernames
   must not clear its own record by logging in once).

The counters of the in-memory limiter belong to the process (:mod:`extauthz.state.local`), so a
reload — ``extauthz revoke`` appending to a watched file is one — hands out no fresh attempts.

Passwords over 72 UTF-8 bytes never match a bcrypt entry (bcrypt would silently truncate them).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from extauthz.authn.attempts import AttemptLimiter, InMemoryAttemptLimiter, enforce, reserve_all
from extauthz.authn.base import Authenticator, AuthenticatorBase, Challenge, CredentialSurface
from extauthz.authn.cache import CredentialCache
from extauthz.authn.context import BuildContext
from extauthz.authn.htpasswd import HtpasswdEntry, check_bcrypt, dummy_bcrypt_hash, load_htpasswd
from extauthz.clock import Clock
from extauthz.config.schema import BasicSpec
from extauthz.errors import AuthenticationError, Reason
from extauthz.types import AuthMethod, Identity, RequestView

#: Longest base64 credential accepted (a cheap guard before decoding).
MAX_CREDENTIALS_LENGTH = 4096

_CTL = re.compile(r"[\x00-\x1f\x7f]")


class MalformedCredentials(ValueError):
    """A Basic credential that does not follow RFC 7617 (message is safe to log)."""


def parse_basic_credentials(token: str) -> tuple[str, str]:
    """Decode the token68 of ``Authorization: Basic <token68>`` into ``(user, password)``.

    Raises only :class:`MalformedCredentials`.
    """
    if not token:
        raise MalformedCredentials("empty credentials")
    if len(token) > MAX_CREDENTIALS_LENGTH:
        raise MalformedCredentials("credentials too long")
    if not token.isascii():
        raise MalformedCredentials("credentials are not base64")
    try:
        raw = base64.b64decode(token, validate=True)
    except ValueError:  # binascii.Error is a ValueError
        raise MalformedCredentials("credentials are not base64") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedCredentials("credentials are not UTF-8") from None
    user, sep, password = text.partition(":")
    if not sep:
        raise MalformedCredentials("no ':' between user-id and password")
    if not user:
        raise MalformedCredentials("empty user-id")
    if _CTL.search(text):
        raise MalformedCredentials("control characters in credentials")
    return user, password


class BasicAuthenticator(AuthenticatorBase):
    """Verifies ``Authorization: Basic`` credentials against htpasswd entries."""

    kind = AuthMethod.BASIC

    def __init__(
        self,
        name: str,
        users: dict[str, HtpasswdEntry],
        ctx: BuildContext,
        *,
        limiter: AttemptLimiter,
        max_failures: int = 10,
        cache_ttl_seconds: float = 60,
        cache_size: int = 10_000,
        hash_workers: int = 2,
        source: Path | None = None,
    ) -> None:
        self.name = name
        self._users = users
        self._clock: Clock = ctx.clock
        self._limiter = limiter
        #: recent successes by keyed HMAC of user and password (cache_ttl_seconds 0: none)
        self._cache: CredentialCache[bool] = CredentialCache(
            cache_size, clock=ctx.clock, max_ttl=cache_ttl_seconds)
        self._cache_secret = secrets.token_bytes(32)
        self._dummy = dummy_bcrypt_hash(users)
        self._workers = hash_workers
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[bytes, asyncio.Future[bool]] = {}
        self._challenge = Challenge(
            "Basic", (("realm", ctx.settings.realm), ("charset", "UTF-8"))
        )
        self.surface = CredentialSurface(
            headers=("authorization",),
            # the htpasswd file, watched for hot reload
            source_files=(source,) if source is not None else (),
        )

    @classmethod
    def from_spec(cls, name: str, spec: BasicSpec, ctx: BuildContext) -> BasicAuthenticator:
        """Build from configuration; raises ValueError naming the file and line of a bad entry."""
        path = Path(spec.htpasswd_file)
        if not path.is_absolute():
            path = ctx.base_dir / path
        try:
            users = load_htpasswd(path)
        except ValueError as exc:
            raise ValueError(f"htpasswd_file: {exc}") from None
        if not users:
            raise ValueError(f"htpasswd_file: {path}: no users")
        # Redis (settings.redis) when configured: failures counted across replicas.
        limiter: AttemptLimiter | None = None
        if ctx.state is not None:
            limiter = ctx.state.attempt_limiter(
                name, max_failures=spec.max_failures, window_seconds=spec.window_seconds,
                max_keys=spec.max_tracked_keys,
            )
        if limiter is None:
            limiter = InMemoryAttemptLimiter(
                spec.max_failures, spec.window_seconds,
                max_keys=spec.max_tracked_keys, clock=ctx.clock,
            )
        return cls(
            name, users, ctx,
            limiter=limiter,
            max_failures=spec.max_failures,
            cache_ttl_seconds=spec.cache_ttl_seconds,
            cache_size=spec.cache_size,
            hash_workers=spec.hash_workers,
            source=path,
        )

    async def authenticate(self, view: RequestView) -> Identity | None:
        raw = view.headers.value("authorization")
        if raw is None:
            return None
        scheme, _, rest = raw.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, password = parse_basic_credentials(rest.strip())
        except MalformedCredentials as exc:
            raise self._fail(
                Reason.MALFORMED_CREDENTIALS, "malformed Basic credentials", str(exc)
            ) from None
        keys = self._attempt_keys(user, view.source_address)
        await enforce(self._limiter, keys)
        digest = hmac.new(
            self._cache_secret, user.encode() + b"\0" + password.encode(), hashlib.sha256
        ).digest()
        if self._cache.get(digest, self._clock()):
            await self._limiter.reset(keys[0])
            return self._identity(user)
        task, held = await self._verification(digest, keys, user, password)
        if not await asyncio.shield(task):
            raise self._fail(Reason.INVALID_CREDENTIALS, "invalid username or password")
        self._cache.put(digest, True)
        await self._limiter.reset(keys[0])
        for key in held[1:]:
            await self._limiter.release(key)
        return self._identity(user)

    def _attempt_keys(self, user: str, address: str) -> list[str]:
        # The username is hashed: bounded key size, and no usernames kept in limiter memory.
        user_key = hashlib.sha256(user.encode()).hexdigest()[:32]
        keys = [f"{self.name}:user:{user_key}"]
        if address:
            keys.append(f"{self.name}:addr:{address}")
        return keys

    async def _verification(
        self, digest: bytes, keys: list[str], user: str, password: str
    ) -> tuple[asyncio.Future[bool], list[str]]:
        """The verification of this exact credential, and the keys this attempt reserved.

        An identical attempt already being verified is joined without reserving anything (it
        costs no password work of its own: 20 parallel requests of one client with a cold cache
        are one attempt, not 20). Otherwise one attempt is reserved against every key *before*
        the verification starts (module docstring, step 4). The verification runs as its own
        task: a caller that goes away (Envoy timed out) does not cancel it for the others.
        """
        task = self._pending.get(digest)
        if task is not None:
            return task, []
        held = await reserve_all(self._limiter, keys)
        task = self._pending.get(digest)  # started while we were reserving (a Redis round trip)
        if task is not None:
            for key in held:
                await self._limiter.release(key)
            return task, []
        task = asyncio.ensure_future(self._verify(user, password))
        self._pending[digest] = task
        task.add_done_callback(functools.partial(self._verified, digest))
        return task, held

    def _verified(self, digest: bytes, task: asyncio.Future[bool]) -> None:
        self._pending.pop(digest, None)
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have gone away

    async def _verify(self, user: str, password: str) -> bool:
        entry = self._users.get(user)
        raw = password.encode()
        if entry is not None and entry.scheme == "bcrypt":
            return await self._run_bcrypt(raw, entry.hashed)
        if self._dummy is not None:
            # Unknown user, or a {SHA} user among bcrypt users: cost what a real check costs.
            await self._run_bcrypt(raw, self._dummy)
        if entry is None:
            return False
        return entry.verify(password)

    async def _run_bcrypt(self, password: bytes, hashed: bytes) -> bool:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix=f"extauthz-bcrypt-{self.name}"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, check_bcrypt, password, hashed)

    def _identity(self, user: str) -> Identity:
        return Identity(method=self.kind, subject=user, authenticator=self.name)

    def _fail(self, reason: Reason, description: str, detail: str = "") -> AuthenticationError:
        return AuthenticationError(reason, description, detail, authenticator=self.name)

    def challenge(self, error: AuthenticationError | None = None) -> str:
        # RFC 7617 defines no error parameter: the same challenge either way.
        return self._challenge.render()

    async def close(self) -> None:
        # Let running and queued verifications finish (their requests are still waiting).
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


_: type[Authenticator] = BasicAuthenticator  # static conformance check (mypy)
