"""What an authenticator factory may use besides its own spec.

Its own module so the registry (which names the factories) and the authenticators (which take a
context) do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from extauthz.authn.reload_state import ReloadState
from extauthz.clock import Clock, system_clock
from extauthz.config.schema import Consumer, Settings
from extauthz.metrics import Metrics
from extauthz.outbound import OutboundPolicy

if TYPE_CHECKING:
    from extauthz.authn.shared_state import StateProvider

__all__ = ["BuildContext"]


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a factory may use besides its own spec."""

    settings: Settings
    metrics: Metrics
    #: directory of the main configuration file; relative paths in specs resolve against it
    base_dir: Path
    consumers: tuple[Consumer, ...] = ()
    clock: Clock = system_clock
    #: shared stores (Redis) and revocation lists; ``None``: in-memory defaults, nothing revoked
    state: StateProvider | None = None
    #: the policy of every outbound HTTP call (``settings.outbound``)
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    #: what outlives this configuration in the process (the server's; a private one otherwise,
    #: so nothing is carried between two compiles that do not share it)
    reload_state: ReloadState = field(default_factory=ReloadState)
