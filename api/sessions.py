"""Which session a request belongs to, and one-at-a-time order within a session."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, unquote

from api.errors import ApiError
from engine.session_ids import id_problem
from engine.session_lock import POLL_S, TurnLock

# Between a tenant's name and a client's session id in the ids the engine and the stores know
TENANT_SEPARATOR = ":"


def scoped(request, session_id: str | None) -> str | None:
    """A client's session id as the engine and the stores know it: in its tenant's own namespace
    ("alice:agent-1"), so a tenant never reaches another's agents; unchanged without named tenants."""
    tenant = request.ctx.tenant
    return f"{tenant}{TENANT_SEPARATOR}{session_id}" if tenant and session_id is not None else session_id


def unscoped(request, session_id: str) -> str | None:
    """The client's own id for a stored session id, or None when it is not the caller's tenant's."""
    tenant = request.ctx.tenant
    if not tenant:
        return session_id
    prefix = f"{tenant}{TENANT_SEPARATOR}"
    return session_id[len(prefix) :] if session_id.startswith(prefix) else None


def session_id_from(headers, body: dict, *, anthropic: bool = False) -> str | None:
    """First found wins: X-Session-ID, x-claude-code-session-id, on Anthropic's API metadata.user_id (its
    session_id when it is Claude Code's JSON), OpenAI user / safety_identifier. (OpenAI's and Ollama's
    `metadata` are the client's own free-form labels: they name nothing here.) Without one the engine
    still reuses the longest cached prefix. The id found is checked (checked_session_id): a 400 if bad."""
    for header in ("x-session-id", "x-claude-code-session-id"):
        if value := headers.get(header):
            return checked_session_id(value, header)
    metadata = body.get("metadata") if anthropic else None
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
        return checked_session_id(_claude_code_session(metadata["user_id"]) or metadata["user_id"], "metadata.user_id")
    for field in ("user", "safety_identifier"):
        if isinstance(body.get(field), str) and body[field]:
            return checked_session_id(body[field], field)
    return None


def from_claude_code(headers, body: dict) -> bool:
    """The request is Claude Code's: its session header, or its JSON user_id naming a session."""
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    return "x-claude-code-session-id" in headers or (isinstance(user_id, str) and bool(_claude_code_session(user_id)))


def checked_session_id(session_id: str, source: str) -> str:
    """`session_id` if it may name a session (engine/session_ids.py), else a 400 naming `source`. A
    header's non-UTF-8 byte arrives as a lone surrogate (Sanic decodes heads with surrogateescape)."""
    problem = id_problem(session_id)
    if problem is not None:
        raise ApiError(400, f"{source}: {problem}", param=source)
    return session_id


def id_in_path(raw: str, source: str) -> str:
    """An id percent-encoded in a path (any character), checked as checked_session_id does. Its bytes must
    be UTF-8: decoded with replacement, ids that differ only in such bytes would all name one agent."""
    try:
        decoded = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, f"{source}: the id is not valid UTF-8 text", param=source) from None
    return checked_session_id(decoded, source)


def query_text(request, name: str) -> str | None:
    """The query parameter `name` (its first non-empty value; None when there is none), a 400 when its
    bytes are not UTF-8 (Sanic's own parsing replaces them)."""
    try:
        values = parse_qs(request.query_string, errors="strict").get(name)
    except UnicodeDecodeError:
        raise ApiError(400, f"{name}: the value is not valid UTF-8 text", param=name) from None
    return values[0] if values else None


def _claude_code_session(user_id: str) -> str | None:
    """Claude Code's user_id is a JSON string, `{"device_id": …, "account_uuid": …, "session_id": "<uuid>"}`:
    its session_id names the agent (the same id its x-claude-code-session-id header carries)."""
    if not user_id.startswith("{"):
        return None
    try:
        fields = json.loads(user_id)
    except ValueError:
        return None
    session = fields.get("session_id") if isinstance(fields, dict) else None
    return session if isinstance(session, str) and session else None


class SessionLocks:
    """asyncio locks are FIFO: requests to one session run one at a time, in arrival order."""

    def __init__(self):
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str | None) -> AsyncIterator[None]:
        if session_id is None:
            yield
            return
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        self._waiters[session_id] = self._waiters.get(session_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._waiters[session_id] -= 1
            if self._waiters[session_id] == 0:  # nobody else holds or waits: forget it
                del self._waiters[session_id]
                del self._locks[session_id]


@contextlib.asynccontextmanager
async def held_across_processes(lock: TurnLock) -> AsyncIterator[None]:
    """A transcript's turn lock, awaited without blocking the event loop: another process sharing the
    data dir, or another instance sharing the Redis, may hold it for a whole turn (taking it may ask
    Redis: off the event loop)."""
    while not await _try_acquire(lock):
        await asyncio.sleep(POLL_S)
    try:
        yield
    finally:
        lock.release()


async def _try_acquire(lock: TurnLock) -> bool:
    """lock.try_acquire() on a worker thread; a lock it takes for a request cancelled meanwhile (its client
    went away) is given back."""
    taking = asyncio.ensure_future(asyncio.to_thread(lock.try_acquire))
    try:
        return await asyncio.shield(taking)
    except asyncio.CancelledError:
        taking.add_done_callback(lambda done: lock.release() if done.exception() is None and done.result() else None)
        raise
