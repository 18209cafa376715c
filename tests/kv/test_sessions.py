"""Session transcripts on disk: hashed names, atomic writes, corrupt files reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.sessions import Session, SessionCorrupt, SessionStore
from tests.conftest import cli_env


@pytest.mark.parametrize("session_id", ["alice", "../../etc/passwd", "x" * 5000, "日本語 🙂", "a/b\\c:d", ""])
def test_any_id_is_stored_under_a_hashed_name(tmp_path, session_id):
    store = SessionStore(tmp_path)
    session = store.get_or_new(session_id)
    store.record_turn(session, "hi", "hello", context_tokens=10)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and files[0].parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([files[0].name, "locks"])  # locks: one file each
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
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([store.path_for("bob").name, "locks"])


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


def test_a_turn_recorded_from_a_stale_copy_keeps_the_turns_stored_meanwhile(tmp_path):
    first, second = SessionStore(tmp_path), SessionStore(tmp_path)  # two processes' views of one dir
    mine, theirs = first.get_or_new("shared"), second.get_or_new("shared")
    second.record_turn(theirs, "theirs", "ok", context_tokens=4)
    first.record_turn(mine, "mine", "ok", context_tokens=8)
    assert [m.content for m in first.get("shared").messages] == ["theirs", "ok", "mine", "ok"]
    assert mine.messages == first.get("shared").messages  # the caller's copy is the stored one


def test_a_transcript_started_over_elsewhere_is_not_merged_back(tmp_path):
    store = SessionStore(tmp_path)
    old = store.get_or_new("s")
    store.record_turn(old, "a", "b", context_tokens=2)
    store.save(Session(id="s"))  # another process started it over
    store.record_turn(old, "c", "d", context_tokens=4)  # this copy does not extend the stored one: it wins
    assert [m.content for m in store.get("s").messages] == ["a", "b", "c", "d"]


HOLD_LOCK = """
import sys
from pathlib import Path
from engine.sessions import SessionStore
store = SessionStore(Path(sys.argv[1]))
with store.turn_lock(sys.argv[2]).held():
    print("held", flush=True)
    sys.stdin.readline()
    store.record_turn(store.get_or_new(sys.argv[2]), "from another process", "ok", context_tokens=9)
"""


def hold_in_another_process(root, session_id: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(root), session_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "held"
    return child


@pytest.mark.slow
def test_the_turn_lock_keeps_out_other_processes_and_is_reentrant_within_one(tmp_path):
    store = SessionStore(tmp_path)
    child = hold_in_another_process(tmp_path, "x")
    try:
        assert not store.turn_lock("x").try_acquire()
        with store.turn_lock("y").held(), store.turn_lock("y").held():  # another agent; twice here
            pass
    finally:
        child.communicate("\n", timeout=30)
    with store.turn_lock("x").held(), store.turn_lock("x").held():
        assert child.returncode == 0


@pytest.mark.slow
def test_chat_waits_for_a_turn_another_process_is_running(default_engine, data_dir, tmp_path):
    sessions = data_dir / "sessions"
    child = hold_in_another_process(sessions, "waiter")
    chat = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "chat", "--session", "waiter", "--max-tokens", "2", "Hi"],
        env=cli_env(data_dir),
        cwd=data_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    waiting = chat.stderr.readline()
    while "waiting" not in waiting and waiting:
        waiting = chat.stderr.readline()
    assert "Another process is running a turn of 'waiter'" in waiting
    assert chat.poll() is None  # still waiting
    child.communicate("\n", timeout=30)
    assert chat.wait(timeout=300) == 0
    asked = [m.content for m in SessionStore(sessions).get("waiter").messages if m.role == "user"]
    assert asked == ["from another process", "Hi"]
