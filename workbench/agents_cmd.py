"""`agent-memory agents`: list, show, fork, rename, export, import and delete sessions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from engine.kv.stats import SessionSummary
from engine.sessions import SessionCorrupt, SessionStore
from engine.settings import Settings
from workbench.output import EXIT_BAD_INPUT, report_error, waiting_for_another_process


def _ago(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _kv_summaries(settings: Settings) -> tuple[dict[str, SessionSummary], set[str]]:
    """Each session's warm cache summary, and the sessions that are pinned."""
    from engine.kv.warm import WarmTier

    warm = WarmTier(settings.cache_path, settings.agent_disk_budget_mb)
    try:
        return warm.session_summaries(), {sid for sid, policy in warm.policies().items() if policy.pinned}
    finally:
        warm.close()


def list_agents(settings: Settings, json_output: bool) -> None:
    sessions = SessionStore.of(settings).all()
    kv, pinned = _kv_summaries(settings)
    if json_output:
        rows = [
            {
                "id": s.id,
                "turns": s.turns,
                "tokens": s.context_tokens,
                "last_used": s.updated_at,
                "kv": kv[s.id].to_json() if s.id in kv else None,
                "forked_from": s.forked_from,
                "pinned": s.id in pinned,
                "title": s.title,
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
        f"{'ID':<{width}}  {'TURNS':>5}  {'TOKENS':>7}  {'WARM BLOCKS':>11}  {'SHARED':>6}  {'KV MB':>7}  "
        f"{'PINNED':>6}  LAST USED"
    )
    for s in sessions:
        info = kv.get(s.id)
        blocks = info.blocks if info else "-"
        shared = info.shared_blocks if info else "-"
        size = f"{info.bytes / 1e6:.1f}" if info else "-"
        typer.echo(
            f"{s.id:<{width}}  {s.turns:>5}  {s.context_tokens:>7}  {blocks:>11}  {shared:>6}  {size:>7}  "
            f"{'yes' if s.id in pinned else '':>6}  {_ago(s.updated_at)}{f'  {s.title}' if s.title else ''}"
        )


def show_agent(settings: Settings, session_id: str) -> int:
    try:
        session = SessionStore.of(settings).get(session_id)
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
    """Delete the transcript and the session's KV snapshots; blocks shared with others stay. An agent with
    a cache alone (its transcript deleted while the cache dir could not be changed) is removed too."""
    from engine.kv.warm import WarmTier

    store = SessionStore.of(settings)
    warm = WarmTier(settings.cache_path, settings.agent_disk_budget_mb)
    try:
        cached = bool(warm.session_fingerprints(session_id))
        if not cached and not store.path_for(session_id).exists() and store.get(session_id) is None:
            return report_error(f"no session {session_id!r}; see `agent-memory agents`")
        deleted = _delete_agent(store, warm, session_id)
        if not deleted and not warm.writable:
            return owned_elsewhere(f"only its KV cache is left: delete it through it, DELETE /v1/agents/{session_id}")
        note = ""
        if warm.read_only:
            note = " (its KV cache is kept: another process owns the cache dir)"
        elif not warm.enabled:
            note = f" (its KV cache on disk, if any, is kept: {settings.cache_path} cannot be used)"
    finally:
        warm.close()
    typer.echo(f"Deleted session {session_id!r}{note}.")
    return 0


def _delete_agent(store: SessionStore, warm, session_id: str) -> bool:
    """Delete an agent's transcript and its snapshots (where this process may change the cache dir)
    between two of its turns: a turn running in another process (a server) ends first, or it would save
    the transcript again. Whether it had a transcript."""
    with store.turn_lock(session_id).held(on_wait=lambda: waiting_for_another_process(session_id)):
        deleted = store.delete(session_id)
        warm.forget_session(None, session_id)
    return deleted


def owned_elsewhere(what_to_do: str) -> int:
    """A change to the cache dir refused: another process writes it."""
    return report_error(f"another process (a running server?) owns the KV cache dir: {what_to_do}")


def fork_agent(settings: Settings, session_id: str, new_id: str) -> int:
    """Copy the transcript and share the KV cache (every block, see WarmTier.fork_session) under `new_id`."""
    from engine.agent_ops import fork_agent as fork

    snapshots = _under_new_id(settings, session_id, new_id, "fork", fork, lambda warm: warm.fork_session)
    if snapshots is None:
        return EXIT_BAD_INPUT
    shared = "its KV cache shared" if snapshots else "no KV cache to share (its next turn is prefilled)"
    typer.echo(f"Forked {session_id!r} as {new_id!r}: transcript copied, {shared}.")
    return 0


def rename_agent(settings: Settings, session_id: str, new_id: str) -> int:
    """Move the transcript, the KV cache and its policy to `new_id`: its next turn resumes."""
    from engine.agent_ops import rename_agent as rename

    def mover(warm):
        def move(old: str, new: str) -> int:
            policy = warm.policies().get(old)
            moved = warm.fork_session(old, new)
            if policy is not None:
                warm.set_policy(new, policy)
            warm.forget_session(None, old)
            return moved

        return move

    moved = _under_new_id(settings, session_id, new_id, "rename", rename, mover)
    if moved is None:
        return EXIT_BAD_INPUT
    cache = "its KV cache with it" if moved else "no KV cache to move (its next turn is prefilled)"
    typer.echo(f"Renamed {session_id!r} to {new_id!r}: transcript and {cache}.")
    return 0


def _under_new_id(settings: Settings, session_id: str, new_id: str, verb: str, operation, caches) -> int | None:
    """`operation` (engine/agent_ops.py's fork or rename) on the data dir, with `caches(warm)` doing its
    part in the warm tier; how many stored caches it gave `new_id`, or None once the error is reported."""
    from engine.agent_ops import AgentExists, NoSuchAgent
    from engine.kv.warm import WarmTier

    warm = WarmTier(settings.cache_path, settings.agent_disk_budget_mb)
    try:
        if warm.read_only:
            owned_elsewhere(f"{verb} through it, POST /v1/agents/{session_id}/{verb}")
            return None
        cached = lambda sid: bool(warm.session_fingerprints(sid))  # noqa: E731
        return operation(SessionStore.of(settings), session_id, new_id, cached, caches(warm))
    except NoSuchAgent:
        report_error(f"no session {session_id!r}; see `agent-memory agents`")
    except (AgentExists, SessionCorrupt) as exc:
        report_error(str(exc))
    finally:
        warm.close()
    return None


def export_agent_file(settings: Settings, session_id: str, output: Path | None) -> int:
    """Write the session's agent file: its transcript and its KV cache (engine/kv/agent_file.py)."""
    from engine.kv.agent_file import SUFFIX, AgentFileError
    from engine.kv.agent_transfer import export_agent
    from engine.kv.warm import WarmTier

    store = SessionStore.of(settings)
    target = output or Path(_file_name(session_id) + SUFFIX)
    if target.is_dir():
        target = target / (_file_name(session_id) + SUFFIX)
    elif target.exists() and not target.is_file():
        # The finished file replaces the target: never a device or a pipe
        return report_error(f"{target} is not a regular file: give a file or a folder to write the agent file to")
    partial = target.with_name(target.name + ".part")
    warm = WarmTier(settings.cache_path, settings.agent_disk_budget_mb)
    try:
        session = store.get(session_id)
        cached = warm.session_fingerprints(session_id)
        if session is None and not cached:
            return report_error(f"no session {session_id!r}; see `agent-memory agents`")
        # The model its transcript names, when its cache is stored under it; else its most recently used
        fingerprint = session.model_fingerprint if session and session.model_fingerprint in cached else None
        fingerprint = fingerprint or (cached[0] if cached else session.model_fingerprint or "")
        if not fingerprint:
            return report_error(f"cannot export {session_id!r}: it has had no turn yet (no model to export it for)")
        model_id = session.model_id if session and session.model_id else "unknown"
        with partial.open("wb") as handle:
            transcript = session.model_dump() if session else None
            manifest = export_agent(warm, fingerprint, session_id, session_id, model_id, transcript, handle)
        os.replace(partial, target)
    except SessionCorrupt as exc:
        return report_error(str(exc))
    except (AgentFileError, OSError) as exc:
        partial.unlink(missing_ok=True)
        return report_error(f"cannot export {session_id!r}: {exc}")
    finally:
        warm.close()
    tokens = manifest.snapshot.tokens if manifest.snapshot else 0
    size = target.stat().st_size / 1e6
    typer.echo(
        f"Exported {session_id!r} to {target}: {session.turns if session else 0} turns, {tokens} cached tokens in "
        f"{len(manifest.blocks)} blocks ({size:.1f} MB)."
    )
    return 0


def import_agent_file(settings: Settings, source: Path, new_id: str | None) -> int:
    """Add the agent of an agent file under its own id or `new_id`; blocks already stored are not stored twice."""
    from engine.kv.agent_file import AgentFileError, read_agent_file
    from engine.kv.agent_transfer import Target, plan_import
    from engine.kv.warm import WarmTier
    from engine.sessions import imported_session

    try:
        with source.open("rb") as handle:
            agent_file = read_agent_file(handle)
        session_id = new_id or agent_file.manifest.agent_id
        plan = plan_import(agent_file, session_id, Target())
        transcript = imported_session(agent_file.transcript, session_id) if agent_file.transcript is not None else None
    except OSError as exc:
        return report_error(f"cannot read {source}: {exc}")
    except (AgentFileError, ValueError) as exc:
        return report_error(f"{source} cannot be imported: {exc}")
    store = SessionStore.of(settings)
    warm = WarmTier(settings.cache_path, settings.agent_disk_budget_mb)
    try:
        if plan.snapshot is not None and not warm.writable:
            return owned_elsewhere("import through it, POST /v1/agents/import")
        with store.turn_lock(session_id).held():
            if store.get(session_id) is not None or warm.session_fingerprints(session_id):
                return report_error(f"session {session_id!r} exists already; import it under a new id with --as ID")
            new_blocks = warm.import_session(plan.fingerprint, plan.snapshot, plan.blocks) if plan.snapshot else 0
            if transcript is not None:
                store.save(transcript)
    except SessionCorrupt as exc:
        return report_error(str(exc))
    finally:
        warm.close()
    tokens = len(plan.snapshot.tokens) if plan.snapshot else 0
    turns = transcript.turns if transcript else 0
    typer.echo(
        f"Imported {session_id!r} (model {agent_file.manifest.model_id}): {turns} turns, {tokens} cached tokens "
        f"in {len(plan.blocks)} blocks ({new_blocks} new)."
    )
    return 0


def _file_name(session_id: str) -> str:
    """A file name for a session id (any text): its safe characters, else a digest."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in session_id).strip(".")
    if safe:
        return safe[:80]
    from engine.kv.index import session_key

    return session_key(session_id)[:16]


def pin_agent(settings: Settings, session_id: str, pinned: bool) -> int:
    """Pin (or unpin) a session's caches: evicted last from memory, never by the disk budget."""
    from dataclasses import replace

    from engine.kv.policy import AgentPolicy
    from engine.kv.warm import WarmTier

    warm = WarmTier(settings.cache_path, settings.agent_disk_budget_mb)
    try:
        if not warm.writable:
            return owned_elsewhere(
                f'change it through it, PATCH /v1/agents/{session_id} {{"pinned": {str(pinned).lower()}}}'
            )
        if SessionStore.of(settings).get(session_id) is None and not warm.session_fingerprints(session_id):
            return report_error(f"no session {session_id!r}; see `agent-memory agents`")
        warm.set_policy(session_id, replace(warm.policies().get(session_id, AgentPolicy()), pinned=pinned))
    except SessionCorrupt as exc:
        return report_error(str(exc))
    finally:
        warm.close()
    if pinned:
        typer.echo(f"Pinned {session_id!r}: its caches are evicted last and never by the disk budget.")
    else:
        typer.echo(f"Unpinned {session_id!r}: its caches are evicted like any agent's.")
    return 0


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float | None:
    """Seconds in "90s", "30m", "12h", "7d" or "2w"; None if it is not one."""
    number, unit = text[:-1], text[-1:].lower()
    if unit not in DURATION_UNITS or not number.isdigit():
        return None
    return int(number) * DURATION_UNITS[unit]


def prune_agents(settings: Settings, older_than: str, dry_run: bool) -> int:
    """Delete every agent (transcript and KV caches) unused for longer than `older_than`; pinned agents stay."""
    from engine.kv.warm import WarmTier

    age_s = parse_duration(older_than)
    if age_s is None:
        return report_error(f"--older-than {older_than!r}: give a number and a unit, e.g. 7d, 12h, 30m")
    store = SessionStore.of(settings)
    warm = WarmTier(settings.cache_path, settings.agent_disk_budget_mb)
    try:
        if not dry_run and not warm.writable:
            return owned_elsewhere("stop it, or prune there")
        pinned = {sid for sid, policy in warm.policies().items() if policy.pinned}
        last_used = {s.id: s.updated_at for s in store.all()}
        for session_id, summary in warm.session_summaries().items():
            last_used[session_id] = max(last_used.get(session_id, 0.0), summary.last_used)
        now = time.time()
        cutoff = now - min(age_s, now)  # an age past the epoch: nothing is that old
        stale = sorted(sid for sid, used in last_used.items() if used < cutoff and sid not in pinned)
        for session_id in stale:
            typer.echo(
                f"{'would delete' if dry_run else 'deleted'} {session_id}  (last used {_ago(last_used[session_id])})"
            )
            if not dry_run:
                _delete_agent(store, warm, session_id)
    finally:
        warm.close()
    kept = f", {len(pinned)} pinned kept" if pinned else ""
    typer.echo(f"{len(stale)} agent{'' if len(stale) == 1 else 's'} {'to delete' if dry_run else 'deleted'}{kept}.")
    return 0
