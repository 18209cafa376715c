"""What clients send, made canonical before rendering: volatile lines, system turns mid-conversation,
back-to-back turns of one role, Claude Code's session id, the access log's quoting. No model: unit tier."""

from __future__ import annotations

import json

from api.access_log import _quoted
from api.routes.anthropic import engine_messages
from api.schemas.anthropic import MessagesRequest
from api.sessions import session_id_from
from api.system_turns import fit_system_turns, join_same_role_turns
from api.volatile import drop_volatile_lines
from engine.requests import ChatMessage, ToolCall
from tests.api.recorded_clients import claude_code_request

BILLING = "x-anthropic-billing-header: cc_version=2.1.197.1c0; cc_entrypoint=sdk-cli;"


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str, calls: tuple[ToolCall, ...] = ()) -> ChatMessage:
    return ChatMessage(role="assistant", content=text, tool_calls=calls)


def system(text: str) -> ChatMessage:
    return ChatMessage(role="system", content=text)


def test_billing_line_is_dropped_and_other_text_kept():
    text = f"{BILLING}\nYou are a helpful agent.\n  X-Anthropic-Billing-Header: cch=1a2b3;\nBe brief."
    assert drop_volatile_lines(text) == "You are a helpful agent.\nBe brief."
    plain = "No volatile lines here.\nx-anthropic-billing-header is mentioned, not led with."
    assert drop_volatile_lines(plain) is plain


def test_recorded_claude_code_request_renders_the_same_whatever_its_billing_line():
    body = claude_code_request()["body"]
    other = json.loads(json.dumps(body))
    other["system"][0]["text"] = "x-anthropic-billing-header: cc_version=2.1.197.f3e; cc_entrypoint=cli; cch=9c1d2;"
    first, second = (engine_messages(MessagesRequest.model_validate(b)) for b in (body, other))
    assert first == second
    assert first[0].role == "system" and "billing" not in first[0].content
    assert first[0].content.startswith("You are a Claude agent")
    # the setting off keeps the line (SEMANTIC_DROP_VOLATILE_LINES=false)
    kept = engine_messages(MessagesRequest.model_validate(body), drop_volatile=False)
    assert kept[0].content.startswith(BILLING)


def test_recorded_request_keeps_its_mid_conversation_system_message():
    messages = engine_messages(MessagesRequest.model_validate(claude_code_request()["body"]))
    assert [m.role for m in messages] == ["system", "user", "system"]
    assert messages[2].content.startswith("Available agent types")


def test_system_turns_stay_where_the_template_renders_them():
    conversation = [system("S0"), user("U1"), system("S2"), assistant("A"), user("U2")]
    assert fit_system_turns(conversation, renders_system_turns=True) == conversation


def test_system_turns_are_merged_where_the_template_refuses_them():
    conversation = [system("S0"), system("S1"), user("U1"), system("S2"), assistant("A"), user("U2"), system("S3")]
    fitted = fit_system_turns(conversation, renders_system_turns=False)
    reminder = "<system-reminder>\n{}\n</system-reminder>".format
    assert fitted == [
        system("S0\n\nS1"),
        user(f"U1\n\n{reminder('S2')}"),
        assistant("A"),
        user(f"U2\n\n{reminder('S3')}"),
    ]


def test_system_turn_after_an_assistant_turn_opens_the_next_user_turn():
    call = ToolCall(id="call_1", name="read", arguments="{}")
    result = ChatMessage(role="tool", content="file text", tool_call_id="call_1")
    reminder = "<system-reminder>\nS\n</system-reminder>"
    fitted = fit_system_turns([user("U"), assistant("", (call,)), system("S"), result, assistant("A")], False)
    # after the tool results (which render as the user's side), before the next assistant turn
    assert [m.role for m in fitted] == ["user", "assistant", "tool", "user", "assistant"]
    assert fitted[3].content == reminder
    fitted = fit_system_turns([user("U"), assistant("A"), system("S")], False)
    assert fitted[-1] == user(reminder)
    fitted = fit_system_turns([user("U"), assistant("A"), system("S"), user("V")], False)
    assert fitted[-1] == user(f"{reminder}\n\nV")


def test_empty_system_messages_are_left_out():
    assert fit_system_turns([user("U"), system("  "), assistant("A")], False) == [user("U"), assistant("A")]


def test_back_to_back_turns_of_one_role_are_joined():
    # Claude Code resumes an answer cut by max_tokens as consecutive assistant turns
    call = ToolCall(id="call_1", name="read", arguments="{}")
    joined = join_same_role_turns([user("U"), user("V"), assistant("A1"), assistant("A2", (call,)), user("W")])
    assert joined == [user("U\nV"), assistant("A1\nA2", (call,)), user("W")]


def test_claude_code_session_id_comes_from_its_json_user_id():
    body = claude_code_request()["body"]
    assert session_id_from({}, body, anthropic=True) == "00000000-0000-4000-8000-000000000001"
    assert session_id_from({}, {"metadata": {"user_id": "plain-user"}}, anthropic=True) == "plain-user"
    assert session_id_from({}, {"metadata": {"user_id": "{not json"}}, anthropic=True) == "{not json"
    assert session_id_from({"x-session-id": "mine"}, body, anthropic=True) == "mine"
    # OpenAI's and Ollama's metadata are free-form labels of the client's: they name no session
    assert session_id_from({}, {"metadata": {"user_id": "plain-user"}}) is None


def test_access_log_fields_stay_single_words():
    assert _quoted("00000000-0000-4000-8000-000000000001") == "00000000-0000-4000-8000-000000000001"
    assert _quoted("two words\nand 100%") == "two%20words%0Aand%20100%25"


def test_a_claude_code_session_is_titled_by_its_project_and_first_request():
    from api.agent_titles import claude_code_title

    body = claude_code_request()["body"]
    assert claude_code_title(body) == "Claude Code · project: Say hello"  # <system-reminder> context left out
    body["messages"][0]["content"][-1]["text"] = "Refactor " + "the parser " * 20
    title = claude_code_title(body)
    assert title.startswith("Claude Code · project: Refactor the parser") and title.endswith("…")
    assert claude_code_title({"messages": [{"role": "user", "content": "Hi"}]}) == "Claude Code: Hi"
