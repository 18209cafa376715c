"""System-prompt lines that some clients change on every request, dropped before the prompt is rendered.

The KV memory reuses a prompt up to its first differing token. Claude Code's first system block,
`x-anthropic-billing-header: cc_version=2.1.197.1c0; cc_entrypoint=cli; cch=3f2a1;`, changes from request
to request and sits at the very start of the prompt, so left in, every request would be a cold start.
The next client quirk of this kind is one more entry in VOLATILE_LINE_PREFIXES.
SEMANTIC_DROP_VOLATILE_LINES=false keeps them (docs/configuration.md).
"""

from __future__ import annotations

# Lines starting with one of these (case-insensitive, leading spaces ignored) are dropped from system text.
VOLATILE_LINE_PREFIXES = (
    # Claude Code: attribution for Anthropic's billing (a version suffix and a checksum that vary); a local
    # model gets nothing from it.
    "x-anthropic-billing-header:",
)


def drop_volatile_lines(text: str) -> str:
    """`text` without its volatile lines; text without any comes back unchanged (the same object)."""
    lowered = text.lower()
    if not any(prefix in lowered for prefix in VOLATILE_LINE_PREFIXES):
        return text
    kept = [line for line in text.splitlines(keepends=True) if not _is_volatile(line)]
    return "".join(kept)


def _is_volatile(line: str) -> bool:
    return line.lstrip().lower().startswith(VOLATILE_LINE_PREFIXES)
