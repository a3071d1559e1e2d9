"""The IETF RateLimit header fields, as of draft-ietf-httpapi-ratelimit-headers-10.

Syntax implemented (Structured Field Values, RFC 9651; both fields are Lists):

* ``RateLimit-Policy: "burst";q=10;w=1, "daily";q=1000;w=86400`` — one Quota Policy Item per
  window: the item is a **String** (the policy name; drafts -07/-08 used a Token, -06 and earlier
  had separate ``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` fields), ``q`` the quota
  (``requests``), ``w`` the window in whole seconds; a burst that differs from ``q`` is sent as
  the vendor parameter ``extauthz-burst`` (the draft asks for prefixed extension parameters);
* ``RateLimit: "burst";r=3;t=1`` — one Service Limit Item per window: ``r`` the remaining quota,
  ``t`` the seconds until one more unit of quota is available.

On a 429 the draft's rule "Retry-After SHOULD NOT reference a point in time earlier than the reset
parameter" holds: ``Retry-After`` is the largest wait over the windows that denied, and each of
those windows' ``t`` is that same wait or less.

Policy names match ``[A-Za-z0-9][A-Za-z0-9_.:-]*`` (the configuration enforces it), so they need no
escaping inside an sf-string.
"""

from __future__ import annotations

from collections.abc import Sequence

from extauthz.ratelimit.gcra import Verdict, Window

POLICY = "ratelimit-policy"
STATE = "ratelimit"
RETRY_AFTER = "retry-after"
#: the IETF draft revision whose syntax :func:`policy_items` / :func:`state_items` produce
DRAFT = "draft-ietf-httpapi-ratelimit-headers-10"


def policy_item(window: Window) -> str:
    """One Quota Policy Item (constant for a configuration: rendered once at load)."""
    item = f'"{window.policy}";q={window.requests};w={window.seconds}'
    if window.burst != window.requests:
        item += f";extauthz-burst={window.burst}"
    return item


def state_items(verdict: Verdict) -> list[str]:
    """One Service Limit Item per window of ``verdict``."""
    return [f'"{s.window.policy}";r={s.remaining};t={s.reset}' for s in verdict.windows]


def fields(policies: Sequence[str], states: Sequence[str]) -> list[tuple[str, str]]:
    """The two header fields (nothing when there is nothing to say)."""
    if not policies:
        return []
    return [(POLICY, ", ".join(policies)), (STATE, ", ".join(states))]
