"""Build the key source a JWT authenticator's configuration asks for."""

from __future__ import annotations

from pathlib import Path

from extauthz.authn.jwks.discovery import discovery_url
from extauthz.authn.jwks.keys import load_static_keyset, strict_json
from extauthz.authn.jwks.remote import LastGoodKeys, RemoteJwks
from extauthz.authn.jwks.sources import StaticJwks
from extauthz.authn.reload_state import ReloadState
from extauthz.clock import Clock
from extauthz.config.schema import JwtSpec
from extauthz.metrics import Metrics
from extauthz.outbound import OutboundPolicy
from extauthz.types import AuthMethod

__all__ = ["jwks_source_from_spec"]


def jwks_source_from_spec(
    spec: JwtSpec,
    *,
    base_dir: Path,
    clock: Clock,
    metrics: Metrics,
    policy: OutboundPolicy | None = None,
    reload_state: ReloadState | None = None,
) -> StaticJwks | RemoteJwks:
    """Build the key source of ``spec``; file reads happen here. ``ValueError`` on bad input.

    ``reload_state``: the process's carry-over store; a remote source takes the last good keys
    of its :attr:`RemoteJwks.source_key` from it when it starts."""
    source = spec.jwks
    algorithms = list(spec.algorithms)
    if source.file is not None:
        path = Path(source.file)
        if not path.is_absolute():
            path = base_dir / path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(
                f"cannot read JWKS file {str(path)!r}: {err.strerror or type(err).__name__}"
            ) from None
        except UnicodeDecodeError:
            raise ValueError(f"JWKS file {str(path)!r} is not UTF-8") from None
        try:
            document = strict_json(text)
        except (ValueError, RecursionError) as err:
            raise ValueError(f"JWKS file {str(path)!r} is not valid JSON: {err}") from None
        keyset = load_static_keyset(document, algorithms, f"JWKS file {str(path)!r}")
        return StaticJwks(keyset, issuer=spec.issuer, metrics=metrics)
    if source.inline is not None:
        keyset = load_static_keyset(source.inline, algorithms, "inline JWKS")
        return StaticJwks(keyset, issuer=spec.issuer, metrics=metrics)
    if spec.max_stale_seconds < spec.refresh_interval_seconds:
        raise ValueError(
            "max_stale_seconds must be at least refresh_interval_seconds "
            "(otherwise keys go stale between two refreshes)"
        )
    policy = policy if policy is not None else OutboundPolicy()
    reload_state = reload_state if reload_state is not None else ReloadState()
    if source.url is not None:
        policy.check_url(source.url, "jwks.url")
    else:
        policy.check_url(discovery_url(spec.issuer), "issuer (OIDC discovery)")
    return RemoteJwks(
        issuer=spec.issuer,
        algorithms=algorithms,
        url=source.url,
        discovery=source.discovery,
        refresh_interval=spec.refresh_interval_seconds,
        max_stale=spec.max_stale_seconds,
        fetch_timeout=spec.fetch_timeout_seconds,
        min_refetch_interval=spec.min_refetch_interval_seconds,
        refetch_wait=spec.refetch_wait_seconds,
        clock=clock,
        metrics=metrics,
        policy=policy,
        carried=reload_state.cell(
            AuthMethod.JWT, (spec.issuer, source.url, source.discovery, frozenset(algorithms)),
            LastGoodKeys, LastGoodKeys),
    )
