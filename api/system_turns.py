"""System messages in the middle of a conversation fitted to what the model's chat template can render, and
back-to-back turns of one role joined.

Claude Code sends `{"role": "system"}` entries between the turns of `messages` (its beta
`mid-conversation-system-2026-04-07`). A template that renders a system turn anywhere (ChatML, SmolLM2)
gets them as system turns. Other templates refuse them (Gemma's demands strictly alternating user and
model turns) or keep only the first system message, so for those their text is merged:

  [system S0] [system S1] user U1  system S2  assistant A  user U2  system S3
      -> system "S0\n\nS1"   user "U1\n\n<system-reminder>S2</system-reminder>"   assistant A
         user "U2\n\n<system-reminder>S3</system-reminder>"

  - system messages before the first turn join the leading system prompt;
  - a later one is added to the end of the user turn just before it; after an assistant turn or tool
    results it opens the next user turn instead (a user turn of its own when none follows), so the roles
    still alternate.

Which kind a template is, is found once per model by rendering a probe conversation with and without a
system turn in its middle.

Back-to-back user turns, or assistant turns, are joined into one, as the Anthropic API does: Claude Code
resumes a session whose answers hit max_tokens with the pieces of one answer as consecutive assistant
turns (it leaves out the "Output token limit hit" turns between them), which strict templates refuse.
"""

from __future__ import annotations

import threading

from engine.errors import RequestError
from engine.requests import ChatMessage, GenerationRequest

_PROBE_MARK = "Probe: mid-conversation system turn."
_probe_lock = threading.Lock()
_renders_by_fingerprint: dict[str, bool] = {}


def renders_system_turns(engine) -> bool:
    """Whether the serving model's chat template renders a system turn between other turns (rendered
    once per model, then remembered). Renders prompts: call it off the event loop."""
    fingerprint = engine.info.fingerprint
    with _probe_lock:
        known = _renders_by_fingerprint.get(fingerprint)
        if known is None:
            known = _renders_by_fingerprint[fingerprint] = _probe(engine)
        return known


def _probe(engine) -> bool:
    turns = [ChatMessage(role="user", content="Hi."), ChatMessage(role="assistant", content="Hello.")]
    last = ChatMessage(role="user", content="Bye.")
    try:
        with_system = engine.count_tokens(
            GenerationRequest(messages=[*turns, ChatMessage(role="system", content=_PROBE_MARK), last])
        )
    except RequestError:
        return False  # the template raised (Gemma: roles must alternate)
    # A template that silently drops later system messages renders the same tokens without it.
    return with_system > engine.count_tokens(GenerationRequest(messages=[*turns, last]))


def fit_system_turns(messages: list[ChatMessage], renders_system_turns: bool) -> list[ChatMessage]:
    """`messages` with its system messages placed as the module docstring describes; empty ones are left out."""
    fitted: list[ChatMessage] = []
    pending: list[str] = []  # system text waiting for the next user turn
    for message in messages:
        if message.role == "system":
            if not message.content.strip():
                continue
            if all(m.role == "system" for m in fitted):  # before the first turn: the leading system prompt
                leading = [m.content for m in fitted] + [message.content]
                fitted[:] = [ChatMessage(role="system", content="\n\n".join(leading))]
            elif renders_system_turns:
                fitted.append(message)
            elif fitted[-1].role == "user" and not pending:
                fitted[-1] = _with_reminders(fitted[-1], [message.content], after=True)
            else:
                pending.append(message.content)
            continue
        if pending and message.role == "user":
            message = _with_reminders(message, pending, after=False)
            pending = []
        elif pending and message.role == "assistant":
            fitted.append(ChatMessage(role="user", content=_reminders(pending)))
            pending = []
        # tool results keep the reminders waiting: they are the user side of the conversation too
        fitted.append(message)
    if pending:
        fitted.append(ChatMessage(role="user", content=_reminders(pending)))
    return join_same_role_turns(fitted)


def join_same_role_turns(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Consecutive user turns, or assistant turns, as one turn: texts joined by a line break (as the text
    blocks of one message are), tool calls in order."""
    joined: list[ChatMessage] = []
    for message in messages:
        previous = joined[-1] if joined else None
        if previous is not None and message.role == previous.role and message.role in ("user", "assistant"):
            content = "\n".join(part for part in (previous.content, message.content) if part)
            calls = previous.tool_calls + message.tool_calls
            joined[-1] = previous.model_copy(update={"content": content, "tool_calls": calls})
        else:
            joined.append(message)
    return joined


def _reminders(texts: list[str]) -> str:
    return "\n\n".join(f"<system-reminder>\n{text}\n</system-reminder>" for text in texts)


def _with_reminders(message: ChatMessage, texts: list[str], after: bool) -> ChatMessage:
    parts = [message.content, _reminders(texts)] if after else [_reminders(texts), message.content]
    return message.model_copy(update={"content": "\n\n".join(part for part in parts if part)})
