"""The `agent-memory` command in real subprocesses: sessions across processes, bad input, startup cost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cli_data_dir(default_engine, tmp_path_factory):
    """A data dir that already holds the converted default model (shared with the engine fixture)."""
    return default_engine.settings.data_path


def test_help_and_version_do_not_import_mlx():
    code = (
        "import sys\n"
        "from workbench.cli import app\n"
        "for args in (['--help'], ['version']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), exc.code\n"
        "heavy = [m for m in ('mlx.core', 'mlx_lm', 'textual', 'sanic', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "backend:" in result.stdout and "compute dtype:" in result.stdout and "blas:" in result.stdout


def test_session_continues_in_a_new_process(cli_data_dir):
    first = run_cli(
        "chat", "-s", "alice", "--new", "-t", "0", "--json", "What is the capital of France?", data_dir=cli_data_dir
    )
    assert first.returncode == 0, first.stderr
    one = json.loads(first.stdout)
    assert one["session"] == "alice" and "Paris" in one["text"]
    assert set(one) == {"session", "text", "finish_reason", "usage", "cache", "timing", "sampling"}
    # A fresh process has measured nothing yet: no estimate, and a cold turn recomputes.
    # restore_s: the time it took to find nothing
    assert one["cache"].pop("restore_s") < 1.0
    assert one["cache"] == {
        "source": "cold",
        "reused_tokens": 0,
        "decision": "recompute",
        "estimate_s": 0.0,
        "miss_reason": "new agent: nothing cached yet",
    }
    assert set(one["timing"]) == {"ttft_s", "prefill_tokens_per_s", "decode_tokens_per_s", "total_s"}
    assert one["timing"]["total_s"] >= one["timing"]["ttft_s"] > 0
    assert one["usage"]["cached_tokens"] == 0

    second = run_cli("chat", "-s", "alice", "-t", "0", "--json", "And of Italy?", data_dir=cli_data_dir)
    assert second.returncode == 0, second.stderr
    two = json.loads(second.stdout)
    assert "Rome" in two["text"]
    # The second prompt carries the whole first exchange, read back from disk in this new process.
    assert two["usage"]["prompt_tokens"] > one["usage"]["prompt_tokens"] + one["usage"]["completion_tokens"]
    assert two["cache"]["source"] == "warm" and two["cache"]["decision"] == "restore"
    assert 0 < two["cache"]["restore_s"] < two["timing"]["ttft_s"]
    assert two["cache"]["miss_reason"] is None  # everything the agent had stored was reused
    assert two["usage"]["cached_tokens"] == two["cache"]["reused_tokens"] > one["usage"]["prompt_tokens"]

    listing = run_cli("agents", "ls", "--json", data_dir=cli_data_dir)
    rows = {row["id"]: row for row in json.loads(listing.stdout)}
    assert rows["alice"]["turns"] == 2

    shown = run_cli("agents", "show", "alice", data_dir=cli_data_dir)
    assert "And of Italy?" in shown.stdout


def test_new_starts_over_and_rm_deletes(cli_data_dir):
    run_cli("chat", "-s", "carol", "-t", "0", "-n", "8", "Hello", data_dir=cli_data_dir)
    again = run_cli("chat", "-s", "carol", "--new", "-t", "0", "-n", "8", "--json", "Hello", data_dir=cli_data_dir)
    rows = {row["id"]: row for row in json.loads(run_cli("agents", "--json", data_dir=cli_data_dir).stdout or "[]")}
    assert again.returncode == 0
    assert rows["carol"]["turns"] == 1
    removed = run_cli("agents", "rm", "carol", data_dir=cli_data_dir)
    assert removed.returncode == 0
    assert run_cli("agents", "show", "carol", data_dir=cli_data_dir).returncode == 2


def test_interactive_chat_reads_stdin_and_quits(cli_data_dir):
    result = run_cli(
        "chat", "-s", "dave", "-t", "0", "-n", "12", data_dir=cli_data_dir, stdin="Hello there\n/quit\nnot sent\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    rows = {row["id"]: row for row in json.loads(run_cli("agents", "ls", "--json", data_dir=cli_data_dir).stdout)}
    assert rows["dave"]["turns"] == 1


def test_continue_flag_resumes_the_last_session(cli_data_dir):
    run_cli("chat", "-s", "erin", "-t", "0", "-n", "8", "Hi", data_dir=cli_data_dir)
    result = run_cli("chat", "-c", "-t", "0", "-n", "8", "--json", "Again", data_dir=cli_data_dir)
    assert json.loads(result.stdout)["session"] == "erin"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["chat", "-s", "x", "   "], {}, "empty"),
        (["chat", "-s", "x", "-m", "no-such-model", "hi"], {}, "unknown model"),
        (["chat", "-s", "x", "-m", "nobody/nothing", "hi"], {}, "Hugging Face hub"),
        (["chat", "-s", "x", "hi"], {"SEMANTIC_MLX_CACHE_BUDGET_MB": "lots"}, "SEMANTIC_MLX_CACHE_BUDGET_MB"),
        (["chat", "-s", "x", "hi"], {"SEMANTIC_MLX_MAX_BATCH_SIZE": "0"}, "SEMANTIC_MLX_MAX_BATCH_SIZE"),
        (["chat", "-c", "hi"], {}, "no session to continue"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, env, message):
    result = run_cli(*args, data_dir=tmp_path / "data", env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "sessions").exists()


def test_truncated_gguf_exits_2_and_writes_nothing(tmp_path, default_engine):
    from engine.model_source import PACKAGED_MODELS

    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(PACKAGED_MODELS["default"].gguf_path(tmp_path).read_bytes()[:30_000_000])
    data = tmp_path / "data"
    result = run_cli("chat", "-s", "x", "-m", str(truncated), "hi", data_dir=data)
    assert result.returncode == 2
    assert "truncated or corrupt" in result.stderr
    assert not (data / "sessions").exists()
    assert [p.name for p in (data / "models").glob("*")] in ([], ["digests.json"])


def test_models_lists_packaged_and_prepared(cli_data_dir):
    result = run_cli("models", data_dir=cli_data_dir)
    assert result.returncode == 0
    assert "default" in result.stdout and "gemma3-270m" in result.stdout
    assert "SmolLM2-135M-Instruct" in result.stdout
    assert "backend:" in result.stdout


def test_cache_stats_check_and_repair(cli_data_dir, tmp_path):
    env = {"SEMANTIC_AGENT_CACHE_DIR": str(tmp_path / "kv")}
    for text in ("Hello there, tell me about the sea. " * 30, "And about rivers?"):
        assert (
            run_cli("chat", "-s", "frank", "-t", "0", "-n", "4", text, data_dir=cli_data_dir, env=env).returncode == 0
        )
    stats = json.loads(run_cli("cache", "stats", "--json", data_dir=cli_data_dir, env=env).stdout)
    assert stats["warm"]["sessions"] == 1 and stats["warm"]["blocks"] >= 1 and stats["warm"]["dtype"] == "float16"
    clean = run_cli("cache", "check", data_dir=cli_data_dir, env=env)
    assert clean.returncode == 0 and "0 damaged (checksum or contents)" in clean.stdout

    block = sorted((tmp_path / "kv").rglob("blocks/*/*.safetensors"))[0]
    data = bytearray(block.read_bytes())
    data[-10] ^= 0x55
    block.write_bytes(bytes(data))
    (block.parent / "stray.safetensors").write_bytes(b"left over")
    found = run_cli("cache", "check", "--no-repair", data_dir=cli_data_dir, env=env)
    assert found.returncode == 1
    assert "1 damaged (checksum or contents)" in found.stdout and "1 not in the index" in found.stdout
    repaired = run_cli("cache", "check", data_dir=cli_data_dir, env=env)
    assert repaired.returncode == 0 and "repaired" in repaired.stdout
    again = run_cli("cache", "check", "--no-repair", data_dir=cli_data_dir, env=env)
    assert again.returncode == 0 and "0 damaged (checksum or contents), 0 missing, 0 not in the index" in again.stdout

    listing = json.loads(run_cli("agents", "--json", data_dir=cli_data_dir, env=env).stdout)
    assert {row["id"]: row for row in listing}["frank"]["kv"]["tokens"] > 0
    assert run_cli("agents", "rm", "frank", data_dir=cli_data_dir, env=env).returncode == 0
    stats = json.loads(run_cli("cache", "stats", "--json", data_dir=cli_data_dir, env=env).stdout)
    assert stats["warm"]["sessions"] == 0


def footer_of(cached_tokens: int, cache) -> str:
    """The footer under a 600-token prompt's 5-token reply, first token at 0.25 s, 16 tok/s."""
    from engine.events import Timing, TurnFinished, Usage
    from workbench.format import turn_footer

    usage, timing = Usage(600, 5, cached_tokens), Timing(0.25, 40.0, 16.0, 0.6)
    return turn_footer(TurnFinished("r", "hi", "stop", usage, cache, timing))


