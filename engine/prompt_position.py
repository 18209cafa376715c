"""Which message of a conversation holds a given prompt token, to say where a cached prompt stopped matching.

    [system ........][user 1 ......][assistant ....][user 2 ....]<assistant opener>
                                          ^ token N: message 2, after 1 user message: "turn 1"

The first k messages are rendered (without the generation prompt) and tokenized; a binary search over k
finds the fewest whose tokens reach past N. That re-tokenizes up to the whole prompt about log2(messages)
times, so it runs only for a turn whose cache diverged (whose prefill past N costs far more).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import RequestError
from engine.loader import LoadedModel
from engine.prompt import encode_text, render_text, template_messages
from engine.requests import GenerationRequest


@dataclass(frozen=True)
class MessagePosition:
    index: int  # in the conversation as the chat template takes it (engine/tools/render.py)
    role: str
    user_turns: int  # user messages up to and including this one: its turn, counted from 1


def message_at(loaded: LoadedModel, request: GenerationRequest, token: int) -> MessagePosition | None:
    """The message whose rendered tokens include prompt token `token`; None when the token lies past the
    last message (in the assistant's turn opener) or a shorter conversation cannot be rendered (a chat
    template may refuse one)."""
    messages, tools = template_messages(loaded, request)

    def tokens_of_first(count: int) -> int:
        text = render_text(loaded, messages[:count], tools, add_generation_prompt=False, continue_final_message=False)
        return len(encode_text(loaded, text))

    low, high = 1, len(messages)
    try:
        if tokens_of_first(high) <= token:
            return None
        while low < high:
            middle = (low + high) // 2
            if tokens_of_first(middle) > token:
                high = middle
            else:
                low = middle + 1
    except RequestError:
        return None
    index = low - 1
    user_turns = sum(1 for message in messages[: index + 1] if message["role"] == "user")
    return MessagePosition(index, messages[index]["role"], user_turns)
