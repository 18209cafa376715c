"""engine/mlx_lm_ext/prefill_keys.py on a tiny random Llama: short prompt chunks read their keys up to
whole 256-token steps with a mask over the rest and compute what exact key lengths compute; long
chunks and decode steps read exact lengths; a model that ignores the cache's mask is refused."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models import llama
from mlx_lm.models.cache import BatchKVCache

from engine.backend import Backend, CudaBackend, attention_paths, current_backend
from engine.mlx_lm_ext import masks, prefill_keys
from engine.settings import Settings
from tests.conftest import TINY_LLAMA
from tests.engine.test_batch_generator import LeanBatchGenerator, run


@pytest.fixture(scope="module")
def model():
    masks.install()
    mx.random.seed(5)
    built = llama.Model(llama.ModelArgs.from_dict({**TINY_LLAMA, "vocab_size": 512}))
    mx.eval(built.parameters())
    return built


@pytest.fixture
def padded(monkeypatch):
    """Padded keys on for the test (the CPU backend leaves them off), off again after it."""
    monkeypatch.setattr(prefill_keys.switch, "on", True)


def chunks_and_keys(model, enabled: bool) -> tuple[list, list[tuple[int, int]]]:
    """Logits of a left-padded batch of two: a 300-token prompt, then chunks of 20, 7 and 60 tokens each
    followed by a decode step; and (tokens in, keys read) of every layer-0 cache update."""
    reads = []
    real_update = BatchKVCache.update_and_fetch

    def spying(cache, keys, values):
        fetched = real_update(cache, keys, values)
        if cache is caches[0]:
            reads.append((keys.shape[2], fetched[0].shape[2]))
        return fetched

    prefill_keys.switch.on = enabled
    caches = [BatchKVCache([3, 0]) for _ in model.layers]
    BatchKVCache.update_and_fetch = spying
    try:
        model(mx.array([[0, 0, 0, *range(1, 298)], list(range(5, 305))]), cache=caches)
        outputs = []
        for n in (20, 7, 60):
            outputs.append(model(mx.array([list(range(9, 9 + n)), list(range(30, 30 + n))]), cache=caches))
            outputs.append(model(mx.array([[4], [5]]), cache=caches))
        mx.eval(outputs)
    finally:
        BatchKVCache.update_and_fetch = real_update
    return outputs, reads


def test_short_chunks_read_whole_steps_and_compute_the_same_logits(model, padded):
    exact, exact_reads = chunks_and_keys(model, enabled=False)
    padded_out, padded_reads = chunks_and_keys(model, enabled=True)
    for a, b in zip(exact, padded_out, strict=True):
        assert mx.allclose(a, b, atol=1e-4, rtol=1e-4).item()
    # The 300-token prompt (no history) and the decode steps read exact lengths; the chunks whole steps
    assert exact_reads == [(300, 300), (20, 320), (1, 321), (7, 328), (1, 329), (60, 389), (1, 390)]
    assert padded_reads == [(300, 300), (20, 512), (1, 321), (7, 512), (1, 329), (60, 512), (1, 390)]


def test_chunks_of_a_long_prompt_keep_exact_keys(padded):
    """A long prompt's later chunks are short next to their keys too, but their masked scores would be
    large: they read exact lengths; a resumed turn's short chunk after the same history reads whole steps."""
    prefill_keys.install()
    cache = BatchKVCache([0])

    def read(tokens: int) -> int:
        keys = mx.zeros((1, 2, tokens, 8))
        return cache.update_and_fetch(keys, keys)[0].shape[2]

    assert [read(2048) for _ in range(8)] == [2048 * n for n in range(1, 9)]
    assert read(82) == 16640  # 16384 + 82, up to a whole step
    assert read(700) == 17166  # 700 x 17.4k scores: too many to materialise


def test_greedy_tokens_are_the_same_with_padded_keys(model, padded):
    prompt = lambda seed, n: [(seed * 31 + 7 * i) % 500 + 1 for i in range(n)]  # noqa: E731
    plan = {
        0: {"with history": (prompt(2, 9), 12, prompt(3, 300)), "short": (prompt(4, 5), 3, None)},
        4: {"late": (prompt(5, 70), 8, prompt(6, 500))},
        20: {"lone resume": (prompt(7, 30), 10, prompt(8, 400))},
    }
    prefill_keys.switch.on = True
    with_padding = run(LeanBatchGenerator, model, plan)
    prefill_keys.switch.on = False
    assert run(LeanBatchGenerator, model, plan) == with_padding


def test_a_model_that_builds_its_own_mask_is_refused(model, padded, monkeypatch):
    assert prefill_keys.switch.safe_for(model)
    assert prefill_keys.switch.enable(model, True) and not prefill_keys.switch.enable(model, False)
    # The attention gets mlx-lm's exact mask while the keys are padded: it cannot take them
    monkeypatch.setattr(prefill_keys, "padded_mask", lambda cache, tokens, **kwargs: None)
    assert not prefill_keys.switch.safe_for(model)
    assert not prefill_keys.switch.enable(model, True)


def test_the_setting_wins_over_the_backends_choice(tmp_path):
    padded = lambda **kwargs: attention_paths(Settings(data_dir=tmp_path, **kwargs)).padded_prefill_keys  # noqa: E731
    assert padded(mlx_padded_prefill_keys=True)
    assert not padded(mlx_padded_prefill_keys=False)
    assert padded() == current_backend().padded_prefill_keys
    # CUDA pads; Metal and the CPU, whose attention plans nothing per key length, read exact lengths
    assert CudaBackend.padded_prefill_keys and not Backend.padded_prefill_keys
    if current_backend().name != "cuda":
        assert not current_backend().padded_prefill_keys
