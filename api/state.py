"""What every handler reaches through `request.app.ctx.server`: settings, engine, metrics, session locks,
running turns."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from api.bridge import RunningTurns
from api.errors import ApiError
from api.metrics import Metrics
from api.sessions import SessionLocks
from engine.errors import EngineClosed, EngineError, ModelLoadError
from engine.settings import Settings


@dataclass
class ServerState:
    settings: Settings
    engine: object  # engine.engine.Engine: the api package never imports MLX
    metrics: Metrics
    locks: SessionLocks = field(default_factory=SessionLocks)
    turns: RunningTurns = field(default_factory=RunningTurns)
    started: float = field(default_factory=time.time)
    _swapping: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)  # requests' swaps, one at a time

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

    async def model_for(self, requested: str | None) -> str:
        """The model that serves a request naming `requested` (see served_model). With
        SEMANTIC_LOAD_ON_DEMAND, a model available here that is not loaded is swapped in first; running
        turns finish on the one before."""
        if self.settings.load_on_demand and requested and requested not in self.model_names():
            from engine.model_source import available_here

            if await asyncio.to_thread(available_here, requested, self.settings.models_path):
                async with self._swapping:
                    if requested not in self.model_names():
                        await self._swap_to(requested)
        return self.served_model(requested)

    async def _swap_to(self, model_id: str) -> None:
        previous = self.engine.model_id
        try:
            await asyncio.to_thread(self.engine.swap, model_id)
        except ModelLoadError as exc:
            raise ApiError(400, f"{exc}; still serving {previous!r}", param="model") from None
        except EngineClosed as exc:
            raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from None
        except EngineError as exc:  # an admin swap is running
            raise ApiError(409, f"{exc}; retry once it is done", headers={"Retry-After": "5"}) from None

    async def other_models(self) -> list:
        """With SEMANTIC_LOAD_ON_DEMAND, the models a request may name besides the served one, which it would
        load (engine/model_catalog.py's LocalModel); none otherwise, as this model serves every name."""
        if not self.settings.load_on_demand:
            return []
        from engine.model_catalog import local_models
        from engine.model_source import packaged_alias

        served = {packaged_alias(name) for name in self.model_names()}
        return [model for model in await asyncio.to_thread(local_models) if model.name not in served]

    def model_names(self) -> set[str]:
        names = {self.engine.model_id}
        if self.engine.state in ("ready", "swapping"):
            names.add(self.engine.info.model_id)
        return names
