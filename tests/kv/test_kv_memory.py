"""KV memory: a resumed agent (hot, warm, after restart) says exactly what a cold run says."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.kv.checksum import checksum_of
from engine.kv.warm import WarmTier
from engine.requests import ChatMessage, GenerationRequest, SamplingParams
from engine.settings import Settings

FACTS = (
    "The lighthouse on the northern cape was built in 1874. Its keeper, Ada, kept a log of every ship. "
    "Tides there rise twice a day and the fog comes in from the west most mornings in autumn. "
)


def history(target_tokens: int, tokenizer) -> list[ChatMessage]:
    """A system prompt, earlier turns, then a new question: about `target_tokens` tokens in all."""
    messages = [ChatMessage(role="system", content="You are a careful assistant. " + FACTS * 4)]
    turn = 0
    while len(tokenizer.encode(" ".join(m.content for m in messages))) < target_tokens:
        turn += 1
        messages.append(ChatMessage(role="user", content=f"Tell me fact number {turn} about the cape. {FACTS}"))
        messages.append(ChatMessage(role="assistant", content=f"Fact {turn}: {FACTS}"))
    messages.append(ChatMessage(role="user", content="Summarise the facts in one sentence."))
    return messages


def greedy(messages, session_id=None, max_tokens=24) -> GenerationRequest:
    return GenerationRequest(
        messages=messages,
        session_id=session_id,
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0.0),
    )


def engine_for(data_dir: Path, cache_dir: Path, model: str = "default", **settings) -> Engine:
    return Engine(Settings(data_dir=data_dir, agent_cache_dir=cache_dir, mlx_model_id=model, **settings)).start()


@pytest.fixture(scope="module")
def cold_engine(data_dir):
    with Engine(Settings(data_dir=data_dir, mlx_model_id="default", kv_memory=False)) as running:
        yield running


def run_conversation(data_dir, cache_dir, cold_engine, model, target_tokens, **settings):
    """Turn 1 cold, turn 2 resumed hot; a fresh engine (a restart) then takes turn 3 from the warm tier.

    Returns (first, hot, cold_hot, warm, cold_warm): each resumed turn with the cold run of its prompt.
    """
    first_engine = engine_for(data_dir, cache_dir, model, **settings)
    try:
        messages = history(target_tokens, first_engine.tokenizer)
        first = first_engine.generate(greedy(messages, "agent"))
        assert first.cache.source == "cold"
        first_engine.check_integrity()
        second_turn = [
            *messages,
            ChatMessage(role="assistant", content=first.text),
            ChatMessage(role="user", content="Who kept the log, and when was the lighthouse built?"),
        ]
        hot = first_engine.generate(greedy(second_turn, "agent"))
        first_engine.check_integrity()
        first_engine.flush()
    finally:
        first_engine.close()

    third_turn = [
        *second_turn,
        ChatMessage(role="assistant", content=hot.text),
        ChatMessage(role="user", content="Where does the fog come from?"),
    ]
    restarted = engine_for(data_dir, cache_dir, model, **settings)
    try:
        warm = restarted.generate(greedy(third_turn, "agent"))
        restarted.check_integrity()
    finally:
        restarted.close()
    cold_hot = cold_engine.generate(greedy(second_turn))
    cold_warm = cold_engine.generate(greedy(third_turn))
    return first, hot, cold_hot, warm, cold_warm


# About 1000 tokens: four blocks, two prefill chunks on the CPU, and past Gemma's 512-token window (a
# longer history takes the same paths, at minutes more of CPU prefill per case).
@pytest.mark.slow
@pytest.mark.parametrize("target_tokens", [1000])
def test_smollm2_resume_matches_cold(data_dir, tmp_path, cold_engine, target_tokens):
    first, hot, cold_hot, warm, cold_warm = run_conversation(
        data_dir, tmp_path / "kv", cold_engine, "default", target_tokens
    )
    assert first.usage.prompt_tokens >= target_tokens * 0.8
    assert hot.cache.source == "hot" and hot.usage.cached_tokens > first.usage.prompt_tokens
    assert warm.cache.source == "warm" and warm.usage.cached_tokens > hot.usage.prompt_tokens
    assert cold_hot.usage.cached_tokens == 0 and cold_warm.usage.cached_tokens == 0
    assert hot.text == cold_hot.text
    assert warm.text == cold_warm.text


@pytest.fixture(scope="module")
def gemma_cold_engine(data_dir):
    with Engine(Settings(data_dir=data_dir, mlx_model_id="gemma3-270m", kv_memory=False)) as running:
        yield running


@pytest.mark.slow
@pytest.mark.parametrize("target_tokens", [1000])
def test_gemma3_resume_matches_cold(data_dir, tmp_path, gemma_cold_engine, target_tokens):
    first, hot, cold_hot, warm, cold_warm = run_conversation(
        data_dir, tmp_path / "kv", gemma_cold_engine, "gemma3-270m", target_tokens
    )
    assert hot.text == cold_hot.text
    assert warm.text == cold_warm.text
    # Gemma's sliding layers resume at the exact end of the cached turn (wrapped windows cannot be cut).
    assert hot.cache.source == "hot" and hot.usage.cached_tokens > first.usage.prompt_tokens
    assert warm.cache.source == "warm" and warm.usage.cached_tokens > hot.usage.prompt_tokens


@pytest.mark.slow
def test_gemma3_resumes_at_the_prompt_end_when_the_answer_is_rewritten(data_dir, tmp_path, gemma_cold_engine):
    """Past Gemma's 512-token window a turn's sliding caches cannot be cut back, so a next prompt that
    re-renders the stored answer (as clients do with a truncated one) resumes from the window checkpoint
    taken at the stored prompt's end, and says what a cold run says."""
    eng = engine_for(data_dir, tmp_path / "kv", "gemma3-270m")
    try:
        messages = history(1000, eng.tokenizer)
        first = eng.generate(greedy(messages, "rewritten"))
        assert first.usage.prompt_tokens > 600 and first.usage.completion_tokens == 24
        second_turn = [
            *messages,
            ChatMessage(role="assistant", content="(an answer the client wrote itself)"),
            ChatMessage(role="user", content="Who kept the log?"),
        ]
        resumed = eng.generate(greedy(second_turn, "rewritten"))
        eng.check_integrity()
        # Both prompts' ends are kept, in the agent's hot bytes; the first one lies on the new tokens too.
        held = eng.call(lambda e: [(x.nbytes, [c.nbytes for c in x.checkpoints]) for x in e.memory.hot.entries()])
        ((own_bytes, checkpoint_bytes),) = held
        assert len(checkpoint_bytes) == 2 and all(size > 0 for size in checkpoint_bytes)
        assert eng.memory_stats().hot.used_bytes == own_bytes + sum(checkpoint_bytes)
    finally:
        eng.close()
    assert resumed.cache.source == "hot" and resumed.usage.cached_tokens == first.usage.prompt_tokens
    assert resumed.cache.miss_kind == "diverged"
    assert resumed.text == gemma_cold_engine.generate(greedy(second_turn)).text


