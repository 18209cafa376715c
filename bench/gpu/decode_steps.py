"""What a decode step of a batch costs with the engine's attention paths: one batch of agents whose
histories differ in length (left-padded, as in bench/agents.py), decoded with the masked attention
mlx-lm builds and then row by row (engine/mlx_lm_ext/decode_rows.py), alternately, and one batch of
equal histories (no padding, no mask) as the floor. Milliseconds per step, the median of each run.

    python bench/gpu/decode_steps.py --model DIR [--batch 8 --history 2600 --spread 800 --steps 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import engine  # noqa: E402

engine.setup_process()


def batch_cache(model, lengths: list[int]) -> list:
    """Batch caches holding left-padded histories of `lengths` tokens, prefilled in one pass."""
    import mlx.core as mx
    from mlx_lm.models.cache import BatchKVCache

    longest = max(lengths)
    pads = [longest - n for n in lengths]
    rows = [
        [0] * pad + [(11 + row * 7 + i * 17) % 40000 + 100 for i in range(n)]
        for row, (n, pad) in enumerate(zip(lengths, pads, strict=True))
    ]
    caches = [BatchKVCache(pads) for _ in model.layers]
    model(mx.array(rows), cache=caches)
    mx.eval([c.state for c in caches])
    return caches


def step_ms(model, caches: list, steps: int) -> float:
    """The median milliseconds of `steps` decode steps, each waited for."""
    import mlx.core as mx

    tokens = mx.array([[101 + row] for row in range(caches[0].offset.shape[0])])
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        mx.eval(model(tokens, cache=caches))
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--history", type=int, default=2600, help="the longest history")
    parser.add_argument("--spread", type=int, default=800, help="the shortest history is this much shorter")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from mlx_lm import load

    from engine.mlx_lm_ext import decode_rows, masks, prefill_keys

    masks.install()
    model, _ = load(args.model)
    spread = [args.history - args.spread * row // max(1, args.batch - 1) for row in range(args.batch)]
    padded = batch_cache(model, spread)
    result = {
        "batch": args.batch,
        "lengths": spread,
        "safe": decode_rows.switch.safe_for(model),
        "padded_keys_safe": prefill_keys.switch.safe_for(model),
        "masked_ms": [],
        "rows_ms": [],
    }
    for _ in range(args.rounds):
        for enabled, key in ((False, "masked_ms"), (True, "rows_ms")):
            decode_rows.switch.on = enabled
            step_ms(model, padded, 2)  # shapes met once before timing
            result[key].append(step_ms(model, padded, args.steps))
    decode_rows.switch.on = False
    equal = batch_cache(model, [args.history] * args.batch)
    step_ms(model, equal, 2)
    result["unpadded_ms"] = step_ms(model, equal, args.steps)
    result["rows_over_masked"] = round(min(result["rows_ms"]) / min(result["masked_ms"]), 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
