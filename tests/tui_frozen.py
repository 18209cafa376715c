"""A frozen stand-in for the TUI's source: fixed agents, transcript, pool and model (no clocks, no speeds),
so snapshots are the same on every run. The real engine is tested in test_tui.py."""

from __future__ import annotations

from engine.requests import ChatMessage
from engine.sessions import Session

SUMMARY = {
    "model_id": "default",
    "fingerprint": "1517ef3cd2565fd632b3af9906c723d7",
    "backend": "cpu",
    "dtype": "float32",
    "parameters": 134_515_008,
    "context_length": 8192,
    "kv_bytes_per_token": 46080,
}
ROWS = [
    {"id": "alice", "model": "default", "turns": 2, "tokens": 612, "tier": "hot", "bytes": 28_200_000},
    {"id": "bob", "model": "default", "turns": 5, "tokens": 1480, "tier": "warm", "bytes": 34_100_000},
    {"id": "carol", "model": "default", "turns": 1, "tokens": 90, "tier": "cold", "bytes": 0},
]
TRANSCRIPT = [
    ChatMessage(role="user", content="What is the capital of France?"),
    ChatMessage(role="assistant", content="The capital of France is **Paris**."),
    ChatMessage(role="user", content="And of Italy?"),
    ChatMessage(role="assistant", content="Rome."),
]


class FrozenSource:
    def start(self) -> dict:
        return dict(SUMMARY)

    def close(self) -> None:
        pass

    def agents(self) -> list[dict]:
        return [dict(row, last_used=0.0) for row in ROWS]

    def session(self, agent_id: str) -> Session:
        return Session(id=agent_id, messages=list(TRANSCRIPT) if agent_id == "alice" else [])

    def inspect(self, agent_id: str | None) -> dict:
        row = next((dict(r) for r in ROWS if r["id"] == agent_id), None)
        if row is not None:
            row["blocks"] = {"hot": 0, "hot_live": True, "warm": 2, "shared": 1}
            row["chain"] = [
                {
                    "name": "3f9a0c1de2b47781aa90",
                    "bytes": 11_796_480,
                    "last_used": 1_795_000_000.0,
                    "stored": True,
                    "agents": ["alice", "bob"],
                },
                {
                    "name": "b7e1d24c90aa35f0e6c2",
                    "bytes": 11_796_480,
                    "last_used": 1_795_000_100.0,
                    "stored": True,
                    "agents": ["alice"],
                },
            ]
        pool = {
            "hot": {
                "used_bytes": 62_300_000,
                "budget_bytes": 4_294_967_296,
                "agents": 2,
                "max_agents": 5,
                "evictions": 3,
                "shared_bytes_saved": 11_800_000,
            },
            "warm": {"bytes": 180_400_000, "blocks": 14, "dtype": "float16"},
        }
        return {"pool": pool, "row": row, "block_tokens": 256}

    def model_choices(self) -> list[str]:
        return ["default", "gemma3-270m"]