@pytest.mark.slow
def test_gemma3_resumes_at_the_prompt_end_after_a_restart_when_the_answer_is_rewritten(
    data_dir, tmp_path, gemma_cold_engine
):
    """The window checkpoint at the last prompt's end is stored with the session: after a restart, a
    next prompt that re-renders the stored answer resumes there from the warm tier (the windows at the
    stored end cannot be cut back), and says what a cold run says."""
    cache_dir = tmp_path / "kv"
    eng = engine_for(data_dir, cache_dir, "gemma3-270m")
    try:
        messages = history(1000, eng.tokenizer)
        first = eng.generate(greedy(messages, "rewritten"))
        assert first.usage.prompt_tokens > 600 and first.usage.completion_tokens == 24
        eng.flush()
    finally:
        eng.close()
    second_turn = [
        *messages,
        ChatMessage(role="assistant", content="(an answer the client wrote itself)"),
        ChatMessage(role="user", content="Who kept the log?"),
    ]
    restarted = engine_for(data_dir, cache_dir, "gemma3-270m")
    try:
        resumed = restarted.generate(greedy(second_turn, "rewritten"))
        restarted.check_integrity()
    finally:
        restarted.close()
    assert resumed.cache.source == "warm" and resumed.usage.cached_tokens == first.usage.prompt_tokens
    assert resumed.cache.miss_kind == "diverged"
    assert resumed.text == gemma_cold_engine.generate(greedy(second_turn)).text


