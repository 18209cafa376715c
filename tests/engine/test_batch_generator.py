"""engine/mlx_lm_ext/batch_generator.py on a tiny random Llama: the same greedy tokens as mlx-lm's BatchGenerator
while sequences join and leave, on the CPU the first token from the pass that reads the prompt's end
and each token reported right after its own forward pass, and a lone resumed cache written in place
instead of copied."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.generate import BatchGenerator
from mlx_lm.models import llama
from mlx_lm.models.cache import KVCache, make_prompt_cache

from engine.backend import current_backend
from engine.mlx_lm_ext import WRITTEN_FOR, make_batch_generator
from engine.mlx_lm_ext.batch_generator import LeanBatchGenerator as _Lean
from tests.conftest import TINY_LLAMA

# Tokens below 512 only: a small vocabulary keeps every forward pass cheap.
CONFIG = {**TINY_LLAMA, "vocab_size": 512}
# The default device: the CPU here and in CI, the GPU on a machine that has one (GPUs keep mlx-lm's
# order of passes and tokens; the rest holds on both).
STREAM = mx.default_stream(mx.default_device())
ON_CPU = STREAM.device == mx.cpu


def LeanBatchGenerator(*args, **kwargs):  # noqa: N802 - stands for the class, as the engine's backend sets it up
    return _Lean(*args, inline_first_token=current_backend().inline_first_token, **kwargs)


@pytest.fixture(scope="module")
def model():
    mx.random.seed(3)
    built = llama.Model(llama.ModelArgs.from_dict(CONFIG))
    mx.eval(built.parameters())
    return built


class Counting:
    """A model (or its trunk, `model.model`) that counts forward passes in a shared tally."""

    def __init__(self, inner, tally: list[int] | None = None):
        self.inner, self.tally = inner, tally if tally is not None else [0]

    @property
    def calls(self) -> int:
        return self.tally[0]

    def __call__(self, *args, **kwargs):
        self.tally[0] += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        value = getattr(self.inner, name)
        return Counting(value, self.tally) if name == "model" else value


def history(model, tokens: list[int]) -> list:
    cache = make_prompt_cache(model)
    model(mx.array([tokens]), cache=cache)
    mx.eval([c.state for c in cache])
    return cache


def run(generator_class, model, plan) -> dict[str, list[int]]:
    """Greedy tokens per sequence; `plan` maps a step number to the (prompt, max_tokens, history)
    sequences inserted before that step."""
    generator = generator_class(model, max_tokens=1, prefill_step_size=16, stream=STREAM)
    names, tokens, finished = {}, {}, set()
    step = 0
    while step <= max(plan) or len(finished) < len(names):
        for name, (prompt, max_tokens, past) in plan.get(step, {}).items():
            caches = [history(model, past)] if past else None
            (uid,) = generator.insert([prompt], max_tokens=[max_tokens], caches=caches)
            names[uid] = name
        _, responses = generator.next()
        for response in responses:
            tokens.setdefault(names[response.uid], []).append(response.token)
            if response.finish_reason:
                finished.add(response.uid)
        step += 1
    generator.close()
    return tokens


def test_greedy_tokens_match_mlx_lm_while_sequences_join_and_leave(model):
    prompt = lambda seed, n: [(seed * 31 + 7 * i) % 500 + 1 for i in range(n)]  # noqa: E731
    plan = {
        0: {"alone first": (prompt(1, 40), 12, None)},
        3: {"with history": (prompt(2, 9), 20, prompt(3, 300)), "short": (prompt(4, 5), 3, None)},
        9: {"late": (prompt(5, 70), 8, prompt(6, 50))},
        30: {"lone resume": (prompt(7, 6), 10, prompt(8, 400))},
    }
    expected = run(BatchGenerator, model, plan)
    assert run(LeanBatchGenerator, model, plan) == expected
    assert {name: len(tokens) for name, tokens in expected.items()} == {
        "alone first": 12,
        "with history": 20,
        "short": 3,
        "late": 8,
        "lone resume": 10,
    }


def passes_before_each_token(generator_class, model) -> list[int]:
    counting = Counting(model)
    generator = generator_class(counting, max_tokens=1, prefill_step_size=64, stream=STREAM)
    counting.tally[0] = 0
    generator.insert([list(range(1, 31))], max_tokens=[4])
    passes_at_token = []
    while len(passes_at_token) < 4:
        _, responses = generator.next()
        passes_at_token.extend(counting.calls for _ in responses)
    generator.close()
    return passes_at_token


def test_each_token_is_reported_after_its_own_forward_pass(model):
    passes = passes_before_each_token(LeanBatchGenerator, model)
    if not ON_CPU:  # a GPU overlaps the extra passes with the reporting: mlx-lm's order is kept
        assert passes == passes_before_each_token(BatchGenerator, model)
        return
    # One pass reads the whole prompt and yields the first token; every later token takes one more.
    # (mlx-lm reads the last prompt token in a pass of its own, and computes one token ahead of what
    # it reports: [3, 4, 5, 6].)
    assert passes == [1, 2, 3, 4]


def test_a_lone_resumed_cache_grows_in_place(model):
    past = history(model, [(5 * i) % 500 + 1 for i in range(6000)])
    cache_bytes = sum(c.nbytes for c in past)
    # Room for the new turn, as the KV memory leaves in the caches it restores.
    for c in past:
        spare = mx.zeros((*c.keys.shape[:2], 256, c.keys.shape[3]))
        c.keys, c.values = mx.concatenate([c.keys, spare], axis=2), mx.concatenate([c.values, spare], axis=2)
    mx.eval([c.state for c in past])
    # Small steps: a step's scores and masks stay far below the cache's size (on a GPU too).
    generator = LeanBatchGenerator(model, max_tokens=1, prefill_step_size=2, stream=STREAM)
    generator.insert([list(range(1, 41))], max_tokens=[8], caches=[past])
    del past
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    finished = None
    while finished is None:
        _, responses = generator.next()
        finished = next((r for r in responses if r.finish_reason), None)
    generator.close()
    # mlx-lm copies a lone cache into the batch, grows the copy, and copies it back out at the end.
    assert mx.get_peak_memory() - before < cache_bytes // 2
    assert isinstance(finished.prompt_cache[0], KVCache)
    # On the CPU the last token is not fed yet (the next turn prefills it); a GPU feeds it ahead.
    assert finished.prompt_cache[0].offset == 6000 + 40 + (7 if ON_CPU else 8)


def test_the_engine_uses_ours_on_the_mlx_lm_it_was_written_for_and_mlx_lms_own_otherwise(model, monkeypatch):
    from importlib import metadata

    from engine import mlx_lm_ext

    assert metadata.version("mlx-lm").startswith(WRITTEN_FOR)  # the pinned version: ours is tested here
    assert isinstance(make_batch_generator(model, inline_first_token=ON_CPU, max_tokens=1, stream=STREAM), _Lean)
    mlx_lm_ext._lean_class.cache_clear()
    monkeypatch.setattr(metadata, "version", lambda name: "0.99.0")
    try:
        fallback = make_batch_generator(model, inline_first_token=ON_CPU, max_tokens=1, stream=STREAM)
        assert type(fallback) is BatchGenerator
        fallback.close()
    finally:
        monkeypatch.undo()
        mlx_lm_ext._lean_class.cache_clear()
