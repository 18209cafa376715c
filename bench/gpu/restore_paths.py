"""How fast a warm restore can go on this machine: the block files of one long history (Llama-3-8B KV
shapes by default, bfloat16 as the warm tier stores it) read back through each way of turning them into
device arrays, every read from the disk (page cache dropped), in a fresh process per way and length
(its first restore pays the allocator's first use of host and device memory) and again in that process.

Ways: `files` (plain reads of the files on 2, 4 and 8 threads: the disk), `read` (the tier's read_blocks:
reads and checksums on its threads, nothing else), `joined` (each layer joined in numpy after the last
read, then one host copy per layer: the restore before engine/kv/restore.py), `by_block` (the engine's
restore_by_block), `staged` (each block copied into one host array per layer as it comes in, one copy of
each to MLX at the end). Every way ends with the restored arrays used on the device.

    python bench/gpu/restore_paths.py --dir /root/bench/restore [--tokens 4400,17700] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/

from page_cache import drop_page_cache  # noqa: E402

import engine  # noqa: E402

engine.setup_process()

from engine.kv import codec  # noqa: E402
from engine.kv.blocks import block_names, root_name  # noqa: E402
from engine.kv.tier import WriteJob  # noqa: E402
from engine.kv.warm import WarmTier  # noqa: E402

FINGERPRINT = "restore-paths"
WAYS = ("read", "joined", "by_block", "staged")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="where the block files are written")
    parser.add_argument("--tokens", default="4400,17700", help="history lengths, comma-separated")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="restores per process (the first is fresh)")
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--way", help=argparse.SUPPRESS)  # the child: one way at one length
    return parser.parse_args(argv)


def block_layers(args, index: int) -> dict:
    rng = np.random.default_rng(index)
    shape = (args.heads, args.block, args.dim)
    return {layer: {part: rng.integers(0, 1 << 15, shape, np.uint16) for part in "kv"} for layer in range(args.layers)}


def write_blocks(args, count: int) -> tuple[WarmTier, list[str]]:
    """`count` blocks of a chain, each written once (later runs find them stored)."""
    tier = WarmTier(args.dir, disk_budget_mb=1 << 20)
    root = root_name(FINGERPRINT, ",".join(["full"] * args.layers), args.block)
    names = block_names(list(range(count * args.block)), root, args.block)
    for index, name in enumerate(names):
        if not tier.index.has_block(name):
            tier.write(WriteJob(FINGERPRINT, None, {name: block_layers(args, index)}))
    return tier, names


def tail_of(args, tokens: int) -> dict | None:
    rest = tokens % args.block
    if not rest:
        return None
    rng = np.random.default_rng(10_000 + tokens)
    shape = (args.heads, rest, args.dim)
    return {layer: {part: rng.integers(0, 1 << 15, shape, np.uint16) for part in "kv"} for layer in range(args.layers)}


def joined(reading, tail, layers, tokens, dtype):
    """The restore before engine/kv/restore.py: every block read, then each layer joined in numpy."""
    import mlx.core as mx

    pieces = list(reading)
    if tail is not None:
        pieces.append(tail)
    out = {}
    for layer in layers:
        parts = {}
        for name in pieces[0][layer]:
            whole = np.concatenate([piece[layer][name] for piece in pieces], axis=1)[:, :tokens]
            parts[name] = mx.array(whole)
        out[layer] = codec.decode_from_disk(parts, dtype)
    return out


def staged(reading, tail, layers, tokens, dtype, block: int):
    """Each block copied into one host array per layer and part as it comes in; one MLX copy each at the end."""
    import mlx.core as mx

    hosts: dict = {}
    pool = ThreadPoolExecutor(max_workers=4)
    copies = []

    def copy(piece, start):
        for layer in layers:
            for name, array in piece[layer].items():
                count = min(array.shape[1], tokens - start)
                hosts[layer][name][:, start : start + count] = array[:, :count]

    for index, piece in enumerate(reading):
        if not hosts:
            for layer in layers:
                hosts[layer] = {
                    name: np.empty((a.shape[0], tokens, a.shape[2]), a.dtype) for name, a in piece[layer].items()
                }
        copies.append(pool.submit(copy, piece, index * block))
    if tail is not None:
        copies.append(pool.submit(copy, tail, tokens - tail[layers[0]]["k"].shape[1]))
    for future in copies:
        future.result()
    pool.shutdown()
    return {
        layer: codec.decode_from_disk({name: mx.array(a) for name, a in parts.items()}, dtype)
        for layer, parts in hosts.items()
    }


def one_way(args) -> dict:
    """The child: one way at one length, `--repeats` times, each from the disk."""
    import mlx.core as mx

    from engine.kv.restore import restore_by_block

    tokens = int(args.tokens)
    mx.eval(mx.ones((4, 4)) @ mx.ones((4, 4)))  # the device is up before the clock starts
    tier, names = write_blocks(args, tokens // args.block)
    files = [args.dir / tier.index.block_files(FINGERPRINT, names)[name][0] for name in names]
    tail = tail_of(args, tokens)
    layers = list(range(args.layers))
    nbytes = sum(path.stat().st_size for path in files)
    if tail is not None:
        nbytes += sum(a.nbytes for parts in tail.values() for a in parts.values())
    times = []
    for _ in range(args.repeats):
        drop_page_cache(files)
        started = time.perf_counter()
        reading = tier.read_blocks(FINGERPRINT, names)
        if args.way == "read":
            for _block in reading:
                pass
        else:
            if args.way == "joined":
                out = joined(reading, tail, layers, tokens, mx.bfloat16)
            elif args.way == "by_block":
                out = restore_by_block(reading, tail, layers, tokens, mx.bfloat16, quantized=False)
            else:
                out = staged(reading, tail, layers, tokens, mx.bfloat16, args.block)
            # Used on the device, as the new turn's first layer would
            mx.eval([mx.sum(part) for pair in out.values() for part in pair])
        times.append(time.perf_counter() - started)
        out = None
    return {
        "way": args.way,
        "tokens": tokens,
        "mb": round(nbytes / 1e6, 1),
        "first_s": round(times[0], 4),
        "best_s": round(min(times), 4),
        "first_mb_s": round(nbytes / 1e6 / times[0]),
        "best_mb_s": round(nbytes / 1e6 / min(times)),
    }


def files_read(paths: list[Path], threads: int) -> float:
    drop_page_cache(paths)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        total = sum(len(data) for data in pool.map(codec.read_file, paths))
    return total / 1e6 / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    if args.way:
        print(json.dumps(one_way(args)), flush=True)
        return
    lengths = [int(n) for n in args.tokens.split(",")]
    tier, names = write_blocks(args, max(lengths) // args.block)
    files = [args.dir / tier.index.block_files(FINGERPRINT, names)[name][0] for name in names]
    tier.close()
    results = {"files_mb_s": {threads: round(files_read(files, threads)) for threads in (2, 4, 8)}, "ways": []}
    for tokens in lengths:
        for way in WAYS:
            command = [sys.executable, __file__, *sys.argv[1:], "--way", way, "--tokens", str(tokens)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                results["ways"].append({"way": way, "tokens": tokens, "error": done.stderr[-600:]})
                continue
            results["ways"].append(json.loads(done.stdout.strip().splitlines()[-1]))
            if not args.json:
                print(results["ways"][-1], flush=True)
    print(json.dumps(results) if args.json else results["files_mb_s"])


if __name__ == "__main__":
    main()
