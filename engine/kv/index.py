"""The warm tier's index: which files hold which blocks and session snapshots, in SQLite.

    blocks          name ─ fingerprint, file, checksum, bytes, last_used
    sessions        (key, fingerprint) ─ session_id, file, checksum, bytes, tokens, last_used
    session_blocks  (key, fingerprint, position) ─ name: each session's chain, one row per block
    agent_policies  key ─ session_id, pinned, retention_s, keep_until, retention_by_user (engine/kv/policy.py)

A block is evictable when no session_blocks row names it. A session's row and its chain rows change in
one transaction, so a reader sees a snapshot with exactly the chain it was written with. An index from
before session_blocks kept each chain as JSON text in `sessions.chain`; opening it moves the chains into
the table in one transaction (a crash in the middle leaves the old index, moved again at the next open).

Connections are per thread (sqlite3 objects belong to the thread that made them); any thread may read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from engine.kv.policy import AgentPolicy
from engine.kv.stats import SessionSummary, StoredBlock
from engine.kv.tier import SizeInfo

log = logging.getLogger(__name__)

TABLES = {
    "blocks": """CREATE TABLE blocks (
        name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, file TEXT NOT NULL, checksum TEXT NOT NULL,
        bytes INTEGER NOT NULL, last_used REAL NOT NULL)""",
    "sessions": """CREATE TABLE sessions (
        key TEXT NOT NULL, fingerprint TEXT NOT NULL, session_id TEXT NOT NULL, file TEXT NOT NULL,
        checksum TEXT NOT NULL, bytes INTEGER NOT NULL, tokens INTEGER NOT NULL, last_used REAL NOT NULL,
        PRIMARY KEY (key, fingerprint))""",
    "session_blocks": """CREATE TABLE session_blocks (
        key TEXT NOT NULL, fingerprint TEXT NOT NULL, position INTEGER NOT NULL, name TEXT NOT NULL,
        PRIMARY KEY (key, fingerprint, position)) WITHOUT ROWID""",
    "agent_policies": """CREATE TABLE agent_policies (
        key TEXT PRIMARY KEY, session_id TEXT NOT NULL, pinned INTEGER NOT NULL, retention_s INTEGER,
        keep_until REAL NOT NULL, retention_by_user INTEGER NOT NULL DEFAULT 0)""",
}
# What `clear` empties: the caches, not what users set about them
CACHE_TABLES = ("blocks", "sessions", "session_blocks")
INDEXES = ["CREATE INDEX IF NOT EXISTS session_blocks_by_name ON session_blocks (name)"]

# How many sessions' chains name each block (blocks that no chain names are absent).
USERS = "SELECT name, COUNT(*) AS users FROM session_blocks GROUP BY name"


def session_key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:40]


class OldIndexInUse(sqlite3.OperationalError):
    """The index is in an older format and another process owns it, so this one cannot update it."""


class WarmIndex:
    def __init__(self, path: Path, may_migrate: bool):
        """Open (and create, or bring up to date) the index at `path`; without `may_migrate` an index in
        an older format raises OldIndexInUse."""
        self.path = path
        self._local = threading.local()
        with self.transaction() as db:
            existing = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for table, statement in TABLES.items():
                if table not in existing:
                    db.execute(statement)
            if _outdated(db):
                if not may_migrate:
                    raise OldIndexInUse("its index is in an older format and is in use by another process")
                _migrate(db)
            for statement in INDEXES:
                db.execute(statement)

    def db(self) -> sqlite3.Connection:
        connection = getattr(self._local, "db", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.db = connection
        return connection

    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: a write one takes the write lock at the start (BEGIN IMMEDIATE), a read one
        sees one state of the index throughout."""
        db = self.db()
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "db", None)
        if connection is not None:
            connection.close()
            self._local.db = None

    # -- blocks ------------------------------------------------------------------------------------
    def stored_prefix(self, fingerprint: str, names: list[str]) -> int:
        """How many of `names`, from the first, have a row."""
        if not names:
            return 0
        marks = ",".join("?" * len(names))
        rows = self.db().execute(
            f"SELECT name FROM blocks WHERE fingerprint=? AND name IN ({marks})", [fingerprint, *names]
        )
        stored = {row[0] for row in rows}
        count = 0
        for name in names:
            if name not in stored:
                break
            count += 1
        return count

    def block_files(self, fingerprint: str, names: list[str]) -> dict[str, tuple[str, str]]:
        """(file, checksum) of each of `names` that has a row."""
        marks = ",".join("?" * len(names))
        rows = self.db().execute(
            f"SELECT name, file, checksum FROM blocks WHERE fingerprint=? AND name IN ({marks})", [fingerprint, *names]
        )
        return {name: (file, checksum) for name, file, checksum in rows}

    def has_block(self, name: str) -> bool:
        return self.db().execute("SELECT 1 FROM blocks WHERE name=?", (name,)).fetchone() is not None

    def add_block(self, name: str, fingerprint: str, file: str, checksum: str, size: int) -> None:
        self.db().execute(
            "INSERT OR REPLACE INTO blocks VALUES (?,?,?,?,?,?)", (name, fingerprint, file, checksum, size, time.time())
        )

    def evictable_blocks(self) -> list[tuple[str, str, int]]:
        """(name, file, bytes) of the blocks no chain names, least recently used first."""
        return (
            self.db()
            .execute(
                "SELECT name, file, bytes FROM blocks WHERE name NOT IN (SELECT name FROM session_blocks) "
                "ORDER BY last_used"
            )
            .fetchall()
        )

    def delete_block(self, name: str, file: str | None = None) -> bool:
        """Delete a block's row (only while it points at `file`, when given); whether one was deleted."""
        if file is None:
            return self.db().execute("DELETE FROM blocks WHERE name=?", (name,)).rowcount > 0
        return self.db().execute("DELETE FROM blocks WHERE name=? AND file=?", (name, file)).rowcount > 0

    def touch_blocks(self, names: list[str]) -> None:
        marks = ",".join("?" * len(names))
        self.db().execute(f"UPDATE blocks SET last_used=? WHERE name IN ({marks})", (time.time(), *names))

    # -- sessions ----------------------------------------------------------------------------------
    def session(self, key: str, fingerprint: str) -> tuple[str, str, list[str]] | None:
        """(file, checksum, chain) of a session's snapshot, read together."""
        with self.transaction(write=False) as db:
            row = db.execute("SELECT file, checksum FROM sessions WHERE key=? AND fingerprint=?", (key, fingerprint))
            row = row.fetchone()
            if row is None:
                return None
            chain = self._chain(db, key, fingerprint)
        return row[0], row[1], chain

    @staticmethod
    def _chain(db: sqlite3.Connection, key: str, fingerprint: str) -> list[str]:
        rows = db.execute(
            "SELECT name FROM session_blocks WHERE key=? AND fingerprint=? ORDER BY position", (key, fingerprint)
        )
        return [row[0] for row in rows]

    def put_session(
        self,
        key: str,
        fingerprint: str,
        session_id: str,
        file: str,
        checksum: str,
        size: int,
        tokens: int,
        chain: list[str],
    ) -> str | None:
        """Replace a session's row and chain in one transaction; returns the file the old row named."""
        with self.transaction() as db:
            previous = db.execute("SELECT file FROM sessions WHERE key=? AND fingerprint=?", (key, fingerprint))
            previous = previous.fetchone()
            db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?)",
                (key, fingerprint, session_id, file, checksum, size, tokens, time.time()),
            )
            db.execute("DELETE FROM session_blocks WHERE key=? AND fingerprint=?", (key, fingerprint))
            db.executemany(
                "INSERT INTO session_blocks VALUES (?,?,?,?)",
                [(key, fingerprint, position, name) for position, name in enumerate(chain)],
            )
        return previous[0] if previous is not None else None

    def delete_sessions(self, key: str, fingerprint: str | None = None, file: str | None = None) -> list[str]:
        """Delete a session's rows and chains (every model's when `fingerprint` is None; only the row that
        names `file`, when given); returns the files they named."""
        where, args = "key=?", [key]
        if fingerprint is not None:
            where, args = where + " AND fingerprint=?", [*args, fingerprint]
        if file is not None:
            where, args = where + " AND file=?", [*args, file]
        with self.transaction() as db:
            rows = db.execute(f"SELECT fingerprint, file FROM sessions WHERE {where}", args).fetchall()
            for row_fingerprint, _ in rows:
                db.execute("DELETE FROM sessions WHERE key=? AND fingerprint=?", (key, row_fingerprint))
                db.execute("DELETE FROM session_blocks WHERE key=? AND fingerprint=?", (key, row_fingerprint))
            if fingerprint is None and file is None:  # the agent is gone: what was set about it goes too
                db.execute("DELETE FROM agent_policies WHERE key=?", (key,))
        return [row_file for _, row_file in rows]

    def session_rows(self, key: str) -> list[tuple[str, str]]:
        """(fingerprint, file) of each model's snapshot of a session, the most recently used first."""
        return (
            self.db()
            .execute("SELECT fingerprint, file FROM sessions WHERE key=? ORDER BY last_used DESC", (key,))
            .fetchall()
        )

    def copy_session(self, key: str, fingerprint: str, new_key: str, new_session_id: str, new_file: str) -> bool:
        """A new session row (`new_key`, `new_session_id`) for `new_file`, a copy of the snapshot file of
        `key`'s row under `fingerprint`, with the same chain, in one transaction; whether that row existed."""
        with self.transaction() as db:
            copied = db.execute(
                "INSERT INTO sessions SELECT ?, fingerprint, ?, ?, checksum, bytes, tokens, ? FROM sessions "
                "WHERE key=? AND fingerprint=?",
                (new_key, new_session_id, new_file, time.time(), key, fingerprint),
            ).rowcount
            db.execute(
                "INSERT INTO session_blocks SELECT ?, fingerprint, position, name FROM session_blocks "
                "WHERE key=? AND fingerprint=?",
                (new_key, key, fingerprint),
            )
        return copied > 0

    def session_files(self, key: str, fingerprint: str) -> tuple[tuple, list[tuple]] | None:
        """A session's snapshot row (file, checksum, bytes, tokens) and its chain's block rows in order
        (name, file, checksum, bytes; file None for a block not stored), read together."""
        with self.transaction(write=False) as db:
            row = db.execute(
                "SELECT file, checksum, bytes, tokens FROM sessions WHERE key=? AND fingerprint=?", (key, fingerprint)
            ).fetchone()
            if row is None:
                return None
            blocks = db.execute(
                "SELECT c.name, b.file, b.checksum, b.bytes FROM session_blocks c "
                "LEFT JOIN blocks b ON b.name = c.name WHERE c.key=? AND c.fingerprint=? ORDER BY c.position",
                (key, fingerprint),
            ).fetchall()
        return tuple(row), [tuple(block) for block in blocks]

    def touch_session(self, key: str, fingerprint: str) -> None:
        self.db().execute(
            "UPDATE sessions SET last_used=? WHERE key=? AND fingerprint=?", (time.time(), key, fingerprint)
        )

    # -- policies ----------------------------------------------------------------------------------
    def policies(self) -> dict[str, AgentPolicy]:
        """Every agent's policy that is not the default, by session id."""
        rows = self.db().execute(
            "SELECT session_id, pinned, retention_s, keep_until, retention_by_user FROM agent_policies"
        )
        return {
            sid: AgentPolicy(bool(pinned), retention, keep, bool(by_user))
            for sid, pinned, retention, keep, by_user in rows
        }

    def put_policy(self, session_id: str, policy: AgentPolicy) -> None:
        key = session_key(session_id)
        if policy.is_default:
            self.db().execute("DELETE FROM agent_policies WHERE key=?", (key,))
            return
        self.db().execute(
            "INSERT OR REPLACE INTO agent_policies VALUES (?,?,?,?,?,?)",
            (key, session_id, int(policy.pinned), policy.retention_s, policy.keep_until, int(policy.retention_by_user)),
        )

    def last_used(self, key: str) -> float | None:
        (used,) = self.db().execute("SELECT MAX(last_used) FROM sessions WHERE key=?", (key,)).fetchone()
        return used

    def sessions_by_use(self) -> list[tuple[str, float]]:
        """(session id, last use under any model) of every session with a snapshot, least recently used first."""
        return (
            self.db()
            .execute("SELECT session_id, MAX(last_used) AS used FROM sessions GROUP BY key ORDER BY used")
            .fetchall()
        )

    # -- the whole index ---------------------------------------------------------------------------
    def files(self) -> list[tuple[str, str, str, str]]:
        """(table, row key, file, checksum) of every row that names a file; a block's row key is its name."""
        with self.transaction(write=False) as db:
            blocks = db.execute("SELECT 'blocks', name, file, checksum FROM blocks").fetchall()
            sessions = db.execute("SELECT 'sessions', key, file, checksum FROM sessions").fetchall()
        return blocks + sessions

    def clear(self) -> list[str]:
        """Delete every row; returns the files they named."""
        with self.transaction() as db:
            files = [row[0] for row in db.execute("SELECT file FROM blocks UNION ALL SELECT file FROM sessions")]
            for table in CACHE_TABLES:
                db.execute(f"DELETE FROM {table}")
        return files

    def totals(self, table: str) -> tuple[int, int]:
        """(rows, bytes) of the blocks or sessions table."""
        count, size = self.db().execute(f"SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM {table}").fetchone()
        return int(count), int(size)

    def size_info(self) -> SizeInfo:
        with self.transaction(write=False) as db:
            (evictable,) = db.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM blocks WHERE name NOT IN (SELECT name FROM session_blocks)"
            ).fetchone()
            (total,) = db.execute(
                "SELECT (SELECT COALESCE(SUM(bytes), 0) FROM blocks) + (SELECT COALESCE(SUM(bytes), 0) FROM sessions)"
            ).fetchone()
        return SizeInfo(evictable_bytes=int(evictable), protected_bytes=int(total - evictable))

    def problems(self) -> list[str]:
        """What is inconsistent inside the index: chains of sessions that have no row, chains with gaps."""
        with self.transaction(write=False) as db:
            return self._problems(db)

    @staticmethod
    def _problems(db: sqlite3.Connection) -> list[str]:
        found = [
            f"chain rows of session key {key} ({fingerprint}) without a session row"
            for key, fingerprint in db.execute(
                "SELECT DISTINCT key, fingerprint FROM session_blocks "
                "WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.key = session_blocks.key "
                "AND s.fingerprint = session_blocks.fingerprint)"
            )
        ]
        found += [
            f"chain of session key {key} ({fingerprint}) has gaps"
            for key, fingerprint in db.execute(
                "SELECT key, fingerprint FROM session_blocks GROUP BY key, fingerprint "
                "HAVING MIN(position) != 0 OR MAX(position) != COUNT(*) - 1"
            )
        ]
        return found

    # -- reports -----------------------------------------------------------------------------------
    def shared_bytes_saved(self) -> int:
        """Bytes sessions would need more if each stored its own copy of the blocks it shares."""
        (saved,) = (
            self.db()
            .execute(
                f"SELECT COALESCE(SUM(b.bytes * (u.users - 1)), 0) FROM ({USERS}) u JOIN blocks b ON b.name = u.name"
            )
            .fetchone()
        )
        return int(saved)

    def session_summaries(self) -> dict[str, SessionSummary]:
        """Each session's stored cache under its most recently used model (its row comes last), by session id."""
        rows = (
            self.db()
            .execute(
                f"""SELECT s.session_id, s.fingerprint, s.tokens, s.last_used, s.bytes,
                       COUNT(c.name), COALESCE(SUM(u.users > 1), 0), COALESCE(SUM(b.bytes), 0)
                FROM sessions s
                LEFT JOIN session_blocks c ON c.key = s.key AND c.fingerprint = s.fingerprint
                LEFT JOIN ({USERS}) u ON u.name = c.name
                LEFT JOIN blocks b ON b.name = c.name
                GROUP BY s.key, s.fingerprint
                ORDER BY s.last_used"""
            )
            .fetchall()
        )
        return {
            session_id: SessionSummary(
                fingerprint=fingerprint,
                tokens=tokens,
                blocks=blocks,
                shared_blocks=shared,
                bytes=snapshot_bytes + block_bytes,
                last_used=last_used,
            )
            for session_id, fingerprint, tokens, last_used, snapshot_bytes, blocks, shared, block_bytes in rows
        }

    def session_blocks(self, fingerprint: str, session_id: str) -> list[StoredBlock]:
        """The session's chain, in order: name, bytes, last use, and every session (of the model) using it."""
        with self.transaction(write=False) as db:
            row = db.execute(
                "SELECT key FROM sessions WHERE session_id=? AND fingerprint=?", (session_id, fingerprint)
            ).fetchone()
            if row is None:
                return []
            chain = db.execute(
                "SELECT c.name, b.bytes, b.last_used FROM session_blocks c LEFT JOIN blocks b ON b.name = c.name "
                "WHERE c.key=? AND c.fingerprint=? ORDER BY c.position",
                (row[0], fingerprint),
            ).fetchall()
            users: dict[str, list[str]] = {}
            for name, user in db.execute(
                "SELECT o.name, s.session_id FROM session_blocks o "
                "JOIN sessions s ON s.key = o.key AND s.fingerprint = o.fingerprint "
                "WHERE o.fingerprint=? AND o.name IN "
                "(SELECT name FROM session_blocks WHERE key=? AND fingerprint=?)",
                (fingerprint, row[0], fingerprint),
            ):
                users.setdefault(name, []).append(user)
        return [
            StoredBlock(
                name=name,
                bytes=nbytes or 0,
                last_used=last_used or 0.0,
                stored=nbytes is not None,
                agents=tuple(sorted(users.get(name, []))),
            )
            for name, nbytes, last_used in chain
        ]

    def resume_files(self, session_id: str, fingerprint: str | None = None) -> tuple[str, list[str]] | None:
        """The files a resume of the session at its end reads: its snapshot, and its chain's block files
        in order up to the first block that is not stored. The most recently used model's, unless
        `fingerprint` names one."""
        where, args = "key=?", [session_key(session_id)]
        if fingerprint is not None:
            where, args = where + " AND fingerprint=?", [*args, fingerprint]
        with self.transaction(write=False) as db:
            row = db.execute(
                f"SELECT key, fingerprint, file FROM sessions WHERE {where} ORDER BY last_used DESC LIMIT 1", args
            ).fetchone()
            if row is None:
                return None
            rows = db.execute(
                "SELECT b.file FROM session_blocks c LEFT JOIN blocks b ON b.name = c.name "
                "WHERE c.key=? AND c.fingerprint=? ORDER BY c.position",
                row[:2],
            ).fetchall()
        blocks = []
        for (file,) in rows:
            if file is None:
                break
            blocks.append(file)
        return row[2], blocks


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _outdated(db: sqlite3.Connection) -> bool:
    return (
        "chain" in _columns(db, "sessions")
        or any("sha256" in _columns(db, t) for t in ("blocks", "sessions"))
        or "retention_by_user" not in _columns(db, "agent_policies")
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Bring an older index up to date, inside the caller's transaction.

    Its policies may lack `retention_by_user` (who set a retention was not recorded: as a client's hint,
    which a next hint may change, as before). Its checksum columns may still be named `sha256` (the
    values stay valid: engine/kv/checksum.py verifies both kinds); its chains may be JSON text in
    `sessions.chain`. A chain that does not parse drops its session (a snapshot without its chain cannot
    be placed; the turn is recomputed).
    """
    if "retention_by_user" not in _columns(db, "agent_policies"):
        db.execute("ALTER TABLE agent_policies ADD COLUMN retention_by_user INTEGER NOT NULL DEFAULT 0")
    for table in ("blocks", "sessions"):
        if "sha256" in _columns(db, table):
            db.execute(f"ALTER TABLE {table} RENAME COLUMN sha256 TO checksum")
    if "chain" not in _columns(db, "sessions"):
        return
    chains = db.execute("SELECT key, fingerprint, chain FROM sessions").fetchall()
    dropped = 0
    for key, fingerprint, text in chains:
        try:
            chain = json.loads(text)
            if not isinstance(chain, list) or not all(isinstance(name, str) for name in chain):
                raise ValueError("not a list of block names")
        except ValueError:
            db.execute("DELETE FROM sessions WHERE key=? AND fingerprint=?", (key, fingerprint))
            dropped += 1
            continue
        db.execute("DELETE FROM session_blocks WHERE key=? AND fingerprint=?", (key, fingerprint))
        db.executemany(
            "INSERT INTO session_blocks VALUES (?,?,?,?)",
            [(key, fingerprint, position, name) for position, name in enumerate(chain)],
        )
    # The same table without the chain column (SQLite's DROP COLUMN is recent: it is rebuilt instead).
    db.execute(TABLES["sessions"].replace("CREATE TABLE sessions", "CREATE TABLE sessions_moved", 1))
    db.execute(
        "INSERT INTO sessions_moved SELECT key, fingerprint, session_id, file, checksum, bytes, tokens, last_used "
        "FROM sessions"
    )
    db.execute("DROP TABLE sessions")
    db.execute("ALTER TABLE sessions_moved RENAME TO sessions")
    log.info("KV cache index: %d session chains moved into their table", len(chains) - dropped)
    if dropped:
        log.warning("KV cache index: %d session chains could not be read; those sessions are recomputed", dropped)
