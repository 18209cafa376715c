"""PyTorch anchor on the same shapes as mkmodel.py: Hugging Face's LlamaForCausalLM, random bf16 weights, sdpa.

Prefill tok/s (one forward over the prompt, last logits only; best of three after a warm-up) and batch-1
greedy decode tok/s through `generate` with a static cache, eager (disable_compile) and with generate's
auto-compile. Decode tok/s = (N2 - N1) / (t(N2) - t(N1)), so the prompt's prefill cancels out.
Needs a CUDA GPU. Progress goes to stderr; stdout gets one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--inter", type=int, default=14336)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--prompt-lengths", default="4096,16384")
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    def now() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    def note(**values) -> None:
        print(json.dumps(values), file=sys.stderr, flush=True)

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    config = LlamaConfig(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        intermediate_size=args.inter,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        rope_theta=500000.0,
        vocab_size=args.vocab,
        max_position_embeddings=65536,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    started = time.perf_counter()
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    model.eval()
    out["params"] = sum(p.numel() for p in model.parameters())
    out["attn"] = model.config._attn_implementation
    out["build_s"] = round(time.perf_counter() - started, 1)
    note(**out)

    with torch.inference_mode():
        for length in (int(n) for n in args.prompt_lengths.split(",")):
            ids = torch.randint(3, args.vocab, (1, length), device="cuda")
            model(ids, use_cache=False, logits_to_keep=1)  # warm-up
            times = []
            for _ in range(3):
                t0 = now()
                model(ids, use_cache=False, logits_to_keep=1)
                times.append(now() - t0)
            out[f"prefill_{length}_tok_s"] = round(length / min(times), 1)
            note(length=length, times=times)

        prompt = torch.randint(3, args.vocab, (1, 128), device="cuda")

        def generate(tokens: int, compile_off: bool) -> float:
            t0 = now()
            result = model.generate(
                prompt,
                do_sample=False,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                cache_implementation="static",
                disable_compile=compile_off,
                pad_token_id=0,
            )
            seconds = now() - t0
            if result.shape[1] - prompt.shape[1] != tokens:
                raise RuntimeError(f"generate gave {result.shape[1] - prompt.shape[1]} tokens, not {tokens}")
            return seconds

        for label, compile_off in (("eager", True), ("compiled", False)):
            t0 = time.perf_counter()
            generate(16, compile_off)
            generate(144, compile_off)  # warm up (and compile)
            warmup_s = time.perf_counter() - t0
            t16 = min(generate(16, compile_off) for _ in range(2))
            t144 = min(generate(144, compile_off) for _ in range(2))
            out[f"decode_{label}_tok_s"] = round(128 / (t144 - t16), 1)
            note(label=label, warmup_s=round(warmup_s, 1), t16=t16, t144=t144)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
