"""`agent-memory agents`: list, show and delete sessions."""

from __future__ import annotations

import json
import time

import typer

from engine.sessions import SessionCorrupt, SessionStore
from engine.settings import Settings
from workbench.output import report_error


def _ago(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _kv_summaries(settings: Settings) -> dict[str, dict]:
    from engine.kv.warm import WarmTier

    warm = WarmTier(settings.cache_path, settings.agent_disk_budget_mb)
    try:
        return warm.session_summaries()
    finally:
        warm.close()


def list_agents(settings: Settings, json_output: bool) -> None:
    sessions = SessionStore(settings.sessions_path).all()
    kv = _kv_summaries(settings)
    if json_output:
        rows = [
            {
                "id": s.id,
                "turns": s.turns,
                "tokens": s.context_tokens,
                "last_used": s.updated_at,
                "kv": kv.get(s.id),
            }
            for s in sessions
        ]
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    if not sessions:
        typer.echo("No sessions yet. Start one with: agent-memory chat --session NAME")
        return
    width = max(len("ID"), *(len(s.id) for s in sessions))
    typer.echo(
        f"{'ID':<{width}}  {'TURNS':>5}  {'TOKENS':>7}  {'WARM BLOCKS':>11}  {'SHARED':>6}  {'KV MB':>7}  LAST USED"
    )
    for s in sessions:
        info = kv.get(s.id) or {}
        blocks = info.get("blocks", "-")
        shared = info.get("shared_blocks", "-")
        size = f"{info['bytes'] / 1e6:.1f}" if info else "-"
        typer.echo(
            f"{s.id:<{width}}  {s.turns:>5}  {s.context_tokens:>7}  {blocks:>11}  {shared:>6}  {size:>7}  "
            f"{_ago(s.updated_at)}"
        )


def show_agent(settings: Settings, session_id: str) -> int:
    try:
        session = SessionStore(settings.sessions_path).get(session_id)
    except SessionCorrupt as exc:
        return report_error(str(exc))
    if session is None:
        return report_error(f"no session {session_id!r}; see `agent-memory agents`")
    typer.echo(f"session {session.id}: {session.turns} turns, {session.context_tokens} tokens")
    if session.system:
        typer.echo(f"[system] {session.system}")
    for message in session.messages:
        typer.echo(f"[{message.role}] {message.content}")
    return 0


def remove_agent(settings: Settings, session_id: str) -> int:
    """Delete the transcript and the session's KV snapshots; blocks shared with others stay."""
    from engine.kv.warm import WarmTier

    if not SessionStore(settings.sessions_path).delete(session_id):
        return report_error(f"no session {session_id!r}; see `agent-memory agents`")
    warm = WarmTier(settings.cache_path, settings.agent_disk_budget_mb)
    try:
        warm.forget_session(None, session_id)
        note = " (its KV cache is kept: another process owns the cache dir)" if warm.read_only else ""
    finally:
        warm.close()
    typer.echo(f"Deleted session {session_id!r}{note}.")
    return 0