@pytest.mark.slow
def test_gemma3_concurrent_resumes_in_one_batch_match_cold(data_dir, tmp_path):
    """Three agents with histories past Gemma's 512-token window (wrapped sliding caches of different
    lengths) resume hot together, merged into one batch: each says what a cold one-at-a-time run says."""
    settings = {"mlx_model_id": "gemma3-270m", "data_dir": data_dir}
    eng = engine_for(data_dir, tmp_path / "kv", "gemma3-270m")
    try:
        assert eng.batching
        histories = [history(target, eng.tokenizer) for target in (620, 800, 1000)]
        firsts = [eng.submit(greedy(m, f"g{i}")) for i, m in enumerate(histories)]
        seconds = [
            [*m, ChatMessage(role="assistant", content=f.result().text), ChatMessage(role="user", content="Who?")]
            for m, f in zip(histories, firsts, strict=True)
        ]
        resumed = [eng.submit(greedy(m, f"g{i}")) for i, m in enumerate(seconds)]
        resumed = [h.result() for h in resumed]
        eng.check_integrity()
    finally:
        eng.close()
    assert all(r.cache.source == "hot" and r.usage.cached_tokens > 600 for r in resumed)
    with Engine(Settings(**settings, kv_memory=False, mlx_max_batch_size=1)) as cold:
        assert [r.text for r in resumed] == [cold.generate(greedy(m)).text for m in seconds]


def stored_turn(data_dir: Path, cache_dir: Path, session_id: str, **settings) -> list[ChatMessage]:
    """A ~600-token first turn of `session_id` (two whole blocks and a tail), on disk once this returns;
    its messages."""
    eng = engine_for(data_dir, cache_dir, **settings)
    messages = history(600, eng.tokenizer)
    try:
        eng.generate(greedy(messages, session_id))
        eng.flush()
    finally:
        eng.close()
    return messages


def next_turn(messages: list[ChatMessage]) -> list[ChatMessage]:
    """The conversation of `stored_turn` one turn on."""
    return [*messages, ChatMessage(role="assistant", content="Noted."), ChatMessage(role="user", content="Who?")]


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_flipped_byte_is_detected_and_recomputed(data_dir, tmp_path, cold_engine, caplog):
    cache_dir = tmp_path / "kv"
    messages = stored_turn(data_dir, cache_dir, "victim")
    block_files = sorted(cache_dir.rglob("blocks/*/*.safetensors"))
    assert len(block_files) >= 2
    flip_a_byte(block_files[0])
    follow_up = next_turn(messages)
    eng = engine_for(data_dir, cache_dir)
    try:
        with caplog.at_level(logging.WARNING):
            result = eng.generate(greedy(follow_up, "victim"))
        assert result.cache.source in {"cold", "warm"}  # warm: the blocks before the damaged one
        assert any("checksum" in record.message for record in caplog.records)
        assert result.text == cold_engine.generate(greedy(follow_up)).text
        eng.check_integrity()
    finally:
        eng.close()


