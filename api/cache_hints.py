"""Clients' own caching fields, read as hints about how long a session's KV caches are kept
(engine/kv/policy.py):

    Anthropic  cache_control {"type": "ephemeral", "ttl": "5m" | "1h"} on a system block, a message's
               content block or a tool: the session's caches are kept at least that long (the longest
               marked ttl; a mark without ttl is 5 minutes)
    OpenAI     prompt_cache_key names the session when no session id is sent (api/sessions.py);
               prompt_cache_retention "in_memory" | "24h" expires its caches after that much idle time
"""

from __future__ import annotations

from api.errors import ApiError
from engine.kv.policy import CLIENT_RETENTION_S, CLIENT_TTL_S


def anthropic_keep_s(body: dict) -> int | None:
    """The longest cache_control ttl a Messages request marks, in seconds; None without a mark."""
    ttls = []
    for block in _blocks(body):
        mark = block.get("cache_control")
        if not isinstance(mark, dict):
            continue
        ttl = mark.get("ttl", "5m")
        if ttl not in CLIENT_TTL_S:
            raise ApiError(400, f"cache_control.ttl: {ttl!r} is not one of {sorted(CLIENT_TTL_S)}", param="ttl")
        ttls.append(CLIENT_TTL_S[ttl])
    return max(ttls, default=None)


def openai_retention_s(value: str | None) -> int | None:
    """prompt_cache_retention in seconds (the schema allows only known values)."""
    return CLIENT_RETENTION_S[value] if value is not None else None


def _blocks(body: dict):
    """Every block a cache_control mark may sit on: system blocks, message content blocks, tools."""
    system = body.get("system")
    if isinstance(system, list):
        yield from (block for block in system if isinstance(block, dict))
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            yield from (block for block in content if isinstance(block, dict))
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            yield tool
