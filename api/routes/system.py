"""Routes every client probes: /, /health, /metrics, /v1/models, /openapi.json."""

from __future__ import annotations

import time

from sanic import Blueprint
from sanic.response import json as json_response
from sanic.response import raw

from api.errors import ApiError
from api.openapi import openapi_document, package_version
from engine.kv.shared import shared_tier

bp = Blueprint("system")


@bp.route("/", methods=["GET", "HEAD"])
async def root(request):
    return json_response({"name": "agent-memory", "version": package_version(), "openapi": "/openapi.json"})


@bp.get("/health")
async def health(request):
    server = request.app.ctx.server
    engine = server.engine
    body = {"status": engine.state, "uptime_s": round(time.time() - server.started, 1), "queue_depth": 0}
    if engine.state not in ("ready", "swapping"):
        if engine.state == "failed":
            body["error"] = engine.load_error
        return json_response(body, status=503, headers={"Retry-After": "5"})
    info = engine.info
    body.update(
        {
            "model_id": engine.model_id,
            "fingerprint": info.fingerprint,
            "backend": info.backend,
            "queue_depth": engine.queue_depth,
            # Requests decoded together (1: this model's cache kind runs one at a time)
            "max_batch_size": server.settings.mlx_max_batch_size if engine.batching else 1,
            "kv_memory": engine.kv_enabled,
            "dtype": info.compute_dtype,
            "parameters": info.num_parameters,
            "context_length": info.context_length,
            "kv_bytes_per_token": info.kv_bytes_per_token,
            "kv_block_tokens": server.settings.kv_block_tokens,
            # What a request gets for a sampling value it leaves unset
            "sampling_defaults": info.sampling_defaults.values(),
            "sampling_defaults_source": info.sampling_source,
        }
    )
    if server.settings.shared_tier_url:
        # Down is degraded, not failed: this instance serves from its own tiers meanwhile.
        body["shared_tier"] = shared_tier(server.settings.shared_tier_url).stats().to_json()
    # A swap keeps serving on the old model, but load balancers should prefer a settled replica.
    return json_response(body, status=200 if engine.state == "ready" else 503)


@bp.get("/metrics")
async def metrics(request):
    return raw(request.app.ctx.server.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/openapi.json")
async def openapi(request):
    return json_response(openapi_document(package_version()))


async def _model_rows(server) -> list[dict]:
    """The served model, then those a request would load (with SEMANTIC_LOAD_ON_DEMAND)."""
    engine = server.ready_engine()
    others = [{"id": model.name, "created": int(model.modified)} for model in await server.other_models()]
    return [{"id": engine.model_id, "created": int(server.started)}, *others]


@bp.get("/v1/models")
async def list_models(request):
    server = request.app.ctx.server
    rows = await _model_rows(server)
    if "anthropic-version" in request.headers:
        data = [_anthropic_model(row) for row in rows]
        return json_response({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})
    return json_response({"object": "list", "data": [_openai_model(row) for row in rows]})


@bp.get("/v1/models/<model_id:path>")
async def get_model(request, model_id: str):
    server = request.app.ctx.server
    rows = await _model_rows(server)
    row = next((r for r in rows if r["id"] == model_id), None)
    if row is None and not server.settings.strict_model_names:
        row = {**rows[0], "id": model_id}  # any name is served by the loaded model
    if row is None:
        raise ApiError(404, f"model {model_id!r} is not served here", param="model", code="model_not_found")
    return json_response(_anthropic_model(row) if "anthropic-version" in request.headers else _openai_model(row))


def _openai_model(row: dict) -> dict:
    return {"id": row["id"], "object": "model", "created": row["created"], "owned_by": "agent-memory"}


def _anthropic_model(row: dict) -> dict:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["created"]))
    return {"type": "model", "id": row["id"], "display_name": row["id"], "created_at": created}
