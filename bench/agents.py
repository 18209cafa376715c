"""Many agents at once: our server against mlx_lm.server on the same workload, side by side in one run.

Workload (default model): 8 agents x 4 turns, all active at once. Each agent has a shared 1k-token system
prompt and its own 1.5k-token history, and asks for 64 new tokens per turn; after each turn it appends
the reply and its next question. Both servers run on the same converted model directory with the same
BLAS and weight dtype (mlx_lm.server is started through a wrapper that loads OpenBLAS first, as our
engine does), driven by the same OpenAI client load. Then aggregate decode tok/s of our engine alone at
batch 1, 2, 4 and 8.

`--json` prints one line with, per server, wall_s, output_tok_s, ttft_p50_s, ttft_p95_s,
resumed_ttft_p50_s, resumed_ttft_p95_s; decode_tok_s per batch size; and the ratios
`batch8_over_batch1`, `mlx_lm_server_over_ours` (its wall time / ours) and `resumed_p95_over_p50` (ours).

`--rounds N` runs the workload N times on each server, each time on conversations of its own (no prefix
shared with the others), and reports each server's median round by wall time (of an even number, the
faster middle one), with every round's wall time in `wall_s_rounds`: one run's wall time moved by a fifth
on a GPU machine.

On a GPU each server first runs the same workload untimed on other conversations (`--warmup`): MLX compiles
its GPU kernels on first use and keeps them on disk, so without it the server that runs first pays the
compiles of both.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402

engine.setup_process()  # before MLX is imported (the CPU backend loads OpenBLAS)
from engine.backend import installed_backend  # noqa: E402
from engine.settings import load_settings  # noqa: E402

SYSTEM_FILLER = (
    "You are a careful research assistant working for a team of historians. Follow the house rules: cite the "
    "letter number for every claim, prefer primary sources, keep answers short, and flag uncertainty. "
)
HISTORY_FILLER = (
    "The harbour ledger for week {week} lists grain, salt and timber, with prices that rose after the storm. "
)
QUESTIONS = [
    "Which week had the highest prices?",
    "What changed after the storm?",
    "Name one commodity that stayed cheap.",
    "Summarise your findings in one line.",
]

# OpenBLAS under MLX on the CPU (as our engine has it) and nothing else of ours: on a GPU it does nothing.
MLX_LM_WRAPPER = (
    "import sys; from engine.cpu import blas; blas.preload(); "
    "from mlx_lm.server import main; sys.argv[0] = 'mlx_lm.server'; main()"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_conversations(
    tokenizer, agents: int, system_tokens: int, history_tokens: int, first_agent: int = 0
) -> list[list[dict]]:
    """`agents` conversations; those of another `first_agent` share no prefix with these (not even the
    system prompt), at the same lengths."""
    system = f"Team {first_agent}. " + SYSTEM_FILLER
    while len(tokenizer.encode(system)) < system_tokens:
        system += SYSTEM_FILLER
    conversations = []
    for agent in range(first_agent, first_agent + agents):
        history, week = [], agent * 1000
        while len(tokenizer.encode(" ".join(m["content"] for m in history))) < history_tokens:
            week += 1
            history.append(
                {
                    "role": "user",
                    "content": f"Agent {agent}, ledger part {week}: " + HISTORY_FILLER.format(week=week) * 4,
                }
            )
            history.append({"role": "assistant", "content": f"Noted part {week}."})
        conversations.append([{"role": "system", "content": system}, *history])
    return conversations


def wait_ready(url: str, process: subprocess.Popen, path: str, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def drive(
    base_url: str,
    conversations: list[list[dict]],
    turns: int,
    new_tokens: int,
    sessions: bool,
    model: str,
    session_prefix: str = "bench-agent",
) -> dict:
    """All agents at once, each running its turns in sequence; streaming, to time the first token."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key="bench", max_retries=0, timeout=3600)
    ttfts: list[tuple[int, float]] = []  # (turn, seconds)
    output_tokens = [0]
    resumed_prompt = [0, 0]  # prompt tokens of resumed turns, and how many of them the server had cached
    lock = threading.Lock()
    errors: list[BaseException] = []

    def agent(index: int) -> None:
        try:
            run_agent(index)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other agents
            errors.append(exc)

    def run_agent(index: int) -> None:
        messages = list(conversations[index])
        for turn in range(turns):
            messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
            started, first, text, usage = time.perf_counter(), None, [], None
            stream = client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=new_tokens,
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"X-Session-ID": f"{session_prefix}-{index}"} if sessions else None,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    text.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    usage = chunk.usage
            with lock:
                ttfts.append((turn, (first or time.perf_counter()) - started))
                output_tokens[0] += usage.completion_tokens if usage else len(text)
                details = getattr(usage, "prompt_tokens_details", None) if usage else None
                if turn > 0 and details is not None and details.cached_tokens is not None:
                    resumed_prompt[0] += usage.prompt_tokens
                    resumed_prompt[1] += details.cached_tokens
            messages.append({"role": "assistant", "content": "".join(text)})

    # One untimed request first: the first forward pass of a fresh process pays one-off set-up costs.
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    started = time.perf_counter()
    threads = [threading.Thread(target=agent, args=(i,)) for i in range(len(conversations))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} agents failed against {base_url}: {errors[0]!r}")
    all_ttft = [t for _, t in ttfts]
    resumed = [t for turn, t in ttfts if turn > 0]
    return {
        "wall_s": round(wall, 2),
        "output_tok_s": round(output_tokens[0] / wall, 2),
        "ttft_p50_s": round(percentile(all_ttft, 50), 3),
        "ttft_p95_s": round(percentile(all_ttft, 95), 3),
        "resumed_ttft_p50_s": round(percentile(resumed, 50), 3),
        "resumed_ttft_p95_s": round(percentile(resumed, 95), 3),
        # Of the resumed turns' prompt tokens, the share read from a cache (None: not reported)
        "resumed_cached_fraction": round(resumed_prompt[1] / resumed_prompt[0], 3) if resumed_prompt[0] else None,
    }


