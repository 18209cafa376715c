"""Agents as files: `GET /v1/agents/{id}/export` sends one agent file (engine/kv/agent_file.py), `POST
/v1/agents/import` takes one as its body. A file is checked whole before anything is written."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

from sanic import Blueprint
from sanic.response import json as json_response

from api.errors import ApiError
from api.routes.agents import agent_ids, as_client_sees, is_known, kv_overview, read_transcript, transcripts
from api.sessions import checked_session_id, held_across_processes, query_text, scoped
from engine.kv.agent_file import SUFFIX, AgentFileError, AgentFileMismatch, read_agent_file
from engine.kv.agent_transfer import Target, plan_import
from engine.sessions import imported_session

bp = Blueprint("agent_files", url_prefix="/v1/agents")

CHUNK_BYTES = 1 << 20
MB = 1024 * 1024


@bp.get("/<agent_id:str>/export")
async def export_agent(request, agent_id: str):
    agent_id, key = agent_ids(request, agent_id)
    server = request.app.ctx.server
    engine = server.ready_engine()
    store = transcripts(request)
    path = _scratch_file(server.settings.data_path)
    try:
        # Between two turns: the transcript and the cache in the file agree
        async with server.locks.hold(key), held_across_processes(store.turn_lock(key)):
            session = await read_transcript(store, key)
            if not is_known(session, await kv_overview(engine), key):
                raise ApiError(404, f"no agent {agent_id!r}", param="agent_id")
            transcript = as_client_sees(request, session.model_dump(), agent_id) if session else None
            try:
                await asyncio.to_thread(engine.export_agent, key, agent_id, transcript, path)
            except AgentFileError as exc:
                raise ApiError(409, str(exc)) from None
        source = path.open("rb")
    finally:
        path.unlink(missing_ok=True)  # an open file streams on without its name
    with source:
        name = quote(f"{agent_id}{SUFFIX}", safe="")
        response = await request.respond(
            content_type="application/x-tar",
            headers={
                "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
                "Content-Length": str(os.fstat(source.fileno()).st_size),
            },
        )
        while chunk := await asyncio.to_thread(source.read, CHUNK_BYTES):
            await response.send(chunk)
        await response.eof()


@bp.post("/import", stream=True)
async def import_agent(request):
    """The body is an agent file; `?as=ID` names the new agent (else the id it was exported under)."""
    server = request.app.ctx.server
    engine = server.ready_engine()
    named = query_text(request, "as")  # checked before the body is read
    if named:
        checked_session_id(named, "as")
    path = _scratch_file(server.settings.data_path)
    try:
        await _receive(request, path, server.settings.max_import_mb)
        try:
            agent_file = await asyncio.to_thread(_read, path)
        except AgentFileError as exc:
            raise ApiError(400, f"the agent file cannot be imported: {exc}") from None
    finally:
        path.unlink(missing_ok=True)
    agent_id = named or checked_session_id(agent_file.manifest.agent_id, "as")
    key = scoped(request, agent_id)
    target = engine.import_target(request.ctx.tenant)
    if target is None and agent_file.snapshot is not None:
        raise ApiError(
            409,
            "this server cannot store an agent's KV cache (KV memory is off, or another process owns the cache "
            "dir): import it where the cache is written",
        )
    target = target or Target(fingerprint=engine.info.fingerprint)
    try:
        plan = plan_import(agent_file, key, target)
        transcript = imported_session(agent_file.transcript, key) if agent_file.transcript is not None else None
    except AgentFileMismatch as exc:
        raise ApiError(409, f"the agent file does not fit this server: {exc}") from None
    except ValueError as exc:
        raise ApiError(400, f"the agent file cannot be imported: {exc}") from None
    store = transcripts(request)
    async with server.locks.hold(key), held_across_processes(store.turn_lock(key)):
        if is_known(await read_transcript(store, key), await kv_overview(engine), key):
            raise ApiError(409, f"agent {agent_id!r} exists already; import it under a new id with ?as=ID", param="as")
        kept = plan.snapshot is not None
        new_blocks = await asyncio.to_thread(engine.import_agent, plan) if kept else 0
        if transcript is not None:
            await asyncio.to_thread(store.save, transcript)
    body = {
        "id": agent_id,
        "turns": transcript.turns if transcript else 0,
        "tokens": len(plan.snapshot.tokens) if kept else 0,
        "blocks": len(plan.blocks) if kept else 0,
        "new_blocks": new_blocks,
    }
    return json_response(body, status=201)


def _scratch_file(data_path: Path) -> Path:
    """A new empty file for one request, in the data dir (a temp dir may be too small for an agent)."""
    folder = data_path / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=folder, suffix=SUFFIX)
    os.close(handle)
    return Path(name)


async def _receive(request, path: Path, limit_mb: int) -> None:
    """The streamed body into `path`, refused past `limit_mb`."""
    received = 0
    with path.open("wb") as target:
        while (chunk := await request.stream.read()) is not None:
            received += len(chunk)
            if received > limit_mb * MB:
                raise ApiError(413, f"the agent file is larger than the {limit_mb} MB limit (SEMANTIC_MAX_IMPORT_MB)")
            await asyncio.to_thread(target.write, chunk)


def _read(path: Path):
    with path.open("rb") as source:
        return read_agent_file(source)
