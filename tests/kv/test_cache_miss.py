"""A turn's miss: why its cache gave less than the prompt (engine/kv/miss.py, said in engine/turn.py)."""

from __future__ import annotations

import pytest

from engine.engine import Engine
from engine.kv.blocks import common_prefix_length
from engine.kv.hot import HotEntry, HotPool
from engine.kv.miss import KINDS, REASONS, Clues, Miss, miss_of
from engine.requests import ChatMessage, GenerationRequest, SamplingParams
from engine.settings import Settings

SYSTEM = "You are a terse assistant who answers in one short sentence."


def greedy(messages: list[ChatMessage], session_id: str | None, max_tokens: int = 6) -> GenerationRequest:
    return GenerationRequest(
        messages=messages, session_id=session_id, max_tokens=max_tokens, sampling=SamplingParams(temperature=0.0)
    )


def conversation(system: str, first_question: str) -> list[ChatMessage]:
    return [ChatMessage(role="system", content=system), ChatMessage(role="user", content=first_question)]


def answered(messages: list[ChatMessage], reply: str, question: str) -> list[ChatMessage]:
    return [*messages, ChatMessage(role="assistant", content=reply), ChatMessage(role="user", content=question)]


# -- unit: which kind a turn's clues make (no model) ---------------------------------------------------------
def stored(matched: int, end: int, **flags) -> Clues:
    clues = Clues(**flags)
    clues.saw_stored(matched, end)
    return clues


@pytest.mark.parametrize(
    ("clues", "reused", "limit", "has_session", "expected"),
    [
        (stored(40, 40), 40, 60, True, None),  # the stored cache matched to its end and was all reused
        (stored(12, 40), 12, 60, True, Miss("diverged", 12)),
        (stored(12, 40), 0, 60, True, Miss("diverged", 12)),  # the divergence explains more than the cost model
        (stored(41, 80), 41, 41, True, None),  # the prompt ends inside the stored tokens: all of it reused
        (stored(40, 40), 59, 60, True, None),  # a shared prefix served beyond the stored cache
        (stored(40, 40, recomputed=True), 0, 60, True, Miss("recomputed")),
        (stored(40, 40, window_blocked=True), 0, 60, True, Miss("sliding_window")),
        (stored(40, 40, damaged=True, recomputed=True), 16, 60, True, Miss("damaged")),
        (Clues(), 0, 60, True, Miss("new")),
        (Clues(), 20, 60, True, Miss("new")),  # a shared prefix only: the agent's own history is still empty
        (Clues(damaged=True), 0, 60, True, Miss("damaged")),
        (Clues(encoding_changed=True), 0, 60, True, Miss("encoding_changed")),
        (Clues(other_models=True), 0, 60, True, Miss("model_changed")),
        (Clues(evicted=True), 0, 60, True, Miss("evicted")),
        (Clues(), 0, 60, False, Miss("new")),  # without a session: nothing cached matched
        (Clues(), 20, 60, False, None),  # without a session a shared prefix is all there is to have
        (Clues(recomputed=True), 0, 60, False, Miss("recomputed")),
    ],
)
def test_miss_kind_from_clues(clues, reused, limit, has_session, expected):
    assert miss_of(clues, reused, limit, has_session) == expected


def test_every_kind_has_words_or_is_placed_in_the_prompt():
    assert set(REASONS) | {"diverged"} == set(KINDS)
    assert all(text.isascii() for text in REASONS.values())  # they travel in an HTTP header


def test_hot_pool_remembers_evicted_sessions_until_they_return():
    pool = HotPool(budget_bytes=1 << 20, max_agents=1)
    pool.put(HotEntry("a", [1, 2], [], 10))
    pool.put(HotEntry("b", [1, 3], [], 10))
    assert pool.was_evicted("a") and not pool.was_evicted("b")
    pool.put(HotEntry("a", [1, 2, 4], [], 10))
    assert not pool.was_evicted("a") and pool.was_evicted("b")
    pool.drop("a")
    assert not pool.was_evicted("a")  # dropped on purpose (a deleted agent), not evicted
    pool.check_integrity()


# -- the real default model -------------------------------------------------------------------------------
def test_unchanged_continuation_has_no_miss(default_engine):
    first = default_engine.generate(greedy(conversation(SYSTEM, "Name a colour."), "miss-clean"))
    assert first.cache.miss_kind == "new" and first.cache.miss_reason.startswith("new agent")
    second = default_engine.generate(
        greedy(answered(conversation(SYSTEM, "Name a colour."), first.text, "Another."), "miss-clean")
    )
    assert second.cache.source == "hot" and second.usage.cached_tokens > 0
    assert second.cache.miss_reason is None and second.cache.miss_kind is None