def percentile(values: list[float], p: int) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_server(command: list[str], env: dict, ready_path: str, conversations, args, sessions: bool, model: str):
    """Start a server on a free port, drive the workload against it once per round (`conversations`: a
    list of them per round), stop it; the median round's figures. With --server-logs DIR its output goes
    to DIR/<program>.log."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = None
    if args.server_logs:
        Path(args.server_logs).mkdir(parents=True, exist_ok=True)
        log_path = Path(args.server_logs) / ("agent-memory.log" if sessions else "mlx_lm.server.log")
    with open(log_path or os.devnull, "w") as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(url, process, ready_path)
            if args.warmup_conversations:
                drive(url, args.warmup_conversations, args.turns, args.new_tokens, sessions, model, "bench-warmup")
            rounds = [
                drive(url, each, args.turns, args.new_tokens, sessions, model, f"bench-agent-r{number}")
                for number, each in enumerate(conversations)
            ]
            median = sorted(rounds, key=lambda figures: figures["wall_s"])[(len(rounds) - 1) // 2]
            return {**median, "wall_s_rounds": [figures["wall_s"] for figures in rounds]}
        finally:
            process.terminate()
            process.wait(timeout=120)


def run_ours(conversations, args, data_dir: Path) -> dict:
    command = [sys.executable, "-m", "workbench.cli", "serve"]
    if args.server_logs:
        command += ["--log-level", args.server_log_level]
    env = {"SEMANTIC_AGENT_CACHE_DIR": str(data_dir / "bench-caches")}
    return run_server(command, env, "/health", conversations, args, True, "default")


def run_mlx_lm(conversations, args, model_dir: str, batch: int) -> dict:
    command = [
        *(sys.executable, "-c", MLX_LM_WRAPPER, "--model", model_dir),
        *("--decode-concurrency", str(batch), "--prompt-concurrency", str(batch), "--log-level", "ERROR"),
    ]
    # mlx_lm.server names the model it was started with "default_model".
    return run_server(command, {}, "/v1/models", conversations, args, False, "default_model")


def decode_scaling(settings, new_tokens: int) -> dict[int, float]:
    """Aggregate decode tok/s of our engine at batch 1, 2, 4, 8 (short prompts, fixed token counts)."""
    from engine.engine import Engine
    from engine.requests import ChatMessage, GenerationRequest, SamplingParams

    results = {}
    with Engine(settings.model_copy(update={"kv_memory": False, "mlx_max_batch_size": 8})) as running:
        for batch in (1, 2, 4, 8):
            requests = [
                GenerationRequest(
                    messages=[ChatMessage(role="user", content=f"Tell story number {i}.")],
                    max_tokens=new_tokens,
                    sampling=SamplingParams(temperature=0.0, ignore_eos=True),
                )
                for i in range(batch)
            ]
            running.generate(requests[0])  # warm up
            started = time.perf_counter()
            handles = [running.submit(r) for r in requests]
            tokens = sum(h.result().usage.completion_tokens for h in handles)
            results[batch] = round(tokens / (time.perf_counter() - started), 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--history-tokens", type=int, default=1500)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="A small run (3 agents, 2 turns, short prompts).")
    parser.add_argument(
        "--rounds", type=int, default=1, help="Timed runs of the workload per server, each on new conversations."
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON line.")
    parser.add_argument(
        "--only", choices=("ours", "mlx_lm"), help="Run one server alone, without the decode scaling (no ratios)."
    )
    parser.add_argument("--server-logs", metavar="DIR", help="Keep each server's output in DIR.")
    parser.add_argument(
        "--server-log-level", default="info", help="Our server's --log-level with --server-logs (debug: each step)."
    )
    parser.add_argument(
        "--warmup",
        choices=("auto", "on", "off"),
        default="auto",
        help="Run the workload once untimed on other conversations first, on each server (auto: on a GPU).",
    )
    args = parser.parse_args()
    if args.quick:
        args.agents, args.turns, args.system_tokens, args.history_tokens, args.new_tokens = 3, 2, 200, 300, 16

    from transformers import AutoTokenizer

    from engine.loader import prepare
    from engine.model_source import resolve

    settings = load_settings()
    model_dir = str(prepare(resolve(settings.mlx_model_id, settings.models_path), settings.models_path))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # One set of conversations per round; the warm-up's are another (first_agent == agents)
    conversations = [
        build_conversations(
            tokenizer, args.agents, args.system_tokens, args.history_tokens, first_agent=args.agents * (2 * r)
        )
        for r in range(max(1, args.rounds))
    ]
    warmup = args.warmup == "on" or (args.warmup == "auto" and installed_backend() != "cpu")
    args.warmup_conversations = (
        build_conversations(tokenizer, args.agents, args.system_tokens, args.history_tokens, first_agent=args.agents)
        if warmup
        else None
    )

    if args.only:
        with tempfile.TemporaryDirectory() as scratch:
            if args.only == "ours":
                figures = run_ours(conversations, args, Path(scratch))
            else:
                figures = run_mlx_lm(conversations, args, model_dir, settings.mlx_max_batch_size)
        print(json.dumps({"agents": args.agents, "turns": args.turns, args.only: figures}))
        return
    with tempfile.TemporaryDirectory() as scratch:
        ours = run_ours(conversations, args, Path(scratch))
    theirs = run_mlx_lm(conversations, args, model_dir, settings.mlx_max_batch_size)
    scaling = decode_scaling(settings, args.new_tokens)

    result = {
        "agents": args.agents,
        "turns": args.turns,
        "ours": ours,
        "mlx_lm_server": theirs,
        "decode_tok_s": scaling,
        "batch8_over_batch1": round(scaling[8] / scaling[1], 2),
        "mlx_lm_server_over_ours": round(theirs["wall_s"] / ours["wall_s"], 2),
        "resumed_p95_over_p50": round(ours["resumed_ttft_p95_s"] / max(ours["resumed_ttft_p50_s"], 1e-9), 2),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.agents} agents x {args.turns} turns, {args.new_tokens} new tokens per turn")
    for name, figures in (("agent-memory", ours), ("mlx_lm.server", theirs)):
        print(
            f"  {name:<14} wall {figures['wall_s']:7.1f} s  {figures['output_tok_s']:6.1f} tok/s  "
            f"TTFT p50 {figures['ttft_p50_s']:.2f} s p95 {figures['ttft_p95_s']:.2f} s  "
            f"resumed p50 {figures['resumed_ttft_p50_s']:.2f} s p95 {figures['resumed_ttft_p95_s']:.2f} s"
        )
    print("  decode tok/s by batch: " + "  ".join(f"{b}: {v}" for b, v in scaling.items()))
    print(
        f"  batch8_over_batch1 {result['batch8_over_batch1']} (target >= 3)   "
        f"mlx_lm_server_over_ours {result['mlx_lm_server_over_ours']} (target >= 1.5)   "
        f"resumed_p95_over_p50 {result['resumed_p95_over_p50']} (target <= 2)"
    )


if __name__ == "__main__":
    main()
