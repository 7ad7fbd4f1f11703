"""cluster.progress: a rich bar on a terminal, plain log lines elsewhere, nothing when disabled."""

from __future__ import annotations

import io

from rich.console import Console

from cluster.progress import Progress


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


def test_on_a_terminal_a_bar_shows_what_is_done_of_the_total_and_keeps_the_lines() -> None:
    console, out = _console(terminal=True)
    with Progress("nodes ready", 4, console=console) as bar:
        assert bar.live
        bar.line("  node0 committing blocks")
        bar.advance()
        bar.advance()
        bar.update(status="waiting for node2")
    text = out.getvalue()
    assert "nodes ready" in text and "2/4" in text and "waiting for node2" in text
    assert "node0 committing blocks" in text


def test_in_a_log_only_the_lines_are_written_one_per_line() -> None:
    console, out = _console(terminal=False)
    with Progress("load", 10.0, console=console, counted=False) as bar:
        assert not bar.live
        bar.update(completed=5.0, status="sent 100 committed 90")
        bar.line("chaos: seed 7, 3 episodes")
        bar.line("  [   1.0s] 1/3 partition ['node0'] " + "x" * 150)  # long: never wrapped
    lines = out.getvalue().splitlines()
    assert lines == ["chaos: seed 7, 3 episodes", "  [   1.0s] 1/3 partition ['node0'] " + "x" * 150]


def test_disabled_it_writes_nothing() -> None:
    for terminal in (True, False):
        console, out = _console(terminal)
        with Progress("episodes", 3, console=console, enabled=False) as bar:
            bar.line("hidden")
            bar.advance()
        assert out.getvalue() == ""
