"""The agent API: the server keeps each agent's transcript (the same sessions as `agent-memory chat
--session`), the client sends only the new turn, and the KV memory resumes the agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sanic import Blueprint
from sanic.response import json as json_response

from api import sse
from api.bridge import TurnStream, failure
from api.errors import ApiError, error_body
from api.generation import generation_request
from api.schemas.agents import AgentMessageRequest, AgentPolicyRequest, NewIdRequest
from api.sessions import checked_session_id, held_across_processes, id_in_path, scoped, unscoped
from api.usage import turn_summary
from api.validation import parse, read_json
from engine import agent_ops
from engine.agents_view import agent_rows, block_counts, has_cache, policy_fields
from engine.errors import EngineError
from engine.events import TurnChunk, TurnFailed, TurnFinished, TurnStarted
from engine.kv.stats import KVOverview
from engine.sessions import Session, SessionCorrupt, SessionStore

log = logging.getLogger("agent_memory.api")

bp = Blueprint("agents", url_prefix="/v1/agents")


def agent_ids(request, in_path: str) -> tuple[str, str]:
    """The agent's id as its client names it, and as the engine and the stores know it (in the caller's
    tenant). Ids may hold any character, percent-encoded in the path; their length is capped like every
    session id."""
    agent_id = id_in_path(in_path, "agent_id")
    return agent_id, scoped(request, agent_id)


def _own(request, rows: list[dict]) -> list[dict]:
    """The rows of the caller's tenant's agents, each with the ids its client knows."""
    own = []
    for row in rows:
        agent_id = unscoped(request, row["id"])
        if agent_id is not None:
            own.append(as_client_sees(request, row, agent_id))
    return own


def as_client_sees(request, row: dict, agent_id: str) -> dict:
    """An agent's row or transcript with the ids its client knows (its own tenant's names)."""
    parent = row.get("forked_from")
    return {**row, "id": agent_id, "forked_from": unscoped(request, parent) if parent else None}


def _own_ids(request, session_ids: list[str]) -> list[str]:
    return [agent for agent in (unscoped(request, session_id) for session_id in session_ids) if agent is not None]


def transcripts(request) -> SessionStore:
    return SessionStore.of(request.app.ctx.server.settings)


async def read_transcript(store: SessionStore, agent_id: str) -> Session | None:
    """The agent's transcript, read off the event loop (a file read that other requests need not wait on)."""
    try:
        return await asyncio.to_thread(store.get, agent_id)
    except SessionCorrupt as exc:
        # The file's path is the server's business: it goes to the log, not to the client
        log.warning("agent %r: %s", agent_id, exc)
        raise ApiError(
            409,
            "the agent's stored transcript is damaged and cannot be read (the server's log names its file); "
            "delete the agent to start it over",
        ) from None


async def kv_overview(engine) -> KVOverview:
    return await asyncio.to_thread(engine.kv_overview)


@bp.get("")
async def list_agents(request):
    server = request.app.ctx.server
    engine = server.ready_engine()
    sessions = await asyncio.to_thread(transcripts(request).all)
    rows = agent_rows(sessions, await kv_overview(engine), engine.model_id)
    return json_response({"object": "list", "data": _own(request, rows)})


@bp.get("/<agent_id:str>")
async def get_agent(request, agent_id: str):
    agent_id, key = agent_ids(request, agent_id)
    server = request.app.ctx.server
    engine = server.ready_engine()
    session = await read_transcript(transcripts(request), key)
    overview = await kv_overview(engine)
    rows = agent_rows([session] if session else [], overview, engine.model_id)
    row = next((r for r in rows if r["id"] == key), None)
    if row is None:
        raise ApiError(404, f"no agent {agent_id!r}; create one by sending it a message", param="agent_id")
    row = as_client_sees(request, row, agent_id)
    row["system"] = session.system if session else None
    row["messages"] = [m.model_dump() for m in session.messages] if session else []
    row["blocks"] = block_counts(overview, key).to_json()
    row["block_tokens"] = server.settings.kv_block_tokens
    chain = await asyncio.to_thread(engine.agent_blocks, key)
    # Blocks are shared within a tenant only: every agent named is the caller's, named as its client knows it
    row["chain"] = [{**block.to_json(), "agents": _own_ids(request, list(block.agents))} for block in chain]
    return json_response(row)


@bp.patch("/<agent_id:str>")
async def update_agent(request, agent_id: str):
    """Pin an agent's caches, or let them expire: the fields sent change, the others stay."""
    agent_id, key = agent_ids(request, agent_id)
    parsed = parse(AgentPolicyRequest, read_json(request))
    changes = {name: getattr(parsed, name) for name in parsed.model_fields_set}
    if not changes:
        raise ApiError(400, "nothing to change: send pinned, retention_s or both")
    server = request.app.ctx.server
    engine = server.ready_engine()
    session = await read_transcript(transcripts(request), key)
    if not is_known(session, await kv_overview(engine), key):
        raise ApiError(404, f"no agent {agent_id!r}", param="agent_id")
    try:
        policy = await asyncio.to_thread(engine.set_agent_policy, key, **changes)
    except EngineError as exc:
        raise ApiError(409, str(exc)) from None
    rows = agent_rows([session] if session else [], await kv_overview(engine), engine.model_id)
    row = next((r for r in rows if r["id"] == key), None)
    if row is None:  # its only cache was evicted meanwhile; the policy holds for the next one
        row = {"id": key, **policy_fields(policy)}
    return json_response(as_client_sees(request, row, agent_id))


