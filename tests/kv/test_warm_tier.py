"""The warm tier without a model: random writes, forgets and evictions keep it intact; an index from
before session_blocks (chains as JSON text) is moved to the new table in place, also when the move is
killed; forget and stats wait behind the KV writer, not on the engine thread."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from engine.atomic import atomic_write_chunks
from engine.kv import codec
from engine.kv.blocks import block_names, root_name
from engine.kv.index import session_key
from engine.kv.policy import AgentPolicy
from engine.kv.tier import SessionSnapshot, WriteJob
from engine.kv.warm import WarmTier
from tests.conftest import REPO_ROOT

BLOCK_TOKENS = 8
HEADS, DIM = 2, 32
FULL_LAYERS = (0, 1)
WINDOW_LAYER = 2  # a sliding-window layer: its last window is stored in the session snapshot
FINGERPRINTS = ("model-a", "model-b")
ROOTS = {fingerprint: root_name(fingerprint, "full,full,window5", BLOCK_TOKENS) for fingerprint in FINGERPRINTS}


def parts(seed: str, tokens: int) -> dict[str, np.ndarray]:
    """Keys and values of `tokens` tokens, a function of `seed` (a block's contents follow from its name)."""
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:12], 16))
    return {name: rng.standard_normal((HEADS, tokens, DIM)).astype(np.float16) for name in ("k", "v")}


def block_layers(name: str) -> dict:
    return {layer: parts(f"{name}/{layer}", BLOCK_TOKENS) for layer in FULL_LAYERS}


def snapshot(fingerprint: str, session_id: str, tokens: list[int]) -> SessionSnapshot:
    names = block_names(tokens, ROOTS[fingerprint], BLOCK_TOKENS)
    rest = len(tokens) - len(names) * BLOCK_TOKENS
    seed = f"{fingerprint}/{session_id}/{tokens}"
    # Every other one also has its windows at an earlier point (a window checkpoint: its last prompt's end)
    checkpoint = len(tokens) - 3 if len(tokens) % 2 and len(tokens) > 3 else 0
    return SessionSnapshot(
        session_id=session_id,
        tokens=tokens,
        chain=names,
        tail={layer: parts(f"{seed}/tail/{layer}", rest) for layer in FULL_LAYERS},
        windows={WINDOW_LAYER: parts(f"{seed}/window", min(len(tokens), 5))},
        root=ROOTS[fingerprint],
        checkpoint_tokens=checkpoint,
        checkpoint_windows={WINDOW_LAYER: parts(f"{seed}/checkpoint", min(checkpoint, 5))} if checkpoint else {},
    )


def write_job(fingerprint: str, snap: SessionSnapshot) -> WriteJob:
    """A turn's write, as KVMemory makes it: every block of the chain (the tier skips stored ones)."""
    return WriteJob(fingerprint, snap, {name: block_layers(name) for name in snap.chain})


