"""The shared tier: KV blocks, session snapshots and transcripts on Redis (or Valkey), for many instances.

    am:{fingerprint}:block:{name}          a block's file (the warm tier's bytes, engine/kv/codec.py) after
                                           its checksum and a newline; SET NX: a chained name stands for
                                           its whole prefix, so whichever instance stores it first serves all
    am:{fingerprint}:session:{key}         hash: id, snapshot (file bytes), checksum, chain (JSON), tokens
    am:transcript:{key}                    a session's transcript (engine/sessions.py), JSON
    am:turn:{key}                          the instance running the session's turn (engine/kv/shared_turns.py)

Every instance writes behind its local warm tier (on the tier's writer thread, after the local write) and
reads here only what its own disk lacks: another instance's session, or a prefix another computed. Redis
is a helper, never a dependency: a failed or slow call marks it down (logged once), every call then answers
"nothing shared" at once until RETRY_S has passed, and what was written meanwhile is pushed again once it
answers: sessions from the local tier's files with the next write, transcripts from their files at once, on a
thread of their own (unless Redis holds a newer copy, another instance's). Its size is Redis's own `maxmemory`
with an LRU policy (docs/deployment.md): a block evicted there is a MissingBlock here, and the turn
recomputes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from engine.kv import codec
from engine.kv.checksum import matches
from engine.kv.stats import SharedTierStats
from engine.kv.tier import Layers, MatchResult, MissingBlock, SessionSnapshot, WriteJob

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_S = 5.0  # how long a Redis that failed is left alone before the next try
TIMEOUT_S = 2.0  # one call's longest wait: a slow Redis costs a turn this much at most, then it is down
BEHIND_REMEMBERED = 10_000  # sessions written while Redis was down, pushed again when it is back


@functools.cache
def shared_tier(url: str) -> SharedTier:
    """The process's one client of the Redis at `url` (its connection pool serves every thread)."""
    return SharedTier(url)


