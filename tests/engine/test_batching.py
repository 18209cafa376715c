"""Continuous batching on the real default model: same greedy outputs as one at a time, sessions
serialized, cancellation frees a slot, long prefills interleave with decoding and share each step, a full
queue refuses, failures inside the engine fail requests instead of leaving them waiting."""

from __future__ import annotations

import threading
import time

import pytest

from engine.engine import Engine
from engine.errors import EngineBusy, EngineClosed, ModelLoadError
from engine.events import PrefillProgress, TurnChunk, TurnFailed, TurnStarted
from engine.requests import ChatMessage, GenerationRequest, SamplingParams
from engine.settings import Settings
from tests.conftest import ask

pytestmark = pytest.mark.model

PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Count from 1 to 10.",
    "Say hello in Spanish.",
    "What is 2+2?",
    "Write a haiku about the sea.",
    "Who wrote Hamlet?",
    "Give me the name of a fruit.",
]


@pytest.fixture(scope="module")
def sequential_engine(default_engine, data_dir, tmp_path_factory):
    settings = Settings(
        data_dir=data_dir, agent_cache_dir=tmp_path_factory.mktemp("seq-kv"), kv_memory=False, mlx_max_batch_size=1
    )
    with Engine(settings) as running:
        assert not running.batching
        yield running


@pytest.fixture(scope="module")
def batch_engine(default_engine, data_dir, tmp_path_factory):
    settings = Settings(data_dir=data_dir, agent_cache_dir=tmp_path_factory.mktemp("batch-kv"), mlx_max_batch_size=4)
    with Engine(settings) as running:
        assert running.batching
        yield running


def test_eight_concurrent_streams_match_sequential_runs(default_engine, sequential_engine):
    assert default_engine.batching and default_engine.settings.mlx_max_batch_size == 8
    expected = [sequential_engine.generate(ask(p, max_tokens=24)).text for p in PROMPTS]
    handles = [default_engine.submit(ask(p, max_tokens=24)) for p in PROMPTS]
    results = [handle.result() for handle in handles]
    assert [r.text for r in results] == expected
    assert all(r.usage.completion_tokens > 0 for r in results)


def test_turns_of_one_session_run_in_order_and_resume(batch_engine):
    first_messages = [ChatMessage(role="user", content="My name is Ada.")]
    order = []
    first = batch_engine.submit(
        ask("My name is Ada.", max_tokens=8, session_id="serial"),
        on_event=lambda e: order.append(("first", type(e).__name__)),
    )
    second_request = GenerationRequest(
        messages=[
            *first_messages,
            ChatMessage(role="assistant", content="Nice to meet you."),
            ChatMessage(role="user", content="What is my name?"),
        ],
        max_tokens=8,
        sampling=SamplingParams(temperature=0.0),
        session_id="serial",
    )
    second = batch_engine.submit(second_request, on_event=lambda e: order.append(("second", type(e).__name__)))
    first_result = first.result()
    second_result = second.result()
    assert order.index(("first", "TurnFinished")) < order.index(("second", "TurnStarted"))
    assert first_result.usage.completion_tokens > 0
    assert second_result.usage.cached_tokens > 0  # resumed from the first turn's cache


def test_cancel_frees_a_slot(batch_engine):
    long = [batch_engine.submit(ask(f"Write a long story number {i}.", max_tokens=400)) for i in range(4)]
    next(e for e in long[0].events() if isinstance(e, TurnChunk))
    started = threading.Event()
    waiting = batch_engine.submit(
        ask("Hi", max_tokens=4), on_event=lambda e: started.set() if isinstance(e, TurnStarted) else None
    )
    assert not started.wait(1.0)  # four slots busy: it waits
    long[0].cancel()
    assert started.wait(30)  # the freed slot takes it within a step or two
    assert long[0].result().finish_reason == "cancelled"
    assert waiting.result().usage.completion_tokens > 0
    for handle in long[1:]:
        handle.cancel()
        assert handle.result().finish_reason == "cancelled"


