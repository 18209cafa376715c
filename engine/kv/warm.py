"""The warm tier: KV blocks and session snapshots on disk, indexed in SQLite.

    <cache dir>/index.sqlite            blocks(name, fingerprint, file, checksum, bytes, last_used)
                                        sessions(key, session_id, fingerprint, file, checksum, tokens, chain)
    <cache dir>/<fingerprint>/blocks/<name[:2]>/<name>.safetensors     full-attention layers, one block
    <cache dir>/<fingerprint>/sessions/<key>.<version>.safetensors      tail past the last block + windows

Payloads are safetensors (never pickle), written to a temp file, fsynced and renamed; the index row is
written after the file, so an indexed file is always complete. Every read checks the file's checksum
(engine/kv/checksum.py) against the index; a mismatch drops the entry and the caller recomputes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write_chunks
from engine.kv.checksum import checksum_of, matches

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, file TEXT NOT NULL, checksum TEXT NOT NULL,
    bytes INTEGER NOT NULL, last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT NOT NULL, fingerprint TEXT NOT NULL, session_id TEXT NOT NULL, file TEXT NOT NULL,
    checksum TEXT NOT NULL, bytes INTEGER NOT NULL, tokens INTEGER NOT NULL, chain TEXT NOT NULL,
    last_used REAL NOT NULL, PRIMARY KEY (key, fingerprint));
"""


SAFETENSORS_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,  # bfloat16 KV parts, as bits
    "U32": np.uint32,
}
SAFETENSORS_NAMES = {np.dtype(dtype): name for name, dtype in SAFETENSORS_DTYPES.items()}


def session_key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:40]


@dataclass
class SessionSnapshot:
    """What a session needs to resume at the end of its sequence, besides its blocks."""

    session_id: str
    tokens: list[int]
    chain: list[str]  # block names covering tokens[: len(chain) * block_tokens]
    tail: dict[int, dict[str, np.ndarray]]  # full layers: tokens after the last block, as disk parts
    windows: dict[int, dict[str, np.ndarray]]  # sliding layers: last window at the end, as disk parts
    # The root block name of the cache layout and disk encoding it was written under ("": not recorded).
    root: str = ""


@dataclass
class WriteJob:
    fingerprint: str
    snapshot: SessionSnapshot | None  # None: blocks only (a request without a session)
    # Blocks not yet on disk: name -> {layer: {part: array}} (parts: see layout.encode_for_disk)
    blocks: dict[str, dict[int, dict[str, np.ndarray]]] = field(default_factory=dict)


@dataclass
class Payload:
    """A safetensors file as the chunks to write (header, then each tensor's own memory) and its checksum."""

    chunks: list
    checksum: str
    size: int


def _pack(layers: dict[int, dict[str, np.ndarray]], metadata: dict[str, str]) -> Payload:
    """Tensors named `<part>.<layer>` (e.g. `k.3`, `vq.3`) in the safetensors format.

    Written straight from the arrays rather than joined into one bytes object first: no second copy
    of a 100 MB cache, and hashing and writing release the GIL the engine thread needs.
    """
    header: dict = {"__metadata__": metadata}
    arrays = []
    offset = 0
    for layer, parts in layers.items():
        for part, array in parts.items():
            array = np.ascontiguousarray(array)
            header[f"{part}.{layer}"] = {
                "dtype": SAFETENSORS_NAMES[array.dtype],
                "shape": list(array.shape),
                "data_offsets": [offset, offset + array.nbytes],
            }
            arrays.append(array)
            offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    chunks = [len(encoded).to_bytes(8, "little") + encoded, *(memoryview(a).cast("B") for a in arrays if a.nbytes)]
    return Payload(chunks, checksum_of(chunks), sum(len(c) for c in chunks))


def group_layers(tensors: dict) -> dict[int, dict]:
    layers: dict[int, dict] = {}
    for name, value in tensors.items():
        part, layer = name.rsplit(".", 1)
        layers.setdefault(int(layer), {})[part] = value
    return layers


