"""The streaming tool-call parser on recorded model outputs, fed token by token as the engine does.

Recorded: SmolLM2-135M-Instruct in our fallback format (grammar-constrained and free), a Qwen2.5-style
native `<tool_call>` JSON output, and FunctionGemma's native non-JSON syntax (parsed by mlx-lm).
"""

from __future__ import annotations

import json

import pytest
from mlx_lm.tool_parsers import function_gemma

from engine.tools.formats import FALLBACK, ToolFormat
from engine.tools.parser import CallArguments, CallStart, Text, ToolCallParser

# SmolLM2, tool_choice=required with two tools: the detokenizer's pieces, as streamed.
CONSTRAINED_TWO_CALLS = [
    "<",
    "tool",
    "_",
    "call",
    ">\n",
    '{"',
    "name",
    '":',
    ' "',
    "get",
    "_",
    "weather",
    '",',
    ' "',
    "arguments",
    '":',
    ' {"',
    "city",
    '":',
    ' "',
    "Paris",
    '"}}',
    "\n</",
    "tool",
    "_",
    "call",
    ">\n<",
    "tool",
    "_",
    "call",
    '>\n{"',
    "name",
    '":',
    ' "',
    "get",
    "_",
    "time",
    '",',
    ' "',
    "arguments",
    '":',
    ' {"',
    "timezone",
    '":',
    ' "',
    "Europe",
    "/",
    "Paris",
    '"}}',
    "\n</",
    "tool",
    "_",
    "call",
    ">",
]
# SmolLM2 under tool_choice=auto: some text, then a call.
FREE_TEXT_THEN_CALL = [
    "Let",
    " me",
    " check",
    ".",
    "\n",
    "<tool_call>",
    '\n{"name": "get_weather", ',
    '"arguments": {"city": "Rome"',
    "}}\n",
    "</tool_call>",
]
# A call whose JSON the model broke (auto): must come back as text.
FREE_BROKEN_CALL = ["<tool_call>\n", '{"name": "get_weather", "arguments": {"city": Rome}}', "\n</tool_call>"]
QWEN_NATIVE = ['<tool_call>\n{"name": "search", "arguments": {"query": "mlx", "limit": 3}}\n</tool_call>']
GEMMA_NATIVE = ["Sure.", "<start_function_call>", "call:get_weather{city:<escape>Oslo<escape>}", "<end_function_call>"]

QWEN = ToolFormat("json_tools", "<tool_call>", "</tool_call>", native=True, json_body=True)
FUNCTION_GEMMA = ToolFormat(
    "function_gemma",
    function_gemma.tool_call_start,
    function_gemma.tool_call_end,
    native=True,
    json_body=False,
    parse_body=function_gemma.parse_tool_call,
)


def run(parser: ToolCallParser, pieces: list[str]):
    outputs = []
    for piece in pieces:
        outputs += parser.feed(piece)
    outputs += parser.finish()
    return outputs


def text_of(outputs) -> str:
    return "".join(o.text for o in outputs if isinstance(o, Text))


def arguments_of(outputs, index: int) -> str:
    return "".join(o.text for o in outputs if isinstance(o, CallArguments) and o.index == index)


@pytest.mark.parametrize("stream_arguments", [True, False])
def test_two_calls_in_order(stream_arguments):
    parser = ToolCallParser(FALLBACK, stream_arguments=stream_arguments)
    outputs = run(parser, CONSTRAINED_TWO_CALLS)
    starts = [o for o in outputs if isinstance(o, CallStart)]
    assert [(s.index, s.name) for s in starts] == [(0, "get_weather"), (1, "get_time")]
    assert json.loads(arguments_of(outputs, 0)) == {"city": "Paris"}
    assert json.loads(arguments_of(outputs, 1)) == {"timezone": "Europe/Paris"}
    assert [c.name for c in parser.calls] == ["get_weather", "get_time"]
    assert [json.loads(c.arguments) for c in parser.calls] == [{"city": "Paris"}, {"timezone": "Europe/Paris"}]
    assert text_of(outputs) == "" and parser.invalid == 0
    # Each call starts before its arguments.
    assert outputs.index(starts[1]) > max(i for i, o in enumerate(outputs) if getattr(o, "index", None) == 0)


