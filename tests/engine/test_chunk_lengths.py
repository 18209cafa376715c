"""engine/mlx_lm_ext/chunk_lengths.py on a tiny random Llama: prompt chunks are padded up to a few
lengths, the model reads only those lengths, and the greedy tokens are the ones of exact lengths while
sequences with and without histories join and leave."""

from __future__ import annotations

import pytest
from mlx_lm.models.cache import BatchKVCache

from engine.backend import attention_paths, current_backend
from engine.mlx_lm_ext import chunk_lengths, decode_rows, masks, prefill_keys
from engine.mlx_lm_ext.batch_generator import LeanBatchGenerator
from engine.settings import Settings
from tests.engine.test_batch_generator import model, run  # noqa: F401 - the module's tiny model fixture


def test_lengths_round_up_to_an_eighth_of_their_power_of_two():
    cases = {1: 1, 2: 32, 5: 32, 32: 32, 33: 64, 82: 96, 130: 160, 300: 320, 700: 704, 1500: 1536, 2000: 2048}
    assert {tokens: chunk_lengths.rounded(tokens, 2048) for tokens in cases} == cases
    # Never past the prefill step, never below the chunk itself
    assert chunk_lengths.rounded(20, 16) == 20 and chunk_lengths.rounded(10, 16) == 16
    lengths = {chunk_lengths.rounded(tokens, 2048) for tokens in range(2, 2049)}
    assert len(lengths) <= 40
    for tokens in range(2, 5000):
        length = chunk_lengths.rounded(tokens, 2048)
        assert tokens <= length <= max(tokens, 2048)
        assert length - tokens < max(chunk_lengths.SMALLEST_UNIT, tokens / 8)


class Lengths:
    """A model that records the number of tokens of each forward pass over batch caches (the histories
    are computed over plain ones)."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __call__(self, inputs, cache=None):
        if cache and isinstance(cache[0], BatchKVCache):
            self.seen.append(inputs.shape[1])
        return self.inner(inputs, cache=cache)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def prompt(seed: int, n: int) -> list[int]:
    return [(seed * 31 + 7 * i) % 500 + 1 for i in range(n)]


PLAN = {
    0: {"alone first": (prompt(1, 45), 12, None)},
    3: {"with history": (prompt(2, 9), 20, prompt(3, 300)), "short": (prompt(4, 5), 3, None)},
    9: {"late": (prompt(5, 70), 8, prompt(6, 50))},
    30: {"lone resume": (prompt(7, 83), 10, prompt(8, 400))},
}


def generate(model, rounded: bool) -> tuple[dict, list[int]]:  # noqa: F811 - the fixture's model
    """Greedy tokens of PLAN with mlx-lm's order of passes (the GPUs'), and the lengths the model read."""
    recording = Lengths(model)

    def generator(inner, **kwargs):
        kwargs["prefill_step_size"] = 64
        return LeanBatchGenerator(inner, inline_first_token=False, rounded_chunks=rounded, **kwargs)

    return run(generator, recording, PLAN), recording.seen


@pytest.mark.parametrize("cuda_paths", [False, True], ids=["alone", "with-padded-keys-and-decode-rows"])
def test_chunks_are_padded_and_compute_the_same_tokens(model, cuda_paths, monkeypatch):  # noqa: F811
    masks.install()
    monkeypatch.setattr(prefill_keys.switch, "on", cuda_paths)
    monkeypatch.setattr(decode_rows.switch, "on", cuda_paths)
    exact, exact_lengths = generate(model, rounded=False)
    padded, padded_lengths = generate(model, rounded=True)
    assert padded == exact
    assert {len(tokens) for tokens in exact.values()} >= {12, 20, 3, 8, 10}
    # Exact chunks meet many lengths; padded ones only 32, 64 (the step) and single decode tokens
    assert len(set(exact_lengths)) > 4
    assert set(padded_lengths) <= {1, 32, 64}
    assert 32 in padded_lengths and 64 in padded_lengths


def test_the_setting_wins_over_the_backends_choice(tmp_path):
    rounded = lambda **kwargs: attention_paths(Settings(data_dir=tmp_path, **kwargs)).rounded_chunks  # noqa: E731
    assert rounded(mlx_rounded_chunks=True)
    assert not rounded(mlx_rounded_chunks=False)
    assert rounded() == current_backend().rounded_chunks
