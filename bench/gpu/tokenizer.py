"""Write the default model's tokenizer files (SmolLM2-135M-Instruct, from its packaged GGUF) into a folder.

The GPU machine has no network and no copy of the default model; `mkmodel.py` gives the random-weight
models it builds there this tokenizer, so prompts, chat template and detokenizer are the default model's.
The files are the ones the engine writes when it converts the GGUF (engine/gguf_import.py).

    python bench/gpu/tokenizer.py --out .gpu-tok      # then carry .gpu-tok to the device (docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.gguf_import import open_reader, read_architecture, tokenizer_files  # noqa: E402
from engine.model_source import PACKAGED_MODELS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".gpu-tok", help="folder to (re)write (default: .gpu-tok)")
    args = parser.parse_args()

    # The default model's GGUF lies in its package; the models dir is only used for assembled GGUFs.
    gguf = PACKAGED_MODELS["default"].gguf_path(Path(tempfile.gettempdir()))
    reader = open_reader(gguf)
    tokenizer_json, tokenizer_config = tokenizer_files(reader, read_architecture(reader))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (out / "chat_template.jinja").write_text(tokenizer_config["chat_template"], encoding="utf-8")
    print(f"tokenizer of {gguf.name} written to {out}/")


if __name__ == "__main__":
    main()
