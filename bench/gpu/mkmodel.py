"""Build a random-weight mlx-lm Llama model of real shapes, with the default model's tokenizer.

Speed does not depend on weight values, so a GPU machine without model weights can still measure an
8B-class model: by default Llama-3-8B's shapes (32 layers, hidden 4096, MLP 14336, 32 heads, 8 KV heads)
with the tokenizer's vocabulary (SmolLM2's 49152), in bfloat16; `--q4-out` also writes a 4-bit copy
(group size 64). Smaller `--layers/--hidden/...` build a tiny model of the same family for a CPU dry run.

Generation must never end early nor stall without text: the lm_head rows of the end-of-text tokens and of
every token that decodes alone to nothing, to whitespace or to part of a UTF-8 character are zeroed. Their
logit is then 0, below the maximum of the other random logits, so greedy decoding never picks them. The
banned ids are computed here from the tokenizer, and checked on a random prompt after building.

    python bench/gpu/mkmodel.py --tok .gpu-tok --out /root/bench/m8b --q4-out /root/bench/m8b-q4
    python bench/gpu/mkmodel.py --tok .gpu-tok --out /tmp/tiny --layers 2 --hidden 256 --inter 512 \\
        --heads 4 --kv-heads 2

Prints progress, then one JSON line with what was built.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.gguf_import import END_OF_TURN_TOKENS  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def banned_ids(tok_dir: Path) -> tuple[list[int], list[int], int, int]:
    """(banned ids, end-of-text ids, bos id, vocabulary size) of the tokenizer in `tok_dir`."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    vocab_size = tokenizer.get_vocab_size()
    eos_names = [config["eos_token"], *END_OF_TURN_TOKENS] if config.get("eos_token") else list(END_OF_TURN_TOKENS)
    eos = sorted({tokenizer.token_to_id(name) for name in eos_names} - {None})
    banned = set(eos)
    for token_id in range(vocab_size):
        # Special tokens decode to "" here: the detokenizer never shows them either.
        text = tokenizer.decode([token_id], skip_special_tokens=True)
        if not text.strip() or "\ufffd" in text:
            banned.add(token_id)
    bos = tokenizer.token_to_id(config["bos_token"]) if config.get("bos_token") else None
    return sorted(banned), eos, bos, vocab_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--tok", default=".gpu-tok", help="tokenizer folder (bench/gpu/tokenizer.py writes it)")
    parser.add_argument("--q4-out", default=None, help="also write a 4-bit copy here")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--inter", type=int, default=14336, help="MLP intermediate size")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--context", type=int, default=65536, help="max_position_embeddings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama
    from mlx_lm.utils import quantize_model, save_config, save_model

    tok_dir = Path(args.tok)
    missing = [name for name in TOKENIZER_FILES if not (tok_dir / name).is_file()]
    if missing:
        raise SystemExit(f"{tok_dir} lacks {', '.join(missing)}: run `python bench/gpu/tokenizer.py --out {tok_dir}`")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        raise SystemExit("--hidden must be a multiple of --heads, and --heads a multiple of --kv-heads")

    started = time.perf_counter()
    banned, eos, bos, vocab_size = banned_ids(tok_dir)
    print(f"{len(banned)} of {vocab_size} ids banned (end-of-text {eos}) in {time.perf_counter() - started:.1f}s")

    config = {
        "model_type": "llama",
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "intermediate_size": args.inter,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.hidden // args.heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "vocab_size": vocab_size,
        "max_position_embeddings": args.context,
        "tie_word_embeddings": False,
        "rope_traditional": False,
        "attention_bias": False,
        "mlp_bias": False,
        "eos_token_id": eos,
        "bos_token_id": bos,
        "torch_dtype": "bfloat16",
    }
    built = time.perf_counter()
    mx.random.seed(args.seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    keep = mx.ones((vocab_size, 1), dtype=mx.bfloat16)
    keep[mx.array(banned)] = 0
    model.lm_head.weight = model.lm_head.weight * keep
    mx.eval(model.parameters())
    params = sum(v.size for _, v in tree_flatten(model.parameters()))
    print(f"{params} parameters built in {time.perf_counter() - built:.1f}s", flush=True)

    banned_set = set(banned)
    allowed = mx.array([i for i in range(vocab_size) if i not in banned_set])

    def check(model, label: str) -> None:
        """Logits finite and no banned id the argmax anywhere on a random prompt."""
        prompt = allowed[mx.random.randint(0, allowed.size, (1, 64))]
        logits = model(prompt)[0].astype(mx.float32)
        picks = mx.argmax(logits, axis=-1)
        hits = sum(1 for pick in picks.tolist() if pick in banned_set)
        if not bool(mx.all(mx.isfinite(logits)).item()) or hits:
            raise SystemExit(f"{label}: logits not finite or a banned id picked ({hits} of 64 positions)")
        print(f"{label}: logits finite, no banned id picked; logit std {mx.std(logits[-1]).item():.3f}")

    check(model, "bfloat16")

    def write(out: Path, model, config) -> int:
        out.mkdir(parents=True, exist_ok=True)
        save_model(out, model)
        save_config(config, out / "config.json")
        for name in TOKENIZER_FILES:
            shutil.copy(tok_dir / name, out / name)
        return sum(v.nbytes for _, v in tree_flatten(model.parameters()))

    saved = time.perf_counter()
    result = {"out": args.out, "parameters": params, "banned_ids": len(banned), "config": config}
    result["bytes"] = write(Path(args.out), model, config)
    print(f"saved {args.out} in {time.perf_counter() - saved:.1f}s", flush=True)
    if args.q4_out:
        saved = time.perf_counter()
        qmodel, qconfig = quantize_model(model, dict(config), group_size=64, bits=4)
        mx.eval(qmodel.parameters())
        check(qmodel, "4-bit")
        result["q4_out"] = args.q4_out
        result["q4_bytes"] = write(Path(args.q4_out), qmodel, qconfig)
        print(f"saved {args.q4_out} in {time.perf_counter() - saved:.1f}s", flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