def test_long_prefill_does_not_freeze_other_streams(batch_engine):
    timeline = []
    lock = threading.Lock()

    def record(name):
        def on_event(event):
            with lock:
                timeline.append((name, type(event).__name__))

        return on_event

    streaming = batch_engine.submit(ask("Write a long story about a dragon.", max_tokens=200), on_event=record("a"))
    next(e for e in streaming.events() if isinstance(e, TurnChunk))
    long_prompt = "Summarize this text. " + " ".join(f"Sentence {i} talks about topic {i % 17}." for i in range(150))
    heavy = batch_engine.submit(ask(long_prompt, max_tokens=2), on_event=record("b"))
    heavy.result()
    streaming.cancel()
    streaming.result()
    with lock:
        events = list(timeline)
    b_start = events.index(("b", "TurnStarted"))
    b_first = next(i for i, e in enumerate(events) if e == ("b", "TurnChunk") or e == ("b", "TurnFinished"))
    a_during = [e for e in events[b_start:b_first] if e == ("a", "TurnChunk")]
    assert len(a_during) >= 2  # the stream kept going while the long prompt was read in chunks
    assert ("b", "PrefillProgress") in events[b_start:b_first]


def test_a_request_that_fails_to_start_fails_alone(batch_engine):
    """Whatever goes wrong while a request is admitted (here its KV restore raises) fails that request
    with an error event; the engine thread keeps serving the next one."""
    memory = batch_engine.memory

    def broken_restore(session_id, prompt, tenant=""):
        raise RuntimeError("restore went wrong")

    memory.acquire = broken_restore
    try:
        handle = batch_engine.submit(ask("What is 2+2?", max_tokens=4, session_id="unlucky"))
        last = list(handle.events(timeout=120))[-1]  # a dead engine thread would never answer
    finally:
        del memory.acquire
    assert isinstance(last, TurnFailed) and "restore went wrong" in last.message and last.kind == "internal"
    assert batch_engine.generate(ask("What is 2+2?", max_tokens=4, session_id="unlucky")).text


def test_time_to_first_token_counts_rendering_the_prompt(batch_engine, monkeypatch):
    """A batched turn's TTFT starts where a turn run alone starts it: before its conversation is
    rendered and tokenized (a long history takes milliseconds), not after. Rendering is slowed down
    here to make that visible."""
    from engine import prompt, scheduler, turn

    def slow_render(loaded, request):
        time.sleep(1.0)
        return prompt.render_prompt(loaded, request)

    # The scheduler renders a waiting request's prompt; a turn renders its own if it was not.
    monkeypatch.setattr(scheduler, "render_prompt", slow_render)
    monkeypatch.setattr(turn, "render_prompt", slow_render)
    done = batch_engine.generate(ask("What is 2+2?", max_tokens=2, session_id="timed"))
    assert done.timing.ttft_s >= 1.0


def test_an_engine_thread_that_fails_fails_its_requests_and_refuses_more(data_dir, tmp_path):
    """A bug that escapes the engine loop (here admission itself raises): the running request fails
    instead of waiting forever, the engine says why, and new requests are refused with that reason."""
    settings = Settings(data_dir=data_dir, agent_cache_dir=tmp_path / "kv", mlx_max_batch_size=2)
    with Engine(settings) as running:
        handle = running.submit(ask("Tell me a long story about a lighthouse.", max_tokens=400))
        events = handle.events(timeout=120)
        assert isinstance(next(events), TurnStarted)

        def broken_admit():
            raise RuntimeError("admission went wrong")

        running._scheduler.admit = broken_admit
        last = list(events)[-1]
        assert isinstance(last, TurnFailed) and "internal error" in last.message
        assert running.state == "failed" and "internal error" in running.load_error
        with pytest.raises(EngineClosed, match="internal error"):
            running.submit(ask("Still there?"))


def test_an_engine_that_fails_to_start_says_why_and_fails_requests(data_dir, tmp_path, monkeypatch):
    """Anything unexpected while the engine starts (here its KV memory raises) fails the start with the
    reason; a request submitted anyway fails at once instead of waiting for a thread that is gone."""

    def broken_memory(*args, **kwargs):
        raise RuntimeError("the memory went wrong")

    monkeypatch.setattr("engine.kv.memory.KVMemory.__init__", broken_memory)
    engine = Engine(Settings(data_dir=data_dir, agent_cache_dir=tmp_path / "kv"))
    try:
        with pytest.raises(ModelLoadError, match="the memory went wrong"):
            engine.start()
        assert engine.state == "failed" and "the memory went wrong" in engine.load_error
        last = list(engine.submit(ask("Still there?")).events(timeout=60))[-1]
        assert isinstance(last, TurnFailed) and "the memory went wrong" in last.message
    finally:
        engine.close()


