"""The one place the engine reaches inside mlx-lm: batch_generator.py subclasses private parts of
mlx-lm's BatchGenerator, masks.py gives its unpadded batch caches the fused causal attention. For MLX's
CUDA backend (AttentionPaths): prefill_keys.py pads the keys of short prompt chunks to whole cache steps,
decode_rows.py splits a padded batch's decode attention by row, chunk_lengths.py pads prompt chunks to a
few lengths. All are written against the mlx-lm version below; under any other the engine runs
mlx-lm's own BatchGenerator (correct, with more cache copies, explicit masks and, on the CPU, a slower
first token) instead of failing on a missing private name. tests/engine/test_batch_generator.py compares the two."""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from importlib import metadata

log = logging.getLogger(__name__)

WRITTEN_FOR = "0.32."  # mlx-lm releases whose BatchGenerator internals batch_generator.py knows


@dataclass(frozen=True)
class AttentionPaths:
    """Which of the paths for MLX's CUDA backend a batch generator takes: prefill_keys.py and decode_rows.py
    (for models that pass the check of each), chunk_lengths.py."""

    padded_prefill_keys: bool = False
    decode_rows: bool = False
    # Prompt chunks padded up to a few lengths (chunk_lengths.py), so shapes repeat across turns
    rounded_chunks: bool = False


def make_batch_generator(model, *, inline_first_token: bool, attention: AttentionPaths = AttentionPaths(), **kwargs):
    """A BatchGenerator for `model` (mlx-lm's keyword arguments): ours where this mlx-lm is one we know."""
    lean = _lean_class()
    if lean is None:
        from mlx_lm.generate import BatchGenerator

        return BatchGenerator(model, **kwargs)
    import mlx.core as mx

    from engine.mlx_lm_ext import decode_rows, prefill_keys

    stream = kwargs.get("stream")
    with mx.stream(stream) if stream is not None else contextlib.nullcontext():
        prefill_keys.switch.enable(model, attention.padded_prefill_keys)
        decode_rows.switch.enable(model, attention.decode_rows)
    return lean(model, inline_first_token=inline_first_token, rounded_chunks=attention.rounded_chunks, **kwargs)


@functools.cache
def _lean_class():
    version = metadata.version("mlx-lm")
    if not version.startswith(WRITTEN_FOR):
        log.warning("mlx-lm %s is not %sx: using mlx-lm's own BatchGenerator", version, WRITTEN_FOR)
        return None
    try:
        from engine.mlx_lm_ext import masks
        from engine.mlx_lm_ext.batch_generator import LeanBatchGenerator
    except (ImportError, AttributeError) as exc:
        log.warning("mlx-lm %s lacks what engine/mlx_lm_ext needs (%s): using its own BatchGenerator", version, exc)
        return None
    masks.install()
    return LeanBatchGenerator
