"""`agent-memory cache stats | check | clear`: the warm KV tier on disk, read without loading a model."""

from __future__ import annotations

import json

import typer

from engine.settings import Settings


def _warm(settings: Settings):
    from engine.kv.warm import WarmTier

    return WarmTier(settings.cache_path, settings.agent_disk_budget_mb)


def _mb(value: int) -> str:
    return f"{value / 1e6:,.1f} MB"


def show_stats(settings: Settings, json_output: bool) -> None:
    warm = _warm(settings)
    try:
        stats = warm.stats()
        summaries = warm.session_summaries()
    finally:
        warm.close()
    stats["dtype"] = settings.kv_disk_dtype
    shared_saved = _shared_bytes_saved(settings)
    pool = {
        "budget_bytes": settings.mlx_cache_budget_mb * 1024 * 1024,
        "max_agents": settings.agent_max_agents_in_memory,
        "block_tokens": settings.kv_block_tokens,
    }
    if json_output:
        typer.echo(
            json.dumps({"hot": pool, "warm": stats, "sessions": len(summaries), "shared_bytes_saved": shared_saved})
        )
        return
    typer.echo("Hot tier (device memory, per running process):")
    typer.echo(
        f"  budget {_mb(pool['budget_bytes'])}, at most {pool['max_agents']} agents, "
        f"{pool['block_tokens']} tokens per block"
    )
    typer.echo("  (live figures: `agent-memory tui` or the server's /metrics)")
    typer.echo(f"Warm tier (disk): {stats.get('path', settings.cache_path)}")
    if not stats.get("enabled"):
        typer.echo(f"  {stats.get('reason')}")
        return
    typer.echo(
        f"  stores {stats['dtype']} KV; {stats['files']} files: {stats['blocks']} blocks, "
        f"{stats['sessions']} session snapshots"
    )
    typer.echo(
        f"  {_mb(stats['bytes'])} of {_mb(stats['budget_bytes'])} budget; shared blocks save {_mb(shared_saved)}"
    )
    if stats.get("read_only"):
        typer.echo("  another process owns this cache dir: read-only here")


def _shared_bytes_saved(settings: Settings) -> int:
    """Bytes that sessions would need if each stored its own copy of the blocks it shares."""
    warm = _warm(settings)
    try:
        summaries = warm.session_summaries()
        if not summaries:
            return 0
        db = warm._db()
        sizes = dict(db.execute("SELECT name, bytes FROM blocks").fetchall())
        uses: dict[str, int] = {}
        for (chain,) in db.execute("SELECT chain FROM sessions"):
            for name in json.loads(chain):
                uses[name] = uses.get(name, 0) + 1
        return sum(sizes.get(name, 0) * (count - 1) for name, count in uses.items() if count > 1)
    finally:
        warm.close()


def run_check(settings: Settings, repair: bool) -> int:
    warm = _warm(settings)
    try:
        if not warm.enabled:
            typer.echo(f"error: {warm.disabled_reason}", err=True)
            return 2
        report = warm.check(repair=repair and not warm.read_only)
    finally:
        warm.close()
    problems = len(report["bad"]) + len(report["missing"]) + len(report["orphans"])
    typer.echo(
        f"checked {report['checked']} files: {len(report['bad'])} failed their checksum, "
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
        if warm.read_only:
            typer.echo("error: another process owns the cache dir; stop it first", err=True)
            return 2
        removed = warm.clear()
    finally:
        warm.close()
    typer.echo(f"removed {removed} files from {settings.cache_path}")
    return 0