def test_full_queue_refuses(data_dir, default_engine, tmp_path):
    settings = Settings(
        data_dir=data_dir, agent_cache_dir=tmp_path / "kv", mlx_max_batch_size=2, max_queue=2, kv_memory=False
    )
    with Engine(settings) as engine:
        handles = []
        with pytest.raises(EngineBusy, match="SEMANTIC_MAX_QUEUE"):
            for i in range(20):
                handles.append(engine.submit(ask(f"Story {i}", max_tokens=200)))
        assert 2 <= len(handles) < 20
        for handle in handles:
            handle.cancel()
        for handle in handles:  # every accepted request ends: finished (cancelled) or never started
            assert type(list(handle.events())[-1]).__name__ in ("TurnFinished", "TurnFailed")


def test_a_seeded_request_samples_the_same_alone_or_in_a_batch(data_dir, tmp_path):
    settings = Settings(data_dir=data_dir, agent_cache_dir=tmp_path / "kv", kv_memory=False, mlx_max_batch_size=8)

    def sampled(prompt: str, seed: int | None) -> GenerationRequest:
        return ask(prompt, max_tokens=24).model_copy(update={"sampling": SamplingParams(temperature=1.0, seed=seed)})

    with Engine(settings) as running:
        alone = running.generate(sampled("Tell me a story about a cat.", 7)).text
        others = [running.submit(sampled(p, None)) for p in PROMPTS[:3]]
        together = running.submit(sampled("Tell me a story about a cat.", 7))
        other_seed = running.submit(sampled("Tell me a story about a cat.", 8))
        assert together.result().text == alone
        assert other_seed.result().text != alone
        assert all(h.result().usage.completion_tokens > 0 for h in others)


def test_agents_arriving_together_compute_their_shared_prefix_once(default_engine, sequential_engine, tmp_path):
    """Four agents with one long system prompt, submitted at once: one prefills the prefix, the others
    wait for that prefill and restore it; every answer is what a cold one-at-a-time run says."""
    system = "You are the harbour archivist. " + "Ledgers list grain, salt and timber by week. " * 60
    conversations = [
        [ChatMessage(role="system", content=system), ChatMessage(role="user", content=question)]
        for question in ("Which goods are listed?", "Who keeps the ledgers?", "Name a week.", "Is salt listed?")
    ]
    settings = Settings(
        data_dir=default_engine.settings.data_dir, agent_cache_dir=tmp_path / "kv", mlx_max_batch_size=8
    )
    with Engine(settings) as running:
        handles = [
            running.submit(GenerationRequest(messages=m, max_tokens=12, sampling=SamplingParams(temperature=0.0)))
            for m in conversations
        ]
        results = [handle.result() for handle in handles]
        running.check_integrity()
    expected = [
        sequential_engine.generate(
            GenerationRequest(messages=m, max_tokens=12, sampling=SamplingParams(temperature=0.0))
        ).text
        for m in conversations
    ]
    prefix_tokens = results[0].usage.prompt_tokens - 20
    assert results[0].usage.cached_tokens == 0
    assert all(r.cache.source == "hot" and r.usage.cached_tokens >= prefix_tokens for r in results[1:])
    assert [r.text for r in results] == expected


