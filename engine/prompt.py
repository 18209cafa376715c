"""A request's conversation rendered with the model's chat template into prompt token ids."""

from __future__ import annotations

from engine.errors import RequestError
from engine.loader import LoadedModel
from engine.requests import GenerationRequest


def render_prompt(loaded: LoadedModel, request: GenerationRequest) -> list[int]:
    """Token ids of the chat-templated conversation, ending with the assistant's turn opener (or, when the
    last message is the assistant's, with its text, to be continued)."""
    from engine.tools.formats import tool_format
    from engine.tools.render import template_inputs

    tokenizer = loaded.tokenizer
    fmt = tool_format(tokenizer, constrained=request.constrained)
    messages, tools = template_inputs(request, fmt)
    # A conversation that ends with the assistant's words is continued from them (answer prefill).
    continues = messages[-1]["role"] == "assistant"
    if tokenizer.chat_template:
        try:
            text = tokenizer.apply_chat_template(
                messages,
                **({"tools": tools} if tools else {}),
                add_generation_prompt=not continues,
                continue_final_message=continues,
                tokenize=False,
            )
        except Exception as exc:  # jinja raises TemplateError / its own exceptions from raise_exception
            raise RequestError(f"the model's chat template rejected the conversation: {exc}") from None
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n\n"
    refuse_text_beyond_context(text, loaded)
    if loaded.prompt_encoder is not None:
        return loaded.prompt_encoder.encode(text)
    return tokenizer.encode(text, add_special_tokens=False)


def refuse_text_beyond_context(text: str, loaded: LoadedModel) -> None:
    """A prompt too long to fit even at the vocabulary's longest token per token is refused before it is
    tokenized: the tokenizer holds the GIL throughout (half a minute for tens of MB), stalling the server,
    and its token list would take gigabytes."""
    longest, context_length = loaded.longest_token_chars, loaded.info.context_length
    if longest and len(text) > context_length * longest:
        at_least = -(-len(text) // longest)
        raise RequestError(f"prompt is too long: at least {at_least} tokens > {context_length - 1} maximum")


def check_context(prompt_tokens: int, context_length: int) -> None:
    if prompt_tokens >= context_length:
        raise RequestError(f"prompt is too long: {prompt_tokens} tokens > {context_length - 1} maximum")
