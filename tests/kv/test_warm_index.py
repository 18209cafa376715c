"""The warm tier's SQLite index on its own: session rows and their chains change together, a block a chain
names is protected, forks share chains, resumes read up to the first missing block, problems are found,
policies persist, an index in the old format is refused where it may not be moved, and summaries and chains
come as records whose JSON has the API's keys."""

from __future__ import annotations

import sqlite3

import pytest

import engine.kv.index as index_module
from engine.kv.index import OldIndexInUse, WarmIndex, session_key
from engine.kv.policy import AgentPolicy
from engine.kv.stats import StoredBlock

pytestmark = pytest.mark.unit

FINGERPRINT = "model-a"
OTHER = "model-b"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def time(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def index(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "time", Clock())  # distinct last-use times: LRU order is exact
    opened = WarmIndex(tmp_path / "index.sqlite", may_migrate=True)
    yield opened
    opened.close()


def add_blocks(index: WarmIndex, names: list[str], size: int = 100, fingerprint: str = FINGERPRINT) -> None:
    for name in names:
        index.add_block(name, fingerprint, f"blocks/{name}", f"sum-{name}", size)


def put(index: WarmIndex, session_id: str, chain: list[str], file: str, fingerprint: str = FINGERPRINT, size=10):
    return index.put_session(session_key(session_id), fingerprint, session_id, file, "sum", size, 7, chain)


def evictable(index: WarmIndex) -> list[str]:
    return [name for name, _, _ in index.evictable_blocks()]


def test_a_session_row_and_its_chain_are_replaced_together(index):
    add_blocks(index, ["b0", "b1", "b2"])
    assert put(index, "a", ["b0", "b1"], "s1") is None
    assert index.session(session_key("a"), FINGERPRINT) == ("s1", "sum", ["b0", "b1"])
    assert put(index, "a", ["b0", "b2"], "s2") == "s1"  # the old file is the caller's to delete
    assert index.session(session_key("a"), FINGERPRINT) == ("s2", "sum", ["b0", "b2"])
    assert index.session(session_key("a"), OTHER) is None
    assert index.problems() == []


def test_blocks_a_chain_names_are_protected_and_the_rest_go_least_recently_used_first(index):
    add_blocks(index, ["b0", "b1", "b2", "b3"])
    put(index, "a", ["b1"], "s1", size=50)
    index.touch_blocks(["b0"])  # b0 is now the most recently used
    assert evictable(index) == ["b2", "b3", "b0"]
    size = index.size_info()
    assert (size.evictable_bytes, size.protected_bytes) == (300, 150)  # b1 and the snapshot are protected
    assert index.delete_sessions(session_key("a")) == ["s1"]
    assert evictable(index) == ["b1", "b2", "b3", "b0"]
    assert index.size_info().protected_bytes == 0


def test_a_fork_shares_its_chain_and_outlives_the_original(index):
    add_blocks(index, ["b0", "b1"])
    put(index, "a", ["b0", "b1"], "s1")
    assert index.copy_session(session_key("a"), FINGERPRINT, session_key("fork"), "fork", "s2")
    assert not index.copy_session(session_key("nobody"), FINGERPRINT, session_key("x"), "x", "s3")
    assert index.shared_bytes_saved() == 200
    assert index.session(session_key("fork"), FINGERPRINT) == ("s2", "sum", ["b0", "b1"])
    index.delete_sessions(session_key("a"))
    assert index.session(session_key("fork"), FINGERPRINT) == ("s2", "sum", ["b0", "b1"])
    assert evictable(index) == [] and index.shared_bytes_saved() == 0


def test_deleting_sessions_by_model_by_file_or_all_of_them(index):
    put(index, "a", [], "s1")
    put(index, "a", [], "s2", fingerprint=OTHER)
    index.put_policy("a", AgentPolicy(pinned=True))
    key = session_key("a")
    assert index.delete_sessions(key, FINGERPRINT, file="not-its-file") == []
    assert index.delete_sessions(key, FINGERPRINT) == ["s1"]
    assert index.session_rows(key) == [(OTHER, "s2")]
    assert "a" in index.policies()  # one model's cache went: what was set about the agent stays
    assert index.delete_sessions(key) == ["s2"]
    assert index.policies() == {}  # the agent is gone


def test_a_resume_reads_the_latest_models_snapshot_and_blocks_up_to_the_first_missing_one(index):
    add_blocks(index, ["b0", "b1", "b3"])
    put(index, "a", ["b0", "b1", "b2", "b3"], "s1")
    put(index, "a", ["b0"], "s-other", fingerprint=OTHER)  # used later: the latest
    assert index.resume_files("a") == ("s-other", ["blocks/b0"])
    assert index.resume_files("a", FINGERPRINT) == ("s1", ["blocks/b0", "blocks/b1"])
    assert index.stored_prefix(FINGERPRINT, ["b0", "b1", "b2", "b3"]) == 2
    assert index.resume_files("nobody") is None


def test_chain_rows_without_a_session_or_with_gaps_are_problems(index):
    put(index, "a", ["b0", "b1", "b2"], "s1")
    assert index.problems() == []
    db = index.db()
    db.execute("DELETE FROM session_blocks WHERE position = 1")
    db.execute("INSERT INTO session_blocks VALUES ('orphan', ?, 0, 'b9')", (FINGERPRINT,))
    problems = index.problems()
    assert any("orphan" in problem and "without a session row" in problem for problem in problems)
    assert any(session_key("a") in problem and "gaps" in problem for problem in problems)


def test_policies_persist_and_the_default_policy_is_no_row(index, tmp_path):
    index.put_policy("a", AgentPolicy(pinned=True))
    index.put_policy("b", AgentPolicy(retention_s=60, keep_until=5.0))
    index.put_policy("c", AgentPolicy(retention_by_user=True))  # the user chose no expiry
    reopened = WarmIndex(tmp_path / "index.sqlite", may_migrate=True)
    try:
        assert reopened.policies() == {
            "a": AgentPolicy(pinned=True),
            "b": AgentPolicy(False, 60, 5.0),
            "c": AgentPolicy(retention_by_user=True),
        }
        reopened.put_policy("c", AgentPolicy())
        reopened.put_policy("a", AgentPolicy())
        assert set(reopened.policies()) == {"b"}
    finally:
        reopened.close()


def test_clear_empties_the_caches_and_keeps_the_policies(index):
    add_blocks(index, ["b0"])
    put(index, "a", ["b0"], "s1")
    index.put_policy("a", AgentPolicy(pinned=True))
    assert sorted(index.clear()) == ["blocks/b0", "s1"]
    assert index.totals("blocks") == (0, 0) and index.totals("sessions") == (0, 0)
    assert "a" in index.policies()


def test_an_old_index_is_refused_where_it_may_not_be_moved(tmp_path):
    path = tmp_path / "index.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE sessions (key TEXT, fingerprint TEXT, session_id TEXT, file TEXT, checksum TEXT, "
            "bytes INTEGER, tokens INTEGER, chain TEXT, last_used REAL, PRIMARY KEY (key, fingerprint))"
        )
    db.close()
    with pytest.raises(OldIndexInUse):
        WarmIndex(path, may_migrate=False)


