"""Reading request bodies: JSON object or a 400 in the caller's API shape, never a 500."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from api.errors import ApiError, from_validation_error

M = TypeVar("M", bound=BaseModel)


def read_json(request) -> dict:
    if not request.body:
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        body = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def parse(model: type[M], body: dict) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
