"""Anthropic Messages through the official `anthropic` SDK, against a real server on loopback."""

from __future__ import annotations

import json
import re
import time

import anthropic
import httpx
import pytest

from tests.api.recorded_clients import claude_code_request, replay_headers, small_claude_code_body, with_billing_line
from tests.conftest import API_KEY, ServerProcess


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0)


def test_message_with_system_and_usage(client):
    message = client.messages.create(
        model="claude-local-main",
        max_tokens=16,
        system=[{"type": "text", "text": "You are a helpful assistant.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        extra_body={"temperature": 0},
    )
    assert message.type == "message" and message.role == "assistant"
    assert "Paris" in message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.model == "default"
    # An earlier test on the shared server may have left this prompt's prefix in the cache: the whole prompt is
    # what was read from cache plus what was not, and only the latter is `input_tokens`.
    usage = message.usage
    assert usage.input_tokens >= 1 and usage.input_tokens + usage.cache_read_input_tokens > 10
    assert usage.cache_creation_input_tokens == usage.input_tokens and usage.output_tokens > 0


def test_stream_helper_collects_text(client):
    with client.messages.stream(
        model="claude-local-small",
        max_tokens=10,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
        extra_body={"temperature": 0, "top_k": 5},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() and final.content[0].text == text
    assert final.usage.output_tokens > 0


def test_stop_sequence_reported(client):
    message = client.messages.create(
        model="m",
        max_tokens=40,
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        stop_sequences=["5"],
        extra_body={"temperature": 0},
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "5"
    assert "5" not in message.content[0].text


def test_resumed_session_reads_cache(client):
    messages = [{"role": "user", "content": "I keep bees in my garden. Remember that."}]
    first = client.messages.create(
        model="m", max_tokens=12, messages=messages, metadata={"user_id": "an-resume"}, extra_body={"temperature": 0}
    )
    messages += [
        {"role": "assistant", "content": first.content[0].text},
        {"role": "user", "content": "What do I keep?"},
    ]
    second = client.messages.create(
        model="m",
        max_tokens=12,
        messages=messages,
        extra_headers={"x-claude-code-session-id": "an-resume"},
        extra_body={"temperature": 0},
    )
    assert second.usage.cache_read_input_tokens > 0
    assert second.usage.input_tokens < second.usage.cache_read_input_tokens


def test_count_tokens_matches_usage(client):
    request = {"model": "m", "messages": [{"role": "user", "content": "How many tokens is this sentence?"}]}
    counted = client.messages.count_tokens(**request).input_tokens
    message = client.messages.create(max_tokens=1, **request)
    usage = message.usage
    assert counted == usage.input_tokens + usage.cache_read_input_tokens


def test_new_sdk_fields_are_accepted(client):
    message = client.messages.create(
        model="m",
        max_tokens=4,
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"output_config": {"effort": "low"}, "service_tier": "auto", "speed": "fast", "container": None},
        extra_query={"beta": "true"},
        extra_headers={"anthropic-beta": "some-beta-2026-01-01"},
    )
    assert message.content[0].text is not None


def test_errors_map_to_sdk_exceptions(client, server):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="m", max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "invalid_request_error" and "max_tokens" in info.value.message
    with pytest.raises(anthropic.BadRequestError, match="text only"):
        client.messages.create(
            model="m",
            max_tokens=4,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}],
                }
            ],
        )
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "word " * 9000}])
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.base_url, api_key="nope", max_retries=0).messages.create(
            model="m", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )


def test_tool_blocks_are_served_as_text(client):
    message = client.messages.create(
        model="m",
        max_tokens=8,
        tools=[{"name": "get_time", "description": "Current time", "input_schema": {"type": "object"}}],
        messages=[
            {"role": "user", "content": "What time is it?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_time", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "12:00"}]},
        ],
    )
    assert message.content[0].type == "text"


def test_models_list_in_anthropic_shape(client):
    page = client.models.list()
    assert [m.id for m in page.data] == ["default"] and page.data[0].type == "model"


