"""One policy for every outbound HTTP call: JWKS URL, OIDC discovery, ``jwks_uri``, introspection.

extauthz calls out only to fetch verification material (keys, discovery documents) and to ask an
introspection endpoint about a token. Whatever answers those calls decides who is let in, so every
call goes through the same rules (``settings.outbound``; docs/outbound.md)::

    scheme     https, or http only to a loopback host (127.0.0.0/8, ::1, localhost). Plain http
               elsewhere is refused when the configuration is loaded (a located ConfigError)
               unless ``allow_plain_http: true`` says the operator accepts it.
    redirects  not followed (default). ``follow_redirects: true`` follows at most
               ``max_redirects`` for GETs (JWKS, discovery), each hop under the scheme rule above,
               and never from https to http whatever the settings; an introspection POST is
               never redirected (it carries the client secret).
    TLS        verified against the system trust store, or ``ca_file`` (a PEM bundle that
               *replaces* it, for a private CA).
    proxies    none, unless ``trust_env: true``: then ``HTTPS_PROXY`` / ``HTTP_PROXY`` /
               ``NO_PROXY`` from the environment apply (and aiohttp reads ``~/.netrc`` for proxy
               and host credentials, as its ``trust_env`` does).
    size       a response is read up to a bound (``max_bytes``) and refused beyond it.
    time       one deadline for the whole exchange, redirects included.

A refused call raises :class:`OutboundError` whose ``result`` is a bounded label for metrics
(``error``, ``timeout``, ``invalid``, ``refused``) and whose message is safe for logs (the URL
without credentials, query or fragment).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import aiohttp

# one URL-for-logs rule for spans and log lines (scheme, host, port, path; no user info or query)
from extauthz.tracing import safe_url

if TYPE_CHECKING:
    from extauthz.config.schema import OutboundSpec

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class OutboundError(Exception):
    """An outbound call failed or was refused; ``result`` is its metrics label."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """The rules of the module docstring, as configured (``settings.outbound``)."""

    follow_redirects: bool = False
    max_redirects: int = 3
    allow_plain_http: bool = False
    trust_env: bool = False
    #: absolute path of a PEM CA bundle replacing the system trust store
    ca_file: str | None = None
    _ssl: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_spec(cls, spec: OutboundSpec | None, base_dir: Path) -> OutboundPolicy:
        """Build from ``settings.outbound``; ``ValueError`` when the CA bundle cannot be used."""
        if spec is None:
            return cls()
        ca_file: str | None = None
        context: ssl.SSLContext | None = None
        if spec.ca_file is not None:
            path = Path(spec.ca_file)
            if not path.is_absolute():
                path = base_dir / path
            ca_file = str(path)
            try:
                context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"cannot load CA bundle {ca_file!r}: {getattr(exc, 'strerror', None) or exc}"
                ) from None
        return cls(
            follow_redirects=spec.follow_redirects,
            max_redirects=spec.max_redirects,
            allow_plain_http=spec.allow_plain_http,
            trust_env=spec.trust_env,
            ca_file=ca_file,
            _ssl=context,
        )

    def url_problem(self, url: str) -> str | None:
        """Why ``url`` may not be called (``None``: it may)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "not an absolute http(s) URL"
        if parts.username is not None or parts.password is not None:
            return "credentials in the URL are refused"
        if (
            parts.scheme == "http"
            and not self.allow_plain_http
            and not is_loopback_host(parts.hostname)
        ):
            return (
                "plain http to a non-loopback host (use https, or set "
                "settings.outbound.allow_plain_http: true to accept it)"
            )
        return None

    def check_url(self, url: str, what: str) -> None:
        """``ValueError`` naming ``what`` when ``url`` may not be called (configuration time)."""
        problem = self.url_problem(url)
        if problem is not None:
            raise ValueError(f"{what}: {problem}")

    def session(self, timeout: float, *, limit: int = 100) -> aiohttp.ClientSession:
        """A client session under this policy (TLS trust, proxies) and ``timeout`` per request."""
        connector = aiohttp.TCPConnector(
            limit=limit, ssl=self._ssl if self._ssl is not None else True
        )
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=connector,
            trust_env=self.trust_env,
            raise_for_status=False,
        )

    async def fetch(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        timeout: float,
        max_bytes: int,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, str] | bytes | None = None,
    ) -> tuple[int, bytes]:
        """(status, body) of ``method url`` under the policy; raises :class:`OutboundError`.

        ``timeout`` bounds the whole exchange, redirects included. A body (form fields, or raw
        bytes such as a JSON document) is only sent with POST, and a POST is never redirected.
        """
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(session, method, url, max_bytes, headers, data)
        except TimeoutError:
            raise OutboundError("timeout", f"{method} {safe_url(url)}: timed out") from None

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        max_bytes: int,
        headers: Mapping[str, str] | None,
        data: Mapping[str, str] | bytes | None,
    ) -> tuple[int, bytes]:
        hops = 0
        while True:
            where = f"{method} {safe_url(url)}"
            problem = self.url_problem(url)
            if problem is not None:
                raise OutboundError("refused", f"{where}: {problem}")
            try:
                async with session.request(
                    method, url, headers=headers, data=data, allow_redirects=False
                ) as resp:
                    if resp.status in _REDIRECTS:
                        url = self._next_hop(method, url, resp.headers.get("Location"), hops)
                        hops += 1
                        continue
                    if (resp.content_length or 0) > max_bytes:
                        raise OutboundError("invalid", f"{where}: response too large")
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        body += chunk
                        if len(body) > max_bytes:
                            raise OutboundError("invalid", f"{where}: response too large")
                    return resp.status, bytes(body)
            except (aiohttp.ClientError, OSError) as err:
                raise OutboundError("error", f"{where}: {type(err).__name__}") from None

    def _next_hop(self, method: str, url: str, location: str | None, hops: int) -> str:
        where = f"{method} {safe_url(url)}"
        if method != "GET" or not self.follow_redirects:
            raise OutboundError("refused", f"{where}: redirect not followed (policy)")
        if not location:
            raise OutboundError("invalid", f"{where}: redirect without Location")
        if hops >= self.max_redirects:
            raise OutboundError("refused", f"{where}: more than {self.max_redirects} redirects")
        target = urljoin(url, location)
        if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
            raise OutboundError("refused", f"{where}: redirect from https to http refused")
        return target