def same_layers(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(
        first[layer].keys() == second[layer].keys()
        and all(np.array_equal(first[layer][part], second[layer][part]) for part in first[layer])
        for layer in first
    )


def block_files_on_disk(root: Path) -> dict[str, int]:
    """Stored blocks as the disk has them: name -> file size."""
    return {path.stem: path.stat().st_size for path in root.glob("*/blocks/*/*.safetensors")}


def session_bytes_on_disk(root: Path) -> int:
    return sum(path.stat().st_size for path in root.glob("*/sessions/*.safetensors"))


def assert_tier_matches(tier: WarmTier, expected: dict, forgotten: set) -> None:
    """The tier's own check, then what it holds against what was written, read through its interface
    and counted from the files on disk."""
    tier.check_integrity()
    assert not list(tier.root.rglob("*.tmp"))
    chained = set()
    for (fingerprint, session_id), snap in expected.items():
        got = tier.read_session(fingerprint, session_id)
        assert got is not None, (fingerprint, session_id)
        assert got.tokens == snap.tokens and got.chain == snap.chain and got.root == snap.root
        assert same_layers(got.tail, snap.tail) and same_layers(got.windows, snap.windows)
        assert got.checkpoint_tokens == snap.checkpoint_tokens
        assert same_layers(got.checkpoint_windows, snap.checkpoint_windows)
        # A block a session's chain names is never evicted for space.
        assert tier.match(fingerprint, snap.chain).blocks == len(snap.chain)
        for name, layers in zip(snap.chain, tier.read_blocks(fingerprint, snap.chain), strict=True):
            assert same_layers(layers, block_layers(name))
        chained.update(snap.chain)
    for fingerprint, session_id in forgotten - expected.keys():
        assert tier.read_session(fingerprint, session_id) is None
    # Every file on disk is indexed and every indexed one is there: the byte counts agree.
    on_disk = block_files_on_disk(tier.root)
    size = tier.size_info
    assert size.evictable_bytes == sum(nbytes for name, nbytes in on_disk.items() if name not in chained)
    assert size.total_bytes == sum(on_disk.values()) + session_bytes_on_disk(tier.root) == tier.stats().bytes


def next_tokens(rng: random.Random, expected: dict, key: tuple, prefixes: list[list[int]]) -> list[int]:
    """A session's next sequence: its own extended, a common prefix with a suffix, or a branch of another."""
    suffix = [rng.randrange(1000) for _ in range(rng.randrange(1, 3 * BLOCK_TOKENS))]
    choice = rng.random()
    if key in expected and choice < 0.5:
        return expected[key].tokens + suffix
    if expected and choice < 0.75:
        tokens = expected[rng.choice(sorted(expected))].tokens
        return tokens[: rng.randrange(len(tokens) + 1)] + suffix
    return rng.choice(prefixes) + suffix


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.slow
def test_random_writes_forgets_and_evictions_keep_the_tier_intact(tmp_path, seed):
    rng = random.Random(seed)
    root = tmp_path / "kv"
    budget_bytes = 60_000  # about 25 blocks: evictions happen all along

    def open_tier() -> WarmTier:
        tier = WarmTier(root, disk_budget_mb=1, clean_up=True)
        tier.disk_budget_bytes = budget_bytes
        return tier

    tier = open_tier()
    expected: dict[tuple[str, str], SessionSnapshot] = {}
    forgotten: set[tuple[str, str]] = set()
    prefixes = [[rng.randrange(1000) for _ in range(3 * BLOCK_TOKENS)] for _ in range(2)]
    session_ids = [f"agent-{index}" for index in range(6)]
    # Pinned, the budget never drops their caches: only the blocks no chain names go, however tight it is
    pinned = AgentPolicy(pinned=True)
    for session_id in session_ids:
        tier.set_policy(session_id, pinned)
    try:
        for _ in range(60):
            operation = rng.choices(["write", "anonymous", "forget", "evict", "reopen"], [50, 10, 20, 15, 5])[0]
            if operation == "write":
                key = (rng.choice(FINGERPRINTS), rng.choice(session_ids))
                snap = snapshot(*key, next_tokens(rng, expected, key, prefixes))
                tier.write(write_job(key[0], snap))
                expected[key] = snap
                forgotten.discard(key)
                size = tier.size_info
                assert size.total_bytes <= budget_bytes or size.evictable_bytes == 0
            elif operation == "anonymous":  # blocks only, no session: evictable from the start
                fingerprint = rng.choice(FINGERPRINTS)
                tokens = rng.choice(prefixes) + [rng.randrange(1000) for _ in range(2 * BLOCK_TOKENS)]
                names = block_names(tokens, ROOTS[fingerprint], BLOCK_TOKENS)
                tier.write(WriteJob(fingerprint, None, {name: block_layers(name) for name in names}))
            elif operation == "forget":
                session_id = rng.choice(session_ids)
                fingerprint = rng.choice([None, *FINGERPRINTS])
                tier.forget_session(fingerprint, session_id)
                tier.set_policy(session_id, pinned)  # a forgotten agent's policy goes with it
                for key in [k for k in expected if k[1] == session_id and fingerprint in (None, k[0])]:
                    del expected[key]
                    forgotten.add(key)
            elif operation == "evict":
                before = tier.size_info
                wanted = rng.randrange(0, 30_000)
                freed = tier.evict(wanted)
                after = tier.size_info
                assert after.protected_bytes == before.protected_bytes
                assert after.evictable_bytes == before.evictable_bytes - freed
                assert freed >= min(wanted, before.evictable_bytes)
            else:
                tier.close()
                tier = open_tier()
            assert_tier_matches(tier, expected, forgotten)
    finally:
        tier.close()


OLD_SCHEMA = """
CREATE TABLE blocks (
    name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, file TEXT NOT NULL, {checksum} TEXT NOT NULL,
    bytes INTEGER NOT NULL, last_used REAL NOT NULL);
CREATE TABLE sessions (
    key TEXT NOT NULL, fingerprint TEXT NOT NULL, session_id TEXT NOT NULL, file TEXT NOT NULL,
    {checksum} TEXT NOT NULL, bytes INTEGER NOT NULL, tokens INTEGER NOT NULL, chain TEXT NOT NULL,
    last_used REAL NOT NULL, PRIMARY KEY (key, fingerprint));
"""


def old_index(path: Path, checksum_column: str = "checksum") -> sqlite3.Connection:
    """An index as versions before session_blocks made it (the oldest named its checksums sha256)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA.format(checksum=checksum_column))
    return db


def write_old_files(root: Path, db: sqlite3.Connection, fingerprint: str, snap: SessionSnapshot, sha256: bool):
    """A session's files and rows as an older version wrote them."""

    def recorded(payload: codec.Payload, path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest() if sha256 else payload.checksum

    for name in snap.chain:
        payload = codec.pack_block(block_layers(name), name, fingerprint)
        file = f"{fingerprint}/blocks/{name[:2]}/{name}.safetensors"
        atomic_write_chunks(root / file, payload.chunks)
        db.execute(
            "INSERT OR REPLACE INTO blocks VALUES (?,?,?,?,?,?)",
            (name, fingerprint, file, recorded(payload, root / file), payload.size, time.time()),
        )
    key = session_key(snap.session_id)
    payload = codec.pack_snapshot(snap)
    file = f"{fingerprint}/sessions/{key}.{uuid.uuid4().hex[:12]}.safetensors"
    atomic_write_chunks(root / file, payload.chunks)
    db.execute(
        "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?,?)",
        (
            key,
            fingerprint,
            snap.session_id,
            file,
            recorded(payload, root / file),
            payload.size,
            len(snap.tokens),
            json.dumps(snap.chain),
            time.time(),
        ),
    )
    return file


def session_columns(root: Path) -> set[str]:
    with sqlite3.connect(root / "index.sqlite") as db:
        return {row[1] for row in db.execute("PRAGMA table_info(sessions)")}


@pytest.mark.parametrize("checksum_column", ["checksum", "sha256"])
def test_an_index_with_json_chains_is_moved_to_the_chain_table_when_opened(tmp_path, checksum_column):
    root = tmp_path / "kv"
    root.mkdir()
    system = list(range(100, 100 + 3 * BLOCK_TOKENS))
    sessions = {
        ("model-a", "alice"): snapshot("model-a", "alice", [*system, *range(5, 20)]),
        ("model-a", "bob"): snapshot("model-a", "bob", [*system, 7, 8, 9]),
        ("model-b", "alice"): snapshot("model-b", "alice", list(range(2 * BLOCK_TOKENS + 3))),
    }
    db = old_index(root / "index.sqlite", checksum_column)
    for (fingerprint, _), snap in sessions.items():
        write_old_files(root, db, fingerprint, snap, sha256=checksum_column == "sha256")
    # A chain that is not JSON (a damaged row): its session cannot be placed and is dropped.
    broken = snapshot("model-a", "carol", [*system, 1, 2])
    broken_file = write_old_files(root, db, "model-a", broken, sha256=checksum_column == "sha256")
    db.execute("UPDATE sessions SET chain='[\"abc' WHERE session_id='carol'")
    db.close()

    # While another process owns the cache dir this one cannot move the chains: it stays off the tier.
    with open(root / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        reader = WarmTier(root, disk_budget_mb=100)
        assert not reader.enabled and "older format" in reader.disabled_reason
        reader.close()
    assert "chain" in session_columns(root)

    tier = WarmTier(root, disk_budget_mb=100, clean_up=True)
    try:
        assert "chain" not in session_columns(root) and "checksum" in session_columns(root)
        assert_tier_matches(tier, sessions, {("model-a", "carol")})
        assert not (root / broken_file).exists()  # dropped from the index, then removed as a stray file
        summaries = tier.session_summaries()
        assert {sid: info.fingerprint for sid, info in summaries.items()} == {"alice": "model-b", "bob": "model-a"}
        assert summaries["bob"].blocks == 3 and summaries["bob"].shared_blocks == 3
        assert tier.shared_bytes_saved() == sum(
            block_files_on_disk(root)[name] for name in sessions["model-a", "bob"].chain
        )
        chain = tier.session_blocks("model-a", "bob")
        assert [block.name for block in chain] == sessions["model-a", "bob"].chain
        assert all(block.agents == ("alice", "bob") and block.stored for block in chain)
        # What the moved index is for: forgetting alice makes her own blocks evictable, the shared ones not.
        tier.forget_session("model-a", "alice")
        alice_only = set(sessions["model-a", "alice"].chain) - set(sessions["model-a", "bob"].chain)
        assert tier.size_info.evictable_bytes == sum(block_files_on_disk(root)[name] for name in alice_only)
        del sessions["model-a", "alice"]
    finally:
        tier.close()
    again = WarmTier(root, disk_budget_mb=100, clean_up=True)  # opening a moved index changes nothing
    try:
        assert_tier_matches(again, sessions, set())
    finally:
        again.close()


MIGRATING_CHILD = """
import sys
from pathlib import Path
from engine.kv.warm import WarmTier
print("opening", flush=True)
tier = WarmTier(Path(sys.argv[1]), disk_budget_mb=100)
print("opened" if tier.enabled else tier.disabled_reason, flush=True)
"""


@pytest.mark.slow
def test_a_move_killed_midway_leaves_the_old_index_and_the_next_open_moves_it(tmp_path):
    """kill -9 while the chains are being moved (a large index: the move takes a while): the next open
    finds every chain, in order."""
    template = tmp_path / "template"
    template.mkdir()
    db = old_index(template / "index.sqlite")
    chains = {}
    rows = []
    for index in range(600):
        key = session_key(f"agent-{index}")
        chains[key] = [hashlib.sha256(f"{index}/{position}".encode()).hexdigest()[:32] for position in range(64)]
        rows.append(
            (
                key,
                "model-a",
                f"agent-{index}",
                f"model-a/sessions/{key}.x.safetensors",
                "x",
                1,
                1,
                json.dumps(chains[key]),
                0.0,
            )
        )
    db.execute("BEGIN")
    db.executemany("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?)", rows)
    db.execute("COMMIT")
    db.close()

    def start(root: Path) -> tuple[subprocess.Popen, float]:
        child = subprocess.Popen(
            [sys.executable, "-c", MIGRATING_CHILD, str(root)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
        )
        assert child.stdout.readline().strip() == "opening"
        return child, time.perf_counter()

    whole = tmp_path / "whole"
    shutil.copytree(template, whole)
    child, started = start(whole)
    assert child.stdout.readline().strip() == "opened"
    move_s = time.perf_counter() - started
    child.wait()

    rng = random.Random(7)
    killed_before_commit = 0
    for attempt in range(5):
        root = tmp_path / f"kv-{attempt}"
        shutil.copytree(template, root)
        child, _ = start(root)
        time.sleep(rng.uniform(0.1, 0.9) * move_s)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        killed_before_commit += "chain" in session_columns(root)
        tier = WarmTier(root, disk_budget_mb=100)
        try:
            assert tier.enabled, tier.disabled_reason
            assert "chain" not in session_columns(root)
            for key, chain in chains.items():
                assert tier.index.session(key, "model-a")[2] == chain
            assert tier.index.problems() == []
        finally:
            tier.close()
    assert killed_before_commit > 0, f"every kill came after the move committed ({move_s:.2f} s)"


def test_forget_and_stats_wait_behind_the_writer_not_on_the_engine_thread(tmp_path):
    """With the writer busy (a slow disk), KVMemory's forget, stats and flush return at once with a
    Future; each is done after the writes queued before it, so stats count them and the forget sticks."""
    import mlx.core as mx
    from mlx_lm.models import llama
    from mlx_lm.models.cache import make_prompt_cache

    from engine.kv.memory import KVMemory
    from engine.settings import Settings
    from tests.conftest import TINY_LLAMA

    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(TINY_LLAMA))
    settings = Settings(data_dir=tmp_path, agent_cache_dir=tmp_path / "kv", kv_block_tokens=16)
    memory = KVMemory(settings, "fingerprint", model)
    try:
        tokens = list(range(1, 41))
        cache = make_prompt_cache(model)
        model(mx.array([tokens]), cache=cache)
        gate = threading.Event()
        memory.writer.run(lambda warm: gate.wait(60))
        memory.release("agent", tokens, cache)  # its write waits behind the slow job

        started = time.perf_counter()
        stats, forgotten, flushed = memory.stats(), memory.forget("agent"), memory.flush()
        assert time.perf_counter() - started < 1.0
        assert not (stats.done() or forgotten.done() or flushed.done())
        assert "agent" not in memory.hot

        gate.set()
        warm = stats.result(timeout=60).warm
        assert warm.sessions == 1 and warm.blocks == 2
        forgotten.result(timeout=60)
        flushed.result(timeout=60)
        assert memory.warm.read_session("fingerprint", "agent") is None
        assert memory.warm.size_info.protected_bytes == 0 and memory.warm.size_info.evictable_bytes > 0
        memory.check_integrity().result(timeout=60)
    finally:
        memory.close()


@pytest.mark.parametrize("compute", ["float16", "bfloat16", "float32"])
def test_restored_layers_hold_the_stored_tokens_cut_anywhere(tmp_path, compute):
    """Both restores (joined on the device by block, and the CPU's float32 one written in place) give
    each full layer exactly the blocks' and the tail's tokens, in the compute dtype, cut mid-block,
    at a block's end or inside the tail."""
    import mlx.core as mx

    from engine.cpu.restore import restore_float32
    from engine.kv.restore import restore_by_block

    tier = WarmTier(tmp_path / "kv", 1000)
    fingerprint = FINGERPRINTS[0]
    snap = snapshot(fingerprint, "agent", list(range(3 * BLOCK_TOKENS + 5)))
    tier.write(write_job(fingerprint, snap))
    pieces = [block_layers(name) for name in snap.chain] + [snap.tail]
    dtype = getattr(mx, compute)
    for tokens in (BLOCK_TOKENS + 3, 2 * BLOCK_TOKENS, len(snap.tokens)):
        tail = snap.tail if tokens > len(snap.chain) * BLOCK_TOKENS else None
        names = snap.chain[: -(-tokens // BLOCK_TOKENS)]
        reading = tier.read_blocks(fingerprint, names)
        if compute == "float32":
            capacity = tokens + 7
            layers = restore_float32(reading, tail, list(FULL_LAYERS), BLOCK_TOKENS, tokens, capacity)
        else:
            layers = restore_by_block(reading, tail, list(FULL_LAYERS), tokens, dtype, quantized=False)
        for layer in FULL_LAYERS:
            for part, restored in zip("kv", layers[layer], strict=True):
                stored = np.concatenate([piece[layer][part] for piece in pieces], axis=1)[:, :tokens]
                expected = np.array(mx.array(stored).astype(dtype).astype(mx.float32))
                assert restored.dtype == dtype
                # The float32 restore leaves room past `tokens` for the new turn
                assert restored.shape[1] == (max(capacity, tokens) if compute == "float32" else tokens)
                assert np.array_equal(np.array(restored.astype(mx.float32))[:, :tokens], expected)