def test_prompts_prefilled_together_share_each_step(tiny_model_dir, data_dir, tmp_path):
    """Four long prompts arriving together read a quarter of a chunk each per step, so one step (and
    every other stream's next token) waits for about one chunk of prefill, not four."""
    chunk = 512  # a quarter of it is above the 64-token floor a prompt always gets
    settings = Settings(
        data_dir=data_dir,
        mlx_model_id=str(tiny_model_dir),
        agent_cache_dir=tmp_path / "kv",
        kv_memory=False,
        mlx_prefill_step_size=chunk,
    )
    done_tokens: dict[int, list[int]] = {}
    lock = threading.Lock()

    def record(index):
        def on_event(event):
            if isinstance(event, PrefillProgress):
                with lock:
                    done_tokens.setdefault(index, []).append(event.done_tokens)

        return on_event

    def submit_four(eng):
        return [
            eng.submit(ask(f"Topic {i}. " + " ".join(f"fact {j} about {i}" for j in range(60)), 1), on_event=record(i))
            for i in range(4)
        ]

    with Engine(settings) as eng:
        # Submitted from the engine thread, so all four are queued before it takes the next job: they do
        # arrive together (from here the first could start alone on a loaded machine).
        handles = eng.call(submit_four)
        for handle in handles:
            assert handle.result().usage.prompt_tokens > 3 * chunk // 4
    increments = [b - a for seen in done_tokens.values() for a, b in zip(seen, seen[1:], strict=False)]
    assert len(done_tokens) == 4 and increments
    assert max(increments) <= chunk
    assert sorted(increments)[len(increments) // 2] <= chunk // 4  # most steps were shared four ways


def test_top_k_beyond_the_vocabulary_is_refused_and_sampling_goes_on(batch_engine):
    """mlx-lm's compiled top-k fails for k ≥ the vocabulary and, failing mid-trace, broke MLX's global
    random key for every later unseeded request: such a k is a request error now."""
    from engine.errors import RequestError

    sampled = GenerationRequest(
        messages=[ChatMessage(role="user", content="Hi")], max_tokens=3, sampling=SamplingParams(temperature=0.7)
    )
    too_many = sampled.model_copy(update={"sampling": SamplingParams(temperature=0.7, top_k=100_000)})
    with pytest.raises(RequestError, match="top_k must be below the model's vocabulary size"):
        batch_engine.generate(too_many)
    assert batch_engine.generate(sampled).usage.completion_tokens > 0


def test_a_failed_mlx_call_cannot_break_the_random_state(batch_engine):
    import mlx.core as mx
    from mlx_lm.sample_utils import make_sampler

    def failing_sampler(engine):
        make_sampler(temp=0.7, top_k=1_000_000)(mx.zeros((1, 49152)))

    with pytest.raises(ValueError, match="top_k"):
        batch_engine.call(failing_sampler)
    sampled = GenerationRequest(
        messages=[ChatMessage(role="user", content="Hi")], max_tokens=3, sampling=SamplingParams(temperature=0.7)
    )
    assert batch_engine.generate(sampled).usage.completion_tokens > 0


def test_a_failing_sampling_step_fails_only_its_own_request(batch_engine, monkeypatch):
    """A request whose own logits processor fails (a grammar, say) leaves the batch with its error; the
    others running beside it finish as they would alone."""
    from engine import turn

    real = turn.logits_processors

    def with_a_failing_grammar(loaded, request):
        processors = real(loaded, request)
        if request.request_id == "req_bad":
            calls = []

            def grammar(tokens, logits):
                calls.append(1)
                if len(calls) > 5:
                    raise ValueError("grammar error at token 5")
                return logits

            processors.append(grammar)
        return processors

    good = [ask(f"Count to {n}.", max_tokens=24) for n in (5, 7)]
    alone = [batch_engine.generate(request).text for request in good]
    monkeypatch.setattr(turn, "logits_processors", with_a_failing_grammar)
    bad = ask("Count to 9.", max_tokens=24).model_copy(update={"request_id": "req_bad"})
    handles = [batch_engine.submit(request) for request in [good[0], bad, good[1]]]
    results = [list(handle.events(timeout=120))[-1] for handle in handles]
    assert isinstance(results[1], TurnFailed) and "grammar error at token 5" in results[1].message
    assert [results[0].text, results[2].text] == alone
    batch_engine.check_integrity()


def test_a_request_without_a_session_reads_what_another_session_holds(batch_engine):
    """A stateless client resending a conversation that a session holds hot reuses that session's
    cache, not the few template tokens its own last anonymous request shared with it."""
    history = [ChatMessage(role="user", content="Name the planets of the solar system in order, please.")]
    held = batch_engine.generate(
        GenerationRequest(
            messages=history, max_tokens=16, sampling=SamplingParams(temperature=0.0), session_id="holder"
        )
    )
    batch_engine.generate(ask("Hi", max_tokens=2))  # the anonymous slot now holds another prompt
    resent = [*history, ChatMessage(role="assistant", content=held.text), ChatMessage(role="user", content="Thanks!")]
    again = batch_engine.generate(
        GenerationRequest(messages=resent, max_tokens=2, sampling=SamplingParams(temperature=0.0))
    )
    assert again.usage.cached_tokens >= held.usage.prompt_tokens
    batch_engine.check_integrity()