def test_changed_system_prompt_names_its_first_differing_token(default_engine):
    first = default_engine.generate(greedy(conversation(SYSTEM, "Name a colour."), "miss-system"))
    changed = answered(conversation("You are a pirate. " + SYSTEM, "Name a colour."), first.text, "Another.")
    second = default_engine.generate(greedy(changed, "miss-system"))
    differs_at = common_prefix_length(first.prompt_token_ids, second.prompt_token_ids)
    assert 0 < differs_at < 20  # inside the system message
    assert second.cache.miss_kind == "diverged"
    assert second.cache.miss_reason == f"system prompt changed at token {differs_at}"
    assert second.usage.cached_tokens == differs_at


def test_edited_earlier_message_names_its_turn(default_engine):
    messages = conversation(SYSTEM, "Name a colour.")
    first = default_engine.generate(greedy(messages, "miss-edit"))
    second_turn = answered(messages, first.text, "Name a fruit.")
    second = default_engine.generate(greedy(second_turn, "miss-edit"))
    assert second.cache.miss_reason is None
    edited = [second_turn[0], ChatMessage(role="user", content="Name a planet."), *second_turn[2:]]
    third = default_engine.generate(greedy(answered(edited, second.text, "And a river?"), "miss-edit"))
    differs_at = common_prefix_length(second.prompt_token_ids, third.prompt_token_ids)
    assert third.cache.miss_reason == f"history edited at turn 1 (token {differs_at})"


def test_request_without_session_that_reused_a_prefix_has_no_miss(default_engine):
    default_engine.generate(greedy(conversation(SYSTEM, "Name a colour."), None))
    again = default_engine.generate(greedy(conversation(SYSTEM, "Name a colour."), None))
    assert again.usage.cached_tokens > 0 and again.cache.miss_reason is None


def test_session_stored_only_under_another_model(default_engine, tiny_engine):
    """The tiny model shares the data dir's cache dir (read-only: the default engine owns it)."""
    default_engine.generate(greedy(conversation(SYSTEM, "Name a colour."), "miss-model"))
    default_engine.flush()
    other = tiny_engine.generate(greedy(conversation(SYSTEM, "Name a colour."), "miss-model", max_tokens=2))
    assert other.cache.miss_kind == "model_changed" and other.cache.miss_reason == "model changed"


# -- a tiny random model, each engine with its own cache dir ---------------------------------------------------
def tiny(tiny_model_dir, data_dir, cache_dir, **settings) -> Engine:
    return Engine(
        Settings(data_dir=data_dir, mlx_model_id=str(tiny_model_dir), agent_cache_dir=cache_dir, **settings)
    ).start()


def two_turns(engine_factory, after_first=None):
    """Turn one of an agent, then (after `after_first(engine)`, which may return a fresh engine) turn two."""
    running = engine_factory()
    try:
        first = running.generate(greedy(conversation(SYSTEM, "Name a colour."), "agent", max_tokens=3))
        if after_first is not None:
            running = after_first(running) or running
        return running.generate(
            greedy(answered(conversation(SYSTEM, "Name a colour."), first.text, "More."), "agent", max_tokens=2)
        )
    finally:
        running.close()


def test_evicted_from_a_hot_only_memory(tiny_model_dir, data_dir, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache dir should be: the warm tier is off")
    factory = lambda: tiny(tiny_model_dir, data_dir, blocked, agent_max_agents_in_memory=1)  # noqa: E731

    def another_agent_turn(running):
        running.generate(greedy(conversation(SYSTEM, "Name a fruit."), "other", max_tokens=2))

    second = two_turns(factory, another_agent_turn)
    assert second.cache.miss_kind == "evicted" and second.cache.miss_reason == "evicted: budget"


def test_damaged_snapshot_after_a_restart(tiny_model_dir, data_dir, tmp_path):
    cache_dir = tmp_path / "kv"

    def damage_and_restart(running):
        running.flush()
        snapshot = running.memory.warm.resume_files("agent").snapshot
        running.close()
        data = bytearray(snapshot.read_bytes())
        data[len(data) // 2] ^= 0xFF
        snapshot.write_bytes(bytes(data))
        return tiny(tiny_model_dir, data_dir, cache_dir)

    second = two_turns(lambda: tiny(tiny_model_dir, data_dir, cache_dir), damage_and_restart)
    assert second.cache.miss_kind == "damaged"
    assert second.cache.miss_reason == "damaged: a stored block failed its check"


def test_encoding_changed_after_a_restart(tiny_model_dir, data_dir, tmp_path):
    cache_dir = tmp_path / "kv"

    def restart_storing_float32(running):
        running.flush()
        running.close()
        return tiny(tiny_model_dir, data_dir, cache_dir, kv_disk_dtype="float32")

    second = two_turns(lambda: tiny(tiny_model_dir, data_dir, cache_dir), restart_storing_float32)
    assert second.cache.miss_kind == "encoding_changed" and second.cache.miss_reason == "KV encoding changed"
