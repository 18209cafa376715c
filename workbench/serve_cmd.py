"""`agent-memory serve`: the headless server in one process (one model in memory)."""

from __future__ import annotations

import logging

import typer

from engine.settings import Settings
from workbench.output import report_error

log = logging.getLogger("agent_memory.serve")


class LogProgress:
    """Model preparation progress as log lines (a server's output is a log, not a terminal)."""

    def __init__(self):
        self._last: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        percent = int(100 * done / total) if total else 100
        step = percent // 25 * 25
        if self._last.get(stage) != step:
            self._last[stage] = step
            log.info("%s: %d%%", stage, percent)


def can_listen(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (a port in use, an address not of this machine), or
    None: asked before the model loads, so such a mistake is one line, not a traceback after the load."""
    import ipaddress
    import socket

    try:  # the address family Sanic binds with: IPv6 for an IPv6 literal, else IPv4
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            probe.bind((host, port))
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def run_server(settings: Settings, host: str, port: int, log_level: str = "info") -> int:
    from api.app import create_app
    from engine.engine import Engine

    problem = can_listen(host, port)
    if problem is not None:
        return report_error(problem)

    # One handler for every logger, Sanic's included (the app leaves logging to us).
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = Engine(settings, progress=LogProgress())
    app = create_app(settings, engine)
    if settings.api_keys:
        auth = f"tenants: {', '.join(sorted(settings.tenant_keys.values()))}"
    else:
        auth = "API key required" if settings.api_key else "no API key (set SEMANTIC_API_KEY to require one)"
    typer.echo(f"agent-memory serving {settings.mlx_model_id!r} on http://{host}:{port} ({auth})", err=True)
    app.run(host=host, port=port, single_process=True, access_log=False, motd=False)
    return 0
