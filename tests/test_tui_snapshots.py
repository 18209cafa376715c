"""Snapshots of every TUI screen at 100x30 with frozen data (pytest-textual-snapshot).

Update after an intended change with: pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

from textual.widgets import ListView, Static

from tests.tui_frozen import ROWS, TRANSCRIPT, FrozenSource
from workbench.tui.app import WorkbenchApp

SIZE = (100, 30)


def make_app() -> WorkbenchApp:
    app = WorkbenchApp(FrozenSource(), initial_agent="alice")
    app.ttfts["alice"] = [("cold", 0.42), ("hot", 0.05), ("hot", 0.06), ("warm", 0.12)]
    return app


def settled(app: WorkbenchApp) -> bool:
    """The agent list is drawn and alice's transcript is mounted, with its status line: the last steps
    of start-up, which a loaded machine can take well past a fixed pause."""
    status = str(app.query_one("#status", Static).content)
    agents = app.query_one("#agents", ListView)
    return (
        app.ready
        and len(agents.children) == len(ROWS)
        and agents.index == 0  # alice, highlighted
        and len(app.query("#log Markdown")) == len(TRANSCRIPT)
        and status.startswith("Agent alice:")
    )


async def settle(pilot) -> None:
    for _ in range(600):  # 30 s at most
        if settled(pilot.app):
            break
        await pilot.pause(0.05)
    else:
        raise AssertionError("the TUI did not finish starting within 30 s")
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
