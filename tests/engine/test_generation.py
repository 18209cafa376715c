"""Streaming generation through the engine thread: the same tokens as bare mlx-lm, stops, limits, unicode."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from engine.errors import RequestError
from engine.events import PrefillProgress, TurnChunk, TurnFinished, TurnStarted
from engine.requests import ChatMessage, GenerationRequest, SamplingParams
from tests.conftest import ask


def collect(engine, request):
    events = list(engine.submit(request).events())
    chunks = [event.text for event in events if isinstance(event, TurnChunk)]
    return events, chunks, events[-1]


def bare_mlx_lm_text(engine, request: GenerationRequest) -> str:
    """What mlx_lm.generate says for the same prompt tokens (run on this thread, its own load)."""
    from mlx_lm import generate
    from mlx_lm.utils import load

    from engine.loader import LoadedModel
    from engine.prompt import render_prompt

    model, tokenizer = load(engine.info.path)
    model.set_dtype(__import__("mlx.core").core.float32)
    prompt = render_prompt(LoadedModel(model, tokenizer, engine.info), request)
    return generate(model, tokenizer, prompt, max_tokens=request.max_tokens)


def test_event_order_and_streamed_text_equals_final_text(default_engine):
    events, chunks, finished = collect(default_engine, ask("Name three colours.", max_tokens=24))
    assert isinstance(events[0], TurnStarted)
    assert any(isinstance(event, PrefillProgress) for event in events)
    assert isinstance(finished, TurnFinished)
    assert "".join(chunks) == finished.text
    assert finished.usage.prompt_tokens == events[0].prompt_tokens
    assert finished.timing.ttft_s > 0
    # Earlier tests on this engine share the chat template's system prompt: a prefix may be reused.
    assert finished.cache.source in {"cold", "hot"}
    assert finished.usage.cached_tokens == finished.cache.reused_tokens < finished.usage.prompt_tokens


def test_greedy_output_matches_bare_mlx_lm(default_engine):
    request = ask("Write one sentence about the sea.", max_tokens=32)
    finished = default_engine.generate(request)
    assert finished.text == bare_mlx_lm_text(default_engine, request)


def test_max_tokens_is_respected(tiny_engine):
    finished = tiny_engine.generate(ask("hello", max_tokens=7))
    assert finished.finish_reason == "length"
    assert finished.usage.completion_tokens == 7


def test_stop_sequence_spanning_tokens_is_cut_and_not_returned(default_engine):
    full = default_engine.generate(ask("Count from 1 to 30, separated by commas.", max_tokens=60)).text
    stop = full[12:17]
    assert len(stop) == 5 and full.find(stop) == 12
    events, chunks, finished = collect(
        default_engine, ask("Count from 1 to 30, separated by commas.", max_tokens=60, stop=[stop])
    )
    assert finished.finish_reason == "stop_sequence"
    assert finished.stop_sequence == stop
    assert finished.text == full[:12]
    assert "".join(chunks) == full[:12]


def test_stop_sequence_that_never_appears_changes_nothing(default_engine):
    request = ask("Say hello.", max_tokens=16)
    plain = default_engine.generate(request).text
    stopped = default_engine.generate(ask("Say hello.", max_tokens=16, stop=["\u2603never"]))
    assert stopped.text == plain


def test_unicode_streams_as_whole_characters(default_engine):
    text = "Répète exactement: « café, naïve, 東京, 😀 »"
    events, chunks, finished = collect(default_engine, ask(text, max_tokens=40))
    assert "".join(chunks) == finished.text
    assert "\ufffd" not in finished.text


def test_max_tokens_inside_a_character_leaves_it_out(default_engine):
    """A character made of several tokens and cut by max_tokens is left out, not ended with U+FFFD:
    in a batch (turns submitted together) and alone."""

    def request(max_tokens):
        prompt = "Write three emoji about the sea, like 🌊🐠🐚, and the word 東京."
        return ask(prompt, max_tokens=max_tokens)

    full = default_engine.generate(request(16)).text
    handles = [default_engine.submit(request(k)) for k in range(1, 13)]
    texts = [handle.result().text for handle in handles]
    assert all(full.startswith(text) and not text.endswith("\ufffd") for text in texts), (full, texts)
    cut = [k for k in range(2, 13) if texts[k - 1] == texts[k - 2]]
    assert cut, f"no character of {full!r} took two tokens: the test needs another prompt"
    assert default_engine.generate(request(cut[0])).text == texts[cut[0] - 1]


def test_random_tokens_never_split_a_character_across_chunks(tiny_engine):
    # Random weights emit arbitrary byte-level tokens, including pieces of multi-byte characters.
    for seed in range(3):
        request = GenerationRequest(
            messages=[ChatMessage(role="user", content="x")],
            max_tokens=64,
            sampling=SamplingParams(temperature=1.0, seed=seed),
        )
        events, chunks, finished = collect(tiny_engine, request)
        assert "".join(chunks) == finished.text
        assert sum(chunk.count("\ufffd") for chunk in chunks) == finished.text.count("\ufffd")


def test_seed_makes_sampling_reproducible(tiny_engine):
    def sample(seed):
        return tiny_engine.generate(
            GenerationRequest(
                messages=[ChatMessage(role="user", content="x")],
                max_tokens=16,
                sampling=SamplingParams(temperature=1.0, seed=seed),
            )
        ).text

    assert sample(7) == sample(7)


def test_cancel_stops_within_a_token(tiny_engine):
    handle = tiny_engine.submit(ask("hello", max_tokens=400))
    seen = 0
    for event in handle.events():
        if isinstance(event, TurnChunk):
            seen += 1
            if seen == 3:
                handle.cancel()
        if isinstance(event, TurnFinished):
            finished = event
    assert finished.finish_reason == "cancelled"
    assert finished.usage.completion_tokens < 10


def test_empty_message_is_rejected():
    with pytest.raises(ValidationError, match="empty"):
        ask("   ")


def test_context_overflow_names_the_token_counts(tiny_engine):
    with pytest.raises(RequestError, match=r"prompt is too long: \d+ tokens > 511 maximum"):
        tiny_engine.generate(ask("word " * 600))


def test_requests_from_many_threads_are_all_served(tiny_engine):
    results = {}

    def worker(index):
        results[index] = tiny_engine.generate(ask(f"thread {index}", max_tokens=5))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(result.usage.completion_tokens == 5 for result in results.values())
