"""One turn of an agent at a time across instances that share a Redis (engine/kv/shared.py).

The turn lock (engine/session_lock.py) is a `flock` on a file in the data dir: it keeps two processes on
one machine from running an agent's turns at once, but instances behind a balancer have data dirs of
their own. Where a shared tier is set, the lock also claims the agent's `am:turn:{key}` in Redis: a
random token set only if the key is free, renewed while the turn runs, deleted when it ends. A claim
whose instance was killed frees itself TTL_MS after its last renewal. While Redis is down every
instance goes ahead with its own lock, as it serves from its own tiers.
"""

from __future__ import annotations

import threading
import uuid

from engine.kv.shared import SharedTier, shared_key

TTL_MS = 6_000  # short: a killed instance holds up its agents that move this long at most
RENEW_S = TTL_MS / 1000 / 3


class TurnClaim:
    """A held claim on an agent's turn; release() gives it up."""

    def __init__(self, tier: SharedTier, key: str, token: str | None):
        self._tier, self._key, self._token = tier, key, token
        self._stop = threading.Event()
        if token is not None:
            threading.Thread(target=self._keep, name="turn-claim", daemon=True).start()

    def _keep(self) -> None:
        while not self._stop.wait(RENEW_S):
            self._tier.renew(self._key, self._token, TTL_MS)

    def release(self) -> None:
        self._stop.set()
        if self._token is not None:
            self._tier.unclaim(self._key, self._token)


def claim_turn(tier: SharedTier, session_id: str) -> TurnClaim | None:
    """The session's turn, claimed in Redis; None while another instance holds it. While Redis is down the
    claim holds nothing."""
    key = f"am:turn:{shared_key(session_id)}"
    token = uuid.uuid4().hex
    taken = tier.claim(key, token, TTL_MS)
    if taken is False:
        return None
    return TurnClaim(tier, key, token if taken else None)
