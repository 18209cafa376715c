"""Constrained decoding with llguidance: a grammar built from the tools' JSON schemas (or a response
schema) masks the logits at every step, so the output is always a complete, schema-valid call.

llguidance was picked over outlines-core (and xgrammar, which needs torch) by measurement: its
per-token masks are an order of magnitude cheaper, and its Lark grammars embed JSON schemas (`%json`)
for call tags and parallel calls. See docs/tool-calling.md.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from engine.errors import RequestError
from engine.requests import GenerationRequest, ToolSpec
from engine.tools.formats import ToolFormat, tool_format

MAX_PARALLEL_CALLS = 8  # calls one forced turn may make
# Compact JSON with json.dumps' separators: what the history renderer writes back (cache reuse).
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}

_tokenizers: dict[int, Any] = {}  # id(tokenizer) -> (tokenizer, llguidance tokenizer): one per model loaded
_tokenizers_lock = threading.Lock()


def build_grammar(request: GenerationRequest, fmt: ToolFormat | None) -> str:
    """The Lark grammar (llguidance dialect) a constrained turn's output must match: one call (or up to
    MAX_PARALLEL_CALLS when parallel calls are allowed) of the offered tools, and/or the response schema."""
    rules = []
    alternatives = []
    if request.offers_tools and fmt is not None:
        tools = [t for t in request.tools if request.tool_name in (None, t.name)]
        open_tag, close_tag = json.dumps(fmt.start), json.dumps(fmt.end)
        for number, tool in enumerate(tools):
            schema = json.dumps(_with_options(_call_schema(tool)))
            rules.append(f'call_{number}: {open_tag} "\\n" %json {schema} "\\n" {close_tag}')
        call = " | ".join(f"call_{k}" for k in range(len(tools)))
        rules.append(f"call: {call}")
        # Calls follow each other without a newline: at a call's end the model chooses between another
        # call and the end of its turn (a newline first leads small models into repeating the call).
        several = request.parallel_tool_calls and request.tool_name is None
        rules.append(f"calls: call{{1,{MAX_PARALLEL_CALLS}}}" if several else "calls: call")
        alternatives.append("calls")
    if request.response_schema is not None and not (request.offers_tools and request.tool_choice == "required"):
        rules.append(f"answer: %json {json.dumps(_with_options(_closed(request.response_schema)))}")
        alternatives.append("answer")
    return "\n".join([f"start: {' | '.join(alternatives)}", *rules])


def _closed(schema: dict) -> dict:
    """An object schema that does not say whether undeclared properties are allowed admits none: still
    valid against the schema, and a small model does not wander into inventing keys."""
    if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


def _call_schema(tool: ToolSpec) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": _closed(tool.parameters)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _with_options(schema: dict) -> dict:
    return {**schema, "x-guidance": {**_JSON_OPTIONS, **schema.get("x-guidance", {})}}


def grammar_tokenizer(tokenizer):
    """llguidance's view of the vocabulary (~0.3 s to build): once per tokenizer."""
    import llguidance
    import llguidance.hf

    with _tokenizers_lock:
        built = _tokenizers.get(id(tokenizer))
        if built is None or built[0] is not tokenizer:
            eos = sorted(tokenizer.eos_token_ids)
            built = (tokenizer, llguidance.hf.from_tokenizer(tokenizer._tokenizer, eos_token=eos))
            _tokenizers[id(tokenizer)] = built
        return built[1]


def constraint_processor(tokenizer, request: GenerationRequest):
    """A logits processor for mlx-lm that enforces the request's grammar; None for a free turn.
    An unusable schema is the caller's mistake: RequestError."""
    if not request.constrained:
        return None
    import llguidance

    fmt = tool_format(tokenizer, constrained=True) if request.offers_tools else None
    vocabulary = grammar_tokenizer(tokenizer)
    try:
        matcher = llguidance.LLMatcher(vocabulary, build_grammar(request, fmt))
    except (ValueError, TypeError) as exc:
        raise RequestError(f"cannot build a grammar from the given JSON schema: {exc}") from None
    if matcher.is_error():
        raise RequestError(f"cannot build a grammar from the given JSON schema: {matcher.get_error()}")
    return GrammarProcessor(matcher, vocabulary.vocab_size)


class GrammarProcessor:
    """mlx-lm logits processor: `tokens` ends with the token sampled last; the first call sees the prompt."""

    def __init__(self, matcher, vocab_size: int):
        from llguidance.numpy import allocate_token_bitmask

        self.matcher = matcher
        self.vocab_size = vocab_size
        self._bitmask = allocate_token_bitmask(1, vocab_size)
        self._started = False

    def __call__(self, tokens, logits):
        import mlx.core as mx
        import numpy as np
        from llguidance.numpy import fill_next_token_bitmask

        if self._started:
            token = int(tokens[-1].item())
            if not self.matcher.consume_token(token):
                raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")
        self._started = True
        fill_next_token_bitmask(self.matcher, self._bitmask)
        width = logits.shape[-1]  # the model's output may be wider than the tokenizer (padding rows)
        allowed = np.zeros(width, dtype=np.uint8)
        bits = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")[: min(width, self.vocab_size)]
        allowed[: len(bits)] = bits
        return mx.where(mx.array(allowed.astype(np.bool_)), logits, mx.array(-float("inf"), dtype=logits.dtype))
