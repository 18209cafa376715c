"""Errors the engine raises for its callers to show; each message says what to do next."""


class EngineError(Exception):
    """Base class: a failure a user can act on (bad input, missing model, ...)."""


class ModelLoadError(EngineError):
    """The model id cannot be resolved, read or converted."""


class RequestError(EngineError):
    """A generation request is invalid (empty prompt, context overflow, bad sampling value)."""


class EngineClosed(EngineError):
    """The engine was shut down before the request could run."""


class EngineBusy(EngineError):
    """The wait queue is full (SEMANTIC_MAX_QUEUE); retry shortly."""
