"""What meeting a new prompt length costs on this backend: bare mlx-lm prefills (time to the first token
of `generate_step`) of several lengths in one fresh process, each length twice in a row, so the first
time of a length minus its second is what the backend spends on a shape it has not seen (kernel builds,
attention plans). Lengths are met in the order given; lengths near ones already met show whether the
cost is per exact length. One JSON line per length, then a summary line.

With `--history N` each prompt is a new turn after the same N-token history (its cache is computed
once and cut back after every turn), as when an agent resumes.

    python bench/gpu/shapes.py --model DIR [--lengths 519,1000,1500,2048,3000,1001,1502,2600]
        [--history 2600 --lengths 40,75,120,260,700,1500,41,76]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import engine  # noqa: E402

engine.setup_process()


def first_token_s(model, prompt: list[int], step: int, cache: list | None) -> float:
    """Seconds to the first token of `prompt` after `cache` (a fresh cache when None); `cache` is cut
    back to where it was."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    history = cache[0].offset if cache else 0
    started = time.perf_counter()
    for _ in generate_step(
        mx.array(prompt), model, max_tokens=1, prefill_step_size=step, prompt_cache=cache or make_prompt_cache(model)
    ):
        break
    seconds = time.perf_counter() - started
    if cache:
        mx.eval([c.state for c in cache])
        for c in cache:
            c.trim(c.offset - history)
    return seconds


def history_cache(model, tokens: int, step: int) -> list | None:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    if not tokens:
        return None
    cache = make_prompt_cache(model)
    prompt = [(11 + i * 17) % 40000 + 100 for i in range(tokens)]
    for start in range(0, tokens, step):
        model(mx.array(prompt[start : start + step])[None], cache=cache)
        mx.eval([c.state for c in cache])
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--lengths", default="519,1000,1500,2048,3000,1001,1502,2600")
    parser.add_argument("--step", type=int, default=2048, help="prefill step (the engine's on GPUs)")
    parser.add_argument("--history", type=int, default=0, help="tokens already in the cache before each prompt")
    args = parser.parse_args()
    from mlx_lm import load

    model, _ = load(args.model)
    cache = history_cache(model, args.history, args.step)
    rows = []
    for index, length in enumerate(int(n) for n in args.lengths.split(",")):
        prompt = [(7 + index * 31 + i * 13) % 40000 + 100 for i in range(length)]
        first = first_token_s(model, prompt, args.step, cache)
        again = first_token_s(model, prompt, args.step, cache)
        rows.append({"tokens": length, "first_s": round(first, 4), "again_s": round(again, 4)})
        print(json.dumps(rows[-1]), flush=True)
    extra = [round(row["first_s"] - row["again_s"], 4) for row in rows[1:]]
    summary = {
        "env": {k: v for k, v in os.environ.items() if k.startswith("MLX_")},
        "history": args.history,
        "new_shape_extra_s": extra,
        "again_s_total": round(sum(row["again_s"] for row in rows), 4),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
