"""Samplers for requests: mlx-lm's sampling chain, shared by requests with the same settings, or with a
random key of its own for a seeded request, so its tokens do not depend on what else shares its batch."""

from __future__ import annotations

from functools import lru_cache

from engine.requests import SamplingParams


def request_sampler(params: SamplingParams):
    if params.seed is None or params.temperature == 0:
        return _shared_sampler(params.temperature, params.top_p, params.min_p, params.top_k)
    return SeededSampler(params)


@lru_cache(maxsize=64)
def _shared_sampler(temperature: float, top_p: float, min_p: float, top_k: int):
    # One object per distinct setting, so a batch that shares a setting samples in one call.
    from mlx_lm.sample_utils import make_sampler

    return make_sampler(temp=temperature, top_p=top_p, min_p=min_p, top_k=top_k)


class SeededSampler:
    """mlx-lm's filters (top-p, min-p, top-k) and a categorical draw with this request's own key."""

    def __init__(self, params: SamplingParams):
        import mlx.core as mx
        from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

        self.filters = []
        if 0 < params.top_p < 1.0:
            self.filters.append(lambda logprobs: apply_top_p(logprobs, params.top_p))
        if params.min_p != 0.0:
            self.filters.append(lambda logprobs: apply_min_p(logprobs, params.min_p))
        if params.top_k > 0:
            self.filters.append(lambda logprobs: apply_top_k(logprobs, params.top_k))
        self.inverse_temperature = 1.0 / params.temperature
        self.key = mx.random.key(params.seed)

    def __call__(self, logprobs):
        import mlx.core as mx

        for keep in self.filters:
            logprobs = keep(logprobs)
        self.key, draw = mx.random.split(self.key)
        return mx.random.categorical(logprobs * self.inverse_temperature, key=draw)


def check_sampling(params: SamplingParams, vocab_size: int) -> None:
    """Raise RequestError for settings this model cannot sample with (mlx-lm's top-k needs k below the
    vocabulary size, and fails inside a compiled function otherwise)."""
    from engine.errors import RequestError

    if vocab_size and params.top_k >= vocab_size:
        raise RequestError(f"top_k must be below the model's vocabulary size ({vocab_size}); got {params.top_k}")


def repair_random_state() -> None:
    """After a failed MLX call: a sampler that failed while mx.compile traced it leaves MLX's global random
    key without a value, and every later unseeded draw would fail. Such a key is replaced."""
    import os

    import mlx.core as mx

    try:
        mx.eval(mx.random.state)
    except Exception:  # noqa: BLE001 - any failure to evaluate it means it is broken
        mx.random.seed(int.from_bytes(os.urandom(4), "little"))


def logits_processors(loaded, request) -> list:
    """A turn's logits processors: an end-of-turn ban, and the grammar of a constrained turn (a bad
    schema raises RequestError here, before the turn starts)."""
    from engine.tools.grammar import constraint_processor

    processors = [ban_tokens(loaded.tokenizer.eos_token_ids)] if request.sampling.ignore_eos else []
    constraint = constraint_processor(loaded.tokenizer, request)
    if constraint is not None:
        processors.append(constraint)
    return processors


def ban_tokens(token_ids):
    """A logits processor that never lets `token_ids` be sampled."""
    import mlx.core as mx

    banned = mx.array(sorted(token_ids))

    def processor(tokens, logits):
        logits[:, banned] = -float("inf")
        return logits

    return processor
