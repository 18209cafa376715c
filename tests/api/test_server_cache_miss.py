"""Why a turn's cache missed, as the server reports it: the `x-cache-miss-reason` header on the Anthropic
and OpenAI routes, `cache.miss_reason` in the agent API, and a counter by kind in /metrics."""

from __future__ import annotations

import json
import re

import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import API_KEY

SYSTEM = "You are a terse assistant who answers in one short sentence."
HEADER = "x-cache-miss-reason"


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0)


def anthropic_turn(claude, session: str, system: str, messages: list[dict], stream: bool = False):
    """(reply text, the response's miss header) of one greedy turn of `session`."""
    arguments = {
        "model": "m",
        "max_tokens": 6,
        "system": system,
        "messages": messages,
        "extra_body": {"temperature": 0},
        "extra_headers": {"X-Session-ID": session},
    }
    if stream:
        with claude.messages.with_streaming_response.create(**arguments, stream=True) as response:
            header = response.headers.get(HEADER)
            deltas = [
                json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line.startswith("data: ")
            ]
        text = "".join(d["delta"].get("text", "") for d in deltas if d["type"] == "content_block_delta")
        return text, header
    raw = claude.messages.with_raw_response.create(**arguments)
    return raw.parse().content[0].text, raw.headers.get(HEADER)


def test_anthropic_header_names_a_changed_system_prompt(claude):
    question = [{"role": "user", "content": "Name a colour."}]
    reply, header = anthropic_turn(claude, "hdr-agent", SYSTEM, question)
    assert header is not None and header.startswith("new agent")

    follow_up = [*question, {"role": "assistant", "content": reply}, {"role": "user", "content": "Another."}]
    _, header = anthropic_turn(claude, "hdr-agent", SYSTEM, follow_up)
    assert header is None  # a clean continuation reused everything the agent had

    _, header = anthropic_turn(claude, "hdr-agent", "You are a pirate. " + SYSTEM, follow_up)
    assert re.fullmatch(r"system prompt changed at token \d+", header or "")

    _, header = anthropic_turn(claude, "hdr-agent", "You are a poet. " + SYSTEM, follow_up, stream=True)
    assert re.fullmatch(r"system prompt changed at token \d+", header or "")


def test_openai_header_names_an_edited_message(server):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)
    session = {"X-Session-ID": "hdr-openai"}

    def turn(messages):
        raw = client.chat.completions.with_raw_response.create(
            model="x", messages=messages, max_tokens=6, temperature=0, extra_headers=session
        )
        return raw.parse().choices[0].message.content, raw.headers.get(HEADER)

    question = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a colour."}]
    reply, _ = turn(question)
    _, header = turn([*question, {"role": "assistant", "content": reply}, {"role": "user", "content": "Another."}])
    assert header is None
    edited = [question[0], {"role": "user", "content": "Name a fruit."}]
    _, header = turn([*edited, {"role": "assistant", "content": reply}, {"role": "user", "content": "Another."}])
    assert re.fullmatch(r"history edited at turn 1 \(token \d+\)", header or "")


def test_agent_api_reports_miss_reason(http):
    path = "/v1/agents/miss-agent/messages"
    first = http.post(path, json={"content": "Name a colour.", "system": SYSTEM, "max_tokens": 6}).json()
    assert first["cache"]["miss_reason"].startswith("new agent")
    second = http.post(path, json={"content": "Another.", "max_tokens": 6}).json()
    assert second["cache"]["miss_reason"] is None and second["usage"]["cached_tokens"] > 0

    body = {"content": "One more.", "system": "You are a pirate. " + SYSTEM, "max_tokens": 6, "stream": True}
    with http.stream("POST", path, json=body) as response:
        raw = response.read().decode()
    frames = {
        lines[0].removeprefix("event: "): json.loads(lines[1].removeprefix("data: "))
        for lines in (frame.split("\n") for frame in raw.strip().split("\n\n") if not frame.startswith(":"))
        if lines[0] in ("event: started", "event: finished")
    }
    reason = frames["started"]["cache"]["miss_reason"]
    assert re.fullmatch(r"system prompt changed at token \d+", reason)
    assert frames["finished"]["cache"]["miss_reason"] == reason


def test_metrics_count_misses_by_kind(http):
    http.post("/v1/agents/miss-counted/messages", json={"content": "Name a colour.", "max_tokens": 4})
    families = text_string_to_metric_families(http.get("/metrics").text)
    counts = {
        sample.labels["reason"]: sample.value
        for family in families
        for sample in family.samples
        if sample.name == "agent_memory_cache_misses_total"
    }
    assert set(counts) >= {"new", "diverged", "evicted", "model_changed", "recomputed", "damaged"}
    assert counts["new"] >= 1
