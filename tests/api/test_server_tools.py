"""Tool calling and structured output through the official SDKs, on the default model and a real server.

A forced call (named or required) must always parse and validate against its tool's schema: 20 varied
tools and prompts, spread over both APIs, streaming and not, run at once (the engine batches them).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import jsonschema
import openai
import pytest

from tests.conftest import API_KEY


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=300)


def obj(properties: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties, "required": required or list(properties)}


STRING = {"type": "string", "maxLength": 40}
CASES = [
    ("get_weather", "Current weather for a city.", obj({"city": STRING}), "What's the weather in Paris?"),
    (
        "convert_currency",
        "Convert an amount between currencies.",
        obj({"amount": {"type": "number"}, "from": {"enum": ["USD", "EUR", "JPY"]}, "to": {"enum": ["USD", "EUR"]}}),
        "How much is 100 yen in dollars?",
    ),
    ("set_timer", "Start a countdown timer.", obj({"minutes": {"type": "integer", "minimum": 1}}), "Timer for 5 min"),
    ("send_email", "Send an email.", obj({"to": STRING, "subject": STRING, "body": STRING}), "Email bob@x.org hi"),
    (
        "search_web",
        "Search the web.",
        obj({"query": STRING, "max_results": {"type": "integer", "minimum": 1, "maximum": 10}}),
        "Find recent news about MLX.",
    ),
    ("get_stock_price", "Latest stock price.", obj({"ticker": {"type": "string", "pattern": "^[A-Z]{1,5}$"}}), "AAPL?"),
    (
        "create_event",
        "Add a calendar event.",
        obj({"title": STRING, "date": {"type": "string", "format": "date"}, "all_day": {"type": "boolean"}}),
        "Put my dentist appointment on 2026-12-03 in the calendar.",
    ),
    (
        "add_todo",
        "Add items to the todo list.",
        obj({"items": {"type": "array", "items": STRING, "minItems": 1, "maxItems": 3}}),
        "Remember to buy milk and eggs.",
    ),
    ("translate", "Translate text.", obj({"text": STRING, "target": {"enum": ["fr", "de", "es"]}}), "'cat' in French"),
    ("get_time", "Time in a timezone.", obj({"timezone": STRING}), "What time is it in Tokyo?"),
    (
        "book_table",
        "Reserve a restaurant table.",
        obj({"restaurant": STRING, "people": {"type": "integer", "minimum": 1, "maximum": 12}}),
        "Table for 4 at Chez Marie.",
    ),
    ("lookup_word", "Dictionary definition.", obj({"word": STRING}), "What does 'ephemeral' mean?"),
    (
        "move_robot",
        "Move the robot arm.",
        obj({"x": {"type": "number"}, "y": {"type": "number"}, "speed": {"enum": ["slow", "fast"]}}),
        "Move the arm to 3, 4 slowly.",
    ),
    (
        "rate_movie",
        "Rate a movie.",
        obj({"title": STRING, "stars": {"type": "integer", "minimum": 1, "maximum": 5}}),
        "Give Inception five stars.",
    ),
    (
        "create_user",
        "Create a user account.",
        obj({"user": obj({"name": STRING, "age": {"type": "integer", "minimum": 0, "maximum": 150}})}),
        "Create an account for Ann, 31.",
    ),
    ("play_song", "Play music.", obj({"song": STRING, "shuffle": {"type": "boolean"}}), "Play Yesterday"),
    ("calculate", "Evaluate arithmetic.", obj({"expression": STRING}), "What is 12 times 7?"),
    (
        "order_pizza",
        "Order a pizza.",
        obj({"size": {"enum": ["small", "medium", "large"]}, "toppings": {"type": "array", "items": STRING}}),
        "Large pizza with mushrooms.",
    ),
    ("get_directions", "Route between places.", obj({"origin": STRING, "destination": STRING}), "Berlin to Munich?"),
    ("set_volume", "Set the speaker volume.", obj({"level": {"type": "integer", "minimum": 0, "maximum": 100}}), "40%"),
]
DECOY = ("ping", "Check that the service is up.", obj({}), "")


def openai_tool(name, description, parameters) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def anthropic_tool(name, description, parameters) -> dict:
    return {"name": name, "description": description, "input_schema": parameters}


def call_openai(client, case, *, stream: bool, named: bool) -> list[tuple[str, dict]]:
    name = case[0]
    tools = [openai_tool(*case[:3]), openai_tool(*DECOY[:3])]
    choice = {"type": "function", "function": {"name": name}} if named else "required"
    kwargs = dict(
        model="m",
        messages=[{"role": "user", "content": case[3]}],
        tools=tools,
        tool_choice=choice,
        temperature=0,
        max_tokens=200,
        parallel_tool_calls=False,
    )
    if not stream:
        message = client.chat.completions.create(**kwargs).choices[0].message
        return [(call.function.name, json.loads(call.function.arguments)) for call in message.tool_calls]
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for delta_call in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            call = calls.setdefault(delta_call.index, {"name": None, "arguments": ""})
            if delta_call.function.name:
                assert call["name"] is None, "the name comes once, in the call's first delta"
                call["name"] = delta_call.function.name
            call["arguments"] += delta_call.function.arguments or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls"
    return [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)]


def call_anthropic(client, case, *, stream: bool, named: bool) -> list[tuple[str, dict]]:
    choice = {"type": "tool", "name": case[0]} if named else {"type": "any"}
    kwargs = dict(
        model="claude-test",
        max_tokens=200,
        messages=[{"role": "user", "content": case[3]}],
        tools=[anthropic_tool(*case[:3]), anthropic_tool(*DECOY[:3])],
        tool_choice={**choice, "disable_parallel_tool_use": True},
        extra_body={"temperature": 0},
    )
    if stream:
        with client.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert message.stop_reason == "tool_use"
    return [(block.name, block.input) for block in message.content if block.type == "tool_use"]


def test_forced_calls_always_parse_and_match_their_schema(oai, claude):
    """20 cases x (API, streaming, named/required) spread round-robin, all run at once."""
    modes = [(api, stream, named) for api in ("openai", "anthropic") for stream in (False, True) for named in (1, 0)]

    def one(index: int):
        case = CASES[index]
        api, stream, named = modes[index % len(modes)]
        client, caller = (oai, call_openai) if api == "openai" else (claude, call_anthropic)
        return case, (api, stream, named), caller(client, case, stream=stream, named=bool(named))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(len(CASES))))
    for case, mode, calls in results:
        assert len(calls) == 1, (mode, calls)
        name, arguments = calls[0]
        if mode[2]:  # named: that tool
            assert name == case[0], (mode, calls)
        schema = {c[0]: c[2] for c in (*CASES, DECOY)}[name]
        jsonschema.validate(arguments, schema)


TWO_TOOLS = [
    openai_tool("get_weather", "Current weather for a city.", obj({"city": STRING})),
    openai_tool("get_time", "Current time in a timezone.", obj({"timezone": STRING})),
]


# An agent that has called both tools at once before: the small model follows its own example.
PARALLEL_HISTORY = [
    {"role": "user", "content": "What's the weather in Rome, and what time is it in Lima?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            {
                "id": "c2",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"timezone": "America/Lima"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "21 C, clear"},
    {"role": "tool", "tool_call_id": "c2", "content": "09:40"},
    {"role": "assistant", "content": "It is 21 C and clear in Rome, and 09:40 in Lima."},
    {"role": "user", "content": "What's the weather in Paris, and what time is it in Tokyo?"},
]


def test_parallel_calls_keep_order_and_indexes(oai, claude):
    chunks = list(
        oai.chat.completions.create(
            model="m",
            messages=PARALLEL_HISTORY,
            tools=TWO_TOOLS,
            tool_choice="required",
            temperature=0,
            max_tokens=200,
            stream=True,
        )
    )
    deltas = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    starts = [call for call in deltas if call.id]
    assert [call.index for call in starts] == [0, 1]
    assert [call.function.name for call in starts] == ["get_weather", "get_time"]
    for call in starts:
        arguments = "".join(d.function.arguments or "" for d in deltas if d.index == call.index)
        schema = {t["function"]["name"]: t["function"]["parameters"] for t in TWO_TOOLS}[call.function.name]
        jsonschema.validate(json.loads(arguments), schema)
    # The same calls as Anthropic tool_use blocks, in order.
    blocks = claude.messages.create(
        model="c",
        max_tokens=200,
        messages=[
            {"role": "user", "content": PARALLEL_HISTORY[0]["content"]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Rome"}},
                    {"type": "tool_use", "id": "c2", "name": "get_time", "input": {"timezone": "America/Lima"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "c1", "content": "21 C, clear"},
                    {"type": "tool_result", "tool_use_id": "c2", "content": "09:40"},
                ],
            },
            {"role": "assistant", "content": PARALLEL_HISTORY[4]["content"]},
            {"role": "user", "content": PARALLEL_HISTORY[5]["content"]},
        ],
        tools=[
            anthropic_tool(t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
            for t in TWO_TOOLS
        ],
        tool_choice={"type": "any"},
        extra_body={"temperature": 0},
    ).content
    assert [b.name for b in blocks if b.type == "tool_use"] == ["get_weather", "get_time"]
    # Without parallel calls the grammar allows exactly one.
    single = oai.chat.completions.create(
        model="m",
        messages=PARALLEL_HISTORY,
        tools=TWO_TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=200,
    )
    assert len(single.choices[0].message.tool_calls) == 1


def test_round_trip_reuses_the_cache(oai):
    """call -> tool result -> final text; the second request resumes from the first one's KV."""
    messages = [{"role": "user", "content": "What's the weather in Oslo?"}]
    first = oai.chat.completions.create(
        model="m", messages=messages, tools=TWO_TOOLS, tool_choice="required", temperature=0, max_tokens=100, user="rt"
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "4 degrees and snowing"})
    final = oai.chat.completions.create(
        model="m", messages=messages, tools=TWO_TOOLS, temperature=0, max_tokens=40, user="rt"
    )
    assert final.choices[0].message.content.strip()
    assert final.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens // 2


