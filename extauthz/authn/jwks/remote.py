"""Keys fetched over HTTP(S) and kept fresh: :class:`RemoteJwks`.

``url`` / ``discovery``; fetched in ``start()`` and then every ``refresh_interval_seconds`` by a
background task (failures retry with capped, jittered backoff), every request under the process's
outbound policy (:mod:`extauthz.outbound`: https off loopback, no redirects by default and never
https -> http, proxies, CA bundle). One fetch (discovery and keys) is bounded by
``fetch_timeout_seconds``; a document is at most 1 MiB. A fetch that fails or yields no usable key
keeps the previous keys (and, with discovery, a failed discovery falls back to the last good
``jwks_uri``). Keys keep verifying for ``max_stale_seconds`` after the last *successful* fetch;
past that, and before the first success, :meth:`RemoteJwks.keys_at` raises
``DependencyUnavailable(jwks_unavailable)`` (503). :meth:`RemoteJwks.refetch` (used on an unknown
``kid``) is rate-limited to one per ``min_refetch_interval_seconds``, de-duplicated (every caller
joins the one in-flight fetch), and waited for at most ``refetch_wait_seconds``: the check then
answers from the keys it has while the fetch finishes in the background. On a reload, the last
good keys of the same issuer and location come from the process's
:class:`~extauthz.authn.reload_state.ReloadState` (:class:`LastGoodKeys`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from extauthz import tracing
from extauthz.authn.jwks.discovery import FetchError, discovery_url, http_url, jwks_uri_of
from extauthz.authn.jwks.keys import KeySet, parse_jwks, strict_json
from extauthz.clock import Clock
from extauthz.errors import DependencyUnavailable, Reason
from extauthz.metrics import Metrics
from extauthz.outbound import OutboundError, OutboundPolicy
from extauthz.tracing import safe_url

if TYPE_CHECKING:
    import aiohttp

__all__ = ["MAX_BACKOFF_SECONDS", "MAX_DOCUMENT_BYTES", "LastGoodKeys", "RemoteJwks"]

log = logging.getLogger("extauthz.jwks")

#: largest JWKS / discovery document accepted from the network
MAX_DOCUMENT_BYTES = 1024 * 1024
#: cap of the retry backoff after failed fetches (further capped by the refresh interval)
MAX_BACKOFF_SECONDS = 60.0


@dataclass(slots=True)
class LastGoodKeys:
    """The last keys fetched for one source key, and when (a ReloadState cell: a reload during
    an IdP outage starts with them instead of with nothing)."""

    keyset: KeySet | None = None
    fetched_at: float = -math.inf
    #: the last good discovery result (``jwks_uri``)
    jwks_uri: str | None = None

    def remember(self, keyset: KeySet, fetched_at: float, jwks_uri: str | None) -> None:
        """Record a successful fetch."""
        self.keyset, self.fetched_at, self.jwks_uri = keyset, fetched_at, jwks_uri


class RemoteJwks:
    """Keys fetched over HTTP(S) from ``url`` or via OpenID Connect discovery of ``issuer``.

    Every request goes through the process's :class:`~extauthz.outbound.OutboundPolicy` (https,
    redirects, proxies, CA bundle). A fetch (discovery and keys together) is bounded by
    ``fetch_timeout``; a check that meets an unknown ``kid`` waits for the refetch at most
    ``refetch_wait`` (the fetch goes on in the background, single-flight and rate-limited).
    """

    def __init__(
        self,
        *,
        issuer: str,
        algorithms: Iterable[str],
        url: str | None = None,
        discovery: bool = False,
        refresh_interval: float = 300.0,
        max_stale: float = 3600.0,
        fetch_timeout: float = 0.5,
        min_refetch_interval: float = 10.0,
        refetch_wait: float = 0.25,
        clock: Clock,
        metrics: Metrics,
        policy: OutboundPolicy | None = None,
        carried: LastGoodKeys | None = None,
    ) -> None:
        if (url is None) == (not discovery):
            raise ValueError("set exactly one of url and discovery")
        if url is not None and not http_url(url):
            raise ValueError("jwks url must be an absolute http(s) URL")
        if discovery and not http_url(issuer):
            raise ValueError("discovery needs an issuer that is an absolute http(s) URL")
        self.issuer = issuer
        self._algorithms = frozenset(algorithms)
        self._url = url
        self._discovery = discovery
        self._refresh_interval = refresh_interval
        self._max_stale = max_stale
        self._fetch_timeout = fetch_timeout
        self._min_refetch = min_refetch_interval
        self._refetch_wait = refetch_wait
        self._clock = clock
        self._policy = policy if policy is not None else OutboundPolicy()
        self._fetches = metrics.jwks_fetches
        self._age = metrics.jwks_age.labels(issuer=issuer)
        self._key_count = metrics.jwks_keys.labels(issuer=issuer)
        self._keyset: KeySet | None = None
        self._last_success = -math.inf
        self._stale_deadline = -math.inf
        self._next_refetch = -math.inf
        #: the last good discovery result (``jwks_uri``), used when discovery alone fails
        self._jwks_uri: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: what every source of this :attr:`source_key` fetched last (kept across reloads)
        self._carried = carried if carried is not None else LastGoodKeys()

    # -- identity across reloads --------------------------------------------------------------

    @property
    def source_key(self) -> tuple[str, str | None, bool, frozenset[str]]:
        """What makes two sources interchangeable: same issuer, URL/discovery, algorithms."""
        return (self.issuer, self._url, self._discovery, self._algorithms)

    def _adopt_carried(self) -> bool:
        """Take over the last good keys of the sources this one replaces on a reload.

        The process's :class:`~extauthz.authn.reload_state.ReloadState` keeps one
        :class:`LastGoodKeys` cell per :attr:`source_key`: every source with that key writes its
        fetches to it, whatever its authenticator's name. Taken only when newer than our own
        keys. The staleness deadline is computed from when *those* keys were fetched, with this
        source's ``max_stale``: a reload never makes old keys live longer. Called by
        :meth:`start` (which then does not block on a fetch).
        """
        carried = self._carried
        if carried.keyset is None or carried.fetched_at <= self._last_success:
            return False
        self._keyset = carried.keyset
        self._last_success = carried.fetched_at
        self._stale_deadline = carried.fetched_at + self._max_stale
        self._jwks_uri = carried.jwks_uri
        self._key_count.set(len(carried.keyset.keys))
        return True

    # -- read side (hot path) -----------------------------------------------------------------

    @property
    def keyset(self) -> KeySet | None:
        return self._keyset

    @property
    def last_success(self) -> float:
        """Clock time of the last successful fetch (``-inf`` if none yet)."""
        return self._last_success

    def keys_at(self, now: float) -> KeySet:
        keyset = self._keyset
        if keyset is None:
            raise DependencyUnavailable(
                Reason.JWKS_UNAVAILABLE,
                "signing keys unavailable",
                f"no JWKS fetched yet for issuer {self.issuer}",
            )
        if now > self._stale_deadline:
            raise DependencyUnavailable(
                Reason.JWKS_UNAVAILABLE,
                "signing keys unavailable",
                f"JWKS of issuer {self.issuer} is stale "
                f"({now - self._last_success:.0f}s since the last successful fetch)",
            )
        self._age.set(now - self._last_success)
        return keyset

    # -- fetching ----------------------------------------------------------------------------

    def _spawn(self) -> asyncio.Task[bool]:
        """The in-flight fetch, started if there is none (single-flight)."""
        task = self._inflight
        if task is None or task.done():
            task = asyncio.create_task(self._fetch(), name=f"jwks-fetch:{self.issuer}")
            self._inflight = task
        return task

    async def refresh(self) -> bool:
        """Fetch now (joining a fetch already in flight); True iff it succeeded."""
        if self._closed:
            return False
        return await asyncio.shield(self._spawn())

    async def refetch(self) -> bool:
        """After an unknown ``kid``: join or start (at most once per ``min_refetch_interval``)
        a fetch, and wait for it at most ``refetch_wait`` seconds. True iff a fetch finished
        successfully within that time; the fetch itself always runs to its own end."""
        if self._closed:
            return False
        task = self._inflight
        if task is None or task.done():
            now = self._clock()
            if now < self._next_refetch:
                return False
            self._next_refetch = now + self._min_refetch
            task = self._spawn()
        if self._refetch_wait <= 0:
            return False
        done, _ = await asyncio.wait((task,), timeout=self._refetch_wait)
        return bool(done) and not task.cancelled() and task.exception() is None and task.result()

    async def _fetch(self) -> bool:
        try:
            async with asyncio.timeout(self._fetch_timeout):
                keyset = await self._download()
        except TimeoutError:
            return self._failed(FetchError("timeout", "fetch timed out"))
        except OutboundError as err:
            return self._failed(err)
        except Exception:
            self._fetches.labels(issuer=self.issuer, result="error").inc()
            log.exception("JWKS fetch for issuer %s failed unexpectedly", self.issuer)
            self._update_age()
            return False
        self._install(keyset)
        self._fetches.labels(issuer=self.issuer, result="ok").inc()
        return True

    def _failed(self, err: OutboundError) -> bool:
        self._fetches.labels(issuer=self.issuer, result=err.result).inc()
        log.warning("JWKS fetch for issuer %s failed (%s): %s", self.issuer, err.result, err)
        self._update_age()
        return False

    async def _download(self) -> KeySet:
        if self._session is None or self._session.closed:
            self._session = self._policy.session(self._fetch_timeout)
        session = self._session
        url = self._url
        if self._discovery:
            try:
                url = await self._discover(session)
            except OutboundError as err:
                if self._jwks_uri is None:
                    raise
                # The last good discovery result still names the keys' location.
                log.warning("OIDC discovery for issuer %s failed (%s); using the last good "
                            "jwks_uri", self.issuer, err)
                url = self._jwks_uri
        if url is None:  # unreachable: the constructor requires url or discovery
            raise FetchError("invalid", "no JWKS url")
        document = await self._get_json(session, url)
        try:
            keyset = parse_jwks(document, self._algorithms, self._keyset)
        except ValueError as err:
            raise FetchError("invalid", str(err)) from None
        if not keyset.keys:
            reasons = "; ".join(keyset.skipped[:5]) or "the set is empty"
            raise FetchError("invalid", f"no usable key ({reasons})")
        if self._discovery:
            self._jwks_uri = url
        return keyset

    async def _discover(self, session: aiohttp.ClientSession) -> str:
        meta = await self._get_json(session, discovery_url(self.issuer))
        return jwks_uri_of(meta, self.issuer, self._policy)

    @tracing.outbound_span("jwks.fetch",
                           lambda _self, _session, url: {"url.full": safe_url(url)})
    async def _get_json(self, session: aiohttp.ClientSession, url: str) -> Any:
        status, body = await self._policy.fetch(
            session, "GET", url, timeout=self._fetch_timeout, max_bytes=MAX_DOCUMENT_BYTES,
            headers={"Accept": "application/json"},
        )
        if status != 200:
            raise FetchError("error", f"GET {safe_url(url)}: HTTP {status}")
        try:
            return strict_json(body)
        except (ValueError, RecursionError):
            raise FetchError("invalid", f"GET {safe_url(url)}: not valid JSON") from None

    def _install(self, keyset: KeySet) -> None:
        previous = self._keyset
        now = self._clock()
        self._keyset = keyset
        self._last_success = now
        self._stale_deadline = now + self._max_stale
        self._carried.remember(keyset, now, self._jwks_uri)
        self._age.set(0)
        self._key_count.set(len(keyset.keys))
        if previous is None or keyset.generation != previous.generation:
            log.info(
                "JWKS for issuer %s: %d usable key(s) %s",
                self.issuer,
                len(keyset.keys),
                sorted(k.kid or "-" for k in keyset.keys),
            )
            if keyset.skipped:
                log.warning(
                    "JWKS for issuer %s: skipped %d key(s): %s",
                    self.issuer,
                    len(keyset.skipped),
                    "; ".join(keyset.skipped),
                )

    def _update_age(self) -> None:
        if self._keyset is not None:
            self._age.set(self._clock() - self._last_success)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch once (a failure is logged, never raised) and start the refresh loop.

        With keys taken over from the previous configuration (:meth:`_adopt_carried`), the first
        fetch runs in the background instead: a reload during an IdP outage does not wait for it.
        """
        if self._task is not None or self._closed:
            return
        self._adopt_carried()
        if self._keyset is not None:
            age = self._clock() - self._last_success
            first = max(0.0, self._refresh_interval - age)
            self._task = asyncio.create_task(
                self._run(True, first), name=f"jwks-refresh:{self.issuer}"
            )
            return
        ok = await self.refresh()
        if not ok:
            log.warning(
                "JWKS for issuer %s unavailable at start; retrying in the background", self.issuer
            )
        self._task = asyncio.create_task(self._run(ok), name=f"jwks-refresh:{self.issuer}")

    async def _run(self, ok: bool, first_delay: float | None = None) -> None:
        failures = 0 if ok else 1
        delay_override = first_delay
        while True:
            if delay_override is not None:
                delay, delay_override = delay_override, None
            elif failures == 0:
                delay = self._refresh_interval * random.uniform(0.9, 1.0)  # noqa: S311
            else:
                backoff = min(MAX_BACKOFF_SECONDS, 2.0 ** (failures - 1))
                delay = min(self._refresh_interval, backoff) * random.uniform(0.8, 1.0)  # noqa: S311
            await asyncio.sleep(delay)
            failures = 0 if await self.refresh() else failures + 1

    async def close(self) -> None:
        """Stop the refresh loop, let an in-flight fetch finish (bounded), release the session."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            _, pending = await asyncio.wait([inflight], timeout=self._fetch_timeout * 2 + 1)
            for p in pending:
                p.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
