"""One row per agent, from transcripts and the KV memory's overview: shared by the API and the TUI."""

from __future__ import annotations

import time

from engine.kv.policy import AgentPolicy
from engine.kv.stats import BlockCounts, KVOverview
from engine.sessions import Session


def agent_rows(sessions: list[Session], overview: KVOverview, model_id: str) -> list[dict]:
    """Every agent with a transcript or a cache, most recently used first."""
    hot = overview.hot.sessions
    warm = {sid: info for sid, info in overview.warm_sessions.items() if info.fingerprint == overview.fingerprint}
    by_id = {session.id: session for session in sessions}
    rows = []
    for agent_id in {*by_id, *hot, *warm}:
        session = by_id.get(agent_id)
        in_memory, on_disk = hot.get(agent_id), warm.get(agent_id)
        tier = "hot" if in_memory else "warm" if on_disk else "cold"
        kv = in_memory or on_disk
        last_used = max(
            session.updated_at if session else 0.0,
            in_memory.last_used if in_memory else 0.0,
            on_disk.last_used if on_disk else 0.0,
        )
        rows.append(
            {
                "id": agent_id,
                "model": (session.model_id if session and session.model_id else model_id),
                "turns": session.turns if session else 0,
                "tokens": session.context_tokens if session and session.context_tokens else kv.tokens if kv else 0,
                "tier": tier,
                "bytes": kv.bytes if kv else 0,
                "last_used": last_used,
                "forked_from": session.forked_from if session else None,
                "title": session.title if session else None,
                **policy_fields(overview.policies.get(agent_id)),
            }
        )
    return sorted(rows, key=lambda row: row["last_used"], reverse=True)


def has_cache(overview: KVOverview, agent_id: str) -> bool:
    """The agent has a KV cache in memory or on disk (under any model)."""
    return agent_id in overview.hot.sessions or agent_id in overview.warm_sessions


def block_counts(overview: KVOverview, agent_id: str) -> BlockCounts:
    """An agent's KV blocks: compacted in memory, live cache resident, on disk, and shared with others."""
    hot = overview.hot.sessions.get(agent_id)
    warm = overview.warm_sessions.get(agent_id)
    if warm and warm.fingerprint != overview.fingerprint:
        warm = None  # stored under another model
    return BlockCounts(
        hot=hot.blocks if hot else 0,
        hot_live=bool(hot and hot.live),
        warm=warm.blocks if warm else 0,
        shared=warm.shared_blocks if warm else 0,
    )


def policy_fields(policy: AgentPolicy | None) -> dict:
    """What is kept of an agent's caches (engine/kv/policy.py), as its row shows it."""
    policy = policy or AgentPolicy()
    return {
        "pinned": policy.pinned,
        "retention_s": policy.retention_s,
        "kept_until": policy.keep_until if policy.keep_until > time.time() else None,
    }
