"""Random operations on the hot pool and on the warm tier's index, each step checked against a simple model
of what they should hold and by their own integrity checks. A failure names its seed and step.

    hot pool     insert, acquire (checkout), release (put back, or check in with nothing), forget (drop),
                 pin (kept agents are evicted last), pressure (a long turn that forces evictions)
    warm index   add block, put session, forget session, fork session, evict (unnamed blocks, least
                 recently used first), touch
"""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict
from collections.abc import Callable

import pytest

import engine.kv.index as index_module
from engine.kv.blocks import block_names, root_name
from engine.kv.index import WarmIndex, session_key
from tests.kv.caches import BLOCK_TOKENS, BYTES_PER_TOKEN, ROOT, compacting_pool, holds_tokens, token_entry

pytestmark = pytest.mark.unit

STEPS = 300
SEEDS = [1, 2, 3, 4]


def run_steps(seed: int, step: Callable[[int], str], check: Callable[[], None]) -> None:
    """`step(number)` then `check()`, STEPS times; a failure is raised again naming the seed, the step and
    the operations that led to it."""
    done: list[str] = []
    for number in range(STEPS):
        operation = "?"
        try:
            operation = step(number)
            done.append(operation)
            check()
        except AssertionError as exc:
            recent = "; ".join(done[-6:])
            raise AssertionError(
                f"seed {seed}, step {number} ({operation}) failed: {exc}\nlast steps: {recent}"
            ) from exc


# -- hot pool ---------------------------------------------------------------------------------------------
class PoolModel:
    """What the pool should hold: resident agents least recently used first, each with its tokens and
    whether it is compacted; bytes as live caches, tails and the distinct blocks of compacted agents."""

    def __init__(self, budget_bytes: int, max_agents: int, live_agents: int):
        self.budget_bytes = budget_bytes
        self.max_agents = max_agents
        self.live_agents = live_agents
        self.resident: OrderedDict[str, tuple[list[int], bool]] = OrderedDict()
        self.kept: set[str] = set()
        self.evicted: set[str] = set()
        self.evictions = 0

    def used_bytes(self) -> int:
        live = sum(len(tokens) for tokens, compact in self.resident.values() if not compact)
        tails = sum(len(tokens) % BLOCK_TOKENS for tokens, compact in self.resident.values() if compact)
        blocks = {
            name
            for tokens, compact in self.resident.values()
            if compact
            for name in block_names(tokens, ROOT, BLOCK_TOKENS)
        }
        return (live + tails + len(blocks) * BLOCK_TOKENS) * BYTES_PER_TOKEN

    def put(self, session_id: str, tokens: list[int]) -> list[str]:
        self.evicted.discard(session_id)
        self.resident.pop(session_id, None)
        self.resident[session_id] = (tokens, False)
        older = list(self.resident)[: max(0, len(self.resident) - self.live_agents)]
        for other in older:
            self.resident[other] = (self.resident[other][0], True)
        evicted = []
        while self.resident and (len(self.resident) > self.max_agents or self.used_bytes() > self.budget_bytes):
            victim = next((sid for sid in self.resident if sid not in self.kept), next(iter(self.resident)))
            del self.resident[victim]
            evicted.append(victim)
        self.evicted.update(evicted)
        self.evictions += len(evicted)
        return evicted

    def drop(self, session_id: str) -> bool:
        self.evicted.discard(session_id)
        return self.resident.pop(session_id, None) is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_random_hot_pool_operations_match_the_model(seed):
    rng = random.Random(seed)
    live_agents = seed % 3  # 0: every idle agent compacted; 1, 2: the most recent stay live
    budget_bytes, max_agents = 60 * BYTES_PER_TOKEN, 5
    model = PoolModel(budget_bytes, max_agents, live_agents)
    pool = compacting_pool(budget_bytes, max_agents, live_agents, kept=lambda session_id: session_id in model.kept)
    session_ids = [f"agent-{number}" for number in range(8)]
    prefixes = [[rng.randrange(1000) for _ in range(2 * BLOCK_TOKENS)] for _ in range(3)]
    held: dict[str, object] = {}  # checked-out agents: the entry checkout gave (None: none)
    fresh_ids = (f"long-{number}" for number in itertools.count())

    def next_tokens(session_id: str) -> list[int]:
        suffix = [rng.randrange(1000) for _ in range(rng.randrange(1, 2 * BLOCK_TOKENS))]
        if session_id in model.resident and rng.random() < 0.5:
            return model.resident[session_id][0] + suffix
        return rng.choice(prefixes)[: rng.randrange(2 * BLOCK_TOKENS + 1)] + suffix

    def put(session_id: str, entry) -> str:
        expected = model.put(session_id, list(entry.tokens))
        evicted = pool.put(entry)
        assert evicted == expected, f"put {session_id} evicted {evicted}, the model {expected}"
        return f"put {session_id} ({len(entry.tokens)} tokens) evicting {expected}"

    def step(number: int) -> str:
        idle = [sid for sid in session_ids if sid not in held]
        operation = rng.choices(["insert", "acquire", "release", "forget", "pin", "pressure"], [30, 25, 30, 8, 6, 6])[0]
        if operation == "acquire" and idle:
            session_id = rng.choice(idle)
            entry = pool.checkout(session_id)
            stored = model.resident.pop(session_id, None)
            held[session_id] = entry
            if stored is None:
                assert entry is None, f"{session_id} checked out though it was not resident"
                return f"acquire {session_id}: not resident"
            assert entry is not None, f"{session_id} was resident but checked out nothing"
            assert entry.tokens == stored[0] and holds_tokens(entry.cache, stored[0]), "wrong cache checked out"
            return f"acquire {session_id} ({len(stored[0])} tokens)"
        if operation == "release" and held:
            session_id = rng.choice(sorted(held))
            entry = held.pop(session_id)
            if rng.random() < 0.2:
                pool.check_in(session_id)  # the turn kept nothing
                return f"release {session_id} with nothing"
            if entry is not None and rng.random() < 0.3:
                return put(session_id, entry)  # the same cache back (a cancelled turn)
            return put(session_id, token_entry(session_id, next_tokens(session_id)))
        if operation == "forget":
            session_id = rng.choice(idle or session_ids)
            if session_id in held:
                return "forget: every agent is checked out"
            assert pool.drop(session_id) == model.drop(session_id)
            return f"forget {session_id}"
        if operation == "pin":
            session_id = rng.choice(session_ids)
            model.kept ^= {session_id}
            return f"pin {session_id}: {session_id in model.kept}"
        if operation == "pressure":
            session_id = next(fresh_ids)
            return put(session_id, token_entry(session_id, [rng.randrange(1000) for _ in range(rng.randrange(20, 70))]))
        session_id = rng.choice(idle) if idle else None
        if session_id is None:
            return "insert: every agent is checked out"
        return put(session_id, token_entry(session_id, next_tokens(session_id)))

    def check() -> None:
        pool.check_integrity()
        entries = pool.entries()
        assert [entry.session_id for entry in entries] == list(model.resident), "resident agents or their order"
        for entry in entries:
            tokens, compact = model.resident[entry.session_id]
            assert entry.tokens == tokens and entry.compact == compact, f"{entry.session_id}'s record"
        assert pool.used_bytes == model.used_bytes(), "bytes held"
        assert pool.evictions == model.evictions
        for session_id in [*session_ids, *model.evicted]:
            assert pool.was_evicted(session_id) == (session_id in model.evicted), f"{session_id} evicted or not"

    run_steps(seed, step, check)


