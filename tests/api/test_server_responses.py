"""OpenAI Responses through the official `openai` SDK (and raw SSE), against a real server on loopback."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import API_KEY, ServerProcess

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
    },
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 30}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as session:
        yield session


def test_text_input_answers_with_usage(client):
    response = client.responses.create(
        model="gpt-4.1-mini",  # any name is served by the loaded model
        instructions="Answer briefly.",
        input="Capital of France?",
        max_output_tokens=16,
        temperature=0,
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == "default" and response.status in ("completed", "incomplete")
    assert "Paris" in response.output_text
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    usage = response.usage
    assert usage.input_tokens > 10 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert 0 <= usage.input_tokens_details.cached_tokens < usage.input_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_items_with_developer_messages_answer_like_chat(client):
    """Codex's shape: developer messages and several user messages, as content lists."""
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "I have a question about geography."}]},
        {"role": "user", "content": "Capital of France?"},
    ]
    response = client.responses.create(model="x", input=items, max_output_tokens=16, temperature=0, store=False)
    assert response.output_text.strip()
    assert response.store is False


def test_previous_response_chain_resumes_from_its_cache(client, http):
    instructions = "You are a helpful assistant."
    first = client.responses.create(
        model="x", instructions=instructions, input="My name is Ada. Remember it.", max_output_tokens=12, temperature=0
    )
    second = client.responses.create(
        model="x",
        instructions=instructions,  # instructions are not carried over from the previous response
        previous_response_id=first.id,
        input="What is my name?",
        max_output_tokens=12,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    # The whole first prompt comes from the chain's KV cache
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens

    # The chain is one agent session, named after its first response, with the whole transcript.
    agent = http.get(f"/v1/agents/{first.id}").json()
    assert agent["turns"] == 2 and agent["system"] == instructions
    assert [m["role"] for m in agent["messages"]] == ["user", "assistant", "user", "assistant"]
    assert agent["messages"][0]["content"] == "My name is Ada. Remember it."
    assert agent["messages"][3]["content"] == second.output_text

    assert client.responses.retrieve(first.id).model_dump() == first.model_dump()
    assert client.responses.retrieve(second.id).output_text == second.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    assert http.get(f"/v1/agents/{first.id}").json()["turns"] == 2  # the chain went on: its agent stays
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="x", previous_response_id=first.id, input="Hello?")
    assert info.value.code == "previous_response_not_found" and info.value.param == "previous_response_id"
    # The rest of the chain does not depend on the deleted response.
    third = client.responses.create(
        model="x", instructions=instructions, previous_response_id=second.id, input="Thanks!", max_output_tokens=4
    )
    assert third.usage.input_tokens_details.cached_tokens >= second.usage.input_tokens


