"""Forked agents: a fork shares every block of its parent, resumes from the parent's cache, then diverges
on its own blocks; deleting either leaves the other intact. Engine, HTTP and CLI."""

from __future__ import annotations

import json

import pytest

from engine.requests import ChatMessage
from tests.conftest import run_cli
from tests.kv.test_kv_memory import engine_for, greedy, history

pytestmark = pytest.mark.model

FORKS = 3


def block_totals(engine) -> tuple[int, int]:
    """(blocks, bytes) of the warm tier's blocks, every finished turn written."""
    engine.flush()
    return engine.memory.warm.index.totals("blocks")


def chain(engine, session_id: str) -> list[str]:
    engine.flush()
    return [block.name for block in engine.agent_blocks(session_id)]


def test_forks_of_a_4k_token_agent_share_its_blocks_and_add_only_their_own(data_dir, tmp_path):
    engine = engine_for(data_dir, tmp_path / "caches")
    try:
        messages = history(4000, engine.tokenizer)
        parent = engine.generate(greedy(messages, "parent"))
        assert parent.usage.prompt_tokens >= 3500
        parent_chain = chain(engine, "parent")
        blocks_before, bytes_before = block_totals(engine)
        assert len(parent_chain) >= 13 and blocks_before == len(parent_chain)

        for index in range(FORKS):
            assert engine.fork_session("parent", f"fork-{index}") == 1
            assert chain(engine, f"fork-{index}") == parent_chain
        assert block_totals(engine) == (blocks_before, bytes_before)  # forking copied no block

        conversation = [*messages, ChatMessage(role="assistant", content=parent.text)]
        own_blocks = 0
        for index in range(FORKS):
            question = ChatMessage(role="user", content=f"Fork {index}: which year comes {index + 2} years later?")
            turn = engine.generate(greedy([*conversation, question], f"fork-{index}"))
            # Resumed from the parent's cache: its whole prompt at least
            assert turn.cache.reused_tokens >= 0.9 * parent.usage.prompt_tokens, turn.cache
            forked = chain(engine, f"fork-{index}")
            assert forked[: len(parent_chain)] == parent_chain
            own_blocks += len(forked) - len(parent_chain)
        blocks_after, bytes_after = block_totals(engine)
        block_bytes = bytes_before // blocks_before
        assert blocks_after == blocks_before + own_blocks
        assert bytes_after == bytes_before + own_blocks * block_bytes
        assert chain(engine, "parent") == parent_chain  # the parent is as it was

        assert engine.forget_session("parent")
        engine.check_integrity()
        again = engine.generate(
            greedy([*conversation, ChatMessage(role="user", content="Fork 0: and one more year?")], "fork-0")
        )
        assert again.cache.reused_tokens >= parent.usage.prompt_tokens, again.cache
        assert chain(engine, "fork-0")[: len(parent_chain)] == parent_chain
        engine.check_integrity()
    finally:
        engine.close()


def test_a_fork_resumes_from_its_parents_disk_cache_after_a_restart(data_dir, tmp_path):
    cache_dir = tmp_path / "caches"
    engine = engine_for(data_dir, cache_dir)
    try:
        messages = history(1200, engine.tokenizer)
        parent = engine.generate(greedy(messages, "parent"))
        assert engine.fork_session("parent", "fork") == 1
    finally:
        engine.close()
    restarted = engine_for(data_dir, cache_dir)
    try:
        question = ChatMessage(role="user", content="And in one word?")
        conversation = [*messages, ChatMessage(role="assistant", content=parent.text), question]
        turn = restarted.generate(greedy(conversation, "fork"))
        assert turn.cache.source == "warm" and turn.cache.reused_tokens >= parent.usage.prompt_tokens, turn.cache
        assert restarted.fork_session("no-such-agent", "other") == 0
        restarted.check_integrity()
    finally:
        restarted.close()


def test_fork_over_http_diverges_and_outlives_its_parent(http):
    system = "You answer in one short sentence. " + "The archive holds maps of every coast. " * 60
    first = http.post(
        "/v1/agents/fork-parent/messages", json={"content": "Name a coast.", "system": system, "max_tokens": 8}
    )
    assert first.status_code == 200, first.text
    forked = http.post("/v1/agents/fork-parent/fork", json={"new_id": "fork-child"})
    assert forked.status_code == 201, forked.text
    row = forked.json()
    assert row["id"] == "fork-child" and row["forked_from"] == "fork-parent" and row["kv_snapshots"] == 1
    assert row["turns"] == 1

    child = http.post("/v1/agents/fork-child/messages", json={"content": "Name another.", "max_tokens": 8}).json()
    assert child["usage"]["cached_tokens"] >= 0.9 * first.json()["usage"]["prompt_tokens"], child
    assert child["turns"] == 2
    assert len(http.get("/v1/agents/fork-parent").json()["messages"]) == 2  # the parent did not move
    detail = http.get("/v1/agents/fork-child").json()
    assert detail["forked_from"] == "fork-parent" and detail["messages"][-2]["content"] == "Name another."
    shared = [block for block in detail["chain"] if "fork-parent" in block["agents"]]
    assert shared and all("fork-child" in block["agents"] for block in shared)

    assert http.post("/v1/agents/fork-parent/fork", json={"new_id": "fork-child"}).status_code == 409
    assert http.post("/v1/agents/no-such-agent/fork", json={"new_id": "fork-x"}).status_code == 404
    same = http.post("/v1/agents/fork-parent/fork", json={"new_id": "fork-parent"})
    assert same.status_code == 400 and "new_id" in same.text
    assert http.post("/v1/agents/fork-parent/fork", json={}).status_code == 400
    assert http.post("/v1/agents/fork-parent/fork", json={"new_id": 7}).status_code == 400

    assert http.delete("/v1/agents/fork-parent").status_code == 200
    after = http.post("/v1/agents/fork-child/messages", json={"content": "One more.", "max_tokens": 8}).json()
    assert after["turns"] == 3 and after["usage"]["cached_tokens"] >= child["usage"]["prompt_tokens"], after
    assert http.delete("/v1/agents/fork-child").status_code == 200


