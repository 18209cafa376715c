"""What a fresh process's first turns cost, with and without the warm-up at load (engine/warm_up.py):
per variant a new process loads the model (timed, warm-up included), then runs a short greedy turn, a
short sampled one and a long one, each timed to its first token, then each again. One JSON line.

    python bench/gpu/first_turn.py --model DIR [--long-tokens 3000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import engine  # noqa: E402

engine.setup_process()


def child(args) -> dict:
    from engine.backend import current_backend
    from engine.engine import Engine
    from engine.events import TurnChunk, TurnFinished
    from engine.requests import ChatMessage, GenerationRequest, SamplingParams
    from engine.settings import Settings

    current_backend().warm_up_at_load = args.variant == "warm_up"
    started = time.perf_counter()
    running = Engine(Settings(mlx_model_id=args.model, kv_memory=False)).start()
    result = {"variant": args.variant, "load_s": round(time.perf_counter() - started, 2)}
    filler = "Tides rise twice a day along the northern cape. "
    per_filler = len(running.tokenizer.encode(filler))
    turns = {
        "short_greedy": ("What is a lighthouse?", SamplingParams(temperature=0.0)),
        "short_sampled": ("Name a sea bird.", SamplingParams()),
        "long_greedy": (filler * (args.long_tokens // per_filler), SamplingParams(temperature=0.0)),
    }
    try:
        for again in ("", "_again"):
            for name, (text, sampling) in turns.items():
                request = GenerationRequest(
                    messages=[ChatMessage(role="user", content=text + again)],
                    max_tokens=4,
                    sampling=sampling.model_copy(update={"ignore_eos": True}),
                )
                began = time.perf_counter()
                for event in running.submit(request).events():
                    if isinstance(event, TurnChunk | TurnFinished):
                        result[f"{name}{again}_ttft_s"] = round(time.perf_counter() - began, 3)
                        break
    finally:
        running.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--long-tokens", type=int, default=3000)
    parser.add_argument("--variant", choices=("warm_up", "none"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(child(args)), flush=True)
        return
    results = []
    for variant in ("none", "warm_up"):
        command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = done.stdout.strip().splitlines()
        results.append(
            json.loads(lines[-1])
            if done.returncode == 0 and lines
            else {"variant": variant, "error": done.stderr[-800:]}
        )
    print(json.dumps({"first_turns": results}))


if __name__ == "__main__":
    main()
