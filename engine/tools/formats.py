"""How a model writes tool calls, and how tools and earlier calls are shown to it.

Two kinds of format:
- *native*: the model's chat template takes `tools=` and mlx-lm knows the family's call syntax
  (`tokenizer.tool_call_start/end` and `tool_parser`, inferred from the template);
- *fallback*: templates without tool support (SmolLM2, Gemma 3) get the tools in the system prompt,
  described below, and write `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (Hermes' syntax,
  which small instruction models have seen most).

Formats whose call body is a JSON object with "name" and "arguments" stream arguments as they are
written and can be constrained by a grammar; other native syntaxes are parsed when the call closes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.requests import ToolSpec

FALLBACK_START = "<tool_call>"
FALLBACK_END = "</tool_call>"


@dataclass(frozen=True)
class ToolFormat:
    name: str  # "fallback", or mlx-lm's parser name ("json_tools", "mistral", ...)
    start: str
    end: str  # "" when a call runs to the end of the turn
    native: bool  # the chat template renders tools and tool turns itself
    json_body: bool  # the body is {"name": ..., "arguments": {...}}: streamable and constrainable
    parse_body: Callable[[str], Any] | None = None  # mlx-lm's parser, for other native bodies


FALLBACK = ToolFormat("fallback", FALLBACK_START, FALLBACK_END, native=False, json_body=True)


def tool_format(tokenizer, constrained: bool = False) -> ToolFormat:
    """The format this model's turn uses. A constrained turn needs a JSON body: a native syntax that is
    not JSON falls back to our format for that turn."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if not (isinstance(template, str) and "tools" in template and tokenizer.has_tool_calling):
        return FALLBACK
    parser = tokenizer.tool_parser
    family = parser.__module__.rsplit(".", 1)[-1]
    json_body = family == "json_tools"
    if constrained and not json_body:
        return FALLBACK
    return ToolFormat(
        family,
        tokenizer.tool_call_start,
        tokenizer.tool_call_end or "",
        native=True,
        json_body=json_body,
        parse_body=None if json_body else parser,
    )


def call_json(name: str, arguments: Any) -> str:
    """A call's body as our grammar writes it (same separators), so re-rendered history matches the
    generated tokens and the KV cache is reused."""
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def fallback_instructions(tools: list[ToolSpec]) -> str:
    """The system prompt section that teaches a template without tool support our call format. It does
    not depend on tool_choice (a grammar enforces a forced call), so turn after turn it renders the same
    and the conversation's KV cache is reused."""
    listing = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}, ensure_ascii=False)
        for t in tools
    )
    return (
        "You have access to these tools:\n"
        f"<tools>\n{listing}\n</tools>\n"
        "To call a tool, write exactly this:\n"
        f'{FALLBACK_START}\n{{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}\n{FALLBACK_END}\n'
        f"To call several tools at once, write the calls one right after the other: {FALLBACK_END}{FALLBACK_START}\n"
        "Tool results come back in <tool_response> tags. Call a tool only when it helps to answer; "
        "otherwise answer in plain text."
    )


def fallback_call_text(name: str, arguments: Any) -> str:
    return f"{FALLBACK_START}\n{call_json(name, arguments)}\n{FALLBACK_END}"


def fallback_result_text(content: str, is_error: bool) -> str:
    return f"<tool_response>\n{'Error: ' if is_error else ''}{content}\n</tool_response>"
