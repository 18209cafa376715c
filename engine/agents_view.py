"""One row per agent, from transcripts and the KV memory's overview: shared by the API and the TUI."""

from __future__ import annotations

import time

from engine.sessions import Session


def agent_rows(sessions: list[Session], overview: dict, model_id: str) -> list[dict]:
    """Every agent with a transcript or a cache, most recently used first."""
    hot = (overview.get("hot") or {}).get("sessions", {})
    fingerprint = overview.get("fingerprint")
    warm = {sid: info for sid, info in overview.get("warm_sessions", {}).items() if info["fingerprint"] == fingerprint}
    by_id = {session.id: session for session in sessions}
    policies = overview.get("policies", {})
    rows = []
    for agent_id in {*by_id, *hot, *warm}:
        session = by_id.get(agent_id)
        tier = "hot" if agent_id in hot else "warm" if agent_id in warm else "cold"
        kv = hot.get(agent_id) or warm.get(agent_id) or {}
        last_used = max(
            session.updated_at if session else 0.0,
            hot.get(agent_id, {}).get("last_used", 0.0),
            warm.get(agent_id, {}).get("last_used", 0.0),
        )
        rows.append(
            {
                "id": agent_id,
                "model": (session.model_id if session and session.model_id else model_id),
                "turns": session.turns if session else 0,
                "tokens": session.context_tokens if session and session.context_tokens else kv.get("tokens", 0),
                "tier": tier,
                "bytes": kv.get("bytes", 0),
                "last_used": last_used,
                "forked_from": session.forked_from if session else None,
                "title": session.title if session else None,
                **policy_fields(policies.get(agent_id)),
            }
        )
    return sorted(rows, key=lambda row: row["last_used"], reverse=True)


def has_cache(overview: dict, agent_id: str) -> bool:
    """The agent has a KV cache in memory or on disk (under any model)."""
    hot = (overview.get("hot") or {}).get("sessions", {})
    return agent_id in hot or agent_id in overview.get("warm_sessions", {})


def block_counts(overview: dict, agent_id: str) -> dict:
    """An agent's KV blocks: compacted in memory, live cache resident, on disk, and shared with others."""
    hot = (overview.get("hot") or {}).get("sessions", {}).get(agent_id)
    warm = overview.get("warm_sessions", {}).get(agent_id)
    if warm and warm["fingerprint"] != overview.get("fingerprint"):
        warm = None  # stored under another model
    return {
        "hot": hot["blocks"] if hot else 0,
        "hot_live": bool(hot and hot["live"]),
        "warm": warm["blocks"] if warm else 0,
        "shared": warm["shared_blocks"] if warm else 0,
    }


def policy_fields(policy: dict | None) -> dict:
    """What is kept of an agent's caches (engine/kv/policy.py), as its row shows it."""
    policy = policy or {}
    keep_until = policy.get("keep_until", 0.0)
    return {
        "pinned": policy.get("pinned", False),
        "retention_s": policy.get("retention_s"),
        "kept_until": keep_until if keep_until > time.time() else None,
    }
