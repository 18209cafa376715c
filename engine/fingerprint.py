"""A model's fingerprint: one digest of its config, weights, tokenizer and chat template.

Every stored KV cache is keyed by it, so a cache never meets the wrong model. Hashing weights is
slow, so file digests are remembered by (path, size, mtime) in a small JSON file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from engine.atomic import atomic_write_text

FINGERPRINT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "tokenizer.model",
)


class DigestCache:
    """sha256 of files, remembered across runs while the file's size and mtime are unchanged."""

    def __init__(self, path: Path):
        self._path = path
        try:
            self._entries = json.loads(path.read_text())
        except (OSError, ValueError):
            self._entries = {}

    def digest(self, file: Path, progress=None) -> str:
        from engine.gguf_import import file_digest

        stat = file.stat()
        key = str(file.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = self._entries.get(key)
        if entry and entry["stamp"] == stamp:
            return entry["sha256"]
        value = file_digest(file, progress)
        self._entries[key] = {"stamp": stamp, "sha256": value}
        # A read-only data dir only costs a re-hash next time.
        with contextlib.suppress(OSError):
            atomic_write_text(self._path, json.dumps(self._entries))
        return value


def model_fingerprint(model_dir: Path, digests: DigestCache, chat_template: str | None) -> str:
    parts = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        file = model_dir / name
        if file.is_file():
            parts.update(name.encode() + b"\0" + digests.digest(file).encode())
    for weights in sorted(model_dir.glob("*.safetensors")):
        parts.update(weights.name.encode() + b"\0" + digests.digest(weights).encode())
    parts.update(b"template\0" + (chat_template or "").encode())
    return parts.hexdigest()[:32]
