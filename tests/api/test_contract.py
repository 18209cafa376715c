"""The API's contract on a fake engine: for each API family, a good request gets its response shape and its
streaming framing, the request the engine receives is the one the body asked for, bad input gets the API's
own error shape and status, and a failing engine turn becomes the right error, before or inside a stream."""

from __future__ import annotations

import dataclasses

import pytest

from api.app import create_app
from engine.errors import EngineBusy, EngineClosed
from engine.requests import ChatMessage
from tests.api.client import Client, body, ndjson_lines, sse_frames
from tests.api.fake_engine import MESSAGE_OVERHEAD_TOKENS, MODEL_ID, failed_turn, text_turn, tool_turn

pytestmark = pytest.mark.unit

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
RESPONSES = "/v1/responses"
WEATHER_ARGUMENTS = ['{"city": ', '"Oslo"}']
# "Say hello": two words and a message's overhead
PROMPT_TOKENS = 2 + MESSAGE_OVERHEAD_TOKENS


def chat(**fields) -> dict:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}], **fields}


def messages(**fields) -> dict:
    return {
        "model": "claude-sonnet",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "Say hello"}],
        **fields,
    }


def openai_error(response, status: int, kind: str) -> dict:
    """The OpenAI error body, checked for its status and shape; the error object."""
    assert response.status_code == status, response.text
    error = body(response)
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["type"] == kind
    return error["error"]


def anthropic_error(response, status: int, kind: str) -> str:
    """The Anthropic error body, checked for its status and shape; the message."""
    assert response.status_code == status, response.text
    error = body(response)
    assert error["type"] == "error" and set(error["error"]) == {"type", "message"}
    assert error["error"]["type"] == kind
    return error["error"]["message"]


