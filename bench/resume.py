"""Time to first token with and without the KV memory, side by side in one run.

For conversation histories of 1k, 2k and 4k tokens and a new 32-token user turn, on the default model:
cold (full prefill, memory off), hot resume (same process; best of five new turns), warm resume in a
fresh process (restored from disk, page cache dropped first; best of five processes), and the new turn
alone as if there were no history (best of five, each beside a hot turn). Also warm restore bandwidth
against the disk's sequential read speed measured beside it (one large file, best of two reads per
history length) and against plainly reading the history's own cache files (many block files of a few MB,
two readers, each file's first 8 bytes and then the rest, as a restore reads them), KV bytes per token
hot and on disk, and how many bytes 8 agents sharing a 2k-token system prompt occupy.

`--json` prints one line: per length the figures plus warm_decision (the engine's choice in the fastest
warm process: restore, recompute or partial), restore_over_recompute (its estimates of the two, from the
speeds it measured and kept), cold_over_hot, cold_over_warm, hot_over_new_turn,
restore_mb_s (warm_restored_bytes, the sizes of the files the restore read, over warm_restore_s),
disk_read_mb_s (and block_files_read_mb_s), restore_over_file_read (restore_mb_s over
block_files_read_mb_s); the top-level disk_read_mb_s is the fastest probe. The
temporary caches are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_settings import bench_settings  # noqa: E402
from page_cache import drop_page_cache  # noqa: E402

import engine  # noqa: E402

engine.setup_process()  # before MLX is imported (the CPU backend loads OpenBLAS)
from engine.engine import Engine  # noqa: E402
from engine.kv.codec import read_file  # noqa: E402
from engine.kv.cost import CostModel  # noqa: E402
from engine.kv.warm import WarmTier  # noqa: E402
from engine.loader import ModelInfo  # noqa: E402
from engine.requests import ChatMessage, GenerationRequest, SamplingParams  # noqa: E402
from engine.settings import Settings  # noqa: E402

FILLER = (
    "The archive holds letters from sailors, merchants and scholars, each describing the weather, the prices "
    "in the harbour and the news from distant towns along the coast. "
)
# Best-of counts: this machine has slow spells of a few seconds to minutes (every thread ~25% slower);
# the best of several takes compares both sides of a ratio in the machine's usual state.
HOT_TAKES = 5
WARM_PROCESSES = 5
NEW_TURN = "Given all of that, which three letters should a historian read first, and why? Answer briefly."


def history(tokenizer, target_tokens: int) -> list[ChatMessage]:
    messages = [ChatMessage(role="system", content="You are a helpful archivist.")]
    turn = 0
    while len(tokenizer.encode(" ".join(m.content for m in messages))) < target_tokens - 60:
        turn += 1
        messages.append(ChatMessage(role="user", content=f"Letter {turn}: {FILLER * 2}"))
        messages.append(ChatMessage(role="assistant", content=f"Noted letter {turn}. {FILLER}"))
    messages.append(ChatMessage(role="user", content="Summarise the letters in one line."))
    return messages


def request(messages, session_id=None, max_tokens=1) -> GenerationRequest:
    return GenerationRequest(
        messages=messages, session_id=session_id, max_tokens=max_tokens, sampling=SamplingParams(temperature=0.0)
    )


def disk_read_mb_s(directory: Path, size_mb: int = 256, reads: int = 2) -> float:
    """Sequential read speed of a freshly written file with its pages dropped from the cache: the best
    of `reads` reads, as the restores it is compared with are a best of several."""
    path = directory / "disk-probe.bin"
    block = os.urandom(8 << 20)
    with path.open("wb") as handle:
        for _ in range(size_mb // 8):
            handle.write(block)
    best_s = float("inf")
    for _ in range(reads):
        drop_page_cache([path])
        started = time.perf_counter()
        with path.open("rb", buffering=0) as handle:
            while handle.read(8 << 20):
                pass
        best_s = min(best_s, time.perf_counter() - started)
    path.unlink()
    return size_mb * (1 << 20) / 1e6 / best_s


def files_read_mb_s(paths: list[Path]) -> float:
    """Read speed of `paths` with their pages dropped from the cache, on two threads, each read as the
    warm tier reads it (`read_file`: the first 8 bytes, then the rest)."""
    drop_page_cache(paths)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as readers:
        total = sum(len(data) for data in readers.map(read_file, paths))
    return total / 1e6 / (time.perf_counter() - started)


def session_files(cache_dir: Path, session_id: str) -> tuple[int, list[int]]:
    """(bytes of the session's snapshot file, bytes of each block file of its chain in order) on disk: the
    files a warm resume of it reads (WarmTier.resume_files). The tier is closed again before the warm
    process starts, which must own the cache dir."""
    with closing(WarmTier(cache_dir, disk_budget_mb=0)) as warm:
        files = warm.resume_files(session_id)
    if files is None:
        return 0, []
    return files.snapshot.stat().st_size, [path.stat().st_size for path in files.blocks]


def restored_bytes(files: tuple[int, list[int]], reused_tokens: int, block_tokens: int) -> int:
    """Bytes a restore of `reused_tokens` reads: the whole snapshot file, and the chain's blocks that
    cover those tokens (the last one partly used but read whole)."""
    snapshot_bytes, block_bytes = files
    return snapshot_bytes + sum(block_bytes[: -(-reused_tokens // block_tokens)])


def kv_values_per_token(info: ModelInfo) -> int:
    """Key and value elements one token adds to the cache, from the model's config.json (as the loader
    counts kv_bytes_per_token), so disk sizes do not depend on the compute dtype."""
    config = json.loads((Path(info.path) / "config.json").read_text())
    config = {**config.get("text_config", {}), **config}
    heads = config.get("num_attention_heads", 1)
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // heads
    return 2 * info.num_layers * kv_heads * head_dim


def disk_bytes_per_token(values_per_token: int, settings: Settings) -> float:
    """What the warm tier stores per token in the configured encoding (SEMANTIC_KV_DISK_DTYPE, or the
    quantized KV cache's own with SEMANTIC_KV_BITS): float16 and bfloat16 caches are stored in 2 bytes a
    value, a quantized one in its bits plus a 2-byte scale and bias per group."""
    if settings.kv_bits:
        return values_per_token * (settings.kv_bits / 8 + 4 / settings.kv_group_size)
    per_value = {"float16": 2, "float32": 4, "int8": 1 + 4 / 64}[settings.kv_disk_dtype]
    return values_per_token * per_value


WARM_CHILD = """
import json, sys
import engine
engine.setup_process()
from engine.engine import Engine
from engine.requests import ChatMessage, GenerationRequest, SamplingParams
from engine.settings import Settings
settings = Settings(**json.loads(sys.argv[1]))
session_id = sys.argv[2]
messages = [ChatMessage(**m) for m in json.loads(sys.stdin.read())]
with Engine(settings) as eng:
    done = eng.generate(GenerationRequest(messages=messages, session_id=session_id, max_tokens=1,
                                          sampling=SamplingParams(temperature=0.0)))
print(json.dumps({"ttft_s": done.timing.ttft_s, "source": done.cache.source,
                  "reused": done.cache.reused_tokens, "restore_s": done.cache.restore_s,
                  "decision": done.cache.decision, "prompt_tokens": done.usage.prompt_tokens}))
"""


def warm_resume(settings: Settings, messages, session_id: str) -> dict:
    payload = json.dumps(
        {
            "data_dir": str(settings.data_path),
            "agent_cache_dir": str(settings.cache_path),
            "mlx_model_id": settings.mlx_model_id,
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", WARM_CHILD, payload, session_id],
        input=json.dumps([m.model_dump() for m in messages]),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def shared_prompt_bytes(settings: Settings, tokenizer_engine: Engine) -> dict:
    """8 agents with one 2k-token system prompt and their own short question: bytes on each tier."""
    system = ChatMessage(role="system", content=FILLER * 60)
    # Every idle agent compacted into shared blocks (SEMANTIC_KV_HOT_LIVE_AGENTS=0); with the default 1,
    # the most recent agent also keeps its own contiguous copy.
    shared_settings = settings.model_copy(
        update={"agent_cache_dir": settings.cache_path / "shared", "kv_hot_live_agents": 0}
    )
    with Engine(shared_settings) as eng:
        tokens_system = len(eng.tokenizer.encode(system.content))
        for index in range(8):
            eng.generate(
                request(
                    [system, ChatMessage(role="user", content=f"Agent {index} asks about letter {index}.")],
                    f"agent-{index}",
                )
            )
        eng.flush()
        stats = eng.memory_stats()
        kv_per_token_hot = eng.info.kv_bytes_per_token
        kv_per_token_disk = disk_bytes_per_token(kv_values_per_token(eng.info), settings)
        hot_used = stats.hot.used_bytes
        warm_bytes = stats.warm.bytes
        entries = eng.call(lambda e: [len(x.tokens) for x in e.memory.hot.entries()])
    one_agent_tokens = max(entries)
    distinct = sum(n - tokens_system for n in entries) - (one_agent_tokens - tokens_system)
    ideal_hot = (one_agent_tokens + distinct) * kv_per_token_hot
    ideal_disk = (one_agent_tokens + distinct) * kv_per_token_disk
    return {
        "agents": 8,
        "system_prompt_tokens": tokens_system,
        "hot_bytes": hot_used,
        "hot_over_one_plus_suffixes": round(hot_used / ideal_hot, 2),
        "warm_bytes": warm_bytes,
        "warm_over_one_plus_suffixes": round(warm_bytes / ideal_disk, 2),
    }


def measure(
    settings: Settings, scratch: Path, lengths: list[int], warm_processes: int = WARM_PROCESSES
) -> tuple[dict, float, dict, ModelInfo]:
    """Per history length, the figures of one row; then the disk's read speed (the fastest probe), the
    shared-prompt line and the model's info."""
    results: dict = {}
    probes = []
    with Engine(settings.model_copy(update={"kv_memory": False})) as cold_engine:
        tokenizer = cold_engine.tokenizer
        info = cold_engine.info
        context = info.context_length
        cold_engine.generate(request([ChatMessage(role="user", content="warm up")]))
        new_alone = [ChatMessage(role="user", content=NEW_TURN)]
        cold_engine.generate(request(new_alone))
        for length in lengths:
            length = min(length, context - 200)
            messages = history(tokenizer, length)
            session = f"bench-{length}"
            run_settings = settings.model_copy(update={"agent_cache_dir": scratch / f"kv-{length}"})
            with Engine(run_settings) as eng:
                first = eng.generate(request(messages, session, max_tokens=16))
                base = [*messages, ChatMessage(role="assistant", content=first.text)]
                # Best of HOT_TAKES new turns on the same history, each beside a turn of the new message
                # alone (so both meet the machine in the same state), each once the previous turn's
                # disk writes are done (they run behind the response and would share the CPU).
                hot_runs, alone_runs = [], []
                for take in range(HOT_TAKES):
                    eng.flush()
                    alone_runs.append(cold_engine.generate(request(new_alone)).timing.ttft_s)
                    follow = [*base, ChatMessage(role="user", content=f"Question {take + 1}. {NEW_TURN}")]
                    hot_runs.append(eng.generate(request(follow, session)))
                hot = min(hot_runs, key=lambda done: done.timing.ttft_s)
                new_turn_s = min(alone_runs)
                # The follow-up is now cached too: take the warm measurement on a fresh turn.
                eng.flush()
            # Fresh processes, each with its own last question, so each restores the same history.
            finals = [
                [
                    *follow,
                    ChatMessage(role="assistant", content="(no answer)"),
                    ChatMessage(role="user", content=f"Round {round_}. {NEW_TURN}"),
                ]
                for round_ in range(1, warm_processes + 1)
            ]
            cold_s = cold_engine.generate(request(finals[0])).timing.ttft_s
            warm_runs = []
            cache_dir = scratch / f"kv-{length}"
            for final in finals:
                # Listed each time: every turn replaces its session's snapshot file.
                drop_page_cache(list(cache_dir.rglob("*.safetensors")))
                files = session_files(cache_dir, session)
                run = warm_resume(run_settings, final, session)
                run["restored_bytes"] = restored_bytes(files, run["reused"], settings.kv_block_tokens)
                warm_runs.append(run)
            files_mb_s = max(files_read_mb_s(list(cache_dir.rglob("*.safetensors"))) for _ in range(2))
            # The disk beside the restores it is compared with: its speed drifts over minutes.
            probes.append(disk_read_mb_s(scratch))
            warm = min(warm_runs, key=lambda run: run["ttft_s"])
            # The engine's own estimates each way, from the speeds its processes measured and kept.
            speeds = CostModel.load(cache_dir / "speeds.json", f"{info.fingerprint}|{info.backend}")
            # The stored history is at least the hot turn's prompt; the warm prompt extends it.
            estimates = speeds.estimates("warm", hot.usage.prompt_tokens, warm["prompt_tokens"])
            restored = warm["restored_bytes"] if warm["source"] == "warm" else 0
            results[str(length)] = {
                "prompt_tokens": hot.usage.prompt_tokens,
                "cold_ttft_s": round(cold_s, 4),
                "hot_ttft_s": round(hot.timing.ttft_s, 4),
                "hot_reused_tokens": hot.usage.cached_tokens,
                "warm_ttft_s": round(warm["ttft_s"], 4),
                "warm_source": warm["source"],
                "warm_reused_tokens": warm["reused"],
                "warm_restore_s": round(warm["restore_s"], 4),
                "warm_restored_bytes": restored,
                "warm_decision": warm.get("decision"),
                "restore_over_recompute": round(estimates[0] / estimates[1], 3) if estimates else None,
                "new_turn_alone_ttft_s": round(new_turn_s, 4),
                "cold_over_hot": round(cold_s / hot.timing.ttft_s, 1),
                "cold_over_warm": round(cold_s / warm["ttft_s"], 1),
                "hot_over_new_turn": round(hot.timing.ttft_s / new_turn_s, 2),
                "restore_mb_s": round(restored / 1e6 / warm["restore_s"], 1)
                if restored and warm["restore_s"]
                else None,
                "block_files_read_mb_s": round(files_mb_s, 1),
                "disk_read_mb_s": round(probes[-1], 1),
            }
            row = results[str(length)]
            # The restore's target: at least 0.7 of a plain read of the same files
            row["restore_over_file_read"] = (
                round(row["restore_mb_s"] / files_mb_s, 2) if row["restore_mb_s"] and files_mb_s else None
            )
        shared = shared_prompt_bytes(settings, cold_engine)
    return results, max(probes), shared, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--lengths", default="1000,2000,4000")
    parser.add_argument("--data-dir", default=None, help="default: SEMANTIC_DATA_DIR or a temp dir")
    parser.add_argument(
        "--warm-processes", type=int, default=WARM_PROCESSES, help="fresh processes per warm measure (best of)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    base = bench_settings(args.data_dir, mlx_model_id=args.model)
    scratch = Path(tempfile.mkdtemp(prefix="resume-", dir=base.data_path))
    settings = base.model_copy(update={"agent_cache_dir": scratch / "kv"})

    try:
        results, disk_mb_s, shared, info = measure(
            settings, scratch, [int(n) for n in args.lengths.split(",")], args.warm_processes
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    values = kv_values_per_token(info)
    summary = {
        "model": info.model_id,
        "backend": info.backend,
        "blas": info.blas,
        "lengths": results,
        "bytes_per_token": {
            "hot": info.kv_bytes_per_token,
            "disk_fp16": values * 2,
            # 8 bits per value plus a float16 scale and bias per group of 64 values.
            "disk_8bit": values * (64 + 4) // 64,
        },
        "shared_system_prompt": shared,
        "disk_read_mb_s": round(disk_mb_s, 1),
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(
        f"model {info.model_id} ({info.backend}, {info.compute_dtype}, BLAS {info.blas}); "
        f"disk read up to {disk_mb_s:.0f} MB/s"
    )
    header = (
        f"{'history':>8} {'prompt':>7} {'cold s':>8} {'hot s':>7} {'warm s':>7} {'alone s':>8} "
        f"{'cold/hot':>9} {'cold/warm':>10} {'hot/alone':>10} {'restore MB/s':>13} {'of disk':>8} "
        f"{'disk MB/s':>10} {'files MB/s':>11} {'of files':>9}"
    )
    print(header)
    for length, row in results.items():
        restore = row["restore_mb_s"]
        of_disk = f"{restore / row['disk_read_mb_s']:.0%}" if restore else "-"
        print(
            f"{length:>8} {row['prompt_tokens']:>7} {row['cold_ttft_s']:>8.3f} {row['hot_ttft_s']:>7.3f} "
            f"{row['warm_ttft_s']:>7.3f} {row['new_turn_alone_ttft_s']:>8.3f} {row['cold_over_hot']:>9} "
            f"{row['cold_over_warm']:>10} {row['hot_over_new_turn']:>10} {restore!s:>13} {of_disk:>8} "
            f"{row['disk_read_mb_s']:>10} {row['block_files_read_mb_s']:>11} {row['restore_over_file_read']!s:>9}"
        )
    per_token = summary["bytes_per_token"]
    print(
        f"KV bytes per token: hot {per_token['hot']}, disk fp16 {per_token['disk_fp16']}, "
        f"8-bit {per_token['disk_8bit']}"
    )
    print(
        f"8 agents sharing a {shared['system_prompt_tokens']}-token system prompt: hot "
        f"{shared['hot_over_one_plus_suffixes']}x, warm {shared['warm_over_one_plus_suffixes']}x "
        "the bytes of one agent plus the distinct suffixes"
    )


if __name__ == "__main__":
    main()