def test_raw_stream_event_order(server):
    body = {"model": "m", "max_tokens": 6, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", f"{server.base_url}/v1/messages", json=body, headers={"x-api-key": API_KEY}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = []
    for frame in raw.strip().split("\n\n"):
        name_line, data_line = frame.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append(name)
    events = [e for e in events if e != "ping"]
    assert events[:2] == ["message_start", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[2:-3]) <= {"content_block_delta"}


def test_final_assistant_message_is_continued(client):
    message = client.messages.create(
        model="m",
        max_tokens=8,
        messages=[
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is"},
        ],
        extra_body={"temperature": 0},
    )
    assert "Paris" in message.content[0].text
    assert not message.content[0].text.startswith("The capital")  # only the continuation is returned


# -- Claude Code, replayed from a recorded request (tests/api/recorded_clients.py) -----------------------


def _claude_code_post(server, body: dict, session_id: str, timeout: float = 600) -> httpx.Response:
    recorded = claude_code_request()
    headers = {**replay_headers(recorded, API_KEY), "X-Claude-Code-Session-Id": session_id}
    return httpx.post(f"{server.base_url}{recorded['path']}", json=body, headers=headers, timeout=timeout)


@pytest.mark.parametrize("stream", [True, False])
def test_claude_code_request_too_long_is_a_fast_400(server, stream):
    body = {**claude_code_request()["body"], "stream": stream}  # ~20k tokens against an 8k context
    started = time.perf_counter()
    response = _claude_code_post(server, body, "cc-too-long")
    elapsed_s = time.perf_counter() - started
    assert response.status_code == 400 and elapsed_s < 5
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    found = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", error["error"]["message"])
    assert found and int(found[1]) > 15000 and int(found[2]) == 8191


def test_claude_code_request_is_served_as_one_agent(server):
    """Every field Claude Code sends (thinking, context_management, output_config.effort, betas,
    ?beta=true, a system message inside `messages`, metadata.user_id as JSON) is accepted; its session
    is one agent named by its session id."""
    session_id = "6f0a3a52-6d8e-4c1e-9d55-0c2b8e1f4a10"
    body = small_claude_code_body(max_tokens=6)
    body["metadata"] = {"user_id": json.dumps({"device_id": "d", "account_uuid": "", "session_id": session_id})}
    response = _claude_code_post(server, body, session_id)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [frame.split("\n")[0].removeprefix("event: ") for frame in response.text.strip().split("\n\n")]
    events = [name for name in events if name != "ping"]
    assert events[:2] == ["message_start", "content_block_start"] and events[-1] == "message_stop"
    assert "thinking" not in response.text  # the model has no thinking blocks to send
    for _ in range(100):  # the turn's cache is kept just after its last event
        agent = httpx.get(f"{server.base_url}/v1/agents/{session_id}", headers={"x-api-key": API_KEY})
        if agent.status_code == 200:
            break
        time.sleep(0.1)
    assert agent.status_code == 200 and agent.json()["id"] == session_id
    # Its id is a UUID; its agent reads as what the session is about
    assert agent.json()["title"] == "Claude Code: Say hello"


def test_billing_line_does_not_bust_the_cache(server):
    """Two requests that differ only in Claude Code's x-anthropic-billing-header line: the second reads
    its whole prompt from the cache (all but the one token that must be computed to answer)."""
    body = {**small_claude_code_body(max_tokens=1), "stream": False}
    lines = (
        "x-anthropic-billing-header: cc_version=2.1.197.1c0; cc_entrypoint=sdk-cli;",
        "x-anthropic-billing-header: cc_version=2.1.197.e4a; cc_entrypoint=cli; cch=5f0e1;",
    )
    first, second = (
        _claude_code_post(server, with_billing_line(body, line), "cc-billing").json()["usage"] for line in lines
    )
    prompt_tokens = first["input_tokens"] + first["cache_read_input_tokens"]
    assert second["input_tokens"] + second["cache_read_input_tokens"] == prompt_tokens
    assert second["cache_read_input_tokens"] == prompt_tokens - 1 and second["input_tokens"] == 1


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir, data_dir):
    """The random-weight tiny Llama (a 512-token context) behind a real server."""
    cache_dir = data_dir / "tiny-server-caches"
    cache_dir.mkdir(exist_ok=True)
    running = ServerProcess(data_dir, cache_dir, {"SEMANTIC_MLX_MODEL_ID": str(tiny_model_dir)})
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def test_max_tokens_beyond_the_context_is_clamped(tiny_server):
    client = anthropic.Anthropic(base_url=tiny_server.base_url, api_key="unused", max_retries=0)
    request = {"model": "m", "messages": [{"role": "user", "content": "tok " * 440}]}
    prompt_tokens = client.messages.count_tokens(**request).input_tokens
    assert 400 < prompt_tokens < 511
    # (a timeout of our own: the SDK refuses a non-streaming max_tokens this large without one)
    message = client.messages.create(max_tokens=64000, extra_body={"temperature": 0}, timeout=300, **request)
    assert message.usage.output_tokens <= 512 - prompt_tokens
    assert message.stop_reason in ("max_tokens", "end_turn")
    with pytest.raises(anthropic.BadRequestError, match=r"prompt is too long: \d+ tokens > 511 maximum"):
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "tok " * 600}])
