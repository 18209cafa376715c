"""What is kept of an agent's caches: pinned agents are evicted last and never by the disk budget;
retention expires caches (never transcripts); clients' cache hints set both; one agent cannot take the
whole hot tier. Warm tier alone, engine, HTTP and CLI."""

from __future__ import annotations

import json
import time

import pytest

from engine.kv.policy import MAX_RETENTION_S, AgentPolicy
from engine.kv.warm import WarmTier
from engine.requests import ChatMessage
from tests.conftest import run_cli
from tests.kv.test_kv_memory import engine_for, greedy, history
from tests.kv.test_warm_tier import FINGERPRINTS, snapshot, write_job

MODEL = FINGERPRINTS[0]


def stored(tier: WarmTier, session_id: str) -> bool:
    return tier.read_session(MODEL, session_id) is not None


def test_the_disk_budget_drops_the_least_recently_used_agent_that_is_not_pinned(tmp_path):
    tier = WarmTier(tmp_path, disk_budget_mb=100, clean_up=True)
    agents = {name: list(range(start, start + 40)) for name, start in (("old", 0), ("middle", 100), ("new", 200))}
    tier.set_policy("old", AgentPolicy(pinned=True))
    for name, tokens in agents.items():
        tier.write(write_job(MODEL, snapshot(MODEL, name, tokens)))
        time.sleep(0.01)  # distinct last uses
    one_agent = tier.total_bytes() // 3
    tier.disk_budget_bytes = tier.total_bytes() - one_agent // 2  # one unpinned agent must go
    tier.enforce_budget()
    assert stored(tier, "old") and not stored(tier, "middle") and stored(tier, "new")
    assert tier.total_bytes() <= tier.disk_budget_bytes
    assert tier.policies() == {"old": AgentPolicy(pinned=True)}
    tier.check_integrity()
    tier.close()


def test_expiry_drops_caches_and_their_own_blocks_but_keeps_the_policy(tmp_path):
    tier = WarmTier(tmp_path, disk_budget_mb=100, clean_up=True)
    shared = list(range(16))
    tier.write(write_job(MODEL, snapshot(MODEL, "brief", [*shared, *range(500, 524)])))
    tier.write(write_job(MODEL, snapshot(MODEL, "other", [*shared, *range(600, 624)])))
    tier.set_policy("brief", AgentPolicy(retention_s=60))
    assert tier.expire(time.time()) == []  # not idle long enough
    assert tier.expire(time.time() + 61) == ["brief"]
    assert not stored(tier, "brief") and stored(tier, "other")
    assert tier.size_info.evictable_bytes == 0  # its own blocks went with it; the shared ones stay
    assert tier.policies() == {"brief": AgentPolicy(retention_s=60)}
    assert tier.clear() > 0 and tier.policies() == {"brief": AgentPolicy(retention_s=60)}  # caches only
    tier.check_integrity()
    tier.close()


def ask(engine, session_id: str, text: str, max_tokens: int = 4):
    return engine.generate(greedy([ChatMessage(role="user", content=text)], session_id, max_tokens=max_tokens))


def hot_agents(engine) -> set[str]:
    engine.flush()  # a call on the engine thread publishes the hot tier as it is now
    return set(engine.kv_overview(sessions=False).hot.sessions)


@pytest.mark.model
def test_retention_expires_an_idle_agents_caches(data_dir, tmp_path):
    engine = engine_for(data_dir, tmp_path / "caches")
    try:
        question = "Name three colours of the rainbow, please."
        ask(engine, "brief", question)
        policy = engine.set_agent_policy("brief", retention_s=1)
        assert policy == AgentPolicy(pinned=False, retention_s=1, keep_until=0.0, retention_by_user=True)
        time.sleep(1.5)
        again = ask(engine, "brief", question)
        assert again.cache.reused_tokens == 0 and again.cache.miss_kind == "expired", again.cache
        assert again.cache.miss_reason.startswith("expired")
        # Idle again: the engine's sweep drops its caches with no request asking
        deadline = time.monotonic() + 20
        while "brief" in hot_agents(engine) or "brief" in engine.kv_overview().warm_sessions:
            assert time.monotonic() < deadline, "the idle agent's caches were not dropped"
            time.sleep(0.5)
        assert engine.kv_overview().policies["brief"].retention_s == 1  # the policy stays
        back = ask(engine, "brief", question)
        assert back.cache.miss_kind == "expired" and back.cache.reused_tokens == 0, back.cache
        engine.check_integrity()
    finally:
        engine.close()


@pytest.mark.model
def test_a_pinned_agent_is_evicted_last_and_a_large_one_does_not_evict_the_others(data_dir, tmp_path):
    engine = engine_for(data_dir, tmp_path / "caches", agent_max_agents_in_memory=2, agent_max_mb=20)
    try:
        ask(engine, "pinned", "Hello from the pinned agent.")
        engine.set_agent_policy("pinned", pinned=True)
        ask(engine, "second", "Hello from the second agent.")
        ask(engine, "third", "Hello from the third agent.")
        assert hot_agents(engine) == {"pinned", "third"}  # "second" was least recently used but not pinned

        large = history(2500, engine.tokenizer)
        first = engine.generate(greedy(large, "large"))
        assert "large" not in hot_agents(engine) and "third" in hot_agents(engine)
        conversation = [*large, ChatMessage(role="assistant", content=first.text)]
        again = engine.generate(greedy([*conversation, ChatMessage(role="user", content="Once more.")], "large"))
        assert again.cache.source == "warm" and again.cache.reused_tokens >= first.usage.prompt_tokens
        engine.check_integrity()
    finally:
        engine.close()