@pytest.mark.slow
def test_a_damaged_block_still_lets_the_blocks_before_it_resume(data_dir, tmp_path, cold_engine, caplog):
    cache_dir = tmp_path / "kv"
    messages = stored_turn(data_dir, cache_dir, "half")
    with sqlite3.connect(cache_dir / "index.sqlite") as db:
        (second_block,) = db.execute(
            "SELECT b.file FROM session_blocks c JOIN blocks b ON b.name = c.name WHERE c.position = 1"
        ).fetchone()
    flip_a_byte(cache_dir / second_block)
    follow_up = next_turn(messages)
    eng = engine_for(data_dir, cache_dir)
    try:
        with caplog.at_level(logging.WARNING):
            result = eng.generate(greedy(follow_up, "half"))
        assert any("checksum" in record.message for record in caplog.records)
        assert (result.cache.source, result.cache.reused_tokens) == ("warm", eng.settings.kv_block_tokens)
        assert result.text == cold_engine.generate(greedy(follow_up)).text
        eng.flush()
        eng.check_integrity()
    finally:
        eng.close()


@pytest.mark.slow
def test_files_with_matching_checksums_that_are_not_ours_are_dropped(data_dir, tmp_path, cold_engine, caplog):
    """A session snapshot and a block whose checksums match but whose contents no version of ours
    wrote (one is not safetensors at all, one names parts that are not there): the turn recomputes,
    both entries are dropped, and the cache dir checks clean afterwards."""
    cache_dir = tmp_path / "kv"
    messages = stored_turn(data_dir, cache_dir, "odd")
    header = json.dumps({"k.0": {"dtype": "F16", "shape": [3, 256, 64], "data_offsets": [0, 98304]}}).encode()
    contents = [b"not a safetensors file at all", len(header).to_bytes(8, "little") + header]
    with sqlite3.connect(cache_dir / "index.sqlite") as db:
        (snapshot_file,) = db.execute("SELECT file FROM sessions").fetchone()
        (block_file,) = db.execute(
            "SELECT b.file FROM session_blocks c JOIN blocks b ON b.name = c.name WHERE c.position = 0"
        ).fetchone()
        for file, content in zip((snapshot_file, block_file), contents, strict=True):
            (cache_dir / file).write_bytes(content)
            table = "sessions" if file == snapshot_file else "blocks"
            db.execute(f"UPDATE {table} SET checksum=? WHERE file=?", (checksum_of([content]), file))
    checker = WarmTier(cache_dir, disk_budget_mb=1024)
    assert sorted(checker.check(repair=False)["bad"]) == sorted([snapshot_file, block_file])
    checker.close()
    follow_up = next_turn(messages)
    eng = engine_for(data_dir, cache_dir)
    try:
        with caplog.at_level(logging.WARNING):
            result = eng.generate(greedy(follow_up, "odd"))
        assert result.cache.source == "cold"
        assert sum("cannot be decoded" in record.message for record in caplog.records) == 2
        assert result.text == cold_engine.generate(greedy(follow_up)).text
        eng.flush()
        eng.check_integrity()
    finally:
        eng.close()
    # The snapshot is gone; the block, computed again, was stored again under its name.
    assert not (cache_dir / snapshot_file).exists() and (cache_dir / block_file).read_bytes() != contents[1]
    report = WarmTier(cache_dir, disk_budget_mb=1024).check(repair=False)
    assert report["checked"] > 0 and not report["bad"] and not report["missing"]


