"""The hot pool without a model: least-recently-used eviction under an agent limit and a byte budget, kept
agents last, checkout and put, one agent's own limit, block sharing between idle agents, and a
check_integrity that fails when its record is wrong."""

from __future__ import annotations

import pytest

from engine.kv.hot import HotPool
from tests.kv.caches import (
    BLOCK_TOKENS,
    BYTES_PER_TOKEN,
    compacting_pool,
    fake_entry,
    holds_tokens,
    token_entry,
)

pytestmark = pytest.mark.unit

PREFIX = [11, 12, 13, 14, 15, 16, 17, 18]  # two whole blocks


def resident(pool: HotPool) -> list[str]:
    """Session ids in the pool, least recently used first."""
    return [entry.session_id for entry in pool.entries()]


def test_past_the_agent_limit_the_least_recently_used_goes_first():
    pool = HotPool(budget_bytes=1 << 20, max_agents=3)
    for session_id in ("a", "b", "c"):
        assert pool.put(fake_entry(session_id, [1, 2, 3])) == []
    assert pool.put(fake_entry("d", [1, 2])) == ["a"]
    entry = pool.checkout("b")
    assert pool.put(entry) == []  # back as the most recent
    assert resident(pool) == ["c", "d", "b"]
    assert pool.put(fake_entry("e", [4])) == ["c"]
    assert resident(pool) == ["d", "b", "e"]
    assert pool.evictions == 2 and pool.was_evicted("a") and pool.was_evicted("c")
    pool.check_integrity()


def test_the_byte_budget_evicts_until_the_pool_fits():
    pool = HotPool(budget_bytes=30 * BYTES_PER_TOKEN, max_agents=10)
    for session_id in ("a", "b", "c"):
        pool.put(fake_entry(session_id, list(range(10))))
    assert pool.used_bytes == 30 * BYTES_PER_TOKEN
    # 20 more tokens need the room of two 10-token agents: exactly the two oldest go
    assert pool.put(fake_entry("d", list(range(20)))) == ["a", "b"]
    assert resident(pool) == ["c", "d"] and pool.used_bytes == 30 * BYTES_PER_TOKEN
    pool.check_integrity()


def test_kept_agents_are_evicted_last():
    kept = {"a"}
    pool = HotPool(budget_bytes=1 << 20, max_agents=2, kept=lambda session_id: session_id in kept)
    pool.put(fake_entry("a", [1]))
    pool.put(fake_entry("b", [1]))
    assert pool.put(fake_entry("c", [1])) == ["b"]  # a is older, but kept
    kept.add("c")
    # Every older agent is kept: the new turn is the one not kept in memory
    assert pool.put(fake_entry("d", [1])) == ["d"]
    assert resident(pool) == ["a", "c"]
    kept.add("e")
    # All kept: the least recently used goes after all
    assert pool.put(fake_entry("e", [1])) == ["a"]
    assert resident(pool) == ["c", "e"]
    pool.check_integrity()


def test_a_checked_out_agent_is_outside_the_pool_until_it_is_put_back():
    pool = HotPool(budget_bytes=1 << 20, max_agents=2)
    pool.put(fake_entry("a", [1, 2, 3]))
    entry = pool.checkout("a")
    assert entry is not None and entry.tokens == [1, 2, 3]
    assert "a" not in pool and len(pool) == 0 and pool.used_bytes == 0
    pool.check_integrity()
    # Others come and go past the limit: the checked-out agent is never their victim
    for session_id in ("b", "c", "d"):
        pool.put(fake_entry(session_id, [5]))
    assert not pool.was_evicted("a")
    assert pool.put(fake_entry("a", [1, 2, 3, 4])) == ["c"]  # its turn's longer cache
    assert resident(pool) == ["d", "a"] and pool.entries()[-1].tokens == [1, 2, 3, 4]
    pool.check_integrity()


def test_a_session_not_in_the_pool_checks_out_nothing_and_checks_in_without_a_trace():
    pool = HotPool(budget_bytes=1 << 20, max_agents=2)
    assert pool.checkout("nobody") is None
    pool.check_in("nobody")
    assert len(pool) == 0 and not pool.was_evicted("nobody")
    pool.check_integrity()


def test_an_agent_over_its_own_limit_is_not_kept_and_pushes_out_nobody():
    pool = HotPool(budget_bytes=1 << 20, max_agents=4, agent_max_bytes=10 * BYTES_PER_TOKEN)
    pool.put(fake_entry("a", list(range(10))))
    assert pool.put(fake_entry("big", list(range(11)))) == ["big"]
    assert resident(pool) == ["a"] and pool.was_evicted("big")
    pool.check_integrity()


