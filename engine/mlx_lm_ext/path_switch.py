"""Whether one of the CUDA attention paths is on: turned on only for a model that passes the path's check."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class PathSwitch:
    """One path's switch, read by the path on every call (`on`). `check(model)` runs with the path on and
    says whether the model hands the path's mask and keys to MLX's attention as they are; `refused` is
    logged when the path is wanted but the model fails it."""

    def __init__(self, check: Callable[[object], bool], refused: str) -> None:
        self.on = False
        self._check = check
        self._refused = refused

    def enable(self, model, wanted: bool) -> bool:
        """The path on for `model` where `wanted` (its setting, else the backend's choice) and the model is
        safe for it; whether it is on."""
        self.on = wanted and self.safe_for(model)
        if wanted and not self.on:
            log.info(self._refused)
        return self.on

    def safe_for(self, model) -> bool:
        """Whether `model` passes the path's check (the switch is as it was afterwards)."""
        was, self.on = self.on, True
        try:
            return self._check(model)
        finally:
            self.on = was
