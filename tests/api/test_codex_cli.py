"""Codex CLI (`@openai/codex` from npm, installed into .clients by `make clients`) with this server as its
model provider, through the Responses API, using the configuration docs/user-guide.md gives.

Codex's own prompt (~10k tokens with its tools) does not fit the default model's 8k context; the guide's
`small` profile trims it to ~1.5k, which the default model answers in seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import httpx
import pytest

from tests.conftest import API_KEY, REPO_ROOT

pytestmark = pytest.mark.slow  # a real client in a subprocess

CODEX = REPO_ROOT / ".clients" / "node_modules" / ".bin" / "codex"
GUIDE = REPO_ROOT / "docs" / "user-guide.md"
DOCS_URL = "http://127.0.0.1:8000/v1"
DOCS_INSTRUCTIONS = "/home/me/.codex/small-model.md"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="session")
def codex() -> str:
    """The Codex binary, or a skip saying why there is none (session-scoped: it skips before the server starts)."""
    if not CODEX.exists():
        pytest.skip(f"Codex CLI is not installed at {CODEX}: run `make clients` (needs npm and its registry)")
    try:
        version = subprocess.run([str(CODEX), "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"the Codex CLI binary does not run on this machine: {exc}")
    if version.returncode != 0:
        pytest.skip(f"the Codex CLI binary does not run on this machine: {version.stderr.strip()[-300:]}")
    return str(CODEX)


def guide_file(name: str) -> str:
    """The ```toml block of docs/user-guide.md whose first line is `# ~/.codex/<name>`."""
    for block in re.findall(r"^```toml\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL):
        if block.startswith(f"# ~/.codex/{name}"):
            return block
    raise AssertionError(f"docs/user-guide.md has no ```toml block for ~/.codex/{name}")


@pytest.fixture(scope="module")
def codex_home(server, tmp_path_factory):
    """CODEX_HOME holding the guide's config.toml and small profile, pointed at the test server."""
    home = tmp_path_factory.mktemp("codex-home")
    instructions = home / "small-model.md"
    instructions.write_text("You are a coding assistant in a terminal. Answer in one or two short sentences.\n")
    (home / "config.toml").write_text(guide_file("config.toml").replace(DOCS_URL, f"{server.base_url}/v1"))
    small = guide_file("small.config.toml").replace(DOCS_INSTRUCTIONS, str(instructions))
    (home / "small.config.toml").write_text(small)
    return home


def run_codex(codex: str, home, cwd, *args: str, profile: tuple[str, ...] = ("-p", "small"), ok: bool | None = True):
    """`codex exec --json …` in `cwd`; its JSON events (`ok`: whether it must succeed; None: either)."""
    env = {**os.environ, "CODEX_HOME": str(home), "AGENT_MEMORY_API_KEY": API_KEY, "NO_COLOR": "1"}
    result = subprocess.run(
        [codex, "exec", "--strict-config", *profile, "--json", "--skip-git-repo-check", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ok is None or (result.returncode == 0) == ok, f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def answered(codex: str, home, cwd, *args: str) -> list[dict]:
    """A turn that must succeed, asked once more if the model repeated itself up to the output limit (the
    135M default model sometimes does; Codex then fails the turn as incomplete)."""
    events = run_codex(codex, home, cwd, *args, ok=None)
    if any(e["type"] == "turn.failed" and "max_output_tokens" in e["error"]["message"] for e in events):
        return run_codex(codex, home, cwd, *args)
    assert any(e["type"] == "turn.completed" for e in events), events
    return events


def test_codex_exec_answers_and_resumes_from_the_cache(codex, codex_home, server, tmp_path):
    first = answered(codex, codex_home, tmp_path, "Say hello.")
    thread = next(event["thread_id"] for event in first if event["type"] == "thread.started")
    replies = [
        e["item"]["text"] for e in first if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"
    ]
    assert replies and replies[-1].strip()
    usage = next(event["usage"] for event in first if event["type"] == "turn.completed")
    assert usage["input_tokens"] > 500 and usage["output_tokens"] > 0

    second = answered(codex, codex_home, tmp_path, "resume", "--last", "What did I ask you?")
    assert next(event["thread_id"] for event in second if event["type"] == "thread.started") == thread
    resumed = next(event["usage"] for event in second if event["type"] == "turn.completed")
    assert resumed["cached_input_tokens"] >= usage["input_tokens"]

    # Codex names its session in prompt_cache_key: one agent on the server. (Its cache is kept just after
    # the reply is sent, so the listing may need a moment.)
    deadline = time.monotonic() + 30
    while (agent := httpx.get(f"{server.base_url}/v1/agents/{thread}", headers=AUTH)).status_code == 404:
        assert time.monotonic() < deadline, "Codex's session never showed up in /v1/agents"
        time.sleep(0.5)
    assert agent.json()["tier"] == "hot"


def test_codex_full_prompt_is_too_long_for_the_default_model(codex, codex_home, tmp_path):
    """Without the small profile Codex's prompt overflows the 8k context: Codex shows the server's 400."""
    events = run_codex(codex, codex_home, tmp_path, "Say hello.", profile=(), ok=False)
    failed = next(event for event in events if event["type"] == "turn.failed")
    assert "prompt is too long" in failed["error"]["message"] and "8191 maximum" in failed["error"]["message"]
