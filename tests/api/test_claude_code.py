"""The real Claude Code CLI (`@anthropic-ai/claude-code` from npm, installed by `make clients` into .clients/)
against servers on loopback: Claude Code shows our "prompt is too long", and two `claude -p` turns of one
session read the first turn's prompt from the KV cache on the second. Skipped, with the reason, when the
CLI is not installed or does not run here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import anthropic
import pytest

from tests.api.test_access_log import LINE
from tests.conftest import API_KEY, REPO_ROOT, ServerProcess

pytestmark = pytest.mark.slow

CLAUDE = REPO_ROOT / ".clients" / "node_modules" / ".bin" / "claude"


@pytest.fixture(scope="module")
def claude() -> Path:
    if not CLAUDE.exists():
        pytest.skip(
            f"the Claude Code CLI is not installed at {CLAUDE}: run `make clients` (needs npm and its registry)"
        )
    probe = subprocess.run([str(CLAUDE), "--version"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"the Claude Code CLI does not run here: {(probe.stderr or probe.stdout).strip()[:300]}")
    return CLAUDE


@pytest.fixture(scope="module")
def gemma_server(default_engine, data_dir):
    """Gemma 3 270M (a 32k context) behind a real server with an API key."""
    cache_dir = data_dir / "gemma-server-caches"
    cache_dir.mkdir(exist_ok=True)
    running = ServerProcess(data_dir, cache_dir, {"SEMANTIC_MLX_MODEL_ID": "gemma3-270m", "SEMANTIC_API_KEY": API_KEY})
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def run_claude(claude: Path, server, home: Path, *args: str) -> subprocess.CompletedProcess:
    """`claude ARGS` as a user would point it at the server (docs/user-guide.md, "Claude Code"), with its own
    home so no user configuration or login is read."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": server.base_url,
        "ANTHROPIC_API_KEY": API_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no telemetry or update checks: loopback only
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "24",  # these small models seldom end an answer on their own
        "CLAUDE_STREAM_IDLE_TIMEOUT_MS": "1800000",  # a long prefill on a busy CPU is not a dead stream
    }
    project = home / "project"
    project.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(claude), *args], capture_output=True, text=True, env=env, cwd=project, timeout=1200, check=False
    )


def message_lines(server, since: int, session_id: str) -> list[dict]:
    """Access lines of POST /v1/messages for one session, in order, from log offset `since`."""
    lines = [LINE.search(line) for line in server.log()[since:].splitlines()]
    return [m.groupdict() for m in lines if m and m["path"] == "/v1/messages" and m["session"] == session_id]


def test_claude_code_shows_prompt_too_long(server, claude, tmp_path):
    """Claude Code's default request (~20k tokens) is past the default model's 8k context: our 400 is
    parsed and shown by Claude Code itself, at once."""
    started = time.perf_counter()
    result = run_claude(claude, server, tmp_path, "-p", "Say OK.")
    elapsed_s = time.perf_counter() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0 and elapsed_s < 60, output
    assert re.search(r"Prompt is too long .* ~\d+ tokens \(limit 8191\)", output), output


def two_turns(claude: Path, server, home: Path) -> tuple[list[dict], list[dict], dict]:
    """`claude -p` twice in one session (the second with --resume); the access lines of each turn's
    requests and the first turn's JSON result."""
    session_id = str(uuid.uuid4())
    common = ("--tools", "Read", "--output-format", "json")
    since = len(server.log())
    first = run_claude(claude, server, home, "-p", "Say OK.", "--session-id", session_id, *common)
    first_result = json.loads(first.stdout)
    first_lines = message_lines(server, since, session_id)
    since = len(server.log())
    second = run_claude(claude, server, home, "-p", "Say OK again.", "--resume", session_id, *common)
    second_result = json.loads(second.stdout)
    second_lines = message_lines(server, since, session_id)
    for result, lines in ((first_result, first_lines), (second_result, second_lines)):
        assert result["api_error_status"] is None and result["session_id"] == session_id, result
        assert lines and all(line["status"] == "200" for line in lines), lines
    return first_lines, second_lines, first_result


def test_second_claude_code_turn_reads_the_first_from_cache(server, claude, tmp_path):
    first, second, _ = two_turns(claude, server, tmp_path)
    assert int(second[0]["cached"]) >= 0.9 * int(first[0]["prompt"]), (first, second)


def test_second_claude_code_turn_reads_the_first_from_cache_on_gemma(gemma_server, claude, tmp_path):
    """Gemma's sliding-window caches cannot be cut back once past the window; when the first answer hits
    max_tokens, Claude Code resumes the session with that turn re-rendered and its retries left out, so
    the second turn resumes from the window checkpoint at the first prompt's end."""
    first, second, _ = two_turns(claude, gemma_server, tmp_path)
    assert int(second[0]["cached"]) >= 0.9 * int(first[0]["prompt"]), (first, second)


def test_gemma_takes_claude_code_system_messages_and_split_answers(gemma_server):
    """Gemma's template refuses system turns mid-conversation and back-to-back turns of one role; both
    arrive from Claude Code (its mid-conversation system messages; an answer resumed after max_tokens)."""
    client = anthropic.Anthropic(base_url=gemma_server.base_url, api_key=API_KEY, max_retries=0)
    message = client.messages.create(
        model="claude-opus-4-8",
        max_tokens=2,
        system=[
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.1c0;"},
            {"type": "text", "text": "Be brief."},
        ],
        messages=[
            {"role": "user", "content": "Hello."},
            {"role": "system", "content": "Available agent types: none."},
            {"role": "assistant", "content": "Hi, how can"},
            {"role": "assistant", "content": "I help?"},
            {"role": "user", "content": "Say OK."},
            {"role": "system", "content": "Answer in one word."},
        ],
    )
    assert message.stop_reason in ("max_tokens", "end_turn") and message.usage.output_tokens > 0