def test_rename_over_http_keeps_the_transcript_and_the_cache(http):
    system = "You answer in one short sentence. " + "The harbour keeps a log of every tide. " * 60
    first = http.post(
        "/v1/agents/rename-old/messages", json={"content": "Name a tide.", "system": system, "max_tokens": 8}
    )
    assert first.status_code == 200, first.text
    http.post("/v1/agents/rename-taken/messages", json={"content": "Hi.", "max_tokens": 2})
    assert http.post("/v1/agents/rename-old/rename", json={"new_id": "rename-taken"}).status_code == 409
    assert http.post("/v1/agents/no-such-agent/rename", json={"new_id": "rename-x"}).status_code == 404
    assert http.post("/v1/agents/rename-old/rename", json={"new_id": "rename-old"}).status_code == 400

    renamed = http.post("/v1/agents/rename-old/rename", json={"new_id": "rename-new"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["id"] == "rename-new" and renamed.json()["turns"] == 1
    assert http.get("/v1/agents/rename-old").status_code == 404
    after = http.post("/v1/agents/rename-new/messages", json={"content": "Another.", "max_tokens": 8}).json()
    assert after["turns"] == 2, after
    assert after["usage"]["cached_tokens"] >= 0.9 * first.json()["usage"]["prompt_tokens"], after
    assert after["cache"]["source"] == "hot", after["cache"]  # its hot copy moved with it
    for agent in ("rename-new", "rename-taken"):
        assert http.delete(f"/v1/agents/{agent}").status_code == 200


def test_agents_fork_on_the_command_line(default_engine, tmp_path):
    data = default_engine.settings.data_path
    own = {"SEMANTIC_AGENT_CACHE_DIR": str(tmp_path / "caches")}  # a cache dir of its own: others start fresh
    hello = ("chat", "-s", "fork-cli", "--new", "-t", "0", "-n", "8", "--json", "Hello there.")
    first = run_cli(*hello, data_dir=data, env=own)
    assert first.returncode == 0, first.stderr
    forked = run_cli("agents", "fork", "fork-cli", "fork-cli-2", data_dir=data, env=own)
    assert forked.returncode == 0 and "KV cache shared" in forked.stdout, forked.stdout + forked.stderr
    again = run_cli("agents", "fork", "fork-cli", "fork-cli-2", data_dir=data, env=own)
    assert again.returncode == 2 and "exists already" in again.stderr
    missing = run_cli("agents", "fork", "no-such-session", "fork-cli-3", data_dir=data, env=own)
    assert missing.returncode == 2 and "no session" in missing.stderr

    turn = run_cli("chat", "-s", "fork-cli-2", "-t", "0", "-n", "8", "--json", "And again?", data_dir=data, env=own)
    result = json.loads(turn.stdout)
    assert result["cache"]["source"] == "warm"
    assert result["usage"]["cached_tokens"] >= json.loads(first.stdout)["usage"]["prompt_tokens"]
    rows = {row["id"]: row for row in json.loads(run_cli("agents", "--json", data_dir=data, env=own).stdout)}
    assert rows["fork-cli-2"]["forked_from"] == "fork-cli" and rows["fork-cli-2"]["turns"] == 2
    assert rows["fork-cli"]["turns"] == 1


def test_agents_rename_on_the_command_line(default_engine, tmp_path):
    data = default_engine.settings.data_path
    own = {"SEMANTIC_AGENT_CACHE_DIR": str(tmp_path / "caches")}
    first = run_cli(
        "chat", "-s", "mv-cli", "--new", "-t", "0", "-n", "8", "--json", "Hello there.", data_dir=data, env=own
    )
    assert first.returncode == 0, first.stderr
    assert run_cli("agents", "pin", "mv-cli", data_dir=data, env=own).returncode == 0
    renamed = run_cli("agents", "rename", "mv-cli", "mv-cli-2", data_dir=data, env=own)
    assert renamed.returncode == 0 and "KV cache with it" in renamed.stdout, renamed.stdout + renamed.stderr
    missing = run_cli("agents", "rename", "mv-cli", "mv-cli-3", data_dir=data, env=own)
    assert missing.returncode == 2 and "no session" in missing.stderr

    turn = run_cli("chat", "-s", "mv-cli-2", "-t", "0", "-n", "8", "--json", "And again?", data_dir=data, env=own)
    result = json.loads(turn.stdout)
    assert result["cache"]["source"] == "warm"
    assert result["usage"]["cached_tokens"] >= json.loads(first.stdout)["usage"]["prompt_tokens"]
    rows = {row["id"]: row for row in json.loads(run_cli("agents", "--json", data_dir=data, env=own).stdout)}
    assert "mv-cli" not in rows and rows["mv-cli-2"]["turns"] == 2 and rows["mv-cli-2"]["pinned"]
