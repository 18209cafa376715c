"""Responses input items as engine turns, and turns fitted to every chat template (no model needed)."""

from __future__ import annotations

import pytest

from api.errors import ApiError
from api.response_store import ResponseStore, StoredResponse
from api.routes.responses import _parse, input_messages, template_messages
from engine.requests import ChatMessage, ToolCall


def turns(messages: list[ChatMessage]) -> list[tuple]:
    return [(m.role, m.content, tuple(c.name for c in m.tool_calls), m.tool_call_id) for m in messages]


def test_items_become_turns():
    parsed = _parse(
        {
            "model": "x",
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
                {"role": "user", "content": "Weather in Rome and Oslo?"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Rome"}'},
                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "Rain"}]},
                {"type": "function_call", "call_id": "c3", "name": "get_time", "arguments": "{}"},
            ],
        }
    )
    assert turns(input_messages(parsed)) == [
        ("system", "Be brief.", (), None),
        ("user", "Weather in Rome and Oslo?", (), None),
        ("assistant", "Checking.", ("get_weather", "get_weather"), None),  # a message and the calls after it
        ("tool", "Sunny", (), "c1"),
        ("tool", "Rain", (), "c2"),
        ("assistant", "", ("get_time",), None),  # calls with no message before them
    ]
    assert turns(input_messages(_parse({"model": "x", "input": "Hi"}))) == [("user", "Hi", (), None)]


def test_turns_are_fitted_to_strict_templates():
    """One system message first, then alternating turns (what Gemma's template demands)."""
    conversation = [
        ChatMessage(role="system", content="Codex instructions"),
        ChatMessage(role="system", content="Skills"),
        ChatMessage(role="user", content="<environment_context>"),
        ChatMessage(role="user", content="Say hello"),
        ChatMessage(role="assistant", content="Hello."),
        ChatMessage(role="system", content="Approvals changed"),
        ChatMessage(role="user", content="Again"),
        ChatMessage(role="assistant", content="Let me check."),
        ChatMessage(role="assistant", content="", tool_calls=(ToolCall(id="c", name="f", arguments="{}"),)),
    ]
    fitted = template_messages("Be brief.", conversation)
    assert turns(fitted) == [
        ("system", "Be brief.\n\nCodex instructions\n\nSkills", (), None),
        ("user", "<environment_context>\n\nSay hello", (), None),
        ("assistant", "Hello.", (), None),
        ("user", "Approvals changed\n\nAgain", (), None),
        ("assistant", "Let me check.", ("f",), None),
    ]
    assert template_messages(None, conversation[2:4]) == [
        ChatMessage(role="user", content="<environment_context>\n\nSay hello")
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "x", "input": [{"type": "web_search_call"}]}, "input.0: the item type must be message"),
        ({"model": "x", "input": [{"role": "user", "content": [{"type": "video"}]}]}, "input.0.content.0.type: "),
        ({"model": "x", "tools": [{"type": "function", "name": "a b"}]}, "tools.0.name: String should match"),
        (
            {
                "model": "x",
                "tools": [{"type": "namespace", "name": "n", "tools": [{"type": "function", "name": "a b"}]}],
            },
            "tools.0.tools.0.name: String should match",
        ),
        ({"model": "x", "tool_choice": 5}, "tool_choice: "),
        ({"input": "hi"}, "model: field required"),
    ],
)
def test_bad_bodies_name_the_deepest_field(body, message):
    with pytest.raises(ApiError) as info:
        _parse(body)
    assert info.value.status == 400 and info.value.message.startswith(message), info.value.message


def test_store_round_trip_and_odd_ids(tmp_path):
    store = ResponseStore(tmp_path)
    odd = "resp_../../etc/passwd ü"  # ids are user input when read back: they name files only through a hash
    stored = StoredResponse(id=odd, session_id="s", conversation=[ChatMessage(role="user", content="Hi")], response={})
    store.save(stored)
    assert store.get(odd) == stored and [p.parent for p in tmp_path.iterdir()] == [tmp_path]
    assert store.delete(odd) and store.get(odd) is None and not store.delete(odd)
