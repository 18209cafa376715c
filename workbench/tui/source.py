"""What the TUI talks to: the engine in this process. The UI thread never waits on it: every call here
runs in a worker thread, and turn events arrive through a callback on the engine thread."""

from __future__ import annotations

from collections.abc import Callable

from engine.agent_ops import fork_agent, rename_agent
from engine.agents_view import agent_rows, block_counts, has_cache
from engine.events import TurnEvent, TurnFinished
from engine.requests import GenerationRequest, SamplingParams
from engine.sessions import Session, SessionStore
from engine.settings import Settings
from workbench.chat import CHAT_REPETITION_PENALTY
from workbench.tui.pool import Pool


class LocalSource:
    def __init__(self, settings: Settings, engine=None):
        from engine.engine import Engine

        self.settings = settings
        self.store = SessionStore.of(settings)
        self.engine = engine or Engine(settings)

    # -- lifecycle (worker thread) ---------------------------------------------------------------
    def start(self, on_wait: Callable[[str], None] | None = None) -> dict:
        """Load the model (blocking); returns the model summary for the Model panel. (`on_wait` is for a
        server's source, which tells why it waits; loading here has nothing to tell until it is done.)"""
        if not self.engine.started:
            self.engine.start(wait=False)
        self.engine.wait_ready()
        return self.model_summary()

    def close(self) -> None:
        self.engine.close()

    def model_summary(self) -> dict:
        info = self.engine.info
        return {
            "model_id": self.engine.model_id,
            "fingerprint": info.fingerprint,
            "backend": info.backend,
            "dtype": info.compute_dtype,
            "parameters": info.num_parameters,
            "context_length": info.context_length,
            "kv_bytes_per_token": info.kv_bytes_per_token,
        }

    # -- agents ----------------------------------------------------------------------------------
    def agents(self) -> list[dict]:
        return agent_rows(self.store.all(), self.engine.kv_overview(), self.engine.model_id)

    def session(self, agent_id: str) -> Session:
        return self.store.get_or_new(agent_id)

    def delete(self, agent_id: str) -> None:
        self.store.delete(agent_id)
        self.engine.forget_session(agent_id)

    def rename(self, old_id: str, new_id: str) -> None:
        """A new id for the agent: its transcript, KV cache and policy move, so its next turn resumes (from
        disk: the hot copy stays with the old id). LookupError for an unknown agent, ValueError for an id
        in use (engine/agent_ops.py)."""
        overview = self.engine.kv_overview()
        cached = lambda sid: has_cache(overview, sid)  # noqa: E731
        rename_agent(self.store, old_id, new_id, cached, self.engine.rename_session)

    def fork(self, agent_id: str, new_id: str) -> int:
        """A new agent `new_id` that starts where `agent_id` is: its transcript copied, its KV cache shared.
        How many warm snapshots were shared (0: no cache yet). LookupError for an unknown agent, ValueError
        for an id in use; either way nothing is written (engine/agent_ops.py)."""
        overview = self.engine.kv_overview()
        return fork_agent(self.store, agent_id, new_id, lambda sid: has_cache(overview, sid), self.engine.fork_session)

    def set_pinned(self, agent_id: str, pinned: bool) -> None:
        """Pin the agent's caches (evicted last, never dropped by the disk budget) or unpin them."""
        self.engine.set_agent_policy(agent_id, pinned=pinned)

    def inspect(self, agent_id: str | None) -> dict:
        """The pool (hot and warm tiers) and the agent's row with its block counts."""
        overview = self.engine.kv_overview()
        session = self.store.get(agent_id) if agent_id is not None else None
        rows = agent_rows([session] if session else [], overview, self.engine.model_id)
        row = next((r for r in rows if r["id"] == agent_id), None)
        if row is not None:
            row["blocks"] = block_counts(overview, agent_id)
            row["chain"] = self.engine.agent_blocks(agent_id)
        return {"pool": Pool.of(overview), "row": row, "block_tokens": self.settings.kv_block_tokens}

    def pool(self) -> Pool:
        """The hot tier (budget, residents, evictions, shared bytes saved) and the warm tier on disk."""
        overview = self.engine.kv_overview(sessions=False)
        return Pool.of(overview)

    def overview(self) -> dict:
        """The pool, and every agent's row with its stored block chain: the memory overview's data."""
        overview = self.engine.kv_overview()  # once for both: it walks every session's blocks
        rows = agent_rows(self.store.all(), overview, self.engine.model_id)
        for row in rows:
            row["chain"] = self.engine.agent_blocks(row["id"])
        return {"pool": Pool.of(overview), "rows": rows, "block_tokens": self.settings.kv_block_tokens}

    # -- models ----------------------------------------------------------------------------------
    def model_choices(self) -> list[str]:
        from engine.model_catalog import swap_choices

        return swap_choices(self.settings.models_path)

    def swap(self, model_id: str, progress=None) -> dict:
        self.engine.swap(model_id, progress)
        return self.model_summary()

    # -- turns -----------------------------------------------------------------------------------
    def send(self, session: Session, text: str, on_event: Callable[[TurnEvent], None], max_tokens: int = 512):
        request = GenerationRequest(
            messages=session.conversation(text),
            max_tokens=max_tokens,
            sampling=SamplingParams(repetition_penalty=CHAT_REPETITION_PENALTY),  # else the model's defaults
            session_id=session.id,
        )
        return self.engine.submit(request, on_event=on_event)

    def keep(self, session: Session, text: str, finished: TurnFinished) -> None:
        """Store a finished turn in the transcript (a stopped reply is not kept)."""
        self.store.keep_turn(session, text, finished, self.engine.model_id, self.engine.info.fingerprint)
