"""Engine vs bare mlx-lm on the same converted model, side by side in one run.

Prints prefill tok/s (512- and 2048-token prompts) and decode tok/s (128 tokens) for our engine
(request queue, engine thread, events) and for mlx-lm's `stream_generate` called directly, and
their ratios. `--json` prints one line with prefill_ratio, decode_ratio, prefill_tok_s,
decode_tok_s and blas.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_settings import bench_settings  # noqa: E402

import engine  # noqa: E402

engine.setup_process()  # before MLX is imported (the CPU backend loads OpenBLAS)
from engine.engine import Engine  # noqa: E402
from engine.events import TurnChunk, TurnFinished, TurnStarted  # noqa: E402
from engine.requests import ChatMessage, GenerationRequest, SamplingParams  # noqa: E402

FILLER = (
    "The history of the city spans many centuries, with markets, bridges, libraries and harbours "
    "growing along the river while travellers brought new ideas, foods and songs from distant lands. "
)


def prompt_of(tokenizer, target_tokens: int) -> str:
    """User text whose chat-templated prompt is close to `target_tokens` tokens."""
    words = (FILLER * (target_tokens // 8 + 10)).split()
    low, high = 1, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        if len(tokenizer.encode(" ".join(words[:middle]))) + 30 <= target_tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def ours(eng: Engine, text: str, max_tokens: int) -> tuple[int, float, float, int]:
    """(prompt tokens, seconds to first token, decode seconds after it, tokens) through the engine."""
    request = GenerationRequest(
        messages=[ChatMessage(role="user", content=text)],
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0.0, ignore_eos=True),
    )
    started = time.perf_counter()
    first = None
    prompt_tokens = 0
    for event in eng.submit(request).events():
        if isinstance(event, TurnStarted):
            prompt_tokens = event.prompt_tokens
        elif isinstance(event, TurnChunk) and first is None:
            first = time.perf_counter()
        elif isinstance(event, TurnFinished):
            done = time.perf_counter()
            return prompt_tokens, first - started, done - first, event.usage.completion_tokens
    raise RuntimeError("turn did not finish")


def bare(model, tokenizer, prompt_ids: list[int], max_tokens: int, stream) -> tuple[float, float, int]:
    """The same prompt through mlx_lm.stream_generate directly."""
    from mlx_lm.generate import stream_generate

    from engine.sampling import ban_tokens

    started = time.perf_counter()
    first = None
    count = 0
    for response in stream_generate(
        model,
        tokenizer,
        prompt_ids,
        max_tokens=max_tokens,
        logits_processors=[ban_tokens(tokenizer.eos_token_ids)],
        stream=stream,
    ):
        if first is None:
            first = time.perf_counter()
        count = response.generation_tokens
    return first - started, time.perf_counter() - first, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model id (default: the embedded SmolLM2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is kept")
    parser.add_argument("--prompt-lengths", default="512,2048")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--data-dir", default=None, help="data dir (default: SEMANTIC_DATA_DIR or a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    # KV memory off: repeated prompts would otherwise be served from the cache, not prefilled.
    settings = bench_settings(args.data_dir, mlx_model_id=args.model, kv_memory=False)

    import mlx.core as mx
    from mlx_lm.utils import load

    from engine.prompt import render_prompt

    with Engine(settings) as eng:
        info = eng.info
        model, tokenizer = load(info.path)
        if info.backend == "cpu":
            model.set_dtype(mx.float32)
        stream = mx.new_stream(mx.default_device())
        rows = {}
        lengths = [int(n) for n in args.prompt_lengths.split(",")]
        for length in lengths:
            text = prompt_of(tokenizer, length)
            request = GenerationRequest(messages=[ChatMessage(role="user", content=text)])
            prompt_ids = render_prompt(eng._loaded, request)
            ours(eng, text, 1)  # warm up both paths at this shape
            with mx.stream(stream):
                bare(model, tokenizer, prompt_ids, 1, stream)
            our_ttft, bare_ttft = [], []
            for _ in range(args.repeats):
                our_ttft.append(ours(eng, text, 1)[1])
                with mx.stream(stream):
                    bare_ttft.append(bare(model, tokenizer, prompt_ids, 1, stream)[0])
            tokens = len(prompt_ids)
            rows[f"prefill_{length}"] = {
                "prompt_tokens": tokens,
                "ours_tok_s": tokens / statistics.median(our_ttft),
                "bare_tok_s": tokens / statistics.median(bare_ttft),
            }
        decode_text = "Tell me a long story about a lighthouse keeper."
        decode_ids = render_prompt(
            eng._loaded, GenerationRequest(messages=[ChatMessage(role="user", content=decode_text)])
        )
        our_decode, bare_decode = [], []
        for _ in range(args.repeats):
            _, _, seconds, count = ours(eng, decode_text, args.decode_tokens)
            our_decode.append((count - 1) / seconds)
            with mx.stream(stream):
                _, seconds, count = bare(model, tokenizer, decode_ids, args.decode_tokens, stream)
            bare_decode.append((count - 1) / seconds)
        rows["decode"] = {
            "tokens": args.decode_tokens,
            "ours_tok_s": statistics.median(our_decode),
            "bare_tok_s": statistics.median(bare_decode),
        }

    first = rows[f"prefill_{lengths[0]}"]
    prefill_ratio = min(r["ours_tok_s"] / r["bare_tok_s"] for k, r in rows.items() if k.startswith("prefill"))
    result = {
        "model": info.model_id,
        "backend": info.backend,
        "compute_dtype": info.compute_dtype,
        "blas": info.blas,
        "prefill_tok_s": round(first["ours_tok_s"], 1),
        "decode_tok_s": round(rows["decode"]["ours_tok_s"], 2),
        "prefill_ratio": round(prefill_ratio, 3),
        "decode_ratio": round(rows["decode"]["ours_tok_s"] / rows["decode"]["bare_tok_s"], 3),
        "detail": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in rows.items()},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"model {info.model_id} on {info.backend} ({info.compute_dtype}), BLAS: {info.blas}")
    print(f"{'measurement':<16}{'ours tok/s':>12}{'bare tok/s':>12}{'ratio':>8}")
    for name, row in rows.items():
        label = f"{name} ({row.get('prompt_tokens', row.get('tokens'))})"
        ratio = row["ours_tok_s"] / row["bare_tok_s"]
        print(f"{label:<16}{row['ours_tok_s']:>12.1f}{row['bare_tok_s']:>12.1f}{ratio:>8.3f}")
    print(f"prefill_ratio {result['prefill_ratio']}  decode_ratio {result['decode_ratio']}")


if __name__ == "__main__":
    main()
