"""What every handler reaches through `request.app.ctx.server`: settings, engine, metrics, session locks,
running turns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from api.bridge import RunningTurns
from api.errors import ApiError
from api.metrics import Metrics
from api.sessions import SessionLocks
from engine.settings import Settings


@dataclass
class ServerState:
    settings: Settings
    engine: object  # engine.engine.Engine: the api package never imports MLX
    metrics: Metrics
    locks: SessionLocks = field(default_factory=SessionLocks)
    turns: RunningTurns = field(default_factory=RunningTurns)
    started: float = field(default_factory=time.time)

    def ready_engine(self):
        """The engine if it can take requests now, else 503 with Retry-After."""
        state = self.engine.state
        if state in ("ready", "swapping"):
            return self.engine
        if state == "loading":
            raise ApiError(503, "the model is still loading; retry shortly", headers={"Retry-After": "5"})
        if state == "failed":
            raise ApiError(
                503,
                f"the engine cannot serve: {self.engine.load_error}",
                headers={"Retry-After": "60", "x-should-retry": "false"},
            )
        raise ApiError(503, "the server is shutting down", headers={"Retry-After": "5"})

    def served_model(self, requested: str | None) -> str:
        """The name answered in responses: the model that serves. Strict mode refuses other names."""
        engine = self.engine
        if requested and self.settings.strict_model_names and requested not in self.model_names():
            raise ApiError(
                404,
                f"model {requested!r} is not served here; this server serves {engine.model_id!r} "
                "(unset SEMANTIC_STRICT_MODEL_NAMES to serve any name)",
                param="model",
                code="model_not_found",
            )
        return engine.model_id

    def model_names(self) -> set[str]:
        names = {self.engine.model_id}
        if self.engine.state in ("ready", "swapping"):
            names.add(self.engine.info.model_id)
        return names