def test_anthropic_round_trip_with_error_result(claude):
    tools = [anthropic_tool("get_weather", "Current weather for a city.", obj({"city": STRING}))]
    ask = {"role": "user", "content": "Weather in Lima?"}
    first = claude.messages.create(
        model="c", max_tokens=100, messages=[ask], tools=tools, tool_choice={"type": "any"}, metadata={"user_id": "an"}
    )
    use = next(b for b in first.content if b.type == "tool_use")
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "service down", "is_error": True}
    final = claude.messages.create(
        model="c",
        max_tokens=40,
        messages=[ask, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}],
        tools=tools,
        metadata={"user_id": "an"},
    )
    assert final.usage.cache_read_input_tokens > 0
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")


PERSON = {
    "type": "object",
    "properties": {"name": STRING, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
    "required": ["name", "age"],
}


@pytest.mark.parametrize("stream", [False, True])
def test_openai_json_schema_response(oai, stream):
    kwargs = dict(
        model="m",
        messages=[{"role": "user", "content": "Describe Bob, who is 30, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        temperature=0,
        max_tokens=80,
    )
    if stream:
        text = "".join(
            c.choices[0].delta.content or "" for c in oai.chat.completions.create(**kwargs, stream=True) if c.choices
        )
    else:
        text = oai.chat.completions.create(**kwargs).choices[0].message.content
    jsonschema.validate(json.loads(text), PERSON)


def test_openai_json_object_response(oai):
    completion = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": 'Reply with a JSON object: {"capital of France": <the city>}'}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=80,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_anthropic_output_config_format(claude):
    message = claude.messages.create(
        model="c",
        max_tokens=80,
        messages=[{"role": "user", "content": "Describe Bob, who is 30, as JSON."}],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": PERSON}}, "temperature": 0},
    )
    jsonschema.validate(json.loads(message.content[0].text), PERSON)


def test_tool_choice_none_hides_the_tools(oai):
    def prompt_tokens(choice: str) -> int:
        completion = oai.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=TWO_TOOLS,
            tool_choice=choice,
            temperature=0,
            max_tokens=8,
        )
        if choice == "none":
            assert not completion.choices[0].message.tool_calls
        return completion.usage.prompt_tokens

    assert prompt_tokens("none") + 50 < prompt_tokens("auto")


def test_bad_tool_requests_are_400s_in_each_shape(server, oai, claude):
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        oai.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            tools=TWO_TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    with pytest.raises(openai.BadRequestError, match="tools.0.function.name"):
        oai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], tools=[openai_tool("bad name!", "", obj({}))]
        )
    with pytest.raises(anthropic.BadRequestError, match="tool_choice.name"):
        claude.messages.create(
            model="c",
            max_tokens=8,
            messages=[{"role": "user", "content": "hi"}],
            tools=[anthropic_tool("a", "", obj({}))],
            tool_choice={"type": "tool"},
        )
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        },
        timeout=60,
    )
    assert response.status_code == 400 and "grammar" in response.json()["error"]["message"]


