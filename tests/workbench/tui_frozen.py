"""A frozen stand-in for the TUI's source: fixed agents, transcript, pool and model (no clocks, no speeds),
so snapshots are the same on every run. The real engine is tested in test_tui.py.

The agents come from every origin the sidebar groups: the workbench (alice, her fork, bob who is pinned,
carol), Claude Code (a UUID titled by the server), Codex (a UUIDv7 thread) and an SDK client whose agent is
a KV cache without a transcript. Their chains share a prefix block, and one block is being written."""

from __future__ import annotations

from engine.kv.stats import BlockCounts, HotTotals, StoredBlock, WarmStats
from engine.requests import ChatMessage
from engine.sessions import Session
from workbench.tui.pool import Pool
from workbench.tui.turn_log import TurnRecord

CLAUDE = "0e9b7c1a-4f2d-4c1e-9a3b-5d6e7f809a1b"
CODEX = "0199a3f2-7c4e-7d21-8b3a-2f4e6a8c0d1e"
SUMMARY = {
    "model_id": "default",
    "fingerprint": "1517ef3cd2565fd632b3af9906c723d7",
    "backend": "cpu",
    "dtype": "float32",
    "parameters": 134_515_008,
    "context_length": 8192,
    "kv_bytes_per_token": 46080,
}
# Most recently used first, as the sources give them: the sidebar moves alice's fork up under alice
ROWS = [
    {"id": "alice", "model": "default", "turns": 2, "tokens": 612, "tier": "hot", "bytes": 28_200_000},
    {
        "id": CLAUDE,
        "model": "default",
        "turns": 0,
        "tokens": 2300,
        "tier": "hot",
        "bytes": 106_000_000,
        "title": "Claude Code · shop: Add a cart page to the store",
    },
    {"id": "bob", "model": "default", "turns": 5, "tokens": 1480, "tier": "warm", "bytes": 34_100_000, "pinned": True},
    {"id": CODEX, "model": "default", "turns": 0, "tokens": 3100, "tier": "hot", "bytes": 142_800_000},
    {"id": "alice-what-if", "model": "default", "turns": 3, "tokens": 655, "tier": "warm", "bytes": 30_100_000},
    {"id": "support-bot", "model": "default", "turns": 0, "tokens": 900, "tier": "warm", "bytes": 35_400_000},
    {"id": "carol", "model": "default", "turns": 1, "tokens": 90, "tier": "cold", "bytes": 0},
]
PARENTS = {"alice-what-if": "alice"}
BLOCK_BYTES = 11_796_480
# Each agent's stored chain by block name; a block in several chains is stored once
CHAINS = {
    "alice": ["3f9a0c1de2b47781aa90", "b7e1d24c90aa35f0e6c2"],
    "alice-what-if": ["3f9a0c1de2b47781aa90", "b7e1d24c90aa35f0e6c2", "c41d0e9f2a7b55c3d810"],
    "bob": ["3f9a0c1de2b47781aa90", "5a2e8f01c3d94b7e6a11", "9c0b7d3e1f2a4c5b6d72", "e8f7a6b5c4d3e2f1a0b9"],
    CLAUDE: [f"cc{index:02d}a1b2c3d4e5f60718" for index in range(8)],
    CODEX: [f"dd{index:02d}f0e1d2c3b4a59687" for index in range(4)],
    "support-bot": [f"ee{index:02d}9a8b7c6d5e4f3021" for index in range(3)],
}
BEING_WRITTEN = {"e8f7a6b5c4d3e2f1a0b9"}
EVICTIONS_BEFORE = 1
# This run's turns, oldest first: the hot tier's evictions total after each
TURNS = [
    TurnRecord("alice", "cold", "recompute", 0.42, 1),
    TurnRecord("alice", "hot", "restore", 0.05, 1),
    TurnRecord(CODEX, "cold", "recompute", 1.90, 2),
    TurnRecord("bob", "warm", "restore", 0.12, 3),
    TurnRecord(CODEX, "hot", "restore", 0.21, 3),
    TurnRecord(CLAUDE, "warm", "partial", 0.35, 3),
    TurnRecord("alice", "hot", "restore", 0.06, 3),
]
TRANSCRIPT = [
    ChatMessage(role="user", content="What is the capital of France?"),
    ChatMessage(role="assistant", content="The capital of France is **Paris**."),
    ChatMessage(role="user", content="And of Italy?"),
    ChatMessage(role="assistant", content="Rome."),
]


def chain(agent_id: str) -> list[StoredBlock]:
    return [
        StoredBlock(
            name=name,
            bytes=BLOCK_BYTES,
            last_used=1_795_000_000.0 + 100 * index,
            stored=name not in BEING_WRITTEN,
            agents=tuple(other for other, names in CHAINS.items() if name in names),
        )
        for index, name in enumerate(CHAINS.get(agent_id, []))
    ]


def row_of(row: dict) -> dict:
    return {"last_used": 0.0, "title": None, "pinned": False, **row, "forked_from": PARENTS.get(row["id"])}


class FrozenSource:
    def __init__(self):
        self.started = False

    def start(self, on_wait=None) -> dict:
        return dict(SUMMARY)

    def close(self) -> None:
        pass

    def agents(self) -> list[dict]:
        return [row_of(row) for row in ROWS]

    def session(self, agent_id: str) -> Session:
        return Session(id=agent_id, messages=list(TRANSCRIPT) if agent_id == "alice" else [])

    def pool(self) -> Pool:
        """The pool as the model comes up (its first read), then as after this run's TURNS."""
        evictions = TURNS[-1].evictions_total if self.started else EVICTIONS_BEFORE
        self.started = True
        hot = HotTotals(
            used_bytes=277_000_000,
            budget_bytes=536_870_912,
            agents=3,
            max_agents=5,
            evictions=evictions,
            shared_bytes_saved=11_800_000,
        )
        warm = WarmStats(enabled=True, bytes=180_400_000, blocks=19, dtype="float16", budget_bytes=1_073_741_824)
        return Pool(hot, warm)

    def inspect(self, agent_id: str | None) -> dict:
        row = next((row_of(r) for r in ROWS if r["id"] == agent_id), None)
        if row is not None:
            row["blocks"] = BlockCounts(hot=0, hot_live=True, warm=2, shared=1)
            row["chain"] = chain(agent_id)
        return {"pool": self.pool(), "row": row, "block_tokens": 256}

    def overview(self) -> dict:
        rows = [dict(row, chain=chain(row["id"])) for row in self.agents()]
        return {"pool": self.pool(), "rows": rows, "block_tokens": 256}

    def model_choices(self) -> list[str]:
        return ["default", "gemma3-270m"]
