"""Which attention kernel a decode step's keys get, and what each costs: the decode attention of one
step (every layer of an 8B-class model: 32 query heads, 8 key/value heads of 128, bfloat16) for a
batch of agents with histories of different lengths, laid out each way the engine could hold them.
With `--queries N` the step reads a prompt chunk of N tokens per row instead (resumed agents' new
turns, each causal over its own history), and `padded_keys` adds the engine's way for short chunks:
the keys read up to a multiple of 256 under an explicit mask (engine/mlx_lm_ext/prefill_keys.py).

MLX's CUDA backend attends one query token with cuDNN only when the keys are a prefix of a whole
cache buffer whose length is a multiple of 256 (mlx-lm's cache step) and no array mask is given;
otherwise with its own vector kernel, and with an array mask unfused. So:

    masked         the left-padded batch with mlx-lm's boolean mask (unfused)
    rows_in_batch  each row over its own keys, a slice of the batch buffer (engine/mlx_lm_ext/decode_rows.py)
    rows_own       each row over its own buffer, a multiple of 256 long (cuDNN per row)
    batch_kernel   the whole batch in one call of the engine's kernel (engine/mlx_lm_ext/ragged_decode.py)
    equal_cudnn    a batch of equal histories in a buffer a multiple of 256 long (cuDNN)
    equal_vector   the same histories in a buffer of exactly their length (the vector kernel)

Milliseconds per step (all layers), the median of `--steps`, and the batch kernel's largest difference
from rows_in_batch (`batch_kernel_max_difference`; null where the kernel is not usable).

    python bench/gpu/attention_kernels.py [--batch 8 --history 2600 --spread 800 --layers 32 --queries 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

STEP = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--history", type=int, default=2600, help="the longest history")
    parser.add_argument("--spread", type=int, default=800, help="the shortest history is this much shorter")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1, help="tokens per row: 1 a decode step, more a chunk")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.queries <= args.history - args.spread:
        parser.error("--queries: from 1 to the shortest history (--history less --spread)")

    import mlx.core as mx

    from engine.mlx_lm_ext import ragged_decode

    dtype = mx.bfloat16
    b, h, kvh, d, n_q = args.batch, args.heads, args.kv_heads, args.head_dim, args.queries
    causal = "causal" if n_q > 1 else None  # each row's chunk over its own history, as one call takes it
    longest = args.history
    lengths = [longest - round(args.spread * row / max(b - 1, 1)) for row in range(b)]
    pads = [longest - n for n in lengths]
    capacity = -(-longest // STEP) * STEP
    scale = d**-0.5

    def random(*shape):
        return mx.random.normal(shape).astype(dtype)

    queries = [random(b, h, n_q, d) for _ in range(args.layers)]
    batch_keys = [(random(b, kvh, capacity, d), random(b, kvh, capacity, d)) for _ in range(args.layers)]
    own_keys = [
        [(random(1, kvh, -(-n // STEP) * STEP, d), random(1, kvh, -(-n // STEP) * STEP, d)) for n in lengths]
        for _ in range(args.layers)
    ]
    exact = [(mx.contiguous(k[..., :longest, :]), mx.contiguous(v[..., :longest, :])) for k, v in batch_keys]
    # Row r's query i stands at longest - n_q + i and reads its keys from pads[r] up to itself.
    positions = mx.arange(capacity)[None, None, None, :]
    last = (longest - n_q + mx.arange(n_q))[None, None, :, None]
    padded_mask = (positions >= mx.array(pads)[:, None, None, None]) & (positions <= last)
    mask = padded_mask[..., :longest]
    starts = mx.array(pads, dtype=mx.int32)
    mx.eval(queries, batch_keys, own_keys, exact, mask, padded_mask, starts)
    usable = n_q == 1 and ragged_decode.usable(dtype, d, h // kvh)

    def masked():
        return [
            mx.fast.scaled_dot_product_attention(q, k[..., :longest, :], v[..., :longest, :], scale=scale, mask=mask)
            for q, (k, v) in zip(queries, batch_keys, strict=True)
        ]

    def rows_in_batch():
        out = []
        for q, (k, v) in zip(queries, batch_keys, strict=True):
            rows = [
                mx.fast.scaled_dot_product_attention(
                    q[r : r + 1],
                    k[r : r + 1, :, pads[r] : longest],
                    v[r : r + 1, :, pads[r] : longest],
                    scale=scale,
                    mask=causal,
                )
                for r in range(b)
            ]
            out.append(mx.concatenate(rows, axis=0))
        return out

    def rows_own():
        out = []
        for q, layer in zip(queries, own_keys, strict=True):
            rows = [
                mx.fast.scaled_dot_product_attention(
                    q[r : r + 1], k[..., : lengths[r], :], v[..., : lengths[r], :], scale=scale, mask=causal
                )
                for r, (k, v) in enumerate(layer)
            ]
            out.append(mx.concatenate(rows, axis=0))
        return out

    def batch_kernel():
        return [
            ragged_decode.attend(q, k[..., :longest, :], v[..., :longest, :], scale, starts)
            for q, (k, v) in zip(queries, batch_keys, strict=True)
        ]

    def padded_keys():
        return [
            mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=padded_mask)
            for q, (k, v) in zip(queries, batch_keys, strict=True)
        ]

    def equal_cudnn():
        return [
            mx.fast.scaled_dot_product_attention(q, k[..., :longest, :], v[..., :longest, :], scale=scale, mask=causal)
            for q, (k, v) in zip(queries, batch_keys, strict=True)
        ]

    def equal_vector():
        return [
            mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=causal)
            for q, (k, v) in zip(queries, exact, strict=True)
        ]

    ways = {
        "masked": masked,
        "rows_in_batch": rows_in_batch,
        "rows_own": rows_own,
        **({"batch_kernel": batch_kernel} if usable else {}),
        **({"padded_keys": padded_keys} if n_q > 1 else {}),
        "equal_cudnn": equal_cudnn,
        "equal_vector": equal_vector,
    }
    times = {name: [] for name in ways}
    for way in ways.values():  # kernels and plans built
        mx.eval(way())
    for _ in range(args.steps):
        for name, way in ways.items():
            started = time.perf_counter()
            mx.eval(way())
            times[name].append((time.perf_counter() - started) * 1000)
    difference = None
    if usable:
        pairs = zip(batch_kernel(), rows_in_batch(), strict=True)
        difference = max(mx.abs(x.astype(mx.float32) - y.astype(mx.float32)).max().item() for x, y in pairs)
    result = {
        "batch_kernel_max_difference": difference,
        "batch": b,
        "queries": n_q,
        "lengths": lengths,
        "layers": args.layers,
        "ms_per_step": {name: round(statistics.median(values), 3) for name, values in times.items()},
    }
    if args.json:
        print(json.dumps(result))
        return
    for name, ms in result["ms_per_step"].items():
        print(f"{name:14} {ms:8.3f} ms")


if __name__ == "__main__":
    main()
