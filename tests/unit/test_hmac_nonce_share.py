"""One HMAC key holder cannot fill the replay cache for the others (issue 13.9), through the
authenticator: each key gets ``nonce_cache_size / keys`` (or ``nonce_cache_per_key``) live
nonces; a full share answers 503 for that key only."""

from __future__ import annotations

from pathlib import Path

import pytest

from extauthz.clock import FixedClock
from extauthz.decision import GrpcCode, from_error
from extauthz.errors import DependencyUnavailable, Reason
from tests.unit.test_hmac_sig import (
    CREATED,
    FULL,
    KEY_ID,
    OTHER_SECRET,
    denied,
    make_auth,
    request,
    sign_view,
    write_secret,
)

KEYS = [
    {"id": KEY_ID, "secret_file": "rfc.key", "secret_encoding": "base64"},
    {"id": "polite", "secret_file": "other.key"},
]


@pytest.mark.parametrize("spec", [{"nonce_cache_size": 6}, {"nonce_cache_per_key": 3}])
async def test_a_flooding_key_fills_only_its_own_share(tmp_path: Path, spec: dict[str, int]
                                                       ) -> None:
    write_secret(tmp_path, OTHER_SECRET, "other.key")
    auth = make_auth(tmp_path, FixedClock(CREATED), keys=KEYS, require_nonce=True, **spec)
    for i in range(3):
        assert await auth.authenticate(sign_view(request(), FULL, nonce=f"flood-{i}"))
    with pytest.raises(DependencyUnavailable) as info:
        await auth.authenticate(sign_view(request(), FULL, nonce="flood-3"))
    decision = from_error(info.value, "r")
    assert (decision.http_status, decision.grpc_code) == (503, GrpcCode.UNAVAILABLE)
    # The other key is untouched: its nonces are accepted, and its replays are still replays.
    polite = sign_view(request(), FULL, nonce="p-0", keyid="polite", secret=OTHER_SECRET)
    assert await auth.authenticate(polite)
    await denied(auth, polite, Reason.REPLAYED)
    # The flooding key's own replays are still replays (not "full").
    await denied(auth, sign_view(request(), FULL, nonce="flood-0"), Reason.REPLAYED)
    await auth.close()
