"""Errors as JSON in the shape of the API that was called: Anthropic, or OpenAI (used for every other route).

Anthropic: {"type": "error", "error": {"type": T, "message": M}}
OpenAI:    {"error": {"message": M, "type": T, "param": P, "code": C}}
"""

from __future__ import annotations

from pydantic import ValidationError

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error answered to the client; `status` picks the type in the caller's API shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def is_anthropic(path: str, headers) -> bool:
    """Anthropic routes, and /v1/models when an Anthropic client asks (it sends anthropic-version)."""
    return path.startswith("/v1/messages") or (path.startswith("/v1/models") and "anthropic-version" in headers)


def error_body(anthropic: bool, error: ApiError) -> dict:
    if anthropic:
        kind = ANTHROPIC_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": error.message}}
    kind = OPENAI_TYPES.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}


def from_validation_error(exc: ValidationError) -> ApiError:
    """400 naming the first bad field, e.g. `messages.0.role: Input should be 'user' or 'assistant'`; of a
    union's members, the one the value went deepest into (`stop.0`, not `stop` is no string)."""
    errors = exc.errors()
    first = max(errors, key=lambda error: len([part for part in error["loc"] if not _is_union_tag(part)]))
    location = ".".join(str(part) for part in first["loc"] if not _is_union_tag(part))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "field required"
    text = f"{location}: {message}" if location else message
    return ApiError(400, text, param=location or None)


def _is_union_tag(part) -> bool:
    # pydantic names union members in error locations (`str`, `list[...]`, `function-after[...]`): not fields.
    return isinstance(part, str) and (
        "[" in part or part.startswith("constrained-") or part in {"str", "int", "float", "bool", "list", "dict"}
    )
