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


def after_key(key: str):
    """A run_before that waits for the app to settle, then opens a screen with `key`."""

    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press(key)
        await pilot.pause(0.3)

    return run_before


def test_inspector(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=after_key("f3"))


def test_model_screen(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=after_key("f4"))


def test_help(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=after_key("f1"))


def test_home_small_terminal(snap_compare):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=settle)
