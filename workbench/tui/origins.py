"""Where an agent comes from, derived from what its row holds (sessions record no origin): the workbench
(TUI or CLI), or an API client, named where its id or title gives it away.

- a title that starts with "Claude Code": Claude Code (api/agent_titles.py titles its sessions);
- an untitled UUID of version 7: Codex, whose thread ids are UUIDv7, sent as `prompt_cache_key`;
- an id scoped to a tenant ("acme:agent-1"), another untitled UUID, or a KV cache with no transcript
  (the OpenAI, Anthropic and Ollama endpoints keep no transcript): an SDK or HTTP client;
- anything else has a transcript kept by the TUI, `agent-memory chat` or the agent API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TENANT_SEPARATOR = ":"  # as api/sessions.py scopes a tenant's ids
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-([0-9a-f])[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
CLAUDE_CODE = "Claude Code"

WORKBENCH = "TUI / CLI"
GROUP_CLAUDE_CODE = "API · Claude Code"
GROUP_CODEX = "API · Codex"
GROUP_SDK = "API · SDK / HTTP"
GROUPS = (WORKBENCH, GROUP_CLAUDE_CODE, GROUP_CODEX, GROUP_SDK)


@dataclass(frozen=True)
class Origin:
    group: str  # one of GROUPS
    name: str  # what the sidebar shows for the agent


def origin(row: dict) -> Origin:
    agent_id, title = row["id"], row.get("title") or ""
    tenant, _, own_id = agent_id.rpartition(TENANT_SEPARATOR)
    uuid = UUID.fullmatch(own_id)
    if title.startswith(CLAUDE_CODE):
        name = title.removeprefix(CLAUDE_CODE).lstrip(" ·:") or f"session {own_id[:8]}"
        return Origin(GROUP_CLAUDE_CODE, name)
    if title:  # only the API titles agents
        return Origin(GROUP_SDK, title)
    if uuid and uuid[1] == "7":
        return Origin(GROUP_CODEX, f"thread {own_id[:8]}…")
    if uuid:
        return Origin(GROUP_SDK, f"session {own_id[:8]}…" + (f" · {tenant}" if tenant else ""))
    if tenant:
        return Origin(GROUP_SDK, f"{own_id} · {tenant}")
    if not row.get("turns") and row.get("tier", "cold") != "cold":
        return Origin(GROUP_SDK, agent_id)
    return Origin(WORKBENCH, agent_id)


def grouped(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """The rows by origin group, in the order of GROUPS, each group's rows in the order given; no empty
    groups."""
    groups: dict[str, list[dict]] = {group: [] for group in GROUPS}
    for row in rows:
        groups[origin(row).group].append(row)
    return [(group, members) for group, members in groups.items() if members]


def matches(row: dict, text: str) -> bool:
    """The filter: `text` (lower case) in the agent's id, title, readable name or origin group."""
    found = origin(row)
    return any(text in field.lower() for field in (row["id"], row.get("title") or "", found.name, found.group))