@pytest.mark.slow
def test_index_with_sha256_checksums_is_still_read_and_checked(data_dir, tmp_path, cold_engine):
    """An index from before checksums named their algorithm: renamed in place, its rows verified with sha256."""
    cache_dir = tmp_path / "kv"
    messages = stored_turn(data_dir, cache_dir, "old")
    legacy = []
    with sqlite3.connect(cache_dir / "index.sqlite") as db:
        for table in ("blocks", "sessions"):
            db.execute(f"ALTER TABLE {table} RENAME COLUMN checksum TO sha256")
            for file, recorded in db.execute(f"SELECT file, sha256 FROM {table}").fetchall():
                assert recorded.startswith("xxh3-128:")
                digest = hashlib.sha256((cache_dir / file).read_bytes()).hexdigest()
                db.execute(f"UPDATE {table} SET sha256=? WHERE file=?", (digest, file))
                legacy.append(file)
    follow_up = next_turn(messages)
    eng = engine_for(data_dir, cache_dir)
    try:
        result = eng.generate(greedy(follow_up, "old"))
        assert result.cache.source == "warm" and result.cache.reused_tokens >= 512
        assert result.text == cold_engine.generate(greedy(follow_up)).text
        eng.flush()
        eng.check_integrity()
    finally:
        eng.close()
    warm = WarmTier(cache_dir, disk_budget_mb=1024)
    report = warm.check(repair=False)
    assert report["checked"] > len(legacy) - 1 and not report["bad"] and not report["missing"]
    damaged = next(file for file in legacy if "/blocks/" in file)
    flip_a_byte(cache_dir / damaged)
    assert warm.check(repair=False)["bad"] == [damaged]


@pytest.mark.slow
def test_agents_share_a_system_prompt_by_block_name(data_dir, tmp_path):
    cache_dir = tmp_path / "kv"
    eng = engine_for(data_dir, cache_dir)
    system = ChatMessage(role="system", content="Shared instructions. " + FACTS * 8)
    try:
        eng.generate(greedy([system, ChatMessage(role="user", content="Hi from one")], "one", max_tokens=4))
        eng.flush()
    finally:
        eng.close()
    eng = engine_for(data_dir, cache_dir)  # fresh engine: nothing hot, blocks on disk
    try:
        two = eng.generate(greedy([system, ChatMessage(role="user", content="Hi from two")], "two", max_tokens=4))
        assert two.cache.source == "warm"
        assert two.usage.cached_tokens >= 256 and two.usage.cached_tokens % 256 == 0
        three = eng.generate(greedy([system, ChatMessage(role="user", content="Hi from three")], "three", max_tokens=4))
        assert three.cache.source == "hot"  # copied from agent two's live cache
        assert three.usage.cached_tokens > two.usage.cached_tokens
        stats = eng.memory_stats()
        assert stats.warm.blocks >= 1 and stats.warm.sessions == 3
        eng.check_integrity()
    finally:
        eng.close()


@pytest.mark.slow
def test_hot_eviction_keeps_turns_on_disk(data_dir, tmp_path):
    eng = engine_for(data_dir, tmp_path / "kv", agent_max_agents_in_memory=2)
    try:
        for name in ("a", "b", "c"):
            eng.generate(greedy([ChatMessage(role="user", content=f"I am agent {name}. " + FACTS)], name, 4))
            eng.check_integrity()
        stats = eng.memory_stats()
        assert stats.hot.agents == 2 and stats.hot.evictions == 1
        again = eng.generate(
            greedy(
                [
                    ChatMessage(role="user", content="I am agent a. " + FACTS),
                    ChatMessage(role="assistant", content="ok"),
                    ChatMessage(role="user", content="and?"),
                ],
                "a",
                4,
            )
        )
        assert again.cache.source == "warm"
        eng.check_integrity()
    finally:
        eng.close()


def test_cache_of_another_model_is_never_loaded(data_dir, tmp_path, tiny_model_dir):
    cache_dir = tmp_path / "kv"
    messages = [ChatMessage(role="user", content="Same words for two models. " + FACTS)]
    eng = engine_for(data_dir, cache_dir)
    try:
        eng.generate(greedy(messages, "shared-id", 4))
        eng.flush()
    finally:
        eng.close()
    other = engine_for(data_dir, cache_dir, model=str(tiny_model_dir))
    try:
        result = other.generate(
            greedy(
                [*messages, ChatMessage(role="assistant", content="x"), ChatMessage(role="user", content="y")],
                "shared-id",
                4,
            )
        )
        assert result.cache.source == "cold"
    finally:
        other.close()