def test_turn_footer_reports_cache_and_speed():
    from engine.events import CacheReport

    footer = footer_of(590, CacheReport("warm", 590, 0.05))
    assert footer == "[warm cache 590 tokens, prefilled 10, first token 0.25s, 16.0 tok/s]"


def test_turn_footer_says_why_the_cache_missed():
    from engine.events import CacheReport

    cache = CacheReport("hot", 12, 0.0, "restore", 0.0, "system prompt changed at token 12", "diverged")
    assert footer_of(12, cache) == (
        "[hot cache 12 tokens, prefilled 588, first token 0.25s, 16.0 tok/s, system prompt changed at token 12]"
    )


def test_agents_prune_deletes_stale_agents_but_not_pinned_ones(tmp_path):
    """`agents prune --older-than` on a data dir of transcripts and a warm tier (no model is loaded)."""
    import sqlite3
    import time

    from engine.kv.index import session_key
    from engine.kv.policy import AgentPolicy
    from engine.kv.warm import WarmTier
    from engine.sessions import Session, SessionStore
    from tests.kv.test_warm_tier import FINGERPRINTS, snapshot, write_job

    data = tmp_path / "data"
    store = SessionStore(data / "sessions")
    store.root.mkdir(parents=True)
    old, now = time.time() - 10 * 86400, time.time()
    for session_id, used in (("stale", old), ("fresh", now), ("stale-pinned", old)):
        store.path_for(session_id).write_text(Session(id=session_id, updated_at=used).model_dump_json())
    warm = WarmTier(data / "cli-caches", disk_budget_mb=100, clean_up=True)
    warm.write(write_job(FINGERPRINTS[0], snapshot(FINGERPRINTS[0], "stale-cache-only", list(range(40)))))
    warm.set_policy("stale-pinned", AgentPolicy(pinned=True))
    warm.close()
    with sqlite3.connect(data / "cli-caches" / "index.sqlite") as db:  # its cache last used 10 days ago
        db.execute("UPDATE sessions SET last_used=? WHERE key=?", (old, session_key("stale-cache-only")))

    listed = run_cli("agents", "prune", "--older-than", "7d", "--dry-run", data_dir=data)
    assert listed.returncode == 0 and "2 agents to delete, 1 pinned kept" in listed.stdout, listed.stdout
    assert store.get("stale") is not None  # a dry run changes nothing
    pruned = run_cli("agents", "prune", "--older-than", "7d", data_dir=data)
    assert pruned.returncode == 0 and "2 agents deleted" in pruned.stdout, pruned.stdout + pruned.stderr
    assert store.get("stale") is None and store.get("fresh") is not None and store.get("stale-pinned") is not None
    warm = WarmTier(data / "cli-caches", disk_budget_mb=100)
    assert warm.session_summaries() == {}
    warm.close()
    bad = run_cli("agents", "prune", "--older-than", "a week", data_dir=data)
    assert bad.returncode == 2 and "7d" in bad.stderr


