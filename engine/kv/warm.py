"""The warm tier: KV blocks and session snapshots as files on local disk (a KVTier, engine/kv/tier.py).

    <cache dir>/index.sqlite                                             which file holds what (engine/kv/index.py)
    <cache dir>/lock                                                     held by the one process that writes
    <cache dir>/<fingerprint>/blocks/<name[:2]>/<name>.safetensors       full-attention layers, one block
    <cache dir>/<fingerprint>/sessions/<key>.<version>.safetensors      tail past the last block + windows

Files (engine/kv/codec.py) are written to a temp file, fsynced and renamed; the index row is written
after the file, so an indexed file is always complete. Every read checks the file's checksum
(engine/kv/checksum.py) against the index; a mismatch drops the entry and the caller recomputes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from engine.atomic import atomic_write_chunks
from engine.kv import codec
from engine.kv.agent_file import FINGERPRINT_PATTERN
from engine.kv.checksum import matches
from engine.kv.index import WarmIndex, session_key
from engine.kv.policy import AgentPolicy
from engine.kv.stats import SessionSummary, StoredBlock, WarmStats
from engine.kv.tier import KVTier, Layers, MatchResult, MissingBlock, SessionSnapshot, SizeInfo, WriteJob

log = logging.getLogger(__name__)

# How often a process that found the cache dir owned tries again to own it (its owner may have exited)
LOCK_RETRY_S = 5.0


@dataclass(frozen=True)
class ResumeFiles:
    """The files a resume of a session at its end reads: its snapshot, then its chain's blocks in order."""

    snapshot: Path
    blocks: list[Path]