@pytest.mark.model
def test_unusable_cache_dir_serves_hot_only(data_dir, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")
    with caplog.at_level(logging.WARNING):
        eng = engine_for(data_dir, blocker / "kv")
    try:
        assert any("hot-only" in record.message for record in caplog.records)
        messages = [ChatMessage(role="user", content="Hello there. " + FACTS)]
        eng.generate(greedy(messages, "h", 4))
        again = eng.generate(
            greedy(
                [*messages, ChatMessage(role="assistant", content="ok"), ChatMessage(role="user", content="more")],
                "h",
                4,
            )
        )
        assert again.cache.source == "hot"
    finally:
        eng.close()


def test_second_process_on_the_same_cache_dir_is_read_only(tmp_path):
    from engine.kv.warm import WarmTier

    first = WarmTier(tmp_path / "kv", 100)
    second = WarmTier(tmp_path / "kv", 100)
    try:
        assert not first.read_only and second.read_only
    finally:
        first.close()
        second.close()


OWN_CACHE_DIR = """
import sys
from pathlib import Path
from engine.kv.warm import WarmTier
tier = WarmTier(Path(sys.argv[1]), 100)
print("read-only" if tier.read_only else "owner", flush=True)
sys.stdin.readline()
"""


@pytest.mark.slow
def test_a_read_only_process_takes_over_once_the_owner_is_gone(tmp_path):
    cache_dir = tmp_path / "kv"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWN_CACHE_DIR, str(cache_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout.readline().strip() == "owner"
    second = WarmTier(cache_dir, 100)
    try:
        assert second.read_only
        leftover = cache_dir / "f" / "blocks" / "ab" / "ab-half-written.safetensors"  # never indexed
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"x")
        owner.kill()  # kill -9: its lock goes with it
        owner.wait(timeout=30)
        assert second.writable and not second.read_only
        assert not leftover.exists()  # what the owner left half-done is cleaned up first
        third = WarmTier(cache_dir, 100)
        assert third.read_only  # the new owner holds the lock
        third.close()
    finally:
        owner.kill()
        second.close()


@pytest.mark.slow
@pytest.mark.parametrize("live_agents", [0, 1])
def test_idle_agents_share_prefix_blocks_in_memory(data_dir, tmp_path, cold_engine, live_agents):
    eng = engine_for(
        data_dir, tmp_path / "kv", agent_max_agents_in_memory=8, kv_block_tokens=32, kv_hot_live_agents=live_agents
    )
    system = ChatMessage(role="system", content="Shared instructions. " + FACTS * 10)
    asks = [[system, ChatMessage(role="user", content=f"Agent {i}: which year?")] for i in range(4)]
    try:
        results = [eng.generate(greedy(messages, f"agent-{i}", 6)) for i, messages in enumerate(asks)]
        eng.check_integrity()
        hot = eng.memory_stats().hot
        per_token = eng.info.kv_bytes_per_token
        tokens = [r.usage.prompt_tokens + r.usage.completion_tokens for r in results]
        system_tokens = min(r.usage.cached_tokens for r in results[1:])
        one_plus_suffixes = (max(tokens) + sum(t - system_tokens for t in tokens)) * per_token
        assert hot.agents == 4
        # A live agent holds its own contiguous copy of the prefix (with room to grow) besides the blocks.
        live_bytes = eng.call(lambda e: sum(x.nbytes for x in e.memory.hot.entries() if not x.compact))
        assert (live_bytes > 0) == (live_agents > 0)
        assert hot.used_bytes - live_bytes <= 1.3 * one_plus_suffixes
        assert hot.shared_bytes_saved > 0
        # Agent 0 is compacted now; resuming it gives what a cold run gives.
        follow = [
            *asks[0],
            ChatMessage(role="assistant", content=results[0].text),
            ChatMessage(role="user", content="And who kept the log?"),
        ]
        resumed = eng.generate(greedy(follow, "agent-0"))
        assert resumed.cache.source == "hot"
        assert resumed.text == cold_engine.generate(greedy(follow)).text
        eng.check_integrity()
    finally:
        eng.close()


@pytest.mark.slow
def test_int8_disk_tier_resumes_with_about_half_the_bytes(data_dir, tmp_path, cold_engine):
    sizes = {}
    for disk_dtype in ("float16", "int8"):
        cache_dir = tmp_path / disk_dtype
        eng = engine_for(data_dir, cache_dir, kv_disk_dtype=disk_dtype)
        messages = history(700, eng.tokenizer)
        try:
            first = eng.generate(greedy(messages, "eight", 8))
            eng.flush()
            sizes[disk_dtype] = eng.memory_stats().warm.bytes
            assert eng.memory_stats().warm.dtype == disk_dtype
        finally:
            eng.close()
        follow = [
            *messages,
            ChatMessage(role="assistant", content=first.text),
            ChatMessage(role="user", content="Who?"),
        ]
        eng = engine_for(data_dir, cache_dir, kv_disk_dtype=disk_dtype)
        try:
            resumed = eng.generate(greedy(follow, "eight", 8))
            assert resumed.cache.source == "warm" and resumed.usage.cached_tokens > 600
            assert resumed.text.strip()
            eng.check_integrity()
        finally:
            eng.close()
    assert 0.45 < sizes["int8"] / sizes["float16"] < 0.62


@pytest.mark.slow
def test_quantized_kv_resumes_like_a_quantized_cold_run(data_dir, tmp_path):
    settings = dict(data_dir=data_dir, kv_bits=8)
    with Engine(Settings(**settings, kv_memory=False)) as cold:
        first, hot, cold_hot, warm, cold_warm = run_conversation(
            data_dir, tmp_path / "kv", cold, "default", 600, kv_bits=8, kv_hot_live_agents=0
        )
    assert hot.cache.source == "hot" and warm.cache.source == "warm"
    assert hot.text == cold_hot.text
    assert warm.text == cold_warm.text


@pytest.mark.slow
def test_session_stored_under_another_kv_encoding_is_recomputed(data_dir, tmp_path):
    """A restart with other SEMANTIC_KV_BITS finds the session's snapshot under the same model
    fingerprint: it is recomputed (restoring 8-bit parts into a 4-bit cache failed every turn)."""
    cache_dir = tmp_path / "kv"
    follow_up = next_turn(stored_turn(data_dir, cache_dir, "agent", kv_bits=8))
    restarted = engine_for(data_dir, cache_dir, kv_bits=4)
    try:
        resumed = restarted.generate(greedy(follow_up, "agent"))
        restarted.check_integrity()
    finally:
        restarted.close()
    with Engine(Settings(data_dir=data_dir, kv_bits=4, kv_memory=False)) as cold:
        assert resumed.text == cold.generate(greedy(follow_up)).text
    assert resumed.cache.source == "cold"


@pytest.mark.model
def test_quantized_kv_is_refused_for_sliding_window_models(data_dir):
    from engine.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="SEMANTIC_KV_BITS"):
        Engine(Settings(data_dir=data_dir, mlx_model_id="gemma3-270m", kv_bits=8)).start()