def test_streamed_arguments_arrive_in_pieces_before_the_call_closes():
    parser = ToolCallParser(FALLBACK, stream_arguments=True)
    pieces = CONSTRAINED_TWO_CALLS[: CONSTRAINED_TWO_CALLS.index("Paris") + 1]
    outputs = [o for piece in pieces for o in parser.feed(piece)]
    streamed = [o for o in outputs if isinstance(o, CallArguments)]
    assert len(streamed) > 3
    assert "".join(o.text for o in streamed) == '{"city": "Paris'


def test_text_before_a_call_is_streamed_and_the_call_parsed():
    parser = ToolCallParser(FALLBACK)
    outputs = run(parser, FREE_TEXT_THEN_CALL)
    assert text_of(outputs) == "Let me check."  # the newline before the call is not text
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [("get_weather", {"city": "Rome"})]
    # The text reached the caller before the call's tag was complete.
    first_call = next(i for i, o in enumerate(outputs) if isinstance(o, CallStart))
    assert all(isinstance(o, Text) for o in outputs[:first_call])


def test_a_call_that_does_not_parse_is_returned_as_text_and_counted():
    parser = ToolCallParser(FALLBACK)
    outputs = run(parser, FREE_BROKEN_CALL)
    assert parser.calls == [] and parser.invalid == 1
    assert text_of(outputs) == "".join(FREE_BROKEN_CALL)


def test_free_call_cut_by_max_tokens_is_text():
    parser = ToolCallParser(FALLBACK)
    outputs = run(parser, FREE_TEXT_THEN_CALL[:-3])  # stops inside the arguments
    assert parser.calls == [] and parser.invalid == 1
    assert text_of(outputs) == "".join(FREE_TEXT_THEN_CALL[:-3])
    assert not any(isinstance(o, CallStart) for o in outputs)


def test_constrained_call_cut_mid_arguments_keeps_what_was_streamed():
    parser = ToolCallParser(FALLBACK, stream_arguments=True)
    cut = CONSTRAINED_TWO_CALLS[: CONSTRAINED_TWO_CALLS.index("Paris")]
    outputs = run(parser, cut)
    assert [c.name for c in parser.calls] == ["get_weather"]
    assert arguments_of(outputs, 0) == parser.calls[0].arguments == '{"city": "'
    assert text_of(outputs) == ""


def test_constrained_call_cut_before_its_name_shows_nothing():
    parser = ToolCallParser(FALLBACK, stream_arguments=True)
    outputs = run(parser, CONSTRAINED_TWO_CALLS[:8])
    assert outputs == [] and parser.calls == [] and parser.invalid == 0


def test_a_partial_tag_is_held_back_then_released_as_text():
    parser = ToolCallParser(FALLBACK)
    assert parser.feed("1 <") == [Text("1 ")]
    assert parser.feed("tool") == []
    assert parser.feed(" 2") == [Text("<tool 2")]


def test_plain_answer_passes_through_whole():
    parser = ToolCallParser(FALLBACK)
    outputs = run(parser, ["The answer", " is 4.", "\n"])
    assert text_of(outputs) == "The answer is 4.\n"


def test_native_json_format():
    parser = ToolCallParser(QWEN)
    run(parser, QWEN_NATIVE)
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [("search", {"query": "mlx", "limit": 3})]


def test_native_format_parsed_by_mlx_lm():
    parser = ToolCallParser(FUNCTION_GEMMA)
    outputs = run(parser, GEMMA_NATIVE)
    assert text_of(outputs) == "Sure."
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [("get_weather", {"city": "Oslo"})]


def test_native_format_cut_mid_call_is_text():
    parser = ToolCallParser(FUNCTION_GEMMA)
    outputs = run(parser, GEMMA_NATIVE[:3])
    assert parser.calls == [] and parser.invalid == 1
    assert text_of(outputs) == "".join(GEMMA_NATIVE[:3])


def test_back_to_back_calls_as_the_grammar_writes_them():
    parser = ToolCallParser(FALLBACK, stream_arguments=True)
    text = (
        '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>'
        '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>'
    )
    outputs = run(parser, [text[i : i + 3] for i in range(0, len(text), 3)])
    assert [(c.name, c.arguments) for c in parser.calls] == [("a", '{"x": 1}'), ("b", "{}")]
    assert text_of(outputs) == ""
