"""Where a turn's time goes: one prefill and one decode through each layer the engine stacks on mlx-lm,
in one process on one model, so that a gap between the engine and bare mlx-lm can be pinned on one of
them. Layers: bare `generate_step`; mlx-lm's BatchGenerator with its explicit masks; the same with
engine/mlx_lm_ext/masks.py (fused causal attention when there is no padding); our LeanBatchGenerator.
Each is warmed up once per shape, then timed (best of two). `--json` prints one line.

    python bench/gpu/paths.py --model DIR [--prompt-lengths 4096,16384] [--decode-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import engine  # noqa: E402

engine.setup_process()


def bare(model, prompt: list[int], max_tokens: int, step: int) -> tuple[float, float]:
    """(seconds to the first token, decode tok/s after it) through mlx-lm's generate_step."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    started = time.perf_counter()
    first = last = None
    count = 0
    for count, _ in enumerate(  # noqa: B007 - the count after the loop is the tokens generated
        generate_step(
            mx.array(prompt),
            model,
            max_tokens=max_tokens,
            prefill_step_size=step,
            prompt_cache=make_prompt_cache(model),
        ),
        start=1,
    ):
        last = time.perf_counter()
        first = first or last
    return first - started, (count - 1) / (last - first) if count > 1 else 0.0


def batched(factory, model, prompt: list[int], max_tokens: int) -> tuple[float, float]:
    """The same through a batch generator built by `factory(model)`, one sequence."""
    from mlx_lm.generate import StopSequences

    generator = factory(model)
    started = time.perf_counter()
    first = last = None
    count = 0
    try:
        generator.insert([prompt], max_tokens=[max_tokens], stop_sequences=[StopSequences([])])
        done = False
        while not done:
            _, responses = generator.next()
            for response in responses:
                last = time.perf_counter()
                first = first or last
                count += 1
                done = response.finish_reason is not None
    finally:
        generator.close()
    return first - started, (count - 1) / (last - first) if count > 1 else 0.0


def engine_decode(model_dir: str, prompt: list[int], max_tokens: int) -> dict[str, float]:
    """Decode tok/s through the whole engine (its thread, scheduler, turn bookkeeping, events), best of
    three, with the events read on this thread as a server does; batch 8 (the scheduler) and batch 1
    (the lone path, mlx-lm's generate_step)."""
    from engine.engine import Engine
    from engine.events import TurnFinished
    from engine.requests import ChatMessage, GenerationRequest, SamplingParams
    from engine.settings import Settings

    text = " ".join(str(token) for token in prompt[:200])
    rates = {}
    for batch in (8, 1):
        settings = Settings(mlx_model_id=model_dir, kv_memory=False, mlx_max_batch_size=batch)
        with Engine(settings) as running:
            best = 0.0
            for _ in range(4):
                request = GenerationRequest(
                    messages=[ChatMessage(role="user", content=text)],
                    max_tokens=max_tokens,
                    sampling=SamplingParams(temperature=0.0),
                )
                finished = [e for e in running.submit(request).events() if isinstance(e, TurnFinished)][0]
                best = max(best, finished.timing.decode_tokens_per_s)
            rates[f"batch{batch}"] = round(best, 1)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt-lengths", default="4096,16384")
    parser.add_argument("--decode-tokens", type=int, default=256)
    parser.add_argument("--step", type=int, default=2048, help="prefill tokens per step")
    parser.add_argument("--only-engine", action="store_true", help="only the engine's decode")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.models.cache import BatchKVCache
    from mlx_lm.utils import load

    from engine.backend import current_backend
    from engine.mlx_lm_ext import batch_generator as lean
    from engine.mlx_lm_ext import masks

    model, _ = load(args.model)
    stream = mx.new_stream(mx.default_device())
    step = args.step

    def plain(m):
        BatchKVCache.make_mask = masks._mlx_lm_make_mask
        return BatchGenerator(m, max_tokens=1, prefill_step_size=step, stream=stream)

    def fused(m):
        masks.install()
        return BatchGenerator(m, max_tokens=1, prefill_step_size=step, stream=stream)

    def ours(m):
        masks.install()
        inline = current_backend().inline_first_token
        return lean.LeanBatchGenerator(
            m, max_tokens=1, prefill_step_size=step, stream=stream, inline_first_token=inline
        )

    paths = {
        "bare": lambda p, n: bare(model, p, n, step),
        "batch_mlx_masks": lambda p, n: batched(plain, model, p, n),
        "batch_fused": lambda p, n: batched(fused, model, p, n),
        "ours": lambda p, n: batched(ours, model, p, n),
    }
    lengths = [int(x) for x in args.prompt_lengths.split(",")]
    result = {"device": str(mx.default_device()), "step": step, "prefill_tok_s": {}, "decode_tok_s": {}}
    short = [1000 + (i * 7919) % 40000 for i in range(512)]
    if args.only_engine:
        paths = {}
    with mx.stream(stream):
        for run in paths.values():  # warm-up: every shape compiled before anything is timed
            for length in lengths:
                run([1000 + (i * 7919) % 40000 for i in range(length)], 2)
            run(short, 16)
        # Interleaved, best of three: a slow moment of the machine hits every path alike.
        for _ in range(3):
            for name, run in paths.items():
                for length in lengths:
                    prompt = [1000 + (i * 7919) % 40000 for i in range(length)]
                    rate = length / run(prompt, 2)[0]
                    best = result["prefill_tok_s"].setdefault(name, {})
                    best[length] = round(max(best.get(length, 0.0), rate), 1)
                rate = run(short, args.decode_tokens)[1]
                result["decode_tok_s"][name] = round(max(result["decode_tok_s"].get(name, 0.0), rate), 1)
    result["decode_tok_s"]["engine"] = engine_decode(args.model, short, args.decode_tokens)
    for name in paths:
        print(
            f"{name:16s} prefill {result['prefill_tok_s'][name]} decode {result['decode_tok_s'][name]}", file=sys.stderr
        )
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
