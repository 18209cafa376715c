"""An agent out of the warm tier into an agent file, and back in (engine/kv/agent_file.py is the format).

    export   the session's snapshot and its chain's block files, as stored, with its transcript
    import   checked against the model, layout and block size it meets; block names derived again
             under the importer's root (its tenant's), so a block already stored is not stored twice;
             the snapshot written last, so a session appears only with every block it names

Both run where warm-tier changes run (the tier's writer thread in a server; the command line owns the
cache dir while it runs), so the files they read do not change under them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import BinaryIO

from engine.kv import codec
from engine.kv.agent_file import (
    FORMAT,
    VERSION,
    AgentFile,
    AgentFileError,
    AgentFileMismatch,
    BlockEntry,
    CacheEntry,
    Manifest,
    SnapshotEntry,
    write_agent_file,
)
from engine.kv.blocks import block_names, tenant_root
from engine.kv.checksum import matches
from engine.kv.index import session_key
from engine.kv.tier import SessionSnapshot
from engine.kv.warm import WarmTier

MAX_TOKEN_ID = 2**31  # block names hash token ids as 32-bit integers


@dataclass
class Target:
    """What an imported cache must fit: None where the importer takes the file's own (the command line,
    which loads no model)."""

    fingerprint: str | None = None
    layout: str | None = None
    block_tokens: int | None = None
    tenant: str = ""


@dataclass
class ImportPlan:
    fingerprint: str
    snapshot: SessionSnapshot | None  # under the importer's block names
    blocks: list[tuple[str, bytes, str]]  # (importer's name, file bytes, checksum), in chain order


def export_agent(
    warm: WarmTier | None,
    fingerprint: str,
    session_id: str,
    agent_id: str,
    model_id: str,
    transcript: dict | None,
    target: BinaryIO,
) -> Manifest:
    """Write `session_id`'s agent file (its cache under `fingerprint`, if stored) to `target`."""
    found = warm.index.session_files(session_key(session_id), fingerprint) if warm and warm.enabled else None
    snapshot_bytes, snapshot_entry, blocks, files = None, None, [], []
    cache = CacheEntry(layout="", disk_encoding="", block_tokens=1, root="")
    if found is not None:
        (file, checksum, size, tokens), rows = found
        snapshot_bytes = bytes(codec.read_file(warm.root / file))
        if not matches(snapshot_bytes, checksum):
            raise AgentFileError("the stored snapshot failed its checksum; its agent cannot be exported")
        stored = codec.decode_snapshot(session_id, snapshot_bytes, [])
        if not stored.layout:
            raise AgentFileError("its cache was stored before agent files existed: export it after its next turn")
        if any(row[1] is None for row in rows):
            raise AgentFileError("a block of its cache is no longer stored: export it after its next turn")
        cache = CacheEntry(
            layout=stored.layout,
            disk_encoding=stored.layout.rsplit("|", 1)[-1],
            block_tokens=stored.block_tokens,
            root=stored.root,
        )
        # Written again under the id the file names: the stored one is the exporter's (its tenant's name in it)
        payload = codec.pack_snapshot(replace(stored, session_id=agent_id))
        snapshot_bytes = b"".join(bytes(chunk) for chunk in payload.chunks)
        snapshot_entry = SnapshotEntry(checksum=payload.checksum, bytes=payload.size, tokens=tokens)
        blocks = [BlockEntry(name=name, checksum=sum_, bytes=nbytes) for name, _, sum_, nbytes in rows]
        files = [(name, warm.root / path) for name, path, _, _ in rows]
    manifest = Manifest(
        format=FORMAT,
        version=VERSION,
        agent_id=agent_id,
        exported_at=time.time(),
        model_id=model_id,
        fingerprint=fingerprint,
        cache=cache,
        transcript=transcript is not None,
        snapshot=snapshot_entry,
        blocks=blocks,
    )
    write_agent_file(target, manifest, transcript, snapshot_bytes, files)
    return manifest


def plan_import(agent_file: AgentFile, session_id: str, target: Target) -> ImportPlan:
    """What importing `agent_file` as `session_id` writes; AgentFileMismatch if it does not fit `target`,
    AgentFileError if its parts disagree with each other. Nothing is written here."""
    manifest = agent_file.manifest
    if target.fingerprint is not None and manifest.fingerprint != target.fingerprint:
        raise AgentFileMismatch(
            f"the agent was exported under model {manifest.model_id!r} (fingerprint {manifest.fingerprint[:16]}…); "
            f"this server's model has fingerprint {target.fingerprint[:16]}…: serve that model to import it"
        )
    if agent_file.snapshot is None:
        return ImportPlan(manifest.fingerprint, None, [])
    cache = manifest.cache
    if target.layout is not None and cache.layout != target.layout:
        raise AgentFileMismatch(
            f"its cache was stored as {cache.layout!r}; this server stores {target.layout!r} "
            "(SEMANTIC_KV_BITS or SEMANTIC_KV_DISK_DTYPE differ)"
        )
    if target.block_tokens is not None and cache.block_tokens != target.block_tokens:
        raise AgentFileMismatch(
            f"its cache has blocks of {cache.block_tokens} tokens; this server's are {target.block_tokens} "
            "(SEMANTIC_KV_BLOCK_TOKENS)"
        )
    try:
        stored = codec.decode_snapshot(session_id, agent_file.snapshot, [])
    except codec.UNDECODABLE:
        raise AgentFileError("its snapshot is not a KV snapshot") from None
    if not isinstance(stored.tokens, list) or not all(
        type(token) is int and 0 <= token < MAX_TOKEN_ID for token in stored.tokens
    ):
        raise AgentFileError("its snapshot's tokens are not token ids")
    exported = [block.name for block in manifest.blocks]
    if (
        stored.root != cache.root
        or len(stored.tokens) != manifest.snapshot.tokens
        or block_names(stored.tokens, cache.root, cache.block_tokens) != exported
    ):
        raise AgentFileError("its blocks, snapshot and manifest do not belong together")
    root = tenant_root(manifest.fingerprint, cache.layout, cache.block_tokens, target.tenant)
    names = block_names(stored.tokens, root, cache.block_tokens)
    snapshot = replace(
        stored, chain=names, root=root, layout=cache.layout, block_tokens=cache.block_tokens, session_id=session_id
    )
    blocks = [
        (name, agent_file.blocks[block.name], block.checksum)
        for name, block in zip(names, manifest.blocks, strict=True)
    ]
    return ImportPlan(manifest.fingerprint, snapshot, blocks)