@pytest.mark.model
def test_caches_are_restored_in_the_dtype_a_quantized_model_computes():
    """On a GPU a GGUF model is loaded 4-bit with float16 scales: its first parameter is packed uint32
    weights, but its caches, and so restored ones, are float16 (restoring in uint32 gave garbage)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models import llama
    from mlx_lm.models.cache import make_prompt_cache

    from engine.kv.layout import kv_dtype
    from engine.loader import _kv_bytes_per_token
    from tests.conftest import TINY_LLAMA

    model = llama.Model(llama.ModelArgs.from_dict(TINY_LLAMA))
    model.set_dtype(mx.float16)
    nn.quantize(model, group_size=32, bits=4)
    caches = make_prompt_cache(model)
    mx.eval(model(mx.array([[1, 2, 3]]), cache=caches))
    assert kv_dtype(model) == caches[0].keys.dtype == mx.float16
    per_token = sum(cache.nbytes for cache in caches) // caches[0].keys.shape[2]
    assert _kv_bytes_per_token(TINY_LLAMA, model) == per_token


@pytest.mark.model
def test_bfloat16_caches_are_stored_as_their_own_bits(tmp_path):
    """A bfloat16 model (a hub model on a GPU) keeps its caches exactly on disk, in as many bytes as
    float16, which would flush its small values to zero and its large ones to infinity."""
    import mlx.core as mx
    from mlx_lm.models import llama

    from engine.kv.codec import decode, decode_from_disk, encode_for_disk, pack, parts_on_host
    from engine.kv.memory import KVMemory
    from tests.conftest import TINY_LLAMA

    mx.random.seed(0)
    scales = mx.array(10.0) ** mx.random.randint(-12, 8, (2, 3, 40, 64)).astype(mx.float32)
    keys, values = (mx.random.normal((2, 3, 40, 64)) * scales).astype(mx.bfloat16)

    def round_trip(disk_dtype: str):
        payload = pack(parts_on_host({0: encode_for_disk(keys, values, disk_dtype)}), {})
        parts = decode(b"".join(bytes(chunk) for chunk in payload.chunks))[0][0]
        return decode_from_disk({name: mx.array(part) for name, part in parts.items()}, mx.bfloat16)

    restored_keys, restored_values = round_trip("bfloat16")
    assert mx.array_equal(restored_keys, keys) and mx.array_equal(restored_values, values)
    assert not mx.array_equal(round_trip("float16")[0], keys)

    model = llama.Model(llama.ModelArgs.from_dict(TINY_LLAMA))
    model.set_dtype(mx.bfloat16)
    memory = KVMemory(Settings(data_dir=tmp_path, agent_cache_dir=tmp_path / "kv"), "fingerprint", model)
    try:
        assert memory.disk_dtype == "bfloat16"
    finally:
        memory.close()


@pytest.mark.model
def test_a_stopped_turn_leaves_the_cache_as_it_was_before_it(data_dir, tmp_path):
    from engine.agents_view import has_cache
    from engine.events import TurnChunk

    def stop_after_first_chunk(request):
        handle = engine.submit(request)
        next(event for event in handle.events() if isinstance(event, TurnChunk))
        handle.cancel()
        finished = handle.result()
        assert finished.finish_reason == "cancelled"
        return finished

    def hot_tokens() -> int | None:
        engine.forget_session("nobody")  # behind every write queued before: the view is current
        entry = engine.kv_overview().hot.sessions.get("stopper")
        return entry.tokens if entry else None

    engine = engine_for(data_dir, tmp_path / "kv")
    try:
        question = [ChatMessage(role="user", content="Write a long story about the lighthouse keeper.")]
        stop_after_first_chunk(greedy(question, "stopper", max_tokens=400))
        assert hot_tokens() is None and not has_cache(engine.kv_overview(), "stopper")  # a first turn: no trace

        first = engine.submit(greedy(question, "stopper", max_tokens=8)).result()
        kept = hot_tokens()
        assert kept and kept >= first.usage.prompt_tokens
        chain = engine.agent_blocks("stopper")
        later = [*question, ChatMessage(role="assistant", content=first.text)]
        stopped = stop_after_first_chunk(greedy([*later, ChatMessage(role="user", content="Go on.")], "stopper", 400))
        assert stopped.usage.cached_tokens > 0
        assert hot_tokens() == stopped.usage.cached_tokens  # what it resumed from, nothing of its own
        assert engine.agent_blocks("stopper") == chain  # no block written for it

        again = engine.submit(greedy([*later, ChatMessage(role="user", content="Go on.")], "stopper", 8)).result()
        assert again.cache.source == "hot" and again.usage.cached_tokens == stopped.usage.cached_tokens
    finally:
        engine.close()
