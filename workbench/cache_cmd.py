"""`agent-memory cache stats | check | clear`: the warm KV tier on disk, read without loading a model."""

from __future__ import annotations

import json

import typer

from engine.settings import Settings
from workbench.output import report_error


def _warm(settings: Settings):
    from engine.kv.warm import WarmTier

    return WarmTier(settings.cache_path, settings.agent_disk_budget_mb)


def _mb(value: int) -> str:
    return f"{value / 1e6:,.1f} MB"


def show_stats(settings: Settings, json_output: bool) -> None:
    warm = _warm(settings)
    try:
        stats = warm.stats(dtype=settings.kv_disk_encoding)
        summaries = warm.session_summaries()
        shared_saved = warm.shared_bytes_saved()
    finally:
        warm.close()
    pool = {
        # None: the backend's default, sized at load (a GPU's share of its memory)
        "budget_bytes": settings.mlx_cache_budget_mb << 20 if settings.mlx_cache_budget_mb else None,
        "max_agents": settings.agent_max_agents_in_memory,
        "block_tokens": settings.kv_block_tokens,
    }
    if json_output:
        typer.echo(
            json.dumps(
                {"hot": pool, "warm": stats.to_json(), "sessions": len(summaries), "shared_bytes_saved": shared_saved}
            )
        )
        return
    typer.echo("Hot tier (device memory, per running process):")
    budget = _mb(pool["budget_bytes"]) if pool["budget_bytes"] else "sized at load (4096 MB on the CPU)"
    typer.echo(f"  budget {budget}, at most {pool['max_agents']} agents, {pool['block_tokens']} tokens per block")
    typer.echo("  (live figures: `agent-memory tui` or the server's /metrics)")
    typer.echo(f"Warm tier (disk): {stats.path or settings.cache_path}")
    if not stats.enabled:
        typer.echo(f"  {stats.reason}")
        return
    typer.echo(
        f"  stores {stats.dtype} KV; files: {stats.files} (blocks: {stats.blocks}, session snapshots: {stats.sessions})"
    )
    typer.echo(f"  {_mb(stats.bytes)} of {_mb(stats.budget_bytes)} budget; shared blocks save {_mb(shared_saved)}")
    if stats.read_only:
        typer.echo("  another process owns this cache dir: read-only here")


def run_check(settings: Settings, repair: bool) -> int:
    warm = _warm(settings)
    try:
        if not warm.enabled:
            return report_error(warm.disabled_reason)
        report = warm.check(repair=repair and not warm.read_only)
    finally:
        warm.close()
    problems = len(report["bad"]) + len(report["missing"]) + len(report["orphans"])
    typer.echo(
        f"checked {report['checked']} files: {len(report['bad'])} damaged (checksum or contents), "
        f"{len(report['missing'])} missing, {len(report['orphans'])} not in the index"
    )
    for label in ("bad", "missing", "orphans"):
        for file in report[label]:
            typer.echo(f"  {label}: {file}")
    if problems and repair:
        typer.echo("repaired: damaged entries dropped (they are recomputed on next use), stray files removed")
    return 0 if not problems or repair else 1


def run_clear(settings: Settings) -> int:
    warm = _warm(settings)
    try:
        if not warm.enabled:
            return report_error(warm.disabled_reason)
        if warm.read_only:
            return report_error("another process owns the cache dir; stop it first")
        removed = warm.clear()
    finally:
        warm.close()
    typer.echo(f"removed {removed} files from {settings.cache_path}")
    return 0
