"""Snapshots of every TUI screen at 100x30 with frozen data (pytest-textual-snapshot).

Update after an intended change with: pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

from tests.tui_frozen import FrozenSource
from workbench.tui.app import WorkbenchApp

SIZE = (100, 30)


def make_app() -> WorkbenchApp:
    app = WorkbenchApp(FrozenSource(), initial_agent="alice")
    app.ttfts["alice"] = [("cold", 0.42), ("hot", 0.05), ("hot", 0.06), ("warm", 0.12)]
    return app


async def settle(pilot) -> None:
    app = pilot.app
    while not (app.ready and app.rows and app._session is not None):
        await pilot.pause(0.05)
    await pilot.pause(0.2)


def test_home(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=settle)


def test_inspector(snap_compare):
    async def open_inspector(pilot):
        await settle(pilot)
        await pilot.press("f3")
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=open_inspector)


def test_model_screen(snap_compare):
    async def open_model(pilot):
        await settle(pilot)
        await pilot.press("f4")
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=open_model)


def test_help(snap_compare):
    async def open_help(pilot):
        await settle(pilot)
        await pilot.press("f1")
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=open_help)


def test_home_small_terminal(snap_compare):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=settle)