def events_of(response) -> list[tuple[str, dict]]:
    """An event-typed SSE stream (Anthropic, Responses): each frame's event name is its data's type."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    pairs = []
    for frame in sse_frames(response.text):
        assert not frame.comment and frame.event is not None
        data = frame.json()
        assert data["type"] == frame.event
        pairs.append((frame.event, data))
    return pairs


# -- OpenAI Chat Completions ---------------------------------------------------------------------------------
def test_a_chat_completion_has_the_openai_shape_and_asks_the_engine_for_what_the_body_says(client, engine):
    engine.cached_tokens = 2
    response = client.post(CHAT, chat(max_tokens=7, temperature=0.2, stop="END", user="agent-1"))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    answer = body(response)
    assert answer["id"].startswith("chatcmpl-") and answer["object"] == "chat.completion"
    assert answer["model"] == MODEL_ID  # any name is served by the loaded model, which is named
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert answer["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,  # cached tokens included
        "completion_tokens": 2,
        "total_tokens": PROMPT_TOKENS + 2,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    request = engine.requests[-1]
    assert request.messages == [ChatMessage(role="user", content="Say hello")]
    assert (request.max_tokens, request.sampling.temperature, request.stop) == (7, 0.2, ["END"])
    assert request.session_id == "agent-1"


def test_a_chat_stream_is_data_frames_ending_in_done(client):
    response = client.post(CHAT, chat(stream=True, stream_options={"include_usage": True}))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    frames = sse_frames(response.text)
    assert all(frame.event is None and not frame.comment for frame in frames)
    assert frames[-1].data == "[DONE]"
    chunks = [frame.json() for frame in frames[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    *answer, usage = chunks
    assert answer[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in answer) == "Hello there"
    assert answer[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(chunk["usage"] is None for chunk in answer)
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == PROMPT_TOKENS


def test_a_chat_tool_call_is_answered_and_streamed_in_openai_form(client, engine):
    engine.turn = tool_turn("get_weather", WEATHER_ARGUMENTS)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    answer = body(client.post(CHAT, chat(tools=tools)))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    ]
    assert [tool.name for tool in engine.requests[-1].tools] == ["get_weather"]

    frames = sse_frames(client.post(CHAT, chat(tools=tools, stream=True)).text)
    deltas = [frame.json()["choices"][0] for frame in frames[:-1]]
    calls = [choice["delta"]["tool_calls"][0] for choice in deltas if "tool_calls" in choice["delta"]]
    # id, type and name only in a call's first delta; its index in every one
    assert calls[0] == {
        "index": 0,
        "id": "call_0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(set(call) == {"index", "function"} and call["index"] == 0 for call in calls[1:])
    assert "".join(call["function"]["arguments"] for call in calls) == '{"city": "Oslo"}'
    assert deltas[-1]["finish_reason"] == "tool_calls" and frames[-1].data == "[DONE]"


@pytest.mark.parametrize(
    ("request_body", "param", "message"),
    [
        (chat(n=2), "n", "n must be 1"),
        ({"model": "m"}, "messages", "messages: field required"),
        (chat(messages=[]), "messages", "messages: "),
        (chat(temperature="hot"), "temperature", "temperature: "),
        (chat(messages=[{"role": "wizard", "content": "hi"}]), "messages.0.role", "messages.0.role: "),
        (chat(stop=""), "stop", "stop: "),
    ],
)
def test_bad_chat_requests_are_400s_naming_the_field(client, engine, request_body, param, message):
    error = openai_error(client.post(CHAT, request_body), 400, "invalid_request_error")
    assert error["param"] == param and error["message"].startswith(message)
    assert engine.requests == []  # refused before the engine saw it


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not json", "the request body is not valid JSON"), (b"[1, 2]", "the request body must be a JSON object")],
)
def test_a_body_that_is_no_json_object_is_a_400(client, content, message):
    error = openai_error(client.request("POST", CHAT, content=content), 400, "invalid_request_error")
    assert error["message"].startswith(message)


@pytest.mark.parametrize(
    ("kind", "status", "error_type", "header"),
    [
        ("request", 400, "invalid_request_error", None),
        ("internal", 500, "server_error", ("x-should-retry", "false")),
        ("cancelled", 503, "service_unavailable", ("retry-after", "1")),
    ],
)
def test_a_turn_that_fails_before_answering_is_an_openai_error(client, engine, kind, status, error_type, header):
    engine.turn = failed_turn("the turn failed", kind)
    for stream in (False, True):  # a stream not yet opened answers with a plain error too
        response = client.post(CHAT, chat(stream=stream))
        assert openai_error(response, status, error_type)["message"] == "the turn failed"
        if header is not None:
            assert response.headers[header[0]] == header[1]


def test_a_turn_that_fails_mid_stream_ends_the_stream_with_an_error_and_no_done(client, engine):
    engine.turn = failed_turn("the engine broke", "internal", after_text="Hel")
    response = client.post(CHAT, chat(stream=True))
    assert response.status_code == 200
    frames = sse_frames(response.text)
    assert [frame.json()["choices"][0]["delta"] for frame in frames[:2]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
    ]
    assert frames[2:] and frames[-1].json() == {
        "error": {"message": "the engine broke", "type": "server_error", "param": None, "code": None}
    }
    assert "[DONE]" not in [frame.data for frame in frames]


def test_a_full_queue_is_a_429_and_a_closed_engine_a_503_both_with_retry_after(client, engine):
    engine.refuse = EngineBusy("the queue is full")
    response = client.post(CHAT, chat())
    assert openai_error(response, 429, "rate_limit_error")["message"] == "the queue is full"
    assert response.headers["retry-after"] == "2"
    engine.refuse = EngineClosed("the engine is shut down")
    response = client.post(CHAT, chat())
    assert openai_error(response, 503, "service_unavailable")["message"].startswith("the engine is shut down")
    assert int(response.headers["retry-after"]) <= 60


def test_a_prompt_longer_than_the_context_is_a_400_before_it_is_queued(client, engine):
    engine.info = dataclasses.replace(engine.info, context_length=PROMPT_TOKENS)
    error = openai_error(client.post(CHAT, chat()), 400, "invalid_request_error")
    assert error["message"] == f"prompt is too long: {PROMPT_TOKENS} tokens > {PROMPT_TOKENS - 1} maximum"
    assert engine.requests == []


def test_an_engine_that_is_loading_or_failed_answers_503(client, engine):
    engine.state = "loading"
    response = client.post(CHAT, chat())
    assert "still loading" in openai_error(response, 503, "service_unavailable")["message"]
    assert response.headers["retry-after"] == "5"
    health = client.get("/health")
    assert health.status_code == 503 and body(health)["status"] == "loading"
    engine.state, engine.load_error = "failed", "no weights in the model directory"
    response = client.post(MESSAGES, messages())
    assert "no weights" in anthropic_error(response, 503, "overloaded_error")
    assert response.headers["x-should-retry"] == "false"


# -- Anthropic Messages ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("finish_reason", "stop_sequence", "stop_reason"),
    [("stop", None, "end_turn"), ("length", None, "max_tokens"), ("stop_sequence", "END", "stop_sequence")],
)
def test_a_message_has_the_anthropic_shape(client, engine, finish_reason, stop_sequence, stop_reason):
    engine.cached_tokens = 2
    engine.turn = text_turn("Hello", " there", finish_reason=finish_reason, stop_sequence=stop_sequence)
    answer = body(client.post(MESSAGES, messages(system="Be brief.", stop_sequences=["END"])))
    prompt_tokens = 2 * PROMPT_TOKENS  # the system prompt costs as much as "Say hello"
    assert answer["id"].startswith("msg_")
    assert {key: value for key, value in answer.items() if key != "id"} == {
        "type": "message",
        "role": "assistant",
        "model": MODEL_ID,
        "content": [{"type": "text", "text": "Hello there"}],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": prompt_tokens - 2,  # only what was not read from the cache
            "cache_creation_input_tokens": prompt_tokens - 2,
            "cache_read_input_tokens": 2,
            "output_tokens": 2,
        },
    }
    request = engine.requests[-1]
    assert request.messages[0] == ChatMessage(role="system", content="Be brief.")
    assert (request.max_tokens, request.stop) == (32, ["END"])


def test_a_message_stream_sends_its_events_in_order(client):
    events = events_of(client.post(MESSAGES, messages(stream=True)))
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert [data["delta"] for _, data in events[2:4]] == [
        {"type": "text_delta", "text": "Hello"},
        {"type": "text_delta", "text": " there"},
    ]
    assert events[4][1] == {"type": "content_block_stop", "index": 0}
    delta = events[5][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 2


def test_a_tool_use_is_its_own_content_block(client, engine):
    engine.turn = tool_turn("get_weather", WEATHER_ARGUMENTS, text="Checking.")
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    answer = body(client.post(MESSAGES, messages(tools=tools)))
    assert answer["stop_reason"] == "tool_use"
    assert answer["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_0", "name": "get_weather", "input": {"city": "Oslo"}},
    ]

    events = events_of(client.post(MESSAGES, messages(tools=tools, stream=True)))
    blocks = [(name, data.get("index")) for name, data in events if name.startswith("content_block")]
    assert blocks == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]
    tool_block = next(data for name, data in events if name == "content_block_start" and data["index"] == 1)
    assert tool_block["content_block"] == {"type": "tool_use", "id": "toolu_0", "name": "get_weather", "input": {}}
    pieces = [data["delta"] for name, data in events if name == "content_block_delta" and data["index"] == 1]
    assert all(piece["type"] == "input_json_delta" for piece in pieces)
    assert "".join(piece["partial_json"] for piece in pieces) == '{"city": "Oslo"}'


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens: field required"),
        (messages(max_tokens=0), "max_tokens: "),
        (
            messages(
                messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "x"}}]}]
            ),
            "messages.0.content.0: image input is not supported",
        ),
        (messages(tools=[{"name": "t", "input_schema": {}}], tool_choice={"type": "tool"}), "tool_choice.name: "),
    ],
)
def test_bad_messages_are_400s_in_the_anthropic_shape(client, engine, request_body, message):
    assert anthropic_error(client.post(MESSAGES, request_body), 400, "invalid_request_error").startswith(message)
    assert engine.requests == []


def test_a_message_turn_that_fails_is_an_anthropic_error_before_or_inside_the_stream(client, engine):
    engine.turn = failed_turn("the engine broke", "internal")
    assert anthropic_error(client.post(MESSAGES, messages()), 500, "api_error") == "the engine broke"
    engine.turn = failed_turn("the engine broke", "internal", after_text="Hel")
    events = events_of(client.post(MESSAGES, messages(stream=True)))
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "the engine broke"}})
    assert "message_stop" not in [name for name, _ in events]


def test_count_tokens_counts_the_rendered_prompt_without_generating(client, engine):
    response = client.post(
        f"{MESSAGES}/count_tokens", {"model": "m", "system": "Be brief.", "messages": messages()["messages"]}
    )
    assert response.status_code == 200 and body(response) == {"input_tokens": 2 * PROMPT_TOKENS}
    assert engine.requests == []


def test_unknown_routes_and_methods_answer_in_the_shape_of_the_api_called(client):
    assert "no route" in anthropic_error(client.get(f"{MESSAGES}/nothing-here"), 404, "not_found_error")
    error = openai_error(client.get("/v1/nothing-here"), 404, "not_found_error")
    assert error["message"] == "no route GET /v1/nothing-here; see /openapi.json"
    response = client.get(CHAT)
    openai_error(response, 405, "invalid_request_error")
    assert response.headers["allow"] == "POST"


# -- OpenAI Responses -----------------------------------------------------------------------------------------
def test_a_response_has_the_responses_shape_and_is_stored_for_the_next_one(client, engine):
    engine.cached_tokens = 2
    response = client.post(RESPONSES, {"model": "gpt-5", "input": "Say hello", "instructions": "Be brief."})
    assert response.status_code == 200
    first = body(response)
    assert first["id"].startswith("resp_") and first["object"] == "response" and first["status"] == "completed"
    assert first["incomplete_details"] is None and first["model"] == MODEL_ID
    [message] = first["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    assert message["content"] == [{"type": "output_text", "text": "Hello there", "annotations": [], "logprobs": []}]
    prompt_tokens = 2 * PROMPT_TOKENS
    assert first["usage"]["input_tokens"] == prompt_tokens  # cached ones included
    assert first["usage"]["input_tokens_details"]["cached_tokens"] == 2
    assert (first["usage"]["output_tokens"], first["usage"]["total_tokens"]) == (2, prompt_tokens + 2)

    assert body(client.get(f"{RESPONSES}/{first['id']}")) == first
    client.post(RESPONSES, {"model": "gpt-5", "input": "Again", "previous_response_id": first["id"]})
    request = engine.requests[-1]
    # The chain goes on under the first response's session; its instructions are not carried over
    assert [(m.role, m.content) for m in request.messages] == [
        ("user", "Say hello"),
        ("assistant", "Hello there"),
        ("user", "Again"),
    ]
    assert request.session_id == first["id"]

    deleted = client.request("DELETE", f"{RESPONSES}/{first['id']}")
    assert body(deleted) == {"id": first["id"], "object": "response", "deleted": True}
    assert openai_error(client.get(f"{RESPONSES}/{first['id']}"), 404, "not_found_error")["param"] == "response_id"


def test_a_response_stream_sends_numbered_events_in_order(client):
    events = events_of(client.post(RESPONSES, {"model": "m", "input": "Say hello", "stream": True}))
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert [data["delta"] for name, data in events if name == "response.output_text.delta"] == ["Hello", " there"]
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "Hello there"
    assert events[0][1]["response"]["status"] == "in_progress" and events[0][1]["response"]["output"] == []


def test_a_response_cut_by_max_output_tokens_is_incomplete(client, engine):
    engine.turn = text_turn("Hello", finish_reason="length")
    answer = body(client.post(RESPONSES, {"model": "m", "input": "Say hello", "max_output_tokens": 1}))
    assert answer["status"] == "incomplete" and answer["incomplete_details"] == {"reason": "max_output_tokens"}
    assert engine.requests[-1].max_tokens == 1


@pytest.mark.parametrize(
    ("request_body", "param", "message"),
    [
        ({"model": "m"}, "input", "input: send the text or the items to respond to"),
        ({"model": "m", "input": "hi", "background": True}, "background", "background responses are not supported"),
        (
            {"model": "m", "input": "hi", "previous_response_id": "resp_nope"},
            "previous_response_id",
            "Previous response",
        ),
        (
            {"model": "m", "input": [{"type": "function_call_output", "output": "x"}]},
            "input.0.call_id",
            "input.0.call_id",
        ),
    ],
)
def test_bad_response_requests_are_400s_naming_the_field(client, engine, request_body, param, message):
    error = openai_error(client.post(RESPONSES, request_body), 400, "invalid_request_error")
    assert error["param"] == param and error["message"].startswith(message)
    assert engine.requests == []


def test_a_response_turn_that_fails_mid_stream_ends_with_response_failed(client, engine):
    engine.turn = failed_turn("the engine broke", "internal", after_text="Hel")
    events = events_of(client.post(RESPONSES, {"model": "m", "input": "Say hello", "stream": True}))
    name, data = events[-1]
    assert name == "response.failed" and data["response"]["status"] == "failed"
    assert data["response"]["error"] == {"code": "server_error", "message": "the engine broke"}


# -- Ollama ---------------------------------------------------------------------------------------------------
def test_an_ollama_chat_streams_json_lines_by_default(client, engine):
    response = client.post(
        "/api/chat", {"model": f"{MODEL_ID}:latest", "messages": [{"role": "user", "content": "Say hello"}]}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    *pieces, last = ndjson_lines(response.text)
    assert [piece["message"] for piece in pieces] == [
        {"role": "assistant", "content": "Hello"},
        {"role": "assistant", "content": " there"},
    ]
    assert all(piece["done"] is False and piece["model"] == MODEL_ID for piece in pieces)
    assert all(piece["created_at"].endswith("Z") for piece in [*pieces, last])
    assert last["done"] is True and last["done_reason"] == "stop"
    assert (last["prompt_eval_count"], last["eval_count"]) == (PROMPT_TOKENS, 2)
    durations = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
    assert all(isinstance(last[name], int) and last[name] >= 0 for name in durations)


def test_ollama_answers_whole_without_streaming_and_options_reach_the_engine(client, engine):
    answer = body(
        client.post(
            "/api/generate",
            {
                "model": MODEL_ID,
                "prompt": "Say hello",
                "system": "Be brief.",
                "stream": False,
                "options": {"num_predict": 5, "temperature": 0.1},
            },
        )
    )
    assert answer["response"] == "Hello there" and answer["done"] is True
    request = engine.requests[-1]
    assert [message.role for message in request.messages] == ["system", "user"]
    assert (request.max_tokens, request.sampling.temperature) == (5, 0.1)
    chat_answer = body(
        client.post("/api/chat", {"model": MODEL_ID, "stream": False, "messages": [{"role": "user", "content": "Hi"}]})
    )
    assert chat_answer["message"] == {"role": "assistant", "content": "Hello there"} and chat_answer["done"] is True


def test_ollama_errors_are_its_own_shape(client, engine):
    response = client.post("/api/generate", {"model": MODEL_ID, "prompt": "hi", "raw": True})
    assert response.status_code == 400 and body(response)["error"].startswith("raw: ")
    assert set(body(response)) == {"error"}
    response = client.post("/api/chat", {"model": MODEL_ID})
    assert response.status_code == 200 and body(response)["done_reason"] == "load"  # nothing to say: "loaded"
    response = client.post("/api/chat", {"messages": []})
    assert response.status_code == 400 and body(response) == {"error": "model: field required"}
    engine.turn = failed_turn("the engine broke", "internal")
    response = client.post("/api/chat", {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 500 and body(response) == {"error": "the engine broke"}
    engine.turn = failed_turn("the engine broke", "internal", after_text="Hel")
    response = client.post("/api/chat", {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]})
    assert ndjson_lines(response.text)[-1] == {"error": "the engine broke"}


def test_ollama_model_routes_describe_the_served_model(client, engine):
    version = body(client.get("/api/version"))
    assert isinstance(version["version"], str)
    [listed] = body(client.get("/api/tags"))["models"]
    assert listed["name"] == MODEL_ID and listed["size"] == 1000  # the weight files in the model directory
    assert listed["details"]["family"] == "llama" and listed["details"]["parameter_size"] == "135M"
    shown = body(client.post("/api/show", {"model": MODEL_ID}))
    assert body(client.post("/api/show", {"name": MODEL_ID})) == shown  # older clients' field
    assert shown["capabilities"] == ["completion", "tools"]
    assert shown["model_info"]["llama.context_length"] == engine.info.context_length
    assert shown["template"] == engine.tokenizer.chat_template


# -- routes every client probes -------------------------------------------------------------------------------
def test_the_root_and_the_model_list_answer_each_client_in_its_shape(client):
    assert client.get("/").status_code == 200 and client.request("HEAD", "/").status_code == 200
    openai_list = body(client.get("/v1/models"))
    assert openai_list["object"] == "list"
    assert [(row["id"], row["object"]) for row in openai_list["data"]] == [(MODEL_ID, "model")]
    anthropic_list = body(client.get("/v1/models", headers={"anthropic-version": "2023-06-01"}))
    assert anthropic_list["has_more"] is False and anthropic_list["first_id"] == MODEL_ID
    assert anthropic_list["data"][0]["type"] == "model"


def test_an_api_key_is_required_under_asgi_too(settings, engine):
    keyed = Client(create_app(settings.model_copy(update={"api_key": "secret"}), engine, name="contract_keyed"))
    assert keyed.post(CHAT, chat()).status_code == 401
    assert keyed.post(CHAT, chat(), headers={"Authorization": "Bearer secret"}).status_code == 200
