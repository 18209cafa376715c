"""The conversation as chat-template input, with tools, earlier calls and their results.

The same request always renders the same text (no ids, clocks or dict-order surprises), so a
multi-step tool conversation finds its earlier turns in the KV cache.
"""

from __future__ import annotations

import json
from typing import Any

from engine.requests import ChatMessage, GenerationRequest
from engine.tools.formats import (
    ToolFormat,
    fallback_call_text,
    fallback_instructions,
    fallback_result_text,
)


def template_inputs(request: GenerationRequest, fmt: ToolFormat | None) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) for `apply_chat_template`; tools is None when the template is not given them."""
    native = fmt is not None and fmt.native
    if native:
        # Results carry only their call's id; templates that print the tool's name get it from the call.
        names = {call.id: call.name for message in request.messages for call in message.tool_calls}
        messages = [_native_message(m, names) for m in request.messages]
        tools = [_native_tool(t) for t in request.tools] if request.offers_tools else None
        return messages, tools
    messages = _fallback_messages(request.messages)
    if request.offers_tools:
        section = fallback_instructions(request.tools)
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{section}"}
        else:
            messages.insert(0, {"role": "system", "content": section})
    return messages, None


def _arguments(text: str) -> Any:
    """Arguments as the template expects them (an object); text that is not JSON stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _native_message(message: ChatMessage, names: dict[str, str]) -> dict:
    rendered: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        rendered["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
            for c in message.tool_calls
        ]
    if message.role == "tool":
        rendered["tool_call_id"] = message.tool_call_id
        name = names.get(message.tool_call_id, message.name)
        if name:
            rendered["name"] = name
        if message.is_error:
            rendered["content"] = f"Error: {message.content}"
    return rendered


def _native_tool(tool) -> dict:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


def _fallback_messages(messages: list[ChatMessage]) -> list[dict]:
    """Calls become call text in the assistant turn; results become one user turn per run of results
    (templates like Gemma's require user and assistant turns to alternate)."""
    rendered: list[dict] = []
    for message in messages:
        if message.role == "tool":
            text = fallback_result_text(message.content, message.is_error)
            if rendered and rendered[-1].get("_results"):
                rendered[-1]["content"] += "\n" + text
            else:
                rendered.append({"role": "user", "content": text, "_results": True})
            continue
        content = message.content
        if message.role == "user" and rendered and rendered[-1].get("_results"):
            rendered[-1]["content"] += "\n" + content  # text sent along with the results
            continue
        if message.tool_calls:
            calls = [fallback_call_text(c.name, _arguments(c.arguments)) for c in message.tool_calls]
            # Back to back, as the grammar writes them (the same tokens are found in the cache next turn)
            content = "\n".join(part for part in (content, "".join(calls)) if part)
        rendered.append({"role": message.role, "content": content})
    return [{k: v for k, v in m.items() if k != "_results"} for m in rendered]
