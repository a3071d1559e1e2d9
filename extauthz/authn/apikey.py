"""API key authentication.

Keys are stored as ``sha256:<hex>`` (see :mod:`extauthz.keys`). Lookup is O(1): the first 8 bytes
of the SHA-256 of the presented key index a dict of candidates; the full 32-byte digest is then
compared with :func:`hmac.compare_digest`. The dict lookup can only leak timing about a truncated
hash of a 256-bit secret, which reveals nothing usable; the decisive comparison is constant-time.

Storage is compact because configurations with 100 000 keys exist: one slotted record per key
(its 32-byte digest is the only per-key bytes object), identical scope sets shared, and the index
maps a prefix straight to its key (a tuple only on the rare prefix collision). Measured with
tracemalloc: ~215 bytes per key plus its id string (815 before); reading the configuration's YAML
costs far more (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from extauthz.authn.base import Authenticator, Challenge
from extauthz.authn.context import BuildContext
from extauthz.authn.keyfile import KeyFileError, read_key_file
from extauthz.authn.sources import Source, SourceCredentials
from extauthz.config.schema import ApiKeySpec
from extauthz.errors import AuthenticationError, Reason
from extauthz.types import AuthMethod, Identity, RequestView

_INDEX_BYTES = 8
#: Longest key we hash; anything longer is rejected before hashing (cheap DoS guard).
MAX_KEY_LENGTH = 512


@dataclass(frozen=True, slots=True)
class _StoredKey:
    consumer: str
    key_id: str
    digest: bytes
    scopes: frozenset[str]
    expires_at: float | None
    disabled: bool


class _KeyTable:
    """The keys being loaded: duplicates refused, identical scope sets shared."""

    def __init__(self) -> None:
        self.keys: list[_StoredKey] = []
        #: digest -> the key that has it; (consumer, id) of every key
        self._by_digest: dict[bytes, _StoredKey] = {}
        self._ids: set[tuple[str, str]] = set()
        #: one frozenset per distinct scope list, shared by every key that has it
        self._scope_sets: dict[tuple[str, ...], frozenset[str]] = {}

    def scopes(self, scopes: tuple[str, ...]) -> frozenset[str]:
        return self._scope_sets.setdefault(scopes, frozenset(scopes))

    def add(self, key: _StoredKey, where: str, *, unique_id: bool = False) -> None:
        """Keep ``key``; ValueError (naming ``where``, never the key) for a duplicate."""
        other = self._by_digest.get(key.digest)
        if other is not None:
            raise ValueError(
                f"key {where} has the same hash as key {other.consumer}/{other.key_id}")
        ident = (key.consumer, key.key_id)
        if unique_id and ident in self._ids:
            raise ValueError(f"key {where}: consumer {key.consumer} already has a key "
                             f"with id {key.key_id}")
        self._ids.add(ident)
        self._by_digest[key.digest] = key
        self.keys.append(key)

    def add_file(self, path: Path, wanted: set[str] | None) -> None:
        """Stream the keys of a JSON Lines file (extauthz.authn.keyfile) into the table."""
        try:
            for line in read_key_file(path):
                if wanted is not None and line.consumer not in wanted:
                    continue
                self.add(_StoredKey(
                    consumer=line.consumer, key_id=line.key_id, digest=line.digest,
                    scopes=self.scopes(line.scopes), expires_at=line.expires_at,
                    disabled=line.disabled,
                ), f"{path}:{line.line}", unique_id=True)
        except OSError as exc:
            raise ValueError(f"keys_file: cannot read {path}: {exc.strerror or exc}") from None
        except KeyFileError as exc:
            raise ValueError(f"keys_file: {exc}") from None


class ApiKeyAuthenticator(SourceCredentials):
    """Verifies API keys of the configured consumers."""

    kind = AuthMethod.API_KEY

    def __init__(
        self,
        name: str,
        sources: tuple[Source, ...],
        keys: list[_StoredKey],
        ctx: BuildContext,
        keys_file: Path | None = None,
    ) -> None:
        self.name = name
        self._sources = sources
        self._clock = ctx.clock
        #: revoked keys (``extauthz revoke key``); None when no revocation list is configured
        self._revocations = ctx.state.revocations if ctx.state is not None else None
        index: dict[bytes, _StoredKey | tuple[_StoredKey, ...]] = {}
        for key in keys:
            prefix = key.digest[:_INDEX_BYTES]
            found = index.get(prefix)
            if found is None:
                index[prefix] = key
            else:
                index[prefix] = (*(found if isinstance(found, tuple) else (found,)), key)
        self._index = index
        self._init_credentials(
            Challenge("ApiKey", (("realm", ctx.settings.realm), sources[0].describe())), sources,
            # the keys file, watched for hot reload
            source_files=(keys_file,) if keys_file is not None else (),
        )

    @classmethod
    def from_spec(cls, name: str, spec: ApiKeySpec, ctx: BuildContext) -> ApiKeyAuthenticator:
        """Build from configuration; raises ValueError naming an unknown consumer, a clash, or
        the file and line of a bad ``keys_file`` line."""
        wanted = None if spec.consumers is None else set(spec.consumers)
        known = {c.name for c in ctx.consumers}
        if wanted is not None and (missing := sorted(wanted - known)):
            raise ValueError(f"unknown consumer(s): {', '.join(missing)}")
        table = _KeyTable()
        for consumer in ctx.consumers:
            if wanted is not None and consumer.name not in wanted:
                continue
            for entry in consumer.keys:
                table.add(_StoredKey(
                    consumer=consumer.name,
                    key_id=entry.id,
                    digest=bytes.fromhex(entry.hash.removeprefix("sha256:")),
                    scopes=table.scopes(tuple(entry.scopes)),
                    expires_at=entry.expires_at.timestamp() if entry.expires_at else None,
                    disabled=entry.disabled,
                ), f"{consumer.name}/{entry.id}")
        keys_file: Path | None = None
        if spec.keys_file is not None:
            keys_file = Path(spec.keys_file)
            keys_file = keys_file if keys_file.is_absolute() else ctx.base_dir / keys_file
            table.add_file(keys_file, wanted)
        sources = tuple(Source.from_spec(s) for s in spec.sources)
        return cls(name, sources, table.keys, ctx, keys_file)

    async def authenticate(self, view: RequestView) -> Identity | None:
        for source in self._sources:
            presented = source.read(view)
            if presented is None:
                continue
            return self._verify(presented)
        return None

    def _verify(self, presented: str) -> Identity:
        if not presented or len(presented) > MAX_KEY_LENGTH:
            raise self._fail(Reason.INVALID_API_KEY, "invalid API key")
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        match: _StoredKey | None = None
        found = self._index.get(digest[:_INDEX_BYTES])
        if found is not None:
            for candidate in found if isinstance(found, tuple) else (found,):
                if hmac.compare_digest(candidate.digest, digest):
                    match = candidate
        if match is None:
            raise self._fail(Reason.INVALID_API_KEY, "invalid API key")
        if match.disabled:
            raise self._fail(Reason.KEY_DISABLED, "API key disabled")
        if match.expires_at is not None and self._clock() >= match.expires_at:
            raise self._fail(Reason.KEY_EXPIRED, "API key expired")
        revocations = self._revocations
        if revocations is not None and revocations.key_revoked(match.consumer, match.key_id):
            raise self._fail(Reason.KEY_REVOKED, "API key revoked")
        return Identity(
            method=self.kind,
            subject=match.consumer,
            authenticator=self.name,
            consumer=match.consumer,
            scopes=match.scopes,
            key_id=match.key_id,
            expires_at=match.expires_at,
        )

    def _fail(self, reason: Reason, description: str) -> AuthenticationError:
        return AuthenticationError(reason, description, authenticator=self.name)


_: type[Authenticator] = ApiKeyAuthenticator  # static conformance check (mypy)