def test_the_longest_retention_a_user_may_set_is_stored(tmp_path):
    tier = WarmTier(tmp_path, disk_budget_mb=100)
    longest = AgentPolicy(retention_s=MAX_RETENTION_S, retention_by_user=True)
    tier.set_policy("patient", longest)
    tier.close()
    reopened = WarmTier(tmp_path, disk_budget_mb=100)
    assert reopened.policies() == {"patient": longest}
    reopened.close()


def test_pin_and_retention_over_http(http):
    assert http.post("/v1/agents/policy-a/messages", json={"content": "Hi.", "max_tokens": 4}).status_code == 200
    pinned = http.patch("/v1/agents/policy-a", json={"pinned": True, "retention_s": 3600})
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["pinned"] is True and pinned.json()["retention_s"] == 3600
    assert http.get("/v1/agents/policy-a").json()["pinned"] is True
    row = next(r for r in http.get("/v1/agents").json()["data"] if r["id"] == "policy-a")
    assert row["pinned"] is True and row["retention_s"] == 3600
    cleared = http.patch("/v1/agents/policy-a", json={"retention_s": None}).json()
    assert cleared["pinned"] is True and cleared["retention_s"] is None  # a field not sent stays
    assert http.patch("/v1/agents/policy-a", json={"pinned": False}).json()["pinned"] is False

    assert http.patch("/v1/agents/policy-a", json={}).status_code == 400
    assert http.patch("/v1/agents/policy-a", json={"pinned": "yes"}).status_code == 400
    assert http.patch("/v1/agents/policy-a", json={"retention_s": 0}).status_code == 400
    # Past a century a retention is refused, not answered 200 and then lost (the index holds 64-bit integers)
    for too_long in (MAX_RETENTION_S + 1, 2**63, 10**20):
        assert http.patch("/v1/agents/policy-a", json={"retention_s": too_long}).status_code == 400
    assert http.patch("/v1/agents/policy-a", json={"retention_s": MAX_RETENTION_S}).status_code == 200
    assert http.patch("/v1/agents/no-such-agent", json={"pinned": True}).status_code == 404
    assert http.patch("/v1/agents/policy-a", json={"pinned": True}).status_code == 200
    assert http.delete("/v1/agents/policy-a").status_code == 200
    # What was set about an agent goes with it: the same id later is a new agent
    assert http.post("/v1/agents/policy-a/messages", json={"content": "Hi.", "max_tokens": 4}).status_code == 200
    assert http.get("/v1/agents/policy-a").json()["pinned"] is False
    assert http.delete("/v1/agents/policy-a").status_code == 200


def agent_row(http, agent_id: str) -> dict:
    """The agent's row once the server shows it: a turn's cache is kept just after its answer is sent."""
    deadline = time.monotonic() + 30
    while (response := http.get(f"/v1/agents/{agent_id}")).status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert response.status_code == 200, response.text
    return response.json()


def test_clients_cache_hints_keep_and_expire_sessions(http):
    body = {
        "model": "m",
        "max_tokens": 4,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": "Hello."}],
    }
    marked = http.post("/v1/messages", json=body, headers={"x-session-id": "hinted"})
    assert marked.status_code == 200, marked.text
    row = agent_row(http, "hinted")
    assert row["kept_until"] is not None and 3500 < row["kept_until"] - time.time() <= 3600, row
    body["system"][0]["cache_control"]["ttl"] = "2h"
    refused = http.post("/v1/messages", json=body, headers={"x-session-id": "hinted"})
    assert refused.status_code == 400 and "ttl" in refused.text

    chat = {
        "model": "m",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hello there, grouped by a cache key."}],
        "prompt_cache_key": "keyed-agent",
        "prompt_cache_retention": "24h",
    }
    first = http.post("/v1/chat/completions", json=chat)
    assert first.status_code == 200, first.text
    again = http.post("/v1/chat/completions", json=chat).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert agent_row(http, "keyed-agent")["retention_s"] == 86400
    # A retention the user sets stays: the client's next hint no longer changes it
    assert http.patch("/v1/agents/keyed-agent", json={"retention_s": 600}).json()["retention_s"] == 600
    assert http.post("/v1/chat/completions", json=chat).status_code == 200
    assert agent_row(http, "keyed-agent")["retention_s"] == 600
    assert http.post("/v1/chat/completions", json={**chat, "prompt_cache_retention": "forever"}).status_code == 400


def test_agents_pin_and_unpin_on_the_command_line(default_engine, tmp_path):
    data = default_engine.settings.data_path
    own = {"SEMANTIC_AGENT_CACHE_DIR": str(tmp_path / "caches")}  # a cache dir of its own: others start fresh
    chat = run_cli("chat", "-s", "policy-cli", "--new", "-t", "0", "-n", "4", "Hi.", data_dir=data, env=own)
    assert chat.returncode == 0, chat.stderr
    pinned = run_cli("agents", "pin", "policy-cli", data_dir=data, env=own)
    assert pinned.returncode == 0 and "Pinned" in pinned.stdout, pinned.stderr
    rows = {row["id"]: row for row in json.loads(run_cli("agents", "--json", data_dir=data, env=own).stdout)}
    assert rows["policy-cli"]["pinned"] is True
    assert run_cli("agents", "unpin", "policy-cli", data_dir=data, env=own).returncode == 0
    rows = {row["id"]: row for row in json.loads(run_cli("agents", "--json", data_dir=data, env=own).stdout)}
    assert rows["policy-cli"]["pinned"] is False
    missing = run_cli("agents", "pin", "no-such-session", data_dir=data, env=own)
    assert missing.returncode == 2 and "no session" in missing.stderr
