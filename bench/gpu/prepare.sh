#!/usr/bin/env bash
# Everything a GPU bench carries to the lent NVIDIA machine (no network there), prepared here:
#   .gpu-a/, .gpu-b/  MLX's CUDA wheel in two halves plus the wheels below (../shared/gpu/prepare-wheels.sh)
#   .gpu-tok/         the default model's tokenizer, for the random-weight models (bench/gpu/tokenizer.py)
# All three are git-ignored and each stays under the 64 MiB one device call may carry.
# Run from the project root after `make setup`: bash bench/gpu/prepare.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PREPARE=${PREPARE:-../shared/gpu/prepare-wheels.sh}
PY=${PY:-.venv/bin/python}

# What `import engine, api.app, workbench.cli, openai, mlx_lm.server`, the benches and the CUDA-only tests
# need beyond the machine's own Python 3.12 (torch, transformers, tokenizers, numpy, safetensors, xxhash,
# prometheus-client, typer, rich, jinja2): pinned to the versions of this .venv, so the machine runs what
# was tested here.
WHEELS=(
  pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection typing-extensions
  sanic sanic-routing httptools uvloop ujson aiofiles websockets multidict html5tagger tracerite
  llguidance gguf
  jsonschema referencing rpds-py jsonschema-specifications attrs
  openai anyio httpx2 httpcore2 h11 idna truststore jiter sniffio
  pytest pluggy iniconfig packaging
)
mapfile -t pins < <("$PY" - "${WHEELS[@]}" <<'EOF'
import sys
from importlib import metadata

for name in sys.argv[1:]:
    print(f"{name}=={metadata.version(name)}")
EOF
)
echo "wheels: ${pins[*]}"
mkdir -p "$(git rev-parse --git-path info)"  # prepare-wheels.sh appends to .git/info/exclude
bash "$PREPARE" "${pins[@]}"
# Call two carries .gpu-b with .gpu-tok and the working tree: move the largest wheels to .gpu-a (both
# calls' wheels are installed in call two) while .gpu-a stays under 56 MiB.
a_bytes=$(du -sb .gpu-a | cut -f1)
for wheel in $(ls -S .gpu-b/*.whl); do
  size=$(stat -c %s "$wheel")
  if [ $((a_bytes + size)) -lt $((56 * 1024 * 1024)) ]; then
    mv "$wheel" .gpu-a/
    a_bytes=$((a_bytes + size))
  fi
done

"$PY" bench/gpu/tokenizer.py --out .gpu-tok

limit=$((64 * 1024 * 1024))
for folder in .gpu-a .gpu-b .gpu-tok; do
  bytes=$(du -sb "$folder" | cut -f1)
  git check-ignore -q "$folder" || { echo "$folder is not git-ignored" >&2; exit 1; }
  [ "$bytes" -lt "$limit" ] || { echo "$folder holds $bytes bytes, over one call's 64 MiB" >&2; exit 1; }
  echo "$folder: $((bytes / 1024 / 1024)) MiB, git-ignored"
done
both=$(($(du -sb .gpu-b | cut -f1) + $(du -sb .gpu-tok | cut -f1)))
[ "$both" -lt "$limit" ] || { echo ".gpu-b and .gpu-tok together hold $both bytes, over 64 MiB" >&2; exit 1; }
