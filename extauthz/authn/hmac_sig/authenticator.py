"""The HMAC request-signature authenticator: one of two signature protocols, chosen by profile.

The protocol modules parse and verify (:mod:`.rfc9421`, :mod:`.cavage`); what both check the
same way (keys, time window, body digests, nonces, the identity) is :mod:`.checks`.

Challenge: ``WWW-Authenticate: Signature realm="<realm>", headers="<required components>"`` (plus
``error``/``error_description`` after an invalid signature). No ``Accept-Signature`` is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from extauthz.authn.base import Authenticator, AuthenticatorBase, Challenge, CredentialSurface
from extauthz.authn.context import BuildContext
from extauthz.authn.hmac_sig.cavage import Cavage
from extauthz.authn.hmac_sig.checks import Checks, HmacKey, load_keys
from extauthz.authn.hmac_sig.rfc9421 import Rfc9421
from extauthz.authn.nonces import MemoryNonceStore, NonceStore
from extauthz.clock import Clock
from extauthz.config.schema import HmacSpec
from extauthz.errors import AuthenticationError
from extauthz.types import AuthMethod, Identity, RequestView

__all__ = ["HmacAuthenticator"]


class _SignatureProtocol(Protocol):
    async def verify(self, view: RequestView) -> Identity | None: ...


class HmacAuthenticator(AuthenticatorBase):
    """Verifies HMAC request signatures (the protocol modules say the exact rules)."""

    kind: AuthMethod = AuthMethod.HMAC

    def __init__(
        self,
        name: str,
        spec: HmacSpec,
        keys: Mapping[str, HmacKey],
        *,
        clock: Clock,
        nonces: NonceStore,
        realm: str = "extauthz",
        header_prefix: str = "x-auth-",
    ) -> None:
        self.name = name
        self._keys = dict(keys)
        self._clock = clock
        self._nonces = nonces
        #: a store kept across reloads by the process's ReloadState: it may have been made
        #: with an earlier configuration's clock (rebound in start, on the event loop)
        self._carried_nonces = False
        cavage = spec.profile == "cavage"
        key_header = header_prefix + "key-id"
        checks = Checks(name, spec, self._keys, clock=clock, nonces=nonces,
                        key_header=key_header)
        self._protocol: _SignatureProtocol = Cavage(checks) if cavage else Rfc9421(checks)
        listed = " ".join(checks.required)
        params: tuple[tuple[str, str], ...] = (("realm", realm),)
        if listed:
            params += (("headers", listed),)
        self._challenge = Challenge("Signature", params)
        self.surface = CredentialSurface(
            headers=("authorization", "signature") if cavage else ("signature", "signature-input"),
            injected_headers=(key_header,),
            signature_components_limited=True,
        )

    @classmethod
    def from_spec(cls, name: str, spec: HmacSpec, ctx: BuildContext) -> HmacAuthenticator:
        """Build from configuration: reads every secret now (``ValueError`` names the key)."""
        keys = load_keys(spec, ctx)
        # Redis (settings.redis) when configured: replay protection across replicas; else the
        # process's memory store (kept across reloads); without one, a store kept by name in
        # the ReloadState (a reload that builds this name again takes it over).
        nonces = ctx.state.nonce_store(name) if ctx.state is not None else None
        carried = nonces is None
        if nonces is None:
            nonces = ctx.reload_state.cell(
                AuthMethod.HMAC, name, lambda: MemoryNonceStore(ctx.clock), MemoryNonceStore)
        authenticator = cls(
            name,
            spec,
            keys,
            clock=ctx.clock,
            nonces=nonces,
            realm=ctx.settings.realm,
            header_prefix=ctx.settings.identity_header_prefix,
        )
        authenticator._carried_nonces = carried
        return authenticator

    async def authenticate(self, view: RequestView) -> Identity | None:
        return await self._protocol.verify(view)

    def challenge(self, error: AuthenticationError | None = None) -> str:
        if error is None:
            return self._challenge.render()
        return self._challenge.render(
            ("error", "invalid_signature"), ("error_description", error.description)
        )

    async def start(self) -> None:
        nonces = self._nonces
        if self._carried_nonces and isinstance(nonces, MemoryNonceStore):
            nonces.rebind_clock(self._clock)


_: type[Authenticator] = HmacAuthenticator  # static conformance check (mypy)
