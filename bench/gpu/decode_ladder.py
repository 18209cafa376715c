"""Where one agent's decode time goes, layer by layer: the same prompt decoded by a bare pipelined greedy
loop over mlx-lm's KVCache, the same loop over its BatchKVCache (array offsets, the engine's masks), by
mlx-lm's `generate_step` (what bench/generate.py's bare side runs), by mlx-lm's BatchGenerator, by the
engine's batch generator with the backend's attention paths (engine/mlx_lm_ext), and by the engine
(engine thread, events read on this thread). Each rung adds a layer, so the step where tok/s drops
names the layer that costs it. mlx-lm's BatchGenerator runs with the engine's masks too (they are
installed on mlx-lm's batch cache class): a batch of one gets the fused attention either way.
Milliseconds per token, the median and the least of `--repeats` runs of `--tokens` tokens each, and the
time to the first token of the `--prompt` tokens (read in one pass); the rungs alternate within a
repeat so that drift hits all alike.

    python bench/gpu/decode_ladder.py --model DIR [--prompt 500 --tokens 128 --repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine  # noqa: E402

engine.setup_process()  # before MLX is imported

from bench_settings import bench_settings  # noqa: E402

RUNGS = ("loop_kv_cache", "loop_batch_kv_cache", "generate_step", "mlx_lm_batch", "engine_batch", "engine")


def user_text(tokenizer, length: int) -> str:
    """A user message of about `length` tokens."""
    sentence = "The keeper climbed the stairs of the lighthouse and watched the ships. "
    return sentence * max(1, length // len(tokenizer.encode(sentence, add_special_tokens=False)))


def by_generate_step(model, tokenizer, ids, tokens, stream) -> tuple[float, float]:
    """(seconds to the first token, seconds from it to the last) through mlx-lm's generate_step."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    from engine.sampling import ban_tokens

    started, first = time.perf_counter(), None
    with mx.stream(stream):
        steps = generate_step(
            mx.array(ids), model, max_tokens=tokens, logits_processors=[ban_tokens(tokenizer.eos_token_ids)]
        )
        for token, _ in steps:
            int(token)
            first = first or time.perf_counter()
    return first - started, time.perf_counter() - first


def by_loop(model, ids, tokens, stream, caches) -> tuple[float, float]:
    """(seconds to the first token, seconds from it to the last) through the least a pipelined greedy
    decode needs: the model over `caches` (mlx-lm's KVCache or BatchKVCache, one per layer), argmax, the
    next step queued before the current token is read."""
    import mlx.core as mx

    started, first = time.perf_counter(), None
    with mx.stream(stream):
        token = mx.argmax(model(mx.array([ids]), cache=caches)[:, -1, :], axis=-1)
        mx.async_eval(token)
        for _ in range(tokens):
            following = mx.argmax(model(token[:, None], cache=caches)[:, -1, :], axis=-1)
            mx.async_eval(following)
            token.item()
            first = first or time.perf_counter()
            token = following
    return first - started, time.perf_counter() - first


def by_generator(generator, tokenizer, ids, tokens) -> tuple[float, float]:
    """(seconds to the first token, seconds from it to the last) through a BatchGenerator running one
    sequence."""
    from engine.sampling import ban_tokens

    started = time.perf_counter()
    generator.insert([ids], max_tokens=[tokens], logits_processors=[[ban_tokens(tokenizer.eos_token_ids)]])
    first = None
    done = False
    while not done:
        _, generated = generator.next()
        for response in generated:
            first = first or time.perf_counter()
            done = done or response.finish_reason is not None
    return first - started, time.perf_counter() - first


def engine_turn(eng, text: str, tokens: int):
    """One turn of the user message `text` through the engine: its TurnFinished."""
    from engine.events import TurnFailed, TurnFinished
    from engine.requests import ChatMessage, GenerationRequest, SamplingParams

    request = GenerationRequest(
        messages=[ChatMessage(role="user", content=text)],
        max_tokens=tokens,
        sampling=SamplingParams(temperature=0.0, ignore_eos=True),
    )
    for event in eng.submit(request).events():
        if isinstance(event, TurnFinished):
            return event
        if isinstance(event, TurnFailed):
            raise RuntimeError(event.message)
    raise RuntimeError("turn did not finish")


