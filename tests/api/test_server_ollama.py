"""The Ollama API (/api/*) through the `ollama` Python client, against a real server on loopback; and the
translation of Ollama's messages and model details, without a server."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from api.ollama_models import parameter_size, quantization_level
from api.routes.ollama import engine_messages
from api.schemas.ollama import OllamaMessage
from tests.conftest import API_KEY

ollama = pytest.importorskip("ollama", reason="the ollama client is not installed (make setup installs it)")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def weather_call(city: str) -> dict:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": city}}}],
    }


# Two earlier questions answered with a call each: the default model then calls the tool for the third.
CALLS_BEFORE = [
    {"role": "user", "content": "Weather in Rome?"},
    weather_call("Rome"),
    {"role": "user", "content": "Weather in Oslo?"},
    weather_call("Oslo"),
    {"role": "user", "content": "Weather in Paris?"},
]
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.base_url, headers={"X-API-Key": API_KEY}, timeout=300)


def test_version_tags_show_and_ps_describe_the_served_model(client, http):
    version = http.get("/api/version").json()["version"]
    assert tuple(map(int, version.split("."))) >= (0, 6, 4)  # VS Code Copilot's minimum
    health = http.get("/health").json()
    [listed] = client.list().models
    assert listed.model == "default" and listed.size > 0 and listed.digest == health["fingerprint"]
    assert listed.details.family == "llama" and listed.details.parameter_size == "135M"
    shown = client.show("llama3.2:latest")  # any name is served by the loaded model
    assert {"completion", "tools"} <= set(shown.capabilities)
    architecture = shown.modelinfo["general.architecture"]
    assert shown.modelinfo[f"{architecture}.context_length"] == health["context_length"]
    assert "im_start" in shown.template and "temperature" in shown.parameters
    [running] = client.ps().models
    assert running.model == "default" and running.context_length == health["context_length"]


def test_chat_streams_lines_and_ends_with_the_figures(client):
    parts = list(
        client.chat(
            model="llama3.2",
            messages=[
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Capital of France?"},
            ],
            stream=True,
            options={**GREEDY, "num_predict": 16},
        )
    )
    *pieces, last = parts
    assert pieces and not any(part.done for part in pieces)
    assert all(part.message.role == "assistant" for part in parts)
    assert "Paris" in "".join(part.message.content for part in pieces)
    assert last.done and last.done_reason in ("stop", "length") and last.model == "default"
    assert last.prompt_eval_count > 10 and 0 < last.eval_count <= 16
    assert last.eval_duration > 0 and last.total_duration >= last.eval_duration + last.prompt_eval_duration


def test_chat_without_stream_is_one_object(client):
    response = client.chat(
        model="x", messages=[{"role": "user", "content": "Write a long story."}], options={"num_predict": 3}
    )
    assert response.done and response.done_reason == "length" and response.eval_count == 3
    assert response.message.content


def test_the_stream_is_ndjson(server):
    body = {"model": "x", "messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 4}}
    headers = {"X-API-Key": API_KEY}
    with httpx.stream("POST", f"{server.base_url}/api/chat", json=body, headers=headers, timeout=300) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert all(isinstance(lines[-1][field], int) for field in ("total_duration", "prompt_eval_duration", "eval_count"))


def test_generate_answers_a_prompt(client):
    response = client.generate(
        model="x", prompt="Say hello.", system="Answer briefly.", options={**GREEDY, "num_predict": 8}
    )
    assert response.done and response.response.strip() and response.eval_count <= 8
    streamed = list(client.generate(model="x", prompt="Say hello.", stream=True, options={"num_predict": 8}))
    assert streamed[-1].done and "".join(part.response for part in streamed[:-1]).strip()


def test_nothing_to_generate_only_loads_the_model(client):
    assert client.generate(model="x").done_reason == "load"
    loaded = client.chat(model="x", messages=[])
    assert loaded.done and loaded.done_reason == "load" and loaded.message.content == ""


def test_options_stop_and_num_predict(client):
    counted = client.chat(
        model="x",
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        options={**GREEDY, "num_predict": 40, "stop": ["5"], "repeat_penalty": 1.0, "seed": 7, "num_ctx": 512},
    )
    assert "5" not in counted.message.content and counted.done_reason == "stop"


def test_tool_calls_come_back_in_ollama_shape(client):
    response = client.chat(
        model="x", messages=CALLS_BEFORE, tools=[WEATHER_TOOL], options={**GREEDY, "num_predict": 40}
    )
    [call] = response.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    streamed = [
        part.message.tool_calls
        for part in client.chat(
            model="x", messages=CALLS_BEFORE, tools=[WEATHER_TOOL], stream=True, options={**GREEDY, "num_predict": 40}
        )
        if part.message.tool_calls
    ]
    assert [[c.function.name for c in calls] for calls in streamed] == [["get_weather"]]
    # The call and its result go back as Ollama clients send them; the model answers after them.
    result = {"role": "tool", "content": "rain, 12 C", "tool_name": "get_weather"}
    follow_up = client.chat(
        model="x",
        messages=[*CALLS_BEFORE, response.message, result],
        tools=[WEATHER_TOOL],
        options={**GREEDY, "num_predict": 12},
    )
    assert follow_up.done and (follow_up.message.content or follow_up.message.tool_calls)


@pytest.mark.parametrize("answer_format", ["json", "schema"])
def test_format_gives_structured_output(client, answer_format):
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 12}},
        "required": ["capital"],
        "additionalProperties": False,
    }
    response = client.chat(
        model="x",
        messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        format=schema if answer_format == "schema" else "json",
        options={**GREEDY, "num_predict": 48},
    )
    answer = json.loads(response.message.content)
    assert isinstance(answer, dict)
    if answer_format == "schema":
        jsonschema.validate(answer, schema)


def test_a_session_resumes_from_its_cache(server, http):
    session = {"X-API-Key": API_KEY, "X-Session-ID": "ollama-resume"}
    resumed = ollama.Client(host=server.base_url, headers=session, timeout=300)
    history = [{"role": "user", "content": "My name is Ada. Remember it."}]
    first = resumed.chat(model="x", messages=history, options={**GREEDY, "num_predict": 12})
    history += [
        {"role": "assistant", "content": first.message.content},
        {"role": "user", "content": "What is my name?"},
    ]
    body = {"model": "x", "stream": False, "messages": history, "options": {**GREEDY, "num_predict": 12}}
    second = http.post("/api/chat", json=body, headers={"X-Session-ID": "ollama-resume"}).json()
    assert 0 < second["prompt_cache_tokens"] < second["prompt_eval_count"]
    assert second["prompt_eval_count"] > first.prompt_eval_count
    agent = http.get("/v1/agents/ollama-resume").json()
    assert agent["id"] == "ollama-resume" and agent["tokens"] >= second["prompt_cache_tokens"]


def test_errors_are_ollama_shaped(client, http):
    def refused(call, status: int = 400) -> str:
        with pytest.raises(ollama.ResponseError) as info:
            result = call()
            if not isinstance(result, ollama.ChatResponse | ollama.GenerateResponse):
                list(result)  # a stream raises once it is read
        assert info.value.status_code == status, info.value
        return info.value.error

    assert "messages.0.role" in refused(lambda: client.chat(model="x", messages=[{"role": "wizard", "content": "hi"}]))
    image = [{"role": "user", "content": "What is this?", "images": [b"\x89PNG"]}]
    assert "text only" in refused(lambda: client.chat(model="x", messages=image))
    long_prompt = [{"role": "user", "content": "word " * 9000}]
    assert "prompt is too long" in refused(lambda: client.chat(model="x", messages=long_prompt, stream=True))
    assert "raw" in refused(lambda: client.generate(model="x", prompt="[INST] hi [/INST]", raw=True))
    assert "num_predict" in refused(lambda: client.generate(model="x", prompt="hi", options={"num_predict": 0}))
    for response in (http.post("/api/chat", content=b"{not json"), http.get("/api/pull"), http.get("/api/chat")):
        assert response.status_code in (400, 404, 405) and set(response.json()) == {"error"}, response.text


def test_the_api_key_is_required(server, monkeypatch):
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=server.base_url).list()
    assert info.value.status_code == 401 and "API key" in info.value.error
    # The client sends OLLAMA_API_KEY as a bearer token
    monkeypatch.setenv("OLLAMA_API_KEY", API_KEY)
    assert ollama.Client(host=server.base_url).list().models


def test_tool_results_find_their_calls_by_id_name_or_order():
    messages = [
        OllamaMessage.model_validate(message)
        for message in (
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"id": "call_t", "function": {"name": "get_time", "arguments": '{"city": "Paris"}'}},
                ],
            },
            {"role": "tool", "content": "14:00", "tool_call_id": "call_t"},
            {"role": "tool", "content": "rain"},
        )
    ]
    _, assistant, time_result, weather_result = engine_messages(messages)
    weather, time_call = assistant.tool_calls
    assert json.loads(weather.arguments) == {"city": "Paris"} and time_call.arguments == '{"city": "Paris"}'
    assert (time_result.tool_call_id, time_result.name) == ("call_t", "get_time")
    assert (weather_result.tool_call_id, weather_result.name) == (weather.id, "get_weather")


def test_model_details_in_ollama_words():
    assert [parameter_size(n) for n in (134_515_008, 1_100_000_000, 90_000)] == ["135M", "1.1B", "90K"]
    assert [quantization_level(d) for d in ("float32", "bfloat16", "float16 (4-bit weights)")] == ["F32", "BF16", "Q4"]
