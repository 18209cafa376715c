"""Admin routes (X-Admin-Key): the models a swap may name, and model hot-swap."""

from __future__ import annotations

import asyncio
import logging

from sanic import Blueprint
from sanic.response import json as json_response

from api.errors import ApiError
from api.schemas.agents import SwapRequest
from api.validation import parse, read_json
from engine.errors import EngineClosed, EngineError, ModelLoadError

bp = Blueprint("admin", url_prefix="/admin")
log = logging.getLogger(__name__)


@bp.get("/models")
async def models(request):
    """The model ids /admin/swap may name on this machine (read from disk; nothing is loaded)."""
    from engine.model_catalog import swap_choices

    server = request.app.ctx.server
    names = await asyncio.to_thread(swap_choices, server.settings.models_path)
    return json_response({"models": names, "model_id": server.engine.model_id})


@bp.post("/swap")
async def swap(request):
    """Load the new model beside the old; running requests finish on the old one; then it is freed."""
    server = request.app.ctx.server
    parsed = parse(SwapRequest, read_json(request))
    engine = server.ready_engine()
    previous = engine.model_id
    log.info("swapping model %s -> %s", previous, parsed.model_id)
    try:
        info = await asyncio.to_thread(engine.swap, parsed.model_id)
    except ModelLoadError as exc:
        raise ApiError(400, f"{exc}; still serving {previous!r}", param="model_id") from None
    except EngineClosed as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from None
    except EngineError as exc:  # another swap is running
        raise ApiError(409, str(exc)) from None
    log.info("now serving %s (%s)", parsed.model_id, info.fingerprint[:12])
    return json_response(
        {
            "model_id": engine.model_id,
            "previous_model_id": previous,
            "fingerprint": info.fingerprint,
            "backend": info.backend,
            "context_length": info.context_length,
        }
    )