def test_ids_outputs_and_addresses_the_command_line_refuses_say_why(tmp_path):
    """What the API refuses the command line refuses too, in one line and no traceback; no model loads."""
    import os
    import socket

    data = tmp_path / "data"
    refused = [
        (("agents", "show", os.fsdecode(b"agent-\xff")), "not valid UTF-8"),  # a byte that is not UTF-8
        (("agents", "fork", "keeper", ""), "cannot be empty"),
        (("agents", "import", "x.agent.tar", "--as", "a" * 300), "at most 256"),
        (("chat", "-s", "x", "--seed", "-1", "hi"), "--seed"),
        (("models", "ps", "--connect", "http://[::1"), "not a server URL"),
    ]
    for args, message in refused:
        result = run_cli(*args, data_dir=data)
        assert result.returncode in (1, 2) and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
    older = run_cli("agents", "prune", "--older-than", "9" * 400 + "d", "--dry-run", data_dir=data)
    assert older.returncode == 0 and "0 agents to delete" in older.stdout, older.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run_cli("serve", "--port", str(taken.getsockname()[1]), data_dir=data)
    assert busy.returncode == 2 and "cannot listen on" in busy.stderr and "Traceback" not in busy.stderr


def test_agent_files_are_written_to_files_or_folders_only(tmp_path):
    import os
    import stat

    from engine.sessions import Session, SessionStore

    data = tmp_path / "data"
    store = SessionStore(data / "sessions")
    store.save(Session(id="new"))
    no_turn = run_cli("agents", "export", "new", data_dir=data)
    assert no_turn.returncode == 2 and "no turn yet" in no_turn.stderr and "Traceback" not in no_turn.stderr
    store.save(Session(id="keeper", model_id="default", model_fingerprint="0123456789abcdef"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused = run_cli("agents", "export", "keeper", "-o", str(fifo), data_dir=data)
    assert refused.returncode == 2 and "not a regular file" in refused.stderr, refused.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # never replaced by a file
    folder = tmp_path / "exports"
    folder.mkdir()
    written = run_cli("agents", "export", "keeper", "-o", str(folder), data_dir=data)
    assert written.returncode == 0 and (folder / "keeper.agent.tar").is_file(), written.stderr


def test_agents_rm_waits_for_a_turn_running_in_another_process(tmp_path):
    """A server's turn holds the agent's turn lock; `agents rm` deletes after it, or the turn's end
    would save the deleted transcript again."""
    import time

    from engine.sessions import Session, SessionStore
    from tests.conftest import cli_env

    data = tmp_path / "data"
    store = SessionStore(data / "sessions")
    store.save(Session(id="busy"))
    with store.turn_lock("busy").held():  # as a running turn holds it
        removing = subprocess.Popen(
            [sys.executable, "-m", "workbench.cli", "agents", "rm", "busy"],
            env=cli_env(data),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert removing.poll() is None and store.get("busy") is not None
    out, err = removing.communicate(timeout=60)
    assert removing.returncode == 0 and "Deleted session 'busy'" in out, err
    assert "waiting for it to end" in err and store.get("busy") is None
