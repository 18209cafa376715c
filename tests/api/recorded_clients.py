"""Requests real clients sent, recorded with tests/api/record_requests.py (ids and paths scrubbed), to replay."""

from __future__ import annotations

import copy
import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def claude_code_request() -> dict:
    """Claude Code 2.1.197's first request for `claude -p "Say hello"` with its default tools: method,
    path (`/v1/messages?beta=true`), headers (no credentials) and body (~20k tokens, max_tokens 64000,
    three system blocks led by the billing line, `messages` = [user, system])."""
    return json.loads((FIXTURES / "claude_code_request.json").read_text())


def small_claude_code_body(max_tokens: int = 8) -> dict:
    """The recorded body cut to fit a small context (~1.5k tokens): every field and block kind kept, the long
    system block, the mid-conversation system message and the tools shortened to one small tool."""
    body = copy.deepcopy(claude_code_request()["body"])
    body["system"][2]["text"] = body["system"][2]["text"][:2000]
    body["messages"][1]["content"] = body["messages"][1]["content"][:600]
    body["tools"] = [tool for tool in body["tools"] if tool["name"] == "TaskStop"]
    body["max_tokens"] = max_tokens
    return body


def with_billing_line(body: dict, line: str) -> dict:
    body = copy.deepcopy(body)
    body["system"][0]["text"] = line
    return body


def replay_headers(recorded: dict, api_key: str) -> dict:
    """The recorded headers (Claude Code's betas, version, session id) with this server's key."""
    headers = {k: v for k, v in recorded["headers"].items() if k.lower() != "accept-encoding"}
    return {**headers, "x-api-key": api_key}