@bp.delete("/<agent_id:str>")
async def delete_agent(request, agent_id: str):
    agent_id, key = agent_ids(request, agent_id)
    server = request.app.ctx.server
    engine = server.ready_engine()
    store = transcripts(request)
    # Under the agent's locks: a turn of this agent still running (its client gone, or in another
    # process) has ended first
    async with server.locks.hold(key), held_across_processes(store.turn_lock(key)):
        deleted = await asyncio.to_thread(store.delete, key)
        # Asked of the engine thread, not the published view, which lags a turn that just ended
        cached = await asyncio.to_thread(engine.forget_session, key)
        if not deleted and not cached:
            raise ApiError(404, f"no agent {agent_id!r}", param="agent_id")
    return json_response({"id": agent_id, "deleted": True})


@bp.post("/<agent_id:str>/fork")
async def fork_agent(request, agent_id: str):
    """A new agent that starts where this one is: its transcript copied, every KV block shared."""
    return json_response(await _under_new_id(request, agent_id, "fork"), status=201)


@bp.post("/<agent_id:str>/rename")
async def rename_agent(request, agent_id: str):
    """The agent under a new id, its transcript and KV cache with it: its next turn resumes."""
    return json_response(await _under_new_id(request, agent_id, "rename"))


async def _under_new_id(request, agent_id: str, verb: str) -> dict:
    """Fork or rename (engine/agent_ops.py) `agent_id` to the body's new_id, under both ids' locks;
    the new agent's row with `kv_snapshots` (how many stored caches it has from the old id)."""
    agent_id, key = agent_ids(request, agent_id)
    parsed = parse(NewIdRequest, read_json(request))
    new_id = checked_session_id(parsed.new_id, "new_id")
    new_key = scoped(request, new_id)
    if new_key == key:
        raise ApiError(400, f"new_id: a {verb} needs an id of its own", param="new_id")
    server = request.app.ctx.server
    engine = server.ready_engine()
    store = transcripts(request)
    async with contextlib.AsyncExitStack() as held:
        for lock_key in sorted((key, new_key)):  # one order for every request (engine/agent_ops.py)
            await held.enter_async_context(server.locks.hold(lock_key))
        overview = await kv_overview(engine)
        try:
            operation, caches = {
                "fork": (agent_ops.fork_agent, engine.fork_session),
                "rename": (agent_ops.rename_agent, engine.rename_session),
            }[verb]
            snapshots = await asyncio.to_thread(
                operation, store, key, new_key, lambda sid: has_cache(overview, sid), caches
            )
        except agent_ops.NoSuchAgent:
            raise ApiError(404, f"no agent {agent_id!r}", param="agent_id") from None
        except agent_ops.AgentExists:
            raise ApiError(409, f"agent {new_id!r} exists already; {verb} under a new id", param="new_id") from None
        agent = await read_transcript(store, new_key)
    rows = agent_rows([agent], await kv_overview(engine), engine.model_id)
    return {**as_client_sees(request, next(r for r in rows if r["id"] == new_key), new_id), "kv_snapshots": snapshots}


def is_known(session: Session | None, overview: KVOverview, key: str) -> bool:
    """The agent has a transcript or a KV cache in either tier."""
    return session is not None or has_cache(overview, key)


@bp.post("/<agent_id:str>/messages")
async def send_message(request, agent_id: str):
    agent_id, key = agent_ids(request, agent_id)
    server = request.app.ctx.server
    parsed = parse(AgentMessageRequest, read_json(request))
    engine = server.ready_engine()
    store = transcripts(request)
    # The transcript grows one turn at a time: in this process, in any other sharing the data dir, and in
    # any instance sharing the Redis
    async with server.locks.hold(key), held_across_processes(store.turn_lock(key)):
        session = await read_transcript(store, key) or Session(id=key)
        if parsed.system is not None:
            session.system = parsed.system
        generation = generation_request(
            session.conversation(parsed.content),
            parsed.max_tokens,
            key,
            tenant=request.ctx.tenant,
            temperature=parsed.temperature,
            top_p=parsed.top_p,
            repetition_penalty=parsed.repetition_penalty,
            seed=parsed.seed,
            stop=parsed.stop,
        )

        async def keep(finished: TurnFinished) -> dict:
            # Written and synced off the event loop; the turn lock is held until it is on disk
            await asyncio.to_thread(
                store.keep_turn, session, parsed.content, finished, engine.model_id, engine.info.fingerprint
            )
            server.metrics.observe_turn(finished)
            return {
                "agent_id": agent_id,
                "model": engine.model_id,
                "content": finished.text,
                "turns": session.turns,
                **turn_summary(finished),
            }

        async with TurnStream(engine, generation, server.settings.sse_keepalive_s) as turn:
            if parsed.stream:
                return await _stream(request, turn, keep)
            return json_response(await keep(await turn.finished()))


async def _stream(request, turn: TurnStream, keep):
    """event: started / delta / finished (or error), each with a JSON object; keep-alive comments between."""
    async with sse.EventStream(request) as stream:
        async for event in turn.events():
            if event is None:
                await stream.send(sse.KEEPALIVE_COMMENT)
            elif isinstance(event, TurnStarted):
                cache = {
                    "source": event.cache.source,
                    "reused_tokens": event.cache.reused_tokens,
                    "miss_reason": event.cache.miss_reason,
                }
                await stream.send(sse.event("started", {"prompt_tokens": event.prompt_tokens, "cache": cache}))
            elif isinstance(event, TurnChunk):
                await stream.send(sse.event("delta", {"text": event.text}))
            elif isinstance(event, TurnFinished):
                await stream.send(sse.event("finished", await keep(event)))
            elif isinstance(event, TurnFailed):
                if not stream.opened:
                    raise failure(event)
                await stream.send(sse.event("error", error_body(False, failure(event))))
