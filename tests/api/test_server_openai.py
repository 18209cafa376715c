"""OpenAI Chat Completions through the official `openai` SDK, against a real server on loopback."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import API_KEY


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)


def test_completion_answers_with_usage(client):
    completion = client.chat.completions.create(
        model="gpt-4o-mini",  # any name is served by the loaded model
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    choice = completion.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.model == "default"
    usage = completion.usage
    assert usage.prompt_tokens > 10 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens >= 0


def test_stream_with_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "Say hello."}],
            max_completion_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_max_tokens_gives_length(client):
    completion = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Write a long story about a dragon."}], max_tokens=3
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_stop_sequence_is_not_returned(client):
    completion = client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        max_tokens=40,
        temperature=0,
        stop=["5"],
    )
    assert "5" not in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"


def test_resumed_session_reports_cached_tokens(client):
    history = [{"role": "user", "content": "My name is Ada. Remember it."}]
    first = client.chat.completions.create(
        model="x", messages=history, max_tokens=12, temperature=0, extra_headers={"X-Session-ID": "oa-resume"}
    )
    history += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "What is my name?"},
    ]
    second = client.chat.completions.create(model="x", messages=history, max_tokens=12, temperature=0, user="oa-resume")
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and cached < second.usage.prompt_tokens


def test_errors_map_to_sdk_exceptions(client, server):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], n=2)
    assert "n must be 1" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="x", messages=[{"role": "wizard", "content": "hi"}])
    assert "messages.0.role" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "word " * 9000}], max_tokens=1)
    assert "prompt is too long" in info.value.message and "maximum" in info.value.message
    with pytest.raises(openai.BadRequestError, match="text only"):
        client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0).models.list()


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["default"]


def test_raw_stream_order(server):
    body = {
        "model": "x",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
