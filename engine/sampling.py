"""How a turn samples: the settings it runs with (the request's, then the model's defaults, then the
engine's), mlx-lm's sampling chain (shared by requests with the same settings, or with a random key of
its own for a seeded request, so its tokens do not depend on what else shares its batch) and its logits
processors (repetition penalties, an end-of-turn ban, a grammar)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import ValidationError

from engine.requests import SamplingParams

log = logging.getLogger(__name__)

# What a request gets for a value that neither it nor the model sets. 0.7, not the APIs' documented 1.0,
# which makes small local models ramble; penalties are off.
ENGINE_DEFAULTS = SamplingParams(
    temperature=0.7,
    top_p=1.0,
    top_k=0,
    min_p=0.0,
    repetition_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    penalty_context_tokens=64,
)
# The values a model's generation_config.json may set (Hugging Face's names are ours).
GENERATION_CONFIG_VALUES = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclass(frozen=True)
class KnownFamily:
    """Defaults published for a model family whose files carry none (a GGUF has no generation_config)."""

    key: str  # found in a model's file or repo name, lower-cased, letters and digits only
    values: dict
    source: str


KNOWN_FAMILIES = (
    # The model card's example: generate(..., temperature=0.2, top_p=0.9, do_sample=True).
    KnownFamily("smollm2", {"temperature": 0.2, "top_p": 0.9}, "SmolLM2 model card"),
    # generation_config.json sets top_k 64 and top_p 0.95; the model card adds temperature 1.0.
    KnownFamily("gemma3", {"temperature": 1.0, "top_k": 64, "top_p": 0.95}, "Gemma 3 model card and generation_config"),
)


def model_sampling_defaults(model_dir: Path, names: Iterable[str]) -> tuple[SamplingParams, str]:
    """The sampling values a model serves requests with where they set none, and where they come from:
    its generation_config.json, else the known defaults of a family one of `names` (file names, a repo
    id) belongs to, else ENGINE_DEFAULTS; value by value."""
    found: dict[str, tuple[object, str]] = {}
    for name, value in _generation_config(model_dir).items():
        found[name] = (value, "generation_config.json")
    family = known_family(names)
    for name, value in (family.values if family else {}).items():
        found.setdefault(name, (value, family.source))
    defaults = ENGINE_DEFAULTS.model_copy(update={name: value for name, (value, _) in found.items()})
    by_source: dict[str, list[str]] = {}
    for name, (_, source) in found.items():
        by_source.setdefault(source, []).append(name)
    parts = [f"{source} ({', '.join(names)})" for source, names in by_source.items()]
    return defaults, "; ".join([*parts, "engine defaults (the rest)" if parts else "engine defaults"])


def known_family(names: Iterable[str]) -> KnownFamily | None:
    for name in names:
        plain = re.sub(r"[^a-z0-9]", "", Path(name).name.lower())
        for family in KNOWN_FAMILIES:
            if family.key in plain:
                return family
    return None


def _generation_config(model_dir: Path) -> dict:
    """The sampling values of `model_dir`/generation_config.json that are valid here (`do_sample` is
    not read: engines that serve chat sample whatever it says, and so does this one)."""
    try:
        config = json.loads((model_dir / "generation_config.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s/generation_config.json: %s", model_dir, exc)
        return {}
    values = {}
    for name in GENERATION_CONFIG_VALUES:
        if name in config and config[name] is not None:
            try:
                values[name] = getattr(SamplingParams(**{name: config[name]}), name)
            except ValidationError:
                log.warning("ignoring %s=%r in %s/generation_config.json", name, config[name], model_dir)
    return values


def request_sampler(params: SamplingParams):
    """The sampler for a turn's effective settings (any left unset take ENGINE_DEFAULTS)."""
    params = params.over(ENGINE_DEFAULTS)
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

    if vocab_size and (params.top_k or 0) >= vocab_size:
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
    """A turn's logits processors, for its effective settings: repetition penalties, an end-of-turn ban,
    and the grammar of a constrained turn (a bad schema raises RequestError here, before the turn starts)."""
    from engine.tools.grammar import constraint_processor

    processors = penalty_processors(request.sampling)
    if request.sampling.ignore_eos:
        processors.append(ban_tokens(loaded.tokenizer.eos_token_ids))
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


def penalty_processors(params: SamplingParams) -> list:
    """mlx-lm's repetition, presence and frequency penalties for `params` (none when they are off),
    as one processor over the turn's answer."""
    from mlx_lm.sample_utils import make_logits_processors

    params = params.over(ENGINE_DEFAULTS)
    size = params.penalty_context_tokens
    penalties = make_logits_processors(
        repetition_penalty=None if params.repetition_penalty == 1.0 else params.repetition_penalty,
        repetition_context_size=size,
        presence_penalty=params.presence_penalty or None,
        presence_context_size=size,
        frequency_penalty=params.frequency_penalty or None,
        frequency_context_size=size,
    )
    return [over_the_answer(penalties)] if penalties else []


def over_the_answer(processors: list):
    """A processor that applies `processors` to the tokens this turn generated so far. Both generating
    paths hand processors every token they fed the model this turn: the prompt's uncached part (so how
    much of the prompt they would see depends on the cache), then the answer. Each call samples one
    token, so the answer is the last `generated` of them."""
    generated = 0

    def processor(tokens, logits):
        nonlocal generated
        if generated:
            answer = tokens[-generated:]
            for penalty in processors:
                logits = penalty(answer, logits)
        generated += 1
        return logits

    return processor