def decode_numpy(payload) -> tuple[dict[int, dict[str, np.ndarray]], dict[str, str]]:
    """A payload's layers as numpy parts (views of `payload`, any bytes-like object: no copy), and its
    metadata.

    bfloat16 parts (quantization scales of a bfloat16 model) come back as float32, exactly.
    """
    header_size = int.from_bytes(payload[:8], "little")
    header = json.loads(bytes(payload[8 : 8 + header_size]))
    metadata = header.pop("__metadata__", {})
    base = 8 + header_size
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            raw = np.frombuffer(payload, np.uint16, (end - start) // 2, base + start)
            tensors[name] = (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
            continue
        dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        tensors[name] = np.frombuffer(payload, dtype, (end - start) // dtype.itemsize, base + start).reshape(shape)
    return group_layers(tensors), metadata


def read_file(path: Path) -> memoryview:
    """A file's bytes, in a buffer of their own.

    The first 8 bytes (the safetensors header's size) are read on their own: after a small first read
    the kernel streams the rest of the file with read-ahead, where one read of a whole few-MB file, or
    faulting in a mapping of it, ran at half the disk's speed here (1.1-1.4 against 2.3-2.5 GB/s). The
    buffer is numpy's uninitialized memory, not a bytearray, which would be zero-filled first."""
    with path.open("rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = memoryview(np.empty(size, np.uint8))
        done = 0
        for stop in (min(8, size), size):
            while done < stop:
                got = handle.readinto(data[done:stop])
                if not got:
                    raise OSError(f"{path} ended after {done} of {size} bytes")
                done += got
    return data


# What decoding a file that is not one of ours raises (bad JSON, missing keys, sizes that disagree).
UNDECODABLE = (ValueError, KeyError, TypeError, AttributeError)


def _snapshot(session_id: str, payload, chain: list[str]) -> SessionSnapshot:
    """A session snapshot from its file's bytes."""
    layers, metadata = decode_numpy(payload)
    windows = {layer: kv for layer, kv in layers.items() if str(layer) in json.loads(metadata["windows"])}
    tail = {layer: kv for layer, kv in layers.items() if layer not in windows}
    return SessionSnapshot(
        session_id=session_id,
        tokens=json.loads(metadata["tokens"]),
        chain=chain,
        tail=tail,
        windows=windows,
        root=metadata.get("root", ""),
    )


def _intact(table: str, data, recorded: str) -> bool:
    """Whether a file has its recorded checksum and decodes as what its index row says it is."""
    if not matches(data, recorded):
        return False
    try:
        if table == "sessions":
            _snapshot("", data, [])
        else:
            decode_numpy(data)
    except UNDECODABLE:
        return False
    return True


class MissingBlock(Exception):
    """A block named in a chain is not on disk (any more) or failed its checksum."""


class WarmTier:
    """Disk storage for one cache dir. Reads happen on the engine thread, writes on a writer thread."""

    def __init__(self, root: Path, disk_budget_mb: int, clean_up: bool = False):
        """Open (and create) the tier; `clean_up` removes what a killed writer left half-done."""
        self.root = root
        self.disk_budget_bytes = disk_budget_mb * 1024 * 1024
        self.read_only = False
        self.disabled_reason: str | None = None
        self._lock_file = None
        self._local = threading.local()
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            with self._db() as db:
                db.executescript(SCHEMA)
                self._name_checksum_columns(db)
            if clean_up and not self.read_only:
                # Whatever a killed process left half-written: temp files, files never indexed.
                self.check(repair=True, verify=False)
        except (OSError, sqlite3.Error) as exc:
            self.disabled_reason = f"warm KV tier disabled: cannot use {root} ({exc}); serving hot-only"
            log.warning(self.disabled_reason)

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    @property
    def writable(self) -> bool:
        return self.enabled and not self.read_only

    def _take_lock(self) -> None:
        """One writing process per cache dir; a second one reads without writing."""
        handle = open(self.root / "lock", "a+")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            self.read_only = True
            log.warning("another process owns the KV cache dir %s; this one uses it read-only", self.root)
            return
        self._lock_file = handle

    def _name_checksum_columns(self, db: sqlite3.Connection) -> None:
        """Rename the `sha256` columns of an index from before checksums named their algorithm (the
        values stay valid: engine/kv/checksum.py verifies both kinds)."""
        for table in ("blocks", "sessions"):
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if "checksum" in columns:
                continue
            if self.read_only:
                raise sqlite3.OperationalError("its index is in an older format and is in use by another process")
            db.execute(f"ALTER TABLE {table} RENAME COLUMN sha256 TO checksum")

    def _db(self) -> sqlite3.Connection:
        connection = getattr(self._local, "db", None)
        if connection is None:
            connection = sqlite3.connect(self.root / "index.sqlite", timeout=30, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.db = connection
        return connection

    def close(self) -> None:
        connection = getattr(self._local, "db", None)
        if connection is not None:
            connection.close()
            self._local.db = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- queries (engine thread) -------------------------------------------------------------------
    def has_blocks(self, fingerprint: str, names: list[str]) -> int:
        """How many of `names`, from the first, are stored."""
        if not self.enabled or not names:
            return 0
        marks = ",".join("?" * len(names))
        rows = self._db().execute(
            f"SELECT name FROM blocks WHERE fingerprint=? AND name IN ({marks})", [fingerprint, *names]
        )
        stored = {row[0] for row in rows}
        count = 0
        for name in names:
            if name not in stored:
                break
            count += 1
        return count

    def iter_blocks(self, fingerprint: str, names: list[str]):
        """The layers of each named block in order, as each arrives; raises MissingBlock at the first
        one that is missing or damaged (a damaged one is dropped from the index).

        Reading starts at the call: files are read and checksummed ahead on two threads (both
        release the GIL), while the caller does other work or uses the blocks already in; decoding
        (zero-copy views) happens as each is taken. Close the iterator to stop reading early.
        """
        rows = {}
        for name in names:
            row = (
                self._db()
                .execute("SELECT file, checksum FROM blocks WHERE name=? AND fingerprint=?", (name, fingerprint))
                .fetchone()
            )
            if row is None:
                raise MissingBlock(name)
            rows[name] = row
        pool = ThreadPoolExecutor(max_workers=2)
        payloads = [pool.submit(self._read_payload, *rows[name]) for name in names]
        return self._decoded_blocks(names, payloads, pool)

    def _decoded_blocks(self, names: list[str], payloads: list, pool: ThreadPoolExecutor):
        try:
            for name, reading in zip(names, payloads, strict=True):
                layers = self._decoded(reading.result(), lambda payload: decode_numpy(payload)[0], f"block {name}")
                if layers is None:
                    self._drop("blocks", name)
                    raise MissingBlock(name)
                yield layers
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if names:
            self._touch("blocks", f"name IN ({','.join('?' * len(names))})", tuple(names))

    def _decoded(self, payload: memoryview | None, decode, what: str):
        """`decode(payload)`; None when the file was unreadable or damaged (payload None), or is not a
        file we can decode though its checksum matches (written by something else; logged)."""
        if payload is None:
            return None
        try:
            return decode(payload)
        except UNDECODABLE as exc:
            log.warning("KV cache %s cannot be decoded (%s); dropping it and recomputing", what, exc)
            return None

    def _read_payload(self, file: str, recorded: str) -> memoryview | None:
        """The file's bytes if they match their checksum; logs and returns None otherwise."""
        path = self.root / file
        try:
            payload = read_file(path)
        except OSError as exc:
            log.warning("KV cache file %s is missing or unreadable (%s); dropping it and recomputing", path, exc)
            return None
        if not matches(payload, recorded):
            log.warning("KV cache file %s failed its checksum; dropping it and recomputing", path)
            return None
        return payload

    def session(self, fingerprint: str, session_id: str) -> SessionSnapshot | None:
        if not self.enabled:
            return None
        key = session_key(session_id)
        row = (
            self._db()
            .execute("SELECT file, checksum, chain FROM sessions WHERE key=? AND fingerprint=?", (key, fingerprint))
            .fetchone()
        )
        if row is None:
            return None
        payload = self._read_payload(row[0], row[1])
        file, chain = row[0], row[2]
        snapshot = self._decoded(payload, lambda data: _snapshot(session_id, data, json.loads(chain)), f"file {file}")
        if snapshot is None:
            self._drop("sessions", key)
            return None
        self._touch("sessions", "key=? AND fingerprint=?", (key, fingerprint))
        return snapshot

    def _drop(self, table: str, key: str) -> None:
        if self.read_only:
            return
        column = "name" if table == "blocks" else "key"
        rows = self._db().execute(f"SELECT file FROM {table} WHERE {column}=?", (key,)).fetchall()
        self._db().execute(f"DELETE FROM {table} WHERE {column}=?", (key,))
        for (file,) in rows:
            with contextlib.suppress(OSError):
                os.unlink(self.root / file)

    def _touch(self, table: str, where: str, args: tuple) -> None:
        if not self.read_only:
            self._db().execute(f"UPDATE {table} SET last_used=? WHERE {where}", (time.time(), *args))

    def forget_session(self, fingerprint: str | None, session_id: str) -> None:
        """Delete a session's snapshot (every model's, when fingerprint is None); blocks stay."""
        if not self.writable:
            return
        key = session_key(session_id)
        query = "SELECT file, fingerprint FROM sessions WHERE key=?"
        for file, fp in self._db().execute(query, (key,)).fetchall():
            if fingerprint is None or fp == fingerprint:
                self._db().execute("DELETE FROM sessions WHERE key=? AND fingerprint=?", (key, fp))
                with contextlib.suppress(OSError):
                    os.unlink(self.root / file)

    # -- writes (writer thread) --------------------------------------------------------------------
    def write(self, job: WriteJob) -> None:
        if not self.writable:
            return
        db = self._db()
        now = time.time()
        for name, layers in job.blocks.items():
            exists = db.execute("SELECT 1 FROM blocks WHERE name=?", (name,)).fetchone()
            if exists:
                continue
            payload = _pack(layers, {"block": name, "fingerprint": job.fingerprint})
            file = f"{job.fingerprint}/blocks/{name[:2]}/{name}.safetensors"
            atomic_write_chunks(self.root / file, payload.chunks)
            db.execute(
                "INSERT OR REPLACE INTO blocks VALUES (?,?,?,?,?,?)",
                (name, job.fingerprint, file, payload.checksum, payload.size, now),
            )
        snapshot = job.snapshot
        if snapshot is None:
            self.enforce_budget()
            return
        key = session_key(snapshot.session_id)
        layers = {**snapshot.tail, **snapshot.windows}
        metadata = {
            "session": snapshot.session_id,
            "tokens": json.dumps(snapshot.tokens),
            "windows": json.dumps([str(layer) for layer in snapshot.windows]),
            "root": snapshot.root,
        }
        payload = _pack(layers, metadata)
        # A new file name per write: a reader holding the old index row still finds the old file.
        file = f"{job.fingerprint}/sessions/{key}.{uuid.uuid4().hex[:12]}.safetensors"
        atomic_write_chunks(self.root / file, payload.chunks)
        previous = db.execute(
            "SELECT file FROM sessions WHERE key=? AND fingerprint=?", (key, job.fingerprint)
        ).fetchone()
        db.execute(
            "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?,?)",
            (
                key,
                job.fingerprint,
                snapshot.session_id,
                file,
                payload.checksum,
                payload.size,
                len(snapshot.tokens),
                json.dumps(snapshot.chain),
                now,
            ),
        )
        if previous is not None and previous[0] != file:
            with contextlib.suppress(OSError):
                os.unlink(self.root / previous[0])
        self.enforce_budget()

    def enforce_budget(self) -> int:
        """Delete least recently used blocks that no session references until under budget."""
        db = self._db()
        total = self.total_bytes()
        evicted = 0
        if total <= self.disk_budget_bytes:
            return 0
        referenced = self._block_users()
        for name, file, size in db.execute("SELECT name, file, bytes FROM blocks ORDER BY last_used").fetchall():
            if total <= self.disk_budget_bytes:
                break
            if name in referenced:
                continue
            db.execute("DELETE FROM blocks WHERE name=?", (name,))
            with contextlib.suppress(OSError):
                os.unlink(self.root / file)
            total -= size
            evicted += 1
        return evicted

    # -- inspection --------------------------------------------------------------------------------
    def _totals(self, table: str) -> tuple[int, int]:
        """(rows, bytes) of one index table."""
        count, size = self._db().execute(f"SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM {table}").fetchone()
        return int(count), int(size)

    def _block_users(self) -> dict[str, int]:
        """How many session snapshots reference each block."""
        users: dict[str, int] = {}
        for (chain,) in self._db().execute("SELECT chain FROM sessions"):
            for name in set(json.loads(chain)):
                users[name] = users.get(name, 0) + 1
        return users

    def total_bytes(self) -> int:
        if not self.enabled:
            return 0
        return self._totals("blocks")[1] + self._totals("sessions")[1]

    def shared_bytes_saved(self) -> int:
        """Bytes sessions would need more if each stored its own copy of the blocks it shares."""
        if not self.enabled:
            return 0
        sizes = dict(self._db().execute("SELECT name, bytes FROM blocks").fetchall())
        return sum(sizes.get(name, 0) * (count - 1) for name, count in self._block_users().items() if count > 1)

    def stats(self) -> dict:
        if not self.enabled:
            return {"enabled": False, "reason": self.disabled_reason}
        blocks, block_bytes = self._totals("blocks")
        sessions, session_bytes = self._totals("sessions")
        return {
            "enabled": True,
            "read_only": self.read_only,
            "path": str(self.root),
            "blocks": blocks,
            "sessions": sessions,
            "files": blocks + sessions,
            "bytes": block_bytes + session_bytes,
            "budget_bytes": self.disk_budget_bytes,
        }

    def session_summaries(self) -> dict[str, dict]:
        """Per session id (latest model): tokens, blocks, blocks shared with other sessions, bytes."""
        if not self.enabled:
            return {}
        db = self._db()
        sizes = dict(db.execute("SELECT name, bytes FROM blocks").fetchall())
        rows = db.execute(
            "SELECT session_id, fingerprint, tokens, chain, bytes, last_used FROM sessions ORDER BY last_used"
        ).fetchall()
        users = self._block_users()
        summaries = {}
        for session_id, fingerprint, tokens, chain_text, nbytes, last_used in rows:
            chain = json.loads(chain_text)
            summaries[session_id] = {
                "fingerprint": fingerprint,
                "tokens": tokens,
                "blocks": len(chain),
                "shared_blocks": sum(1 for name in chain if users.get(name, 0) > 1),
                "bytes": nbytes + sum(sizes.get(name, 0) for name in chain),
                "last_used": last_used,
            }
        return summaries

    def session_blocks(self, fingerprint: str, session_id: str) -> list[dict]:
        """The session's stored block chain, in order: name, bytes, last use, and every session using it."""
        if not self.enabled:
            return []
        db = self._db()
        row = db.execute(
            "SELECT chain FROM sessions WHERE session_id = ? AND fingerprint = ?", (session_id, fingerprint)
        ).fetchone()
        if row is None:
            return []
        chain = json.loads(row[0])
        users: dict[str, list[str]] = {}
        for other, other_chain in db.execute(
            "SELECT session_id, chain FROM sessions WHERE fingerprint = ?", (fingerprint,)
        ):
            for name in set(json.loads(other_chain)):
                users.setdefault(name, []).append(other)
        stored = (
            {
                name: (nbytes, last_used)
                for name, nbytes, last_used in db.execute(
                    f"SELECT name, bytes, last_used FROM blocks WHERE name IN ({','.join('?' * len(chain))})", chain
                )
            }
            if chain
            else {}
        )
        return [
            {
                "name": name,
                "bytes": stored.get(name, (0, 0.0))[0],
                "last_used": stored.get(name, (0, 0.0))[1],
                "stored": name in stored,
                "agents": sorted(users.get(name, [])),
            }
            for name in chain
        ]

    def clear(self) -> int:
        """Delete every stored block and snapshot; returns the number of files removed."""
        if not self.writable:
            return 0
        db = self._db()
        files = [row[0] for row in db.execute("SELECT file FROM blocks UNION ALL SELECT file FROM sessions")]
        db.execute("DELETE FROM blocks")
        db.execute("DELETE FROM sessions")
        for file in files:
            with contextlib.suppress(OSError):
                os.unlink(self.root / file)
        return len(files)

    def check(self, repair: bool = True, verify: bool = True) -> dict:
        """Verify every indexed file (with `verify`, that it has its checksum and decodes too) and find
        files the index lacks."""
        report = {"checked": 0, "bad": [], "missing": [], "orphans": []}
        if not self.enabled:
            return report
        db = self._db()
        known = set()
        for table, column in (("blocks", "name"), ("sessions", "key")):
            for key, file, recorded in db.execute(f"SELECT {column}, file, checksum FROM {table}").fetchall():
                known.add(file)
                report["checked"] += 1
                path = self.root / file
                if not path.exists():
                    report["missing"].append(file)
                    if repair:
                        self._drop(table, key)
                elif verify and not _intact(table, read_file(path), recorded):
                    report["bad"].append(file)
                    if repair:
                        self._drop(table, key)
        for path in self.root.glob("*/*/**/*"):
            if path.is_file():
                relative = str(path.relative_to(self.root))
                if relative not in known:
                    report["orphans"].append(relative)
                    if repair and not self.read_only:
                        path.unlink()
        return report
