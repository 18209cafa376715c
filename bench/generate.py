"""Engine vs bare mlx-lm on the same converted model, side by side in one run.

Prints prefill tok/s (prompts of `--prompt-lengths` tokens, 512 and 2048 by default) and decode tok/s
(128 tokens) for our engine (request queue, engine thread, events) and for mlx-lm's `stream_generate`
called directly, and their ratios. Prefill is timed to the first generated token; decode from the first
token to the last. Then the share of the memory bandwidth decode uses: tok/s x bytes read per step
(the weights, less the embedding table when the model has its own lm_head, plus the KV cache at the
middle of the answer) / the bandwidth (`--bandwidth-gb-s`, else a guess from the GPU's name).

`--json` prints one line with prefill_ratio, decode_ratio, prefill_tok_s, decode_tok_s,
decode_fraction_of_bandwidth (left out, with decode_fraction_of_bandwidth_note, when the bandwidth is
unknown), blas and per-measurement detail.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_settings import bench_settings  # noqa: E402

import engine  # noqa: E402

engine.setup_process()  # before MLX is imported (the CPU backend loads OpenBLAS)
from engine.engine import Engine  # noqa: E402
from engine.events import TurnChunk, TurnFailed, TurnFinished  # noqa: E402
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


# Memory bandwidth (GB/s) of GPUs by a part of the name MLX reports; the longest matching part wins.
# Datasheet figures: pass --bandwidth-gb-s for a machine not listed or a binned variant.
KNOWN_BANDWIDTH_GB_S = {
    "H200": 4800,
    "H100 PCIe": 2000,
    "H100 NVL": 3900,
    "H100": 3350,
    "A100": 2039,
    "L40S": 864,
    "Apple M1": 68,
    "Apple M1 Pro": 200,
    "Apple M1 Max": 400,
    "Apple M1 Ultra": 800,
    "Apple M2": 100,
    "Apple M2 Pro": 200,
    "Apple M2 Max": 400,
    "Apple M2 Ultra": 800,
    "Apple M3": 100,
    "Apple M3 Pro": 150,
    "Apple M3 Max": 400,
    "Apple M3 Ultra": 819,
    "Apple M4": 120,
    "Apple M4 Pro": 273,
    "Apple M4 Max": 546,
}


@dataclass(frozen=True)
class OurRun:
    prompt_ids: list[int]
    ttft_s: float  # submit to the first generated token, as the caller sees it
    decode_s: float  # first generated token to the last
    tokens: int


def ours(eng: Engine, text: str, max_tokens: int) -> OurRun:
    """One turn through the engine. No event marks the first token itself: its arrival is the first
    TurnChunk, or the TurnFinished when the first token gave no text (part of a character, or a turn of one
    textless token). Decode time is the engine's own first-token-to-finish time, so a textless first token
    does not shorten it."""
    request = GenerationRequest(
        messages=[ChatMessage(role="user", content=text)],
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0.0, ignore_eos=True),
    )
    started = time.perf_counter()
    first = None
    for event in eng.submit(request).events():
        if isinstance(event, TurnChunk | TurnFinished) and first is None:
            first = time.perf_counter()
        if isinstance(event, TurnFinished):
            decode_s = event.timing.total_s - event.timing.ttft_s
            return OurRun(event.prompt_token_ids, first - started, decode_s, event.usage.completion_tokens)
        if isinstance(event, TurnFailed):
            raise RuntimeError(f"the engine failed the turn ({event.kind}): {event.message}")
    raise RuntimeError("turn did not finish")


def bare(model, tokenizer, prompt_ids: list[int], max_tokens: int, stream) -> tuple[float, float, int]:
    """The same prompt through mlx_lm.stream_generate directly: (seconds to the first token, decode seconds
    after it, tokens). End-of-turn tokens are banned, as `ignore_eos` does in the engine."""
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


def weight_bytes_per_step(model) -> int:
    """Bytes of weights one decode step reads: all of them, except that the embedding table is read a
    row at a time when the model has a separate lm_head (a tied one is read whole as the lm_head)."""
    from mlx.utils import tree_flatten

    parameters = tree_flatten(model.parameters())
    total = sum(value.nbytes for _, value in parameters)
    if any("lm_head" in name for name, _ in parameters):
        total -= sum(value.nbytes for name, value in parameters if "embed_tokens" in name)
    return total


def bandwidth_gb_s(given: float | None) -> tuple[float | None, str]:
    """(GB/s, where it came from): `given`, else the datasheet figure of the device MLX reports."""
    if given:
        return given, "--bandwidth-gb-s"
    import mlx.core as mx

    name = str(mx.device_info().get("device_name", ""))
    if mx.default_device() == mx.cpu:
        return None, f"CPU {name!r}: pass --bandwidth-gb-s (its memory bandwidth) for decode_fraction_of_bandwidth"
    for part in sorted(KNOWN_BANDWIDTH_GB_S, key=len, reverse=True):
        if part in name:
            return KNOWN_BANDWIDTH_GB_S[part], f"datasheet figure for {name!r}"
    return None, f"unknown bandwidth of {name!r}: pass --bandwidth-gb-s for decode_fraction_of_bandwidth"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model id (default: the embedded SmolLM2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is kept")
    parser.add_argument("--prompt-lengths", default="512,2048", help="comma-separated prompt tokens to prefill")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument(
        "--bandwidth-gb-s", type=float, default=None, help="memory bandwidth (default: a guess from the GPU's name)"
    )
    parser.add_argument("--data-dir", default=None, help="data dir (default: SEMANTIC_DATA_DIR or a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    # KV memory off: repeated prompts would otherwise be served from the cache, not prefilled.
    settings = bench_settings(args.data_dir, mlx_model_id=args.model, kv_memory=False)

    import mlx.core as mx
    from mlx_lm.utils import load

    with Engine(settings) as eng:
        info = eng.info
        model, tokenizer = load(info.path)
        if info.backend == "cpu":
            model.set_dtype(mx.float32)
        stream = mx.new_stream(mx.default_device())
        rows = {}
        lengths = [int(n) for n in args.prompt_lengths.split(",")]
        too_long = [n for n in lengths if n + 1 > info.context_length]
        if too_long:
            raise SystemExit(
                f"prompt lengths {too_long} do not fit {info.model_id}'s context of {info.context_length} tokens; "
                "pass shorter --prompt-lengths or a model with a longer context"
            )
        for length in lengths:
            text = prompt_of(tokenizer, length)
            prompt_ids = ours(eng, text, 1).prompt_ids  # warms up both paths at this shape
            with mx.stream(stream):
                bare(model, tokenizer, prompt_ids, 1, stream)
            our_ttft, bare_ttft = [], []
            for _ in range(args.repeats):
                our_ttft.append(ours(eng, text, 1).ttft_s)
                with mx.stream(stream):
                    bare_ttft.append(bare(model, tokenizer, prompt_ids, 1, stream)[0])
            tokens = len(prompt_ids)
            rows[f"prefill_{length}"] = {
                "prompt_tokens": tokens,
                "ours_tok_s": tokens / statistics.median(our_ttft),
                "bare_tok_s": tokens / statistics.median(bare_ttft),
            }
        decode_text = "Tell me a long story about a lighthouse keeper."
        decode_ids = ours(eng, decode_text, 1).prompt_ids
        our_decode, bare_decode = [], []
        for _ in range(args.repeats):
            run = ours(eng, decode_text, args.decode_tokens)
            our_decode.append((run.tokens - 1) / run.decode_s)
            with mx.stream(stream):
                _, seconds, count = bare(model, tokenizer, decode_ids, args.decode_tokens, stream)
            bare_decode.append((count - 1) / seconds)
        rows["decode"] = {
            "tokens": args.decode_tokens,
            "ours_tok_s": statistics.median(our_decode),
            "bare_tok_s": statistics.median(bare_decode),
        }
        # The KV cache at the middle of the answer: what an average decode step reads besides the weights.
        kv_bytes = info.kv_bytes_per_token * (len(decode_ids) + args.decode_tokens // 2)
        step_bytes = weight_bytes_per_step(model) + kv_bytes
        bandwidth, bandwidth_source = bandwidth_gb_s(args.bandwidth_gb_s)

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
        "bytes_per_decode_step": step_bytes,
        "detail": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in rows.items()},
    }
    if bandwidth:
        limit_tok_s = bandwidth * 1e9 / step_bytes
        result["bandwidth_gb_s"] = bandwidth
        result["bandwidth_source"] = bandwidth_source
        result["decode_fraction_of_bandwidth"] = round(rows["decode"]["ours_tok_s"] / limit_tok_s, 3)
        result["bare_decode_fraction_of_bandwidth"] = round(rows["decode"]["bare_tok_s"] / limit_tok_s, 3)
    else:
        result["decode_fraction_of_bandwidth_note"] = bandwidth_source
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
    if "decode_fraction_of_bandwidth" in result:
        print(
            f"decode_fraction_of_bandwidth {result['decode_fraction_of_bandwidth']} (bare "
            f"{result['bare_decode_fraction_of_bandwidth']}; {step_bytes / 1e9:.2f} GB per step at "
            f"{bandwidth:g} GB/s, {bandwidth_source})"
        )
    else:
        print(f"decode_fraction_of_bandwidth: {bandwidth_source}")


if __name__ == "__main__":
    main()
