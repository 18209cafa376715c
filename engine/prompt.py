"""A request's conversation rendered with the model's chat template into prompt token ids."""

from __future__ import annotations

from engine.errors import RequestError
from engine.loader import LoadedModel
from engine.requests import GenerationRequest


def render_prompt(loaded: LoadedModel, request: GenerationRequest) -> list[int]:
    """Token ids of the chat-templated conversation, ending with the assistant's turn opener (or, when the
    last message is the assistant's, with its text, to be continued)."""
    messages, tools = template_messages(loaded, request)
    # A conversation that ends with the assistant's words is continued from them (answer prefill).
    continues = messages[-1]["role"] == "assistant"
    text = render_text(loaded, messages, tools, add_generation_prompt=not continues, continue_final_message=continues)
    refuse_text_beyond_context(text, loaded)
    return encode_text(loaded, text)


def template_messages(loaded: LoadedModel, request: GenerationRequest) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) as the model's chat template takes them (engine/tools/render.py)."""
    from engine.tools.formats import tool_format
    from engine.tools.render import template_inputs

    return template_inputs(request, tool_format(loaded.tokenizer, constrained=request.constrained))


def render_text(
    loaded: LoadedModel,
    messages: list[dict],
    tools: list[dict] | None,
    add_generation_prompt: bool,
    continue_final_message: bool,
) -> str:
    """The conversation as the chat template writes it (a model without one: the texts, blank lines apart)."""
    tokenizer = loaded.tokenizer
    if not tokenizer.chat_template:
        return "\n\n".join(m["content"] for m in messages) + "\n\n"
    try:
        return tokenizer.apply_chat_template(
            messages,
            **({"tools": tools} if tools else {}),
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
        )
    except Exception as exc:  # jinja raises TemplateError / its own exceptions from raise_exception
        raise RequestError(f"the model's chat template rejected the conversation: {exc}") from None


def encode_text(loaded: LoadedModel, text: str) -> list[int]:
    if loaded.prompt_encoder is not None:
        return loaded.prompt_encoder.encode(text)
    return loaded.tokenizer.encode(text, add_special_tokens=False)


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
