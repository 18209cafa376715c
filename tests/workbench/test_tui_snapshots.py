"""Snapshots of every TUI screen with frozen data (pytest-textual-snapshot): at 100x30, and the home and
memory overview screens at 80x24 and 120x40.

Update after an intended change with: pytest tests/workbench/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

from textual.widgets import Input, ListView, Static

from tests.workbench.tui_frozen import EVICTIONS_BEFORE, ROWS, TRANSCRIPT, TURNS, FrozenSource
from workbench.tui.app import WorkbenchApp
from workbench.tui.origins import grouped

SIZE = (100, 30)


def make_app() -> WorkbenchApp:
    app = WorkbenchApp(FrozenSource(), initial_agent="alice")
    app.turns = list(TURNS)
    return app


def settled(app: WorkbenchApp) -> bool:
    """The agent list is drawn and alice's transcript is mounted, with its status line: the last steps
    of start-up, which a loaded machine can take well past a fixed pause."""
    status = str(app.query_one("#status", Static).content)
    agents = app.query_one("#agents", ListView)
    return (
        app.ready
        and app.evictions_before == EVICTIONS_BEFORE
        and len(agents.children) == len(ROWS) + len(grouped(ROWS))  # a heading per origin
        and agents.highlighted_child is not None
        and agents.highlighted_child.name == "alice"
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
    for box in pilot.app.query(Input):
        box.cursor_blink = False  # a blinking cursor is drawn or not by when the picture is taken
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
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=after_key("f7"))


def test_memory_overview(snap_compare):
    assert snap_compare(make_app(), terminal_size=(120, 40), run_before=after_key("f3"))


def test_memory_overview_small_terminal(snap_compare):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=after_key("f3"))


def test_memory_overview_without_turns(snap_compare):
    """A fresh run: the charts say there is nothing yet instead of drawing bars."""

    async def run_before(pilot) -> None:
        pilot.app.turns = []
        await after_key("f3")(pilot)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=run_before)


def test_model_screen(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=after_key("f4"))


def test_help(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=after_key("f1"))


def test_home_small_terminal(snap_compare):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=settle)


def test_home_large_terminal(snap_compare):
    assert snap_compare(make_app(), terminal_size=(120, 40), run_before=settle)


def test_agent_filter(snap_compare):
    """Typing in the agent list filters it: by origin too ("api" keeps every API client's agents)."""

    async def run_before(pilot) -> None:
        await settle(pilot)
        pilot.app.query_one("#agents", ListView).focus()
        await pilot.press("a", "p", "i")
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=run_before)