# -- warm index -------------------------------------------------------------------------------------------
class Clock:
    """time.time for the index: every reading later than the one before, so LRU order has no ties."""

    def __init__(self):
        self.now = 1_000_000.0

    def time(self) -> float:
        self.now += 1.0
        return self.now


class IndexModel:
    """What the index should hold: blocks (bytes, last use), and each session's row and chain."""

    def __init__(self):
        self.blocks: dict[str, dict] = {}  # name -> {"fingerprint", "file", "bytes", "used"}
        self.sessions: dict[tuple[str, str], dict] = {}  # (key, fingerprint) -> {"file", "bytes", "chain"}

    def chained(self) -> dict[str, int]:
        users: dict[str, int] = {}
        for row in self.sessions.values():
            for name in row["chain"]:
                users[name] = users.get(name, 0) + 1
        return users

    def evictable(self) -> list[str]:
        chained = self.chained()
        unnamed = [name for name in self.blocks if name not in chained]
        return sorted(unnamed, key=lambda name: self.blocks[name]["used"])


@pytest.mark.parametrize("seed", SEEDS)
def test_random_warm_index_operations_match_the_model(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    clock = Clock()
    monkeypatch.setattr(index_module, "time", clock)
    index = WarmIndex(tmp_path / "index.sqlite", may_migrate=True)
    model = IndexModel()
    fingerprints = ("model-a", "model-b")
    roots = {fingerprint: root_name(fingerprint, "full,full", BLOCK_TOKENS) for fingerprint in fingerprints}
    session_ids = [f"agent-{number}" for number in range(6)]
    prefixes = [[rng.randrange(1000) for _ in range(3 * BLOCK_TOKENS)] for _ in range(2)]
    files = (f"file-{number}" for number in itertools.count())

    def chain_for(fingerprint: str) -> list[str]:
        tokens = rng.choice(prefixes)[: rng.randrange(3 * BLOCK_TOKENS + 1)]
        tokens += [rng.randrange(1000) for _ in range(rng.randrange(0, 3 * BLOCK_TOKENS))]
        return block_names(tokens, roots[fingerprint], BLOCK_TOKENS)

    def step(number: int) -> str:
        operation = rng.choices(["block", "session", "forget", "fork", "evict", "touch"], [20, 35, 12, 8, 15, 10])[0]
        fingerprint = rng.choice(fingerprints)
        if operation == "block":  # the blocks of a turn, before (or without) its session's row
            names = chain_for(fingerprint)
            for name in names:
                if not index.has_block(name):
                    size = rng.randrange(100, 1000)
                    index.add_block(name, fingerprint, f"{next(files)}.block", "sum", size)
                    model.blocks[name] = {"fingerprint": fingerprint, "bytes": size, "used": clock.now}
            return f"blocks {len(names)} under {fingerprint}"
        session_id = rng.choice(session_ids)
        key = session_key(session_id)
        if operation == "session":  # its chain may name blocks that are not stored (yet, or any more)
            chain, file, size = chain_for(fingerprint), f"{next(files)}.session", rng.randrange(50, 500)
            previous = model.sessions.get((key, fingerprint))
            replaced = index.put_session(key, fingerprint, session_id, file, "sum", size, 0, chain)
            assert replaced == (previous["file"] if previous else None), "the file the replaced row named"
            model.sessions[(key, fingerprint)] = {"file": file, "bytes": size, "chain": chain}
            return f"session {session_id} under {fingerprint}, chain of {len(chain)}"
        if operation == "forget":
            which = rng.choice([None, fingerprint])
            expected = {k: row for k, row in model.sessions.items() if k[0] == key and which in (None, k[1])}
            assert sorted(index.delete_sessions(key, which)) == sorted(row["file"] for row in expected.values())
            for k in expected:
                del model.sessions[k]
            return f"forget {session_id} under {which or 'every model'}"
        if operation == "fork":
            new_id = rng.choice(session_ids)
            new_key = session_key(new_id)
            source = model.sessions.get((key, fingerprint))
            if source is None or new_id == session_id or (new_key, fingerprint) in model.sessions:
                return "fork: nothing to fork"
            file = f"{next(files)}.session"
            assert index.copy_session(key, fingerprint, new_key, new_id, file)
            model.sessions[(new_key, fingerprint)] = {**source, "file": file, "chain": list(source["chain"])}
            return f"fork {session_id} to {new_id} under {fingerprint}"
        if operation == "evict":
            count = rng.randrange(1, 4)
            chosen = index.evictable_blocks()[:count]
            for name, file, size in chosen:
                assert size == model.blocks[name]["bytes"], f"{name}'s size"
                assert index.delete_block(name, file), f"{name} was listed but not deleted"
                del model.blocks[name]
            return f"evict {[name[:6] for name, _, _ in chosen]}"
        names = [name for name in model.blocks if rng.random() < 0.3]
        if names:
            index.touch_blocks(names)
            for name in names:
                model.blocks[name]["used"] = clock.now
        return f"touch {len(names)} blocks"

    def check() -> None:
        assert index.problems() == []
        users = model.chained()
        evictable = model.evictable()
        assert [name for name, _, _ in index.evictable_blocks()] == evictable, "evictable blocks or their order"
        size = index.size_info()
        evictable_bytes = sum(model.blocks[name]["bytes"] for name in evictable)
        total = sum(b["bytes"] for b in model.blocks.values()) + sum(s["bytes"] for s in model.sessions.values())
        assert (size.evictable_bytes, size.total_bytes) == (evictable_bytes, total), "size info"
        assert index.shared_bytes_saved() == sum(
            block["bytes"] * (users[name] - 1) for name, block in model.blocks.items() if users.get(name, 0) > 1
        )
        for (key, fingerprint), row in model.sessions.items():
            assert index.session(key, fingerprint) == (row["file"], "sum", row["chain"]), "a session's row"
            stored = index.stored_prefix(fingerprint, row["chain"])
            assert all(name in model.blocks for name in row["chain"][:stored])
            assert stored == len(row["chain"]) or row["chain"][stored] not in model.blocks

    try:
        run_steps(seed, step, check)
    finally:
        index.close()
