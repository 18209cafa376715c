"""How long an agent's KV caches are kept: pinned, kept for a while, or expiring after idle time.

    pinned        evicted last from memory, never by the disk budget; set by the user (PATCH
                  /v1/agents/{id}, `agents pin`), until unpinned
    keep_until    kept as if pinned until then: a client's cache hint (Anthropic cache_control's ttl)
    retention_s   the caches (never the transcript) expire after this much idle time; set by the user
                  or by a client's hint (OpenAI prompt_cache_retention). Once the user has set it (a
                  number, or none), clients' hints no longer change it: retention_by_user

An agent without a policy keeps its caches until the budgets need the room (least recently used first).
"""

from __future__ import annotations

from dataclasses import dataclass

# OpenAI's prompt_cache_retention values, as retention: "in_memory" lasts up to an hour there
CLIENT_RETENTION_S = {"in_memory": 3600, "24h": 86400}
# Anthropic's cache_control ttl values (absent: "5m")
CLIENT_TTL_S = {"5m": 300, "1h": 3600}
# The longest retention a user may set: a century (longer is no different, and the index stores 64-bit
# integers)
MAX_RETENTION_S = 100 * 365 * 86400


@dataclass(frozen=True)
class AgentPolicy:
    pinned: bool = False
    retention_s: int | None = None
    keep_until: float = 0.0  # Unix time
    retention_by_user: bool = False

    def kept(self, now: float) -> bool:
        """Evicted last, and never by the disk budget or expiry."""
        return self.pinned or self.keep_until > now

    def expired(self, last_used: float, now: float) -> bool:
        return self.retention_s is not None and not self.kept(now) and now - last_used > self.retention_s

    @property
    def is_default(self) -> bool:
        return self == AgentPolicy()

    def as_dict(self) -> dict:
        return {
            "pinned": self.pinned,
            "retention_s": self.retention_s,
            "keep_until": self.keep_until,
            "retention_by_user": self.retention_by_user,
        }