def shared_key(session_id: str) -> str:
    """A session id (user input, any characters) as a key part."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:40]


class SharedTier:
    def __init__(self, url: str):
        import redis

        self.url = url
        self._client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        self._errors = (redis.RedisError, OSError)
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_try = 0.0
        self.last_error: str | None = None
        self.failures = 0
        self.blocks_pushed = 0
        self.sessions_pushed = 0
        self._behind: dict[tuple[str, str], None] = {}  # (fingerprint, session id), oldest first
        self._transcripts_behind: dict[str, Path] = {}  # session id: its local file, oldest first

    @property
    def up(self) -> bool:
        return self._down_since is None

    def stats(self) -> SharedTierStats:
        """The figures for /health and /metrics (the URL without its password)."""
        return SharedTierStats(
            url=_without_password(self.url),
            up=self.up,
            down_since=self._down_since,
            last_error=self.last_error,
            failures=self.failures,
            blocks_pushed=self.blocks_pushed,
            sessions_pushed=self.sessions_pushed,
            behind=len(self._behind),
        )

    def _call(self, what: str, call: Callable, default: T) -> T:
        """`call(client)`, or `default` while Redis is down or when the call fails (then it is down)."""
        if self._down_since is not None and time.monotonic() < self._next_try:
            return default
        try:
            result = call(self._client)
        except self._errors as exc:
            with self._lock:
                self.failures += 1
                self.last_error = f"{what}: {exc}"
                self._next_try = time.monotonic() + RETRY_S
                if self._down_since is None:
                    self._down_since = time.time()
                    log.warning("the shared KV tier at %s is down (%s); serving from local tiers", self.url, exc)
            return default
        if self._down_since is not None:
            with self._lock:
                back, self._down_since = self._down_since is not None, None
            if back:
                log.warning("the shared KV tier at %s is back", _without_password(self.url))
                threading.Thread(target=self._catch_up_transcripts, name="shared-transcripts", daemon=True).start()
        return result

    # -- reads (engine thread) ---------------------------------------------------------------------
    def match(self, fingerprint: str, names: list[str]) -> MatchResult:
        """How many of `names`, from the first, are stored."""
        if not names:
            return MatchResult(())

        def exists(client):
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.exists(_block_key(fingerprint, name))
            return pipe.execute()

        found = self._call("match", exists, [])
        count = next((i for i, stored in enumerate(found) if not stored), len(found))
        return MatchResult(tuple(names[:count]))

    def read_blocks(self, fingerprint: str, names: list[str]) -> Iterator[Layers]:
        """The layers of each named block in order; MissingBlock at the first one that is not stored,
        damaged, or cannot be read now."""
        for name in names:
            value = self._call("read", lambda client, n=name: client.get(_block_key(fingerprint, n)), None)
            layers = _decoded_block(value) if value is not None else None
            if layers is None:
                raise MissingBlock(name)
            yield layers

    def read_session(self, fingerprint: str, session_id: str) -> SessionSnapshot | None:
        """The session's snapshot and chain as another instance stored them, or None."""
        fields = self._call("read", lambda client: client.hgetall(_session_key(fingerprint, session_id)), {})
        if not fields or fields.get(b"id", b"").decode("utf-8", "replace") != session_id:
            return None
        data, checksum = fields.get(b"snapshot", b""), fields.get(b"checksum", b"").decode()
        if not codec.intact("sessions", data, checksum):
            log.warning("the shared snapshot of session %r failed its check; recomputing", session_id)
            return None
        return codec.decode_snapshot(session_id, data, json.loads(fields[b"chain"]))

    # -- writes (the local tier's writer thread) ---------------------------------------------------------
    def push(self, job: WriteJob, local) -> None:
        """Store a job the local warm tier `local` has just written: its blocks not stored yet, then its
        snapshot. While Redis is down the session is remembered; once a push gets through, those are
        pushed again from `local`'s files."""
        snapshot = job.snapshot
        names = list(job.blocks)
        stored = self.match(job.fingerprint, names).blocks if names else 0
        values = {name: _packed(codec.pack_block(job.blocks[name], name, job.fingerprint)) for name in names[stored:]}
        pushed = self._push_blocks(job.fingerprint, values)
        if snapshot is not None and pushed:
            payload = codec.pack_snapshot(snapshot)
            data = b"".join(bytes(chunk) for chunk in payload.chunks)
            pushed = self._push_session(job.fingerprint, snapshot, data, payload.checksum)
        if not pushed:
            if snapshot is not None:
                self._remember(job.fingerprint, snapshot.session_id)
            return
        self._catch_up(local)

    def _push_blocks(self, fingerprint: str, values: dict[str, bytes]) -> bool:
        if not values:
            return self.up or self._call("ping", lambda client: client.ping(), False)

        def store(client):
            pipe = client.pipeline(transaction=False)
            for name, value in values.items():
                pipe.set(_block_key(fingerprint, name), value, nx=True)
            return pipe.execute()

        results = self._call("write", store, None)
        if results is None:
            return False
        self.blocks_pushed += sum(1 for stored in results if stored)
        return True

    def _push_session(self, fingerprint: str, snapshot: SessionSnapshot, data: bytes, checksum: str) -> bool:
        mapping = {
            "id": snapshot.session_id,
            "snapshot": data,
            "checksum": checksum,
            "chain": json.dumps(list(snapshot.chain)),
            "tokens": len(snapshot.tokens),
            "at": time.time(),
        }
        key = _session_key(fingerprint, snapshot.session_id)
        if self._call("write", lambda client: client.hset(key, mapping=mapping), None) is None:
            return False
        self.sessions_pushed += 1
        return True

    def _remember(self, fingerprint: str, session_id: str) -> None:
        with self._lock:
            self._behind.pop((fingerprint, session_id), None)
            self._behind[(fingerprint, session_id)] = None
            while len(self._behind) > BEHIND_REMEMBERED:
                self._behind.pop(next(iter(self._behind)))

    def _catch_up(self, local) -> None:
        """Push again, from the local tier's files, the sessions written while Redis was down."""
        while self._behind and self.up:
            with self._lock:
                (fingerprint, session_id) = next(iter(self._behind))
                self._behind.pop((fingerprint, session_id))
            files = local.session_files(fingerprint, session_id) if local is not None else None
            if files is None:
                continue  # forgotten since, or written again (then pushed with that write)
            snapshot_bytes, checksum, chain, blocks = files
            values = {name: _with_checksum(block_sum, data) for name, data, block_sum in blocks}
            stored = self.match(fingerprint, list(values)).blocks
            if not self._push_blocks(fingerprint, dict(list(values.items())[stored:])):
                self._remember(fingerprint, session_id)
                return
            snapshot = codec.decode_snapshot(session_id, snapshot_bytes, chain)
            if not self._push_session(fingerprint, snapshot, snapshot_bytes, checksum):
                self._remember(fingerprint, session_id)
                return

    def forget_session(self, session_id: str) -> None:
        """Delete the session's snapshots (every model's); its blocks stay for others. (Its transcript is
        the session store's.)"""

        def delete(client):
            keys = list(client.scan_iter(match=f"am:*:session:{shared_key(session_id)}"))
            return client.delete(*keys) if keys else 0

        self._call("forget", delete, 0)

    # -- transcripts (any thread) ------------------------------------------------------------------------
    def read_transcript(self, session_id: str) -> str | None:
        value = self._call("read", lambda client: client.get(_transcript_key(session_id)), None)
        return value.decode("utf-8") if value is not None else None

    def write_transcript(self, session_id: str, text: str, path: Path) -> bool:
        """Store the transcript just saved at `path`. While Redis is down the session is remembered, and
        once Redis answers again its file, as it is then, is stored."""
        written = self._call("write", lambda client: client.set(_transcript_key(session_id), text), None) is not None
        self._remember_transcript(session_id, path if not written else None)
        return written

    def delete_transcript(self, session_id: str, path: Path) -> bool:
        """Delete the shared copy of the transcript just deleted at `path`. While Redis is down the session
        is remembered, and once Redis answers again its copy there is deleted (unless the file is back)."""
        deleted = self._call("delete", lambda client: client.delete(_transcript_key(session_id)), _DOWN)
        self._remember_transcript(session_id, path if deleted is _DOWN else None)
        return deleted is not _DOWN and bool(deleted)

    def _remember_transcript(self, session_id: str, path: Path | None) -> None:
        """The session's transcript file, for the catch-up once Redis answers (None: Redis is up to date
        with it); the newest BEHIND_REMEMBERED are kept."""
        with self._lock:
            self._transcripts_behind.pop(session_id, None)
            if path is not None:
                self._transcripts_behind[session_id] = path
                while len(self._transcripts_behind) > BEHIND_REMEMBERED:
                    self._transcripts_behind.pop(next(iter(self._transcripts_behind)))

    def _catch_up_transcripts(self) -> None:
        """Bring Redis up to date with the files of the transcripts saved or deleted while it was down,
        oldest first: each is stored as its file is now (unless Redis holds a copy saved later, by another
        instance), or deleted there when its file is gone."""
        while self.up:
            with self._lock:
                if not self._transcripts_behind:
                    return
                session_id = next(iter(self._transcripts_behind))
                path = self._transcripts_behind.pop(session_id)
            if not self._catch_up_transcript(_transcript_key(session_id), path):
                with self._lock:
                    self._transcripts_behind.setdefault(session_id, path)
                return

    def _catch_up_transcript(self, key: str, path: Path) -> bool:
        """Store the file at `path` under `key`, or delete `key` when the file is gone; False when Redis
        failed."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return self._call("delete", lambda client: client.delete(key), _DOWN) is not _DOWN
        stored = self._call("write", lambda client: _store_unless_newer(client, key, text), None)
        if stored and not path.exists():
            # Deleted (by this process or another: `agents rm`) after its file was read. A deletion removes
            # the file before the shared copy, so either it removed the copy after it was stored here, or
            # the file was gone when looked at now: the copy stored here goes too, unless it was replaced
            # meanwhile (the agent made again).
            self._call("delete", lambda client: client.eval(_DELETE_IF_OWNED, 1, key, text), 0)
        return stored is not None

    # -- turn claims (engine/kv/shared_turns.py; any thread) -----------------------------------------------
    def claim(self, key: str, token: str, ttl_ms: int) -> bool | None:
        """SET `key` to `token` for `ttl_ms` unless it is set: whether it was; None while Redis is down."""
        taken = self._call("claim", lambda client: client.set(key, token, nx=True, px=ttl_ms), _DOWN)
        return None if taken is _DOWN else bool(taken)

    def renew(self, key: str, token: str, ttl_ms: int) -> None:
        """Keep `key` another `ttl_ms` if it still holds `token`."""
        self._call("claim", lambda client: client.eval(_RENEW_IF_OWNED, 1, key, token, ttl_ms), 0)

    def unclaim(self, key: str, token: str) -> None:
        """Delete `key` if it still holds `token` (a claim that expired meanwhile may be another's now)."""
        self._call("claim", lambda client: client.eval(_DELETE_IF_OWNED, 1, key, token), 0)

    def transcripts(self) -> list[str]:
        """Every stored transcript (JSON texts)."""

        def read_all(client):
            keys = list(client.scan_iter(match="am:transcript:*", count=1000))
            return [value for value in client.mget(keys) if value is not None] if keys else []

        return [value.decode("utf-8") for value in self._call("read", read_all, [])]

    def close(self) -> None:
        self._client.close()


_DOWN = object()  # what a call answers while Redis is down, where None is an answer
_RENEW_IF_OWNED = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_DELETE_IF_OWNED = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _block_key(fingerprint: str, name: str) -> str:
    return f"am:{fingerprint}:block:{name}"


def _session_key(fingerprint: str, session_id: str) -> str:
    return f"am:{fingerprint}:session:{shared_key(session_id)}"


def _transcript_key(session_id: str) -> str:
    return f"am:transcript:{shared_key(session_id)}"


def _packed(payload: codec.Payload) -> bytes:
    return _with_checksum(payload.checksum, b"".join(bytes(chunk) for chunk in payload.chunks))


def _with_checksum(checksum: str, data: bytes) -> bytes:
    return checksum.encode("ascii") + b"\n" + data


def _decoded_block(value: bytes) -> Layers | None:
    checksum, _, data = value.partition(b"\n")
    if not matches(data, checksum.decode("ascii", "replace")):
        log.warning("a shared KV block failed its checksum; recomputing")
        return None
    try:
        return codec.decode_block(data)
    except codec.UNDECODABLE:
        return None


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _store_unless_newer(client, key: str, text: str) -> bool:
    """SET `key` to the transcript `text` unless the stored one was saved later; whether it was set."""
    import redis

    with client.pipeline() as pipe:
        try:
            pipe.watch(key)
            stored = pipe.get(key)
            if stored is not None and _saved_at(stored) >= _saved_at(text):
                return False
            pipe.multi()
            pipe.set(key, text)
            pipe.execute()
            return True
        except redis.WatchError:
            return False  # saved meanwhile, by another instance: that copy is the newer one


def _saved_at(text: str | bytes) -> float:
    """A transcript's `updated_at` (engine/sessions.py); 0 when it cannot be read."""
    try:
        saved = json.loads(text).get("updated_at", 0)
    except (ValueError, AttributeError):
        return 0.0
    return saved if isinstance(saved, int | float) else 0.0