class WarmTier(KVTier):
    """Disk storage for one cache dir. Reads happen on the engine thread, changes on the writer thread."""

    def __init__(self, root: Path, disk_budget_mb: int, clean_up: bool = False):
        """Open (and create) the tier; `clean_up` removes what a killed writer left half-done."""
        self.root = root
        self.disk_budget_bytes = disk_budget_mb * 1024 * 1024
        self.read_only = False
        self.disabled_reason: str | None = None
        self._lock_file = None
        self._lock_guard = threading.Lock()
        self._next_lock_try = 0.0
        self._index: WarmIndex | None = None
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            self._index = WarmIndex(root / "index.sqlite", may_migrate=not self.read_only)
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
        if self.enabled and self.read_only:
            self._take_over()
        return self.enabled and not self.read_only

    @property
    def index(self) -> WarmIndex:
        if self._index is None:
            raise RuntimeError(self.disabled_reason or "the warm tier is closed")
        return self._index

    def _take_lock(self) -> None:
        """One writing process per cache dir; a second one reads without writing."""
        if not self._lock_taken():
            self.read_only = True
            log.warning("another process owns the KV cache dir %s; this one uses it read-only", self.root)

    def _lock_taken(self) -> bool:
        handle = open(self.root / "lock", "a+")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock_file = handle
        return True

    def _take_over(self) -> None:
        """A read-only process becomes the writer once the owner has gone (tried every LOCK_RETRY_S), and
        first removes what the owner may have left half-written."""
        with self._lock_guard:
            now = time.monotonic()
            if not self.read_only or now < self._next_lock_try:
                return
            self._next_lock_try = now + LOCK_RETRY_S
            try:
                if not self._lock_taken():
                    return
            except OSError:
                return
            log.warning("the process that owned the KV cache dir %s is gone; this one writes it now", self.root)
            self.read_only = False
            self.check(repair=True, verify=False)

    def close(self) -> None:
        """Close the calling thread's index connection and give up the cache dir's lock."""
        if self._index is not None:
            self._index.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _unlink(self, files) -> None:
        for file in files:
            with contextlib.suppress(OSError):
                os.unlink(self.root / file)

    # -- reads (engine thread) ---------------------------------------------------------------------
    def match(self, fingerprint: str, names: list[str]) -> MatchResult:
        if not self.enabled:
            return MatchResult(())
        return MatchResult(tuple(names[: self.index.stored_prefix(fingerprint, names)]))

    def read_blocks(self, fingerprint: str, names: list[str]) -> Iterator[Layers]:
        """See KVTier.read_blocks. Files are read and checksummed ahead on two threads (both release
        the GIL) while the caller does other work or uses the blocks already in; decoding (zero-copy
        views) happens as each is taken."""
        rows = self.index.block_files(fingerprint, names) if names and self.enabled else {}
        for name in names:
            if name not in rows:
                raise MissingBlock(name)
        pool = ThreadPoolExecutor(max_workers=2)
        payloads = [pool.submit(self._read_payload, *rows[name]) for name in names]
        return self._decoded_blocks(names, [rows[name][0] for name in names], payloads, pool)

    def _decoded_blocks(self, names: list[str], files: list[str], payloads: list, pool: ThreadPoolExecutor):
        try:
            for name, file, reading in zip(names, files, payloads, strict=True):
                layers = self._decoded(reading.result(), codec.decode_block, f"block {name}")
                if layers is None:
                    self._drop_block(name, file)
                    raise MissingBlock(name)
                yield layers
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if names and not self.read_only:
            self.index.touch_blocks(names)

    def _decoded(self, payload: memoryview | None, decode, what: str):
        """`decode(payload)`; None when the file was unreadable or damaged (payload None), or is not a
        file we can decode though its checksum matches (written by something else; logged)."""
        if payload is None:
            return None
        try:
            return decode(payload)
        except codec.UNDECODABLE as exc:
            log.warning("KV cache %s cannot be decoded (%s); dropping it and recomputing", what, exc)
            return None

    def _read_payload(self, file: str, recorded: str) -> memoryview | None:
        """The file's bytes if they match their checksum; logs and returns None otherwise."""
        path = self.root / file
        try:
            payload = codec.read_file(path)
        except OSError as exc:
            log.warning("KV cache file %s is missing or unreadable (%s); dropping it and recomputing", path, exc)
            return None
        if not matches(payload, recorded):
            log.warning("KV cache file %s failed its checksum; dropping it and recomputing", path)
            return None
        return payload

    def read_session(self, fingerprint: str, session_id: str) -> SessionSnapshot | None:
        if not self.enabled:
            return None
        key = session_key(session_id)
        row = self.index.session(key, fingerprint)
        if row is None:
            return None
        file, checksum, chain = row
        payload = self._read_payload(file, checksum)
        snapshot = self._decoded(payload, lambda data: codec.decode_snapshot(session_id, data, chain), f"file {file}")
        if snapshot is None:
            if not self.read_only:
                self._unlink(self.index.delete_sessions(key, fingerprint, file=file))
            return None
        if not self.read_only:
            self.index.touch_session(key, fingerprint)
        return snapshot

    def _drop_block(self, name: str, file: str) -> None:
        """A damaged block: its row (while it still names this file) and its file go."""
        if not self.read_only and self.index.delete_block(name, file):
            self._unlink([file])

    def session_fingerprints(self, session_id: str) -> list[str]:
        """The models (fingerprints) the session has a snapshot under, the most recently used first."""
        if not self.enabled:
            return []
        return [fingerprint for fingerprint, _ in self.index.session_rows(session_key(session_id))]

    # -- changes (writer thread) -------------------------------------------------------------------
    def write(self, job: WriteJob) -> None:
        if not self.writable:
            return
        index = self.index
        for name, layers in job.blocks.items():
            if index.has_block(name):
                continue
            payload = codec.pack_block(layers, name, job.fingerprint)
            file = f"{job.fingerprint}/blocks/{name[:2]}/{name}.safetensors"
            atomic_write_chunks(self.root / file, payload.chunks)
            index.add_block(name, job.fingerprint, file, payload.checksum, payload.size)
        snapshot = job.snapshot
        if snapshot is not None:
            key = session_key(snapshot.session_id)
            payload = codec.pack_snapshot(snapshot)
            # A new file name per write: a reader holding the old index row still finds the old file.
            file = f"{job.fingerprint}/sessions/{key}.{uuid.uuid4().hex[:12]}.safetensors"
            atomic_write_chunks(self.root / file, payload.chunks)
            previous = index.put_session(
                key,
                job.fingerprint,
                snapshot.session_id,
                file,
                payload.checksum,
                payload.size,
                len(snapshot.tokens),
                snapshot.chain,
            )
            if previous is not None and previous != file:
                self._unlink([previous])
        self.enforce_budget()

    def forget_session(self, fingerprint: str | None, session_id: str) -> bool:
        if not self.writable:
            return False
        files = self.index.delete_sessions(session_key(session_id), fingerprint)
        self._unlink(files)
        return bool(files)

    def fork_session(self, session_id: str, new_session_id: str) -> int:
        """See KVTier.fork_session. A snapshot file is hard-linked (copied where the file system cannot
        link): files are never changed once written, so the two names stay the same bytes until either
        session writes its next snapshot, and deleting one name leaves the other."""
        if not self.writable:
            return 0
        key, new_key = session_key(session_id), session_key(new_session_id)
        self.forget_session(None, new_session_id)
        forked = 0
        for fingerprint, file in self.index.session_rows(key):
            new_file = f"{fingerprint}/sessions/{new_key}.{uuid.uuid4().hex[:12]}.safetensors"
            try:
                _link_or_copy(self.root / file, self.root / new_file)
            except OSError as exc:
                log.warning("cannot fork the KV snapshot %s (%s); the fork recomputes under that model", file, exc)
                continue
            if self.index.copy_session(key, fingerprint, new_key, new_session_id, new_file):
                forked += 1
            else:
                self._unlink([new_file])
        return forked

    def import_session(self, fingerprint: str, snapshot: SessionSnapshot, blocks: list[tuple[str, bytes, str]]) -> int:
        """Store an imported session (engine/kv/agent_transfer.py): its blocks (name, file bytes,
        checksum) that are not stored yet, then its snapshot and chain. Returns how many blocks were new."""
        if not self.writable:
            raise OSError(f"another process owns the KV cache dir {self.root}")
        if not re.fullmatch(FINGERPRINT_PATTERN, fingerprint):
            raise ValueError(f"{fingerprint!r} is not a model fingerprint")  # it names a folder of the tier
        new = 0
        for name, data, checksum in blocks:
            if self.index.has_block(name):
                continue  # the same prefix under the same model: the same bytes
            file = f"{fingerprint}/blocks/{name[:2]}/{name}.safetensors"
            atomic_write_chunks(self.root / file, [data])
            self.index.add_block(name, fingerprint, file, checksum, len(data))
            new += 1
        self.write(WriteJob(fingerprint, snapshot))
        return new

    def evict(self, nbytes: int) -> int:
        if nbytes <= 0 or not self.writable:
            return 0
        freed = 0
        for name, file, size in self.index.evictable_blocks():
            if freed >= nbytes:
                break
            if self.index.delete_block(name, file):
                self._unlink([file])
                freed += size
        return freed

    def enforce_budget(self) -> int:
        """Evict until the tier is within its disk budget; bytes freed. Blocks no session names go first;
        then the caches of the least recently used agents that are not kept (engine/kv/policy.py), each
        with the blocks only it named."""
        freed = self.evict(self.total_bytes() - self.disk_budget_bytes)
        if self.total_bytes() <= self.disk_budget_bytes:
            return freed
        now, policies = time.time(), self.index.policies()
        for session_id, _ in self.index.sessions_by_use():
            if policies.get(session_id, AgentPolicy()).kept(now):
                continue
            freed += self.drop_caches(session_id)
            freed += self.evict(self.total_bytes() - self.disk_budget_bytes)
            if self.total_bytes() <= self.disk_budget_bytes:
                break
        return freed

    def drop_caches(self, session_id: str) -> int:
        """Delete the session's snapshots under every model and the blocks no other chain names, keeping
        its policy; the bytes freed."""
        key = session_key(session_id)
        files, chain = [], set()
        for fingerprint, _ in self.index.session_rows(key):
            stored = self.index.session(key, fingerprint)
            chain.update(stored[2] if stored else [])
            files += self.index.delete_sessions(key, fingerprint)
        freed = sum(_size(self.root / file) for file in files)
        self._unlink(files)
        for name, file, size in self.index.evictable_blocks():
            if name in chain and self.index.delete_block(name, file):
                self._unlink([file])
                freed += size
        return freed

    # -- policies (engine/kv/policy.py) --------------------------------------------------------------
    def policies(self) -> dict[str, AgentPolicy]:
        """Every agent's policy that is not the default, by session id (any thread)."""
        return self.index.policies() if self.enabled else {}

    def set_policy(self, session_id: str, policy: AgentPolicy) -> None:
        if self.writable:
            self.index.put_policy(session_id, policy)

    def last_used(self, session_id: str) -> float | None:
        """When the session's cache was last used under any model; None without one (any thread)."""
        return self.index.last_used(session_key(session_id)) if self.enabled else None

    def expire(self, now: float) -> list[str]:
        """Delete the caches of every agent whose retention has run out since its last use (its policy
        stays); the session ids."""
        if not self.writable:
            return []
        policies = self.index.policies()
        expired = [
            session_id
            for session_id, last_used in self.index.sessions_by_use()
            if policies.get(session_id, AgentPolicy()).expired(last_used, now)
        ]
        for session_id in expired:
            self.drop_caches(session_id)
        return expired

    def clear(self) -> int:
        """Delete every stored block and snapshot; returns the number of files removed."""
        if not self.writable:
            return 0
        files = self.index.clear()
        self._unlink(files)
        return len(files)

    # -- inspection (any thread) -------------------------------------------------------------------
    @property
    def size_info(self) -> SizeInfo:
        return self.index.size_info() if self.enabled else SizeInfo(0, 0)

    def total_bytes(self) -> int:
        if not self.enabled:
            return 0
        return self.index.totals("blocks")[1] + self.index.totals("sessions")[1]

    def stats(self, dtype: str | None = None) -> WarmStats:
        """The tier's figures; `dtype` is the disk encoding its caller writes (the files do not say)."""
        if not self.enabled:
            return WarmStats(enabled=False, reason=self.disabled_reason, dtype=dtype)
        blocks, block_bytes = self.index.totals("blocks")
        sessions, session_bytes = self.index.totals("sessions")
        return WarmStats(
            enabled=True,
            read_only=self.read_only,
            path=str(self.root),
            blocks=blocks,
            sessions=sessions,
            files=blocks + sessions,
            bytes=block_bytes + session_bytes,
            budget_bytes=self.disk_budget_bytes,
            dtype=dtype,
        )

    def shared_bytes_saved(self) -> int:
        """Bytes sessions would need more if each stored its own copy of the blocks it shares."""
        return self.index.shared_bytes_saved() if self.enabled else 0

    def session_summaries(self) -> dict[str, SessionSummary]:
        """Each session's stored cache under its most recently used model, by session id."""
        return self.index.session_summaries() if self.enabled else {}

    def session_blocks(self, fingerprint: str, session_id: str) -> list[StoredBlock]:
        """The session's stored block chain, in order."""
        return self.index.session_blocks(fingerprint, session_id) if self.enabled else []

    def session_files(self, fingerprint: str, session_id: str) -> tuple[bytes, str, list[str], list] | None:
        """A session's stored files as they are: (snapshot bytes, its checksum, its chain, [(block name,
        bytes, checksum)] in chain order); None when it has none, or a file is missing or fails its check."""
        found = self.index.session_files(session_key(session_id), fingerprint) if self.enabled else None
        if found is None:
            return None
        (file, checksum, _, _), rows = found
        payloads = [self._read_payload(file, checksum)]
        payloads += [self._read_payload(path, block_sum) if path else None for _, path, block_sum, _ in rows]
        if any(payload is None for payload in payloads):
            return None
        blocks = [(row[0], bytes(payload), row[2]) for row, payload in zip(rows, payloads[1:], strict=True)]
        return bytes(payloads[0]), checksum, [row[0] for row in rows], blocks

    def resume_files(self, session_id: str, fingerprint: str | None = None) -> ResumeFiles | None:
        """The files a resume of the session at its end reads (the most recently used model's, unless
        `fingerprint` names one); None when it has no snapshot."""
        found = self.index.resume_files(session_id, fingerprint) if self.enabled else None
        if found is None:
            return None
        snapshot, blocks = found
        return ResumeFiles(self.root / snapshot, [self.root / file for file in blocks])

    def check(self, repair: bool = True, verify: bool = True) -> dict:
        """Verify every indexed file (with `verify`, that it has its checksum and decodes too) and find
        files the index lacks."""
        report = {"checked": 0, "bad": [], "missing": [], "orphans": []}
        if not self.enabled:
            return report
        known = set()
        for table, key, file, recorded in self.index.files():
            known.add(file)
            report["checked"] += 1
            path = self.root / file
            if not path.exists():
                report["missing"].append(file)
            elif verify and not codec.intact(table, codec.read_file(path), recorded):
                report["bad"].append(file)
            else:
                continue
            if repair and not self.read_only:
                if table == "blocks":
                    self._drop_block(key, file)
                else:
                    self._unlink(self.index.delete_sessions(key, file=file))
        for path in self.root.glob("*/*/**/*"):
            if path.is_file():
                relative = str(path.relative_to(self.root))
                if relative not in known:
                    report["orphans"].append(relative)
                    if repair and not self.read_only:
                        path.unlink()
        return report

    def check_integrity(self) -> None:
        if not self.enabled:
            return
        report = self.check(repair=False)
        problems = self.index.problems()
        if report["bad"] or report["missing"] or problems:
            raise AssertionError(f"warm tier damaged: {report}, index: {problems}")


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` names the bytes of `source`: a hard link, or a synced copy renamed into place."""
    try:
        os.link(source, target)
    except OSError:
        atomic_write_chunks(target, [source.read_bytes()])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
