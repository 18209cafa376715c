"""The one place the engine reaches inside mlx-lm: batch_generator.py subclasses private parts of
mlx-lm's BatchGenerator, masks.py gives its unpadded batch caches the fused causal attention. Both are
written against the mlx-lm version below; under any other the engine runs mlx-lm's own BatchGenerator
(correct, with more cache copies, explicit masks and, on the CPU, a slower first token) instead of
failing on a missing private name. tests/engine/test_batch_generator.py compares the two."""

from __future__ import annotations

import functools
import logging
from importlib import metadata

log = logging.getLogger(__name__)

WRITTEN_FOR = "0.32."  # mlx-lm releases whose BatchGenerator internals batch_generator.py knows


def make_batch_generator(model, *, inline_first_token: bool, **kwargs):
    """A BatchGenerator for `model` (mlx-lm's keyword arguments): ours where this mlx-lm is one we know."""
    lean = _lean_class()
    if lean is None:
        from mlx_lm.generate import BatchGenerator

        return BatchGenerator(model, **kwargs)
    return lean(model, inline_first_token=inline_first_token, **kwargs)


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
