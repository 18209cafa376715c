"""Tool calling: what constrained decoding costs, and how often a free model writes a valid call.

Per model, side by side in one run:
- decode tok/s of a constrained turn (a response schema that forces a long JSON array) against the
  same prompt unconstrained for the same number of tokens (target: >= 0.9);
- the valid-call rate under tool_choice "auto" on a fixed set of prompts that each need a tool, and
  under "required" (a grammar: always 1.0 unless max_tokens cuts a call).

`--json` prints one line: {"models": {MODEL: {constrained_decode_tok_s, unconstrained_decode_tok_s,
constrained_over_unconstrained, auto_valid_call_rate, auto_invalid_calls, required_valid_call_rate}}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_settings import bench_settings  # noqa: E402

import engine  # noqa: E402

engine.setup_process()  # before MLX is imported (the CPU backend loads OpenBLAS)
from engine.engine import Engine  # noqa: E402
from engine.requests import ChatMessage, GenerationRequest, SamplingParams, ToolSpec  # noqa: E402

LIST_SCHEMA = {
    "type": "object",
    "properties": {
        "cities": {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 30, "maxItems": 30}
    },
    "required": ["cities"],
}
LIST_PROMPT = "Name thirty large cities of the world as JSON."


def tool(name: str, description: str, **properties) -> ToolSpec:
    return ToolSpec(
        name=name,
        description=description,
        parameters={"type": "object", "properties": properties, "required": list(properties)},
    )


TOOLS = [
    tool("get_weather", "Current weather for a city.", city={"type": "string"}),
    tool("get_time", "Current time in a timezone.", timezone={"type": "string"}),
    tool("calculate", "Evaluate an arithmetic expression.", expression={"type": "string"}),
    tool("search_web", "Search the web.", query={"type": "string"}),
    tool("send_email", "Send an email.", to={"type": "string"}, body={"type": "string"}),
]
AUTO_PROMPTS = [
    "What's the weather in Paris right now?",
    "What time is it in Tokyo?",
    "Compute 1234 * 5678.",
    "Search the web for the latest MLX release.",
    "Email alice@example.com that the meeting moved to 3pm.",
    "Is it raining in London?",
    "Current time in New York, please.",
    "What is 17% of 2300?",
    "Look up who won the 2022 World Cup.",
    "Send bob@example.com a thank-you note.",
]


def decode_rates(eng: Engine, repeats: int) -> tuple[float, float]:
    """Median decode tok/s: constrained by LIST_SCHEMA, and free for as many tokens."""
    constrained, free = [], []
    for _ in range(repeats):
        forced = eng.generate(
            GenerationRequest(
                messages=[ChatMessage(role="user", content=LIST_PROMPT)],
                max_tokens=400,
                sampling=SamplingParams(temperature=0.0),
                response_schema=LIST_SCHEMA,
            )
        )
        constrained.append(forced.timing.decode_tokens_per_s)
        unforced = eng.generate(
            GenerationRequest(
                messages=[ChatMessage(role="user", content=LIST_PROMPT)],
                max_tokens=forced.usage.completion_tokens,
                sampling=SamplingParams(temperature=0.0, ignore_eos=True),
            )
        )
        free.append(unforced.timing.decode_tokens_per_s)
    return statistics.median(constrained), statistics.median(free)


def call_rates(eng: Engine) -> tuple[float, int, float]:
    """(auto valid-call rate, invalid calls under auto, required valid-call rate) over AUTO_PROMPTS."""
    handles = {
        choice: [
            eng.submit(
                GenerationRequest(
                    messages=[ChatMessage(role="user", content=prompt)],
                    max_tokens=256,
                    sampling=SamplingParams(temperature=0.0),
                    tools=TOOLS,
                    tool_choice=choice,
                )
            )
            for prompt in AUTO_PROMPTS
        ]
        for choice in ("auto", "required")
    }
    results = {choice: [h.result() for h in hs] for choice, hs in handles.items()}

    def valid(finished) -> bool:
        try:
            return bool(finished.tool_calls) and all(
                isinstance(json.loads(c.arguments), dict) for c in finished.tool_calls
            )
        except ValueError:
            return False

    rate = {choice: sum(map(valid, done)) / len(done) for choice, done in results.items()}
    return rate["auto"], sum(f.invalid_tool_calls for f in results["auto"]), rate["required"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default", help="comma-separated model ids (e.g. default,gemma3-270m)")
    parser.add_argument("--repeats", type=int, default=3, help="decode runs per model; the median is kept")
    parser.add_argument("--data-dir", default=None, help="data dir (default: SEMANTIC_DATA_DIR or a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    report = {}
    for model in args.models.split(","):
        # KV memory off: every turn is computed, as the comparison needs.
        settings = bench_settings(args.data_dir, mlx_model_id=model, kv_memory=False)
        with Engine(settings) as eng:
            eng.wait_ready()
            eng.generate(  # warm-up: the grammar tokenizer is built once per model
                GenerationRequest(
                    messages=[ChatMessage(role="user", content="Hi")], max_tokens=4, response_schema={"type": "object"}
                )
            )
            constrained, free = decode_rates(eng, args.repeats)
            auto_rate, auto_invalid, required_rate = call_rates(eng)
        report[model] = {
            "constrained_decode_tok_s": round(constrained, 2),
            "unconstrained_decode_tok_s": round(free, 2),
            "constrained_over_unconstrained": round(constrained / free, 3) if free else 0.0,
            "auto_valid_call_rate": round(auto_rate, 3),
            "auto_invalid_calls": auto_invalid,
            "required_valid_call_rate": round(required_rate, 3),
        }
    if args.json:
        print(json.dumps({"models": report}))
        return
    print(
        f"{'model':<16} {'constrained':>12} {'free':>8} {'ratio':>7} {'auto valid':>11} {'invalid':>8} {'required':>9}"
    )
    for model, row in report.items():
        print(
            f"{model:<16} {row['constrained_decode_tok_s']:>12} {row['unconstrained_decode_tok_s']:>8} "
            f"{row['constrained_over_unconstrained']:>7} {row['auto_valid_call_rate']:>11} "
            f"{row['auto_invalid_calls']:>8} {row['required_valid_call_rate']:>9}"
        )


if __name__ == "__main__":
    main()