def test_a_dropped_agent_is_gone_and_not_counted_as_evicted():
    pool = HotPool(budget_bytes=1 << 20, max_agents=1)
    pool.put(fake_entry("a", [1]))
    pool.put(fake_entry("b", [1]))
    assert pool.was_evicted("a")
    assert pool.drop("b") and not pool.drop("b")
    pool.put(fake_entry("a", [1, 2]))  # back: no longer reported as evicted
    assert not pool.was_evicted("a") and not pool.was_evicted("b")
    assert pool.evictions == 1
    pool.check_integrity()


def test_check_integrity_fails_on_a_wrong_record():
    pool = HotPool(budget_bytes=100 * BYTES_PER_TOKEN, max_agents=2)
    pool.put(fake_entry("a", [1, 2, 3]))
    pool.check_integrity()
    entry = pool.entries()[0]
    entry.tokens.append(4)  # the record says 4 tokens, the caches hold 3
    with pytest.raises(AssertionError, match="holds 3 tokens, record says 4"):
        pool.check_integrity()
    entry.tokens.pop()
    pool.budget_bytes = BYTES_PER_TOKEN
    with pytest.raises(AssertionError, match="over budget"):
        pool.check_integrity()


def test_check_integrity_fails_on_a_wrong_block_count():
    pool = compacting_pool(budget_bytes=1 << 20, max_agents=4, live_agents=0)
    pool.put(token_entry("a", PREFIX + [1]))
    pool.put(token_entry("b", PREFIX + [2]))
    pool.check_integrity()
    chain = pool.entries()[0].chain
    chain[1] = chain[0]  # a names its first block twice and its second not at all
    with pytest.raises(AssertionError, match="ref count"):
        pool.check_integrity()


# -- compaction into shared blocks (tiny real mlx-lm caches) ------------------------------------------------
def test_idle_agents_hold_their_common_prefix_once():
    pool = compacting_pool(budget_bytes=1 << 20, max_agents=4, live_agents=0)
    first, second = PREFIX + [1, 2, 3], PREFIX + [4, 5, 6]
    pool.put(token_entry("a", first))
    pool.put(token_entry("b", second))
    assert all(entry.compact for entry in pool.entries())
    # Two shared blocks once, and each agent's 3-token tail
    assert pool.used_bytes == (len(PREFIX) + 3 + 3) * BYTES_PER_TOKEN
    assert pool.shared_bytes_saved == len(PREFIX) * BYTES_PER_TOKEN
    pool.check_integrity()

    entry = pool.checkout("a")
    assert not entry.compact and holds_tokens(entry.cache, first)
    assert pool.used_bytes == len(second) * BYTES_PER_TOKEN and pool.shared_bytes_saved == 0
    pool.check_integrity()
    pool.put(entry)
    assert pool.used_bytes == (len(PREFIX) + 3 + 3) * BYTES_PER_TOKEN
    assert holds_tokens(pool.checkout("b").cache, second)
    pool.check_integrity()


def test_only_the_most_recent_idle_agents_stay_live():
    pool = compacting_pool(budget_bytes=1 << 20, max_agents=4, live_agents=1)
    pool.put(token_entry("a", PREFIX + [1]))
    pool.put(token_entry("b", PREFIX + [2]))
    assert [(entry.session_id, entry.compact) for entry in pool.entries()] == [("a", True), ("b", False)]
    # b's live cache counts whole; a's blocks count once
    assert pool.used_bytes == (len(PREFIX) + 1 + len(PREFIX) + 1) * BYTES_PER_TOKEN
    pool.check_integrity()


@pytest.mark.parametrize("live_agents", [0, 1])
def test_a_prefix_of_an_idle_agent_leaves_the_agent_as_it_was(live_agents):
    pool = compacting_pool(budget_bytes=1 << 20, max_agents=4, live_agents=live_agents)
    tokens = PREFIX + [1, 2, 3]
    pool.put(token_entry("a", tokens))
    entry = pool.entries()[0]
    point = pool.resume_point(entry, BLOCK_TOKENS + 2)
    assert point == BLOCK_TOKENS + 2  # full-attention layers resume anywhere
    assert holds_tokens(pool.prefix_cache(entry, point), tokens[:point])
    assert holds_tokens(pool.checkout("a").cache, tokens)


def test_a_checked_out_agent_is_cut_back_in_place():
    pool = compacting_pool(budget_bytes=1 << 20, max_agents=4, live_agents=0)
    tokens = PREFIX + [1, 2, 3]
    pool.put(token_entry("a", tokens))
    entry = pool.checkout("a")
    assert holds_tokens(pool.cut(entry, 5), tokens[:5])
