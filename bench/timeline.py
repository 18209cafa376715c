"""Where our server's time went in a `bench/agents.py` run, from its debug log.

    python bench/agents.py --only ours --server-logs DIR --server-log-level debug
    python bench/timeline.py DIR/agent-memory.log [--json]

The engine thread logs each batch step at debug level (engine/scheduler.py: the generator's `next`,
then the work after it: tokens handed out, finished turns kept) and each admission that took a
millisecond or more (engine/engine.py). Counted from the measured workload's first request on (after
the last `bench-warmup` request): decode steps (no prompt being read), steps that read prompt chunks,
the work after the steps, and admissions, in seconds, with their counts; the median prompt-chunk step
and the slowest eight ([ms, prompts read in it]).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

STEP = re.compile(r"step: \d+ running, (\d+) prefilling, \d+ tokens; next ([\d.]+) ms, after ([\d.]+) ms")
ADMIT = re.compile(r"admit: ([\d.]+) ms")


def timeline(lines: list[str]) -> dict:
    warmup = [index for index, line in enumerate(lines) if "session=bench-warmup" in line]
    seconds = {"decode_steps_s": 0.0, "prefill_steps_s": 0.0, "after_steps_s": 0.0, "admit_s": 0.0}
    counts = {"decode_steps": 0, "prefill_steps": 0, "admissions": 0}
    prefill_steps = []  # (ms, prompts being read) of each step that read prompt chunks
    for line in lines[warmup[-1] + 1 if warmup else 0 :]:
        if step := STEP.search(line):
            kind = "prefill" if int(step[1]) else "decode"
            seconds[f"{kind}_steps_s"] += float(step[2]) / 1e3
            seconds["after_steps_s"] += float(step[3]) / 1e3
            counts[f"{kind}_steps"] += 1
            if kind == "prefill":
                prefill_steps.append((float(step[2]), int(step[1])))
        elif admit := ADMIT.search(line):
            seconds["admit_s"] += float(admit[1]) / 1e3
            counts["admissions"] += 1
    ms = sorted(step_ms for step_ms, _ in prefill_steps)
    return {
        **{key: round(value, 3) for key, value in seconds.items()},
        **counts,
        # Whether a few first-time shapes or every chunk costs the time
        "prefill_step_ms_median": round(ms[len(ms) // 2], 1) if ms else None,
        "slowest_prefill_steps": [[round(step_ms, 1), prompts] for step_ms, prompts in sorted(prefill_steps)[-8:]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = timeline(args.log.read_text().splitlines())
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:>22} {value}")


if __name__ == "__main__":
    main()