def test_policies_from_before_retention_by_user_read_as_set_by_a_client(tmp_path):
    path = tmp_path / "index.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE agent_policies (key TEXT PRIMARY KEY, session_id TEXT NOT NULL, pinned INTEGER NOT NULL, "
            "retention_s INTEGER, keep_until REAL NOT NULL)"
        )
        db.execute("INSERT INTO agent_policies VALUES (?,?,?,?,?)", (session_key("a"), "a", 1, 60, 0.0))
    db.close()
    with pytest.raises(OldIndexInUse):
        WarmIndex(path, may_migrate=False)
    index = WarmIndex(path, may_migrate=True)
    try:
        assert index.policies() == {"a": AgentPolicy(pinned=True, retention_s=60)}
        index.put_policy("a", AgentPolicy(retention_s=30, retention_by_user=True))
        assert index.policies() == {"a": AgentPolicy(retention_s=30, retention_by_user=True)}
    finally:
        index.close()


def test_summaries_and_chains_are_records_whose_json_keeps_the_api_keys(index):
    add_blocks(index, ["b0", "b1"])
    put(index, "a", ["b0", "b1"], "s1")
    put(index, "b", ["b0", "b9"], "s2")  # b9 is named but not stored yet
    summary = index.session_summaries()["b"]
    assert (summary.fingerprint, summary.tokens, summary.blocks, summary.shared_blocks) == (FINGERPRINT, 7, 2, 1)
    assert list(summary.to_json()) == ["fingerprint", "tokens", "blocks", "shared_blocks", "bytes", "last_used"]
    chain = index.session_blocks(FINGERPRINT, "b")
    assert [(block.name, block.stored, block.agents) for block in chain] == [
        ("b0", True, ("a", "b")),
        ("b9", False, ("b",)),
    ]
    assert chain[0].to_json() == {
        "name": "b0",
        "bytes": 100,
        "last_used": chain[0].last_used,
        "stored": True,
        "agents": ["a", "b"],
    }
    assert [StoredBlock.from_json(block.to_json()) for block in chain] == chain  # as the TUI reads a server's
