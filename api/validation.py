"""Reading request bodies: JSON object or a 400 in the caller's API shape, never a 500.

Everything a body holds is checked once here, before any route reads it: nesting deeper than
MAX_JSON_DEPTH (deep enough for any tool schema, shallow enough for every recursive walk after it) and
strings holding a lone UTF-16 surrogate (JSON's "\\ud800" parses, but no tokenizer, file or log takes it).
"""

from __future__ import annotations

import json
from typing import Annotated, TypeVar

from pydantic import BaseModel, BeforeValidator, Field, StrictInt, ValidationError

from api.errors import ApiError, from_validation_error
from engine.session_ids import has_surrogate

M = TypeVar("M", bound=BaseModel)

MAX_JSON_DEPTH = 100


def _integral(value):
    # JSON Schema counts 5.0 as an integer; 5.5 stays a float, and is refused.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A whole number, read strictly: `true` and "5" are none; 5.0 is one.
Whole = Annotated[StrictInt, BeforeValidator(_integral)]
# A sampling seed: MLX keys take an unsigned 64-bit integer.
Seed = Annotated[Whole, Field(ge=0, lt=2**64, description="Sampling seed, 0 to 2^64-1.")]
# A stop sequence: an empty one would end every turn before its first token.
StopSequence = Annotated[str, Field(min_length=1)]


def read_json(request) -> dict:
    if not request.body:
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        body = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    _check_values(body)
    return body


def _check_values(body: dict) -> None:
    # Iterative, so a deep body cannot exhaust the stack while being checked.
    stack: list[tuple[object, tuple]] = [(body, ())]
    while stack:
        value, location = stack.pop()
        if isinstance(value, str):
            if has_surrogate(value):
                _refuse(location, "the text holds a lone UTF-16 surrogate (e.g. \\ud800); send valid Unicode")
            continue
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            continue
        if len(location) >= MAX_JSON_DEPTH:
            _refuse(location, f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
        for key, item in items:
            if isinstance(key, str) and has_surrogate(key):
                _refuse(location, "a key holds a lone UTF-16 surrogate (e.g. \\ud800); send valid Unicode")
            stack.append((item, (*location, key)))


def _refuse(location: tuple, message: str):
    # Only the first few levels name the field: a path 100 levels deep is no help.
    path = ".".join(str(part) for part in location[:8]) + (".…" if len(location) > 8 else "")
    raise ApiError(400, f"{path}: {message}" if path else message, param=path or None)


def parse(model: type[M], body: dict) -> M:
    """The body as `model`, strictly: JSON's types are taken as sent (`"5"` is no number, `false` no 0)."""
    try:
        return model.model_validate(body, strict=True)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
