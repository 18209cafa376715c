"""A backend's own attention in a loaded model: mlx-lm's model modules each import
`scaled_dot_product_attention` from mlx_lm.models.base by name, so each module's name is repointed."""

from __future__ import annotations

import sys

from mlx_lm.models import base

MLX_LM_ATTENTION = base.scaled_dot_product_attention


def route_attention(model, dispatch) -> None:
    """Point every module `model` is built from at `dispatch` where it uses mlx-lm's function (a module
    already routed elsewhere is left as it is)."""
    for name in {type(module).__module__ for _, module in model.named_modules()}:
        module = sys.modules.get(name)
        if getattr(module, "scaled_dot_product_attention", None) is MLX_LM_ATTENTION:
            module.scaled_dot_product_attention = dispatch
