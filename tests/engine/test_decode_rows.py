"""engine/mlx_lm_ext/decode_rows.py on a tiny random Llama: the decode steps of a left-padded batch
attend row by row, over each row's own keys and without a mask, and compute what the masked attention
computes; prompt chunks and unpadded batches keep their masks; a model whose attention does not hand
the cache's mask to MLX's fused attention is refused."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models import llama
from mlx_lm.models.cache import BatchKVCache

from engine.backend import Backend, CudaBackend, attention_paths, current_backend
from engine.mlx_lm_ext import attention, decode_rows, masks
from engine.settings import Settings
from tests.conftest import TINY_LLAMA
from tests.engine.test_batch_generator import LeanBatchGenerator, run


@pytest.fixture(scope="module")
def model():
    masks.install()
    mx.random.seed(7)
    built = llama.Model(llama.ModelArgs.from_dict({**TINY_LLAMA, "vocab_size": 512}))
    mx.eval(built.parameters())
    return built


@pytest.fixture
def attended(monkeypatch):
    """The (queries, keys) shapes of each fused attention call and whether it had a mask, during the test."""
    calls = []
    real = attention._mlx_sdpa

    def spying(queries, keys, values, *, scale, mask=None, **kwargs):
        calls.append((queries.shape[0], keys.shape[2], mask is not None))
        return real(queries, keys, values, scale=scale, mask=mask, **kwargs)

    monkeypatch.setattr(attention, "_mlx_sdpa", spying)
    monkeypatch.setattr(decode_rows.switch, "on", decode_rows.switch.on)  # restored after the test
    return calls


def steps(model, enabled: bool) -> list:
    """Logits of a batch of two left-padded by 3: a 40-token prompt, two decode steps, a chunk of 5
    tokens and one more decode step."""
    decode_rows.switch.on = enabled
    caches = [BatchKVCache([3, 0]) for _ in model.layers]
    outputs = [model(mx.array([[0, 0, 0, *range(1, 38)], list(range(41, 81))]), cache=caches)]
    for tokens in ([[4], [5]], [[6], [7]], [[8, 9, 10, 11, 12], [13, 14, 15, 16, 17]], [[18], [19]]):
        outputs.append(model(mx.array(tokens), cache=caches))
    mx.eval(outputs)
    return outputs


def test_padded_decode_steps_attend_row_by_row_and_compute_the_same_logits(model, attended):
    masked = steps(model, enabled=False)
    masked_calls = list(attended)
    attended.clear()
    by_rows = steps(model, enabled=True)
    for a, b in zip(masked, by_rows, strict=True):
        assert mx.allclose(a, b, atol=1e-4, rtol=1e-4).item()
    layers = len(model.layers)
    # Masked: one masked call per layer and step
    assert masked_calls == [(2, n, True) for n in (40, 41, 42, 47, 48) for _ in range(layers)]
    # By rows: the prompt and the chunk keep their masks; each decode step is a call per row, without a
    # mask, over the row's keys from its first real token (row 0 has 3 padded positions)
    decode = lambda n: [(1, n - 3, False), (1, n, False)]  # noqa: E731
    assert attended == [
        *[(2, 40, True)] * layers,
        *decode(41) * layers,
        *decode(42) * layers,
        *[(2, 47, True)] * layers,
        *decode(48) * layers,
    ]


def test_neighbouring_rows_with_the_same_padding_share_a_call(model, attended):
    outputs = []
    for enabled in (False, True):
        decode_rows.switch.on = enabled
        caches = [BatchKVCache([2, 2, 0]) for _ in model.layers]
        prompt = [[0, 0, *range(1, 19)], [0, 0, *range(21, 39)], list(range(41, 61))]
        model(mx.array(prompt), cache=caches)
        attended.clear()
        outputs.append(model(mx.array([[4], [5], [6]]), cache=caches))
    assert mx.allclose(outputs[0], outputs[1], atol=1e-4, rtol=1e-4).item()
    assert attended == [(2, 19, False), (1, 21, False)] * len(model.layers)


def test_an_unpadded_batch_keeps_the_fused_attention_without_a_mask(model, attended):
    decode_rows.switch.on = True
    caches = [BatchKVCache([0, 0]) for _ in model.layers]
    model(mx.array([list(range(1, 21)), list(range(21, 41))]), cache=caches)
    attended.clear()
    mx.eval(model(mx.array([[4], [5]]), cache=caches))
    assert attended == [(2, 21, False)] * len(model.layers)


def test_greedy_tokens_are_the_same_by_rows_while_sequences_join_and_leave(model, attended):
    prompt = lambda seed, n: [(seed * 31 + 7 * i) % 500 + 1 for i in range(n)]  # noqa: E731
    plan = {
        0: {"alone first": (prompt(1, 40), 12, None)},
        3: {"with history": (prompt(2, 9), 20, prompt(3, 300)), "short": (prompt(4, 5), 3, None)},
        9: {"late": (prompt(5, 70), 8, prompt(6, 50))},
        30: {"lone resume": (prompt(7, 6), 10, prompt(8, 400))},
    }
    decode_rows.switch.on = False
    masked = run(LeanBatchGenerator, model, plan)
    attended.clear()
    decode_rows.switch.on = True
    assert run(LeanBatchGenerator, model, plan) == masked
    assert any(batch == 1 and not has_mask for batch, _, has_mask in attended)  # rows were split


def test_a_model_that_builds_its_own_mask_is_refused(model, attended, monkeypatch):
    assert decode_rows.switch.safe_for(model)
    assert decode_rows.switch.enable(model, True) and not decode_rows.switch.enable(model, False)

    # An attention that turns the mask it is given into an additive one before calling MLX
    def additive(queries, keys, values, cache, scale, mask, sinks=None):
        mask = mx.where(mask, 0.0, -1e9) if isinstance(mask, mx.array) else mask + 0.0
        return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)

    monkeypatch.setattr(llama, "scaled_dot_product_attention", additive)
    assert not decode_rows.switch.safe_for(model)
    assert not decode_rows.switch.enable(model, True)


def test_the_setting_wins_over_the_backends_choice(tmp_path):
    rows = lambda **kwargs: attention_paths(Settings(data_dir=tmp_path, **kwargs)).decode_rows  # noqa: E731
    assert rows(mlx_decode_rows=True)
    assert not rows(mlx_decode_rows=False)
    assert rows() == current_backend().decode_rows
    # CUDA splits the rows; Metal's fused kernel takes the mask, and the CPU's attention is the unfused
    # one either way
    assert CudaBackend.decode_rows and not Backend.decode_rows
    if current_backend().name != "cuda":
        assert not current_backend().decode_rows