def test_tool_call_metric_counts_valid_calls(server, oai):
    def valid_calls() -> float:
        text = httpx.get(f"{server.base_url}/metrics", headers={"X-API-Key": API_KEY}, timeout=10).text
        line = next(x for x in text.splitlines() if x.startswith('agent_memory_tool_calls_total{outcome="valid"}'))
        return float(line.split()[-1])

    before = valid_calls()
    oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TWO_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=60,
    )
    assert valid_calls() == before + 1


def test_a_tool_schema_the_grammar_cannot_take_fails_only_its_own_request(oai, claude):
    # A recursive $ref under a forced call: whatever becomes of it, the requests batched beside it answer
    # in full and never carry its error.
    node = {
        "type": "object",
        "properties": {"name": STRING, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["name", "children"],
    }
    tree = {"type": "object", "$defs": {"node": node}, "properties": {"root": {"$ref": "#/$defs/node"}}}
    tool = {"name": "save_tree", "description": "Save a tree of names.", "input_schema": tree}

    def bad():
        try:
            return claude.messages.create(
                model="default",
                max_tokens=60,
                tools=[tool],
                tool_choice={"type": "any"},
                messages=[{"role": "user", "content": "Save a family tree of three generations."}],
            )
        except anthropic.BadRequestError as exc:
            return exc

    def good(index: int) -> str:
        answer = oai.chat.completions.create(
            model="default",
            max_tokens=12,
            temperature=0,
            messages=[{"role": "user", "content": f"Count from {index} to {index + 5}."}],
        )
        assert answer.choices[0].finish_reason in ("stop", "length"), answer
        return answer.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(bad), *(pool.submit(good, index) for index in range(3))]
        results = [future.result() for future in futures]
    # Refused before its turn (a 400 saying why), or answered: never a 500 shared with the others
    assert isinstance(results[0], anthropic.BadRequestError) or results[0].content, results[0]
    assert all(text and "grammar" not in text.lower() for text in results[1:]), results