def by_engine(eng, text: str, tokens: int) -> tuple[float, float]:
    """The engine's own times for one turn (its time to first token counts from rendering the prompt)."""
    timing = engine_turn(eng, text, tokens).timing
    return timing.ttft_s, timing.total_s - timing.ttft_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", type=int, default=500, help="prompt tokens")
    parser.add_argument("--tokens", type=int, default=128, help="tokens decoded per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.models.cache import BatchKVCache, make_prompt_cache
    from mlx_lm.utils import load

    from engine.backend import attention_paths, current_backend
    from engine.engine import Engine
    from engine.mlx_lm_ext import make_batch_generator

    settings = bench_settings(None, mlx_model_id=args.model, kv_memory=False)
    with Engine(settings) as eng:
        backend = eng.info.backend
        model, tokenizer = load(eng.info.path)
        if backend == "cpu":
            model.set_dtype(mx.float32)
        text = user_text(tokenizer, args.prompt)
        ids = engine_turn(eng, text, 1).prompt_token_ids  # the engine's prompt, for every rung
        stream = mx.new_stream(mx.default_device())
        # The engine made its generator already: mlx-lm's batch caches build the engine's masks from here
        # on (engine/mlx_lm_ext/masks.py), this plain generator's too.
        plain = BatchGenerator(model, stream=stream)
        lean = make_batch_generator(
            model,
            inline_first_token=current_backend().inline_first_token,
            attention=attention_paths(settings),
            stream=stream,
        )
        runs = {
            "loop_kv_cache": lambda: by_loop(model, ids, args.tokens, stream, make_prompt_cache(model)),
            "loop_batch_kv_cache": lambda: by_loop(
                model, ids, args.tokens, stream, [BatchKVCache([0]) for _ in make_prompt_cache(model)]
            ),
            "generate_step": lambda: by_generate_step(model, tokenizer, ids, args.tokens, stream),
            "mlx_lm_batch": lambda: by_generator(plain, tokenizer, ids, args.tokens),
            "engine_batch": lambda: by_generator(lean, tokenizer, ids, args.tokens),
            "engine": lambda: by_engine(eng, text, args.tokens),
        }
        for run in runs.values():  # kernels built, caches of every size seen once
            run()
        ms, ttft = {rung: [] for rung in RUNGS}, {rung: [] for rung in RUNGS}
        for _ in range(args.repeats):
            for rung in RUNGS:
                first_s, decode_s = runs[rung]()
                ttft[rung].append(first_s * 1000)
                ms[rung].append(decode_s * 1000 / (args.tokens - 1))
        plain.close()
        lean.close()
    result = {
        "backend": backend,
        "prompt_tokens": len(ids),
        "tokens": args.tokens,
        "ms_per_token": {rung: round(statistics.median(values), 3) for rung, values in ms.items()},
        "min_ms_per_token": {rung: round(min(values), 3) for rung, values in ms.items()},
        "runs_ms": {rung: [round(v, 3) for v in values] for rung, values in ms.items()},
        "ttft_ms": {rung: round(statistics.median(values), 2) for rung, values in ttft.items()},
    }
    base = result["ms_per_token"]["generate_step"]
    result["ratio_to_generate_step"] = {rung: round(base / v, 3) for rung, v in result["ms_per_token"].items()}
    if args.json:
        print(json.dumps(result))
        return
    for rung in RUNGS:
        print(
            f"{rung:20} {result['ms_per_token'][rung]:8.3f} ms/token  {result['ratio_to_generate_step'][rung]:.3f}x"
            f"  first token {result['ttft_ms'][rung]:8.2f} ms"
        )


if __name__ == "__main__":
    main()