def test_store_false_is_not_kept(client):
    response = client.responses.create(model="x", input="Hi", max_output_tokens=2, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def _events(http, body: dict) -> list[dict]:
    """A streamed response's events, checking the SSE framing of each."""
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        raw = response.read().decode()
    events = []
    for frame in raw.strip().split("\n\n"):
        if frame.startswith(":"):
            continue  # keep-alive comment
        name, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


def test_stream_event_sequence_for_text(http):
    events = _events(http, {"model": "x", "input": "Say hello.", "max_output_tokens": 6, "temperature": 0})
    kinds = [event["type"] for event in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 1
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # six tokens cannot finish a greeting
    ]
    created, final = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["id"] == final["id"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    item_id = events[2]["item"]["id"]
    assert all(event["item_id"] == item_id and event["output_index"] == 0 for event in events[3:-2])
    text = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    assert events[-4]["text"] == text and events[-3]["part"]["text"] == text
    assert final["output"] == [events[-2]["item"]] and final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["output_tokens"] == 6


def test_stream_event_sequence_for_a_call(http):
    body = {
        "model": "x",
        "input": "What's the weather in Paris?",
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_output_tokens": 60,
        "temperature": 0,
    }
    events = _events(http, body)
    kinds = [event["type"] for event in events]
    deltas = kinds.count("response.function_call_arguments.delta")
    assert deltas >= 1
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * deltas,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, done, final = events[2]["item"], events[-2]["item"], events[-1]["response"]
    assert added["type"] == "function_call" and added["name"] == "get_weather" and added["arguments"] == ""
    arguments = "".join(event["delta"] for event in events if event["type"] == "response.function_call_arguments.delta")
    assert events[-3]["arguments"] == arguments == done["arguments"]
    assert done["call_id"] == added["call_id"] and done["id"] == added["id"] and done["status"] == "completed"
    jsonschema.validate(json.loads(arguments), WEATHER["parameters"])
    assert final["status"] == "completed" and final["output"] == [done]


def test_sdk_stream_text_matches_the_final_response(client):
    with client.responses.stream(
        model="x",
        input="What is the capital of France? Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "answer", "schema": ANSWER_SCHEMA, "strict": True}},
        max_output_tokens=60,
        temperature=0,
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert "".join(deltas) == final.output_text
    jsonschema.validate(json.loads(final.output_text), ANSWER_SCHEMA)


def test_sdk_stream_of_a_cut_response_ends_incomplete(client):
    with client.responses.stream(model="x", input="Tell me a long story.", max_output_tokens=3) as stream:
        kinds = [event.type for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.incomplete"


class City(BaseModel):
    name: str
    country: str


def test_parse_with_a_pydantic_format(client):
    response = client.responses.parse(
        model="x", input="Name a city in Japan.", text_format=City, max_output_tokens=60, temperature=0
    )
    assert isinstance(response.output_parsed, City) and response.output_parsed.name


def test_function_call_round_trip(client):
    first = client.responses.create(
        model="x",
        input="What's the weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60,
        temperature=0,
    )
    assert first.status == "completed"
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])

    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}
    chained = client.responses.create(
        model="x", previous_response_id=first.id, input=[result], tools=[WEATHER], max_output_tokens=24, temperature=0
    )
    assert chained.output_text.strip()
    assert chained.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens

    # Without the store: the client sends the call back itself, as the Agents SDK does.
    items = [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        result,
    ]
    stateless = client.responses.create(
        model="x", input=items, tools=[WEATHER], max_output_tokens=24, temperature=0, store=False
    )
    assert stateless.output_text == chained.output_text  # the same conversation, rendered the same way


def test_namespace_functions_are_offered_and_hosted_tools_ignored(client):
    response = client.responses.create(
        model="x",
        input="Look up the word 'ephemeral'.",
        tools=[
            {"type": "web_search"},
            {
                "type": "namespace",
                "name": "dictionary",
                "description": "Word tools.",
                "tools": [{**WEATHER, "name": "define", "description": "Define a word."}],
            },
        ],
        tool_choice={"type": "function", "name": "define"},
        max_output_tokens=40,
        temperature=0,
        store=False,
    )
    [call] = response.output
    assert call.name == "define" and call.namespace == "dictionary"


def test_allowed_tools_limit_a_required_call(client):
    clock = {**WEATHER, "name": "get_time", "description": "Current time in a timezone."}
    response = client.responses.create(
        model="x",
        input="What's the weather in Paris?",
        tools=[WEATHER, clock],
        tool_choice={"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]},
        parallel_tool_calls=False,
        max_output_tokens=40,
        temperature=0,
        store=False,
    )
    assert [item.name for item in response.output] == ["get_time"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"input": [{"type": "file_search_call", "id": "x"}]}, "input.0: the item type must be message"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input.0.call_id: field required"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]},
            "input.0.content.0: input_image input is not supported",
        ),
        ({"input": []}, "input: send the text or the items"),
        ({"input": " "}, "input: the message is empty"),
        ({"input": "hi", "background": True}, "background responses are not supported"),
        ({"input": "hi", "conversation": "conv_1"}, "chain responses with `previous_response_id`"),
        ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "web_search"}}, "hosted tools run only"),
        ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "'nope'"),
        ({"input": "hi", "tool_choice": "required"}, "no tools were given"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": "word " * 9000, "max_output_tokens": 1}, "prompt is too long"),
    ],
)
def test_bad_requests_are_400s_that_name_the_problem(http, body, fragment):
    response = http.post("/v1/responses", json={"model": "x", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"], error


def test_unknown_ids_and_keys(client, server, http):
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")
    assert http.delete("/v1/responses/resp_missing").json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0).responses.create(
            model="x", input="hi"
        )


def test_openapi_documents_the_routes(http):
    document = http.get("/openapi.json").json()
    assert set(document["paths"]["/v1/responses"]) == {"post"}
    assert set(document["paths"]["/v1/responses/{response_id}"]) == {"get", "delete"}
    assert "ResponsesRequest" in document["components"]["schemas"]


@pytest.mark.slow
def test_chain_continues_after_a_restart(default_engine, data_dir, tmp_path):
    """Stored responses live in the data dir and the chain's KV cache on disk: a new process resumes it."""
    cache_dir = tmp_path / "kv"
    cache_dir.mkdir()
    first_server = ServerProcess(data_dir, cache_dir)
    try:
        first_server.wait_ready()
        first_client = openai.OpenAI(base_url=f"{first_server.base_url}/v1", api_key="unused", max_retries=0)
        first = first_client.responses.create(
            model="x", input="Remember: the launch code is 42. " * 30, max_output_tokens=8, temperature=0
        )
    finally:
        assert first_server.stop() == 0
    second_server = ServerProcess(data_dir, cache_dir)
    try:
        second_server.wait_ready()
        second_client = openai.OpenAI(base_url=f"{second_server.base_url}/v1", api_key="unused", max_retries=0)
        second = second_client.responses.create(
            model="x", previous_response_id=first.id, input="What is the launch code?", max_output_tokens=8
        )
        assert second_client.responses.retrieve(first.id).output_text == first.output_text
    finally:
        assert second_server.stop() == 0
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens  # read back from disk


def test_a_response_never_replaces_another_conversations_transcript(client, http):
    """A Responses turn under an agent's id (X-Session-ID, `user`) keeps the agent's own turns; a client's
    conversation is its transcript, the latest (a branch) replacing the one before; OpenAI's free-form
    metadata names no agent."""
    agent = "responses-keep-agent"
    for text in ("Hello agent.", "And again."):
        assert http.post(f"/v1/agents/{agent}/messages", json={"content": text, "max_tokens": 3}).status_code == 200
    before = http.get(f"/v1/agents/{agent}").json()["messages"]
    assert len(before) == 4
    for extra in ({"extra_headers": {"X-Session-ID": agent}}, {"user": agent}):
        client.responses.create(model="x", input="Via responses.", max_output_tokens=3, **extra)
        assert http.get(f"/v1/agents/{agent}").json()["messages"] == before

    # A client that keeps its conversation and names it by `user`: each turn extends the transcript
    own = "responses-own-conversation"
    first = client.responses.create(model="x", input="One.", max_output_tokens=3, user=own, store=True)
    conversation = [{"role": "user", "content": "One."}, {"role": "assistant", "content": first.output_text}]
    client.responses.create(
        model="x", input=[*conversation, {"role": "user", "content": "Two."}], max_output_tokens=3, user=own
    )
    assert [m["content"] for m in http.get(f"/v1/agents/{own}").json()["messages"]][:3] == [
        "One.",
        first.output_text,
        "Two.",
    ]
    # The client went back to its first turn and asked something else: that branch is the transcript now
    client.responses.create(model="x", previous_response_id=first.id, input="Three.", max_output_tokens=3, user=own)
    assert [m["content"] for m in http.get(f"/v1/agents/{own}").json()["messages"]][:3] == [
        "One.",
        first.output_text,
        "Three.",
    ]

    labelled = client.responses.create(model="x", input="Hi.", max_output_tokens=2, metadata={"user_id": "a-label"})
    assert http.get("/v1/agents/a-label").status_code == 404
    assert http.get(f"/v1/agents/{labelled.id}").status_code == 200  # the response's own agent


def test_deleting_a_lone_response_deletes_the_agent_it_started(client, http):
    lone = client.responses.create(model="x", input="My secret is 1234.", max_output_tokens=3)
    assert http.get(f"/v1/agents/{lone.id}").status_code == 200
    client.responses.delete(lone.id)
    assert http.get(f"/v1/agents/{lone.id}").status_code == 404
    assert all(row["id"] != lone.id for row in http.get("/v1/agents").json()["data"])


def test_a_damaged_stored_file_is_a_409_that_does_not_show_the_servers_paths(client, http, data_dir):
    response = client.responses.create(model="x", input="Keep me.", max_output_tokens=2)
    (path,) = [p for p in (data_dir / "responses").rglob("*.json") if response.id in p.read_text()]
    path.write_text('{"id": "')
    (agent_path,) = [p for p in (data_dir / "sessions").rglob("*.json") if response.id in p.read_text()]
    agent_path.write_text("{")
    for url in (f"/v1/responses/{response.id}", f"/v1/agents/{response.id}"):
        damaged = http.get(url)
        assert damaged.status_code == 409 and "damaged" in damaged.json()["error"]["message"], damaged.text
        assert str(data_dir) not in damaged.text
    assert http.delete(f"/v1/responses/{response.id}").status_code == 200  # a damaged one can be deleted
    assert http.delete(f"/v1/agents/{response.id}").status_code == 200
