"""What meeting a new prompt length costs on this backend: bare mlx-lm prefills (time to the first token
of `generate_step`) of several lengths in one fresh process, each length twice in a row, so the first
time of a length minus its second is what the backend spends on a shape it has not seen (kernel builds,
attention plans). Lengths are met in the order given; lengths near ones already met show whether the
cost is per exact length. One JSON line per length, then a summary line.

    python bench/gpu/shapes.py --model DIR [--lengths 519,1000,1500,2048,3000,1001,1502,2600]
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


def first_token_s(model, prompt: list[int], step: int) -> float:
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    started = time.perf_counter()
    for _ in generate_step(
        mx.array(prompt), model, max_tokens=1, prefill_step_size=step, prompt_cache=make_prompt_cache(model)
    ):
        break
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--lengths", default="519,1000,1500,2048,3000,1001,1502,2600")
    parser.add_argument("--step", type=int, default=2048, help="prefill step (the engine's on GPUs)")
    args = parser.parse_args()
    from mlx_lm import load

    model, _ = load(args.model)
    rows = []
    for index, length in enumerate(int(n) for n in args.lengths.split(",")):
        prompt = [(7 + index * 31 + i * 13) % 40000 + 100 for i in range(length)]
        first = first_token_s(model, prompt, args.step)
        again = first_token_s(model, prompt, args.step)
        rows.append({"tokens": length, "first_s": round(first, 4), "again_s": round(again, 4)})
        print(json.dumps(rows[-1]), flush=True)
    extra = [row["first_s"] - row["again_s"] for row in rows[1:]]
    summary = {"env": {k: v for k, v in os.environ.items() if k.startswith("MLX_")}, "new_shape_extra_s": extra}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
