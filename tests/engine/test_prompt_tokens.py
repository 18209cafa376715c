"""Prompts tokenized from where a recent prompt left off give exactly the tokens of tokenizing them
whole, for SmolLM2's and Gemma 3's tokenizers, across turns, edited histories and awkward text."""

from __future__ import annotations

import pytest

from engine.engine import Engine
from engine.loader import LoadedModel, longest_entry_chars
from engine.prompt import render_prompt
from engine.prompt_tokens import PromptEncoder
from engine.requests import ChatMessage, GenerationRequest
from engine.settings import Settings

AWKWARD = [
    "Plain words.",
    "  leading and trailing spaces  ",
    "line one\n\nline three\n",
    "Unicode: café, naïve, 中文, emoji 🙂, tabs\tand\r\nCRLF",
    "A literal turn marker <|im_start|>user and <start_of_turn>model inside the text",
    '{"tool": "search", "arguments": {"query": "kv cache"}}',
    "",
    "ends with a space ",
]


@pytest.fixture(scope="module")
def gemma_tokenizer(data_dir):
    with Engine(Settings(data_dir=data_dir, mlx_model_id="gemma3-270m", kv_memory=False)) as running:
        yield running.tokenizer, running.info


def conversations():
    """Growing conversations, one after another, as agents send them: each turn appends the answer
    and a new message; one agent's history is edited in the middle; one turn continues an answer."""
    history = [ChatMessage(role="system", content="You are a careful assistant.")]
    for turn, text in enumerate(AWKWARD):
        history = [*history, ChatMessage(role="user", content=f"Turn {turn}: {text}")]
        yield history
        history = [*history, ChatMessage(role="assistant", content=f"Answer {turn}. {text}")]
    edited = list(history)
    edited[3] = ChatMessage(role="user", content="An earlier question, rewritten.")
    yield [*edited, ChatMessage(role="user", content="And now?")]
    yield [*history, ChatMessage(role="user", content="Go on."), ChatMessage(role="assistant", content="Well, ")]
    other = [ChatMessage(role="user", content="Another agent's first question.")]
    yield other
    yield [*history, ChatMessage(role="user", content="Back to the first agent.")]


@pytest.mark.parametrize("model", ["default", "gemma3-270m"])
def test_reused_tokens_equal_whole_tokenization(model, default_engine, gemma_tokenizer):
    tokenizer, info = (default_engine.tokenizer, default_engine.info) if model == "default" else gemma_tokenizer
    plain = LoadedModel(None, tokenizer, info)
    encoder = PromptEncoder(tokenizer)
    reusing = LoadedModel(None, tokenizer, info, prompt_encoder=encoder)
    total = 0
    for messages in conversations():
        request = GenerationRequest(messages=messages)
        expected = render_prompt(plain, request)
        assert render_prompt(reusing, request) == expected
        total += len(expected)
    # Most tokens came from earlier prompts: the comparison above covered the reusing path.
    assert encoder.reused_tokens > total // 2


@pytest.mark.parametrize("model", ["default", "gemma3-270m"])
def test_no_text_has_fewer_tokens_than_its_characters_over_the_longest_token(model, default_engine, gemma_tokenizer):
    # The bound that refuses huge prompts untokenized must never refuse one that fits. Runs of the
    # characters the longest entries are made of are where a text packs the most characters per token.
    tokenizer, _ = (default_engine.tokenizer, default_engine.info) if model == "default" else gemma_tokenizer
    longest = longest_entry_chars(tokenizer)
    assert 8 < longest < 200
    texts = [c * 5000 for c in "#= \n\t-*_.0"] + ["\n" + " " * 5000, " ".join(["internationalization"] * 500)]
    texts += [text for text in AWKWARD if text]
    for text in texts:
        tokens = len(tokenizer.encode(text, add_special_tokens=False))
        assert tokens * longest >= len(text), (text[:20], tokens, longest)
