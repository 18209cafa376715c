"""The agent file: one agent's transcript and KV cache in one portable file (`agents export` / `import`).

An uncompressed POSIX tar (KV numbers do not compress), its members in this order:

    manifest.json                  what the file holds: the model fingerprint, the cache layout and disk
                                   encoding, the block list with each file's checksum and size
    transcript.json                the agent's transcript (absent for an agent without one)
    session.safetensors            its snapshot: the tail past its last block and its sliding windows
    blocks/<name>.safetensors      its chain's blocks, in order (the warm tier's files as they are)
    digest.sha256                  sha256 over every member before it (name, size, bytes)

Reading checks the whole file before anything is used: only these names, in this order, regular files,
each block and the snapshot against its checksum, the digest over all of it. Nothing is unpickled: the
manifest and transcript are JSON, the payloads safetensors read as numbers only.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.kv.checksum import matches

FORMAT = "agent-memory/agent-file"
VERSION = 1
MANIFEST, TRANSCRIPT, SNAPSHOT, DIGEST = "manifest.json", "transcript.json", "session.safetensors", "digest.sha256"
BLOCKS_DIR = "blocks/"
SUFFIX = ".agent.tar"
FINGERPRINT_PATTERN = r"^[0-9a-f]{16,128}$"  # engine/fingerprint.py's digests


class AgentFileError(ValueError):
    """The file is not an agent file, is truncated or altered, or its agent cannot be exported."""


class AgentFileMismatch(AgentFileError):
    """A sound file made for another model, cache layout or block size than the one it meets."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StoredFile(_Strict):
    checksum: str = Field(min_length=1, max_length=200)
    bytes: int = Field(ge=0)


class BlockEntry(StoredFile):
    name: str = Field(pattern=r"^[0-9a-f]{32}$")


class SnapshotEntry(StoredFile):
    tokens: int = Field(ge=0)


class CacheEntry(_Strict):
    layout: str  # CacheLayout.describe() plus the disk encoding: what block names are derived under
    disk_encoding: str
    block_tokens: int = Field(ge=1)
    root: str  # the root of the exporter's block names (its tenant's)


class Manifest(_Strict):
    format: str = Field(pattern=f"^{FORMAT}$")
    version: int = Field(ge=VERSION, le=VERSION)
    agent_id: str
    exported_at: float
    model_id: str
    fingerprint: str = Field(pattern=FINGERPRINT_PATTERN)  # names a folder of the cache dir: hex only
    cache: CacheEntry
    transcript: bool
    snapshot: SnapshotEntry | None
    blocks: list[BlockEntry]


@dataclass
class AgentFile:
    """A checked agent file's contents, in memory."""

    manifest: Manifest
    transcript: dict | None
    snapshot: bytes | None
    blocks: dict[str, bytes]  # name -> block file bytes, in chain order


def write_agent_file(
    target: BinaryIO,
    manifest: Manifest,
    transcript: dict | None,
    snapshot: bytes | None,
    blocks: list[tuple[str, Path]],
) -> None:
    """Write the file to `target`: `blocks` are (name, file) in order, copied as they are, each checked
    against its manifest checksum as it is read (a damaged block is never exported)."""
    digest = hashlib.sha256()
    checksums = {block.name: block.checksum for block in manifest.blocks}
    with tarfile.open(fileobj=target, mode="w|", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            _digest_member(digest, name, data)
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))

        add(MANIFEST, manifest.model_dump_json(indent=1).encode())
        if transcript is not None:
            add(TRANSCRIPT, json.dumps(transcript, ensure_ascii=False).encode())
        if snapshot is not None:
            add(SNAPSHOT, snapshot)
        for name, path in blocks:
            data = path.read_bytes()
            if not matches(data, checksums[name]):
                raise AgentFileError(f"stored block {name} failed its checksum; its agent cannot be exported")
            add(f"{BLOCKS_DIR}{name}.safetensors", data)
        add(DIGEST, digest.hexdigest().encode())


def read_agent_file(source: BinaryIO) -> AgentFile:
    """The file's contents, every check passed; AgentFileError says what is wrong."""
    digest = hashlib.sha256()
    members: list[tuple[str, bytes]] = []
    # A sparse member would read back larger than the file itself (its holes as zeros): only plain files,
    # and never more bytes in all than the file holds
    budget = _size_of(source)
    try:
        with tarfile.open(fileobj=source, mode="r|") as tar:
            for info in tar:
                if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.sparse is not None:
                    raise AgentFileError(f"{info.name!r} is not a plain file")
                budget -= info.size
                if budget < 0:
                    raise AgentFileError("the file is truncated: its members need more bytes than it holds")
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise AgentFileError("the file is truncated")
                members.append((info.name, data))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise AgentFileError(f"not an agent file, or a truncated one ({exc})") from None
    if not members or members[-1][0] != DIGEST:
        raise AgentFileError("the file is truncated: its digest is missing")
    for name, data in members[:-1]:
        _digest_member(digest, name, data)
    if members[-1][1].decode(errors="replace").strip() != digest.hexdigest():
        raise AgentFileError("the file was altered or damaged: its digest does not match its contents")
    return _contents(dict(members[:-1]), [name for name, _ in members[:-1]])


def _contents(files: dict[str, bytes], order: list[str]) -> AgentFile:
    try:
        manifest = Manifest.model_validate_json(files.get(MANIFEST, b""))
    except ValidationError as exc:
        raise AgentFileError(f"its manifest is not an agent file manifest: {_first_error(exc)}") from None
    expected = [MANIFEST, *([TRANSCRIPT] if manifest.transcript else [])]
    expected += [SNAPSHOT] if manifest.snapshot is not None else []
    expected += [f"{BLOCKS_DIR}{block.name}.safetensors" for block in manifest.blocks]
    if order != expected:
        raise AgentFileError("its members do not match its manifest")
    if manifest.blocks and manifest.snapshot is None:
        raise AgentFileError("its manifest lists blocks without a snapshot")
    transcript = None
    if manifest.transcript:
        try:
            transcript = json.loads(files[TRANSCRIPT])
        except ValueError:
            raise AgentFileError("its transcript is not JSON") from None
    snapshot = files.get(SNAPSHOT)
    if manifest.snapshot is not None and not _intact(snapshot, manifest.snapshot):
        raise AgentFileError("its snapshot does not match its checksum")
    blocks = {}
    for block in manifest.blocks:
        data = files[f"{BLOCKS_DIR}{block.name}.safetensors"]
        if not _intact(data, block):
            raise AgentFileError(f"block {block.name} does not match its checksum")
        blocks[block.name] = data
    return AgentFile(manifest, transcript, snapshot, blocks)


def _size_of(source: BinaryIO) -> int:
    """The bytes a seekable source holds from where it is now."""
    here = source.tell()
    end = source.seek(0, io.SEEK_END)
    source.seek(here)
    return end - here


def _intact(data: bytes | None, entry: StoredFile) -> bool:
    return data is not None and len(data) == entry.bytes and matches(data, entry.checksum)


def _digest_member(digest, name: str, data: bytes) -> None:
    digest.update(f"{name}\0{len(data)}\0".encode())
    digest.update(data)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "manifest"
    return f"{where}: {error['msg']}"
