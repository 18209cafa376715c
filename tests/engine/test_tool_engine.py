"""Tool formats, rendering and constrained decoding in the engine.

A random-weight model writes arbitrary tokens, so when its forced calls still parse and validate, the
grammar alone made them so.
"""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest

from engine.engine import Engine
from engine.events import TurnFailed
from engine.loader import LoadedModel
from engine.prompt import render_prompt
from engine.requests import ChatMessage, GenerationRequest, SamplingParams, ToolCall, ToolSpec
from engine.settings import Settings
from engine.tools.formats import FALLBACK, tool_format

# A minimal Hermes/Qwen-style template that takes tools= (mlx-lm infers its json_tools parser).
NATIVE_TEMPLATE = """
{%- if tools %}<|im_start|>system
# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
Call a function with <tool_call></tool_call> tags.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{{ message.content }}
{%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}
<tool_call>
{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

CITY = ToolSpec(
    name="get_weather",
    description="Weather for a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "days": {"type": "integer", "minimum": 1, "maximum": 30},
        },
        "required": ["city", "days"],
    },
)
SEARCH = ToolSpec(
    name="search",
    parameters={"type": "object", "properties": {"query": {"type": "string", "maxLength": 12}}, "required": ["query"]},
)


@pytest.fixture(scope="module")
def native_model_dir(tiny_model_dir, tmp_path_factory):
    target = tmp_path_factory.mktemp("tiny-native-tools")
    for path in tiny_model_dir.iterdir():
        shutil.copy(path, target / path.name)
    (target / "chat_template.jinja").write_text(NATIVE_TEMPLATE)
    return target


@pytest.fixture(scope="module")
def native_engine(native_model_dir, data_dir):
    with Engine(Settings(data_dir=data_dir, mlx_model_id=str(native_model_dir), kv_memory=False)) as running:
        yield running


@pytest.fixture(scope="module")
def serial_engine(tiny_model_dir, data_dir):
    """One request at a time: the stream_generate path (sliding-window and quantized-KV models take it)."""
    settings = Settings(data_dir=data_dir, mlx_model_id=str(tiny_model_dir), kv_memory=False, mlx_max_batch_size=1)
    with Engine(settings) as running:
        yield running


def request(messages, **kwargs) -> GenerationRequest:
    return GenerationRequest(
        messages=messages, max_tokens=60, sampling=SamplingParams(temperature=0.0), tools=[CITY, SEARCH], **kwargs
    )


HISTORY = [
    ChatMessage(role="user", content="Weather in Oslo?"),
    ChatMessage(
        role="assistant",
        content="",
        tool_calls=(ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo", "days": 1}'),),
    ),
    ChatMessage(role="tool", content="-3 C", tool_call_id="call_1", name="get_weather"),
    ChatMessage(role="tool", content="timeout", tool_call_id="call_2", name="search", is_error=True),
    ChatMessage(role="user", content="And tomorrow?"),
]


def text_of(engine: Engine, req: GenerationRequest) -> str:
    loaded = engine._loaded
    return loaded.tokenizer.decode(render_prompt(LoadedModel(None, loaded.tokenizer, loaded.info), req))


def test_default_model_uses_the_fallback_format(default_engine):
    assert tool_format(default_engine._loaded.tokenizer) is FALLBACK
    text = text_of(default_engine, request(HISTORY))
    assert text.count("<tools>") == 1 and '"name": "get_weather"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": 1}}\n</tool_call>' in text
    # Both results and the user's next words form one user turn (templates that need alternating turns).
    assert "<tool_response>\n-3 C\n</tool_response>\n<tool_response>\nError: timeout\n</tool_response>\n" in text
    assert text.index("Error: timeout") < text.index("And tomorrow?")
    assert text_of(default_engine, request(HISTORY)) == text  # stable: the next turn reuses it from cache
    hidden = text_of(default_engine, request(HISTORY, tool_choice="none"))
    assert "<tools>" not in hidden and "<tool_response>" in hidden


def test_forced_choice_does_not_change_the_rendered_prompt(default_engine):
    """The grammar forces the call, so the prompt (and its cached KV) is the same for every tool_choice."""
    texts = {
        text_of(default_engine, request(HISTORY, tool_choice=choice, tool_name=name))
        for choice, name in [("auto", None), ("required", None), ("required", "search")]
    }
    assert len(texts) == 1


def test_native_template_renders_tools_itself(native_engine):
    tokenizer = native_engine._loaded.tokenizer
    fmt = tool_format(tokenizer)
    assert fmt.native and fmt.name == "json_tools" and fmt.json_body
    text = text_of(native_engine, request(HISTORY))
    assert "# Tools" in text and '"name": "search"' in text
    assert '{"name": "get_weather", "arguments": {"city": "Oslo", "days": 1}}' in text
    assert "<tool_response>\nError: timeout\n</tool_response>" in text


@pytest.mark.parametrize("which", ["fallback", "native", "serial"])
def test_random_model_forced_calls_are_valid(which, tiny_engine, native_engine, serial_engine):
    engine = {"fallback": tiny_engine, "native": native_engine, "serial": serial_engine}[which]
    schemas = {CITY.name: CITY.parameters, SEARCH.name: SEARCH.parameters}
    for choice, name in [("required", "get_weather"), ("required", "search"), ("required", None)]:
        finished = engine.generate(
            request(
                [ChatMessage(role="user", content="Go.")],
                tool_choice=choice,
                tool_name=name,
                parallel_tool_calls=False,
            ).model_copy(update={"max_tokens": 120})
        )
        assert finished.finish_reason == "tool_calls", finished
        assert len(finished.tool_calls) == 1 and finished.text == ""
        call = finished.tool_calls[0]
        assert name in (None, call.name)
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])


def test_random_model_response_schema_is_valid(tiny_engine):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["ok", "n"],
    }
    finished = tiny_engine.generate(
        GenerationRequest(
            messages=[ChatMessage(role="user", content="Go.")],
            max_tokens=40,
            sampling=SamplingParams(temperature=1.0, seed=3),
            response_schema=schema,
        )
    )
    assert finished.finish_reason == "stop"
    jsonschema.validate(json.loads(finished.text), schema)


@pytest.mark.parametrize("batched", [True, False])
def test_unusable_schema_is_a_request_error_before_the_turn_starts(batched, tiny_engine, serial_engine):
    engine = tiny_engine if batched else serial_engine
    handle = engine.submit(
        GenerationRequest(messages=[ChatMessage(role="user", content="Go.")], response_schema={"type": "bogus"})
    )
    (event,) = list(handle.events())
    assert isinstance(event, TurnFailed) and event.kind == "request" and "grammar" in event.message


@pytest.mark.parametrize("parallel", [True, False])
def test_random_model_parallel_calls_are_each_valid(parallel, tiny_engine):
    """Sampled freely under the grammar, a random model makes one or several calls, each one valid."""
    schemas = {CITY.name: CITY.parameters, SEARCH.name: SEARCH.parameters}
    counts = []
    for seed in range(6):
        finished = tiny_engine.generate(
            request(
                [ChatMessage(role="user", content="Go.")],
                tool_choice="required",
                parallel_tool_calls=parallel,
            ).model_copy(update={"max_tokens": 400, "sampling": SamplingParams(temperature=1.0, seed=seed)})
        )
        if finished.finish_reason == "length":
            continue  # a call cut by max_tokens is allowed to be incomplete
        counts.append(len(finished.tool_calls))
        for call in finished.tool_calls:
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    assert counts and (max(counts) > 1 if parallel else set(counts) == {1})
