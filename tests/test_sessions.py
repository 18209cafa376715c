"""Session transcripts on disk: hashed names, atomic writes, corrupt files reported."""

from __future__ import annotations

import json

import pytest

from engine.sessions import Session, SessionCorrupt, SessionStore


@pytest.mark.parametrize("session_id", ["alice", "../../etc/passwd", "x" * 5000, "日本語 🙂", "a/b\\c:d", ""])
def test_any_id_is_stored_under_a_hashed_name(tmp_path, session_id):
    store = SessionStore(tmp_path)
    session = store.get_or_new(session_id)
    store.record_turn(session, "hi", "hello", context_tokens=10)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].parent == tmp_path
    assert len(files[0].name) < 64
    loaded = store.get(session_id)
    assert loaded.id == session_id and loaded.turns == 1
    assert [m.content for m in loaded.messages] == ["hi", "hello"]


def test_conversation_puts_system_history_and_new_turn(tmp_path):
    session = Session(id="s", system="Be brief.")
    SessionStore(tmp_path).record_turn(session, "one", "uno", context_tokens=5)
    roles = [(m.role, m.content) for m in session.conversation("two")]
    assert roles == [("system", "Be brief."), ("user", "one"), ("assistant", "uno"), ("user", "two")]


def test_writes_leave_no_temp_files_and_old_content_survives_a_failed_write(tmp_path, monkeypatch):
    store = SessionStore(tmp_path)
    session = store.get_or_new("bob")
    store.record_turn(session, "a", "b", context_tokens=3)
    before = store.path_for("bob").read_text()

    def broken_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        store.record_turn(session, "c", "d", context_tokens=6)
    monkeypatch.undo()
    assert store.path_for("bob").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [store.path_for("bob").name]


def test_corrupt_file_is_reported_not_overwritten(tmp_path):
    store = SessionStore(tmp_path)
    store.path_for("eve").parent.mkdir(parents=True, exist_ok=True)
    store.path_for("eve").write_text("{not json")
    with pytest.raises(SessionCorrupt, match="unreadable"):
        store.get("eve")
    assert store.all() == []


def test_listing_is_most_recent_first(tmp_path):
    store = SessionStore(tmp_path)
    for name in ("first", "second"):
        store.record_turn(store.get_or_new(name), "q", "a", context_tokens=1)
    assert [s.id for s in store.all()] == ["second", "first"]
    assert store.last().id == "second"
    assert json.loads(store.path_for("first").read_text())["version"] == 1
